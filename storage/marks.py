"""Data marks (tables ``marks`` and ``mark_reviews``, view ``marks_current``;
migration 0010), and the automatic marks derived from stored telemetry's flags.

Contract: every method takes the caller's :class:`~smartpark.tenancy.Scope` and
applies it in SQL on the mark's park and enterprise (a mark carries its device's,
copied from the registry when it is made). A mark outside the scope is
indistinguishable from a missing one: reads return None (or leave it out), writes
return None.

Append-only: nothing here updates or deletes a row. A correction is a new mark
that ``supersedes`` the old one; a withdrawal is a new row with ``withdrawn``
(the old period copied); a regulator's review is a new ``mark_reviews`` row, the
latest one counting. A mark has at most one successor (a unique index): a second
correction of the same mark raises :class:`MarkConflict` naming the first.

What a mark means now (``state``):

- ``in_force``: current (neither superseded nor withdrawn) and not rejected —
  awaiting review or accepted;
- ``rejected``: current, and the latest review rejected it: its period is judged
  as if unmarked;
- ``superseded`` / ``withdrawn``: a later row corrected or withdrew it;
- ``withdrawal``: the row is itself a withdrawal of the mark it supersedes.

Automatic marks (:meth:`MarkStore.automatic`) are never stored: a run of
consecutive readings of one series (stat ``value``) with the same non-N flag is one
period, from its first reading to the next reading of the series (or, for a run
that ends the range, one reporting step after its last reading), clipped to the
range asked for. Computed in one pass over the range's rows (window functions:
gaps and islands), never read into Python.

Every method raises :class:`~smartpark.errors.StorageError` when the database
fails.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from smartpark.marks import MarkKind, flags_of, kind_of_flag
from smartpark.tenancy import Scope
from storage.base import Conn, Database, storage_errors, table

Review = Literal["pending", "accepted", "rejected"]
State = Literal["in_force", "rejected", "superseded", "withdrawn", "withdrawal"]
# The step a reading of a device the registry does not know stands for (the
# platform's usual meter poll), for estimates and a run's last reading.
DEFAULT_STEP_S = 10


@dataclass(frozen=True, slots=True)
class MarkRow:
    """A row of ``marks`` with what it means now (see the module doc)."""

    id: int
    park: str
    enterprise: str
    device: str
    metric: str | None
    start_at: datetime
    end_at: datetime
    kind: str
    invalid: bool
    reason: str
    attachment: str | None
    origin: str
    created_by: str
    created_at: datetime
    supersedes: int | None
    withdrawn: bool
    superseded_by: int | None
    review: str | None  # the latest review's verdict, None: awaiting review
    reviewed_by: str | None
    reviewed_at: datetime | None
    state: str  # State


@dataclass(frozen=True, slots=True)
class ReviewRow:
    id: int
    mark_id: int
    verdict: str
    reason: str
    reviewed_by: str
    reviewed_at: datetime


@dataclass(frozen=True, slots=True)
class NewMark:
    """A manual mark as entered (validated by the caller: aware times,
    ``end_at > start_at``, a catalogue metric, ``invalid`` resolved)."""

    device: str
    metric: str | None
    start_at: datetime
    end_at: datetime
    kind: str
    invalid: bool
    reason: str
    attachment: str | None = None


@dataclass(frozen=True, slots=True)
class MarkFilters:
    """What an API caller asked for (None: any); the scope applies on top, in SQL.

    ``metric`` matches marks of that metric and marks of every metric of the
    device (``metric`` NULL). ``since``/``until``: marks overlapping
    ``[since, until)``."""

    enterprise: str | None = None
    device: str | None = None
    metric: str | None = None
    kind: str | None = None
    origin: str | None = None  # enterprise | operator (stored marks)
    review: Review | None = None
    since: datetime | None = None
    until: datetime | None = None


MarkKey = tuple[datetime, int]
"""A page position: (start_at, id) of the last mark of the previous page."""


@dataclass(frozen=True, slots=True)
class AutoMark:
    """A period derived from a run of one non-N flag in a series' readings."""

    park: str
    enterprise: str
    device: str
    metric: str
    data_type: str
    flag: str
    start_at: datetime
    end_at: datetime
    readings: int

    @property
    def kind(self) -> str:
        return kind_of_flag(self.flag).value


