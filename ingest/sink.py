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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Self, TypeAlias, TypeVar

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from ingest.kafka import DeadLetter, ensure_topics, make_producer
from ingest.storage import (
    Dialect,
    KafkaOffset,
    Storage,
    TelemetryRow,
    rows_from_batch,
)
from smartpark.clock import MsClock, system_ms
from smartpark.errors import PayloadError, StorageError
from smartpark.settings import Settings
from smartpark.wire import TelemetryBatch, decode_batch

log = logging.getLogger(__name__)

# The bridge already refused readings from the future with its own clock; the sink's
# check only guards against a sink clock far behind (replays are in the past).
SINK_MAX_FUTURE_MS = 24 * 3600 * 1000
_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
# Daily partitions (plain PostgreSQL) are created a week ahead; refreshing that
# window hourly keeps DDL off the hot path at midnight.
_PARTITIONS_EVERY_MS = 3600 * 1000
# Plain PostgreSQL rollups are recomputed from the buckets the writes logged; this is
# how far they may lag (TimescaleDB runs its own refresh policies instead).
ROLLUP_REFRESH_EVERY_MS = 10_000
REBALANCE_TIMEOUT_MS = 60_000

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
_T = TypeVar("_T")


def decode_record(value: bytes, *, now_ms: int) -> TelemetryBatch:
    """Decode one telemetry record's value as the sink does (PayloadError if bad)."""
    return decode_batch(
        value, now_ms=now_ms, max_future_ms=SINK_MAX_FUTURE_MS, loads=orjson.loads
    )


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


