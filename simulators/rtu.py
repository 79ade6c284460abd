"""Simulated Modbus RTU slaves: several unit ids on one pseudo-terminal line, or
behind one RTU-over-TCP gateway.

The RTU framing and CRC are written here by hand, so the agent's pymodbus client
is checked against an independent implementation. A frame is
``[unit][function][data...][CRC-16 low byte, high byte]``.

Contracts:

- :class:`RtuSlaves` answers for unit id → :data:`~simulators.meters.Meter`, with
  the meter's registers computed from the injected clock when the request arrives
  (``t`` = seconds since the first :meth:`RtuSlaves.start`).
- Functions 3 (holding) and 4 (input registers) read the meter's registers of that
  table: a range not wholly mapped answers exception 2 (illegal data address), a
  count outside 1..125 exception 3, any other function exception 1. A request to a
  unit id nobody serves, or to 0 (broadcast), gets no answer, as on a real bus. A
  frame failing its CRC is dropped a byte at a time until a frame starts (hunting).
  Functions of unknown length are taken to end where the received burst ends.
- Per unit: :attr:`RtuSlaves.requests` counts request frames addressed to it
  (answered or not), :attr:`RtuSlaves.served_reads` reads answered with data,
  :attr:`RtuSlaves.served_at` when each was (``time.monotonic()``, at the
  request); :meth:`RtuSlaves.wait_served` awaits a count. :attr:`RtuSlaves.wire`
  logs ``(time, "request" | "answer", unit)`` as frames come in and go out.
- Faults per unit: ``set_fault(unit, Fault.timeout())`` makes it dead (it reads
  requests, never answers); ``Fault.exception(code)`` answers that exception;
  ``set_delay(unit, s)`` makes it slow: it answers ``s`` seconds after the request,
  whatever the master does meanwhile.
- :class:`PtyRtuLine` serves the slaves on the master side of ``os.openpty()``;
  the agent opens :attr:`PtyRtuLine.path`. Both ends are raw: no echo, no
  newline translation of binary frames. :class:`TcpRtuGateway` serves them as RTU
  frames over TCP (a serial device server in transparent mode), each connection
  with its own frame buffer; :attr:`TcpRtuGateway.connections` counts connections.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import tty
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from types import TracebackType
from typing import Literal, Self

from edge_agent.config import RegisterConfig
from edge_agent.sample import Clock
from simulators.device import Fault, meter_words
from simulators.meters import Meter

log = logging.getLogger(__name__)

MAX_READ_REGISTERS = 125
TABLES = {3: "holding", 4: "input"}
# Request length by function code; 15 and 16 carry a byte count at offset 6.
_FIXED_REQUEST_SIZE = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8}
_COUNTED_REQUEST = (15, 16)


def crc16(data: bytes) -> int:
    """Modbus CRC-16: reflected polynomial 0xA001, initial value 0xFFFF."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def with_crc(body: bytes) -> bytes:
    """``body`` framed for the wire: its CRC appended, low byte first."""
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    return len(frame) >= 4 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


