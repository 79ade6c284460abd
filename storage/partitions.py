"""Daily range partitions of ``telemetry`` for the plain PostgreSQL dialect.

A partition covers one UTC day and is named ``telemetry_pYYYYMMDD``. Once its day
can no longer change in the normal course, :meth:`Partitions.compact_before`
rebuilds its indexes, which writing left half-filled (see migration 0006).
Partitions are created ahead of time (:meth:`Partitions.ensure_window`) and on
demand for any day a batch contains (:meth:`Partitions.ensure_days`), so a late or
replayed batch never fails for lack of one. Known days are cached per process; the
cache is only a shortcut, the catalogue is the truth (another sink may create or
retention may drop a partition at any time, and ``CREATE TABLE IF NOT EXISTS``
tolerates the former).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta

import psycopg
from psycopg import sql

from storage.base import Conn

log = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^telemetry_p(\d{8})$")
DAYS_BEHIND = 1
DAYS_AHEAD = 7


@dataclass(frozen=True, slots=True)
class Compacted:
    """One partition whose indexes were rebuilt: its size before and after."""

    partition: str
    bytes_before: int
    bytes_after: int


def partition_name(day: date) -> str:
    return f"telemetry_p{day:%Y%m%d}"


def _day_of(name: str) -> date | None:
    m = _NAME_RE.match(name)
    if m is None:
        return None
    return datetime.strptime(m[1], "%Y%m%d").replace(tzinfo=UTC).date()


def _start(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=UTC)


class Partitions:
    """Creates and drops the daily partitions of one schema's ``telemetry``."""

    def __init__(self, schema: str) -> None:
        self._schema = schema
        self._known: set[date] = set()

    @contextmanager
    def unsure(self) -> Iterator[None]:
        """Forget the cache if the body fails: a partition we believed in may have
        been dropped (retention in another process), and the retry must not trust
        the cache again."""
        try:
            yield
        except psycopg.Error:
            self._known.clear()
            raise

    def known(self, day: date) -> bool:
        """Whether ``day``'s partition is known to exist (no I/O: the cache)."""
        return day in self._known

    async def existing(self, conn: Conn) -> dict[date, str]:
        """The daily partitions in the catalogue, by day (refreshes the cache)."""
        cur = await conn.execute(
            "SELECT c.relname FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = to_regclass(%s)",
            (sql.Identifier(self._schema, "telemetry").as_string(conn),),
        )
        found: dict[date, str] = {}
        for (name,) in await cur.fetchall():
            day = _day_of(name)
            if day is not None:
                found[day] = name
        self._known = set(found)
        return found

    async def ensure_days(self, conn: Conn, days: Iterable[date]) -> list[str]:
        """Make sure a partition exists for each day; return the names created.

        Each CREATE commits on its own (``conn`` is in autocommit mode) so that a
        batch that fails later does not take its partitions with it.
        """
        missing = set(days) - self._known
        if not missing:
            return []
        existing = await self.existing(conn)
        created = []
        for day in sorted(missing - existing.keys()):
            if await self._create(conn, day):
                created.append(partition_name(day))
            self._known.add(day)
        return created

    async def ensure_window(self, conn: Conn, today: date) -> list[str]:
        """Partitions for ``today - DAYS_BEHIND`` .. ``today + DAYS_AHEAD``."""
        days = [today + timedelta(days=d) for d in range(-DAYS_BEHIND, DAYS_AHEAD + 1)]
        self._known.clear()
        return await self.ensure_days(conn, days)

    async def drop_before(
        self, conn: Conn, cutoff: date, *, drop_unarchived: bool = False
    ) -> tuple[list[str], list[str]]:
        """Drop the partitions of days before ``cutoff`` that hold no row (their
        days were moved into the sealed archive, ``smartpark archive retain``), or
        every one of them with ``drop_unarchived``; return (dropped, kept) names.

        Only raw rows go: the rollup tables keep their history. A partition that
        still holds rows is kept and named: its rows are in no archive, and
        dropping it would lose them.
        """
        dropped, kept = [], []
        for day, name in sorted((await self.existing(conn)).items()):
            if day < cutoff:
                ident = sql.Identifier(self._schema, name)
                if not drop_unarchived:
                    cur = await conn.execute(
                        sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(ident)
                    )
                    row = await cur.fetchone()
                    if row is not None and row[0]:
                        kept.append(name)
                        continue
                await conn.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(
                        sql.Identifier(self._schema, name)
                    )
                )
                self._known.discard(day)
                dropped.append(name)
        if dropped:
            log.info("retention dropped %d partitions: %s", len(dropped), dropped)
        if kept:
            log.warning(
                "retention kept %d partitions that hold rows no archive holds: %s"
                " (seal and evict them with smartpark archive retain first)",
                len(kept), kept,
            )  # fmt: skip
        return dropped, kept

    async def compact_before(self, conn: Conn, cutoff: date) -> list[Compacted]:
        """Rebuild the indexes of the partitions of days before ``cutoff`` not
        compacted yet (see migration 0006); return what was done.

        ``REINDEX TABLE CONCURRENTLY`` does not block writes (late rows keep
        landing) and needs ``conn`` in autocommit mode. A partition dropped
        meanwhile is skipped.
        """
        done = await conn.execute(
            sql.SQL("SELECT day FROM {}").format(
                sql.Identifier(self._schema, "telemetry_compacted")
            )
        )
        compacted = {r[0] for r in await done.fetchall()}
        out = []
        for day, name in sorted((await self.existing(conn)).items()):
            if day >= cutoff or day in compacted:
                continue
            table = sql.Identifier(self._schema, name)
            before = await self._size(conn, table)
            try:
                await conn.execute(
                    sql.SQL("REINDEX TABLE CONCURRENTLY {}").format(table)
                )
            except psycopg.errors.UndefinedTable:
                continue
            after = await self._size(conn, table)
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (day, partition, bytes_before, bytes_after)"
                    " VALUES (%s, %s, %s, %s) ON CONFLICT DO NOTHING"
                ).format(sql.Identifier(self._schema, "telemetry_compacted")),
                (day, name, before, after),
            )
            log.info("compacted %s: %d -> %d bytes", name, before, after)
            out.append(Compacted(name, before, after))
        return out

    @staticmethod
    async def _size(conn: Conn, table: sql.Identifier) -> int:
        cur = await conn.execute(
            "SELECT pg_total_relation_size(%s::regclass)", (table.as_string(conn),)
        )
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    async def _create(self, conn: Conn, day: date) -> bool:
        stmt = sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})"
        ).format(
            sql.Identifier(self._schema, partition_name(day)),
            sql.Identifier(self._schema, "telemetry"),
            sql.Literal(_start(day)),
            sql.Literal(_start(day + timedelta(days=1))),
        )
        try:
            await conn.execute(stmt)
        except (psycopg.errors.DuplicateTable, psycopg.errors.UniqueViolation):
            # A concurrent sink created it between our catalogue read and the
            # CREATE (IF NOT EXISTS does not cover that race on pg_type).
            return False
        log.info("created partition %s.%s", self._schema, partition_name(day))
        return True
