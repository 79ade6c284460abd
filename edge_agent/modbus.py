"""Modbus: a pure register codec, read planning, and the Modbus TCP device poller.

Register layout names (``word_order``/``byte_order``) for a 32-bit value whose
big-endian bytes are ``A B C D``:

==========  ==========  ===========  ==========================
word_order  byte_order  on the wire  often called
==========  ==========  ===========  ==========================
big         big         AB CD        ABCD, "big endian"
little      big         CD AB        CDAB, "word swapped"
big         little      BA DC        BADC, "byte swapped"
little      little      DC BA        DCBA, "little endian"
==========  ==========  ===========  ==========================

:func:`decode_value` and :func:`encode_value` are inverse pure functions (the
simulators use the encoder); :func:`plan_reads` groups a device's registers into
as few requests as possible. :func:`read_block` (one request, its answer checked)
and :func:`block_samples` (its words decoded) are shared by every poller;
:class:`ModbusPoller` polls a Modbus TCP device over its own connection, the RTU
pollers (:mod:`edge_agent.rtu`) poll devices sharing a serial line or gateway.
"""

from __future__ import annotations

import asyncio
import logging
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from pymodbus.client import AsyncModbusTcpClient, ModbusBaseClient
from pymodbus.exceptions import ModbusException, ModbusIOException

from edge_agent.config import MAX_READ_REGISTERS, DeviceConfig, RegisterConfig
from edge_agent.sample import Clock, Sample, to_ms
from smartpark.catalogue import metric as catalogue_metric
from smartpark.catalogue import to_canonical
from smartpark.errors import DeviceError, DeviceException, DeviceTimeout

log = logging.getLogger(__name__)

_STRUCT = {
    "u16": "H", "i16": "h", "u32": "I", "i32": "i", "f32": "f",
    "u64": "Q", "i64": "q", "f64": "d",
}  # fmt: skip

# Modbus exception codes, for messages an engineer can act on.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    5: "acknowledge",
    6: "server device busy",
    8: "memory parity error",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusExceptionResponse(DeviceException):
    """The device answered a read with Modbus exception ``code``."""

    def __init__(self, device: str, code: int, *, table: str, address: int) -> None:
        self.code = code
        name = EXCEPTION_NAMES.get(code, "unknown")
        super().__init__(
            device, f"Modbus exception {code} ({name}) reading {table} {address}"
        )


def _words_to_bytes(words: Sequence[int], spec: RegisterConfig) -> bytes:
    if len(words) != spec.width:
        raise ValueError(f"{spec.type} needs {spec.width} registers, got {len(words)}")
    ordered = words if spec.word_order == "big" else list(reversed(words))
    fmt = ">H" if spec.byte_order == "big" else "<H"
    return b"".join(struct.pack(fmt, w) for w in ordered)


def decode_value(words: Sequence[int], spec: RegisterConfig) -> float:
    """``raw * scale + offset`` in the device's unit, from ``spec.width`` registers.

    Raises ``ValueError`` for the wrong number of words or a word outside 0..65535.
    A float register may decode to NaN or infinity; the caller decides.
    """
    (raw,) = struct.unpack(">" + _STRUCT[spec.type], _words_to_bytes(words, spec))
    return tidy(float(raw) * spec.scale + spec.offset)


def tidy(value: float) -> float:
    """``value`` rounded to 16 significant digits (a double holds 15.9).

    Drops binary noise of scaling (``62864751 * 0.001`` is ``62864.751000000004``)
    so what reaches the platform reads as the meter showed it.
    """
    tidied = float(f"{value:.16g}")
    # Near the largest double, rounding up would overflow to infinity.
    return tidied if math.isfinite(tidied) else value