class RequestFramer:
    """Cuts a master's byte stream into request frames (see the module contract)."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """The whole, CRC-checked frames completed by ``data``, in order."""
        self._buf += data
        frames: list[bytes] = []
        while len(self._buf) >= 4:
            size = self._size()
            if size is None or len(self._buf) < size:
                break
            frame = bytes(self._buf[:size])
            if crc_ok(frame):
                frames.append(frame)
                del self._buf[:size]
            else:
                del self._buf[0]
        return frames

    def _size(self) -> int | None:
        function = self._buf[1]
        if function in _FIXED_REQUEST_SIZE:
            return _FIXED_REQUEST_SIZE[function]
        if function in _COUNTED_REQUEST:
            return 9 + self._buf[6] if len(self._buf) >= 7 else None
        return len(self._buf)


@dataclass(frozen=True, slots=True)
class Answer:
    unit: int
    frame: bytes
    delay_s: float


class RtuSlaves:
    """The slaves on one line (see the module contract)."""

    def __init__(self, meters: Mapping[int, Meter], *, clock: Clock) -> None:
        bad = [u for u in meters if not 1 <= u <= 247]
        if bad:
            raise ValueError(f"RTU unit ids are 1..247, got {bad}")
        self.meters = dict(meters)
        self.requests: Counter[int] = Counter()
        self.served_reads: Counter[int] = Counter()
        self.served_at: defaultdict[int, list[float]] = defaultdict(list)
        self.wire: list[tuple[float, Literal["request", "answer"], int]] = []
        self._faults: dict[int, Fault] = {}
        self._delays: dict[int, float] = {}
        self._clock = clock
        self._started_at: datetime | None = None
        self._changed = asyncio.Event()

    def start(self) -> None:
        """Start the meters' time (only the first call counts)."""
        if self._started_at is None:
            self._started_at = self._clock()

    def registers(self, unit: int) -> tuple[RegisterConfig, ...]:
        """What an agent config needs to read ``unit``."""
        return tuple(c.register for c in self.meters[unit])

    def device_config(
        self, unit: int, device_id: str, **where: object
    ) -> dict[str, object]:
        """An agent's ``devices`` entry reading ``unit``: ``where`` gives the rest
        (``protocol`` and ``line`` or ``host``/``port``, ``poll_interval_s``, ...)."""
        registers = [r.model_dump() for r in self.registers(unit)]
        return {"id": device_id, "unit_id": unit, "registers": registers, **where}

    def values_at(self, unit: int, t: float) -> dict[str, float]:
        """Device-unit value of each metric of ``unit``, ``t`` seconds after start."""
        return {c.register.metric: c.value(t) for c in self.meters[unit]}

    def set_fault(self, unit: int, fault: Fault | None) -> None:
        if fault is None:
            self._faults.pop(unit, None)
        else:
            self._faults[unit] = fault

    def set_delay(self, unit: int, seconds: float) -> None:
        self._delays[unit] = seconds

    async def wait_served(self, unit: int, count: int) -> None:
        """Return once ``unit`` has answered ``count`` reads with data."""
        while self.served_reads[unit] < count:
            await self._changed.wait()

    def answer(self, frame: bytes) -> Answer | None:
        """The answer to one CRC-checked request frame, or None (no answer)."""
        unit, function = frame[0], frame[1]
        if unit not in self.meters:
            return None
        now = time.monotonic()
        self.requests[unit] += 1
        self.wire.append((now, "request", unit))
        fault = self._faults.get(unit)
        if fault is not None and fault.kind == "timeout":
            return None
        if fault is not None:
            body = bytes([unit, function | 0x80, fault.code])
        else:
            body = self._read(unit, function, frame)
        if body[1] < 0x80:
            self.served_reads[unit] += 1
            self.served_at[unit].append(now)
            changed, self._changed = self._changed, asyncio.Event()
            changed.set()
        return Answer(unit, with_crc(body), self._delays.get(unit, 0.0))

    def _read(self, unit: int, function: int, frame: bytes) -> bytes:
        table = TABLES.get(function)
        if table is None:
            return bytes([unit, function | 0x80, 1])
        address = int.from_bytes(frame[2:4], "big")
        count = int.from_bytes(frame[4:6], "big")
        if not 1 <= count <= MAX_READ_REGISTERS:
            return bytes([unit, function | 0x80, 3])
        assert self._started_at is not None, "RtuSlaves.start() was not called"
        t = (self._clock() - self._started_at).total_seconds()
        words = meter_words(self.meters[unit], t, table)
        wanted = range(address, address + count)
        if any(a not in words for a in wanted):
            return bytes([unit, function | 0x80, 2])
        data = b"".join(words[a].to_bytes(2, "big") for a in wanted)
        return bytes([unit, function, len(data)]) + data


