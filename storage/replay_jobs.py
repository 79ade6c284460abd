"""Replay jobs as the API runs them (table ``replay_jobs``, migration 0013).

A job is ``queued`` when asked for, ``running`` once its task started, and ends
``done`` (with its summary, events and signed report), ``failed`` (with the
reason), ``cancelled`` (asked to stop) or ``interrupted`` (the API process that ran
it stopped: :meth:`ReplayJobStore.interrupt_unfinished` at start-up and at a clean
stop). A finished job never changes again: every transition but the first checks
the status it leaves.

Every method raises :class:`~smartpark.errors.StorageError` when the database fails.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from storage.base import Database, storage_errors, table

UNFINISHED = ("queued", "running")


@dataclass(frozen=True, slots=True)
class ReplayJobRow:
    id: str
    status: str
    key_id: str
    request: dict[str, Any]
    rows_read: int
    rows_estimated: int | None
    summary: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


@dataclass(frozen=True, slots=True)
class ReplayReport:
    csv: bytes
    signature: bytes


_COLUMNS = sql.SQL(
    "id, status, key_id, request, rows_read, rows_estimated, summary, error,"
    " created_at, started_at, finished_at"
)


class ReplayJobStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self) -> sql.Identifier:
        return table(self._db.schema, "replay_jobs")

    async def _update(
        self, what: str, sets: str, params: tuple[Any, ...], job_id: str
    ) -> bool:
        """Apply ``sets`` to an unfinished job; whether it was unfinished."""
        with storage_errors(what):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET {} WHERE id = %s AND status = ANY(%s)"
                    ).format(self._t(), sql.SQL(sets)),
                    (*params, job_id, list(UNFINISHED)),
                )
                return cur.rowcount == 1

    async def create(
        self, job_id: str, *, key_id: str, request: dict[str, Any]
    ) -> ReplayJobRow:
        with storage_errors("create a replay job"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(ReplayJobRow))
                await cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, status, key_id, request)"
                        " VALUES (%s, 'queued', %s, %s) RETURNING {}"
                    ).format(self._t(), _COLUMNS),
                    (job_id, key_id, Jsonb(request)),
                )
                row = await cur.fetchone()
        assert row is not None
        return row

    async def start(self, job_id: str, *, rows_estimated: int) -> bool:
        return await self._update(
            "start a replay job",
            "status = 'running', started_at = now(), rows_estimated = %s",
            (rows_estimated,),
            job_id,
        )

    async def progress(self, job_id: str, *, rows_read: int) -> bool:
        return await self._update(
            "record a replay job's progress", "rows_read = %s", (rows_read,), job_id
        )

    async def finish(
        self,
        job_id: str,
        *,
        rows_read: int,
        summary: dict[str, Any],
        events: str,
        report: ReplayReport,
    ) -> bool:
        return await self._update(
            "store a replay job's result",
            "status = 'done', finished_at = now(), rows_read = %s, summary = %s,"
            " events = %s, report = %s, signature = %s",
            (rows_read, Jsonb(summary), events, report.csv, report.signature),
            job_id,
        )

    async def end(self, job_id: str, *, status: str, error: str | None = None) -> bool:
        """End an unfinished job as ``failed``, ``cancelled`` or ``interrupted``."""
        if status not in ("failed", "cancelled", "interrupted"):
            raise ValueError(f"not an end of a job: {status}")
        return await self._update(
            f"mark a replay job {status}",
            "status = %s, finished_at = now(), error = %s",
            (status, error),
            job_id,
        )

    async def interrupt_unfinished(self) -> list[str]:
        """Mark every unfinished job ``interrupted``; their ids."""
        with storage_errors("mark unfinished replay jobs interrupted"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET status = 'interrupted', finished_at = now(),"
                        " error = 'the API process running it stopped'"
                        " WHERE status = ANY(%s) RETURNING id"
                    ).format(self._t()),
                    (list(UNFINISHED),),
                )
                return sorted(str(r[0]) for r in await cur.fetchall())

    async def get(self, job_id: str) -> ReplayJobRow | None:
        with storage_errors("read a replay job"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(ReplayJobRow))
                await cur.execute(
                    sql.SQL("SELECT {} FROM {} WHERE id = %s").format(
                        _COLUMNS, self._t()
                    ),
                    (job_id,),
                )
                return await cur.fetchone()

    async def events(self, job_id: str) -> str | None:
        """The JSON lines of a done job (None: not done or unknown)."""
        with storage_errors("read a replay job's events"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT events FROM {} WHERE id = %s AND status = 'done'"
                    ).format(self._t()),
                    (job_id,),
                )
                row = await cur.fetchone()
        return None if row is None else str(row[0])

    async def report(self, job_id: str) -> ReplayReport | None:
        """The signed report of a done job (None: not done or unknown)."""
        with storage_errors("read a replay job's report"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT report, signature FROM {}"
                        " WHERE id = %s AND status = 'done'"
                    ).format(self._t()),
                    (job_id,),
                )
                row = await cur.fetchone()
        return None if row is None else ReplayReport(bytes(row[0]), bytes(row[1]))
