"""Telemetry: the write path, reads, rollups and (plain PostgreSQL) partitions.

The write contract (:meth:`TelemetryStore.write`): rows and Kafka offsets are
committed in one transaction. If ``write()`` raises, nothing of the batch is
committed — neither rows nor offsets — and calling it again with the same batch is
safe; if it returns, both are durable. Rows already stored (same device, metric,
time) are counted as duplicates and left untouched, so redelivery and retries never
duplicate a row. A row is stored by series (:mod:`storage.series`): its park,
enterprise, device, metric, data type and stat once in ``series``, its id on the
row. :meth:`TelemetryStore.write_polls` is the same write for decoded wire batches
(the sink's path): it goes from readings to stored rows in one loop, without a
:class:`TelemetryRow` a reading.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from datetime import UTC, date, datetime, timedelta

from psycopg import sql
from psycopg.rows import class_row

from smartpark.settings import BulkMethod
from smartpark.wire import TelemetryBatch
from storage import offsets as offset_sql
from storage import reads, rollups
from storage.base import Conn, Database, storage_errors
from storage.model import (
    Dialect,
    EpochRow,
    KafkaOffset,
    ReadingKey,
    RollupLevel,
    RollupRow,
    TelemetryRow,
    WriteResult,
)
from storage.partitions import Compacted, Partitions
from storage.series import SeriesIds, SeriesKey
from storage.writer import RowWriter, StoredRow

# A day's partition is compacted once the day ended this many days ago: late rows
# (allowed lateness is about an hour) have long arrived by then.
COMPACT_AFTER_DAYS = 1
_TIME_OF = operator.attrgetter("time")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _NotStreamed(Exception):
    """A chunk of :meth:`TelemetryStore.write_stream` needs what only the
    careful path does (a series to load, a partition to create)."""


class TelemetryStore:
    """Readings of one schema, in the schema's dialect (given once it is known)."""

    def __init__(self, db: Database, dialect: Dialect, bulk_method: BulkMethod) -> None:
        self._db = db
        self._schema = db.schema
        self._dialect = dialect
        self._partitions = Partitions(self._schema)
        self._writer = RowWriter(self._schema, bulk_method)
        self._series = SeriesIds(self._schema)

    @property
    def series(self) -> SeriesIds:
        return self._series

    async def preload_series(self) -> int:
        """Cache the ids of every stored series (:meth:`SeriesIds.preload`)."""
        with storage_errors("preload series"):
            async with self._db.connection() as conn:
                return await self._series.preload(conn)

    @property
    def partitions(self) -> Partitions:
        return self._partitions

    def _today(self) -> date:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC).date()

    # -- write path ---------------------------------------------------------------

    async def write(
        self,
        rows: Sequence[TelemetryRow],
        *,
        offsets: Sequence[KafkaOffset] = (),
        epochs: Sequence[EpochRow] = (),
    ) -> WriteResult:
        """Store ``rows``, set ``offsets`` and record new outbox ``epochs`` (each
        once: an epoch already recorded is left as it was) in one transaction.

        ``rows`` carry aware datetimes. If this raises :class:`StorageError`,
        nothing of the batch is committed; retrying the same call is safe. (If the
        connection drops during COMMIT the outcome is unknown to us, which is why
        retrying must be, and is, idempotent.)
        """
        # The rows of a poll share their time: each distinct time is converted once.
        times = dict.fromkeys(map(_TIME_OF, rows))

        async def stored(conn: Conn) -> Sequence[StoredRow]:
            ids = await self._series.resolve(conn, rows)
            return [
                (r.time, r.seq, r.value, i, r.quality, r.reset)
                for r, i in zip(rows, ids, strict=True)
            ]

        return await self._write(
            len(rows), times, stored, offsets=offsets, epochs=epochs
        )

    async def write_polls(
        self,
        polls: Sequence[TelemetryBatch],
        *,
        offsets: Sequence[KafkaOffset] = (),
        epochs: Sequence[EpochRow] = (),
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> WriteResult:
        """:meth:`write` of the rows of ``polls`` (decoded wire batches, as
        :func:`storage.model.rows_from_batch` spells them out), with the same
        contract: the sink's path, which builds no :class:`TelemetryRow`.
        ``before_commit`` is awaited last in the transaction; if it raises,
        nothing is committed."""
        times: dict[int, datetime] = {}  # by ts_ms, as rows_from_batch converts
        built, missing = _stored_rows(polls, self._series, times)

        async def stored(conn: Conn) -> Sequence[StoredRow]:
            if not missing:
                return built
            await self._series.load(conn, missing)
            rows, left = _stored_rows(polls, self._series, times)
            assert not left, "every series was just loaded"
            return rows

        count = sum(len(p.readings) for p in polls)
        return await self._write(
            count, times.values(), stored, offsets=offsets, epochs=epochs,
            before_commit=before_commit,
        )  # fmt: skip

    async def write_stream(
        self,
        chunks: Iterable[Sequence[TelemetryBatch]],
        *,
        offsets: Sequence[KafkaOffset] = (),
        epochs: Callable[[], Sequence[EpochRow]] | None = None,
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> WriteResult:
        """:meth:`write_polls` of the polls ``chunks`` yields, with the same
        contract; ``epochs()`` is called once ``chunks`` is exhausted (the
        sink notes them while it decodes).

        The rows of each chunk go to the server (COPY) as soon as the chunk is
        made, so PostgreSQL stores one chunk while the iterator makes the next:
        the sink decodes its records in the iterator, and its decoding and the
        server's inserts overlap on two cores instead of taking turns (measured
        with ``bench/sink_bench.py``). A chunk with a series not cached yet or
        a day whose partition is not known to exist ends the COPY, undone; the
        rest of the chunks is made, and the batch is written by
        :meth:`write_polls` (which loads series and creates partitions outside
        its transaction). Without COPY (``insert``): :meth:`write_polls` of all
        the chunks at once.
        """
        polls: list[TelemetryBatch] = []
        it = iter(chunks)
        new_epochs = epochs or tuple
        if self._writer.streams:
            times: dict[int, datetime] = {}

            plain = self._dialect is Dialect.POSTGRES

            def rows() -> Iterator[list[StoredRow]]:
                days_known = self._partitions.known
                checked = 0
                for chunk in it:
                    polls.extend(chunk)
                    built, missing = _stored_rows(chunk, self._series, times)
                    if missing:
                        raise _NotStreamed
                    if plain and len(times) > checked:
                        new = itertools.islice(times.values(), checked, None)
                        if not all(days_known(t.date()) for t in new):
                            raise _NotStreamed
                        checked = len(times)
                    yield built

            try:
                with (
                    storage_errors("write of a batch"),
                    self._partitions.unsure(),
                ):
                    async with self._db.connection() as conn:
                        await self._writer.prepare(conn)
                        async with conn.transaction():
                            inserted = await self._writer.insert_stream(conn, rows())
                            minutes = (
                                rollups.touched_minutes(times.values()) if plain else []
                            )
                            await self._finish(
                                conn, inserted, minutes, offsets=offsets,
                                epochs=new_epochs(), before_commit=before_commit,
                            )  # fmt: skip
            except _NotStreamed:
                pass
            else:
                count = sum(len(p.readings) for p in polls)
                return WriteResult(inserted, count - inserted)
        for chunk in it:
            polls.extend(chunk)
        return await self.write_polls(
            polls, offsets=offsets, epochs=new_epochs(), before_commit=before_commit
        )

    async def _write(
        self,
        count: int,
        times: Iterable[datetime],
        stored: Callable[[Conn], Awaitable[Sequence[StoredRow]]],
        *,
        offsets: Sequence[KafkaOffset],
        epochs: Sequence[EpochRow],
        before_commit: Callable[[], Awaitable[None]] | None = None,
    ) -> WriteResult:
        """The transaction of :meth:`write`: ``stored(conn)`` builds the rows
        (resolving their series outside the transaction); ``times`` are the
        distinct times of the rows (their minutes are logged for the rollups)."""
        plain = self._dialect is Dialect.POSTGRES
        minutes = rollups.touched_minutes(times) if plain else []
        with storage_errors(f"write of {count} rows"), self._partitions.unsure():
            async with self._db.connection() as conn:
                if minutes:
                    days = {m.date() for m in minutes}
                    await self._partitions.ensure_days(conn, days)
                await self._writer.prepare(conn)
                rows = await stored(conn)
                async with conn.transaction():
                    inserted = await self._writer.insert(conn, rows)
                    await self._finish(
                        conn, inserted, minutes, offsets=offsets, epochs=epochs,
                        before_commit=before_commit,
                    )  # fmt: skip
        return WriteResult(inserted, count - inserted)

    async def _finish(
        self,
        conn: Conn,
        inserted: int,
        minutes: Sequence[datetime],
        *,
        offsets: Sequence[KafkaOffset],
        epochs: Sequence[EpochRow],
        before_commit: Callable[[], Awaitable[None]] | None,
    ) -> None:
        """The rest of a write's transaction, after its rows: the touched
        ``minutes`` logged for the rollups (plain PostgreSQL: none otherwise), the
        offsets, the new epochs, then ``before_commit``."""
        if inserted and minutes:
            await conn.execute(rollups.mark(self._schema), (minutes,))
        await offset_sql.upsert(conn, self._schema, offsets)
        if epochs:
            await conn.execute(
                _insert_epochs(self._schema),
                (
                    [e.park for e in epochs],
                    [e.enterprise for e in epochs],
                    [e.device for e in epochs],
                    [e.epoch for e in epochs],
                    [e.first_seq for e in epochs],
                    [e.first_time for e in epochs],
                ),
            )
        if before_commit is not None:
            await before_commit()

    # -- maintenance --------------------------------------------------------------

    async def ensure_partitions(self, *, today: date | None = None) -> list[str]:
        """Plain PostgreSQL: partitions for today-1 .. today+7; no-op on TimescaleDB."""
        if self._dialect is not Dialect.POSTGRES:
            return []
        with storage_errors("ensure partitions"):
            async with self._db.connection() as conn:
                return await self._partitions.ensure_window(
                    conn, today or self._today()
                )

    async def compact_partitions(
        self, *, settle_days: int = COMPACT_AFTER_DAYS, today: date | None = None
    ) -> list[Compacted]:
        """Plain PostgreSQL: rebuild the indexes of each daily partition once, when
        its day ended ``settle_days`` days ago or more (see migration 0006);
        no-op on TimescaleDB, which compresses chunks instead. Slow on a big
        partition (minutes), but it does not block writes: run it from
        ``smartpark db maintain``, not from a sink."""
        if self._dialect is not Dialect.POSTGRES:
            return []
        cutoff = (today or self._today()) - timedelta(days=settle_days)
        with storage_errors("compact partitions"):
            async with self._db.connection() as conn:
                return await self._partitions.compact_before(conn, cutoff)

    async def apply_retention(
        self, *, keep_days: int, drop_unarchived: bool = False
    ) -> tuple[list[str], list[str]]:
        """Plain PostgreSQL: drop raw partitions older than ``keep_days`` days
        that hold no row any more (moved into the sealed archive), or all of them
        with ``drop_unarchived``; (dropped, kept) partition names.

        TimescaleDB: its days leave through the archive only (migration 0017
        removed the retention policy); there this returns ``([], [])``.
        """
        if self._dialect is not Dialect.POSTGRES:
            return [], []
        cutoff = self._today() - timedelta(days=keep_days)
        with storage_errors("apply retention"):
            async with self._db.connection() as conn:
                return await self._partitions.drop_before(
                    conn, cutoff, drop_unarchived=drop_unarchived
                )

    async def refresh_rollups(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        before: datetime | None = None,
    ) -> int:
        """Bring the rollups up to date; ``[start, end)`` is recomputed in any case.

        Plain PostgreSQL: recompute the buckets the write path logged (and the given
        range); returns the number of one-minute buckets recomputed. TimescaleDB:
        refresh the continuous aggregates finest first (each level reads the one
        below) over the range (None: unbounded); returns 0. Either way, afterwards
        the rollups equal a GROUP BY over the raw rows. ``before`` (plain
        PostgreSQL): only the logged minutes that start before it, the rest stays
        logged (the sink passes the minute in progress: :mod:`storage.rollups`).
        """
        with storage_errors("refresh rollups"):
            async with self._db.connection() as conn:
                if self._dialect is Dialect.POSTGRES:
                    extra = (start, end) if start and end else None
                    return await rollups.refresh(
                        conn, self._schema, extra, before=before
                    )
                await self._refresh_aggregates(conn, start, end)
        return 0

    async def _refresh_aggregates(
        self, conn: Conn, start: datetime | None, end: datetime | None
    ) -> None:
        for level in RollupLevel:
            await conn.execute(
                "CALL refresh_continuous_aggregate("
                "%s::regclass, %s::timestamptz, %s::timestamptz)",
                (
                    sql.Identifier(self._schema, f"telemetry_{level.value}").as_string(
                        conn
                    ),
                    start,
                    end,
                ),
            )

    # -- reads --------------------------------------------------------------------

    async def epochs(self, *, device: str | None = None) -> list[EpochRow]:
        """The recorded outbox epochs, oldest first (of one device, or all)."""
        where = sql.SQL(" WHERE device = %s") if device is not None else sql.SQL("")
        with storage_errors("read epochs"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(EpochRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "SELECT park, enterprise, device, epoch, first_seq, first_time"
                        " FROM {}{} ORDER BY first_time, device, epoch"
                    ).format(sql.Identifier(self._schema, "device_epochs"), where),
                    (device,) if device is not None else (),
                )
                return await cur.fetchall()

    async def count_rows(
        self,
        *,
        park: str | None = None,
        enterprise: str | None = None,
        device: str | None = None,
    ) -> int:
        with storage_errors("count rows"):
            async with self._db.connection() as conn:
                return await reads.count_rows(
                    conn, self._schema, park=park, enterprise=enterprise, device=device
                )

    async def reading_keys(
        self, *, park: str | None = None, device: str | None = None
    ) -> list[ReadingKey]:
        """(device, seq, metric) of every stored reading, sorted: exactness checks."""
        with storage_errors("read keys"):
            async with self._db.connection() as conn:
                return await reads.reading_keys(
                    conn, self._schema, park=park, device=device
                )

    async def readings(
        self,
        *,
        device: str | None = None,
        park: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        data_type: str | None = None,
    ) -> list[TelemetryRow]:
        """Stored rows in time order, filtered; ``[start, end)``."""
        with storage_errors("read rows"):
            async with self._db.connection() as conn:
                return await reads.readings(
                    conn, self._schema, device=device, park=park, start=start,
                    end=end, data_type=data_type,
                )  # fmt: skip

    async def rollup(
        self,
        level: RollupLevel,
        *,
        start: datetime,
        end: datetime,
        park: str | None = None,
        enterprise: str | None = None,
        device: str | None = None,
        metric: str | None = None,
        data_type: str | None = None,
    ) -> list[RollupRow]:
        """Rollup rows with ``start <= bucket < end`` by bucket, device, metric
        (one per series: a data type's values never mix with another's)."""
        with storage_errors("read rollup"):
            async with self._db.connection() as conn:
                return await reads.rollup(
                    conn, self._schema, level, start=start, end=end, park=park,
                    enterprise=enterprise, device=device, metric=metric,
                    data_type=data_type,
                )  # fmt: skip


def _insert_epochs(schema: str) -> sql.Composed:
    return sql.SQL(
        "INSERT INTO {} (park, enterprise, device, epoch, first_seq, first_time)"
        " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::int8[], %s::timestamptz[]) ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(schema, "device_epochs"))


def _stored_rows(
    polls: Sequence[TelemetryBatch], series: SeriesIds, times: dict[int, datetime]
) -> tuple[list[StoredRow], list[SeriesKey]]:
    """The stored rows of ``polls`` and the keys of the series not cached yet (their
    readings are left out: load them, then call again); the time of every reading
    is added to ``times`` (by ``ts_ms``).

    The sink's hot loop: one device lookup per poll, one dict lookup per reading.
    """
    rows: list[StoredRow] = []
    append = rows.append
    missing: list[SeriesKey] = []
    for poll in polls:
        ids = series.of_device((poll.park, poll.enterprise, poll.device))
        for seq, metric, value, _unit, ts_ms, quality, reset, dt, stat in poll.readings:
            t = times.get(ts_ms)
            if t is None:
                t = times[ts_ms] = _EPOCH + timedelta(milliseconds=ts_ms)
            series_id = ids.get((metric, dt, stat))
            if series_id is None:
                missing.append(
                    (poll.park, poll.enterprise, poll.device, metric, dt, stat)
                )
                continue
            append((t, seq, value, series_id, quality, reset))
    return rows, missing