@dataclass(frozen=True, slots=True)
class InvalidPeriod:
    """A period of a device's data that is not to be judged (see
    :meth:`MarkStore.invalid_periods`)."""

    device: str
    metric: str | None  # None: every metric of the device
    start: datetime
    end: datetime
    kind: str
    origin: str  # enterprise | operator
    mark_id: int


class MarkConflict(Exception):
    """A write the mark's state refuses: it is already superseded (``by`` names
    the mark that superseded it) or it is a withdrawal."""

    def __init__(self, mark_id: int, reason: str, *, by: int | None = None) -> None:
        super().__init__(f"mark {mark_id} {reason}")
        self.mark_id = mark_id
        self.reason = reason
        self.by = by


_COLUMNS = (
    "id", "park", "enterprise", "device", "metric", "start_at", "end_at", "kind",
    "invalid", "reason", "attachment", "origin", "created_by", "created_at",
    "supersedes", "withdrawn",
)  # fmt: skip


def _scoped(scope: Scope, alias: str) -> tuple[list[sql.Composable], list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for column, value in (("park", scope.park), ("enterprise", scope.enterprise)):
        if value is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(alias, column)))
            params.append(value)
    return conds, params


def _and(conds: Sequence[sql.Composable]) -> sql.Composable:
    return sql.SQL(" AND ").join(conds) if conds else sql.SQL("true")


