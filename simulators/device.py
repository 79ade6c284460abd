"""One simulated meter served over real Modbus TCP (pymodbus server, asyncio).

Contracts:

- The server listens on ``host:port`` (``port=0``: a free port chosen by the OS
  at the first start, then kept in :attr:`SimulatedDevice.port`) and answers
  unit id ``unit_id`` with the meter's registers, computed from the injected
  clock at the moment of each read (``t`` = seconds since the first start).
- :attr:`SimulatedDevice.served_reads` counts read requests answered *with data*;
  faulted requests are not counted. An agent poll is one request when the
  device's registers are contiguous in one table, which holds for every meter in
  :mod:`simulators.meters`.
- Faults (:meth:`SimulatedDevice.set_fault`): ``Fault.timeout()`` makes the
  device read the request and never answer (the connection stays open, as with a
  meter that hangs); ``Fault.exception(code)`` answers with that Modbus exception
  code. ``set_fault(None)`` heals the device.
- Counter discontinuities (:meth:`SimulatedDevice.set_counter`): a counter jumps
  to a chosen value at once and grows on from there: a meter replaced, or one
  set close to (or past) its register's wrap so that it rolls over.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_agent.config import RegisterConfig
from edge_agent.modbus import encode_value
from edge_agent.sample import Clock
from simulators.meters import Meter, with_counter


@dataclass(frozen=True, slots=True)
class Fault:
    kind: Literal["timeout", "exception"]
    code: int = 0

    @classmethod
    def timeout(cls) -> Fault:
        return cls("timeout")

    @classmethod
    def exception(cls, code: int = ExcCodes.DEVICE_FAILURE) -> Fault:
        """Answer with Modbus exception ``code`` (1-11, as pymodbus defines them)."""
        return cls("exception", int(ExcCodes(code)))


def meter_words(meter: Meter, t: float, table: str | None = None) -> dict[int, int]:
    """Register address → word of ``meter`` ``t`` seconds after start; only the
    registers of ``table`` (``holding`` or ``input``) if given."""
    out: dict[int, int] = {}
    for channel in meter:
        reg = channel.register
        if table is None or reg.table == table:
            for i, word in enumerate(encode_value(channel.value(t), reg)):
                out[reg.address + i] = word
    return out


class SimulatedDevice:
    """A Modbus TCP server for one meter. Construct cheaply; ``start()`` listens."""

    def __init__(
        self,
        device_id: str,
        kind: str,
        meter: Meter,
        *,
        port: int,
        clock: Clock,
        host: str = "127.0.0.1",
        unit_id: int = 1,
    ) -> None:
        self.device_id = device_id
        self.kind = kind
        self.meter = meter
        self.host = host
        self.port = port
        self.unit_id = unit_id
        self.served_reads = 0
        self.fault: Fault | None = None
        self._clock = clock
        self._started_at: datetime | None = None
        self._server: ModbusTcpServer | None = None

    @property
    def registers(self) -> tuple[RegisterConfig, ...]:
        return tuple(c.register for c in self.meter)

    def set_fault(self, fault: Fault | None) -> None:
        self.fault = fault

    def set_counter(self, metric: str, value: float) -> None:
        """From now on counter ``metric`` reads ``value`` (device unit) and grows on.

        A small value simulates a replaced meter; a value just below
        :func:`simulators.meters.wrap_at` one about to roll over, and a value past
        it one that has (integer registers wrap as they would). Call after start.
        """
        assert self._started_at is not None, "start the device first"
        t = (self._clock() - self._started_at).total_seconds()
        self.meter = with_counter(self.meter, metric, at_t=t, value=value)

    def values_at(self, t: float) -> dict[str, float]:
        """Device-unit value of every metric ``t`` seconds after start (for tests)."""
        return {c.register.metric: c.value(t) for c in self.meter}

    def register_words(self, t: float) -> dict[int, int]:
        """Register address → word, ``t`` seconds after start."""
        return meter_words(self.meter, t)

    async def start(self) -> None:
        if self._started_at is None:
            self._started_at = self._clock()
        size = max(r.address + r.width for r in self.registers)
        device = SimDevice(
            id=self.unit_id,
            simdata=[SimData(0, count=size, values=0, datatype=DataType.REGISTERS)],
            action=self._on_request,
        )
        server = ModbusTcpServer(
            device, address=(self.host, self.port), trace_packet=self._trace_packet
        )
        await server.serve_forever(background=True)
        self._server = server
        if self.port == 0:
            # Ephemeral port: keep the one the OS gave, so a restart reuses it.
            listener = server.transport
            assert isinstance(listener, asyncio.Server)
            self.port = listener.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def _on_request(  # noqa: PLR0917 - pymodbus SimAction's signature
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        fault = self.fault
        if fault is not None:
            # A timeout fault is applied to the outgoing packet (_trace_packet).
            return ExcCodes(fault.code) if fault.kind == "exception" else None
        if set_values is not None:
            return ExcCodes.ILLEGAL_FUNCTION  # meters are read-only
        assert self._started_at is not None
        t = (self._clock() - self._started_at).total_seconds()
        for addr, word in self.register_words(t).items():
            registers[addr - start_address] = word
        self.served_reads += 1
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        fault = self.fault
        if sending and fault is not None and fault.kind == "timeout":
            return b""  # swallow the answer: the master sees a silent device
        return data
