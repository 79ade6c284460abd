"""A Kafka consumer-group member whose positions live in the database.

The pattern the sink and the rules runner share: each batch (one ``getmany``) is
processed and committed to the database in one transaction together with the next
offset of each partition; Kafka's committed offsets are written afterwards, for lag
monitoring only. Contracts of :class:`DbPositionedConsumer`:

* On assignment every partition is positioned from :meth:`load_positions` (the
  database), or at the beginning when there is none.
* If :meth:`process` raises :class:`StorageError` or :class:`KafkaError`, nothing of
  the batch counts: the partitions are sought back to the batch's first offsets and
  the batch is retried with exponential backoff.
* A revocation waits for the batch in flight (under one lock), so the next owner of
  a partition starts exactly where this member's committed work ends. A ``getmany``
  that straddles a rebalance is dropped and every owned partition re-positioned.
* ``run()`` returns after :meth:`stop` once the batch in flight is committed or
  dropped; cancelling it drops the batch in flight.
* A batch lingers: once records have come, more are fetched for up to
  ``batch_linger_ms`` (or until ``batch_max_records``) and go in the same batch.
  A transaction has a cost of its own whatever its size (measured: the sink spent
  about 3 ms of CPU a batch at the city load, batches of some 24 records, 45 a
  second); fewer, fuller batches cost less and hold the database less, for at
  most ``batch_linger_ms`` more latency. 0 takes what one ``getmany`` returns.
* A batch holds at most ``batch_max_bytes`` of record values (its first record
  whatever its size), shared round robin among the partitions: the records beyond
  are sought back to and come in the next batch, in order. Gateway records carry
  hundreds of readings each; a batch of ``batch_max_records`` of them behind a
  backlog would be one transaction of a million rows (measured at the province
  load: 700 000 rows in two batches of 2 to 5 s, rows visible after 6 s at the
  median).

Subclasses implement :meth:`process` and :meth:`load_positions`, and may override
:meth:`maintain` (called between batches) and :meth:`on_revoked` (under the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import IllegalStateError, KafkaError

from smartpark.errors import StorageError
from smartpark.settings import ConsumerSettings, KafkaSettings

log = logging.getLogger(__name__)

_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
REBALANCE_TIMEOUT_MS = 60_000

Record: TypeAlias = "ConsumerRecord[bytes, bytes]"
Batch: TypeAlias = Mapping[TopicPartition, Sequence[Record]]
_T = TypeVar("_T")


class DbPositionedConsumer(ABC):
    """See the module contract. ``start()`` joins the group, ``close()`` leaves it."""

    def __init__(
        self,
        kafka: KafkaSettings,
        consumer: ConsumerSettings,
        *,
        topic: str,
        client_id: str,
    ) -> None:
        self._kafka = kafka
        self._topic = topic
        self._group = consumer.group_id
        self._client_id = client_id
        self._batch_max_records = consumer.batch_max_records
        self._batch_max_wait_ms = consumer.batch_max_wait_ms
        self._batch_linger_s = consumer.batch_linger_ms / 1000
        self._batch_max_bytes = consumer.batch_max_bytes
        self._consumer: AIOKafkaConsumer | None = None
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
        self.retries = 0
        self.assigned: list[str] = []

    # -- for subclasses -------------------------------------------------------------

    @abstractmethod
    async def process(self, batch: Batch) -> dict[TopicPartition, int]:
        """Process and commit ``batch``; the next offset per partition committed."""

    @abstractmethod
    async def load_positions(self, tps: set[TopicPartition]) -> dict[int, int]:
        """The next offset per partition stored in the database for this group.

        Called (under the lock) whenever ``tps`` are to be positioned: on
        assignment, and again after a failure; load per-partition state here.
        """

    async def maintain(self) -> None:  # noqa: B027 - optional hook
        """Periodic work between batches (default: nothing)."""

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:  # noqa: B027
        """Called under the lock once the batch in flight is done (optional)."""

    # -- lifecycle --------------------------------------------------------------------

    async def start(self) -> None:
        k = self._kafka
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap,
            client_id=self._client_id,
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

    async def close(self) -> None:
        # Leaving the group does not call on_partitions_revoked; nothing is in flight
        # here because run() has returned.
        if self._consumer is not None:
            consumer, self._consumer = self._consumer, None
            await consumer.stop()

    def stop(self) -> None:
        """Ask ``run()`` to return after the batch in flight."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume, process and commit batches until :meth:`stop`."""
        consumer = self._require(self._consumer)
        attempt = 0
        while not self._stopping.is_set():
            try:
                await self.maintain()
                async with self._lock:
                    await self._position(self._unpositioned)
                    generation = self._generation
                fetched = await consumer.getmany(
                    timeout_ms=self._batch_max_wait_ms,
                    max_records=self._batch_max_records,
                )
                if fetched and self._batch_linger_s > 0:
                    fetched = await self._linger(consumer, fetched)
                fetched = self._cap(consumer, fetched)
                async with self._lock:
                    if generation != self._generation:
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
                        committed = await self.process(batch)
                    except (StorageError, KafkaError):
                        self._rewind(batch)
                        raise
            except (StorageError, KafkaError) as exc:
                self.retries += 1
                delay = _BACKOFF_S[min(attempt, len(_BACKOFF_S) - 1)]
                attempt += 1
                log.warning("batch not committed (%s); retrying in %.1f s", exc, delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), delay)
                continue
            attempt = 0
            await self._commit_kafka(committed)

    async def caught_up(self) -> set[TopicPartition]:
        """The owned, positioned partitions with nothing left to consume: the
        position has reached the high watermark of the last fetch. Call with the
        lock held (from :meth:`maintain`, under ``self._lock``)."""
        consumer = self._require(self._consumer)
        done = set()
        for tp in self._owned - self._unpositioned:
            high = consumer.highwater(tp)
            if high is None:
                continue  # no fetch answered for it yet
            try:
                position = await consumer.position(tp)
            except IllegalStateError:  # no longer assigned
                continue
            if position >= high:
                done.add(tp)
        return done

    # -- internals ------------------------------------------------------------------

    async def _linger(
        self, consumer: AIOKafkaConsumer, first: Batch
    ) -> dict[TopicPartition, list[Record]]:
        """``first`` and what more comes within the linger, up to the batch size
        (see the module contract); each partition's records stay in order."""
        loop = asyncio.get_running_loop()
        merged = {tp: list(records) for tp, records in first.items()}
        count = sum(map(len, merged.values()))
        deadline = loop.time() + self._batch_linger_s
        while count < self._batch_max_records and not self._stopping.is_set():
            left_ms = (deadline - loop.time()) * 1000
            if left_ms < 1:
                break
            more = await consumer.getmany(
                timeout_ms=int(left_ms), max_records=self._batch_max_records - count
            )
            for tp, records in more.items():
                merged.setdefault(tp, []).extend(records)
                count += len(records)
        return merged

    def _cap(self, consumer: AIOKafkaConsumer, fetched: Batch) -> Batch:
        """``fetched`` within ``batch_max_bytes`` (:func:`cap_batch`); each
        partition cut short is sought back to its first record left out, which a
        later fetch brings again (see the module contract)."""
        kept, resume = cap_batch(fetched, self._batch_max_bytes)
        for tp, offset in resume.items():
            with contextlib.suppress(IllegalStateError):  # no longer assigned
                consumer.seek(tp, offset)
        return kept

    def _rewind(self, batch: Batch) -> None:
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
        stored = await self.load_positions(tps)
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
            self.assigned = _names(self._owned)
            await self.on_revoked(revoked)

    async def _on_assigned(self, assigned: set[TopicPartition]) -> None:
        async with self._lock:
            self._generation += 1
            self._owned = set(assigned)
            self._unpositioned = set(assigned)
            self.assigned = _names(self._owned)
            try:
                await self._position(set(assigned))
            except StorageError as exc:
                # run() retries before it processes anything of these partitions.
                log.warning("cannot read DB positions on assignment: %s", exc)

    @staticmethod
    def _require(value: _T | None) -> _T:
        if value is None:
            raise RuntimeError("not started (use it with async with)")
        return value


