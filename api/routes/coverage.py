"""Coverage over HTTP, computed never declared: transmission and validity rates
per local day or month and HJ 212 data type, registered devices against devices
reporting now, and the gaps, for a park, an enterprise, an outlet or a device.

Every figure's definition is written once (:data:`smartpark.coverage.DEFINITIONS`)
and returned with the figures. The scope applies in SQL (:mod:`storage.coverage`):
another tenant's park, enterprise, outlet or device is the same 404 as one that
does not exist. Without a park (or a thing of one) the answer covers every park
of the caller's scope, each in its own time zone unless ``tz`` is given.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field

from api.auth import Caller, Reader
from api.problems import Problem, bad_input, not_found
from smartpark import coverage as cov
from smartpark.clock import zone
from storage.coverage import CoverageStore, ParkZone, Selection, TooManyRows

router = APIRouter(prefix="/v1/coverage", tags=["coverage"])
MAX_DAYS = 366
MAX_MONTHS = 60
MAX_GAPS = 10_000
MAX_SEQUENCE_DAYS = 31
# Readings carry Unix-epoch milliseconds; the far end keeps local midnights and
# their next day within Python's dates in every zone.
EARLIEST = date(1970, 1, 1)
LATEST = date(9998, 12, 31)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # smartpark.wire.valid_id
Park = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="a park id (within your scope)")
]
Enterprise = Annotated[
    str | None, Query(pattern=ID_PATTERN, description="an enterprise id")
]
Outlet = Annotated[str | None, Query(pattern=ID_PATTERN, description="an outlet id")]
Device = Annotated[str | None, Query(pattern=ID_PATTERN, description="a device id")]
From = Annotated[
    date, Query(alias="from", description="first local date (YYYY-MM-DD), inclusive")
]
To = Annotated[
    date, Query(alias="to", description="last local date (YYYY-MM-DD), inclusive")
]
Tz = Annotated[
    str | None,
    Query(max_length=64, description="IANA zone (default: each park's own)"),
]


# -- models -----------------------------------------------------------------------


class Rates(BaseModel):
    expected: int
    received: int
    valid: int
    transmission_rate: float | None
    validity_rate: float | None
    coverage_rate: float | None


class TypeFigures(Rates):
    data_type: Literal["realtime", "minute", "hour", "day"]


class CoverageItem(Rates):
    period: date = Field(description="first local date of the day or month")
    level: Literal["park", "enterprise", "outlet", "device"]
    id: str
    park: str
    enterprise: str | None
    outlet: str | None
    devices: int = Field(description="registered devices expected to report")
    coverage_percent: float | None
    by_data_type: list[TypeFigures]


class StatusItem(BaseModel):
    level: Literal["park", "enterprise", "outlet", "device"]
    id: str
    park: str
    enterprise: str | None
    outlet: str | None
    devices_registered: int
    devices_reporting: int
    devices_never_reported: list[str]
    enterprises_registered: int | None
    enterprises_without_devices: list[str]
    enterprises_never_reported: list[str]
    last_reading: datetime | None


class ParkOut(BaseModel):
    id: str
    timezone: str


_RATES_EX = {"expected": 8640, "received": 8280, "valid": 8100,
             "transmission_rate": 0.9583, "validity_rate": 0.9783,
             "coverage_rate": 0.9375}  # fmt: skip


class Coverage(BaseModel):
    period: Literal["day", "month"]
    first: date
    last: date
    as_of: datetime
    parks: list[ParkOut]
    definitions: dict[str, str]
    items: list[CoverageItem]
    now: list[StatusItem]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "period": "day", "first": "2026-03-01", "last": "2026-03-01",
        "as_of": "2026-03-05T08:00:00Z",
        "parks": [{"id": "park-1", "timezone": "Asia/Shanghai"}],
        "definitions": {"coverage_percent": cov.DEFINITIONS["coverage_percent"]},
        "items": [
            {"period": "2026-03-01", "level": "park", "id": "park-1",
             "park": "park-1", "enterprise": None, "outlet": None, "devices": 1,
             "coverage_percent": 46.875, **_RATES_EX,
             "by_data_type": [{"data_type": "realtime", **_RATES_EX}]},
            {"period": "2026-03-01", "level": "device", "id": "meter-1",
             "park": "park-1", "enterprise": "coal-power", "outlet": None,
             "devices": 1, "coverage_percent": 93.75, **_RATES_EX,
             "by_data_type": [{"data_type": "realtime", **_RATES_EX}]}],
        "now": [{"level": "park", "id": "park-1", "park": "park-1",
                 "enterprise": None, "outlet": None, "devices_registered": 1,
                 "devices_reporting": 1, "devices_never_reported": [],
                 "enterprises_registered": 2,
                 "enterprises_without_devices": ["paper-mill"],
                 "enterprises_never_reported": [], "last_reading": None}],
    }]})  # fmt: skip


class GapItem(BaseModel):
    device: str
    park: str
    enterprise: str
    data_type: str
    metrics: list[str]
    start: datetime = Field(description="first missing slot (local time)")
    end: datetime = Field(description="next reading, or the end of the range")
    interval_s: int
    missed: int = Field(description="readings missed per metric")
    cause: str = Field(description="marked:<kind> | gateway_offline | device_offline")


class Gaps(BaseModel):
    first: date
    last: date
    as_of: datetime
    parks: list[ParkOut]
    definition: str
    items: list[GapItem]

    model_config = ConfigDict(json_schema_extra={"examples": [{
        "first": "2026-03-01", "last": "2026-03-01",
        "as_of": "2026-03-05T08:00:00Z",
        "parks": [{"id": "park-1", "timezone": "Asia/Shanghai"}],
        "definition": cov.DEFINITIONS["gap"],
        "items": [{"device": "meter-1", "park": "park-1",
                   "enterprise": "coal-power", "data_type": "realtime",
                   "metrics": ["active_power"],
                   "start": "2026-03-01T10:00:00+08:00",
                   "end": "2026-03-01T11:00:00+08:00", "interval_s": 10,
                   "missed": 360, "cause": "device_offline"}],
    }]})  # fmt: skip


class SequenceRunOut(BaseModel):
    after_seq: int = Field(description="the stored poll before the missing numbers")
    before_seq: int = Field(description="the stored poll after them")
    missing: int
    after: datetime = Field(description="time of the poll before (local time)")
    before: datetime = Field(description="time of the poll after (local time)")


class EpochOut(BaseModel):
    epoch: str | None = Field(
        description="edge outbox epoch; null: before the first recorded epoch"
    )
    first_seq: int
    last_seq: int
    first: datetime
    last: datetime
    polls: int = Field(description="distinct polls stored")
    missing: int = Field(description="numbers missing between first_seq and last_seq")
    runs: list[SequenceRunOut] = Field(
        description="at most `runs` of them, oldest first"
    )
    runs_truncated: bool


class SequenceReport(BaseModel):
    device: str
    park: str
    first: date
    last: date
    timezone: str
    definition: str
    polls: int
    missing: int
    epochs: list[EpochOut]


# -- helpers ----------------------------------------------------------------------


def _dates(first: date, last: date, period: str) -> None:
    for name, d in (("from", first), ("to", last)):
        if not EARLIEST <= d <= LATEST:
            raise bad_input(f"query.{name}", f"must be from {EARLIEST} to {LATEST}")
    if last < first:
        raise bad_input("query.to", "must not be before from")
    if period == "month":
        months = (last.year - first.year) * 12 + last.month - first.month + 1
        if months > MAX_MONTHS:
            raise bad_input(
                "query.to",
                f"{months} months, more than {MAX_MONTHS}: ask for fewer months",
            )
    elif (last - first).days + 1 > MAX_DAYS:
        raise bad_input(
            "query.to",
            f"{(last - first).days + 1} days, more than {MAX_DAYS}: ask for fewer"
            " days or use period=month",
        )


def _zone(tz: str | None) -> ZoneInfo | None:
    if tz is None:
        return None
    try:
        return zone(tz)
    except ValueError as exc:
        raise bad_input("query.tz", str(exc)) from None


async def _parks(
    who: Caller, store: CoverageStore, park: str | None, *, enterprise: str | None,
    outlet: str | None, device: str | None,
) -> list[ParkZone]:  # fmt: skip
    found = await store.parks(
        who.scope, park=park, enterprise=enterprise, outlet=outlet, device=device
    )
    if isinstance(found, str):
        raise not_found(found)
    return found


def _rates(c: cov.Counts) -> dict[str, float | int | None]:
    return {
        "expected": c.expected, "received": c.received, "valid": c.valid,
        "transmission_rate": c.transmission_rate, "validity_rate": c.validity_rate,
        "coverage_rate": c.coverage_rate,
    }  # fmt: skip


def _item(park: str, f: cov.Figure) -> CoverageItem:
    return CoverageItem.model_validate({
        "period": f.period, "level": f.level, "id": f.id, "park": park,
        "enterprise": f.enterprise, "outlet": f.outlet, "devices": f.devices,
        "coverage_percent": f.coverage_percent, **_rates(f.counts),
        "by_data_type": [{"data_type": k, **_rates(c)} for k, c in f.by_type.items()],
    })  # fmt: skip


def _status(park: str, s: cov.Status) -> StatusItem:
    return StatusItem(
        level=s.level, id=s.id, park=park, enterprise=s.enterprise, outlet=s.outlet,
        devices_registered=s.devices_registered,
        devices_reporting=s.devices_reporting,
        devices_never_reported=list(s.devices_never_reported),
        enterprises_registered=s.enterprises_registered,
        enterprises_without_devices=list(s.enterprises_without_devices),
        enterprises_never_reported=list(s.enterprises_never_reported),
        last_reading=s.last_reading,
    )  # fmt: skip


def _too_many(rows: int, limit: int) -> Problem:
    return Problem(
        422,
        f"the answer would have {rows} rows, more than the limit of {limit}: narrow"
        " it (fewer days, period=month, a coarser detail such as detail=enterprise,"
        " or one park, enterprise or outlet)",
        errors=[{"field": "query.detail", "reason": "too many rows"}],
    )


# -- routes -----------------------------------------------------------------------


_ABOUT = """Transmission rate, validity rate and their product (the regulator's
form) per local day or month, per level (park, enterprise, outlet, device)
and HJ 212 data type, with the park's coverage % and every definition in
``definitions``; ``now``: registered devices against devices reporting now,
and the registered enterprises without a device or that never reported.
``from``/``to`` are local dates; for ``period=month`` the months containing
them. A request that would return more rows than ``SMARTPARK_API__MAX_POINTS``
is a 422 saying how to narrow it."""


def _definitions() -> str:
    lines = "\n".join(f"- **{k}**: {v}" for k, v in cov.DEFINITIONS.items())
    return f"Definitions (also returned in every answer's `definitions`):\n\n{lines}"


@router.get(
    "", response_model=Coverage, summary="Coverage figures",
    description=f"{_ABOUT}\n\n{_definitions()}",
)  # fmt: skip
async def coverage(
    who: Reader,
    *,
    from_: From,
    to: To,
    period: Annotated[
        Literal["day", "month"], Query(description="local days or local months")
    ] = "day",
    park: Park = None,
    enterprise: Enterprise = None,
    outlet: Outlet = None,
    device: Device = None,
    tz: Tz = None,
    detail: Annotated[
        Literal["park", "enterprise", "outlet", "device"],
        Query(description="the finest level returned"),
    ] = "device",
) -> Coverage:
    """Coverage figures (the route's description: ``_ABOUT`` and the definitions)."""
    _dates(from_, to, period)
    zone_ = _zone(tz)
    store = CoverageStore(who.storage)
    parks = await _parks(
        who, store, park, enterprise=enterprise, outlet=outlet, device=device
    )
    max_rows: int = who.settings.api.max_points
    items: list[CoverageItem] = []
    now: list[StatusItem] = []
    for p in parks:
        sel = Selection(p.id, enterprise, outlet, device)
        try:
            figures = await store.figures(
                who.scope, sel, first=from_, last=to, unit=period,
                tz=zone_ or zone(p.timezone), detail=detail,
                max_rows=max_rows - len(items),
            )  # fmt: skip
        except TooManyRows as exc:
            raise _too_many(exc.rows + len(items), max_rows) from None
        items += [_item(p.id, f) for f in figures]
        now += [_status(p.id, s) for s in await store.status(who.scope, sel,
                                                            detail=detail)]  # fmt: skip
    as_of = datetime.fromtimestamp(who.storage.clock() / 1000, UTC)
    return Coverage(
        period=period, first=from_, last=to, as_of=as_of,
        parks=[ParkOut(id=p.id, timezone=zone_.key if zone_ else p.timezone)
               for p in parks],
        definitions=cov.DEFINITIONS, items=items, now=now,
    )  # fmt: skip


@router.get("/gaps", response_model=Gaps, summary="Coverage gaps")
async def gaps(
    who: Reader,
    *,
    from_: From,
    to: To,
    park: Park = None,
    enterprise: Enterprise = None,
    outlet: Outlet = None,
    device: Device = None,
    tz: Tz = None,
    limit: Annotated[
        int, Query(ge=1, le=MAX_GAPS, description="at most this many series gaps")
    ] = 1000,
) -> Gaps:
    """Runs of missing readings longer than two intervals, per device and HJ 212
    data type (its silent metrics merged), from the first missing slot to the
    next reading, with the readings missed and the cause where known. More than
    ``limit`` gaps (counted per series) is a 422 saying how to narrow it."""
    _dates(from_, to, "day")
    zone_ = _zone(tz)
    store = CoverageStore(who.storage)
    parks = await _parks(
        who, store, park, enterprise=enterprise, outlet=outlet, device=device
    )
    items: list[GapItem] = []
    rows = 0
    for p in parks:
        z = zone_ or zone(p.timezone)
        start = cov.local_midnight(from_, z)
        end = cov.local_midnight(to + timedelta(days=1), z)
        found = await store.gaps(
            who.scope, Selection(p.id, enterprise, outlet, device), start=start,
            end=end, limit=limit - rows + 1,
        )  # fmt: skip
        rows += sum(len(g.metrics) for g in found)
        if rows > limit:
            raise Problem(
                422,
                f"more than {limit} gaps: narrow the request (fewer days, one"
                f" enterprise, outlet or device) or raise limit (at most {MAX_GAPS})",
                errors=[{"field": "query.limit", "reason": "too many gaps"}],
            )
        items += [
            GapItem(
                device=g.device,
                park=p.id,
                enterprise=g.enterprise,
                data_type=g.data_type,
                metrics=list(g.metrics),
                start=g.start.astimezone(z),
                end=g.end.astimezone(z),
                interval_s=g.interval_s,
                missed=g.missed,
                cause=g.cause,
            )
            for g in found
        ]
    as_of = datetime.fromtimestamp(who.storage.clock() / 1000, UTC)
    return Gaps(
        first=from_, last=to, as_of=as_of,
        parks=[ParkOut(id=p.id, timezone=zone_.key if zone_ else p.timezone)
               for p in parks],
        definition=cov.DEFINITIONS["gap"], items=items,
    )  # fmt: skip


@router.get(
    "/sequence", response_model=SequenceReport, summary="Polls missing by number"
)
async def sequence(
    who: Reader,
    *,
    device: Annotated[str, Query(pattern=ID_PATTERN, description="a device id")],
    from_: From,
    to: To,
    tz: Tz = None,
    runs: Annotated[
        int, Query(ge=0, le=MAX_GAPS, description="at most this many runs per epoch")
    ] = 100,
) -> SequenceReport:
    """The device's polls stored over local dates ``from``..``to`` (at most
    MAX_SEQUENCE_DAYS) per edge outbox epoch, and the sequence numbers missing
    between them: polls the gateway read that the platform never stored (see
    ``definition``). Another tenant's device is the 404 of a missing one."""
    _dates(from_, to, "day")
    if (to - from_).days >= MAX_SEQUENCE_DAYS:
        raise bad_input("query.to", f"at most {MAX_SEQUENCE_DAYS} days per request")
    zone_ = _zone(tz)
    store = CoverageStore(who.storage)
    (p,) = await _parks(who, store, None, enterprise=None, outlet=None, device=device)
    z = zone_ or zone(p.timezone)
    start = cov.local_midnight(from_, z)
    end = cov.local_midnight(to + timedelta(days=1), z)
    max_polls: int = who.settings.api.max_points
    try:
        found = await store.sequence(
            who.scope, p.id, device, start=start, end=end, max_polls=max_polls
        )
    except TooManyRows as exc:
        raise Problem(
            422,
            f"more than {exc.limit} polls: narrow the request (fewer days)",
            errors=[{"field": "query.from", "reason": "too many polls"}],
        ) from None
    epochs = [
        EpochOut(
            epoch=e.epoch, first_seq=e.first_seq, last_seq=e.last_seq,
            first=e.first.astimezone(z), last=e.last.astimezone(z), polls=e.polls,
            missing=e.missing,
            runs=[
                SequenceRunOut(
                    after_seq=r.after_seq, before_seq=r.before_seq,
                    missing=r.missing, after=r.after.astimezone(z),
                    before=r.before.astimezone(z),
                )
                for r in e.runs[:runs]
            ],
            runs_truncated=len(e.runs) > runs,
        )
        for e in found
    ]  # fmt: skip
    return SequenceReport(
        device=device, park=p.id, first=from_, last=to, timezone=z.key,
        definition=cov.DEFINITIONS["sequence"],
        polls=sum(e.polls for e in epochs), missing=sum(e.missing for e in epochs),
        epochs=epochs,
    )  # fmt: skip
