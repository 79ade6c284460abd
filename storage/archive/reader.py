"""Reading evicted days back from the archive.

:func:`archived_days` yields, one evicted enterprise-day at a time, the archived
rows (seal and amendments merged) within a time range and filters, in the API's
key order (time, device, metric, data type, stat), as :class:`ArchivedRow` (the
shape of :class:`storage.queries.ReadingOut`: the hot table's row plus its series
identity). :func:`read_archived` is the same as one list. Memory holds one
enterprise-day at a time.

Only evicted days are read here: a day still in the database is read from the
database (``storage.queries`` merges both; replay does the same). Each segment's
SHA-256 is checked against the index before its rows are used: a segment that
differs is an :class:`~storage.archive.files.ArchiveStorageError` naming it, never
rows served silently (``smartpark archive verify`` says more).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date, datetime
from typing import NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from smartpark.errors import ArchivedRange
from storage.archive import index
from storage.archive.files import ArchiveFiles, ArchiveStorageError
from storage.archive.index import Eviction, IndexRow
from storage.archive.manifest import sha256
from storage.archive.segment import ArchivedRow, decode, rows_of
from storage.base import Conn, Database, storage_errors, table

ORDER = [
    ("time", "ascending"),
    ("device", "ascending"),
    ("metric", "ascending"),
    ("data_type", "ascending"),
    ("stat", "ascending"),
]


class ArchivedDay(NamedTuple):
    """The archived rows of one evicted enterprise-day within a read's range and
    filters, in key order; ``start``/``end``: the day as a UTC range."""

    enterprise: str
    day: date
    start: datetime
    end: datetime
    rows: list[ArchivedRow]


@dataclass(frozen=True, slots=True)
class RowFilter:
    """Which archived rows to read (None: any). ``devices``: any of them."""

    park: str | None = None
    enterprise: str | None = None
    device: str | None = None
    metric: str | None = None
    data_type: str | None = None
    stat: str | None = None
    devices: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What a read takes from the archive: each evicted day in range with its
    indexed segments, found in the database once (:func:`plan_read`); reading
    the files (:func:`read_planned`) then needs no database connection."""

    start: datetime
    end: datetime
    where: RowFilter
    days: tuple[tuple[Eviction, tuple[IndexRow, ...]], ...]


async def plan_read(
    db: Database, *, start: datetime, end: datetime, where: RowFilter = RowFilter()
) -> ReadPlan:
    """The evicted days overlapping ``[start, end)`` within ``where``."""
    days = []
    with storage_errors("read evicted days"):
        async with db.connection() as conn:
            evicted = await index.evictions(
                conn, db.schema, start=start, end=end, enterprise=where.enterprise
            )
            for e in evicted:
                if where.park is not None and e.park != where.park:
                    continue
                chain = await index.manifests(conn, db.schema, e.enterprise)
                days.append((e, tuple(m for m in chain if m.day == e.day)))
    return ReadPlan(start, end, where, tuple(days))


async def read_planned(plan: ReadPlan) -> AsyncIterator[ArchivedDay]:
    """The archived rows with ``start <= time < end`` matching the plan's filter,
    one evicted enterprise-day at a time, by the day's start (two enterprises'
    same day are two items); days with no matching row are skipped."""
    for eviction, manifests in plan.days:
        files = ArchiveFiles(eviction.archive_url)
        tables = []
        for m in manifests:
            data = await asyncio.to_thread(files.get, m.segment_path)
            if sha256(data) != m.segment_sha256:
                raise ArchiveStorageError(
                    f"segment {m.segment_path} of {eviction.archive_url} differs from"
                    " its manifest; run: smartpark archive verify"
                )
            tables.append(_select(decode(data), plan.start, plan.end, plan.where))
        if tables:
            merged = pa.concat_tables(tables).sort_by(ORDER)
            if merged.num_rows:
                yield ArchivedDay(
                    eviction.enterprise, eviction.day, eviction.start_at,
                    eviction.end_at, rows_of(merged),
                )  # fmt: skip


async def archived_days(
    db: Database, *, start: datetime, end: datetime, where: RowFilter = RowFilter()
) -> AsyncIterator[ArchivedDay]:
    """:func:`plan_read` then :func:`read_planned`."""
    plan = await plan_read(db, start=start, end=end, where=where)
    async for day in read_planned(plan):
        yield day


async def read_archived(
    db: Database, *, start: datetime, end: datetime, where: RowFilter = RowFilter()
) -> list[ArchivedRow]:
    """Every archived row of :func:`archived_days`, in key order."""
    out: list[ArchivedRow] = []
    async for day in archived_days(db, start=start, end=end, where=where):
        out += day.rows
    out.sort(key=lambda r: (r.time, r.device, r.metric, r.data_type, r.stat))
    return out


def _select(
    table: pa.Table, start: datetime, end: datetime, where: RowFilter
) -> pa.Table:
    time = table.column("time")
    mask = pc.and_(pc.greater_equal(time, pa.scalar(start, time.type)),
                   pc.less(time, pa.scalar(end, time.type)))  # fmt: skip
    for name in ("park", "enterprise", "device", "metric", "data_type", "stat"):
        wanted = getattr(where, name)
        if wanted is not None:
            mask = pc.and_(mask, pc.equal(table.column(name), wanted))
    if where.devices is not None:
        mask = pc.and_(
            mask, pc.is_in(table.column("device"), pa.array(list(where.devices)))
        )
    return table.filter(mask)


async def refuse_evicted(
    conn: Conn, schema: str, what: str, *, park: str | None,
    enterprise: str | None, start: datetime, end: datetime,
) -> None:  # fmt: skip
    """Raise :class:`~smartpark.errors.ArchivedRange` when an enterprise-day of the
    park (every park: None), or of the one enterprise, overlapping ``[start, end)``
    was evicted: for figures that read only the hot table's raw rows."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT enterprise, day::text FROM {} WHERE start_at < %s AND end_at > %s"
            " AND (%s::text IS NULL OR park = %s)"
            " AND (%s::text IS NULL OR enterprise = %s)"
            " ORDER BY day, enterprise LIMIT 5"
        ).format(table(schema, "archive_evictions")),
        [end, start, park, park, enterprise, enterprise],
    )
    days: list[tuple[str, str]] = await cur.fetchall()
    if days:
        raise ArchivedRange(what, days)


async def check_not_evicted(
    db: Database, what: str, *, park: str | None, enterprise: str | None,
    start: datetime, end: datetime,
) -> None:  # fmt: skip
    """:func:`refuse_evicted` on a connection of its own."""
    with storage_errors("check evicted days"):
        async with db.connection() as conn:
            await refuse_evicted(
                conn, db.schema, what, park=park, enterprise=enterprise,
                start=start, end=end,
            )  # fmt: skip