class Sink:
    """Moves telemetry from Kafka into the database.

    ``async with Sink(settings) as sink: await sink.run()``. ``run()`` returns after
    :meth:`stop` once the in-flight batch is committed or dropped; cancelling it
    drops the in-flight batch (nothing of it is committed). Entering refuses to
    start (:class:`smartpark.errors.ConfigError`) if the schema is not migrated.
    """

    def __init__(self, settings: Settings, *, clock: MsClock = system_ms) -> None:
        self._settings = settings
        self._clock = clock
        self._group = settings.sink.group_id
        self._topic = settings.kafka.telemetry_topic
        self.stats = SinkStats()
        self._storage = Storage(settings.database, clock=clock)
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._stopping = asyncio.Event()
        # Held while a batch is between getmany() and its commit, and while
        # assignments change: a revocation never overlaps a batch.
        self._lock = asyncio.Lock()
        self._owned: set[TopicPartition] = set()
        self._unpositioned: set[TopicPartition] = set()
        # Bumped by every revocation and assignment. A getmany() that straddles a
        # rebalance may return records from before the new seek (processing them
        # would repeat them) and after it (dropping those alone would lose them):
        # such a batch is dropped and the partitions re-positioned from the DB.
        self._generation = 0
        self._partitions_ms = self._refreshed_ms = clock()

    async def __aenter__(self) -> Self:
        await self._storage.open()
        try:
            await self._storage.require_migrated()
            await self._storage.ensure_partitions()
            await ensure_topics(self._settings.kafka)
            self._producer = make_producer(
                self._settings.kafka, client_id=f"{self._settings.kafka.client_id}-sink"
            )
            await self._producer.start()
            s = self._settings
            self._consumer = AIOKafkaConsumer(
                bootstrap_servers=s.kafka.bootstrap,
                client_id=f"{s.kafka.client_id}-sink",
                group_id=self._group,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                # A revocation waits for the batch in flight; aiokafka's default
                # (the 10 s session timeout) would fence a member whose last write
                # is slow, and the next owner would then repeat that batch.
                rebalance_timeout_ms=REBALANCE_TIMEOUT_MS,
            )
            self._consumer.subscribe([self._topic], listener=_Listener(self))
            await self._consumer.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        # Leaving the group does not call on_partitions_revoked; nothing is in flight
        # here because run() has returned.
        if self._consumer is not None:
            await self._consumer.stop()
        if self._producer is not None:
            await self._producer.stop()
        await self._storage.close()

    def stop(self) -> None:
        """Ask ``run()`` to return after the batch in flight."""
        self._stopping.set()

    @property
    def storage(self) -> Storage:
        return self._storage

    async def run(self) -> None:
        """Consume, store and commit batches until :meth:`stop`."""
        consumer = self._require(self._consumer)
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self._maintain()
                async with self._lock:
                    await self._position(self._unpositioned)
                    generation = self._generation
                fetched = await consumer.getmany(
                    timeout_ms=self._settings.sink.batch_max_wait_ms,
                    max_records=self._settings.sink.batch_max_records,
                )
                async with self._lock:
                    if generation != self._generation:
                        # Part of this batch may predate the rebalance, part may
                        # follow the new seek: drop it all and re-seek every owned
                        # partition to its DB offset, the only position known right.
                        self._unpositioned |= self._owned
                        continue
                    batch = {
                        tp: recs
                        for tp, recs in fetched.items()
                        if recs and tp in self._owned and tp not in self._unpositioned
                    }
                    if not batch:
                        continue
                    try:
                        committed = await self._process(batch)
                    except (StorageError, KafkaError):
                        self._rewind(batch)
                        raise
            except (StorageError, KafkaError) as exc:
                self.stats.retries += 1
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("batch not committed (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            attempt = 0
            await self._commit_kafka(committed)

    async def _maintain(self) -> None:
        """Partition window and rollup refresh, when due (plain PostgreSQL only)."""
        if self._storage.dialect is not Dialect.POSTGRES:
            return
        now = self._clock()
        if now - self._partitions_ms >= _PARTITIONS_EVERY_MS:
            await self._storage.ensure_partitions()
            self._partitions_ms = now
        if now - self._refreshed_ms >= ROLLUP_REFRESH_EVERY_MS:
            await self._storage.refresh_rollups()
            self._refreshed_ms = now

    async def _process(
        self, batch: Mapping[TopicPartition, Sequence[Record]]
    ) -> dict[TopicPartition, int]:
        """Decode, dead-letter and store one batch; return the next offsets committed.

        If this raises, nothing of the batch is committed to the database.
        """
        now_ms = self._clock()
        rows: list[TelemetryRow] = []
        letters: list[DeadLetter] = []
        next_offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for rec in records:
                source = f"kafka:{tp.topic}/{tp.partition}/{rec.offset}"
                if rec.value is None:
                    letters.append(
                        DeadLetter(b"", "record has no value", source, now_ms, rec.key)
                    )
                    continue
                try:
                    decoded = decode_record(rec.value, now_ms=now_ms)
                except PayloadError as exc:
                    letters.append(
                        DeadLetter(rec.value, str(exc), source, now_ms, rec.key)
                    )
                    continue
                rows.extend(rows_from_batch(decoded))
            next_offsets[tp] = records[-1].offset + 1
        if letters:
            await self._dead_letter(letters)
        result = await self._storage.write(
            rows,
            offsets=[
                KafkaOffset(self._group, tp.topic, tp.partition, off)
                for tp, off in next_offsets.items()
            ],
        )
        self.stats.records += sum(len(r) for r in batch.values())
        self.stats.rows_inserted += result.inserted
        self.stats.duplicates += result.duplicates
        self.stats.dead_letters += len(letters)
        self.stats.batches += 1
        self.stats.last_commit_ms = self._clock()
        return next_offsets

    async def _dead_letter(self, letters: Sequence[DeadLetter]) -> None:
        producer = self._require(self._producer)
        topic = self._settings.kafka.deadletter_topic
        for letter in letters:
            log.warning("dead letter %s: %s", letter.source, letter.reason)
        futures = [
            await producer.send(
                topic, letter.original, key=letter.key, headers=letter.headers()
            )
            for letter in letters
        ]
        await asyncio.gather(*futures)

    def _rewind(self, batch: Mapping[TopicPartition, Sequence[Record]]) -> None:
        """Seek each partition back to the batch's first offset: the DB's position."""
        consumer = self._require(self._consumer)
        for tp, records in batch.items():
            with contextlib.suppress(IllegalStateError):  # no longer assigned
                consumer.seek(tp, records[0].offset)

    async def _commit_kafka(self, offsets: dict[TopicPartition, int]) -> None:
        # Only for lag monitoring: a failed commit is harmless, the DB has the truth.
        consumer = self._require(self._consumer)
        try:
            await consumer.commit(offsets)
        except KafkaError as exc:
            log.info("Kafka offset commit skipped (%s)", exc)

    async def _position(self, tps: set[TopicPartition]) -> None:
        """Seek ``tps`` to their stored DB offsets, or to the beginning without one.

        Call with the lock held. Raises StorageError if the offsets cannot be read;
        the partitions then stay unpositioned and their records are not processed.
        """
        if not tps:
            return
        consumer = self._require(self._consumer)
        stored = await self._storage.load_offsets(self._group, self._topic)
        fresh = []
        for tp in sorted(tps):
            if tp.partition in stored:
                consumer.seek(tp, stored[tp.partition])
            else:
                fresh.append(tp)
        if fresh:
            await consumer.seek_to_beginning(*fresh)
        log.info("positioned %s from DB offsets %s", sorted(tps), stored)
        self._unpositioned -= tps

    async def _on_revoked(self, revoked: set[TopicPartition]) -> None:
        async with self._lock:  # waits for the batch in flight
            self._generation += 1
            self._owned -= revoked
            self._unpositioned -= revoked
            self.stats.assigned = _names(self._owned)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._owned = set(assigned)
            self._unpositioned = set(assigned)
            self.stats.assigned = _names(self._owned)
            try:
                await self._position(set(assigned))
            except StorageError as exc:
                # run() retries before it processes anything of these partitions.
                log.warning("cannot read DB offsets on assignment: %s", exc)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("Sink is not started (use: async with Sink(...))")
        return value


def _names(tps: set[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in sorted(tps)]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    """Delegates to the sink; aiokafka awaits these during the rebalance."""

    def __init__(self, sink: Sink) -> None:
        self._sink = sink

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._sink._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._sink._on_assigned(set(assigned))
