"""The live rule runner: telemetry through the rule core, exactly once in effect.

``async with RulesRunner(settings, pack_path) as runner: await runner.run()``.
Contracts (on top of :class:`stream.group.DbPositionedConsumer`):

- One :class:`~rules.engine.Engine` per assigned partition (telemetry is keyed by
  enterprise, so an enterprise's devices are all in one partition and in one engine).
  Each batch's alert events are written at once (each event once: its id is
  deterministic). Every ``rules.checkpoint_every_ms`` (and when a partition is
  revoked, and at a clean stop) the engines' snapshots are written with the next
  offset they cover, in the same transaction as that batch's events
  (:meth:`storage.AlertStore.write`). On assignment an engine is restored
  from its checkpoint and the partition sought to the checkpoint's offset: after a
  crash the records since the checkpoint are evaluated again, give the same events,
  and store nothing twice. A crash, or a partition moving to another runner,
  therefore neither misses nor repeats an event. (A snapshot of a partition with
  tens of stacks is hundreds of kB; writing one per batch would cost more than the
  evaluation itself.)
- If a write fails, every owned partition is re-positioned from its checkpoint
  (engine restored, offset sought) before anything else is processed.
- Events are produced to the alerts topic from the database (a transactional
  outbox): after each commit, and again on start and between batches for whatever
  was not yet acknowledged by Kafka. Delivery to the topic is at least once;
  consumers de-duplicate by ``event_id``. Records are keyed by enterprise (or park).
- Silence: between batches, each partition the runner has consumed to its end is
  judged by a silence watermark (:meth:`~rules.engine.Engine.idle`): the newest
  event time of the partition, moved on by the wall-clock time elapsed since its
  last record arrived, minus the pack's ``watermark_delay``. So a device silent for
  more than its ``max_silence`` is reported while it is still silent, even when
  its whole partition is, within ``max_silence + watermark_delay`` (and about a
  second) of its last reading's arrival; devices' clocks being off does not matter,
  only time elapsed here. Those events have the ids a later reading would have
  given them. A partition with a backlog is not judged by the clock: its records
  decide.
- Data marks: every ``rules.marks_poll_ms`` the runner reads the mark feed
  (:class:`storage.rule_marks.RuleMarkStore`: new marks, corrections,
  withdrawals, reviews since the engines' cursors) and gives each change to the
  engine of the partition its enterprise's records go to
  (:meth:`~rules.engine.Engine.apply_marks`; the cursor is part of the engine's
  snapshot, so it is checkpointed with the offsets and a restart neither misses
  nor repeats a change). Open windows simply judge with the marks; closed ones
  within ``allowed_lateness`` are revised by the engine; closed ones beyond it
  are re-judged from stored telemetry (:meth:`~rules.engine.Engine.rejudge`):
  ``revised`` events whose ids depend only on the rule version, the window, the
  stored data and the mark, so a repeat after a restart stores nothing twice. An
  engine that has never read the feed (fresh, or a new pack version) only learns
  the marks: it has judged no window they could revise.
- A record that does not decode is counted and skipped (the sink dead-letters it).
- The pack file is re-read every ``rules.reload_every_s``: a valid pack with a new
  version replaces the old one; the owned partitions continue from their current
  offsets with fresh engines (windows in progress start over; say so in the log).
  A changed file with the same version is refused (a version is what the alerts
  record), and an invalid file is logged and ignored; the old pack keeps running.
- Pack versions are recorded (:class:`storage.rule_packs.RulePackStore`, for
  replay "with the version in force at the time"): at start (a version recorded
  before with another content hash stops the start with a ConfigError) and before
  a switch (a new version whose recorded hash differs is refused like an invalid
  file; the old pack keeps running). The times recorded are this runner's clock.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Self

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.partitioner import DefaultPartitioner

from rules.engine import Engine
from rules.marks import Mark, MarkChange, MarkUpdate
from rules.model import AlertEvent, Obs
from rules.pack import Pack, load_pack
from smartpark.clock import MsClock, system_ms
from smartpark.errors import ConfigError, PayloadError, StorageError
from smartpark.settings import Settings
from storage import AlertEventRow, RuleState, Storage
from storage.rule_marks import MarkCursor, RuleMarkRow, RuleMarkStore
from storage.rule_packs import PackConflict, RulePackStore
from stream.group import Batch, DbPositionedConsumer
from stream.kafka import ensure_topics, make_producer
from stream.records import decode_record

log = logging.getLogger(__name__)

# How often the runner looks for alert events others stored unproduced (an
# acknowledgement through the API): their webhooks wait at most this long more.
_UNPRODUCED_POLL_MS = 1000

# The mark feed re-reads marks this recent (their ids may commit out of order).
_MARKS_RECHECK_S = 60.0
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class RunnerStats:
    records: int = 0
    readings: int = 0
    bad_records: int = 0
    events: int = 0  # new events stored
    produced: int = 0
    batches: int = 0
    pack: str = ""
    pack_version: str = ""
    reloads: int = 0
    checkpoints: int = 0
    dropped_late: int = 0
    silence_events: int = 0  # offline events raised by the clock, while silent
    mark_polls: int = 0
    mark_updates: int = 0  # mark rows read from the feed (repeats included)
    mark_events: int = 0  # revisions caused by marks, new or not


class RulesRunner(DbPositionedConsumer):
    def __init__(
        self, settings: Settings, pack_path: Path, *, clock: MsClock = system_ms
    ) -> None:
        super().__init__(
            settings.kafka,
            settings.rules,
            topic=settings.kafka.telemetry_topic,
            client_id=f"{settings.kafka.client_id}-rules",
        )
        self._settings = settings
        self._clock = clock
        self._pack_path = pack_path
        self._pack, self._pack_digest, self._pack_text = _read_pack(pack_path)
        # A valid new version read from the file, recorded before it replaces.
        self._pending: tuple[Pack, str, str] | None = None
        self._checked_ms = clock()
        self._storage = Storage(settings.database, clock=clock)
        self._producer: AIOKafkaProducer | None = None
        self._engines: dict[int, Engine] = {}
        # When the newest record of each partition was processed (this clock).
        self._seen_ms: dict[int, int] = {}
        # Next offset per partition processed since its last checkpoint.
        self._next: dict[int, int] = {}
        self._checkpoint_ms = clock()
        self._every_ms = settings.rules.checkpoint_every_ms
        self._mark_feed = RuleMarkStore(self._storage)
        self._pack_store = RulePackStore(self._storage)
        self._marks_polled_ms: int | None = None
        # The next offset each partition's engine state covers (for a checkpoint
        # of a state that moved by marks alone).
        self._offsets: dict[int, int] = {}
        # Marks re-judged from storage in this process, and as what (active).
        self._rejudged: dict[int, bool] = {}
        # Whether the database may hold events not produced yet (see
        # _produce_pending): at the start, another runner's may be there.
        self._maybe_unproduced = True
        self._unproduced_polled_ms = 0
        self.stats = RunnerStats(pack=self._pack.pack, pack_version=self._pack.version)

    @property
    def storage(self) -> Storage:
        return self._storage

    @property
    def pack(self) -> Pack:
        return self._pack

    async def __aenter__(self) -> Self:
        await self._storage.open()
        try:
            await self._storage.require_migrated()
            await self._record_pack(self._pack, self._pack_digest, self._pack_text)
            await ensure_topics(self._settings.kafka)
            self._producer = make_producer(
                self._settings.kafka,
                client_id=f"{self._settings.kafka.client_id}-rules",
            )
            await self._producer.start()
            await self._produce_pending()
            await self.start()
        except BaseException:
            await self._close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _close(self) -> None:
        if self._consumer is not None:  # a clean stop: nothing to replay next time
            await self._checkpoint(set(self._next))
        await self.close()
        if self._producer is not None:
            await self._producer.stop()
        await self._storage.close()

    # -- DbPositionedConsumer ---------------------------------------------------------

    async def load_positions(self, tps: set[TopicPartition]) -> dict[int, int]:
        for tp in tps:  # whatever ran since the checkpoint is evaluated again
            self._next.pop(tp.partition, None)
            self._offsets.pop(tp.partition, None)
            self._seen_ms[tp.partition] = self._clock()
        stored = {
            s.partition: s
            for s in await self._storage.alerts.states(self._group, self._topic)
        }
        pack = self._pack
        for tp in tps:
            state = stored.get(tp.partition)
            if state is not None:
                self._offsets[tp.partition] = state.next_offset
            if state is None:
                self._engines[tp.partition] = Engine(pack)
            elif (state.pack, state.pack_version) == (pack.pack, pack.version):
                self._engines[tp.partition] = Engine.restore(pack, state.snapshot)
            else:
                log.warning(
                    "partition %d was evaluated with %s %s; %s %s starts fresh at"
                    " offset %d (windows in progress start over)",
                    tp.partition, state.pack, state.pack_version,
                    pack.pack, pack.version, state.next_offset,
                )  # fmt: skip
                self._engines[tp.partition] = Engine(pack)
        return {p: s.next_offset for p, s in stored.items()}

    async def on_revoked(self, revoked: set[TopicPartition]) -> None:
        # Checkpoint what leaves, so the next owner replays as little as possible.
        await self._checkpoint({tp.partition for tp in revoked})
        for tp in revoked:
            self._engines.pop(tp.partition, None)
            self._next.pop(tp.partition, None)
            self._offsets.pop(tp.partition, None)
            self._seen_ms.pop(tp.partition, None)

    def _states(self, partitions: set[int]) -> list[RuleState]:
        """Checkpoints of the engines that moved since their last one."""
        pack = self._pack
        return [
            RuleState(
                self._group, self._topic, p, pack.pack, pack.version, self._next[p],
                self._engines[p].snapshot(),
            )
            for p in sorted(partitions & set(self._next))
            if p in self._engines
        ]  # fmt: skip

    async def _checkpoint(self, partitions: set[int]) -> None:
        """Write checkpoints now; a failure only means more replay for the next one."""
        states = self._states(partitions)
        if not states:
            return
        try:
            await self._storage.alerts.write([], states)
        except StorageError as exc:
            log.warning("checkpoint of partitions %s not written: %s", partitions, exc)
            return
        self.stats.checkpoints += 1
        for state in states:
            self._next.pop(state.partition, None)

    async def maintain(self) -> None:
        now = self._clock()
        if now - self._checked_ms >= self._settings.rules.reload_every_s * 1000:
            self._checked_ms = now
            self._maybe_reload()
        await self._switch_pending()  # also retries a record the database failed
        async with self._lock:
            await self._judge_silence(now)
        polled = self._marks_polled_ms
        if polled is None or now - polled >= self._settings.rules.marks_poll_ms:
            self._marks_polled_ms = now
            async with self._lock:
                await self._poll_marks()
        if self._next and now - self._checkpoint_ms >= self._every_ms:
            # idle since the last batch: checkpoint what moved, under the lock a
            # revocation takes too
            async with self._lock:
                await self._checkpoint(set(self._next))
            self._checkpoint_ms = now
        await self._produce_pending()

    async def _judge_silence(self, now_ms: int) -> None:
        """Offline events of silent devices, for the partitions consumed to their
        end; stored now (their ids are deterministic, a crash only repeats them)."""
        events: list[AlertEvent] = []
        for tp in sorted(await self.caught_up()):
            engine = self._engines.get(tp.partition)
            if engine is None or engine.newest_ms is None:
                continue
            elapsed = now_ms - self._seen_ms.get(tp.partition, now_ms)
            events += engine.idle(
                engine.newest_ms + max(elapsed, 0) - self._pack.watermark_delay
            )
        if events:
            pack = self._pack
            try:
                self.stats.events += await self._write(
                    [event_row(pack, e) for e in events], []
                )
            except StorageError:
                # The engines moved past events that are not stored: back to the
                # checkpoints, which replay and judge the silence again.
                self._unpositioned |= self._owned
                raise
            self.stats.silence_events += len(events)

    async def _poll_marks(self) -> None:
        """Read the mark feed since the engines' cursors and apply it (see the
        module contract); the events are stored now (deterministic ids)."""
        positioned = {tp.partition for tp in self._owned - self._unpositioned}
        engines = {p: e for p, e in sorted(self._engines.items()) if p in positioned}
        if not engines:
            return
        # Engines read the feed from their own cursor: a fresh engine (from 0)
        # must not make the others take old marks for new ones.
        groups: dict[tuple[int, int], list[int]] = {}
        for p, engine in engines.items():
            at = engine.mark_cursor or [0, 0]
            groups.setdefault((at[0], at[1]), []).append(p)
        partitions = self._partitions()
        events: list[AlertEvent] = []
        for (mark_id, review_id), members in sorted(groups.items()):
            feed = await self._mark_feed.changes(
                MarkCursor(mark_id, review_id), recheck_s=_MARKS_RECHECK_S
            )
            self.stats.mark_polls += 1
            self.stats.mark_updates += len(feed.rows)
            cursor = [feed.cursor.mark_id, feed.cursor.review_id]
            routed: dict[int, list[MarkUpdate]] = {}
            for row in feed.rows:
                partition = _partition_of(row.enterprise, partitions)
                update = MarkUpdate(_mark(row), row.active)
                routed.setdefault(partition, []).append(update)
            for p in members:
                engine = engines[p]
                before = engine.mark_cursor
                updates = routed.get(p, [])
                if before == cursor and not updates:
                    continue
                found = engine.apply_marks(updates, cursor=cursor)
                if before is not None:
                    found += await self._rejudge(
                        engine, updates, known_mark_id=before[0]
                    )
                events += found
                if (before != cursor or found) and p in self._offsets:
                    self._next.setdefault(p, self._offsets[p])  # checkpoint it
        if events:
            try:
                self.stats.events += await self._write(
                    [event_row(self._pack, e) for e in events], []
                )
            except StorageError:
                self._unpositioned |= self._owned  # back to the checkpoints
                raise
            self.stats.mark_events += len(events)

    async def _rejudge(
        self, engine: Engine, updates: Sequence[MarkUpdate], *, known_mark_id: int
    ) -> list[AlertEvent]:
        """Revisions of the windows beyond ``allowed_lateness`` that the updates
        change, from stored telemetry. A mark lifted that this engine never read
        as a mark (its id is past the engine's cursor: rejected or withdrawn
        before it was read) revises nothing."""
        events: list[AlertEvent] = []
        store = self._mark_feed
        for update in updates:
            mark = update.mark
            if self._rejudged.get(mark.id) == update.active:
                continue
            if not update.active and mark.id > known_mark_id:
                continue
            self._rejudged[mark.id] = update.active
            change = MarkChange(mark, "applied" if update.active else "lifted")
            windows = engine.forgotten_windows(mark)
            if not windows:
                continue
            # One read of the marks and one of the readings per rule's series over
            # the windows' whole span, sliced per window below: a month-long mark
            # covers hundreds of hourly windows, and the runner holds its lock.
            span_start = _at(min(w.window.start_ms for w in windows))
            span_end = _at(max(w.window.end_ms for w in windows))
            rows_in_force = await store.in_force(
                park=mark.park, enterprise=mark.enterprise, device=mark.device,
                start=span_start, end=span_end,
            )  # fmt: skip
            in_force = [_mark(r) for r in rows_in_force]
            stored: dict[tuple[frozenset[str], str], tuple[list[Obs], list[int]]] = {}
            for window in windows:
                key = (window.metrics, window.series)
                if key not in stored:
                    rows = await store.readings(
                        park=mark.park, enterprise=mark.enterprise,
                        device=mark.device, metrics=sorted(window.metrics),
                        data_type=window.series, start=span_start, end=span_end,
                    )  # fmt: skip
                    series = [
                        Obs(
                            _ms(r.time), mark.park, mark.enterprise, mark.device,
                            r.metric, r.value, r.quality, r.seq, r.reset,
                            window.series,
                        )
                        for r in rows
                    ]  # fmt: skip
                    stored[key] = (series, [o.ts_ms for o in series])
                series, times = stored[key]
                w = window.window
                readings = series[
                    bisect_left(times, w.start_ms) : bisect_left(times, w.end_ms)
                ]
                marks = [
                    m
                    for m in in_force
                    if m.start_ms < w.end_ms and m.end_ms > w.start_ms
                ]
                events += engine.rejudge(change, window, readings, marks)
        return events

    def _partitions(self) -> list[int]:
        consumer = self._consumer
        known = None if consumer is None else consumer.partitions_for_topic(self._topic)
        if not known:
            return list(range(self._settings.kafka.partitions))
        return sorted(known)

    async def process(self, batch: Batch) -> dict[TopicPartition, int]:
        try:
            return await self._process(batch)
        except BaseException:
            # The engines may be ahead of what is stored: back to the checkpoints.
            self._unpositioned |= self._owned
            raise

    async def _process(self, batch: Batch) -> dict[TopicPartition, int]:
        now_ms = self._clock()
        events: list[AlertEvent] = []
        states: list[RuleState] = []
        next_offsets: dict[TopicPartition, int] = {}
        pack = self._pack
        for tp, records in batch.items():
            engine = self._engines[tp.partition]
            for rec in records:
                self.stats.records += 1
                try:
                    decoded = decode_record(rec.value or b"", now_ms=now_ms)
                except PayloadError as exc:
                    self.stats.bad_records += 1
                    log.warning(
                        "kafka:%s/%d/%d skipped: %s",
                        tp.topic, tp.partition, rec.offset, exc,
                    )  # fmt: skip
                    continue
                for b in decoded.batches:
                    for r in b.readings:
                        self.stats.readings += 1
                        events += engine.feed(
                            Obs(
                                r.ts_ms, b.park, b.enterprise, b.device,
                                r.metric, r.value, r.quality, r.seq, r.reset,
                                r.data_type, r.stat,
                            )
                        )  # fmt: skip
            next_offsets[tp] = records[-1].offset + 1
            self._next[tp.partition] = next_offsets[tp]
            self._offsets[tp.partition] = next_offsets[tp]
            self._seen_ms[tp.partition] = now_ms
        if now_ms - self._checkpoint_ms >= self._every_ms:
            states = self._states(set(self._next))
        self.stats.events += await self._write(
            [event_row(pack, e) for e in events], states
        )
        if states:
            self._checkpoint_ms = now_ms
            self.stats.checkpoints += 1
            for state in states:
                self._next.pop(state.partition, None)
        self.stats.batches += 1
        self.stats.dropped_late = sum(
            e.stats.dropped_late for e in self._engines.values()
        )
        await self._produce_pending()
        return next_offsets

    # -- alerts topic -------------------------------------------------------------

    async def _write(
        self, events: Sequence[AlertEventRow], states: Sequence[RuleState]
    ) -> int:
        """Store events and checkpoints; events stored are to be produced (an
        event stored before, met again, may be unproduced too)."""
        self._maybe_unproduced |= bool(events)
        return await self._storage.alerts.write(events, states)

    async def _produce_pending(self) -> None:
        """Produce what the database holds unproduced; a Kafka failure waits.

        The database is asked at once while this runner may have left something
        unproduced (from the start, after a batch stored events, after a failure),
        and otherwise at most every :data:`_UNPRODUCED_POLL_MS`, for the events
        others store (an acknowledgement through the API): asked after every
        batch, the query was a seventh of the runner's work at the city load."""
        now = self._clock()
        if (
            not self._maybe_unproduced
            and now - self._unproduced_polled_ms < _UNPRODUCED_POLL_MS
        ):
            return
        self._unproduced_polled_ms = now
        producer = self._require(self._producer)
        topic = self._settings.kafka.alerts_topic
        while pending := await self._storage.alerts.unproduced(1000):
            try:
                futures = [
                    await producer.send(
                        topic, orjson.dumps(e.body), key=_key(e.body).encode()
                    )
                    for e in pending
                ]
                await asyncio.gather(*futures)
            except KafkaError as exc:
                log.warning("alert events not produced yet (%s); will retry", exc)
                return
            await self._storage.alerts.mark_produced([e.event_id for e in pending])
            self.stats.produced += len(pending)
        self._maybe_unproduced = False

    # -- pack reload --------------------------------------------------------------

    def _maybe_reload(self) -> None:
        try:
            data = self._pack_path.read_bytes()
        except OSError as exc:
            problem = f"unreadable: {exc.strerror}"
        else:
            digest = hashlib.sha256(data).hexdigest()
            if digest == self._pack_digest:
                return
            self._pack_digest = digest
            try:
                pack = load_pack(self._pack_path)
            except ConfigError as exc:
                problem = f"changed but invalid: {exc}"
            else:
                self._pending = (pack, digest, data.decode("utf-8", "replace"))
                return
        log.error(
            "pack %s %s; keeping %s", self._pack_path, problem, self._pack.version
        )

    async def _record_pack(self, pack: Pack, digest: str, text: str) -> None:
        await self._pack_store.record(
            pack=pack.pack, version=pack.version, sha256=digest, content=text,
            at=_at(self._clock()),
        )  # fmt: skip

    async def _switch_pending(self) -> None:
        """Record the version read from the file, then run it (module contract)."""
        if self._pending is None:
            return
        pack, digest, text = self._pending
        conflict = None
        if (pack.pack, pack.version) != (self._pack.pack, self._pack.version):
            try:
                await self._record_pack(pack, digest, text)
            except PackConflict as exc:
                conflict = exc
        self._pending = None
        if conflict is not None:
            log.error("pack %s refused: %s; keeping %s", self._pack_path, conflict,
                      self._pack.version)  # fmt: skip
            return
        self._replace(pack)
        if self._pack is pack:  # not refused as the same version
            self._pack_text = text

    def _replace(self, pack: Pack) -> None:
        if (pack.pack, pack.version) == (self._pack.pack, self._pack.version):
            log.error(
                "pack %s changed without a new version: ignored (alerts record the"
                " version; give the change one)",
                pack.pack,
            )
            return
        log.warning(
            "pack %s %s replaces %s %s; partitions %s continue from their offsets"
            " with fresh state",
            pack.pack, pack.version, self._pack.pack, self._pack.version,
            sorted(self._engines),
        )  # fmt: skip
        self._pack = pack
        self._engines = {p: Engine(pack) for p in self._engines}
        self._checkpoint_ms = -(2**62)  # checkpoint the new version with the next batch
        self.stats.pack, self.stats.pack_version = pack.pack, pack.version
        self.stats.reloads += 1


