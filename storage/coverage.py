"""Coverage from the registry and the stored readings, within the caller's scope.

Contract: every method takes the caller's :class:`~smartpark.tenancy.Scope` and
applies it in SQL (park and enterprise columns of the registry, of ``series``
and of the marks); a selection naming something outside the scope is answered
exactly as one naming nothing (:meth:`CoverageStore.parks` returns the name of
what was not found).

The counting stays in the database: the readings of a park's month are counted
grouped by series and local period (``date_trunc(unit, time, zone)``) and come
back one row per (device, data type, period) with the per-metric counts as
arrays; what is expected, the caps and the levels are computed by
:mod:`smartpark.coverage` from the registry rows. Gaps are found in one pass
with ``lag()`` over each series' readings in the range, bounded by the range
and each device's registration. Invalid-marked periods are those of
:meth:`storage.marks.MarkStore.invalid_periods` (marks in force and invalid).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import sql
from psycopg.rows import class_row

from smartpark import coverage as cov
from smartpark.tenancy import Scope
from storage.archive.reader import check_not_evicted
from storage.base import Database, storage_errors, table
from storage.marks import InvalidPeriod, MarkStore


@dataclass(frozen=True, slots=True)
class Selection:
    """What a caller asked coverage for: one park, optionally narrowed to an
    enterprise, an outlet or a device of it (the scope applies on top)."""

    park: str
    enterprise: str | None = None
    outlet: str | None = None
    device: str | None = None

    @property
    def top(self) -> cov.Level:
        if self.device is not None:
            return "device"
        if self.outlet is not None:
            return "outlet"
        return "enterprise" if self.enterprise is not None else "park"


@dataclass(frozen=True, slots=True)
class ParkZone:
    id: str
    timezone: str


@dataclass(frozen=True, slots=True)
class Registered:
    """The registry rows of a selection active at some time in a range."""

    devices: list[cov.DeviceSpec]
    enterprises: list[cov.EntitySpec]
    outlets: list[cov.EntitySpec]


@dataclass(frozen=True, slots=True)
class GapRow:
    """A gap of one series as the database finds it (see :func:`cov.gap_span`)."""

    device: str
    enterprise: str
    metric: str
    data_type: str
    interval_s: int
    previous: datetime
    previous_is_edge: bool
    following: datetime
    mark_kind: str | None
    others_silent: bool


@dataclass(frozen=True, slots=True)
class Gap:
    """A run of missing readings of a device, its metrics merged."""

    device: str
    enterprise: str
    data_type: str
    metrics: tuple[str, ...]
    start: datetime
    end: datetime
    interval_s: int
    missed: int  # per metric
    cause: str


class TooManyRows(Exception):
    """A coverage answer larger than the caller allows (``rows`` > ``limit``)."""

    def __init__(self, rows: int, limit: int) -> None:
        super().__init__(f"{rows} rows, more than {limit}")
        self.rows = rows
        self.limit = limit


class CoverageStore:
    """Coverage reads (see the module doc). Construct with the open storage."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._marks = MarkStore(db)

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def _not_evicted(
        self, what: str, scope: Scope, sel: Selection, start: datetime, end: datetime
    ) -> None:
        """These figures count the hot table's raw rows: refuse a range holding
        days moved to the sealed archive (:class:`~smartpark.errors.ArchivedRange`)."""
        await check_not_evicted(
            self._db, what, park=sel.park,
            enterprise=scope.enterprise or sel.enterprise, start=start, end=end,
        )  # fmt: skip

    # -- what the selection is ------------------------------------------------------

    async def _one(
        self, conn: Any, scope: Scope, name: str, id_: str
    ) -> tuple[str, str | None, str | None] | None:
        """(park, enterprise, outlet) of a registry row within the scope."""
        columns = {
            "parks": "id, NULL::text, NULL::text",
            "enterprises": "park, id, NULL::text",
            "outlets": "park, enterprise, id",
            "devices": "park, enterprise, outlet",
        }[name]
        park_col, ent_col = {
            "parks": ("id", None), "enterprises": ("park", "id"),
            "outlets": ("park", "enterprise"), "devices": ("park", "enterprise"),
        }[name]  # fmt: skip
        conds, params = _scoped(scope, park_col, ent_col)
        cur = await conn.execute(
            sql.SQL("SELECT {} FROM {} WHERE id = %s AND {}").format(
                sql.SQL(columns), self._t(name), _and(conds)
            ),
            [id_, *params],
        )
        row = await cur.fetchone()
        return None if row is None else (row[0], row[1], row[2])

    async def parks(
        self, scope: Scope, *, park: str | None = None, enterprise: str | None = None,
        outlet: str | None = None, device: str | None = None,
    ) -> list[ParkZone] | str:  # fmt: skip
        """The parks (with their time zones) a selection covers, or the name of
        the first thing it names that is not within the scope (``device``,
        ``outlet``, ``enterprise``, ``park``): also when the names contradict
        each other (a device not of the named enterprise)."""
        with storage_errors("read coverage selection"):
            async with self._db.connection() as conn:
                want = {"park": park, "enterprise": enterprise, "outlet": outlet}
                for name, id_, keys in (
                    ("device", device, ("park", "enterprise", "outlet")),
                    ("outlet", outlet, ("park", "enterprise")),
                    ("enterprise", enterprise, ("park",)),
                    ("park", park, ()),
                ):
                    if id_ is None:
                        continue
                    found = await self._one(conn, scope, f"{name}s", id_)
                    if found is None:
                        return name
                    got = dict(zip(("park", "enterprise", "outlet"), found,
                                   strict=True))  # fmt: skip
                    for k in keys:
                        if want[k] is not None and got[k] != want[k]:
                            return name
                    park = park or got["park"]
                conds, params = _scoped(scope, "id", None)
                if park is not None:
                    conds.append(sql.SQL("id = %s"))
                    params.append(park)
                else:
                    conds.append(sql.SQL("retired_at IS NULL"))
                cur = await conn.execute(
                    sql.SQL("SELECT id, timezone FROM {} WHERE {} ORDER BY id").format(
                        self._t("parks"), _and(conds)
                    ),
                    params,
                )
                return [ParkZone(r[0], r[1]) for r in await cur.fetchall()]

    async def registered(
        self, scope: Scope, sel: Selection, *, start: datetime, end: datetime
    ) -> Registered:
        """The devices, enterprises and outlets of the selection registered
        before ``end`` and not retired before ``start``; enterprises only for a
        park or enterprise selection, outlets also for an outlet selection."""
        alive = sql.SQL("created_at < %s AND (retired_at IS NULL OR retired_at > %s)")
        with storage_errors("read registered devices"):
            async with self._db.connection() as conn:
                conds, params = self._sel(scope, sel, "id", "outlet")
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT id, enterprise, outlet, interval_s, metrics,"
                        " data_types, created_at, retired_at FROM {} WHERE {} AND {}"
                        " ORDER BY id"
                    ).format(self._t("devices"), _and(conds), alive),
                    [*params, end, start],
                )
                devices = [
                    cov.DeviceSpec(
                        r[0], r[1], r[2], r[3], tuple(r[4]), r[5], r[6], r[7]
                    )
                    for r in await cur.fetchall()
                ]
                enterprises: list[cov.EntitySpec] = []
                outlets: list[cov.EntitySpec] = []
                if sel.top in ("park", "enterprise"):
                    conds, params = self._sel(scope, sel, None, None, ent_col="id")
                    enterprises = await self._entities(
                        conn, "enterprises", "id", conds, params, alive, start, end
                    )
                if sel.top != "device":
                    conds, params = self._sel(scope, sel, None, "id")
                    outlets = await self._entities(
                        conn, "outlets", "enterprise", conds, params, alive, start, end
                    )
        return Registered(devices, enterprises, outlets)

    async def _entities(  # noqa: PLR0917 - one query, its parts
        self, conn: Any, name: str, ent_col: str, conds: list[sql.Composable],
        params: list[Any], alive: sql.Composable, start: datetime, end: datetime,
    ) -> list[cov.EntitySpec]:  # fmt: skip
        cur = await conn.execute(
            sql.SQL(
                "SELECT id, {}, created_at, retired_at FROM {} WHERE {} AND {}"
                " ORDER BY id"
            ).format(sql.Identifier(ent_col), self._t(name), _and(conds), alive),
            [*params, end, start],
        )
        return [cov.EntitySpec(*r) for r in await cur.fetchall()]

    def _sel(
        self, scope: Scope, sel: Selection, device_col: str | None,
        outlet_col: str | None, *, ent_col: str = "enterprise",
    ) -> tuple[list[sql.Composable], list[Any]]:  # fmt: skip
        """Scope and selection conditions on a registry table's columns (a
        selection by a column the table lacks matches nothing)."""
        conds, params = _scoped(scope, "park", ent_col)
        conds.append(sql.SQL("park = %s"))
        params.append(sel.park)
        for column, value in (
            (ent_col, sel.enterprise), (outlet_col, sel.outlet),
            (device_col, sel.device),
        ):  # fmt: skip
            if value is None:
                continue
            if column is None:
                conds.append(sql.SQL("false"))
                continue
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
        return conds, params

    # -- counts -----------------------------------------------------------------------

    async def invalid_periods(
        self, scope: Scope, sel: Selection, devices: Sequence[str],
        start: datetime, end: datetime,
    ) -> list[InvalidPeriod]:  # fmt: skip
        return await self._marks.invalid_periods(
            scope, park=sel.park, enterprise=sel.enterprise, devices=list(devices),
            start=start, end=end,
        )  # fmt: skip

    async def received(
        self, scope: Scope, sel: Selection, reg: Registered, *,
        periods: Sequence[cov.LocalPeriod], now: datetime,
    ) -> dict[cov.ReceivedKey, dict[str, tuple[int, int]]]:  # fmt: skip
        """(received, valid) per metric of each (device, data type, period) with
        readings: stored value readings of the registered metrics and data types
        in the period clipped to the device's registration and ``now``; valid:
        flagged N and in no invalid-marked period (counted apart, over the few
        marked spans only, each reading once however many marks cover it)."""
        if not periods or not reg.devices:
            return {}
        start, end = periods[0].start, min(periods[-1].end, now)
        if end <= start:
            return {}
        ids = [d.id for d in reg.devices]
        marks = await self.invalid_periods(scope, sel, ids, start, end)
        conds, params = _scoped(scope, "park", "enterprise", alias="s")
        # width_bucket over the periods' starts: the period of a reading as
        # smartpark.coverage.local_periods draws it, with no time zone per row
        query = sql.SQL(
            "WITH dev AS ("
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[],"
            "  %s::timestamptz[], %s::text[]) AS d (id, types, lo, hi, metrics)),"
            " sel AS ("
            " SELECT s.id, s.device, s.metric, s.data_type, dev.lo, dev.hi"
            " FROM {series} s JOIN dev ON dev.id = s.device"
            " WHERE s.park = %s AND s.stat = 'value' AND {conds}"
            "  AND s.data_type = ANY(string_to_array(dev.types, ','))"
            "  AND s.metric = ANY(string_to_array(dev.metrics, ','))),"
            " inv AS ("
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[],"
            "  %s::timestamptz[]) AS m (device, metric, start_at, end_at)),"
            " per AS ("
            " SELECT t.series_id, width_bucket(t.time, %s::timestamptz[]) AS period,"
            "  count(*) AS received, count(*) FILTER (WHERE t.quality = 'N') AS normal"
            " FROM sel JOIN {raw} t ON t.series_id = sel.id"
            " WHERE t.time >= %s AND t.time < %s"
            "  AND t.time >= sel.lo AND t.time < sel.hi"
            " GROUP BY 1, 2),"
            " marked AS ("
            " SELECT t.series_id, width_bucket(t.time, %s::timestamptz[]) AS period,"
            "  count(DISTINCT t.time) AS n"
            " FROM inv JOIN sel ON sel.device = inv.device"
            "  AND (inv.metric IS NULL OR inv.metric = sel.metric)"
            " JOIN {raw} t ON t.series_id = sel.id"
            "  AND t.time >= greatest(inv.start_at, sel.lo)"
            "  AND t.time < least(inv.end_at, sel.hi)"
            " WHERE t.quality = 'N' AND t.time >= %s AND t.time < %s"
            " GROUP BY 1, 2)"
            " SELECT sel.device, sel.data_type, per.period,"
            "  array_agg(sel.metric ORDER BY sel.metric),"
            "  array_agg(per.received ORDER BY sel.metric),"
            "  array_agg(per.normal - coalesce(marked.n, 0) ORDER BY sel.metric)"
            " FROM per JOIN sel ON sel.id = per.series_id"
            " LEFT JOIN marked USING (series_id, period)"
            " GROUP BY 1, 2, 3"
        ).format(series=self._t("series"), raw=self._t("telemetry"), conds=_and(conds))
        windows = [
            cov.clip(start, end, d.registered, d.retired, now) for d in reg.devices
        ]
        dev_params = [
            ids,
            [",".join(d.types) for d in reg.devices],
            [w[0] if w else start for w in windows],
            [w[1] if w else start for w in windows],
            [",".join(d.metrics) for d in reg.devices],
        ]
        mark_params = [
            [m.device for m in marks], [m.metric for m in marks],
            [m.start for m in marks], [m.end for m in marks],
        ]  # fmt: skip
        bounds = [p.start for p in periods]
        with storage_errors("count readings for coverage"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    query,
                    [*dev_params, sel.park, *params, *mark_params,
                     bounds, start, end, bounds, start, end],
                )  # fmt: skip
                rows = await cur.fetchall()
        out: dict[cov.ReceivedKey, dict[str, tuple[int, int]]] = {}
        for device, data_type, period, metrics, received, valid in rows:
            label = periods[period - 1].label
            out[(device, data_type, label)] = {
                m: (int(r), int(v))
                for m, r, v in zip(metrics, received, valid, strict=True)
            }
        return out

    async def figures(
        self, scope: Scope, sel: Selection, *, first: date, last: date,
        unit: cov.PeriodUnit, tz: ZoneInfo, detail: cov.Level = "device",
        max_rows: int | None = None,
    ) -> list[cov.Figure]:  # fmt: skip
        """Every level's figures of the selection per local period ``first`` ..
        ``last`` (see :func:`smartpark.coverage.figures`); the park level only
        for a whole park asked by a caller who sees the whole park. Raises
        :class:`TooManyRows` before counting any reading if the answer would
        have more than ``max_rows`` rows."""
        now = _now(self._db)
        detail = _detail(scope, sel, detail)
        periods = cov.local_periods(first, last, unit, tz)
        await self._not_evicted("coverage figures", scope, sel, periods[0].start,
                                periods[-1].end)  # fmt: skip
        reg = await self.registered(
            scope, sel, start=periods[0].start, end=periods[-1].end
        )
        if max_rows is not None:
            rows = len(periods) * _rows_per_period(reg, detail)
            if rows > max_rows:
                raise TooManyRows(rows, max_rows)
        received = await self.received(scope, sel, reg, periods=periods, now=now)
        return cov.figures(
            sel.park, periods, devices=reg.devices, enterprises=reg.enterprises,
            outlets=reg.outlets, received=received, now=now, tz=tz, detail=detail,
            park_level=_park_level(scope, sel),
        )  # fmt: skip

    async def daily(
        self, scope: Scope, *, park: str, enterprise: str | None = None,
        start: date, end: date, tz: ZoneInfo,
    ) -> list[cov.Figure]:  # fmt: skip
        """Park (or enterprise) and enterprise figures per local day ``start`` ..
        ``end`` inclusive: what the monthly report plots."""
        return await self.figures(
            scope, Selection(park, enterprise), first=start, last=end, unit="day",
            tz=tz, detail="enterprise",
        )  # fmt: skip

    # -- now --------------------------------------------------------------------------

    async def status(
        self, scope: Scope, sel: Selection, *, detail: cov.Level = "device"
    ) -> list[cov.Status]:
        """Registered devices against devices reporting now, per level (see
        :func:`smartpark.coverage.statuses`)."""
        now = _now(self._db)
        detail = _detail(scope, sel, detail)
        reg = await self.registered(scope, sel, start=now, end=now)
        conds, params = self._sel(scope, sel, "id", "outlet")
        with storage_errors("read device status"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT d.id, d.enterprise, d.outlet, d.interval_s,"
                        " d.data_types, l.last FROM {devices} d"
                        " LEFT JOIN LATERAL (SELECT max(t.time) AS last FROM {series} s"
                        " CROSS JOIN LATERAL (SELECT time FROM {raw}"
                        "  WHERE series_id = s.id ORDER BY time DESC LIMIT 1) t"
                        " WHERE s.device = d.id AND s.park = d.park"
                        " AND s.enterprise = d.enterprise AND s.stat = 'value') l"
                        " ON true WHERE d.retired_at IS NULL AND {conds} ORDER BY d.id"
                    ).format(
                        devices=self._t("devices"),
                        series=self._t("series"),
                        raw=self._t("telemetry"),
                        conds=_and(conds),
                    ),
                    params,
                )
                rows = await cur.fetchall()
        devices = [
            cov.DeviceNow(
                r[0], r[1], r[2], min(cov.reported_types(r[3], r[4]).values()), r[5]
            )
            for r in rows
        ]
        return cov.statuses(
            sel.park, devices, enterprises=[e.id for e in reg.enterprises],
            outlets=[(o.id, o.enterprise) for o in reg.outlets], now=now,
            detail=detail, park_level=_park_level(scope, sel),
        )  # fmt: skip

    # -- gaps -------------------------------------------------------------------------

    async def gaps(
        self, scope: Scope, sel: Selection, *, start: datetime, end: datetime,
        limit: int,
    ) -> list[Gap]:  # fmt: skip
        """Runs of missing readings longer than the threshold of
        :func:`smartpark.coverage.is_gap` per series of the selection's registered
        device-metrics and data types in ``[start, end)`` (clipped to each
        device's registration and now), their metrics merged, at most ``limit``
        series gaps read (the caller asks for one more to know there are more)."""
        now = _now(self._db)
        end = min(end, now)
        if end <= start:
            return []
        await self._not_evicted("coverage gaps", scope, sel, start, end)
        reg = await self.registered(scope, sel, start=start, end=end)
        if not reg.devices:
            return []
        ids = [d.id for d in reg.devices]
        marks = await self.invalid_periods(scope, sel, ids, start, end)
        windows = [
            cov.clip(start, end, d.registered, d.retired, now) for d in reg.devices
        ]
        want: list[tuple[str, str, str, str, int, datetime, datetime]] = [
            (d.id, d.enterprise, m, dt, iv, w[0], w[1])
            for d, w in zip(reg.devices, windows, strict=True)
            if w is not None
            for dt, iv in d.types.items()
            for m in d.metrics
        ]
        if not want:
            return []
        conds, params = _scoped(scope, "park", "enterprise", alias="s")
        others, other_params = _scoped(scope, "park", "enterprise", alias="s2")
        query = sql.SQL(
            "WITH want AS ("
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
            "  %s::int[], %s::timestamptz[], %s::timestamptz[]) WITH ORDINALITY"
            "  AS w (device, enterprise, metric, data_type, interval_s, lo, hi, k)),"
            " dev AS (SELECT DISTINCT device, enterprise, lo, hi FROM want),"
            " inv AS ("
            " SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[],"
            "  %s::timestamptz[], %s::text[]) AS m (device, metric, start_at, end_at,"
            "  kind)),"
            " sel AS ("
            " SELECT w.*, s.id AS series_id FROM want w LEFT JOIN {series} s"
            "  ON s.park = %s AND s.enterprise = w.enterprise AND s.device = w.device"
            "  AND s.metric = w.metric AND s.data_type = w.data_type"
            "  AND s.stat = 'value' AND {conds}),"
            # each wanted series by its number k: an integer to partition by
            " pts AS ("
            " SELECT sel.k, t.time, 0 AS edge"
            "  FROM sel JOIN {raw} t ON t.series_id = sel.series_id"
            "  WHERE t.time >= %s AND t.time < %s"
            "   AND t.time >= sel.lo AND t.time < sel.hi"
            " UNION ALL SELECT k, lo, -1 FROM sel"
            " UNION ALL SELECT k, hi, 1 FROM sel),"
            " runs AS ("
            " SELECT k, lag(time) OVER w AS previous,"
            "  lag(edge) OVER w AS previous_edge, time AS following FROM pts"
            " WINDOW w AS (PARTITION BY k ORDER BY time, edge))"
            " SELECT sel.device, sel.enterprise, sel.metric, sel.data_type,"
            "  sel.interval_s,"
            "  r.previous, r.previous_edge = -1 AS previous_is_edge, r.following,"
            "  mk.kind AS mark_kind,"
            "  EXISTS (SELECT 1 FROM dev d2 WHERE d2.enterprise = sel.enterprise"
            "   AND d2.device <> sel.device AND d2.lo < r.following"
            "   AND d2.hi > r.previous)"
            "  AND NOT EXISTS (SELECT 1 FROM {series} s2 JOIN {raw} t2"
            "   ON t2.series_id = s2.id WHERE s2.park = %s"
            "   AND s2.enterprise = sel.enterprise AND s2.device <> sel.device"
            "   AND {others}"
            "   AND t2.time > r.previous + sel.interval_s * interval '1 second'"
            "   AND t2.time < r.following - sel.interval_s * interval '1 second')"
            "  AS others_silent"
            " FROM runs r JOIN sel USING (k)"
            " LEFT JOIN LATERAL (SELECT inv.kind FROM inv"
            "  WHERE inv.device = sel.device"
            "  AND (inv.metric IS NULL OR inv.metric = sel.metric)"
            "  AND inv.start_at < r.following AND inv.end_at > r.previous"
            "  ORDER BY least(inv.end_at, r.following)"
            "   - greatest(inv.start_at, r.previous) DESC, inv.start_at"
            "  LIMIT 1) mk ON true"
            " WHERE r.previous IS NOT NULL"
            "  AND r.following - r.previous > %s * sel.interval_s * interval '1 second'"
            " ORDER BY sel.device, sel.data_type, r.previous, sel.metric"
            " LIMIT %s"
        ).format(
            series=self._t("series"), raw=self._t("telemetry"), conds=_and(conds),
            others=_and(others),
        )  # fmt: skip
        columns = [list(c) for c in zip(*want, strict=True)]
        mark_params = [
            [m.device for m in marks], [m.metric for m in marks],
            [m.start for m in marks], [m.end for m in marks],
            [m.kind for m in marks],
        ]  # fmt: skip
        with storage_errors("find coverage gaps"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(GapRow)) as cur,
            ):
                await cur.execute(
                    query,
                    [*columns, *mark_params, sel.park, *params, start, end,
                     sel.park, *other_params, cov.GAP_INTERVALS, limit],
                )  # fmt: skip
                rows = await cur.fetchall()
        return merge_gaps(rows)

    # -- sequence numbers -------------------------------------------------------------

    async def sequence(
        self, scope: Scope, park: str, device: str, *, start: datetime,
        end: datetime, max_polls: int,
    ) -> list[cov.EpochSequence]:  # fmt: skip
        """The device's stored polls in ``[start, end)`` per edge outbox epoch
        (:func:`smartpark.coverage.sequences`). More than ``max_polls`` distinct
        (time, seq) pairs is :class:`TooManyRows`, found before they are all read
        into memory."""
        await self._not_evicted("sequence numbers", scope, Selection(park), start, end)
        conds, params = _scoped(scope, "park", "enterprise", alias="s")
        polls = sql.SQL(
            "SELECT t.time, t.seq FROM {series} s JOIN {raw} t ON t.series_id = s.id"
            " WHERE s.park = %s AND s.device = %s AND {conds}"
            "  AND t.time >= %s AND t.time < %s"
            " GROUP BY t.time, t.seq LIMIT %s"
        ).format(
            series=self._t("series"), raw=self._t("telemetry"), conds=_and(conds)
        )  # fmt: skip
        epochs = sql.SQL(
            "SELECT epoch, first_time FROM {} WHERE park = %s AND device = %s"
        ).format(self._t("device_epochs"))
        with storage_errors("read sequence numbers"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    polls, [park, device, *params, start, end, max_polls + 1]
                )
                rows: list[tuple[datetime, int]] = await cur.fetchall()
                if len(rows) > max_polls:
                    raise TooManyRows(len(rows), max_polls)
                cur = await conn.execute(epochs, [park, device])
                starts: list[tuple[str, datetime]] = await cur.fetchall()
        return cov.sequences(rows, starts)


