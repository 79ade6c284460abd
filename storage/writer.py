"""Moving a batch of rows into ``telemetry``: COPY via staging, or chunked INSERTs.

``copy``: optimistic first: the rows are binary-COPY'd straight into ``telemetry``
inside a savepoint, which is as fast as a raw COPY. If any of them is already stored
(a redelivery after a crash, a retried batch) the unique key refuses the COPY, the
savepoint undoes it, and the batch goes the careful way: COPY into a per-connection
temporary staging table, then ``INSERT … SELECT … ON CONFLICT DO NOTHING``, which
costs about twice a raw COPY on the server. Duplicates are the exception, so the
common batch pays only for the COPY.
``insert`` (servers without COPY, such as PGlite): the same INSERT reads
``unnest()`` of one array parameter per column, in chunks that keep every client
message under 64 KiB.

Both run inside the caller's transaction and return the number of rows inserted;
neither commits. Rows go in as :data:`StoredRow` tuples: the series already
resolved to its id (:class:`storage.series.SeriesIds`).
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import sql

from smartpark.settings import BulkMethod
from storage import statements
from storage.base import Conn

StoredRow = tuple[Any, ...]
"""(time, seq, value, series_id, quality, reset): ``statements.COLUMNS``"""

# PGlite refuses client messages of 64 KiB or more; the INSERT path keeps each
# statement (text + array parameters) under this many bytes.
MAX_STATEMENT_BYTES = 56 * 1024
# Per-row parameter size, text array format (worst case): a timestamp, a bigint, a
# float, an integer, one-letter quality, a reset ("replacement"), quotes and
# separators.
_ROW_BYTES = 120


class RowWriter:
    def __init__(self, schema: str, bulk_method: BulkMethod) -> None:
        self._copy = bulk_method == "copy"
        self._from_staging = statements.insert_rows(schema, statements.STAGING)
        self._direct = statements.copy_into_telemetry(schema)
        self._from_arrays = statements.insert_rows(schema, statements.unnest_source())
        self._staged: weakref.WeakSet[Conn] = weakref.WeakSet()

    async def prepare(self, conn: Conn) -> None:
        """Call outside the transaction: creates the staging table once per session.

        Inside it, a batch that rolls back would take the table with it.
        """
        if self._copy and conn not in self._staged:
            await conn.execute(statements.create_staging())
            self._staged.add(conn)

    @property
    def streams(self) -> bool:
        """Whether :meth:`insert_stream` sends each chunk as it comes (COPY)."""
        return self._copy

    async def insert(self, conn: Conn, rows: Sequence[StoredRow]) -> int:
        """Insert ``rows`` in the current transaction; return how many were new."""
        if not rows:
            return 0
        return await self.insert_stream(conn, [rows])

    async def insert_stream(
        self, conn: Conn, chunks: Iterable[Sequence[StoredRow]]
    ) -> int:
        """:meth:`insert` of the rows of ``chunks``. With ``copy``, each chunk is
        sent as soon as it is made, so the server stores one chunk while the
        iterator makes the next (the sink decodes in the iterator). An exception
        the iterator raises ends the COPY, undone, and propagates."""
        chunks = iter(chunks)
        rows: list[StoredRow] = []
        async with conn.cursor() as cur:
            if self._copy:
                try:
                    # a savepoint in the caller's transaction
                    async with conn.transaction(), cur.copy(self._direct) as copy:
                        copy.set_types(list(statements.COPY_TYPES))
                        for chunk in chunks:
                            rows.extend(chunk)
                            for row in chunk:
                                await copy.write_row(row)
                except psycopg.errors.UniqueViolation:
                    pass  # some rows are stored already: take the careful way
                else:
                    return len(rows)
                for chunk in chunks:  # (psycopg may stop the COPY at the error)
                    rows.extend(chunk)
                if not rows:
                    return 0
                await self._copy_rows(cur, statements.copy_into_staging(), rows)
                await cur.execute(self._from_staging)
                return max(cur.rowcount, 0)
            for chunk in chunks:
                rows.extend(chunk)
            if not rows:
                return 0
            inserted = 0
            budget = MAX_STATEMENT_BYTES - len(self._from_arrays.as_bytes(conn))
            for part in _chunks(rows, budget):
                columns = [list(col) for col in zip(*part, strict=True)]
                await cur.execute(self._from_arrays, columns)
                inserted += max(cur.rowcount, 0)
            return inserted

    @staticmethod
    async def _copy_rows(
        cur: psycopg.AsyncCursor[Any],
        statement: sql.Composed,
        rows: Sequence[StoredRow],
    ) -> None:
        async with cur.copy(statement) as copy:
            copy.set_types(list(statements.COPY_TYPES))
            for row in rows:
                await copy.write_row(row)


def _chunks(rows: Sequence[StoredRow], budget: int) -> Iterator[Sequence[StoredRow]]:
    """Consecutive slices whose estimated parameter size stays under ``budget``."""
    step = max(1, budget // _ROW_BYTES)
    for start in range(0, len(rows), step):
        yield rows[start : start + step]
