"""Kafka → database sink: exactly once in effect.

The sink consumes the telemetry topic in a consumer group and stores every reading
once. Correctness rests on the database, not on Kafka:

* Each batch (one ``getmany``) becomes **one** storage transaction holding its rows
  and, per partition, the next offset to consume. Rows already stored are skipped
  (``ON CONFLICT DO NOTHING``), so a batch replayed after a crash changes nothing.
* On partition assignment the sink seeks to the offsets stored in the database
  (or to the beginning when there are none); Kafka's committed offsets are written
  after the database commit for lag monitoring only.
* A record that does not decode goes to the dead-letter topic with its original
  bytes, the reason and its source ``kafka:{topic}/{partition}/{offset}``; the dead
  letters are acknowledged by Kafka **before** the batch's offsets are committed, and
  the partition moves on. A dead letter may be produced twice if the database write
  that follows fails and the batch is retried.
* If the write fails, nothing of the batch is acknowledged: the sink seeks back to the
  first offset of the batch in each partition (the database's committed position) and
  retries with exponential backoff.
* A revocation waits for the in-flight batch to commit or fail before it returns, so
  the next owner of a partition starts exactly where this one's rows end.
* Plain PostgreSQL: the rollups are refreshed every ``sink.rollup_refresh_ms`` by a
  task of their own on a connection of their own, never inside the write loop, so a
  refresh does not hold up a batch; a failed refresh is logged, counted and tried
  again at the next interval (the minutes stay in the log).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Self

from aiokafka import AIOKafkaProducer, TopicPartition

from smartpark.clock import MsClock, system_ms
from smartpark.errors import PayloadError, StorageError
from smartpark.settings import Settings
from smartpark.wire import TelemetryBatch
from storage import Dialect, EpochRow, KafkaOffset, Storage
from stream.group import Batch, DbPositionedConsumer
from stream.kafka import DeadLetter, ensure_topics, make_producer
from stream.records import decode_record

log = logging.getLogger(__name__)

# Daily partitions (plain PostgreSQL) are created a week ahead; refreshing that
# window hourly keeps DDL off the hot path at midnight.
_PARTITIONS_EVERY_MS = 3600 * 1000
_UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Readings decoded before storage sends them on (TelemetryStore.write_stream).
CHUNK_READINGS = 1000


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for one batch, back on after it.

    A batch allocates some 100 000 objects (the JSON of every record, its readings,
    the rows) that live until it is stored and hold no cycles, so reference
    counting frees them then; meanwhile the collector, triggered by the
    allocations, would scan them again and again, promote them into the old
    generation and run full collections over the whole heap. Whatever cyclic
    garbage the batch leaves is collected after it. A no-op if the collector is
    off already.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _time_of(ts_ms: int) -> datetime:
    """A wire timestamp as the stored rows carry it (see storage.rows_from_batch)."""
    return _UNIX_EPOCH + timedelta(milliseconds=ts_ms)


@dataclass
class SinkStats:
    """Counters since start; ``last_commit_ms`` is the clock at the last DB commit."""

    records: int = 0
    rows_inserted: int = 0
    duplicates: int = 0
    dead_letters: int = 0
    batches: int = 0
    retries: int = 0
    last_commit_ms: int | None = None
    assigned: list[str] = field(default_factory=list)
    rollup_refreshes: int = 0
    rollup_minutes: int = 0
    rollup_failures: int = 0


class Sink(DbPositionedConsumer):
    """Moves telemetry from Kafka into the database.

    ``async with Sink(settings) as sink: await sink.run()``. ``run()`` returns after
    :meth:`stop` once the in-flight batch is committed or dropped; cancelling it
    drops the in-flight batch (nothing of it is committed). Entering refuses to
    start (:class:`smartpark.errors.ConfigError`) if the schema is not migrated.
    """

    def __init__(self, settings: Settings, *, clock: MsClock = system_ms) -> None:
        super().__init__(
            settings.kafka,
            settings.sink,
            topic=settings.kafka.telemetry_topic,
            client_id=f"{settings.kafka.client_id}-sink",
        )
        self._settings = settings
        self._clock = clock
        self.stats = SinkStats()
        # One connection writes, one refreshes the rollups.
        self._storage = Storage(settings.database, clock=clock, pool_size=2)
        self._producer: AIOKafkaProducer | None = None
        self._partitions_ms = clock()
        self._refresher: asyncio.Task[None] | None = None
        # The newest outbox epoch stored per device (park/enterprise/device), so an
        # epoch is written once, not with every batch.
        self._epochs: dict[tuple[str, str, str], str] = {}

    async def __aenter__(self) -> Self:
        await self._storage.open()
        try:
            await self._storage.require_migrated()
            await self._storage.telemetry.ensure_partitions()
            started = time.monotonic()
            series = await self._storage.telemetry.preload_series()
            log.info("%d series cached in %.1f s", series, time.monotonic() - started)
            await ensure_topics(self._settings.kafka)
            self._producer = make_producer(
                self._settings.kafka, client_id=f"{self._settings.kafka.client_id}-sink"
            )
            await self._producer.start()
            await self.start()
            if self._storage.dialect is Dialect.POSTGRES:
                self._refresher = asyncio.create_task(
                    self._refresh_rollups(), name="rollup refresh"
                )
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        await self.close()
        if self._producer is not None:
            await self._producer.stop()
        await self._storage.close()

    @property
    def storage(self) -> Storage:
        return self._storage

    async def _refresh_rollups(self) -> None:
        """Merge the logged minutes into the rollups, every interval, until closed."""
        every_ms = self._settings.sink.rollup_refresh_ms
        while True:
            await asyncio.sleep(every_ms / 1000)
            try:
                # the minute in progress is merged once it has ended
                now = datetime.fromtimestamp(self._clock() // 60_000 * 60, UTC)
                minutes = await self._storage.telemetry.refresh_rollups(before=now)
            except StorageError as exc:
                self.stats.rollup_failures += 1
                log.warning("rollup refresh failed (%s); next try in %d ms",
                            exc, every_ms)  # fmt: skip
                continue
            self.stats.rollup_refreshes += 1
            self.stats.rollup_minutes += minutes

    async def maintain(self) -> None:
        """The partition window, when due (plain PostgreSQL only)."""
        self.stats.retries = self.retries
        self.stats.assigned = self.assigned
        if self._storage.dialect is not Dialect.POSTGRES:
            return
        now = self._clock()
        if now - self._partitions_ms >= _PARTITIONS_EVERY_MS:
            await self._storage.telemetry.ensure_partitions()
            self._partitions_ms = now

    async def load_positions(self, tps: set[TopicPartition]) -> dict[int, int]:
        return await self._storage.offsets.load(self._group, self._topic)

    async def process(self, batch: Batch) -> dict[TopicPartition, int]:
        """Decode, dead-letter and store one batch; return the next offsets committed.

        If this raises, nothing of the batch is committed to the database.
        """
        with collector_paused():
            return await self._process(batch)

    async def _process(self, batch: Batch) -> dict[TopicPartition, int]:
        now_ms = self._clock()
        epochs: dict[tuple[str, str, str, str], EpochRow] = {}
        letters: list[DeadLetter] = []
        next_offsets = {tp: records[-1].offset + 1 for tp, records in batch.items()}

        def decoded() -> Iterator[list[TelemetryBatch]]:
            """The batch's polls in chunks, decoded as storage asks for them (it
            stores one chunk while this decodes the next); the bad records go
            to ``letters``."""
            polls: list[TelemetryBatch] = []
            readings = 0
            for tp, records in batch.items():
                for rec in records:
                    source = f"kafka:{tp.topic}/{tp.partition}/{rec.offset}"
                    if rec.value is None:
                        letters.append(
                            DeadLetter(b"", "record has no value", source, now_ms,
                                       rec.key)
                        )  # fmt: skip
                        continue
                    try:
                        message = decode_record(rec.value, now_ms=now_ms)
                    except PayloadError as exc:
                        letters.append(
                            DeadLetter(rec.value, str(exc), source, now_ms, rec.key)
                        )
                        continue
                    for poll in message.batches:
                        polls.append(poll)
                        readings += len(poll.readings)
                        if poll.epoch is not None:
                            self._note_epoch(poll, epochs)
                    if readings >= CHUNK_READINGS:
                        yield polls
                        polls, readings = [], 0
            if polls:
                yield polls

        async def dead_letter() -> None:  # acknowledged before the offsets commit
            if letters:
                await self._dead_letter(letters)

        result = await self._storage.telemetry.write_stream(
            decoded(),
            offsets=[
                KafkaOffset(self._group, tp.topic, tp.partition, off)
                for tp, off in next_offsets.items()
            ],
            epochs=lambda: list(epochs.values()),
            before_commit=dead_letter,
        )
        for e in epochs.values():
            self._epochs[(e.park, e.enterprise, e.device)] = e.epoch
        self.stats.records += sum(len(r) for r in batch.values())
        self.stats.rows_inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += len(letters)
        self.stats.batches += 1
        self.stats.last_commit_ms = self._clock()
        self.stats.retries = self.retries
        self.stats.assigned = self.assigned
        return next_offsets

    def _note_epoch(
        self,
        poll: TelemetryBatch,
        into: dict[tuple[str, str, str, str], EpochRow],
    ) -> None:
        """Record the first poll of an epoch this sink has not stored yet."""
        device = (poll.park, poll.enterprise, poll.device)
        epoch = poll.epoch
        if epoch is None or self._epochs.get(device) == epoch:
            return
        first = min(poll.readings, key=lambda r: (r.seq, r.ts_ms))
        key = (*device, epoch)
        known = into.get(key)
        if known is None or first.seq < known.first_seq:
            into[key] = EpochRow(*device, epoch, first.seq, _time_of(first.ts_ms))

    async def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        producer = self._require(self._producer)
        topic = self._settings.kafka.deadletter_topic
        for letter in letters:
            log.warning("dead letter %s: %s", letter.source, letter.reason)
        futures = [
            await producer.send(
                topic, letter.value, key=letter.key, headers=letter.headers()
            )
            for letter in letters
        ]
        await asyncio.gather(*futures)
