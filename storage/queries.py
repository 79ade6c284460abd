"""Telemetry as the API reads it: raw readings, aggregates, latest values, always
within the caller's :class:`~smartpark.tenancy.Scope`.

Tenancy is applied here, in SQL: every query joins ``series`` and restricts its
park and enterprise to the scope's, whatever filters the caller gave. A filter
naming another tenant's device simply matches nothing, exactly as a device that
does not exist.

Pages are keyed, never offset: raw readings by (time, device, metric, data type,
stat), aggregates by (bucket, device, metric, data type, stat). :class:`PageKey`
is the position after the last row of a page; a crafted key from another
tenant's data only positions the scan, the scope still filters it.

Aggregates: buckets start at local boundaries of the given time zone
(``date_trunc(unit, time, zone)``): an hour, a day, an ISO week (Monday), a
month start at local midnight; sub-hour buckets (1, 5, 15 min) are bins of the
local hour. They come from the raw rows, or on plain PostgreSQL from the
rollups (``source="rollup"``) where the rollups cover the range: whole UTC
hours (``telemetry_1h``) when the zone's offset is whole hours over the range
and the interval is an hour or longer, whole minutes (``telemetry_1m``)
otherwise; ``auto`` takes the rollups only where the refresh log
(``rollup_pending``) holds no minute of the range, so both give the same
numbers. TimescaleDB's continuous aggregates do not show late rows until their
next refresh, so there ``auto`` reads the raw rows.

Counters (catalogue ``kind: counter``) also get ``consumption``: the sum of the
steps between consecutive readings of the series whose later reading falls in
the bucket (the step into the first reading of the range starts from the last
reading before it). A reading flagged ``reset`` starts again from zero: its step
is its own value, never a negative one; a decrease without a reset flag (a meter
error) counts as zero and is reported in ``negative_steps``.

Archive: raw readings and exports also return the rows of days evicted from the
hot table into the sealed archive (:mod:`storage.archive.reader`), merged in key
order with the hot rows, so paging runs across the seam unchanged (both sides
order text by code point: the SQL side with ``COLLATE "C"``, whatever the
database's collation). The archive's days are
planned before the export's cursor opens and read one enterprise-day at a time.
A key present on both sides (a late row of an evicted day) is the archived row.
Aggregates, consumption, ``latest`` and silent devices read the hot table only
(README, "Sealed archive", what they return for evicted days).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo

from psycopg import sql

from smartpark.catalogue import METRICS, Kind
from smartpark.tenancy import Scope
from storage.archive.reader import (
    ArchivedDay,
    RowFilter,
    plan_read,
    read_planned,
    refuse_evicted,
)
from storage.archive.segment import ArchivedRow
from storage.base import Database, storage_errors, table
from storage.model import Dialect

Interval = Literal["1min", "5min", "15min", "1h", "1d", "1w", "1mo"]
Source = Literal["auto", "raw", "rollup"]
INTERVALS: dict[str, tuple[str, int]] = {
    # interval: (date_trunc unit, minutes per bin within it (0: the whole unit))
    "1min": ("minute", 0),
    "5min": ("hour", 5),
    "15min": ("hour", 15),
    "1h": ("hour", 0),
    "1d": ("day", 0),
    "1w": ("week", 0),
    "1mo": ("month", 0),
}
# The longest each interval can be: for estimating how many buckets a range makes.
_APPROX = {
    "1min": timedelta(minutes=1),
    "5min": timedelta(minutes=5),
    "15min": timedelta(minutes=15),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
    "1w": timedelta(days=7),
    "1mo": timedelta(days=28),
}
_COUNTERS = sorted(n for n, m in METRICS.items() if m.kind is Kind.COUNTER)


@dataclass(frozen=True, slots=True)
class Filters:
    """What the caller asked for (None: any); the scope is applied on top."""

    park: str | None = None
    enterprise: str | None = None
    device: str | None = None
    metric: str | None = None
    data_type: str | None = "realtime"
    stat: str | None = "value"
    devices: tuple[str, ...] | None = None  # e.g. an outlet's devices


@dataclass(frozen=True, slots=True)
class PageKey:
    """The position after a page's last row (see the module doc)."""

    time: datetime
    device: str
    metric: str
    data_type: str
    stat: str