def _read_pack(path: Path) -> tuple[Pack, str, str]:
    data = path.read_bytes()
    return (
        load_pack(path), hashlib.sha256(data).hexdigest(),
        data.decode("utf-8", "replace"),
    )  # fmt: skip


def _partition_of(enterprise: str, partitions: list[int]) -> int:
    """The telemetry partition of ``enterprise``: records are keyed by it and
    produced with the default (murmur2) partitioner."""
    return int(DefaultPartitioner()(enterprise.encode(), partitions, partitions))


def _ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def _at(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _mark(row: RuleMarkRow) -> Mark:
    return Mark(
        row.id, row.park, row.enterprise, row.device, row.metric,
        _ms(row.start_at), _ms(row.end_at), row.kind,
    )  # fmt: skip


def _key(body: dict[str, object]) -> str:
    scope = body.get("scope")
    if isinstance(scope, dict):
        return str(scope.get("enterprise") or scope.get("park") or "")
    return ""


def event_row(pack: Pack, e: AlertEvent) -> AlertEventRow:
    s = e.scope
    return AlertEventRow(
        e.event_id, e.alert_id, e.kind.value, pack.pack, e.rule_id, e.rule_version,
        e.severity, s.park, s.enterprise, s.device, s.metric, e.at_ms, e.to_json(),
    )  # fmt: skip