class MarkStore:
    """Manual marks, their corrections and reviews, and automatic marks."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    def _rows_sql(self) -> sql.Composed:
        """Every mark row with its successor, latest review and state (alias m)."""
        return sql.SQL(
            "SELECT {cols}, s.id AS superseded_by, r.verdict AS review,"
            " r.reviewed_by, r.reviewed_at,"
            " CASE WHEN m.withdrawn THEN 'withdrawal'"
            "  WHEN s.id IS NOT NULL AND s.withdrawn THEN 'withdrawn'"
            "  WHEN s.id IS NOT NULL THEN 'superseded'"
            "  WHEN r.verdict = 'rejected' THEN 'rejected'"
            "  ELSE 'in_force' END AS state"
            " FROM {marks} m LEFT JOIN {marks} s ON s.supersedes = m.id"
            " LEFT JOIN LATERAL (SELECT verdict, reviewed_by, reviewed_at"
            "  FROM {reviews} WHERE mark_id = m.id ORDER BY id DESC LIMIT 1) r ON true"
        ).format(
            cols=sql.SQL(", ").join(sql.Identifier("m", c) for c in _COLUMNS),
            marks=self._t("marks"),
            reviews=self._t("mark_reviews"),
        )

    async def _marks(
        self, conn: Conn, query: sql.Composed, params: Sequence[Any]
    ) -> list[MarkRow]:
        async with conn.cursor(row_factory=class_row(MarkRow)) as cur:
            await cur.execute(query, params)
            return await cur.fetchall()

    async def _one(self, conn: Conn, scope: Scope, mark_id: int) -> MarkRow | None:
        conds, params = _scoped(scope, "m")
        conds.append(sql.SQL("m.id = %s"))
        found = await self._marks(
            conn, self._rows_sql() + sql.SQL(" WHERE ") + _and(conds),
            [*params, mark_id],
        )  # fmt: skip
        return found[0] if found else None

    # -- writes ---------------------------------------------------------------------

    async def _insert(
        self, conn: Conn, scope: Scope, mark: NewMark, *, origin: str,
        created_by: str, supersedes: int | None = None, withdrawn: bool = False,
    ) -> int | None:  # fmt: skip
        """Insert a mark of a registered device within the scope (its park and
        enterprise from the registry); its id, None if there is no such device."""
        conds, params = _scoped(scope, "d")
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {marks} (park, enterprise, device, metric, start_at,"
                " end_at, kind, invalid, reason, attachment, origin, created_by,"
                " created_at, supersedes, withdrawn)"
                " SELECT d.park, d.enterprise, d.id, %s, %s, %s, %s, %s, %s, %s, %s,"
                " %s, to_timestamp(%s / 1000.0), %s, %s"
                " FROM {devices} d WHERE d.id = %s AND {scope} RETURNING id"
            ).format(
                marks=self._t("marks"), devices=self._t("devices"), scope=_and(conds)
            ),
            [
                mark.metric, mark.start_at, mark.end_at, mark.kind, mark.invalid,
                mark.reason, mark.attachment, origin, created_by, self._db.clock(),
                supersedes, withdrawn, mark.device, *params,
            ],
        )  # fmt: skip
        row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def create(
        self, scope: Scope, mark: NewMark, *, origin: str, created_by: str
    ) -> MarkRow | None:
        """A new manual mark of ``mark.device``; None if that device is not a
        registered device within ``scope`` (unknown and not yours alike)."""
        with storage_errors("create mark"):
            async with self._db.connection() as conn, conn.transaction():
                new_id = await self._insert(
                    conn, scope, mark, origin=origin, created_by=created_by
                )
                return None if new_id is None else await self._one(conn, scope, new_id)

    async def supersede(
        self, scope: Scope, mark_id: int, mark: NewMark | None, *, reason: str,
        origin: str, created_by: str,
    ) -> MarkRow | None:  # fmt: skip
        """Correct mark ``mark_id`` with ``mark`` (same device: the caller checks),
        or withdraw it (``mark`` None: a ``withdrawn`` row copying its device,
        metric, period, kind and validity, with ``reason``); the new row, None if
        there is no such mark within ``scope``. Raises :class:`MarkConflict` if the
        mark is already superseded (``by`` its successor) or is itself a
        withdrawal. The old row is never updated."""
        with storage_errors("supersede mark"):
            try:
                async with self._db.connection() as conn, conn.transaction():
                    old = await self._locked(conn, scope, mark_id)
                    if old is None:
                        return None
                    withdrawn = mark is None
                    if mark is None:
                        mark = NewMark(
                            old.device, old.metric, old.start_at, old.end_at, old.kind,
                            old.invalid, reason, None,
                        )  # fmt: skip
                    new_id = await self._insert(
                        conn, scope, mark, origin=origin, created_by=created_by,
                        supersedes=mark_id, withdrawn=withdrawn,
                    )  # fmt: skip
                    if new_id is None:
                        return None
                    return await self._one(conn, scope, new_id)
            except psycopg.errors.UniqueViolation:
                # a concurrent correction won the race on marks_supersedes
                async with self._db.connection() as conn:
                    row = await self._one(conn, scope, mark_id)
                by = None if row is None else row.superseded_by
                state = "superseded" if row is None else row.state
                raise MarkConflict(
                    mark_id, f"is already {state} by mark {by}", by=by
                ) from None

    async def _locked(self, conn: Conn, scope: Scope, mark_id: int) -> MarkRow | None:
        """The mark within ``scope``, its row locked, if it may still be superseded
        or reviewed; None if there is none; :class:`MarkConflict` if superseded
        or a withdrawal."""
        conds, params = _scoped(scope, "m")
        cur = await conn.execute(
            sql.SQL("SELECT 1 FROM {} m WHERE m.id = %s AND {} FOR UPDATE").format(
                self._t("marks"), _and(conds)
            ),
            [mark_id, *params],
        )
        if await cur.fetchone() is None:
            return None
        # read after the lock: a correction committed meanwhile is seen
        row = await self._one(conn, scope, mark_id)
        if row is None:
            return None
        if row.withdrawn:
            raise MarkConflict(mark_id, "is a withdrawal, not a mark")
        if row.superseded_by is not None:
            raise MarkConflict(
                mark_id, f"is already {row.state} by mark {row.superseded_by}",
                by=row.superseded_by,
            )  # fmt: skip
        return row

    async def review(
        self, scope: Scope, mark_id: int, *, verdict: str, reason: str, by: str
    ) -> ReviewRow | None:
        """A regulator's review of a current mark (the caller checks the role); the
        review, None if there is no such mark within ``scope``;
        :class:`MarkConflict` if the mark is superseded or a withdrawal (review
        the mark that is current instead)."""
        with storage_errors("review mark"):
            async with self._db.connection() as conn, conn.transaction():
                if await self._locked(conn, scope, mark_id) is None:
                    return None
                async with conn.cursor(row_factory=class_row(ReviewRow)) as cur:
                    await cur.execute(
                        sql.SQL(
                            "INSERT INTO {} (mark_id, verdict, reason, reviewed_by,"
                            " reviewed_at) VALUES (%s, %s, %s, %s,"
                            " to_timestamp(%s / 1000.0)) RETURNING id, mark_id,"
                            " verdict, reason, reviewed_by, reviewed_at"
                        ).format(self._t("mark_reviews")),
                        (mark_id, verdict, reason, by, self._db.clock()),
                    )
                    row = await cur.fetchone()
        if row is None:  # pragma: no cover - INSERT … RETURNING returns its row
            raise RuntimeError("the review was not returned")
        return row

    # -- reads ----------------------------------------------------------------------

    async def get(self, scope: Scope, mark_id: int) -> MarkRow | None:
        """One mark row (whatever its state), None if none within ``scope``."""
        with storage_errors("read a mark"):
            async with self._db.connection() as conn:
                return await self._one(conn, scope, mark_id)

    async def history(
        self, scope: Scope, mark_id: int
    ) -> tuple[list[MarkRow], list[ReviewRow]]:
        """The chain of mark ``mark_id``: every mark it superseded (transitively)
        and every one that superseded it, itself included, oldest first; and every
        review of any of them, in the order made. Empty if there is no such mark
        within ``scope``."""
        conds, params = _scoped(scope, "m")
        chain = sql.SQL(
            "WITH RECURSIVE back AS ("
            " SELECT m.id, m.supersedes FROM {marks} m WHERE m.id = %s AND {scope}"
            " UNION ALL SELECT p.id, p.supersedes FROM {marks} p"
            "  JOIN back b ON p.id = b.supersedes),"
            " fwd AS ("
            " SELECT m.id FROM {marks} m WHERE m.id = %s AND {scope}"
            " UNION ALL SELECT n.id FROM {marks} n JOIN fwd f ON n.supersedes = f.id),"
            " chain AS (SELECT id FROM back UNION SELECT id FROM fwd)"
        ).format(marks=self._t("marks"), scope=_and(conds))
        chain_params = [mark_id, *params, mark_id, *params]
        with storage_errors("read a mark's history"):
            async with self._db.connection() as conn:
                marks = await self._marks(
                    conn,
                    chain + sql.SQL(" ") + self._rows_sql()
                    + sql.SQL(" WHERE m.id IN (SELECT id FROM chain) AND ")
                    + _and(conds) + sql.SQL(" ORDER BY m.id"),
                    [*chain_params, *params],
                )  # fmt: skip
                async with conn.cursor(row_factory=class_row(ReviewRow)) as cur:
                    await cur.execute(
                        sql.SQL(
                            "SELECT id, mark_id, verdict, reason, reviewed_by,"
                            " reviewed_at FROM {} WHERE mark_id = ANY(%s) ORDER BY id"
                        ).format(self._t("mark_reviews")),
                        ([m.id for m in marks],),
                    )
                    reviews = await cur.fetchall()
        return marks, reviews

    async def find(
        self, scope: Scope, filters: MarkFilters, *, limit: int,
        after: MarkKey | None = None,
    ) -> list[MarkRow]:  # fmt: skip
        """Current marks (``marks_current``: neither superseded nor withdrawn;
        rejected ones included, with their review) within ``scope`` matching
        ``filters``, latest start first (then id), at most ``limit``, after the
        page key ``after``."""
        conds, params = _scoped(scope, "m")
        f = filters
        for column, value in (
            ("enterprise", f.enterprise), ("device", f.device), ("kind", f.kind),
            ("origin", f.origin),
        ):  # fmt: skip
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier("m", column)))
                params.append(value)
        if f.metric is not None:
            conds.append(sql.SQL("(m.metric = %s OR m.metric IS NULL)"))
            params.append(f.metric)
        if f.review == "pending":
            conds.append(sql.SQL("r.verdict IS NULL"))
        elif f.review is not None:
            conds.append(sql.SQL("r.verdict = %s"))
            params.append(f.review)
        if f.since is not None:
            conds.append(sql.SQL("m.end_at > %s"))
            params.append(f.since)
        if f.until is not None:
            conds.append(sql.SQL("m.start_at < %s"))
            params.append(f.until)
        if after is not None:
            conds.append(sql.SQL("(m.start_at, m.id) < (%s, %s)"))
            params.extend(after)
        conds += [
            sql.SQL("NOT m.withdrawn"),
            sql.SQL("s.id IS NULL"),
        ]
        query = (
            self._rows_sql() + sql.SQL(" WHERE ") + _and(conds)
            + sql.SQL(" ORDER BY m.start_at DESC, m.id DESC LIMIT %s")
        )  # fmt: skip
        with storage_errors("read marks"):
            async with self._db.connection() as conn:
                return await self._marks(conn, query, [*params, limit])

    def _auto_series(
        self, scope: Scope, enterprise: str | None, device: str | None,
        metric: str | None,
    ) -> tuple[sql.Composed, list[Any]]:  # fmt: skip
        """``sel``: the value series within the scope and filters, with the step
        one of their readings stands for (the data type's, else the device's
        registered interval, else ``DEFAULT_STEP_S``)."""
        conds, params = _scoped(scope, "s")
        for column, value in (
            ("enterprise", enterprise), ("device", device), ("metric", metric)
        ):  # fmt: skip
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier("s", column)))
                params.append(value)
        return sql.SQL(
            "sel AS ("
            " SELECT s.id, s.park, s.enterprise, s.device, s.metric, s.data_type,"
            "  CASE s.data_type WHEN 'minute' THEN 60 WHEN 'hour' THEN 3600"
            "   WHEN 'day' THEN 86400 ELSE coalesce(d.interval_s, {default}) END"
            "   * interval '1 second' AS step"
            " FROM {series} s LEFT JOIN {devices} d ON d.id = s.device"
            " WHERE s.stat = 'value' AND {conds})"
        ).format(
            series=self._t("series"), devices=self._t("devices"), conds=_and(conds),
            default=sql.Literal(DEFAULT_STEP_S),
        ), params  # fmt: skip

    async def automatic_estimate(
        self, scope: Scope, *, start: datetime, end: datetime,
        enterprise: str | None = None, device: str | None = None,
        metric: str | None = None,
    ) -> int:  # fmt: skip
        """About how many readings :meth:`automatic` would read for the same
        arguments: each series' range over its step (from the registry, not
        the rows: it reads no telemetry)."""
        sel, params = self._auto_series(scope, enterprise, device, metric)
        query = sql.SQL(
            "WITH {sel} SELECT coalesce(sum(ceil(%s / extract(epoch FROM step))),"
            " 0)::bigint FROM sel"
        ).format(sel=sel)
        with storage_errors("estimate automatic marks"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    query, [*params, (end - start).total_seconds()]
                )
                row = await cur.fetchone()
        return 0 if row is None else int(row[0])

    async def automatic(
        self, scope: Scope, *, start: datetime, end: datetime,
        enterprise: str | None = None, device: str | None = None,
        metric: str | None = None, kind: str | None = None, limit: int,
    ) -> list[AutoMark]:  # fmt: skip
        """Automatic marks of the series within ``scope`` (and the filters) over
        ``[start, end)``, earliest first, at most ``limit`` (see the module doc).
        It reads every reading of the range of those series: ask
        :meth:`automatic_estimate` first.

        One pass over the range's readings: ``lag`` finds where the flag changes,
        a running count of changes numbers the islands, and an island's period
        runs from its first reading to the reading after its last (``lead``), or
        for the range's last island one step (the series' last interval, else the
        data type's, else the device's registered interval) after its last
        reading, never past ``end``."""
        flags: list[str] | None = None
        if kind is not None:
            flags = list(flags_of(MarkKind(kind)))
            if not flags:
                return []
        sel, params = self._auto_series(scope, enterprise, device, metric)
        flag_cond = sql.SQL("")
        flag_params: list[Any] = []
        if flags is not None:
            flag_cond = sql.SQL(" AND quality = ANY(%s)")
            flag_params = [flags]
        query = sql.SQL(
            "WITH {sel},"
            " r AS ("
            " SELECT t.series_id, t.time, t.quality::text AS quality,"
            "  coalesce(lead(t.time) OVER w,"
            "   t.time + coalesce(t.time - lag(t.time) OVER w, sel.step)) AS covered,"
            "  t.quality IS DISTINCT FROM lag(t.quality) OVER w AS starts"
            " FROM {telemetry} t JOIN sel ON sel.id = t.series_id"
            " WHERE t.time >= %s AND t.time < %s"
            " WINDOW w AS (PARTITION BY t.series_id ORDER BY t.time)),"
            " islands AS ("
            " SELECT series_id, time, quality, covered,"
            "  count(*) FILTER (WHERE starts) OVER ("
            "   PARTITION BY series_id ORDER BY time) AS island"
            " FROM r),"
            " runs AS ("
            " SELECT series_id, quality, min(time) AS start_at,"
            "  least(max(covered), %s) AS end_at, count(*)::int AS readings"
            " FROM islands WHERE quality <> 'N'{flags}"
            " GROUP BY series_id, quality, island)"
            " SELECT sel.park, sel.enterprise, sel.device, sel.metric, sel.data_type,"
            "  runs.quality AS flag, runs.start_at, runs.end_at, runs.readings"
            " FROM runs JOIN sel ON sel.id = runs.series_id"
            " ORDER BY runs.start_at, sel.device, sel.metric, sel.data_type"
            " LIMIT %s"
        ).format(sel=sel, telemetry=self._t("telemetry"), flags=flag_cond)
        with storage_errors("derive automatic marks"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AutoMark)) as cur,
            ):
                await cur.execute(
                    query, [*params, start, end, end, *flag_params, limit]
                )
                return await cur.fetchall()

    async def invalid_periods(
        self, scope: Scope, *, park: str | None = None,
        enterprise: str | None = None, devices: Sequence[str] | None = None,
        start: datetime, end: datetime,
    ) -> list[InvalidPeriod]:  # fmt: skip
        """The invalid-marked periods of manual marks within ``scope`` overlapping
        ``[start, end)``, each clipped to it, ordered by device, start, mark id.

        Contract (for coverage, KPIs, compliant hours and the report):

        - only marks in force and ``invalid``: current (not superseded, not
          withdrawn), not rejected by a regulator's latest review (a mark awaiting
          review counts, as migration 0010 says); marks with ``invalid`` false
          are left out;
        - ``metric`` None means every metric of the device;
        - periods are half-open ``[start, end)``, clipped to ``[start, end)`` of
          the call (``start < end`` always), may overlap each other and are not
          merged; ``kind`` and ``origin`` (``enterprise`` | ``operator``) say what
          and who, ``mark_id`` which mark (``/v1/marks/{id}``);
        - ``park``, ``enterprise``, ``devices`` narrow the scope, never widen it
          (``devices`` empty: nothing);
        - automatic marks (the readings' own non-N flags) are not included: a
          reading's flag already says it is not valid.
        """
        conds, params = _scoped(scope, "m")
        for column, value in (("park", park), ("enterprise", enterprise)):
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier("m", column)))
                params.append(value)
        if devices is not None:
            conds.append(sql.SQL("m.device = ANY(%s)"))
            params.append(list(devices))
        query = sql.SQL(
            "SELECT m.device, m.metric, greatest(m.start_at, %s) AS start,"
            " least(m.end_at, %s) AS end, m.kind, m.origin, m.id AS mark_id"
            " FROM {} m WHERE m.in_force AND m.invalid"
            " AND m.start_at < %s AND m.end_at > %s AND {}"
            " ORDER BY m.device, m.start_at, m.id"
        ).format(self._t("marks_current"), _and(conds))
        with storage_errors("read invalid periods"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(InvalidPeriod)) as cur,
            ):
                await cur.execute(query, [start, end, end, start, *params])
                return await cur.fetchall()
