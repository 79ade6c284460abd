"""Consumer positions kept in the database (``kafka_offsets``).

Every DB-positioned consumer (the sink, the rules runner's checkpoints apart, the
notifier) stores the next offset of each partition **in the same transaction** as
the work that offset covers: :func:`upsert` is called inside that transaction by the
store doing the work, and :meth:`OffsetStore.load` gives the positions back on
assignment.
"""

from __future__ import annotations

from collections.abc import Sequence

from psycopg import sql

from storage.base import Conn, Database, storage_errors, table
from storage.model import KafkaOffset


def upsert_statement(schema: str) -> sql.Composed:
    """Set the next offsets from four arrays: group, topic, partition, next offset."""
    return sql.SQL(
        "INSERT INTO {} (consumer_group, topic, partition, next_offset, updated_at)"
        " SELECT g, t, p, o, now()"
        " FROM unnest(%s::text[], %s::text[], %s::int4[], %s::int8[]) AS u (g, t, p, o)"
        " ON CONFLICT (consumer_group, topic, partition) DO UPDATE"
        " SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at"
    ).format(table(schema, "kafka_offsets"))


def offset_arrays(
    offsets: Sequence[KafkaOffset],
) -> tuple[list[str], list[str], list[int], list[int]]:
    """The parameters of :func:`upsert_statement`."""
    return (
        [o.group for o in offsets],
        [o.topic for o in offsets],
        [o.partition for o in offsets],
        [o.next_offset for o in offsets],
    )


async def upsert(conn: Conn, schema: str, offsets: Sequence[KafkaOffset]) -> None:
    """Store ``offsets`` in the caller's transaction (nothing if there are none)."""
    if offsets:
        await conn.execute(upsert_statement(schema), offset_arrays(offsets))


class OffsetStore:
    """Reads the stored positions; they are written by the stores whose work they
    cover (:meth:`storage.TelemetryStore.write`, :meth:`storage.WebhookStore.enqueue`).
    """

    def __init__(self, db: Database) -> None:
        self._db = db

    async def load(self, group: str, topic: str) -> dict[int, int]:
        """The next offset per partition stored for ``group`` on ``topic``."""
        with storage_errors("load offsets"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT partition, next_offset FROM {}"
                        " WHERE consumer_group = %s AND topic = %s"
                    ).format(table(self._db.schema, "kafka_offsets")),
                    (group, topic),
                )
                return {int(p): int(o) for p, o in await cur.fetchall()}