@dataclass(frozen=True, slots=True)
class ReadingOut:
    time: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    data_type: str
    stat: str
    unit: str
    value: float
    quality: str
    seq: int
    reset: str | None

    @property
    def key(self) -> PageKey:
        return PageKey(self.time, self.device, self.metric, self.data_type, self.stat)


@dataclass(frozen=True, slots=True)
class BucketOut:
    bucket: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    data_type: str
    stat: str
    unit: str
    count: int
    sum: float
    min: float
    max: float
    consumption: float | None
    negative_steps: int | None

    @property
    def mean(self) -> float:
        return self.sum / self.count

    @property
    def key(self) -> PageKey:
        return PageKey(self.bucket, self.device, self.metric, self.data_type, self.stat)


@dataclass(frozen=True, slots=True)
class SilentDevice:
    device: str
    park: str
    enterprise: str
    outlet: str | None
    interval_s: int
    last_reading: datetime | None


def _series_where(
    scope: Scope, f: Filters, alias: str = "s"
) -> tuple[list[sql.Composable], list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    device_column = "device" if alias != "d" else "id"  # registry devices: id
    for column, value in (
        ("park", scope.park), ("enterprise", scope.enterprise),
        ("park", f.park), ("enterprise", f.enterprise), (device_column, f.device),
        ("metric", f.metric), ("data_type", f.data_type), ("stat", f.stat),
    ):  # fmt: skip
        if value is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(alias, column)))
            params.append(value)
    if f.devices is not None and alias != "d":
        conds.append(sql.SQL("{} = ANY(%s)").format(sql.Identifier(alias, "device")))
        params.append(list(f.devices))
    return conds, params


_SortKey = tuple[datetime, str, str, str, str]


def _key_of(r: ReadingOut | ArchivedRow) -> _SortKey:
    return (r.time, r.device, r.metric, r.data_type, r.stat)


def _page_tuple(k: PageKey) -> _SortKey:
    return (k.time, k.device, k.metric, k.data_type, k.stat)


def _archive_filter(scope: Scope, f: Filters) -> RowFilter | None:
    """The archive's filter for the scope and filters; None when they
    contradict (nothing matches)."""
    park, enterprise = f.park, f.enterprise
    for mine, theirs in ((scope.park, park), (scope.enterprise, enterprise)):
        if mine is not None and theirs is not None and mine != theirs:
            return None
    return RowFilter(
        park=scope.park or park, enterprise=scope.enterprise or enterprise,
        device=f.device, metric=f.metric, data_type=f.data_type, stat=f.stat,
        devices=f.devices,
    )  # fmt: skip


def _merge_keyed(hot: list[ReadingOut], cold: list[ReadingOut]) -> list[ReadingOut]:
    """Both in key order, merged; a key in both (a late row of an evicted day not
    yet amended and evicted again) is the archived row."""
    by_key = {_key_of(r): r for r in hot}
    by_key.update((_key_of(r), r) for r in cold)
    return [by_key[k] for k in sorted(by_key)]


async def _archived(
    db: Database, scope: Scope, f: Filters, start: datetime, end: datetime
) -> AsyncIterator[ArchivedDay]:
    """The archived days of a read (planned now, before any cursor is open)."""
    where = _archive_filter(scope, f)
    if where is None:
        return _nothing()
    return read_planned(await plan_read(db, start=start, end=end, where=where))


async def _nothing() -> AsyncIterator[ArchivedDay]:
    return
    yield


class _Merge:
    """Merges the hot rows of an export, chunk by chunk, with the archived rows of
    evicted days (loaded one enterprise-day at a time, as the export reaches
    them), in key order."""

    def __init__(self, days: AsyncIterator[ArchivedDay]) -> None:
        self._days = days
        self._next: ArchivedDay | None = None
        self._pending: list[ReadingOut] = []
        self._done = False

    async def _peek(self) -> ArchivedDay | None:
        if self._next is None and not self._done:
            self._next = await anext(self._days, None)
            self._done = self._next is None
        return self._next

    async def _fill(self, upto: datetime | None) -> None:
        """Load every archived day starting at or before ``upto`` (None: all)."""
        while (day := await self._peek()) is not None and (
            upto is None or day.start <= upto
        ):
            self._next = None
            self._pending = _merge_keyed(
                self._pending, [ReadingOut(*r) for r in day.rows]
            )

    async def take(self, hot: list[ReadingOut]) -> list[ReadingOut]:
        """``hot`` with the archived rows that sort up to its last one."""
        last = _key_of(hot[-1])
        await self._fill(last[0])
        cut = 0
        while cut < len(self._pending) and _key_of(self._pending[cut]) <= last:
            cut += 1
        cold, self._pending = self._pending[:cut], self._pending[cut:]
        return _merge_keyed(hot, cold) if cold else hot

    async def rest(self) -> list[ReadingOut]:
        await self._fill(None)
        rest, self._pending = self._pending, []
        return rest