def _names(tps: set[TopicPartition]) -> list[str]:
    return [f"{tp.topic}/{tp.partition}" for tp in sorted(tps)]


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # untyped base
    """Delegates to the consumer; aiokafka awaits these during the rebalance."""

    def __init__(self, owner: DbPositionedConsumer) -> None:
        self._owner = owner

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._owner._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        await self._owner._on_assigned(set(assigned))


def cap_batch(
    fetched: Batch, max_bytes: int
) -> tuple[dict[TopicPartition, list[Record]], dict[TopicPartition, int]]:
    """The records of ``fetched`` that fit in ``max_bytes`` of values, and the
    offset each partition cut short resumes at.

    The budget is shared round robin, a record of each partition in turn, so a
    partition with a backlog (one busy enterprise) cannot fill every batch while
    the others wait. Each partition keeps a prefix of its records, in order; the
    batch's first record goes whatever its size."""
    taken = dict.fromkeys(fetched, 0)
    budget, any_taken, progress = max_bytes, False, True
    while progress:
        progress = False
        for tp, records in fetched.items():
            i = taken[tp]
            if i == len(records):
                continue
            size = len(records[i].value or b"")
            if size > budget and any_taken:
                continue  # this partition is full; a smaller record may still fit
            budget -= size
            taken[tp] = i + 1
            any_taken = progress = True
    kept = {tp: list(fetched[tp][:n]) for tp, n in taken.items() if n}
    resume = {
        tp: records[taken[tp]].offset
        for tp, records in fetched.items()
        if taken[tp] < len(records)
    }
    return kept, resume
