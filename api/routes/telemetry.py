"""Telemetry over HTTP: raw readings, aggregates in local time, latest values and
exports, always within the caller's scope (:mod:`storage.queries` applies it).

Pages are keyed by an opaque cursor (``next_cursor``; pass it back as
``cursor``), never by offset; ``limit`` counts rows the same way for readings and
aggregates. An aggregate request that would produce more buckets than
``SMARTPARK_API__MAX_POINTS`` is refused with a 422 that says how to narrow it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from api.auth import Reader
from api.problems import Problem, bad_input
from smartpark.clock import zone
from storage.queries import (
    BucketOut,
    Filters,
    PageKey,
    ReadingOut,
    estimate_buckets,
)

router = APIRouter(tags=["telemetry"])
MAX_LIMIT = 10_000
DEFAULT_TZ = "Asia/Shanghai"

Series = Literal["realtime", "minute", "hour", "day"]
Stat = Literal["value", "min", "max", "cou"]


class Reading(BaseModel):
    time: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    series: str
    stat: str
    unit: str
    value: float
    quality: str
    seq: int
    reset: str | None


class Readings(BaseModel):
    items: list[Reading]
    next_cursor: str | None

    model_config = {"json_schema_extra": {"examples": [{
        "items": [{"time": "2026-12-01T08:00:00Z", "park": "park-1",
                   "enterprise": "coal-power", "device": "stack-1-cems",
                   "metric": "so2", "series": "realtime", "stat": "value",
                   "unit": "mg/m3", "value": 21.5, "quality": "N", "seq": 1042,
                   "reset": None}],
        "next_cursor": "WyIyMDI2LTEyLTAxVDA4OjAwOjAwKzAwOjAwIl0"}]}}  # fmt: skip


class Bucket(BaseModel):
    bucket: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    series: str
    stat: str
    unit: str
    count: int
    mean: float
    min: float
    max: float
    sum: float
    consumption: float | None
    negative_steps: int | None


class Aggregates(BaseModel):
    interval: str
    timezone: str
    source: str
    items: list[Bucket]
    next_cursor: str | None

    model_config = {"json_schema_extra": {"examples": [{
        "interval": "1d", "timezone": "Asia/Shanghai", "source": "rollup",
        "items": [{"bucket": "2026-12-01T00:00:00+08:00", "park": "park-1",
                   "enterprise": "coal-power", "device": "meter-1",
                   "metric": "active_energy", "series": "realtime", "stat": "value",
                   "unit": "kWh", "count": 8640, "mean": 1523.2, "min": 1200.0,
                   "max": 1846.4, "sum": 13160448.0, "consumption": 646.4,
                   "negative_steps": 0}],
        "next_cursor": None}]}}  # fmt: skip


class Latest(BaseModel):
    items: list[Reading]


# -- parameters -------------------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # smartpark.wire.valid_id
Park = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="a park id (within your scope)")
]
Enterprise = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="an enterprise id")
]
Device = Annotated[str | None, Query(pattern=ID_PATTERN, description="a device id")]
Outlet = Annotated[
    str | None,
    Query(pattern=ID_PATTERN, description="an outlet id: its registered devices"),
]
Metric = Annotated[
    str | None,
    Query(pattern=r"^[a-z0-9_]{1,64}$", description="a catalogue metric"),
]
SeriesQ = Annotated[Series, Query(description="the HJ 212 data type")]
StatQ = Annotated[Stat, Query(description="which value of an interval")]
Start = Annotated[datetime, Query(description="inclusive, ISO 8601 with an offset")]
End = Annotated[datetime, Query(description="exclusive, ISO 8601 with an offset")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Cursor = Annotated[str | None, Query(description="next_cursor of the last page")]


def _range(start: datetime, end: datetime) -> None:
    for name, t in (("start", start), ("end", end)):
        if t.tzinfo is None or t.utcoffset() is None:
            raise bad_input(f"query.{name}", "needs a UTC offset (e.g. +08:00 or Z)")
    if end <= start:
        raise bad_input("query.end", "must be after start")


def _zone(tz: str) -> ZoneInfo:
    try:
        return zone(tz)
    except ValueError as exc:
        raise bad_input("query.tz", str(exc)) from None


def encode_cursor(key: PageKey) -> str:
    raw = json.dumps([key.time.isoformat(), key.device, key.metric, key.data_type,
                      key.stat]).encode()  # fmt: skip
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> PageKey | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t, device, metric, data_type, stat = json.loads(raw)
        when = datetime.fromisoformat(t)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_input("query.cursor", "not a cursor this API returned") from None
    parts = (device, metric, data_type, stat)
    if when.tzinfo is None or not all(isinstance(v, str) for v in parts):
        raise bad_input("query.cursor", "not a cursor this API returned")
    return PageKey(when, device, metric, data_type, stat)


async def _filters(  # noqa: PLR0917 - the query's filters, in order
    who: Reader,
    park: str | None,
    enterprise: str | None,
    device: str | None,
    outlet: str | None,
    metric: str | None,
    series: str,
    stat: str,
) -> Filters:
    devices = None
    if outlet is not None:
        devices = await who.storage.queries.outlet_devices(who.scope, outlet)
    return Filters(park, enterprise, device, metric, series, stat, devices)


def _reading(r: ReadingOut) -> Reading:
    return Reading(
        time=r.time, park=r.park, enterprise=r.enterprise, device=r.device,
        metric=r.metric, series=r.data_type, stat=r.stat, unit=r.unit, value=r.value,
        quality=r.quality, seq=r.seq, reset=r.reset,
    )  # fmt: skip


def _bucket(b: BucketOut, tz: ZoneInfo) -> Bucket:
    return Bucket(
        bucket=b.bucket.astimezone(tz), park=b.park, enterprise=b.enterprise,
        device=b.device, metric=b.metric, series=b.data_type, stat=b.stat,
        unit=b.unit, count=b.count, mean=b.mean, min=b.min, max=b.max, sum=b.sum,
        consumption=b.consumption, negative_steps=b.negative_steps,
    )  # fmt: skip


# -- routes -----------------------------------------------------------------------


@router.get("/v1/readings", response_model=Readings)
async def readings(
    who: Reader,
    *,
    start: Start,
    end: End,
    park: Park = None,
    enterprise: Enterprise = None,
    device: Device = None,
    outlet: Outlet = None,
    metric: Metric = None,
    series: SeriesQ = "realtime",
    stat: StatQ = "value",
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> Readings:
    """Raw readings in time order (then device, metric), one page at a time."""
    _range(start, end)
    after = decode_cursor(cursor)
    f = await _filters(who, park, enterprise, device, outlet, metric, series, stat)
    rows = await who.storage.queries.readings(
        who.scope, f, start=start, end=end, after=after, limit=limit + 1
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return Readings(
        items=[_reading(r) for r in rows],
        next_cursor=encode_cursor(rows[-1].key) if more else None,
    )


@router.get("/v1/aggregates", response_model=Aggregates)
async def aggregates(
    who: Reader,
    *,
    start: Start,
    end: End,
    interval: Annotated[
        Literal["1min", "5min", "15min", "1h", "1d", "1w", "1mo"],
        Query(description="bucket width; days, weeks, months start at local 00:00"),
    ],
    tz: Annotated[
        str | None, Query(description="IANA zone (default: the park's)")
    ] = None,
    park: Park = None,
    enterprise: Enterprise = None,
    device: Device = None,
    outlet: Outlet = None,
    metric: Metric = None,
    series: SeriesQ = "realtime",
    stat: StatQ = "value",
    source: Annotated[
        Literal["auto", "raw", "rollup"],
        Query(description="auto: rollups where they cover the range, else raw rows"),
    ] = "auto",
    consumption: Annotated[
        bool,
        Query(description="counters' consumption (reads the raw rows of counters)"),
    ] = True,
    limit: Limit = 1000,
    cursor: Cursor = None,
) -> Aggregates:
    """Count, mean, min, max, sum per bucket and series (and, for counters, the
    consumption across resets, never a negative step)."""
    _range(start, end)
    zone = _zone(tz or await who.park_timezone(park) or DEFAULT_TZ)
    after = decode_cursor(cursor)
    f = await _filters(who, park, enterprise, device, outlet, metric, series, stat)
    max_points: int = who.settings.api.max_points
    per_series = estimate_buckets(start, end, interval)
    if per_series > max_points:
        raise _too_many(per_series, 1, max_points)
    n_series = await who.storage.queries.count_series(who.scope, f)
    if n_series * per_series > max_points:
        raise _too_many(per_series, n_series, max_points)
    rows, used = await who.storage.queries.aggregates(
        who.scope, f, start=start, end=end, interval=interval, tz=zone,
        source=source, after=after, limit=limit + 1, consumption=consumption,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return Aggregates(
        interval=interval, timezone=zone.key, source=used,
        items=[_bucket(b, zone) for b in rows],
        next_cursor=encode_cursor(rows[-1].key) if more else None,
    )  # fmt: skip


def _too_many(per_series: int, n_series: int, max_points: int) -> Problem:
    total = per_series * n_series
    return Problem(
        422,
        f"the request would produce up to {total} buckets ({n_series} series x"
        f" {per_series} intervals), more than the limit of {max_points}: narrow it"
        " (a shorter range, a longer interval, one device or one metric)",
        errors=[{"field": "query.interval", "reason": "too many buckets"}],
    )


@router.get("/v1/latest", response_model=Latest)
async def latest(
    who: Reader,
    *,
    park: Park = None,
    enterprise: Enterprise = None,
    device: Device = None,
    outlet: Outlet = None,
    metric: Metric = None,
    series: SeriesQ = "realtime",
) -> Latest:
    """The newest reading of every series (what an operator looks at first)."""
    f = await _filters(who, park, enterprise, device, outlet, metric, series, "value")
    rows = await who.storage.queries.latest(who.scope, f)
    return Latest(items=[_reading(r) for r in rows])


class Silent(BaseModel):
    device: str
    park: str
    enterprise: str
    outlet: str | None
    interval_s: int
    last_reading: datetime | None
    silent_s: float | None


class SilentList(BaseModel):
    as_of: datetime
    periods: float
    items: list[Silent]

    model_config = {"json_schema_extra": {"examples": [{
        "as_of": "2026-12-01T08:00:00Z", "periods": 2.0,
        "items": [{"device": "stack-1-cems", "park": "park-1",
                   "enterprise": "coal-power", "outlet": "stack-1",
                   "interval_s": 60, "last_reading": "2026-12-01T07:41:00Z",
                   "silent_s": 1140.0}]}]}}  # fmt: skip


@router.get("/v1/silent", response_model=SilentList)
async def silent(
    who: Reader,
    *,
    park: Park = None,
    enterprise: Enterprise = None,
    outlet: Outlet = None,
    periods: Annotated[
        float,
        Query(gt=0, le=1000, description="silent for more than this many intervals"),
    ] = 2.0,
) -> SilentList:
    """Registered devices silent now: no reading for longer than ``periods`` of
    their expected reporting interval (or none ever), the longest silent first."""
    f = await _filters(who, park, enterprise, None, outlet, None, "realtime", "value")
    now = datetime.fromtimestamp(who.storage.clock() / 1000, UTC)
    rows = await who.storage.queries.silent(who.scope, f, now=now, periods=periods)
    return SilentList(
        as_of=now,
        periods=periods,
        items=[
            Silent(
                device=r.device,
                park=r.park,
                enterprise=r.enterprise,
                outlet=r.outlet,
                interval_s=r.interval_s,
                last_reading=r.last_reading,
                silent_s=None
                if r.last_reading is None
                else (now - r.last_reading).total_seconds(),
            )
            for r in rows
        ],
    )


_CSV_COLUMNS = ("time", "park", "enterprise", "device", "metric", "series", "stat",
                "unit", "value", "quality", "seq", "reset")  # fmt: skip


@router.get(
    "/v1/exports/readings",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/csv": {"example": ",".join(_CSV_COLUMNS)},
                                 "application/vnd.apache.parquet": {}}}},
)  # fmt: skip
async def export_readings(
    who: Reader,
    *,
    start: Start,
    end: End,
    format: Annotated[Literal["csv", "parquet"], Query()] = "csv",
    park: Park = None,
    enterprise: Enterprise = None,
    device: Device = None,
    outlet: Outlet = None,
    metric: Metric = None,
    series: SeriesQ = "realtime",
    stat: StatQ = "value",
) -> StreamingResponse:
    """Every reading of the range as CSV or Parquet, streamed (memory stays flat
    whatever the range); recorded in the audit log."""
    _range(start, end)
    f = await _filters(who, park, enterprise, device, outlet, metric, series, stat)
    await who.audit(
        "export", "readings",
        detail={"format": format, "start": start.isoformat(), "end": end.isoformat(),
                "park": park, "enterprise": enterprise, "device": device,
                "metric": metric, "series": series, "stat": stat},
    )  # fmt: skip
    chunks = who.storage.queries.stream_readings(who.scope, f, start=start, end=end)
    name = f"readings-{start:%Y%m%dT%H%M%S}-{end:%Y%m%dT%H%M%S}"
    if format == "csv":
        return StreamingResponse(
            _csv(chunks), media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
        )  # fmt: skip
    return StreamingResponse(
        _parquet(chunks), media_type="application/vnd.apache.parquet",
        headers={"Content-Disposition": f'attachment; filename="{name}.parquet"'},
    )  # fmt: skip


def _row(r: ReadingOut) -> list[Any]:
    return [r.time.isoformat(), r.park, r.enterprise, r.device, r.metric, r.data_type,
            r.stat, r.unit, repr(r.value), r.quality, r.seq, r.reset or ""]  # fmt: skip


async def _csv(chunks: AsyncIterator[list[ReadingOut]]) -> AsyncIterator[bytes]:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_CSV_COLUMNS)
    async for rows in chunks:
        writer.writerows(_row(r) for r in rows)
        yield buf.getvalue().encode()
        buf.seek(0)
        buf.truncate()
    if buf.tell():
        yield buf.getvalue().encode()


async def _parquet(chunks: AsyncIterator[list[ReadingOut]]) -> AsyncIterator[bytes]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([
        ("time", pa.timestamp("ms", tz="UTC")), ("park", pa.string()),
        ("enterprise", pa.string()), ("device", pa.string()), ("metric", pa.string()),
        ("series", pa.string()), ("stat", pa.string()), ("unit", pa.string()),
        ("value", pa.float64()), ("quality", pa.string()), ("seq", pa.int64()),
        ("reset", pa.string()),
    ])  # fmt: skip
    sink = _Drain()
    with pq.ParquetWriter(sink, schema, compression="zstd") as writer:
        async for rows in chunks:
            columns = list(zip(*(
                (r.time, r.park, r.enterprise, r.device, r.metric, r.data_type, r.stat,
                 r.unit, r.value, r.quality, r.seq, r.reset) for r in rows
            ), strict=True))  # fmt: skip
            arrays = [
                pa.array(c, type=t) for c, t in zip(columns, schema.types, strict=True)
            ]
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
            if data := sink.take():
                yield data
    if data := sink.take():
        yield data


class _Drain(io.RawIOBase):
    """A write-only file that hands over what was written since the last take."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._pos = 0

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        data = bytes(b)
        self._parts.append(data)
        self._pos += len(data)
        return len(data)

    def tell(self) -> int:
        return self._pos

    def take(self) -> bytes:
        data = b"".join(self._parts)
        self._parts.clear()
        return data
