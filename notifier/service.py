"""The notifier: alert events from the alerts topic to enterprise webhooks.

``async with Notifier(settings) as n: await n.run()``. Two halves:

- **Queueing** (a :class:`~stream.group.DbPositionedConsumer` on the alerts topic):
  each batch's events become one delivery per matching enabled subscription
  (:mod:`notifier.events`) made before the record reached the topic (a new
  subscription does not receive the topic's history), written with the topic
  offsets in one transaction (:meth:`~storage.webhooks.WebhookStore.enqueue`):
  after a crash the batch is read again and queues nothing twice. A record that
  is not an alert event is logged with its place and counted, and never blocks
  the partition.
- **Delivering** (a dispatcher task): every ``poll_ms``, or at once when something
  was queued, each enabled subscription with a due delivery gets a worker, up to
  ``max_endpoints`` at a time. A worker sends its endpoint's due deliveries one at a
  time (:meth:`~storage.webhooks.WebhookStore.next_due`: the events of one
  alert in order), records each attempt with its outcome
  (:mod:`notifier.retry`) and stops when nothing is due. So a slow or dead
  endpoint occupies its own worker only, and memory holds at most one delivery per
  worker.

Several notifiers deliver at once, each to its own endpoints. Endpoints are split
into ``notifier.slots`` slots by a hash of the subscription id, and the live
notifiers share the slots through PostgreSQL advisory locks
(:class:`storage.shares.SlotShares`: each holds about ``slots / notifiers`` of them,
on a connection of its own, which the server closes with the process). A notifier
delivers only the endpoints of the slots it holds, so an endpoint is delivered by
one notifier, one delivery at a time, and the events of one alert reach it in order.
When a notifier joins, the others give slots back, each once its workers on it have
finished the attempt in flight; when one dies, its slots are free as soon as the
server ends its session (at once for a killed process; for a vanished host, when the
server's TCP keepalive gives up) and the others take them at their next poll. A
notifier killed mid-delivery has recorded nothing for that attempt, so the delivery
is sent again, with the same ``webhook-id``, before anything after it for that
alert: delivery is at least once, and receivers de-duplicate by that id. Queueing is
shared the Kafka way: the notifiers are one consumer group on the alerts topic, and
a delivery is queued once whichever of them reads its event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Self

import orjson
from aiokafka import TopicPartition

from notifier import events
from notifier.http import AttemptResult, Sender
from notifier.retry import (
    DEFAULT_SCHEDULE,
    Outcome,
    UniformRandom,
    classify,
    next_attempt,
)
from smartpark.clock import MsClock, system_ms
from smartpark.errors import StorageError
from smartpark.settings import Settings
from storage import (
    AttemptRecord,
    DueDelivery,
    KafkaOffset,
    NewDelivery,
    Storage,
    Subscription,
    WebhookStore,
)
from storage.secretbox import SecretBox
from storage.shares import SlotShares
from stream.group import Batch, DbPositionedConsumer
from stream.kafka import ensure_topics

log = logging.getLogger(__name__)

_PAUSED_LOG_EVERY_S = 30.0


@dataclass
class NotifierStats:
    records: int = 0
    bad_records: int = 0
    queued: int = 0  # new deliveries
    attempts: int = 0
    delivered: int = 0
    retries: int = 0
    failed: int = 0
    disabled: int = 0
    leader: bool = False  # delivering for at least one slot
    slots: int = 0  # slots whose endpoints this notifier delivers
    notifiers: int = 0  # live notifiers sharing the slots, as last counted
    outcomes: dict[str, int] = field(default_factory=dict)


class Deliverer:
    """One attempt of a delivery: sign, send, classify, record (the log and the
    delivery's next state in one transaction)."""

    def __init__(
        self,
        store: WebhookStore,
        sender: Sender,
        *,
        schedule: Sequence[int] = DEFAULT_SCHEDULE,
        rng: UniformRandom | None = None,
        clock: MsClock = system_ms,
        stats: NotifierStats | None = None,
    ) -> None:
        self._store = store
        self._sender = sender
        self._schedule = tuple(schedule)
        self._rng: UniformRandom = rng or random.Random()  # noqa: S311 - jitter only
        self._clock = clock
        self.stats = stats or NotifierStats()

    async def attempt(self, due: DueDelivery, *, last: bool = False) -> bool:
        """Send ``due`` once and record the outcome; False if the endpoint is now
        disabled. With ``last`` an undelivered attempt is final (a ping)."""
        secrets = await self._store.signing_secrets(due.subscription_id, self._clock())
        if not secrets:
            raise StorageError(f"subscription {due.subscription_id} has no secret")
        result = await self._sender.send(
            due.url, msg_id=due.event_id, body=due.body.encode(), secrets=secrets
        )
        outcome = classify(
            result.status, result.error_kind, retry_after_s=result.retry_after_s
        )
        status, next_ms, disable = self._next(due, result, outcome)
        if last and status == "pending":
            status, next_ms = "failed", None
        await self._store.record_attempt(
            AttemptRecord(
                due.delivery_id, due.attempts + 1, result.started_ms,
                result.latency_ms, result.status, result.error, outcome.value,
                result.address,
            ),
            status=status,
            next_attempt_ms=next_ms,
            disable_reason=disable,
            subscription_id=due.subscription_id,
        )  # fmt: skip
        self._count(outcome, status)
        if status == "failed" or disable:
            log.warning(
                "webhook %s (%s) to %s: %s",
                due.delivery_id, due.event_type, due.subscription_id,
                disable or f"failed after {due.attempts + 1} attempts: {result.error}",
            )  # fmt: skip
        return disable is None

    def _next(
        self, due: DueDelivery, result: AttemptResult, outcome: Outcome
    ) -> tuple[str, int | None, str | None]:
        """(delivery status, next attempt ms, reason to disable the endpoint)."""
        if outcome is Outcome.DELIVERED:
            return "delivered", None, None
        if outcome is Outcome.DISABLE_ENDPOINT:
            # The delivery stays queued: it goes out if the endpoint is enabled again.
            return "pending", self._clock(), "the receiver answered 410 Gone"
        if outcome is Outcome.FAILED_PERMANENTLY:
            return "failed", None, None
        end_ms = result.started_ms + result.latency_ms
        next_ms = next_attempt(
            due.scheduled + 1,
            now_ms=end_ms,
            rng=self._rng,
            schedule=self._schedule,
            retry_after_s=(
                result.retry_after_s if outcome is Outcome.RETRY_AFTER else None
            ),
        )
        if next_ms is None:
            return "failed", None, None
        return "pending", next_ms, None

    def _count(self, outcome: Outcome, status: str) -> None:
        s = self.stats
        s.attempts += 1
        s.outcomes[outcome.value] = s.outcomes.get(outcome.value, 0) + 1
        if status == "delivered":
            s.delivered += 1
        elif status == "failed":
            s.failed += 1
        elif outcome is Outcome.DISABLE_ENDPOINT:
            s.disabled += 1
        else:
            s.retries += 1


class Dispatcher:
    """The delivering half: workers per endpoint with due deliveries, for the
    endpoints of the slots this notifier holds (see the module docstring).
    ``start()`` / ``await close()``; :meth:`wake` when something was queued."""

    def __init__(
        self,
        settings: Settings,
        store: WebhookStore,
        deliverer: Deliverer,
        *,
        clock: MsClock = system_ms,
        stats: NotifierStats | None = None,
    ) -> None:
        self._settings = settings
        self._cfg = settings.notifier
        self._store = store
        self._deliverer = deliverer
        self._clock = clock
        self.stats = stats or NotifierStats()
        self._wake = asyncio.Event()
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._worker_slot: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._draining = False
        self._shares = SlotShares(
            settings.database,
            "smartpark-notifier",
            slots=self._cfg.slots,
            application_name="smartpark-notifier-lock",
        )
        # The slots whose endpoints this notifier delivers now: held, and not
        # being given back to another notifier.
        self._active: frozenset[int] = frozenset()
        self._leaving: frozenset[int] = frozenset()
        self._rebalanced = -float("inf")  # monotonic

    def start(self) -> None:
        self._task = asyncio.create_task(self._dispatch(), name="webhook dispatcher")

    def wake(self) -> None:
        self._wake.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        # Workers finish the attempt in flight (bounded by its timeout) and stop;
        # one cut short is not recorded and is sent again by the next notifier.
        self._draining = True
        workers = list(self._workers.values())
        if workers:
            await asyncio.wait(workers, timeout=self._cfg.timeout_s + 1)
        for task in workers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._shares.release()  # the server releases every lock
        self._active = frozenset()
        self.stats.leader, self.stats.slots = False, 0

    async def _dispatch(self) -> None:
        paused_since: float | None = None  # monotonic, while the database fails
        logged = 0.0
        while True:
            try:
                # The shares are checked every poll (a worker done wakes this loop
                # far more often), and at once while slots wait to be given back.
                now = time.monotonic()
                if self._leaving or now - self._rebalanced >= self._cfg.poll_ms / 1000:
                    self._rebalanced = now
                    await self._rebalance()
                self._wake.clear()
                free = self._cfg.max_endpoints - len(self._workers)
                if free > 0 and self._active:
                    due = await self._store.due_subscriptions(
                        self._clock(), exclude=list(self._workers), limit=free,
                        slot_count=self._cfg.slots, slots=sorted(self._active),
                    )  # fmt: skip
                    for sid, slot in due:
                        task = asyncio.create_task(
                            self._work(sid, slot), name=f"hook {sid}"
                        )
                        self._workers[sid] = task
                        self._worker_slot[sid] = slot
                        task.add_done_callback(self._worker_done)
            except StorageError as exc:
                now = time.monotonic()
                if paused_since is None or now - logged >= _PAUSED_LOG_EVERY_S:
                    since = (
                        ""
                        if paused_since is None
                        else f" (for {now - paused_since:.0f} s)"
                    )
                    log.warning("webhook delivery paused%s: %s", since, exc)
                    logged = now
                paused_since = paused_since or now
            else:
                if paused_since is not None:
                    log.warning(
                        "webhook delivery resumed after %.0f s",
                        time.monotonic() - paused_since,
                    )
                    paused_since = None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._cfg.poll_ms / 1000)

    def _worker_done(self, task: asyncio.Task[None]) -> None:
        sid = task.get_name().removeprefix("hook ")
        if self._workers.get(sid) is task:
            del self._workers[sid]
            del self._worker_slot[sid]
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("webhook worker for %s failed: %r", sid, exc)
        self._wake.set()  # room for a worker, more due, or a slot to give back

    async def _work(self, subscription_id: str, slot: int) -> None:
        # Stops once its slot is to be given back: the slot's lock is released
        # only when no worker of it is left, so an endpoint never has two.
        try:
            while (
                not self._draining
                and slot in self._active
                and (due := await self._store.next_due(subscription_id, self._clock()))
            ):
                if not await self._deliverer.attempt(due):
                    return
        except StorageError as exc:
            log.warning("webhook worker for %s stopped: %s", subscription_id, exc)

    async def _rebalance(self) -> None:
        """Take or give back slots toward this notifier's share. A lost lock
        connection stops every worker at once: their slots may already be
        another notifier's."""
        shares = self._shares
        losses = shares.losses
        busy = set(self._worker_slot.values())
        try:
            held = await shares.rebalance(set(range(shares.slots)) - busy)
        finally:
            if shares.losses != losses:
                if self._active or self._workers:
                    log.warning("lost the delivery locks' connection; paused")
                self._active = self._leaving = frozenset()
                self.stats.leader, self.stats.slots = False, 0
                for task in self._workers.values():
                    task.cancel()
        # Slots beyond the share that still have workers: no new work on them;
        # given back at a later rebalance, once their workers are done.
        excess = len(held) - shares.target
        leaving = set(sorted(held, reverse=True)[:excess]) if excess > 0 else set()
        active = held - leaving
        if active != self._active:
            log.info(
                "delivering webhooks for %d of %d slots (%d notifiers)",
                len(active), shares.slots, shares.members,
            )  # fmt: skip
        self._active, self._leaving = frozenset(active), frozenset(leaving)
        self.stats.leader = bool(active)
        self.stats.slots = len(active)
        self.stats.notifiers = shares.members


