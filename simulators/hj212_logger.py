"""An asyncio TCP client that plays an HJ 212 data logger against a listener.

:class:`Hj212Logger` ticks a :class:`~simulators.hj212_source.PacketSource` with the
data times of an injected clock, writes each tick's frames to ``host:port`` and then
waits ``interval_s`` real seconds (the sending pace, apart from the data-time step).
Contracts:

- Constructing does no I/O. ``async with`` starts sending in a task; :meth:`wait`
  returns once ``count`` ticks are done (None: until :meth:`stop`); :meth:`stop`
  ends it after the current tick. Leaving the block stops, waits up to
  ``reply_grace_s`` for outstanding replies and closes the connection.
- The connection is opened when a tick has frames. A failed connect, or a write on
  a connection that failed or that the peer closed, is retried after a backoff
  doubling from ``backoff_s`` to ``max_backoff_s``, and the whole write is sent
  again, in one piece, on the new connection (at least once, as loggers re-send). A
  frame cut short by the failure reaches the listener as a truncated frame, which it
  rejects. Bytes TCP
  accepted just before the peer went away are lost unnoticed (no client can tell);
  with Flag bit A they show up in :attr:`unanswered`.
- :attr:`sent` holds, in order, the :class:`SentPacket` of every completed write;
  frames still unwritten when the logger stopped are in :attr:`unsent`.
- Writes: one frame per write, or with ``join`` all of a tick's frames in one; every
  ``split_every``-th write is cut in two at a seeded position, ``split_pause_s``
  apart, so a listener sees both cases of stream framing.
- Replies are read with a strict :class:`~edge_agent.hj212.stream.FrameBuffer`: a
  CN 9014 whose QN is that of a sent packet awaiting one counts in
  ``stats.replies`` (and its QN goes into :attr:`replied`); other frames count in
  ``unexpected_replies``, undecodable bytes in ``bad_replies``. Before closing the
  connection for a dropout it also waits up to ``reply_grace_s`` for replies.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType

from edge_agent.hj212.model import Decoded, Hj212Error
from edge_agent.hj212.stream import FrameBuffer
from simulators.hj212_source import PacketSource, SentPacket

log = logging.getLogger(__name__)

_READ_SIZE = 65536


@dataclass(slots=True)
class LoggerStats:
    ticks: int = 0
    frames: int = 0  # frames (or garbage) written, corrupt ones included
    writes: int = 0  # socket writes that completed (a split write makes two)
    bytes: int = 0
    withheld: int = 0  # packets a dropout kept back
    connects: int = 0
    reconnects: int = 0  # connects after the first
    connect_failures: int = 0
    send_failures: int = 0  # writes that failed (each then sent again)
    connections_lost: int = 0  # closed by the peer or by an error
    dropout_closes: int = 0
    replies: int = 0
    unexpected_replies: int = 0
    bad_replies: int = 0


@dataclass(slots=True)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    task: asyncio.Task[None] | None = None
    lost: bool = False


class Hj212Logger:
    """A simulated data logger; an async context manager (see the module doc)."""

    def __init__(
        self,
        source: PacketSource,
        clock: Callable[[], datetime],
        host: str,
        port: int,
        *,
        count: int | None = None,
        interval_s: float = 1.0,
        join: bool = False,
        split_every: int = 0,
        split_pause_s: float = 0.005,
        seed: int = 0,
        backoff_s: float = 0.05,
        max_backoff_s: float = 2.0,
        reply_grace_s: float = 2.0,
        on_sent: Callable[[SentPacket], object] | None = None,
    ) -> None:
        if interval_s < 0 or split_every < 0 or not 0 < backoff_s <= max_backoff_s:
            raise ValueError("need interval_s >= 0, split_every >= 0, backoffs > 0")
        self.source, self.clock, self.host, self.port = source, clock, host, port
        self.count, self.interval_s = count, interval_s
        self.join = join
        self.split_every, self.split_pause_s = split_every, split_pause_s
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.reply_grace_s = reply_grace_s
        self.on_sent = on_sent
        self.stats = LoggerStats()
        self.sent: list[SentPacket] = []
        self.unsent: list[SentPacket] = []
        self.replied: set[str] = set()
        self._awaiting: set[str] = set()
        self._rng = random.Random(seed)  # noqa: S311 - reproducible, not secret
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._conn: _Conn | None = None
        self._units = 0  # writes as planned, before splitting

    @property
    def unanswered(self) -> list[SentPacket]:
        """Sent packets that required a reply and have not had one (yet)."""
        return [p for p in self.sent if p.reply_required and p.qn not in self.replied]

    async def __aenter__(self) -> Hj212Logger:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        try:
            await self.wait()
            await self._settle()
        finally:
            await self._close()

    def stop(self) -> None:
        self._stop.set()

    async def wait(self) -> None:
        """Until the run ends (``count`` ticks or :meth:`stop`); raises its error."""
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        done = 0
        while not self._stop.is_set() and (self.count is None or done < self.count):
            tick = self.source.tick(self.clock())
            done += 1
            self.stats.ticks += 1
            self.stats.withheld += tick.withheld
            if tick.close and self._conn is not None:
                await self._settle()
                await self._close()
                self.stats.dropout_closes += 1
            units = [tick.packets] if self.join else [(p,) for p in tick.packets]
            units = [u for u in units if u]
            for i, unit in enumerate(units):
                if not await self._write(unit):
                    self.unsent += [p for u in units[i:] for p in u]
                    return
            await self._pause(self.interval_s)

    async def _write(self, unit: tuple[SentPacket, ...]) -> bool:
        """Write ``unit`` whole, reconnecting as needed; False if stopped first."""
        data = b"".join(p.frame for p in unit)
        awaited = {p.qn for p in unit if p.reply_required and p.qn}
        parts = [data]
        self._units += 1
        if self.split_every and self._units % self.split_every == 0 and len(data) > 1:
            cut = self._rng.randint(1, len(data) - 1)
            parts = [data[:cut], data[cut:]]
        delay = self.backoff_s
        while (conn := await self._connect()) is not None:
            self._awaiting |= awaited
            try:
                for k, part in enumerate(parts):
                    if k:
                        await asyncio.sleep(self.split_pause_s)
                    if conn.lost:
                        raise ConnectionResetError("the peer closed the connection")
                    conn.writer.write(part)
                    await conn.writer.drain()
                    self.stats.writes += 1
            except ConnectionError as exc:
                self.stats.send_failures += 1
                log.info("hj212 logger: write failed (%s), sending it again", exc)
                parts = [data]  # whole, or a listener idling on half would loop us
                await self._close()
                await self._pause(delay)
                delay = min(2 * delay, self.max_backoff_s)
                continue
            self.stats.bytes += len(data)
            self.stats.frames += len(unit)
            self.sent += unit
            for p in unit:
                if self.on_sent is not None:
                    self.on_sent(p)
            return True
        return False

    async def _connect(self) -> _Conn | None:
        """The open connection, or a new one; None if stopped while retrying."""
        if self._conn is not None and not self._conn.lost:
            return self._conn
        await self._close()
        delay = self.backoff_s
        while not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except OSError as exc:
                self.stats.connect_failures += 1
                log.info(
                    "hj212 logger: connect to %s:%d failed: %s",
                    self.host,
                    self.port,
                    exc,
                )
                await self._pause(delay)
                delay = min(2 * delay, self.max_backoff_s)
                continue
            if self.stats.connects:
                self.stats.reconnects += 1
            self.stats.connects += 1
            conn = self._conn = _Conn(reader, writer)
            conn.task = asyncio.create_task(self._read_replies(conn))
            return conn
        return None

    async def _read_replies(self, conn: _Conn) -> None:
        frames = FrameBuffer(strict=True)
        try:
            while data := await conn.reader.read(_READ_SIZE):
                self._on_replies(frames.feed(data))
        except ConnectionError as exc:
            log.info("hj212 logger: connection lost: %s", exc)
        self._on_replies(frames.flush())
        conn.lost = True
        self.stats.connections_lost += 1

    def _on_replies(self, events: list[Decoded | Hj212Error]) -> None:
        for event in events:
            if isinstance(event, Hj212Error):
                self.stats.bad_replies += 1
                log.warning("hj212 logger: bad reply: %s", event)
            elif event.packet.cn == "9014" and event.packet.qn in self._awaiting:
                self._awaiting.discard(event.packet.qn)
                self.replied.add(event.packet.qn)
                self.stats.replies += 1
            else:
                self.stats.unexpected_replies += 1

    async def _settle(self) -> None:
        """Wait up to ``reply_grace_s`` for the replies the connection still owes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.reply_grace_s
        while self._awaiting and self._conn and not self._conn.lost:
            if loop.time() >= deadline:
                return
            await asyncio.sleep(0.005)

    async def _close(self) -> None:
        """Close the connection; replies it still owes can no longer arrive."""
        conn, self._conn = self._conn, None
        self._awaiting.clear()
        if conn is None:
            return
        if conn.task is not None:
            conn.task.cancel()
            await asyncio.wait([conn.task])  # unlike awaiting it, never raises
        conn.writer.close()
        with contextlib.suppress(ConnectionError):
            await conn.writer.wait_closed()

    async def _pause(self, seconds: float) -> None:
        """Sleep ``seconds``, or less if :meth:`stop` is called meanwhile."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stop.wait()
