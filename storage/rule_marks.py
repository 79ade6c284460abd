"""What the live rule runner reads about data marks (migration 0010) and the stored
telemetry it re-judges with.

The rule runner is a platform service, not a caller: like its alert writes, these
reads span every park (the runner's engines only act on the scopes their rules
select). The API's marks live in :mod:`storage.marks`; this is the runner's feed.

Contract of :meth:`RuleMarkStore.changes` (the *mark feed*):

- Its position is a :class:`MarkCursor`: the highest ``marks`` id and the highest
  ``mark_reviews`` id seen. What a mark means changes only by a new row in either
  table (a new mark, a correction or withdrawal superseding one, a review), so
  every change since a cursor is in the rows after it: the new marks, the marks
  they supersede, and the reviewed marks.
- Each of those marks is returned once, in id order, with what it means now
  (``active``: current, in force and invalid — ``marks_current``'s rows with
  ``in_force AND invalid``). The rows and the new cursor are read in one snapshot.
- Identity values are handed out before their transaction commits, so a row with a
  lower id can become visible after one with a higher id. The feed therefore also
  re-reads the marks created or reviewed in the last ``recheck_s`` seconds; a
  consumer must treat a repeated row as the no-op it is
  (:meth:`rules.marks.MarkBook.apply` does).

Every method raises :class:`~smartpark.errors.StorageError` when the database fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql
from psycopg.rows import class_row

from storage.base import Database, storage_errors, table


@dataclass(frozen=True, slots=True)
class MarkCursor:
    """A position in the mark feed: the highest mark and review ids seen."""

    mark_id: int = 0
    review_id: int = 0


@dataclass(frozen=True, slots=True)
class RuleMarkRow:
    """A mark's period and subject, and whether it excludes data now."""

    id: int
    park: str
    enterprise: str
    device: str
    metric: str | None  # None: every metric of the device
    start_at: datetime
    end_at: datetime
    kind: str
    active: bool  # current, in force and invalid


@dataclass(frozen=True, slots=True)
class MarkFeed:
    rows: list[RuleMarkRow]
    cursor: MarkCursor


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A stored reading of one series (stat ``value``), as the rules re-read it."""

    time: datetime
    metric: str
    value: float
    quality: str
    seq: int
    reset: str | None


_COLUMNS = (
    "m.id, m.park, m.enterprise, m.device, m.metric, m.start_at, m.end_at, m.kind,"
    " coalesce(c.in_force AND c.invalid, false) AS active"
)


class RuleMarkStore:
    """The rule runner's reads of marks and of the telemetry it re-judges."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def changes(self, after: MarkCursor, *, recheck_s: float = 60.0) -> MarkFeed:
        """The marks whose meaning may have changed since ``after`` (see the
        module contract), and the cursor to read from next."""
        query = sql.SQL(
            "WITH new_marks AS ("
            "  SELECT id, supersedes FROM {marks}"
            "  WHERE id > %(m)s OR created_at > now() - %(recheck)s * interval '1 s'"
            "), affected AS ("
            "  SELECT id FROM new_marks"
            "  UNION SELECT supersedes FROM new_marks WHERE supersedes IS NOT NULL"
            "  UNION SELECT mark_id FROM {reviews}"
            "  WHERE id > %(r)s OR reviewed_at > now() - %(recheck)s * interval '1 s'"
            ")"
            " SELECT {columns} FROM {marks} m JOIN affected a ON a.id = m.id"
            " LEFT JOIN {current} c ON c.id = m.id"
            " WHERE NOT m.withdrawn"  # a withdrawal is no mark; it lifts its target
            " ORDER BY m.id"
        ).format(
            marks=self._t("marks"),
            reviews=self._t("mark_reviews"),
            current=self._t("marks_current"),
            columns=sql.SQL(_COLUMNS),
        )
        params = {"m": after.mark_id, "r": after.review_id, "recheck": recheck_s}
        with storage_errors("read the mark feed"):
            async with self._db.connection() as conn, conn.transaction():
                await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT (SELECT coalesce(max(id), 0) FROM {}),"
                        " (SELECT coalesce(max(id), 0) FROM {})"
                    ).format(self._t("marks"), self._t("mark_reviews"))
                )
                top = await cur.fetchone()
                assert top is not None
                rows_cur = conn.cursor(row_factory=class_row(RuleMarkRow))
                await rows_cur.execute(query, params)
                rows = await rows_cur.fetchall()
        cursor = MarkCursor(
            max(after.mark_id, int(top[0])), max(after.review_id, int(top[1]))
        )
        return MarkFeed(rows, cursor)

    async def in_force(
        self, *, park: str, enterprise: str, device: str, start: datetime,
        end: datetime,
    ) -> list[RuleMarkRow]:  # fmt: skip
        """The marks of ``device`` that exclude data now and overlap
        ``[start, end)``, in id order."""
        query = sql.SQL(
            "SELECT {columns} FROM {current} c JOIN {marks} m ON m.id = c.id"
            " WHERE c.in_force AND c.invalid AND c.park = %s AND c.enterprise = %s"
            " AND c.device = %s AND c.start_at < %s AND c.end_at > %s ORDER BY m.id"
        ).format(
            columns=sql.SQL(_COLUMNS),
            current=self._t("marks_current"),
            marks=self._t("marks"),
        )
        with storage_errors("read the marks in force"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(RuleMarkRow))
                await cur.execute(query, (park, enterprise, device, end, start))
                return await cur.fetchall()

    async def readings(
        self, *, park: str, enterprise: str, device: str, metrics: Sequence[str],
        data_type: str, start: datetime, end: datetime,
    ) -> list[StoredReading]:  # fmt: skip
        """The stored readings (stat ``value``) of ``device``'s ``metrics`` in
        ``data_type`` within ``[start, end)``, by time then metric."""
        query = sql.SQL(
            "SELECT t.time, s.metric, t.value, t.quality::text AS quality, t.seq,"
            " t.reset FROM {telemetry} t JOIN {series} s ON s.id = t.series_id"
            " WHERE s.park = %s AND s.enterprise = %s AND s.device = %s"
            " AND s.metric = ANY(%s) AND s.data_type = %s AND s.stat = 'value'"
            " AND t.time >= %s AND t.time < %s ORDER BY t.time, s.metric"
        ).format(telemetry=self._t("telemetry"), series=self._t("series"))
        params = (park, enterprise, device, list(metrics), data_type, start, end)
        with storage_errors("read readings to re-judge"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(StoredReading))
                await cur.execute(query, params)
                return await cur.fetchall()