class Notifier(DbPositionedConsumer):
    """The queueing half (this consumer) with a :class:`Dispatcher`."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: MsClock = system_ms,
        rng: UniformRandom | None = None,
    ) -> None:
        cfg = settings.notifier
        super().__init__(
            settings.kafka,
            cfg,
            topic=settings.kafka.alerts_topic,
            client_id=f"{settings.kafka.client_id}-notifier",
        )
        self._settings = settings
        self._cfg = cfg
        self._clock = clock
        self._storage = Storage(
            settings.database, clock=clock, pool_size=min(cfg.max_endpoints, 16) + 2,
            webhook_keys=SecretBox.from_settings(settings.webhooks),
        )  # fmt: skip
        self._store = self._storage.webhooks
        self._sender = Sender(
            allow=cfg.allow,
            connect_timeout_s=cfg.connect_timeout_s,
            timeout_s=cfg.timeout_s,
            clock=clock,
        )
        self.stats = NotifierStats()
        deliverer = Deliverer(
            self._store,
            self._sender,
            schedule=cfg.schedule_ms or DEFAULT_SCHEDULE,
            rng=rng,
            clock=clock,
            stats=self.stats,
        )
        self._dispatcher = Dispatcher(
            settings, self._store, deliverer, clock=clock, stats=self.stats
        )
        self._exit = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        async with contextlib.AsyncExitStack() as stack:
            await self._storage.open()
            stack.push_async_callback(self._storage.close)
            await self._storage.require_migrated()
            # Secrets still in clear (before migration 0009) or sealed with an
            # older key are encrypted with the current key now, in place.
            if changed := await self._store.reencrypt():
                log.info("%d webhook secrets encrypted with the current key", changed)
            await ensure_topics(self._settings.kafka)
            await stack.enter_async_context(self._sender)
            stack.push_async_callback(self.close)
            await self.start()
            self._dispatcher.start()
            stack.push_async_callback(self._dispatcher.close)
            self._exit = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._exit.aclose()

    # -- queueing -------------------------------------------------------------------

    async def load_positions(self, tps: set[TopicPartition]) -> dict[int, int]:
        return await self._storage.offsets.load(self._group, self._topic)

    async def process(self, batch: Batch) -> dict[TopicPartition, int]:
        now_ms = self._clock()
        subs = await self._store.subscriptions(enabled_only=True)
        queued: list[NewDelivery] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batch.items():
            for rec in records:
                self.stats.records += 1
                where = f"kafka:{tp.topic}/{tp.partition}/{rec.offset}"
                try:
                    event = events.check_event(orjson.loads(rec.value or b""))
                except (orjson.JSONDecodeError, events.BadEvent) as exc:
                    self.stats.bad_records += 1
                    log.warning("%s skipped: not an alert event: %s", where, exc)
                    continue
                # A subscription gets what reaches the topic after it was made,
                # not the topic's history (a notifier catching up, a first run).
                current = [s for s in subs if s.created_ms <= rec.timestamp]
                queued += _deliveries(current, event, self._cfg.public_url)
            offsets[tp] = records[-1].offset + 1
        new = await self._store.enqueue(
            queued,
            [
                KafkaOffset(self._group, tp.topic, tp.partition, off)
                for tp, off in offsets.items()
            ],
            now_ms=now_ms,
        )
        self.stats.queued += new
        if new:
            self._dispatcher.wake()
        return offsets


def _deliveries(
    subs: Sequence[Subscription], event: dict[str, object], public_url: str | None
) -> list[NewDelivery]:
    etype = events.event_type(event)
    matched = events.matching(subs, event, etype)
    if not matched:
        return []
    body = events.body(event, etype, public_url=public_url)
    return [
        NewDelivery(
            s.subscription_id, str(event["event_id"]), etype, str(event["alert_id"]),
            int(str(event["at_ms"])), body,
        )
        for s in matched
    ]  # fmt: skip