class _Responder:
    """Feeds one byte stream to the slaves and writes their answers back."""

    def __init__(self, slaves: RtuSlaves, write: Callable[[bytes], None]) -> None:
        self._slaves = slaves
        self._write = write
        self._framer = RequestFramer()
        self._later: set[asyncio.TimerHandle] = set()

    def data_received(self, data: bytes) -> None:
        for frame in self._framer.feed(data):
            answer = self._slaves.answer(frame)
            if answer is None:
                continue
            if answer.delay_s > 0:
                loop = asyncio.get_running_loop()
                handle = loop.call_later(answer.delay_s, self._send, answer)
                self._later.add(handle)
            else:
                self._send(answer)

    def _send(self, answer: Answer) -> None:
        now = asyncio.get_running_loop().time()
        self._later = {h for h in self._later if h.when() > now}
        self._slaves.wire.append((time.monotonic(), "answer", answer.unit))
        self._write(answer.frame)

    def close(self) -> None:
        for handle in self._later:
            handle.cancel()
        self._later.clear()


class PtyRtuLine:
    """The slaves on a pseudo-terminal; construct cheaply, ``start()`` opens it."""

    def __init__(self, slaves: RtuSlaves) -> None:
        self.slaves = slaves
        self._fds: tuple[int, int] | None = None
        self._responder: _Responder | None = None

    @property
    def path(self) -> str:
        """The device the master (the agent) opens, e.g. ``/dev/pts/7``."""
        assert self._fds is not None, "PtyRtuLine is not started"
        return os.ttyname(self._fds[1])

    async def start(self) -> None:
        master, slave = os.openpty()
        # The slave side's line discipline processes both directions; raw means
        # no echo of answers back to us and no CR/LF rewriting of binary frames.
        # (pyserial also sets it raw when it opens the port.)
        tty.setraw(slave)
        tty.setraw(master)
        os.set_blocking(master, False)
        # Our slave fd stays open: with none open, reading the master fails (EIO).
        self._fds = (master, slave)
        self.slaves.start()
        self._responder = _Responder(self.slaves, self._write)
        asyncio.get_running_loop().add_reader(master, self._readable)

    async def stop(self) -> None:
        if self._fds is None:
            return
        master, slave = self._fds
        asyncio.get_running_loop().remove_reader(master)
        if self._responder is not None:
            self._responder.close()
        os.close(master)
        os.close(slave)
        self._fds = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    def _readable(self) -> None:
        assert self._fds is not None
        assert self._responder is not None
        try:
            data = os.read(self._fds[0], 4096)
        except BlockingIOError:
            return
        self._responder.data_received(data)

    def _write(self, frame: bytes) -> None:
        if self._fds is None:
            return
        try:
            written = os.write(self._fds[0], frame)
        except BlockingIOError:
            written = 0
        if written < len(frame):
            # The pty buffer (kilobytes) is full: nobody reads the line.
            log.warning("pty %s: answer dropped, nobody reads", self.path)


class TcpRtuGateway:
    """The slaves behind an RTU-over-TCP gateway at ``host:port`` (0: a free port,
    kept in :attr:`port` after ``start()``)."""

    def __init__(
        self, slaves: RtuSlaves, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.slaves = slaves
        self.host = host
        self.port = port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._open: set[_GatewayConnection] = set()

    async def start(self) -> None:
        self.slaves.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _GatewayConnection(self.slaves, self._opened, self._open.discard),
            self.host,
            self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def _opened(self, conn: _GatewayConnection) -> None:
        self.connections += 1
        self._open.add(conn)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for conn in list(self._open):
            conn.close()
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class _GatewayConnection(asyncio.Protocol):
    def __init__(
        self,
        slaves: RtuSlaves,
        opened: Callable[[_GatewayConnection], None],
        closed: Callable[[_GatewayConnection], None],
    ) -> None:
        self._opened = opened
        self._closed = closed
        self._transport: asyncio.Transport | None = None
        self._responder = _Responder(slaves, self._write)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._opened(self)

    def data_received(self, data: bytes) -> None:
        self._responder.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self._responder.close()
        self._closed(self)
        self._transport = None

    def close(self) -> None:
        self._responder.close()
        if self._transport is not None:
            self._transport.close()

    def _write(self, frame: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(frame)
