"""A small simulated industrial park: enterprises of the city's industries, each
with a few meters, every meter a real Modbus TCP server on its own port.

Usage (the lead's end-to-end test and the demo)::

    async with SimulatedPark(seed=1, park="park1", enterprises=3,
                             devices_per_enterprise=4, port_base=15020) as park:
        configs = park.agent_configs("127.0.0.1", 1883, outbox_dir, 0.5)
        async with EdgeAgent(configs[0]) as agent:
            ...
        park.served_polls()        # {device_id: read requests answered with data}

Contracts:

- Enterprise ``j`` (0-based) runs industry ``INDUSTRIES[j % 3]`` and is called
  ``{industry}-{j // 3 + 1}`` (``coal-power-1``, ``alu-smelter-1``,
  ``corn-ferment-1``, ``coal-power-2``...). Its ``k``-th device has kind
  ``METER_MIX[industry][k % len]`` and id ``{enterprise}.{kind}-{k + 1}``, unique
  in the park. Device ``i`` of the park (enterprise-major order) listens on
  ``port_base + i``; with ``port_base=0`` every device gets a free port from the
  OS (read them from the configs, which must then be built after start).
- The same seed and clock give the same register values on every run.
- :meth:`SimulatedPark.agent_configs` returns one validated
  :class:`~edge_agent.config.AgentConfig` per enterprise, in enterprise order,
  with client id ``edge-{park}-{enterprise}`` and outbox
  ``{outbox_dir}/{enterprise}.db``; :meth:`write_configs` writes the same as YAML
  files an engineer could have written (``{enterprise}.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import yaml

from edge_agent.config import AgentConfig, parse_config
from edge_agent.sample import Clock, utc_now
from simulators.device import Fault, SimulatedDevice
from simulators.meters import build_meter

INDUSTRIES = ("coal-power", "alu-smelter", "corn-ferment")
METER_MIX: dict[str, tuple[str, ...]] = {
    "coal-power": ("energy", "steam", "water", "energy"),
    "alu-smelter": ("energy", "energy", "production", "water"),
    "corn-ferment": ("steam", "production", "water", "energy"),
}


@dataclass(frozen=True, slots=True)
class ParkDevice:
    enterprise: str
    device: SimulatedDevice


class SimulatedPark:
    """See the module contract. Construct cheaply; servers start on ``__aenter__``."""

    def __init__(
        self,
        *,
        seed: int = 1,
        park: str = "park1",
        enterprises: int = 3,
        devices_per_enterprise: int = 4,
        port_base: int = 15020,
        host: str = "127.0.0.1",
        clock: Clock = utc_now,
    ) -> None:
        self.seed = seed
        self.park = park
        self.host = host
        self.enterprises: list[str] = [
            f"{INDUSTRIES[j % 3]}-{j // 3 + 1}" for j in range(enterprises)
        ]
        self.devices: list[ParkDevice] = []
        for j, enterprise in enumerate(self.enterprises):
            mix = METER_MIX[INDUSTRIES[j % 3]]
            for k in range(devices_per_enterprise):
                kind = mix[k % len(mix)]
                device_id = f"{enterprise}.{kind}-{k + 1}"
                meter = build_meter(kind, seed=seed, device_id=device_id)
                sim = SimulatedDevice(
                    device_id,
                    kind,
                    meter,
                    port=port_base + len(self.devices) if port_base else 0,
                    clock=clock,
                    host=host,
                )
                self.devices.append(ParkDevice(enterprise, sim))

    async def __aenter__(self) -> SimulatedPark:
        try:
            for d in self.devices:
                await d.device.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def stop(self) -> None:
        for d in self.devices:
            await d.device.stop()

    def device(self, device_id: str) -> SimulatedDevice:
        for d in self.devices:
            if d.device.device_id == device_id:
                return d.device
        raise KeyError(device_id)

    def set_fault(self, device_id: str, fault: Fault | None) -> None:
        self.device(device_id).set_fault(fault)

    def served_polls(self) -> dict[str, int]:
        """Device id → read requests answered with data (one per agent poll)."""
        return {d.device.device_id: d.device.served_reads for d in self.devices}

    def agent_config_data(
        self,
        enterprise: str,
        *,
        mqtt_host: str,
        mqtt_port: int,
        outbox_path: str,
        poll_interval_s: float,
        timeout_s: float,
        max_backoff_s: float,
        mqtt_protocol: Literal["5", "3.1.1"] = "5",
    ) -> dict[str, Any]:
        """The config of one enterprise's agent as plain data (what YAML holds)."""
        devices = []
        for d in self.devices:
            if d.enterprise != enterprise:
                continue
            sim = d.device
            devices.append(
                {
                    "id": sim.device_id,
                    "protocol": "modbus_tcp",
                    "host": sim.host,
                    "port": sim.port,
                    "unit_id": sim.unit_id,
                    "poll_interval_s": poll_interval_s,
                    "timeout_s": timeout_s,
                    "max_backoff_s": max_backoff_s,
                    "registers": [
                        r.model_dump(mode="json", exclude_defaults=True)
                        for r in sim.registers
                    ],
                }
            )
        return {
            "site": {"park": self.park, "enterprise": enterprise},
            "broker": {
                "host": mqtt_host,
                "port": mqtt_port,
                "client_id": f"edge-{self.park}-{enterprise}",
                **({"protocol": mqtt_protocol} if mqtt_protocol != "5" else {}),
            },
            "outbox": {"path": outbox_path},
            "devices": devices,
        }

    def agent_configs(
        self,
        mqtt_host: str,
        mqtt_port: int,
        outbox_dir: str | Path,
        poll_interval_s: float = 10.0,
        *,
        timeout_s: float = 1.0,
        max_backoff_s: float = 30.0,
        mqtt_protocol: Literal["5", "3.1.1"] = "5",
    ) -> list[AgentConfig]:
        """One agent config per enterprise (see the module contract)."""
        return [
            parse_config(
                self.agent_config_data(
                    e,
                    mqtt_host=mqtt_host,
                    mqtt_port=mqtt_port,
                    outbox_path=str(Path(outbox_dir) / f"{e}.db"),
                    poll_interval_s=poll_interval_s,
                    timeout_s=timeout_s,
                    max_backoff_s=max_backoff_s,
                    mqtt_protocol=mqtt_protocol,
                ),
                source=f"{e} (generated)",
            )
            for e in self.enterprises
        ]

    def write_configs(
        self,
        config_dir: str | Path,
        mqtt_host: str,
        mqtt_port: int,
        *,
        outbox_dir: str | Path | None = None,
        poll_interval_s: float = 10.0,
        timeout_s: float = 1.0,
        max_backoff_s: float = 30.0,
    ) -> list[Path]:
        """Write ``{enterprise}.yaml`` per enterprise; outboxes default to
        ``{config_dir}/outbox/{enterprise}.db``. Returns the paths written."""
        config_dir = Path(config_dir)
        config_dir.mkdir(parents=True, exist_ok=True)
        outboxes = Path(outbox_dir) if outbox_dir is not None else config_dir / "outbox"
        written = []
        for e in self.enterprises:
            data = self.agent_config_data(
                e,
                mqtt_host=mqtt_host,
                mqtt_port=mqtt_port,
                outbox_path=str(outboxes.resolve() / f"{e}.db"),
                poll_interval_s=poll_interval_s,
                timeout_s=timeout_s,
                max_backoff_s=max_backoff_s,
            )
            path = config_dir / f"{e}.yaml"
            header = (
                f"# Edge agent for {e} in {self.park}, written by the park simulator"
                f" (seed {self.seed}).\n"
                f"# Run it with: smartpark edge run --config {path}\n"
            )
            body = yaml.safe_dump(
                data, sort_keys=False, default_flow_style=None, width=100
            )
            path.write_text(header + body, encoding="utf-8")
            written.append(path)
        return written
