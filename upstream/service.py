"""The upstream service: telemetry → durable per-upstream outbox → regulator platforms.

``async with UpstreamService(settings, config) as s: await s.run()``. Two halves:

- **Feed** (:class:`Feed`, a :class:`~stream.group.DbPositionedConsumer` on the
  telemetry topic, group ``upstream.group_id``): each batch's readings of the
  configured outlets' devices become packet fields per (upstream, outlet, CN,
  DataTime) (:func:`upstream.packets.collect`), written into ``upstream_outbox``
  with the batch's offsets in one transaction
  (:meth:`~storage.upstream.UpstreamStore.enqueue`): a restart reads the batch
  again and queues nothing twice; a record read twice (a bridge retry) queues
  its values once. A record that does not decode is logged with its place,
  counted (``bad_records``) and skipped, never blocking the partition. Readings
  of a configured device that the outlet does not forward (metric unmapped,
  series not listed) are counted in ``skipped``.
- **Links** (:class:`~upstream.link.Link`, one per upstream): send the outbox in
  order and answer the platform's requests, under a PostgreSQL advisory lock so
  that one process sends at a time (a second service queues and waits to take
  over).

Readings of one DataTime split across Kafka records (two devices of one outlet,
a logger's packet split by the edge) end up in one packet while that packet has
not been sent yet (the later values join its outbox row); once it has been sent,
the later values go in a second packet with the same MN, CN and DataTime,
holding only the new fields. The regulator keys data by MN, CN, DataTime and
pollutant code, so it holds every value once either way (unverified against a
real platform: HJ 212 does not say how a platform merges two packets of one
DataTime).

On its first start the feed reads the topic from its beginning (as far as Kafka
retains it). A new upstream or outlet added to the file later receives what the
group reads from then on, not the topic's history: the group's positions are
shared. The feed's counters may count a batch twice when its transaction is
retried (they are log figures; the outbox itself is exact).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

from aiokafka import TopicPartition

from smartpark.clock import MsClock, system_ms
from smartpark.errors import PayloadError, StorageError
from smartpark.settings import Settings
from smartpark.tenancy import Role, Scope
from smartpark.wire import TelemetryBatch
from storage import KafkaOffset, Storage
from storage.locks import SessionLock
from storage.queries import Filters
from storage.upstream import NewPacket, UpstreamStore
from stream.group import Batch, DbPositionedConsumer
from stream.kafka import ensure_topics
from stream.records import decode_record
from upstream import packets as pk
from upstream.config import OutletConfig, UpstreamFile
from upstream.link import Link, LinkStats, mapping_of

log = logging.getLogger(__name__)


@dataclass
class FeedStats:
    records: int = 0
    bad_records: int = 0
    readings: int = 0  # of configured devices
    skipped: int = 0
    rows_new: int = 0
    rows_merged: int = 0
    duplicates: int = 0
    conflicts: int = 0


@dataclass
class UpstreamStats:
    feed: FeedStats = field(default_factory=FeedStats)
    sending: bool = False
    links: dict[str, LinkStats] = field(default_factory=dict)


_Key = tuple[str, str, str, str, str]  # upstream, outlet, MN, CN, DataTime


class Feed(DbPositionedConsumer):
    """The queueing half (see the module doc)."""

    def __init__(
        self,
        settings: Settings,
        config: UpstreamFile,
        storage: Storage,
        store: UpstreamStore,
        *,
        on_queued: Callable[[set[str]], None],
        clock: MsClock = system_ms,
        stats: FeedStats | None = None,
    ) -> None:
        super().__init__(
            settings.kafka,
            settings.upstream,
            topic=settings.kafka.telemetry_topic,
            client_id=f"{settings.kafka.client_id}-upstream",
        )
        self._storage = storage
        self._store = store
        self._on_queued = on_queued
        self._clock = clock
        self.stats = stats or FeedStats()
        # device → the (upstream, outlet) pairs it feeds
        self._by_device: dict[str, list[tuple[str, OutletConfig, pk.Mapping212]]] = {}
        for u in config.upstreams:
            for o in u.outlets:
                for d in o.devices:
                    self._by_device.setdefault(d, []).append((u.name, o, mapping_of(o)))

    async def load_positions(self, tps: set[TopicPartition]) -> dict[int, int]:
        return await self._storage.offsets.load(self._group, self._topic)

    async def process(self, batch: Batch) -> dict[TopicPartition, int]:
        now_ms = self._clock()
        queued: dict[_Key, pk.Fields] = {}
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for rec in records:
                self.stats.records += 1
                self._add(rec.value or b"", now_ms, queued, where=(tp, rec.offset))
            offsets[tp] = records[-1].offset + 1
        result = await self._store.enqueue(
            [
                NewPacket(u, o, mn, cn, dt, f)
                for (u, o, mn, cn, dt), f in queued.items()
            ],
            [
                KafkaOffset(self._group, tp.topic, tp.partition, off)
                for tp, off in offsets.items()
            ],
            decide=self._decide,
        )
        self.stats.rows_new += result.inserted
        self.stats.rows_merged += result.merged
        if result.inserted or result.merged:
            self._on_queued({k[0] for k in queued})
        return offsets

    def _add(
        self,
        value: bytes,
        now_ms: int,
        queued: dict[_Key, pk.Fields],
        *,
        where: tuple[TopicPartition, int],
    ) -> None:
        try:
            decoded = decode_record(value, now_ms=now_ms)
        except PayloadError as exc:
            self.stats.bad_records += 1
            tp, offset = where
            log.warning(
                "kafka:%s/%d/%d skipped: %s", tp.topic, tp.partition, offset, exc
            )
            return
        for tb in decoded.batches:  # one a device (several in a gateway's record)
            self._add_batch(tb, queued)

    def _add_batch(self, tb: TelemetryBatch, queued: dict[_Key, pk.Fields]) -> None:
        targets = self._by_device.get(tb.device, [])
        values = [
            pk.Value(tb.device, r.metric, r.data_type, r.stat, r.ts_ms, r.value,
                     r.quality)
            for r in tb.readings
        ] if targets else []  # fmt: skip
        for upstream, outlet, mapping in targets:
            if (outlet.park, outlet.enterprise) != (tb.park, tb.enterprise):
                continue
            self.stats.readings += len(values)
            got = pk.collect(values, mapping)
            self.stats.skipped += got.skipped
            for (cn, dt), fields in got.packets.items():
                key = (upstream, outlet.outlet, outlet.mn, cn, dt)
                prior = queued.get(key)
                queued[key] = (
                    fields
                    if prior is None
                    else pk.merge(prior, self._decide([prior], fields))
                )

    def _decide(self, queued: Sequence[pk.Fields], incoming: pk.Fields) -> pk.Fields:
        split = pk.split_new(queued, incoming)
        self.stats.duplicates += split.duplicates
        if split.conflicts:
            self.stats.conflicts += len(split.conflicts)
            log.warning(
                "upstream: a value differs from the one already queued for its"
                " DataTime, the first one is kept: %s",
                "; ".join(split.conflicts[:5]),
            )
        return split.new


class StoredHistory:
    """:class:`~upstream.link.History` over the stored series (every tenant: the
    upstream service acts for the regulator)."""

    def __init__(self, storage: Storage, *, chunk: int = 5000) -> None:
        self._storage = storage
        self._chunk = chunk

    async def values(
        self, outlet: OutletConfig, data_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[Sequence[pk.Value]]:
        filters = Filters(
            park=outlet.park, enterprise=outlet.enterprise, data_type=data_type,
            stat=None, devices=tuple(outlet.devices),
        )  # fmt: skip
        async for rows in self._storage.queries.stream_readings(
            Scope(Role.REGULATOR), filters, start=start, end=end, chunk=self._chunk
        ):
            yield [
                pk.Value(r.device, r.metric, r.data_type, r.stat,
                         int(r.time.timestamp() * 1000), r.value, r.quality)
                for r in rows
            ]  # fmt: skip


class UpstreamService:
    """The feed and the links of every configured upstream (module doc)."""

    def __init__(
        self, settings: Settings, config: UpstreamFile, *, clock: MsClock = system_ms
    ) -> None:
        cfg = settings.upstream
        self._settings = settings
        self._cfg = cfg
        # The feed's transaction, and per upstream its sender and one history
        # answer streaming from a server-side cursor.
        self._storage = Storage(
            settings.database, pool_size=2 + 2 * len(config.upstreams), clock=clock,
            application_name="smartpark-upstream",
        )  # fmt: skip
        self.store = UpstreamStore(self._storage)
        self.stats = UpstreamStats()
        history = StoredHistory(self._storage)
        self.links = {
            u.name: Link(
                u, self.store, history, poll_s=cfg.poll_ms / 1000,
                connect_timeout_s=cfg.connect_timeout_s, backoff_s=cfg.backoff_s,
                clock=clock,
            )
            for u in config.upstreams
        }  # fmt: skip
        self.stats.links = {name: link.stats for name, link in self.links.items()}
        self.feed = Feed(
            settings, config, self._storage, self.store,
            on_queued=self._wake, clock=clock, stats=self.stats.feed,
        )  # fmt: skip
        self._lock = SessionLock(
            settings.database,
            "smartpark-upstream",
            application_name="smartpark-upstream-lock",
        )
        self._exit = contextlib.AsyncExitStack()
        self._stopping = asyncio.Event()

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            await self._storage.open()
            stack.push_async_callback(self._storage.close)
            await self._storage.require_migrated()
            await ensure_topics(self._settings.kafka)
            stack.push_async_callback(self._lock.release)
            stack.push_async_callback(self.feed.close)
            await self.feed.start()
            self._exit = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    def _wake(self, upstreams: set[str]) -> None:
        for name in upstreams:
            link = self.links.get(name)
            if link is not None:
                link.wake()

    def stop(self) -> None:
        """Ask :meth:`run` to return: the feed after its batch, the links now."""
        self._stopping.set()
        self.feed.stop()
        for link in self.links.values():
            link.stop()

    async def run(self) -> None:
        """Queue and send until :meth:`stop`."""
        feed = asyncio.create_task(self.feed.run(), name="upstream feed")
        sending = asyncio.create_task(self._send(), name="upstream links")
        try:
            await feed
        finally:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending

    async def _send(self) -> None:
        """Run the links while this process holds the sending lock."""
        tasks: list[asyncio.Task[None]] = []
        try:
            while not self._stopping.is_set():
                try:
                    held = await self._lock.hold()
                except StorageError as exc:
                    log.warning("upstream: cannot check the sending lock: %s", exc)
                    held = False
                if held and not tasks:
                    log.info("upstream: sending (holding the upstream lock)")
                    tasks = [self._start(link) for link in self.links.values()]
                elif held:
                    tasks = [self._restarted(t) for t in tasks]
                elif not held and tasks:
                    log.warning("upstream: lost the sending lock; sending paused")
                    await _cancel(tasks)
                    tasks = []
                self.stats.sending = bool(tasks)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), self._cfg.lock_retry_s
                    )
        finally:
            await _cancel(tasks)
            self.stats.sending = False

    def _start(self, link: Link) -> asyncio.Task[None]:
        return asyncio.create_task(link.run(), name=f"upstream {link.name}")

    def _restarted(self, task: asyncio.Task[None]) -> asyncio.Task[None]:
        """``task``, or a new run of its link if it ended on a bug (logged)."""
        if not task.done() or self._stopping.is_set():
            return task
        exc = None if task.cancelled() else task.exception()
        log.error("upstream link %s ended (%r); restarting it", task.get_name(), exc)
        return self._start(self.links[task.get_name().removeprefix("upstream ")])


async def _cancel(tasks: Sequence[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("upstream link failed: %r", result)
