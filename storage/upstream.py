"""The HJ 212 upstream outbox (``upstream_outbox``, migration 0015).

Contracts:

- :meth:`UpstreamStore.enqueue` writes a batch's packets and the consumer offsets
  in one transaction: the rows of each key (upstream, MN, CN, DataTime) are read
  under ``FOR UPDATE``, the caller's ``decide`` says what is new, and that goes
  into the key's never-sent row if there is one, else into a new row. If it
  raises :class:`StorageError`, nothing of the batch is committed.
- :meth:`UpstreamStore.mark_sent` is called *before* each frame goes out: it
  counts the attempt, records the QN and returns the row's fields as they are
  now. Once a row has an attempt its fields never change (``enqueue`` no longer
  merges into it), so what is acknowledged is exactly what was sent.
- A row leaves ``pending`` only through :meth:`UpstreamStore.ack` (the platform's
  reply). Nothing here deletes a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from storage import offsets as offset_sql
from storage.base import Database, storage_errors, table
from storage.model import KafkaOffset

#: code → HJ 212 field → [value text, data flag]
Fields = dict[str, dict[str, Sequence[str]]]


@dataclass(frozen=True, slots=True)
class NewPacket:
    """Fields of one (upstream, outlet MN, CN, DataTime) from one batch."""

    upstream: str
    outlet: str
    mn: str
    cn: str
    data_time: str
    fields: Fields


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    upstream: str
    outlet: str
    mn: str
    cn: str
    data_time: str
    fields: Fields
    status: str
    attempts: int
    qn: str | None
    created_at: datetime
    first_sent_at: datetime | None
    acked_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Backlog:
    """One upstream's outbox: pending rows, the oldest one's creation, totals."""

    upstream: str
    pending: int
    oldest_pending: datetime | None
    acked: int
    frames_sent: int
    resent: int


@dataclass(frozen=True, slots=True)
class EnqueueResult:
    inserted: int
    merged: int


#: (rows already queued for the key, incoming fields) → fields to add
Decide = Callable[[Sequence[Fields], Fields], Fields]

_COLUMNS = sql.SQL(
    "id, upstream, outlet, mn, cn, data_time, fields, status, attempts, qn,"
    " created_at, first_sent_at, acked_at, last_error"
)


class UpstreamStore:
    """See the module contract."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self) -> sql.Identifier:
        return table(self._db.schema, "upstream_outbox")

    async def enqueue(
        self,
        packets: Sequence[NewPacket],
        offsets: Sequence[KafkaOffset],
        *,
        decide: Decide,
    ) -> EnqueueResult:
        """Queue ``packets`` and store ``offsets`` in one transaction."""
        inserted = merged = 0
        with storage_errors(f"queue of {len(packets)} upstream packets"):
            async with self._db.connection() as conn, conn.transaction():
                for p in packets:
                    cur = await conn.execute(
                        sql.SQL(
                            "SELECT id, fields, attempts FROM {} WHERE upstream = %s"
                            " AND mn = %s AND cn = %s AND data_time = %s"
                            " ORDER BY id FOR UPDATE"
                        ).format(self._t()),
                        (p.upstream, p.mn, p.cn, p.data_time),
                    )
                    rows: list[tuple[int, Fields, int]] = await cur.fetchall()
                    new = decide([r[1] for r in rows], p.fields)
                    if not new:
                        continue
                    unsent = next((r for r in rows if r[2] == 0), None)
                    if unsent is None:
                        await conn.execute(
                            sql.SQL(
                                "INSERT INTO {} (upstream, outlet, mn, cn, data_time,"
                                " fields) VALUES (%s, %s, %s, %s, %s, %s)"
                            ).format(self._t()),
                            (p.upstream, p.outlet, p.mn, p.cn, p.data_time, Jsonb(new)),
                        )
                        inserted += 1
                    else:
                        fields = {c: dict(v) for c, v in unsent[1].items()}
                        for code, values in new.items():
                            fields.setdefault(code, {}).update(values)
                        await conn.execute(
                            sql.SQL("UPDATE {} SET fields = %s WHERE id = %s").format(
                                self._t()
                            ),
                            (Jsonb(fields), unsent[0]),
                        )
                        merged += 1
                await offset_sql.upsert(conn, self._db.schema, offsets)
        return EnqueueResult(inserted, merged)

    async def next_pending(self, upstream: str, mns: Sequence[str]) -> int | None:
        """The id of ``upstream``'s first pending row of one of ``mns`` (the
        configured outlets: rows of an outlet removed from the file wait), or None."""
        with storage_errors("read the upstream outbox"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT id FROM {} WHERE upstream = %s AND status = 'pending'"
                        " AND mn = ANY(%s) ORDER BY id LIMIT 1"
                    ).format(self._t()),
                    (upstream, list(mns)),
                )
                row = await cur.fetchone()
        return None if row is None else int(row[0])

    async def mark_sent(self, row_id: int, qn: str) -> OutboxRow | None:
        """Count one frame of ``row_id`` about to be sent with ``qn``; the row as
        it is now, or None if it is no longer pending."""
        with storage_errors("record an upstream send"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(OutboxRow))
                await cur.execute(
                    sql.SQL(
                        "UPDATE {} SET attempts = attempts + 1, qn = %s,"
                        " first_sent_at = coalesce(first_sent_at, now())"
                        " WHERE id = %s AND status = 'pending' RETURNING {}"
                    ).format(self._t(), _COLUMNS),
                    (qn, row_id),
                )
                return await cur.fetchone()

    async def ack(self, row_id: int) -> None:
        """The platform acknowledged ``row_id``."""
        with storage_errors("record an upstream reply"):
            async with self._db.connection() as conn:
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET status = 'acked', acked_at = now(),"
                        " last_error = NULL WHERE id = %s"
                    ).format(self._t()),
                    (row_id,),
                )

    async def note_error(self, row_id: int, error: str) -> None:
        """Why ``row_id`` was not acknowledged (it stays pending)."""
        with storage_errors("record an upstream failure"):
            async with self._db.connection() as conn:
                await conn.execute(
                    sql.SQL("UPDATE {} SET last_error = %s WHERE id = %s").format(
                        self._t()
                    ),
                    (error[:1000], row_id),
                )

    async def rows(
        self, upstream: str, *, status: str | None = None
    ) -> list[OutboxRow]:
        """Every row of ``upstream`` in id order (tests and tools)."""
        conds: list[Any] = [upstream]
        where = sql.SQL("upstream = %s")
        if status is not None:
            where = sql.SQL("upstream = %s AND status = %s")
            conds.append(status)
        with storage_errors("read the upstream outbox"):
            async with self._db.connection() as conn:
                cur = conn.cursor(row_factory=class_row(OutboxRow))
                await cur.execute(
                    sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY id").format(
                        _COLUMNS, self._t(), where
                    ),
                    conds,
                )
                return await cur.fetchall()

    async def backlog(self, upstreams: Sequence[str] | None = None) -> list[Backlog]:
        """Per upstream (those given, else every one with rows), in name order."""
        with storage_errors("read the upstream backlog"):
            async with self._db.connection() as conn:
                if upstreams is None:
                    names = await conn.execute(
                        sql.SQL("SELECT DISTINCT upstream FROM {}").format(self._t())
                    )
                    upstreams = [r[0] for r in await names.fetchall()]
                cur = conn.cursor(row_factory=class_row(Backlog))
                await cur.execute(
                    sql.SQL(
                        "SELECT u.upstream,"
                        " count(o.id) FILTER (WHERE o.status = 'pending') AS pending,"
                        " min(o.created_at) FILTER (WHERE o.status = 'pending')"
                        "  AS oldest_pending,"
                        " count(o.id) FILTER (WHERE o.status = 'acked') AS acked,"
                        " coalesce(sum(o.attempts), 0)::int8 AS frames_sent,"
                        " coalesce(sum(greatest(o.attempts - 1, 0)), 0)::int8"
                        "  AS resent"
                        " FROM unnest(%s::text[]) AS u (upstream)"
                        " LEFT JOIN {} o ON o.upstream = u.upstream"
                        " GROUP BY u.upstream ORDER BY u.upstream"
                    ).format(self._t()),
                    (list(upstreams),),
                )
                return await cur.fetchall()