def encode_value(value: float, spec: RegisterConfig) -> list[int]:
    """The registers a device holding ``value`` (device unit) would serve.

    Integers are rounded and wrap around like a meter register that rolls over.
    """
    raw = (value - spec.offset) / spec.scale
    kind = _STRUCT[spec.type]
    if kind in "fd":
        data = struct.pack(">" + kind, raw)
    else:
        bits = 16 * spec.width
        wrapped = round(raw) % (1 << bits)
        if kind.islower() and wrapped >= 1 << (bits - 1):
            wrapped -= 1 << bits
        data = struct.pack(">" + kind, wrapped)
    fmt = ">H" if spec.byte_order == "big" else "<H"
    words = [struct.unpack(fmt, data[i : i + 2])[0] for i in range(0, len(data), 2)]
    return words if spec.word_order == "big" else list(reversed(words))


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One read request: ``count`` registers of ``table`` from ``address``."""

    table: str
    address: int
    count: int
    registers: tuple[RegisterConfig, ...]

    def words(self, block: Sequence[int], spec: RegisterConfig) -> Sequence[int]:
        start = spec.address - self.address
        return block[start : start + spec.width]


def plan_reads(
    registers: Sequence[RegisterConfig], max_count: int = MAX_READ_REGISTERS
) -> tuple[ReadBlock, ...]:
    """Fewest reads covering ``registers``: contiguous or overlapping ones merge.

    Gaps are never bridged, because reading an address the device does not map
    makes a real meter answer "illegal data address" for the whole request.
    Greedy left-to-right merging is optimal for this interval problem.
    """
    blocks: list[ReadBlock] = []
    for table in ("holding", "input"):
        regs = sorted((r for r in registers if r.table == table), key=_span)
        current: list[RegisterConfig] = []
        start = end = 0
        for reg in regs:
            reg_end = reg.address + reg.width
            if (
                current
                and reg.address <= end
                and max(end, reg_end) - start <= max_count
            ):
                current.append(reg)
                end = max(end, reg_end)
                continue
            if current:
                blocks.append(ReadBlock(table, start, end - start, tuple(current)))
            current, start, end = [reg], reg.address, reg_end
        if current:
            blocks.append(ReadBlock(table, start, end - start, tuple(current)))
    return tuple(blocks)


def _span(reg: RegisterConfig) -> tuple[int, int]:
    return reg.address, reg.address + reg.width


class ModbusPoller:
    """Reads one Modbus TCP device; one :meth:`read` at a time (one task per device).

    Contract of :meth:`read`: returns the canonical samples of every configured
    register (at least one), stamped with the clock at the start of the poll, or raises
    :class:`DeviceTimeout` (no answer within ``timeout_s`` per request),
    :class:`ModbusExceptionResponse` (a :class:`DeviceException` carrying the code)
    or :class:`DeviceError` (cannot connect, connection lost). After any failure the
    connection is closed and the next read reconnects, so a late answer to an
    abandoned request can never be taken for the answer to a new one.
    A register that decodes to NaN/infinity is left out and counted in
    :attr:`invalid_values` (a float meter register reads NaN while it has no value).
    """

    def __init__(self, device: DeviceConfig, *, clock: Clock) -> None:
        if device.protocol != "modbus_tcp" or device.host is None:
            raise ValueError(f"{device.id}: not a modbus_tcp device")
        self.device = device
        self._host = device.host
        self._clock = clock
        self._plan = plan_reads(device.registers)
        self._client: AsyncModbusTcpClient | None = None
        self.invalid_values = 0

    @property
    def requests_per_poll(self) -> int:
        return len(self._plan)

    async def read(self) -> list[Sample]:
        ts_ms = to_ms(self._clock())
        dev = self.device
        # A hard ceiling besides pymodbus's own timeout: connect + every request.
        ceiling = dev.timeout_s * (len(self._plan) + 1) + 1.0
        try:
            async with asyncio.timeout(ceiling):
                client = await self._connected()
                samples: list[Sample] = []
                for block in self._plan:
                    words = await read_block(client, dev, block)
                    got, invalid = block_samples(dev, block, words, ts_ms)
                    samples.extend(got)
                    self.invalid_values += invalid
        except TimeoutError:
            self.close()
            raise DeviceTimeout(dev.id, f"no answer within {ceiling:.1f} s") from None
        except DeviceError:
            self.close()
            raise
        if not samples:
            raise DeviceError(dev.id, "no register gave a finite value")
        return samples

    async def _connected(self) -> AsyncModbusTcpClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.close()
        dev = self.device
        # retries=0 and reconnect_delay=0: the agent owns retry and backoff, so a
        # dead device costs one timeout per attempt, never pymodbus's own loops.
        client = AsyncModbusTcpClient(
            self._host,
            port=dev.port,
            timeout=dev.timeout_s,
            retries=0,
            reconnect_delay=0,
            name=dev.id,
        )
        if not await client.connect():
            client.close()
            raise DeviceError(dev.id, f"cannot connect to {self._host}:{dev.port}")
        self._client = client
        return client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


async def read_block(
    client: ModbusBaseClient, device: DeviceConfig, block: ReadBlock
) -> list[int]:
    """Send one read request for ``block`` to ``device`` and check its answer.

    Returns exactly ``block.count`` words, or raises :class:`DeviceTimeout` (pymodbus
    got no answer within its own timeout), :class:`ModbusExceptionResponse` (the
    device answered with an exception code) or :class:`DeviceError` (connection
    failure, or an answer that is not to this request: another unit id, function
    code or register count). No timeout of its own: the caller bounds the wait.
    """
    read = (
        client.read_holding_registers
        if block.table == "holding"
        else client.read_input_registers
    )
    try:
        response = await read(
            block.address, count=block.count, device_id=device.unit_id
        )
    except ModbusIOException:
        # pymodbus reports "no response received" as an I/O error.
        raise DeviceTimeout(
            device.id, f"no answer within {device.timeout_s} s"
        ) from None
    except ModbusException as exc:  # connection lost or refused mid-read
        raise DeviceError(device.id, f"Modbus failure: {exc}") from None
    if response.isError():
        raise ModbusExceptionResponse(
            device.id,
            int(getattr(response, "exception_code", 0)),
            table=block.table,
            address=block.address,
        )
    # pymodbus already drops frames of another unit id (unless asked for unit 0,
    # which a TCP server may answer as any id); a wrong function code or count
    # would be a stale or foreign answer that happens to pass the CRC.
    function_code = 3 if block.table == "holding" else 4
    if (
        device.unit_id and response.dev_id != device.unit_id
    ) or response.function_code != function_code:
        raise DeviceError(
            device.id,
            f"answer from unit {response.dev_id} function {response.function_code}"
            f" to a request to unit {device.unit_id} function {function_code}",
        )
    words: list[int] = list(response.registers)
    if len(words) != block.count:
        raise DeviceError(
            device.id, f"asked for {block.count} registers, got {len(words)}"
        )
    return words


def block_samples(
    device: DeviceConfig, block: ReadBlock, words: Sequence[int], ts_ms: int
) -> tuple[list[Sample], int]:
    """The canonical samples of ``block``'s registers, and how many were left out.

    A register that decodes to NaN/infinity is left out (and logged): a float meter
    register reads NaN while it has no value.
    """
    out: list[Sample] = []
    invalid = 0
    for spec in block.registers:
        value = tidy(
            to_canonical(
                spec.metric, decode_value(block.words(words, spec), spec), spec.unit
            )
        )
        if not math.isfinite(value):
            invalid += 1
            log.warning(
                "device %s: %s at %s %d reads %r, left out",
                device.id,
                spec.metric,
                spec.table,
                spec.address,
                value,
            )
            continue
        unit = catalogue_metric(spec.metric).unit
        out.append(Sample(spec.metric, value, unit, ts_ms))
    return out, invalid
