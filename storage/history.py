"""Stored telemetry read back in event-time order, for replay (and later the archive).

:meth:`HistoryStore.read` is the one way replay reads history: every stored
reading of a scope (park; enterprise; a set of devices) in ``[start, end)``,
ordered by (time, enterprise, device, metric, data type, stat), in batches of
typed rows through a server-side cursor (one transaction, REPEATABLE READ: the
rows are one snapshot of the database, however long the read takes).

Days whose rows left the hot database for the sealed archive
(``archive_evictions``) are read from the archive (:mod:`storage.archive.reader`:
each segment checked against its manifest's SHA-256 before its rows are used) and
merged into the same order; a key found in both (a late row of an evicted day) is
the archived row, as the API's reads take it. Text sorts by code point on both
sides (``COLLATE "C"``). Memory holds the archived rows of one local day of the
scope at a time.

Every method raises :class:`~smartpark.errors.StorageError` when the database
fails.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from psycopg import sql
from psycopg.rows import args_row, class_row

from storage.archive.reader import (
    ArchivedDay,
    ReadPlan,
    RowFilter,
    plan_read,
    read_planned,
)
from storage.base import Database, storage_errors, table
from storage.rule_marks import RuleMarkRow


class HistoryRow(NamedTuple):
    """One stored reading with its series, as the rules see it."""

    ts_ms: int
    park: str
    enterprise: str
    device: str
    metric: str
    value: float
    quality: str
    seq: int
    reset: str | None
    data_type: str
    stat: str


@dataclass(frozen=True, slots=True)
class HistoryScope:
    """What to read: a park, optionally one enterprise, optionally some devices."""

    park: str
    enterprise: str | None = None
    devices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class OutletDevices:
    park: str
    enterprise: str
    devices: tuple[str, ...]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


class HistoryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    def _where(
        self, scope: HistoryScope, start: datetime, end: datetime
    ) -> tuple[sql.Composable, list[object]]:
        conds = [sql.SQL("s.park = %s"), sql.SQL("t.time >= %s AND t.time < %s")]
        params: list[object] = [scope.park, start, end]
        if scope.enterprise is not None:
            conds.append(sql.SQL("s.enterprise = %s"))
            params.append(scope.enterprise)
        if scope.devices is not None:
            conds.append(sql.SQL("s.device = ANY(%s)"))
            params.append(list(scope.devices))
        return sql.SQL(" AND ").join(conds), params

    async def read(
        self,
        scope: HistoryScope,
        start: datetime,
        end: datetime,
        *,
        batch_rows: int = 5000,
    ) -> AsyncGenerator[list[HistoryRow], None]:
        """Batches of the scope's rows in ``[start, end)``, hot and archived (see
        the module contract)."""
        where, params = self._where(scope, start, end)
        query = sql.SQL(
            "SELECT (extract(epoch FROM t.time) * 1000)::bigint, s.park,"
            " s.enterprise, s.device, s.metric, t.value, t.quality::text, t.seq,"
            " t.reset, s.data_type, s.stat"
            " FROM {telemetry} t JOIN {series} s ON s.id = t.series_id WHERE {where}"
            ' ORDER BY t.time, s.enterprise COLLATE "C", s.device COLLATE "C",'
            ' s.metric COLLATE "C", s.data_type COLLATE "C",'
            ' s.stat COLLATE "C"'
        ).format(telemetry=self._t("telemetry"), series=self._t("series"), where=where)
        plan = await plan_read(
            self._db, start=start, end=end,
            where=RowFilter(park=scope.park, enterprise=scope.enterprise,
                            devices=scope.devices),
        )  # fmt: skip
        with storage_errors("read stored telemetry"):
            async with self._db.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                async with conn.cursor(
                    "smartpark_history", row_factory=args_row(HistoryRow)
                ) as cur:
                    await cur.execute(query, params)
                    hot = _batches(cur, batch_rows)
                    if not plan.days:
                        async for batch in hot:
                            yield batch
                        return
                    merged = _merge(_rows(hot), _archived_rows(plan))
                    batch = []
                    async for row in merged:
                        batch.append(row)
                        if len(batch) == batch_rows:
                            yield batch
                            batch = []
                    if batch:
                        yield batch

    async def estimate(
        self, scope: HistoryScope, start: datetime, end: datetime
    ) -> int:
        """The number of rows :meth:`read` would return: the hot rows counted
        exactly, plus the whole row count of each evicted enterprise-day the range
        touches (an upper bound when the scope or the range takes part of it)."""
        where, params = self._where(scope, start, end)
        query = sql.SQL(
            "SELECT count(*) FROM {telemetry} t JOIN {series} s ON s.id = t.series_id"
            " WHERE {where}"
        ).format(telemetry=self._t("telemetry"), series=self._t("series"), where=where)
        archived = sql.SQL(
            "SELECT coalesce(sum(row_count), 0) FROM {} WHERE park = %s"
            " AND (%s::text IS NULL OR enterprise = %s)"
            " AND start_at < %s AND end_at > %s"
        ).format(self._t("archive_evictions"))
        with storage_errors("count stored telemetry"):
            async with self._db.connection() as conn:
                cur = await conn.execute(query, params)
                row = await cur.fetchone()
                cur = await conn.execute(
                    archived,
                    [scope.park, scope.enterprise, scope.enterprise, end, start],
                )
                cold = await cur.fetchone()
        return sum(0 if r is None else int(r[0]) for r in (row, cold))

    async def marks(
        self, scope: HistoryScope, start: datetime, end: datetime
    ) -> list[RuleMarkRow]:
        """The marks of the scope that exclude data now (current, in force and
        invalid) and overlap ``[start, end)``, in id order."""
        conds = [
            sql.SQL("c.in_force AND c.invalid AND c.park = %s"),
            sql.SQL("c.start_at < %s AND c.end_at > %s"),
        ]
        params: list[object] = [scope.park, end, start]
        if scope.enterprise is not None:
            conds.append(sql.SQL("c.enterprise = %s"))
            params.append(scope.enterprise)
        if scope.devices is not None:
            conds.append(sql.SQL("c.device = ANY(%s)"))
            params.append(list(scope.devices))
        query = sql.SQL(
            "SELECT c.id, c.park, c.enterprise, c.device, c.metric, c.start_at,"
            " c.end_at, c.kind, true AS active FROM {} c WHERE {} ORDER BY c.id"
        ).format(self._t("marks_current"), sql.SQL(" AND ").join(conds))
        with storage_errors("read the marks of a replay"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(RuleMarkRow))
                await cur.execute(query, params)
                return await cur.fetchall()

    async def live_events(
        self, scope: HistoryScope, *, pack: str, start: datetime, end: datetime
    ) -> list[dict[str, Any]]:
        """The alert events stored live by ``pack`` in the scope whose key time
        (their window's start, else their time) is in ``[start, end)``, as their
        stored bodies, in the order stored."""
        conds: list[sql.Composable] = [sql.SQL("park = %s AND pack = %s AND at >= %s")]
        params: list[object] = [scope.park, pack, start]
        if scope.enterprise is not None:
            conds.append(sql.SQL("enterprise = %s"))
            params.append(scope.enterprise)
        if scope.devices is not None:
            conds.append(sql.SQL("device = ANY(%s)"))
            params.append(list(scope.devices))
        key = sql.SQL(
            "coalesce((body->'window'->>'start_ms')::bigint,"
            " (extract(epoch FROM at) * 1000)::bigint)"
        )
        conds.append(sql.SQL("{key} >= %s AND {key} < %s").format(key=key))
        params += [_ms(start), _ms(end)]
        query = sql.SQL("SELECT body FROM {} WHERE {} ORDER BY seq").format(
            self._t("alert_events"), sql.SQL(" AND ").join(conds)
        )
        with storage_errors("read the live alert events of a replay"):
            async with self._db.connection() as conn:
                cur = await conn.execute(query, params)
                return [row[0] for row in await cur.fetchall()]

    async def outlet_devices(self, outlet: str) -> OutletDevices | None:
        """The registered devices of ``outlet`` (retired ones too: they have
        history), with its park and enterprise; None for an unknown outlet."""
        with storage_errors("read an outlet's devices"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT o.park, o.enterprise,"
                        " coalesce(array_agg(d.id ORDER BY d.id)"
                        " FILTER (WHERE d.id IS NOT NULL), '{{}}')"
                        " FROM {outlets} o LEFT JOIN {devices} d ON d.outlet = o.id"
                        " WHERE o.id = %s GROUP BY o.park, o.enterprise"
                    ).format(outlets=self._t("outlets"), devices=self._t("devices")),
                    (outlet,),
                )
                row = await cur.fetchone()
        if row is None:
            return None
        return OutletDevices(str(row[0]), str(row[1]), tuple(row[2]))

    async def device_owner(self, device: str) -> tuple[str, str] | None:
        """(park, enterprise) of a device that has stored telemetry, else None."""
        with storage_errors("read a device's series"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT park, enterprise FROM {} WHERE device = %s"
                        " ORDER BY id LIMIT 1"
                    ).format(self._t("series")),
                    (device,),
                )
                row = await cur.fetchone()
        return None if row is None else (str(row[0]), str(row[1]))


def _key(r: HistoryRow) -> tuple[int, str, str, str, str, str]:
    return (r.ts_ms, r.enterprise, r.device, r.metric, r.data_type, r.stat)


async def _batches(cur: Any, size: int) -> AsyncIterator[list[HistoryRow]]:
    while batch := await cur.fetchmany(size):
        yield batch


async def _rows(batches: AsyncIterator[list[HistoryRow]]) -> AsyncIterator[HistoryRow]:
    async for batch in batches:
        for row in batch:
            yield row


async def _archived_rows(plan: ReadPlan) -> AsyncIterator[HistoryRow]:
    """The plan's archived rows in history order, one local day (every evicted
    enterprise-day with the same start) at a time."""
    day: list[ArchivedDay] = []
    async for item in read_planned(plan):
        if day and item.start != day[0].start:
            for row in _day_rows(day):
                yield row
            day = []
        day.append(item)
    for row in _day_rows(day):
        yield row


def _day_rows(days: list[ArchivedDay]) -> list[HistoryRow]:
    rows = [
        HistoryRow(_ms(r.time), r.park, r.enterprise, r.device, r.metric, r.value,
                   r.quality, r.seq, r.reset, r.data_type, r.stat)
        for d in days for r in d.rows
    ]  # fmt: skip
    rows.sort(key=_key)
    return rows


async def _merge(
    hot: AsyncIterator[HistoryRow], cold: AsyncIterator[HistoryRow]
) -> AsyncIterator[HistoryRow]:
    """Two streams in history order merged; a key in both is the archived row."""
    h = await anext(hot, None)
    c = await anext(cold, None)
    while h is not None or c is not None:
        if c is None or (h is not None and _key(h) < _key(c)):
            assert h is not None
            yield h
            h = await anext(hot, None)
            continue
        if h is not None and _key(h) == _key(c):
            h = await anext(hot, None)
        yield c
        c = await anext(cold, None)
