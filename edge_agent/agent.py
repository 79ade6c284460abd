"""The running edge agent: one poll task per device, the outbox, the publisher.

Usage::

    async with EdgeAgent(load_config("agent.yaml")) as agent:
        await agent.run_until(stop_event)     # raises if an internal task died
        print(agent.stats())

Contracts:

- Each device is polled by its own task at ``poll_interval_s`` (fixed cadence:
  missed ticks are skipped, never bunched). A failed poll backs off exponentially
  (``interval * 2**(failures-1)``, at most ``max_backoff_s``), so a dead device
  costs one ``timeout_s`` per attempt and never delays another device.
- A successful poll is stored in the outbox *before* the publisher is told about
  it; its sequence number comes from the outbox (one per successful poll).
- Every device failure is counted in :class:`DeviceStats` and logged with the
  device id and the reason; a device's retained status goes offline on failure and
  online again on the next success.
- The agent's clock stamps every poll: while it is unset or off from the
  platform's clock (:mod:`edge_agent.clockcheck`) a poll is read but refused, not
  stored (``clock_refused`` per device), the agent says why in its stats, status
  and log (once per change), and ``/healthz`` answers 503. HJ 212 packets carry
  their logger's own time and are stored as usual.
- With an ``hj212`` section, an :class:`~edge_agent.hj212.listener.Hj212Listener`
  takes packets from data loggers; each accepted packet is stored in the same outbox
  under its series' device id (one sequence number per packet). If the outbox cannot
  store it (full under ``refuse_new``, or a disk error) the packet is counted as
  ``sink_error`` and not answered, so a logger that asked for a reply can resend it.
- With a ``status`` section, a :class:`~edge_agent.status.StatusServer` serves
  :meth:`EdgeAgent.stats` as Prometheus text on ``/metrics`` (and ``/healthz``).
- ``stop()`` (and leaving the ``async with``) stops the listener and polling first,
  then lets the publisher flush for up to ``flush_timeout_s``; what is not
  acknowledged stays in the outbox for the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
from types import TracebackType

from edge_agent.clockcheck import clock_problem
from edge_agent.config import AgentConfig, DeviceConfig
from edge_agent.counters import CounterGuard
from edge_agent.hj212.listener import Hj212Listener
from edge_agent.outbox import Appended, Outbox, OutboxStats
from edge_agent.pollers import make_pollers
from edge_agent.publisher import Publisher
from edge_agent.sample import Clock, Sample, to_ms, utc_now
from edge_agent.stats import AgentStats, DeviceStats
from edge_agent.status import StatusServer
from smartpark.errors import DeviceError, StorageError

log = logging.getLogger(__name__)


def backoff_delay(interval_s: float, failures: int, max_backoff_s: float) -> float:
    """Seconds until the next attempt after ``failures`` consecutive failures."""
    if failures <= 0:
        return interval_s
    # Cap the exponent: 2**failures overflows a float after a long outage.
    return min(max_backoff_s, interval_s * 2.0 ** min(failures - 1, 60))


class EdgeAgent:
    """See the module contract. Construct cheaply; I/O starts in ``start()``.

    ``clock`` stamps readings (event time) and ages outbox rows; the poll cadence
    and backoff run on the event loop's monotonic clock, so a wall-clock jump
    neither stops nor bunches polls.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        clock: Clock = utc_now,
        flush_timeout_s: float = 5.0,
    ) -> None:
        self.config = config
        self._clock = clock
        self._flush_timeout_s = flush_timeout_s
        self.outbox = Outbox.from_config(config.outbox, clock=clock)
        self.publisher = Publisher(config, self.outbox, clock=clock)
        self._pollers = make_pollers(config, clock=clock)
        self._stats = {d.id: DeviceStats() for d in config.devices}
        self._guard = CounterGuard.from_config(config)
        self._listener: Hj212Listener | None = None
        if config.hj212 is not None:
            h = config.hj212
            self._listener = Hj212Listener(
                h.mappings(),
                self._on_hj212,
                host=h.host,
                port=h.port,
                idle_timeout_s=h.idle_timeout_s,
                max_connections=h.max_connections,
                strict=h.strict,
                clock=clock,
            )
            for logger in h.loggers:
                self._stats.update((d, DeviceStats()) for d in logger.series.values())
        self._status: StatusServer | None = None
        if config.status is not None:
            self._status = StatusServer(
                self.stats,
                host=config.status.host,
                port=config.status.port,
                agent_id=config.agent_id,
                unhealthy_after_s=config.status.unhealthy_after_s,
                clock=clock,
            )
        self._tasks: list[asyncio.Task[None]] = []
        self._last_outbox = OutboxStats(0, None, config.outbox.max_rows, 0, 0, 0, 0)
        self._clock_problem = ""

    async def __aenter__(self) -> EdgeAgent:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        self.outbox.open()
        try:
            self._guard.restore(self.outbox.counter_values())
            for device_id, stats in self._stats.items():
                stats.last_seq = self.outbox.last_seq(device_id)
            await self.publisher.start()
            try:
                if self._listener is not None:
                    await self._listener.__aenter__()
                if self._status is not None:
                    await self._status.start()
            except BaseException:
                if self._listener is not None:
                    await self._listener.__aexit__(None, None, None)
                await self.publisher.stop(0)
                raise
        except BaseException:
            self.outbox.close()  # __aexit__ does not run when __aenter__ fails
            raise
        self._tasks = [
            asyncio.create_task(self._poll_loop(d), name=f"poll {d.id}")
            for d in self.config.devices
        ]
        site = self.config.site
        log.info(
            "edge agent %s started: %s/%s, %d devices, %s, outbox %s (%d rows pending)",
            self.config.broker.client_id,
            site.park,
            site.enterprise,
            len(self.config.devices),
            "no HJ 212 listener"
            if self._listener is None
            else f"HJ 212 on port {self._listener.port}",
            self.config.outbox.path,
            self.outbox.stats().rows,
        )

    async def stop(self) -> None:
        if self._status is not None:
            await self._status.close()
        if self._listener is not None:
            await self._listener.__aexit__(None, None, None)
        tasks, self._tasks = self._tasks, []
        pending = set(tasks)
        while pending:
            # On Python 3.11 asyncio.wait_for (pymodbus awaits every response with
            # it) drops a cancel that lands in the same loop iteration as the
            # response, so a poll task can survive one cancel: cancel until done.
            for task in pending:
                task.cancel()
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for poller in self._pollers.values():
            poller.close()
        try:
            await self.publisher.stop(self._flush_timeout_s)
        finally:
            if self.outbox.is_open:
                self._last_outbox = self.outbox.stats()
            self.outbox.close()
            log.info(
                "edge agent stopped; %d rows stay in the outbox", self._last_outbox.rows
            )
        for task in tasks:
            if not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    def check(self) -> None:
        """Raise the exception an internal task died of, if one did."""
        for task in self._tasks:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        self.publisher.check()

    async def run_until(
        self, stop: asyncio.Event, *, check_every_s: float = 1.0
    ) -> None:
        """Run until ``stop`` is set; raise if a task of the agent failed meanwhile."""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(check_every_s):
                    await stop.wait()
            self.check()

    def stats(self) -> AgentStats:
        """A snapshot; after ``stop()`` the outbox part is as it was at the stop."""
        outbox = self.outbox.stats() if self.outbox.is_open else self._last_outbox
        return AgentStats(
            devices={k: dataclasses.replace(v) for k, v in self._stats.items()},
            outbox=outbox,
            publisher=self.publisher.stats(),
            hj212=None
            if self._listener is None
            else dataclasses.replace(
                self._listener.stats,
                frames_rejected=self._listener.stats.frames_rejected.copy(),
                frames_other=self._listener.stats.frames_other.copy(),
                tolerated=self._listener.stats.tolerated.copy(),
            ),
            clock_problem=self._clock_problem,
        )

    @property
    def status_port(self) -> int | None:
        """The status endpoint's bound port (the real one when configured as 0)."""
        return None if self._status is None else self._status.port

    @property
    def hj212_port(self) -> int | None:
        """The HJ 212 listener's bound port (the real one when configured as 0)."""
        return None if self._listener is None else self._listener.port

    async def _poll_loop(self, device: DeviceConfig) -> None:
        loop = asyncio.get_running_loop()
        interval = device.poll_interval_s
        stats = self._stats[device.id]
        next_at = loop.time()
        while True:
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if await self._poll_once(device, stats):
                stats.backoff_s = 0.0
                # Fixed cadence: skip ticks missed by a slow poll instead of bunching.
                behind = loop.time() - next_at
                next_at += interval * max(1, math.ceil(behind / interval))
            else:
                wait = backoff_delay(
                    interval, stats.consecutive_failures, device.max_backoff_s
                )
                stats.backoff_s = wait - interval if wait > interval else 0.0
                next_at = loop.time() + wait

    async def _poll_once(self, device: DeviceConfig, stats: DeviceStats) -> bool:
        poller = self._pollers[device.id]
        try:
            samples = await poller.read()
            stats.invalid_values = poller.invalid_values
            if self._clock_refuses():
                stats.clock_refused += 1
            else:
                self._store(device.id, samples)
        except (DeviceError, StorageError) as exc:
            # StorageError: the poll was read but could not be stored, so it is
            # lost; counting it as a failed poll makes that visible.
            reason = exc.reason if isinstance(exc, DeviceError) else f"outbox: {exc}"
            stats.errors += 1
            stats.consecutive_failures += 1
            stats.last_error = reason
            log.warning(
                "device %s: poll failed (%d in a row): %s",
                device.id,
                stats.consecutive_failures,
                reason,
            )
            self.publisher.set_device_status(device.id, online=False, reason=reason)
            return False
        if stats.consecutive_failures:
            log.info(
                "device %s: answering again after %d failed polls",
                device.id,
                stats.consecutive_failures,
            )
        stats.consecutive_failures = 0
        self.publisher.set_device_status(device.id, online=True)
        return True

    def _clock_refuses(self) -> bool:
        """Judge the clock now (see the module contract); True while it is wrong."""
        pub = self.publisher.stats()
        problem = clock_problem(
            self.config.clock,
            now_ms=to_ms(self._clock()),
            offset_ms=pub.clock_offset_ms,
            heard_ms=pub.clock_heard_ms,
        )
        if (problem or "") != self._clock_problem:
            if problem:
                log.error("polls refused: %s", problem)
            else:
                log.warning("the clock is good again; polls are stored")
            self._clock_problem = problem or ""
        return problem is not None

    def _store(self, device_id: str, samples: list[Sample]) -> Appended:
        """Append one poll or packet to the outbox and account for it."""
        # Counters that went backwards are flagged; their state is stored with the
        # poll and advances only if the poll is stored (edge_agent.counters).
        checked = self._guard.check(device_id, samples)
        appended = self.outbox.append(
            device_id, checked.samples, last_counters=checked.last
        )
        stats = self._stats[device_id]
        stats.last_seq = appended.seq
        if appended.stored:
            self._guard.commit(checked)
            stats.rollovers += checked.rollovers
            stats.replacements += checked.replacements
            for r in checked.resets:
                log.warning(
                    "device %s: counter %s went back from %r to %r, flagged %s",
                    device_id,
                    r.metric,
                    r.previous,
                    r.value,
                    r.kind.value,
                )
            stats.polls_ok += 1
            stats.samples += len(samples)
            stats.last_reading_ms = max(s.ts_ms for s in samples)
            self.publisher.notify()
        else:
            log.warning(
                "device %s: outbox full (%d rows), seq %d refused",
                device_id,
                self.outbox.max_rows,
                appended.seq,
            )
        return appended

    def _on_hj212(self, device_id: str, samples: list[Sample]) -> None:
        """The listener's sink; raising makes it count the packet as lost."""
        if not self._store(device_id, samples).stored:
            raise StorageError(
                f"outbox full ({self.outbox.max_rows} rows, refuse_new): "
                f"packet for {device_id} refused"
            )
        self.publisher.set_device_status(device_id, online=True)
