"""Modbus RTU: devices sharing one serial line, or one RTU-over-TCP gateway.

An RTU frame carries no transaction id: an answer is told from another only by its
unit id and CRC. So on one bus — an RS-485 line, or one TCP connection to a serial
device server in transparent mode — only one request may be on the wire at a time.

Contracts:

- :class:`RtuBus` is one such bus: one pymodbus client, opened on first use and
  reopened after a connection failure, and an ``asyncio.Lock``. A device holds the
  bus (:meth:`RtuBus.turn`) for a whole poll; the lock is FIFO, so a device waiting
  for the bus gets it after at most the polls queued before it, each bounded.
- Each request is bounded by the polled device's own ``timeout_s``, counted from
  when the device holds the bus: waiting for a slow or dead neighbour does not
  count against it. :class:`RtuPoller` stamps a poll when it gets the bus, not when
  it starts waiting. A dead device so costs the bus one ``timeout_s`` (plus the
  quiet gap below) and one request frame per attempt: pymodbus runs with
  ``retries=0`` and a timeout above every device's, so only ours fires. The
  agent's per-device backoff makes a dead device's attempts rarer.
- A late answer is never taken for another device's answer. pymodbus's RTU framer
  drops a frame that fails its CRC or comes from a unit id other than the one
  asked (``FramerBase.handleFrame`` with the request's id), and clears its receive
  buffer before each request (``TransactionManager.execute``); on top of that,
  :func:`~edge_agent.modbus.read_block` checks the answer's unit id, function code
  and register count. After a request ends without its answer (timeout, cancel,
  foreign answer) the bus is unsettled: the next request waits until no byte has
  arrived for ``quiet_s`` (at most ``max_quiet_wait_s``), so a late answer still
  on its way is not transmitted over (RS-485 is half-duplex) nor cut in half by the
  next request. Every request also waits the RTU inter-frame gap (3.5 characters)
  after the last byte heard. What stays undetectable, as with every RTU master, is
  an answer of the *same* unit to the *same* request arriving after its timeout and
  after that device's next request; the agent's backoff (at least one poll
  interval) makes that a device answering later than its whole poll interval.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence

from pymodbus.client import (
    AsyncModbusSerialClient,
    AsyncModbusTcpClient,
    ModbusBaseClient,
)
from pymodbus.framer import FramerType

from edge_agent.config import DeviceConfig, SerialLineConfig
from edge_agent.modbus import (
    ModbusExceptionResponse,
    ReadBlock,
    block_samples,
    plan_reads,
    read_block,
)
from edge_agent.sample import Clock, Sample, to_ms
from smartpark.errors import ConfigError, DeviceError, DeviceTimeout

log = logging.getLogger(__name__)

TracePacket = Callable[[bool, bytes], bytes]
ClientFactory = Callable[[TracePacket], ModbusBaseClient]

# Silence asked of the bus after a request went unanswered. A USB to RS-485 adapter
# hands bytes over in bursts up to its latency timer apart (FTDI: 16 ms), so less
# could end the wait in the middle of a late answer.
QUIET_S = 0.05
MAX_QUIET_WAIT_S = 0.5


def char_time_s(line: SerialLineConfig) -> float:
    """Seconds one character takes on ``line``: start, data, parity, stop bits."""
    bits = 1 + line.bytesize + (line.parity != "N") + line.stopbits
    return bits / line.baudrate


def frame_gap_s(line: SerialLineConfig) -> float:
    """The RTU inter-frame silence: 3.5 characters, 1.75 ms above 19200 baud."""
    return 0.00175 if line.baudrate > 19200 else 3.5 * char_time_s(line)


class RtuBus:
    """One RTU bus shared by the devices on it; see the module contract.

    Construct cheaply: the client is created and connected by the first request.
    ``name`` describes the bus in messages ("serial line line-1 (/dev/ttyUSB0)").
    """

    def __init__(
        self,
        name: str,
        client_factory: ClientFactory,
        *,
        frame_gap_s: float = 0.0,
        quiet_s: float = QUIET_S,
        max_quiet_wait_s: float = MAX_QUIET_WAIT_S,
    ) -> None:
        self.name = name
        self.frame_gap_s = frame_gap_s
        self.quiet_s = max(quiet_s, frame_gap_s)
        self.max_quiet_wait_s = max_quiet_wait_s
        self._client_factory = client_factory
        self._client: ModbusBaseClient | None = None
        self._lock = asyncio.Lock()
        self._heard_at = float("-inf")  # time.monotonic() of the last byte received
        self._unsettled_at: float | None = None  # a request went unanswered then

    @classmethod
    def serial(cls, line: SerialLineConfig, devices: Sequence[DeviceConfig]) -> RtuBus:
        """The bus of serial ``line``, shared by ``devices``.

        Raises :class:`ConfigError` if pyserial, which pymodbus opens ports with,
        is not installed: better at start than at the first poll.
        """
        if importlib.util.find_spec("serial") is None:
            raise ConfigError(
                f"serial line {line.id} needs pyserial: pip install 'smartpark[edge]'"
            )
        timeout = _client_timeout(devices)

        def factory(trace: TracePacket) -> ModbusBaseClient:
            return AsyncModbusSerialClient(
                line.port,
                framer=FramerType.RTU,
                baudrate=line.baudrate,
                bytesize=line.bytesize,
                parity=line.parity,
                stopbits=line.stopbits,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                name=line.id,
                trace_packet=trace,
            )

        return cls(
            f"serial line {line.id} ({line.port})",
            factory,
            frame_gap_s=frame_gap_s(line),
            quiet_s=max(QUIET_S, 3.5 * char_time_s(line)),
        )

    @classmethod
    def gateway(cls, host: str, port: int, devices: Sequence[DeviceConfig]) -> RtuBus:
        """The bus behind an RTU-over-TCP gateway at ``host:port``."""
        timeout = _client_timeout(devices)

        def factory(trace: TracePacket) -> ModbusBaseClient:
            return AsyncModbusTcpClient(
                host,
                port=port,
                framer=FramerType.RTU,
                timeout=timeout,
                retries=0,
                reconnect_delay=0,
                name=f"{host}:{port}",
                trace_packet=trace,
            )

        # The gateway keeps the serial timing; the quiet gap still keeps a late
        # answer on its way from landing inside the next request's answer.
        return cls(f"RTU gateway {host}:{port}", factory)

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Hold the bus: wait for the devices queued before, then for silence."""
        async with self._lock:
            await self._settle()
            yield

    async def read_block(self, device: DeviceConfig, block: ReadBlock) -> list[int]:
        """One request of ``device`` for ``block``, within :meth:`turn`.

        Raises as :func:`~edge_agent.modbus.read_block` does, with
        :class:`DeviceTimeout` after ``device.timeout_s`` without an answer and
        :class:`DeviceError` when the bus cannot be opened (within that timeout).
        """
        assert self._lock.locked(), "read_block outside turn()"
        client = await self._connected(device)
        answered = False
        try:
            async with asyncio.timeout(device.timeout_s):
                words = await read_block(client, device, block)
            answered = True
        except TimeoutError:
            raise DeviceTimeout(
                device.id, f"no answer within {device.timeout_s} s"
            ) from None
        except ModbusExceptionResponse:
            answered = True  # a whole answer: the bus is quiet again
            raise
        except DeviceTimeout:
            raise
        except DeviceError:
            # The connection failed, or a foreign answer passed the CRC: start over.
            self.close()
            raise
        finally:
            if not answered:
                self._unsettled_at = time.monotonic()
        return words

    def close(self) -> None:
        """Close the connection; the next request reopens it. For every device on
        the bus, so call it when none is polling (the agent does, at stop)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def _trace(self, sending: bool, data: bytes) -> bytes:
        # pymodbus calls this with every chunk received: the bus is not silent.
        if not sending:
            self._heard_at = time.monotonic()
        return data

    async def _settle(self) -> None:
        if self._unsettled_at is None:
            gap = self._heard_at + self.frame_gap_s - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            return
        give_up = time.monotonic() + self.max_quiet_wait_s
        while True:
            now = time.monotonic()
            quiet_for = now - max(self._unsettled_at, self._heard_at)
            if quiet_for >= self.quiet_s or now >= give_up:
                break
            # Bytes arriving meanwhile move _heard_at, and so the end of the wait.
            await asyncio.sleep(min(self.quiet_s - quiet_for, give_up - now))
        if quiet_for < self.quiet_s:
            log.warning(
                "%s: still not quiet after %.2f s", self.name, self.max_quiet_wait_s
            )
        self._unsettled_at = None

    async def _connected(self, device: DeviceConfig) -> ModbusBaseClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        client = self._client_factory(self._trace)
        try:
            async with asyncio.timeout(device.timeout_s):
                connected = await client.connect()
        except TimeoutError:
            connected = False
        if not connected:
            client.close()
            raise DeviceError(device.id, f"cannot open {self.name}")
        self._client = client
        return client


def _client_timeout(devices: Sequence[DeviceConfig]) -> float:
    # pymodbus's own timeout is only a backstop: each request is bounded by its
    # device's timeout_s, so pymodbus's must never fire first.
    return max((d.timeout_s for d in devices), default=1.0) + 1.0


class RtuPoller:
    """Reads one device on a shared :class:`RtuBus`; one :meth:`read` at a time.

    Contract of :meth:`read`: as :meth:`edge_agent.modbus.ModbusPoller.read` — the
    canonical samples of every configured register (at least one), or
    :class:`DeviceTimeout`, :class:`ModbusExceptionResponse` or
    :class:`DeviceError` — with the poll stamped when the device gets the bus, and
    every request of the poll made while it holds the bus. A failure does not close
    the shared bus unless the connection itself failed.
    """

    def __init__(self, device: DeviceConfig, bus: RtuBus, *, clock: Clock) -> None:
        if device.protocol not in ("modbus_rtu", "modbus_rtu_tcp"):
            raise ValueError(f"{device.id}: not a Modbus RTU device")
        self.device = device
        self.bus = bus
        self._clock = clock
        self._plan = plan_reads(device.registers)
        self.invalid_values = 0

    @property
    def requests_per_poll(self) -> int:
        return len(self._plan)

    async def read(self) -> list[Sample]:
        dev = self.device
        samples: list[Sample] = []
        async with self.bus.turn():
            ts_ms = to_ms(self._clock())
            for block in self._plan:
                words = await self.bus.read_block(dev, block)
                got, invalid = block_samples(dev, block, words, ts_ms)
                samples.extend(got)
                self.invalid_values += invalid
        if not samples:
            raise DeviceError(dev.id, "no register gave a finite value")
        return samples

    def close(self) -> None:
        """Close the shared bus (see :meth:`RtuBus.close`)."""
        self.bus.close()
