"""The poller port and the factory that builds one poller per configured device.

A :class:`Poller` reads one device; the agent runs one task per device and calls
:meth:`Poller.read` once per tick, never two at a time for one device. Devices
sharing a bus (one serial line, one RTU-over-TCP gateway ``host:port``) get pollers
sharing one :class:`~edge_agent.rtu.RtuBus`, which serialises their requests;
each Modbus TCP device gets its own connection.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Protocol

from edge_agent.config import AgentConfig, DeviceConfig
from edge_agent.modbus import ModbusPoller
from edge_agent.rtu import RtuBus, RtuPoller
from edge_agent.sample import Clock, Sample


class Poller(Protocol):
    """Reads one device.

    Contract of :meth:`read`: the canonical samples of every configured register
    that decoded to a finite value (at least one), all stamped with one event time;
    or :class:`~smartpark.errors.DeviceTimeout` (no answer within the device's
    ``timeout_s``), :class:`~edge_agent.modbus.ModbusExceptionResponse` (the device
    answered with an exception code) or :class:`~smartpark.errors.DeviceError`
    (anything else about the device or its connection). Nothing else for a device
    fault. After a failure the next :meth:`read` may simply be tried again: a late
    answer to the failed read is never taken for a later one.

    :meth:`close` releases the connection (on a shared bus: for every device on
    it); a later :meth:`read` reopens it.
    """

    @property
    def requests_per_poll(self) -> int:
        """Modbus requests one :meth:`read` makes."""
        ...

    @property
    def invalid_values(self) -> int:
        """Registers left out so far because they decoded to NaN or infinity."""
        ...

    async def read(self) -> list[Sample]: ...

    def close(self) -> None: ...


def make_pollers(config: AgentConfig, *, clock: Clock) -> dict[str, Poller]:
    """One poller per device of ``config``, by device id, in config order.

    Constructs only: nothing is opened until the first read.
    """
    lines = {line.id: line for line in config.serial_lines}
    sharing: dict[tuple[str, str, int], list[DeviceConfig]] = defaultdict(list)
    for dev in config.devices:
        if dev.protocol != "modbus_tcp":
            sharing[_bus_key(dev)].append(dev)
    buses: dict[tuple[str, str, int], RtuBus] = {}
    for key, devices in sharing.items():
        kind, name, port = key
        buses[key] = (
            RtuBus.serial(lines[name], devices)
            if kind == "line"
            else RtuBus.gateway(name, port, devices)
        )
    pollers: dict[str, Poller] = {}
    for dev in config.devices:
        if dev.protocol == "modbus_tcp":
            pollers[dev.id] = ModbusPoller(dev, clock=clock)
        else:
            pollers[dev.id] = RtuPoller(dev, buses[_bus_key(dev)], clock=clock)
    return pollers


def _bus_key(dev: DeviceConfig) -> tuple[str, str, int]:
    if dev.protocol == "modbus_rtu":
        assert dev.line is not None
        return ("line", dev.line, 0)
    assert dev.host is not None
    return ("gateway", dev.host, dev.port)


def location(config: AgentConfig, device: DeviceConfig) -> str:
    """Where ``device`` is, for an operator: ``line-1 /dev/ttyUSB0 unit 3``,
    ``RTU over TCP 10.0.0.30:4001 unit 7`` or ``10.0.0.21:502 unit 1``."""
    if device.protocol == "modbus_rtu":
        line = next(x for x in config.serial_lines if x.id == device.line)
        return f"{line.id} {line.port} unit {device.unit_id}"
    place = f"{device.host}:{device.port} unit {device.unit_id}"
    return f"RTU over TCP {place}" if device.protocol == "modbus_rtu_tcp" else place