def merge_gaps(rows: Sequence[GapRow]) -> list[Gap]:
    """One gap per (device, data type, span), its metrics listed."""
    merged: dict[tuple[str, str, datetime, datetime], tuple[GapRow, list[str]]] = {}
    for r in rows:
        key = (r.device, r.data_type, r.previous, r.following)
        if key in merged:
            merged[key][1].append(r.metric)
        else:
            merged[key] = (r, [r.metric])
    out = []
    for r, metrics in merged.values():
        span = cov.gap_span(r.previous, r.previous_is_edge, r.following, r.interval_s)
        out.append(
            Gap(
                device=r.device,
                enterprise=r.enterprise,
                data_type=r.data_type,
                metrics=tuple(sorted(metrics)),
                start=span.start,
                end=span.end,
                interval_s=r.interval_s,
                missed=span.missed,
                cause=cov.gap_cause(r.mark_kind, r.others_silent),
            )
        )
    return out


def _rows_per_period(reg: Registered, detail: cov.Level) -> int:
    depth = cov.LEVELS.index(detail)
    sizes = (1, len(reg.enterprises), len(reg.outlets), len(reg.devices))
    return sum(sizes[: depth + 1])


def _detail(scope: Scope, sel: Selection, detail: cov.Level) -> cov.Level:
    """``detail``, but never above the selection's own level (nor above the
    enterprise for an enterprise's caller, who gets no park figure)."""
    top = cov.LEVELS.index(sel.top)
    if scope.enterprise is not None:
        top = max(top, cov.LEVELS.index("enterprise"))
    return cov.LEVELS[max(top, cov.LEVELS.index(detail))]


def _park_level(scope: Scope, sel: Selection) -> bool:
    """The park's figures: for a whole park, to a caller who sees all of it."""
    return sel.top == "park" and scope.enterprise is None


def _now(db: Database) -> datetime:
    return datetime.fromtimestamp(db.clock() / 1000, UTC)


def _scoped(
    scope: Scope, park_col: str, ent_col: str | None, *, alias: str | None = None
) -> tuple[list[sql.Composable], list[Any]]:
    def col(name: str) -> sql.Identifier:
        return sql.Identifier(alias, name) if alias else sql.Identifier(name)

    conds: list[sql.Composable] = []
    params: list[Any] = []
    if scope.park is not None:
        conds.append(sql.SQL("{} = %s").format(col(park_col)))
        params.append(scope.park)
    # a park row (no enterprise column): an enterprise sees its own park
    if scope.enterprise is not None and ent_col is not None:
        conds.append(sql.SQL("{} = %s").format(col(ent_col)))
        params.append(scope.enterprise)
    return conds, params


def _and(conds: Sequence[sql.Composable]) -> sql.Composable:
    if not conds:
        return sql.SQL("true")
    return sql.SQL(" AND ").join(conds)