def _and(conds: Sequence[sql.Composable]) -> sql.Composable:
    if not conds:
        return sql.SQL("true")
    return sql.SQL(" AND ").join(conds)


def _aligned(start: datetime, end: datetime, seconds: int) -> bool:
    """Whether both ends fall on a boundary of ``seconds`` (UTC epoch bins)."""
    return all(
        int(t.timestamp()) % seconds == 0 and t.microsecond == 0 for t in (start, end)
    )


def estimate_buckets(start: datetime, end: datetime, interval: str) -> int:
    """At most how many buckets ``[start, end)`` makes at ``interval`` (per series)."""
    return int((end - start) / _APPROX[interval]) + 2


def whole_hour_offsets(tz: ZoneInfo, start: datetime, end: datetime) -> bool:
    """Whether ``tz`` is a whole number of hours from UTC over the range (checked
    at both ends and every 30 days between)."""
    t = start
    while True:
        off = t.astimezone(tz).utcoffset()
        if off is None or off.total_seconds() % 3600:
            return False
        if t >= end:
            return True
        t = min(end, t + timedelta(days=30))


class TelemetryQueries:
    """The API's reads of telemetry (see the module doc)."""

    def __init__(self, db: Database, dialect: Dialect) -> None:
        self._db = db
        self._dialect = dialect

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def count_series(self, scope: Scope, f: Filters) -> int:
        conds, params = _series_where(scope, f)
        with storage_errors("count series"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL("SELECT count(*) FROM {} s WHERE {}").format(
                        self._t("series"), _and(conds)
                    ),
                    params,
                )
                row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- raw ----------------------------------------------------------------------

    def _readings_sql(
        self, scope: Scope, f: Filters, start: datetime, end: datetime,
        after: PageKey | None,
    ) -> tuple[sql.Composed, list[Any]]:  # fmt: skip
        conds, params = _series_where(scope, f)
        conds += [sql.SQL("t.time >= %s"), sql.SQL("t.time < %s")]
        params += [start, end]
        if after is not None:
            conds.append(
                sql.SQL(
                    '(t.time, s.device COLLATE "C", s.metric COLLATE "C",'
                    ' s.data_type COLLATE "C", s.stat COLLATE "C")'
                    " > (%s, %s, %s, %s, %s)"
                )
            )
            params += [after.time, after.device, after.metric, after.data_type,
                       after.stat]  # fmt: skip
        return sql.SQL(
            "SELECT t.time, s.park, s.enterprise, s.device, s.metric, s.data_type,"
            " s.stat, s.unit, t.value, t.quality::text, t.seq, t.reset"
            " FROM {} t JOIN {} s ON s.id = t.series_id WHERE {}"
            ' ORDER BY t.time, s.device COLLATE "C", s.metric COLLATE "C",'
            ' s.data_type COLLATE "C", s.stat COLLATE "C"'
        ).format(self._t("telemetry"), self._t("series"), _and(conds)), params

    async def readings(
        self, scope: Scope, f: Filters, *, start: datetime, end: datetime,
        after: PageKey | None = None, limit: int = 1000,
    ) -> list[ReadingOut]:  # fmt: skip
        """Up to ``limit`` readings after ``after``, in key order: the hot rows
        and the archived rows of evicted days (module doc, "Archive")."""
        query, params = self._readings_sql(scope, f, start, end, after)
        with storage_errors("read readings"):
            async with self._db.connection() as conn:
                cur = await conn.execute(query + sql.SQL(" LIMIT %s"), [*params, limit])
                hot = [ReadingOut(*r) for r in await cur.fetchall()]
        cold: list[ReadingOut] = []
        # rows before the page key's time cannot follow it: skip their days
        first = start if after is None else max(start, after.time)
        async for day in await _archived(self._db, scope, f, first, end):
            if len(hot) == limit and day.start > hot[-1].time:
                break  # every row of it sorts after the hot page
            if len(cold) >= limit and day.start > cold[-1].time:
                break
            cold = _merge_keyed(cold, [
                ReadingOut(*r) for r in day.rows
                if after is None or _key_of(r) > _page_tuple(after)
            ])  # fmt: skip
        if not cold:
            return hot
        return _merge_keyed(hot, cold)[:limit]

    async def stream_readings(
        self, scope: Scope, f: Filters, *, start: datetime, end: datetime,
        chunk: int = 5000,
    ) -> AsyncIterator[list[ReadingOut]]:  # fmt: skip
        """Every reading of the range in key order, ``chunk`` rows at a time
        through a server-side cursor: memory stays flat whatever the range
        (archived rows are held one evicted enterprise-day at a time)."""
        query, params = self._readings_sql(scope, f, start, end, None)
        merged = _Merge(await _archived(self._db, scope, f, start, end))
        with storage_errors("export readings"):
            async with (
                self._db.connection() as conn,
                conn.transaction(),
                conn.cursor(name="sp_export") as cur,
            ):
                await cur.execute(query, params)
                while rows := await cur.fetchmany(chunk):
                    out = await merged.take([ReadingOut(*r) for r in rows])
                    if out:
                        yield out
        rest = await merged.rest()
        for i in range(0, len(rest), chunk):
            yield rest[i : i + chunk]

    # -- aggregates -----------------------------------------------------------------

    async def aggregates(
        self, scope: Scope, f: Filters, *, start: datetime, end: datetime,
        interval: str, tz: ZoneInfo, source: Source = "auto",
        after: PageKey | None = None, limit: int = 1000, consumption: bool = True,
    ) -> tuple[list[BucketOut], str]:  # fmt: skip
        """Up to ``limit`` buckets after ``after`` and the source read
        (``raw`` or ``rollup``); see the module doc. ``consumption=False`` skips
        the counters' consumption, which reads raw rows whatever the source."""
        unit, bin_minutes = INTERVALS[interval]
        with storage_errors("read aggregates"):
            async with self._db.connection() as conn:
                use = source
                if source == "auto":
                    use = "raw"
                    if self._dialect is Dialect.POSTGRES and await self._covered(
                        conn, start, end
                    ):
                        use = "rollup"
                hourly = (
                    bin_minutes == 0
                    and unit != "minute"
                    and whole_hour_offsets(tz, start, end)
                )
                if use == "rollup" and self._dialect is not Dialect.POSTGRES:
                    use = "raw"  # see the module doc
                if use == "raw" or consumption:
                    await refuse_evicted(
                        conn, self._db.schema,
                        "raw aggregates and counter consumption",
                        park=scope.park or f.park,
                        enterprise=scope.enterprise or f.enterprise,
                        start=start, end=end,
                    )  # fmt: skip
                base = (
                    self._rollup_base(hourly) if use == "rollup" else self._raw_base()
                )
                query, params = self._aggregate_sql(
                    scope, f, base, start, end, unit, bin_minutes, tz, after,
                    _COUNTERS if consumption else [],
                )  # fmt: skip
                cur = await conn.execute(query + sql.SQL(" LIMIT %s"), [*params, limit])
                rows = [BucketOut(*r) for r in await cur.fetchall()]
        return rows, use

    async def _covered(self, conn: Any, start: datetime, end: datetime) -> bool:
        cur = await conn.execute(
            sql.SQL(
                "SELECT NOT EXISTS (SELECT 1 FROM {} WHERE bucket >= %s - interval"
                " '1 minute' AND bucket < %s)"
            ).format(self._t("rollup_pending")),
            (start, end),
        )
        row = await cur.fetchone()
        return bool(row and row[0])

    def _raw_base(self) -> sql.Composable:
        # one row per reading: (series_id, time, n, sum, min, max)
        return sql.SQL(
            "SELECT series_id, time, 1::bigint AS n, value AS sum, value AS min,"
            " value AS max FROM {}"
        ).format(self._t("telemetry"))

    def _rollup_base(self, hourly: bool) -> sql.Composable:
        name = "telemetry_1h" if hourly else "telemetry_1m"
        return sql.SQL(
            "SELECT series_id, bucket AS time, n, sum, min, max FROM {}"
        ).format(self._t(name))

    def _aggregate_sql(  # noqa: PLR0917 - one query, its parts
        self, scope: Scope, f: Filters, base: sql.Composable, start: datetime,
        end: datetime, unit: str, bin_minutes: int, tz: ZoneInfo,
        after: PageKey | None, counters: list[str],
    ) -> tuple[sql.Composed, list[Any]]:  # fmt: skip
        conds, params = _series_where(scope, f)
        zone = sql.Literal(tz.key)

        def bucket(alias: str) -> sql.Composable:
            time = sql.Identifier(alias, "time")
            trunc = sql.SQL("date_trunc({}, {}, {})").format(
                sql.Literal(unit), time, zone
            )
            if not bin_minutes:
                return trunc
            return sql.SQL(
                "({t} + floor(extract(minute FROM {time} AT TIME ZONE {z}) / {m})"
                " * {m} * interval '1 minute')"
            ).format(t=trunc, time=time, z=zone, m=sql.Literal(bin_minutes))

        page = sql.SQL("true")
        page_params: list[Any] = []
        if after is not None:
            page = sql.SQL(
                "(a.bucket, s.device, s.metric, s.data_type, s.stat)"
                " > (%s, %s, %s, %s, %s)"
            )
            page_params = [after.time, after.device, after.metric, after.data_type,
                           after.stat]  # fmt: skip
        # Counter steps: each reading's step from the one before it (the one
        # before the range included), a reset restarting from zero.
        steps = sql.SQL(
            "steps AS ("
            " SELECT x.series_id, x.time,"
            "  CASE WHEN x.reset IS NOT NULL THEN x.value"
            "   ELSE x.value - lag(x.value) OVER w END AS step"
            " FROM ("
            "  SELECT t.series_id, t.time, t.value, t.reset FROM {raw} t"
            "  WHERE t.series_id IN (SELECT id FROM sel WHERE counter)"
            "   AND t.time >= %s AND t.time < %s"
            "  UNION ALL"
            "  SELECT p.series_id, p.time, p.value, NULL FROM sel"
            "  CROSS JOIN LATERAL (SELECT series_id, time, value FROM {raw}"
            "   WHERE series_id = sel.id AND time < %s ORDER BY time DESC LIMIT 1) p"
            "  WHERE sel.counter"
            " ) x WINDOW w AS (PARTITION BY x.series_id ORDER BY x.time)),"
            " consumed AS ("
            " SELECT s.series_id, {strunc} AS bucket,"
            "  sum(greatest(s.step, 0)) AS consumption,"
            "  count(*) FILTER (WHERE s.step < 0)::int AS negative_steps"
            " FROM (SELECT series_id, time AS time, step FROM steps"
            "  WHERE time >= %s AND step IS NOT NULL) s"
            " GROUP BY 1, 2)"
        ).format(raw=self._t("telemetry"), strunc=bucket("s"))
        query = sql.SQL(
            "WITH sel AS (SELECT s.id, s.metric = ANY(%s) AS counter FROM {series} s"
            " WHERE {conds}),"
            " {steps},"
            " agg AS ("
            " SELECT b.series_id, {trunc} AS bucket, sum(b.n)::bigint AS n,"
            "  sum(b.sum) AS sum, min(b.min) AS min, max(b.max) AS max"
            " FROM ({base}) b WHERE b.series_id IN (SELECT id FROM sel)"
            "  AND b.time >= %s AND b.time < %s GROUP BY 1, 2)"
            " SELECT a.bucket, s.park, s.enterprise, s.device, s.metric, s.data_type,"
            "  s.stat, s.unit, a.n, a.sum, a.min, a.max,"
            "  CASE WHEN sel.counter THEN coalesce(c.consumption, 0) END,"
            "  CASE WHEN sel.counter THEN coalesce(c.negative_steps, 0) END"
            " FROM agg a JOIN {series} s ON s.id = a.series_id"
            " JOIN sel ON sel.id = a.series_id"
            " LEFT JOIN consumed c ON c.series_id = a.series_id AND c.bucket = a.bucket"
            " WHERE {page}"
            " ORDER BY a.bucket, s.device, s.metric, s.data_type, s.stat"
        ).format(
            series=self._t("series"), conds=_and(conds), steps=steps, trunc=bucket("b"),
            base=base, page=page,
        )  # fmt: skip
        all_params = [
            counters, *params,  # sel
            start, end, start, start,  # steps, consumed
            start, end,  # agg
            *page_params,
        ]  # fmt: skip
        return query, all_params

    async def park_timezone(self, scope: Scope, park: str) -> str | None:
        """The registry's time zone of ``park`` within ``scope`` (None if the park
        is not registered or not the caller's)."""
        if not scope.allows(park, scope.enterprise):
            return None
        with storage_errors("read park time zone"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    "SELECT to_regclass(%s) IS NOT NULL",
                    (self._t("parks").as_string(conn),),
                )
                exists = await cur.fetchone()
                if not (exists and exists[0]):
                    return None
                cur = await conn.execute(
                    sql.SQL("SELECT timezone FROM {} WHERE id = %s").format(
                        self._t("parks")
                    ),
                    (park,),
                )
                row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def outlet_devices(self, scope: Scope, outlet: str) -> tuple[str, ...]:
        """The registered devices of ``outlet`` within ``scope`` (none if the outlet
        does not exist or is not the caller's: the same answer)."""
        conds, params = _series_where(scope, Filters(data_type=None, stat=None), "d")
        with storage_errors("read outlet devices"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT d.id FROM {} d WHERE d.outlet = %s AND {} ORDER BY 1"
                    ).format(self._t("devices"), _and(conds)),
                    [outlet, *params],
                )
                return tuple(r[0] for r in await cur.fetchall())

    async def silent(
        self, scope: Scope, f: Filters, *, now: datetime, periods: float
    ) -> list[SilentDevice]:
        """Registered, unretired devices within scope whose newest reading (of any
        series) is older than ``periods`` of their expected interval at ``now``,
        or that never sent one; the longest silent first."""
        conds, params = _series_where(
            scope, Filters(f.park, f.enterprise, f.device, data_type=None, stat=None),
            "d",
        )  # fmt: skip
        if f.devices is not None:
            conds.append(sql.SQL("d.id = ANY(%s)"))
            params.append(list(f.devices))
        with storage_errors("read silent devices"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT d.id, d.park, d.enterprise, d.outlet, d.interval_s,"
                        " l.last FROM {devices} d LEFT JOIN LATERAL ("
                        " SELECT max(t.time) AS last FROM {series} s"
                        " CROSS JOIN LATERAL (SELECT time FROM {raw}"
                        "  WHERE series_id = s.id ORDER BY time DESC LIMIT 1) t"
                        " WHERE s.device = d.id AND s.park = d.park"
                        " AND s.enterprise = d.enterprise) l ON true"
                        " WHERE d.retired_at IS NULL AND {conds}"
                        " AND (l.last IS NULL"
                        "  OR l.last < %s - d.interval_s * %s * interval '1 second')"
                        " ORDER BY l.last NULLS FIRST, d.id"
                    ).format(
                        devices=self._t("devices"),
                        series=self._t("series"),
                        raw=self._t("telemetry"),
                        conds=_and(conds),
                    ),
                    [*params, now, periods],
                )
                return [SilentDevice(*r) for r in await cur.fetchall()]

    # -- latest ---------------------------------------------------------------------

    async def latest(self, scope: Scope, f: Filters) -> list[ReadingOut]:
        """The newest reading of every series within the scope and filters."""
        conds, params = _series_where(scope, f)
        with storage_errors("read latest"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT l.time, s.park, s.enterprise, s.device, s.metric,"
                        " s.data_type, s.stat, s.unit, l.value, l.quality::text, l.seq,"
                        " l.reset FROM {series} s CROSS JOIN LATERAL ("
                        " SELECT time, value, quality, seq, reset FROM {raw}"
                        " WHERE series_id = s.id ORDER BY time DESC LIMIT 1) l"
                        " WHERE {conds}"
                        " ORDER BY s.device, s.metric, s.data_type, s.stat"
                    ).format(
                        series=self._t("series"),
                        raw=self._t("telemetry"),
                        conds=_and(conds),
                    ),
                    params,
                )
                return [ReadingOut(*r) for r in await cur.fetchall()]
