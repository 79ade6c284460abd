"""The whole agent config (:class:`AgentConfig`) and its small sections."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config.base import StrictModel, check_id, resolve_path
from edge_agent.config.broker import BrokerConfig
from edge_agent.config.devices import DeviceConfig, SerialLineConfig
from edge_agent.config.hj212 import Hj212Config
from smartpark import wire
from smartpark.yamlfile import located


class SiteConfig(StrictModel):
    park: str
    enterprise: str

    @field_validator("park", "enterprise")
    @classmethod
    def _ids(cls, value: str) -> str:
        return check_id(value)


class OutboxConfig(StrictModel):
    path: Path
    max_rows: int = Field(default=1_000_000, ge=1)
    max_age_s: float = Field(default=7 * 24 * 3600, gt=0)
    overflow: Literal["drop_oldest", "refuse_new"] = "drop_oldest"

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path, info: ValidationInfo) -> Path:
        resolved = resolve_path(value, info)
        assert resolved is not None
        return resolved


class PublishConfig(StrictModel):
    """How the outbox is published. A message the broker refuses (an MQTT 5 PUBACK
    with a failure reason code) keeps its rows; its topic is retried, one message at
    a time, after ``refused_retry_min_s``, doubling up to ``refused_retry_max_s``.

    ``resend_window_s``: a PUBACK does not mean the message is on the broker's disk.
    Mosquitto acknowledges from memory and writes its database every
    ``autosave_interval`` (60 s in ``deploy/compose/mosquitto/mosquitto.conf``), so a
    broker killed (kill -9, OOM kill, power cut) loses what it acknowledged since its
    last save. The outbox therefore keeps an acknowledged row this long, and when the
    connection is lost the rows acknowledged within this time before the loss was
    noticed are published again after the reconnect (duplicates, which the platform
    stores once). The default, 120 s, is the 60 s autosave plus the longest the agent
    may take to notice a broker that went silent without closing the connection (a
    host that lost power): paho gives up after one to two ``broker.keepalive_s``, 60
    s at the default 30. A killed process on a live host closes the connection at
    once, so 60 s would do there. Set it to at least the broker's
    ``autosave_interval`` plus twice the keepalive; 0 deletes a row at its PUBACK (a
    broker that saves every change needs no window). The cost: disk for the window's
    worth of acknowledged rows, and those rows sent again after every lost
    connection.

    The rules judge each device's readings in time order, so a re-sent reading is
    judged once (see :mod:`rules.kinds.threshold`); the sink stores it once.

    ``gateway``: send gateway messages (wire schema version 2, :mod:`smartpark.wire`)
    on the agent's own telemetry topic ``sp/v1/{park}/{enterprise}/agent.{client_id}
    /telemetry``, each carrying the readings of several devices, up to
    ``max_readings_per_message`` in all, instead of one message per device. The
    broker, the bridge and Kafka pay per message, so this is how one agent serves
    an enterprise of many devices. Off by default: a platform older than version 2
    dead-letters every such message (its readings are lost to it), so the bridge,
    the sink and the rules runner are upgraded first, then the agents. A broker ACL
    must let the agent publish on that topic (the gateway accounts of
    :mod:`api.mqtt.acl` may: ``.../+/telemetry``).

    ``gateway_linger_s`` (gateway messages only): a message that is not full waits
    until this long after the previous one, so that the polls of the devices in
    between share it; a full one goes at once. It bounds the delay a reading gets
    for the sake of batching; 0 sends whatever is pending at once (batching then
    happens only while ``max_in_flight`` messages wait for their PUBACK)."""

    max_readings_per_message: int = Field(default=500, ge=1, le=wire.MAX_READINGS)
    max_in_flight: int = Field(default=20, ge=1, le=1000)
    refused_retry_min_s: float = Field(default=1.0, gt=0)
    refused_retry_max_s: float = Field(default=60.0, gt=0)
    resend_window_s: float = Field(default=120.0, ge=0)
    gateway: bool = False
    gateway_linger_s: float = Field(default=1.0, ge=0, le=60)

    @model_validator(mode="after")
    def _retry_range(self) -> PublishConfig:
        if self.refused_retry_max_s < self.refused_retry_min_s:
            raise ValueError("refused_retry_max_s is below refused_retry_min_s")
        return self


class ClockConfig(StrictModel):
    """The agent's own clock stamps every Modbus reading, so it is checked: a clock
    that reads before ``min_valid`` is unset (a gateway without a battery-backed
    clock after a power cut), and one more than ``max_skew_s`` away from the
    platform's clock (the bridge's beacon on ``sp/v1/clock``, heard within
    ``beacon_max_age_s``) is wrong. Either way the agent refuses its polls, counts
    them and says why in its status, rather than store readings at a wrong time.
    HJ 212 packets carry their data logger's own DataTime and are not affected."""

    max_skew_s: float = Field(default=60.0, gt=0)
    min_valid: AwareDatetime = datetime(2025, 1, 1, tzinfo=UTC)
    beacon_max_age_s: float = Field(default=300.0, gt=0)


class StatusConfig(StrictModel):
    """The local status endpoint (:mod:`edge_agent.status`): ``GET /metrics`` in
    Prometheus text format and ``GET /healthz``, which answers 503 once the broker
    has been unreachable for ``unhealthy_after_s``. Off unless the section is
    given: several agents may share one gateway, and a fixed default port would
    make the second fail to start. No authentication, hence loopback by default."""

    host: str = "127.0.0.1"
    port: int = Field(default=9108, ge=0, le=65535)  # 0: any free port
    unhealthy_after_s: float = Field(default=300.0, gt=0)


class AgentConfig(StrictModel):
    site: SiteConfig
    broker: BrokerConfig
    outbox: OutboxConfig
    publish: PublishConfig = PublishConfig()
    serial_lines: tuple[SerialLineConfig, ...] = ()
    devices: tuple[DeviceConfig, ...] = ()
    hj212: Hj212Config | None = None
    status: StatusConfig | None = None  # None: no status endpoint
    clock: ClockConfig = ClockConfig()

    @field_validator("status", mode="before")
    @classmethod
    def _bare_status(cls, value: Any) -> Any:
        # A bare "status:" in YAML is null; whoever wrote it wants the endpoint.
        return {} if value is None else value

    @model_validator(mode="after")
    def _something_to_read(self) -> AgentConfig:
        if not self.devices and self.hj212 is None:
            raise located("give at least one device or an hj212 listener", "devices")
        ids = {d.id: f"devices[{i}]" for i, d in enumerate(self.devices)}
        for i, logger in enumerate(self.hj212.loggers if self.hj212 else ()):
            own = f"hj212.loggers[{i}]."
            for key, name in logger.series.items():
                at = "device" if key == "real_time" else key
                if ids.get(name, "").startswith(own):
                    continue  # the logger's series may share its device (data type)
                if name in ids:
                    raise located(
                        f"device id {name!r} is already used by {ids[name]}",
                        "hj212",
                        "loggers",
                        i,
                        at,
                    )
                ids[name] = f"hj212.loggers[{i}].{at}"
        return self

    @field_validator("devices")
    @classmethod
    def _unique_ids(cls, value: tuple[DeviceConfig, ...]) -> tuple[DeviceConfig, ...]:
        seen: set[str] = set()
        for i, dev in enumerate(value):
            if dev.id in seen:
                raise located(f"duplicate device id {dev.id!r}", i, "id")
            seen.add(dev.id)
        return value

    @field_validator("serial_lines")
    @classmethod
    def _unique_lines(
        cls, value: tuple[SerialLineConfig, ...]
    ) -> tuple[SerialLineConfig, ...]:
        ids: set[str] = set()
        ports: dict[str, str] = {}
        for i, line in enumerate(value):
            if line.id in ids:
                raise located(f"duplicate serial line id {line.id!r}", i, "id")
            if line.port in ports:
                raise located(
                    f"port {line.port!r} is already line {ports[line.port]!r}",
                    i,
                    "port",
                )
            ids.add(line.id)
            ports[line.port] = line.id
        return value

    @model_validator(mode="after")
    def _buses(self) -> AgentConfig:
        # Devices sharing one bus (a serial line, or an RTU gateway's host:port)
        # are told apart by unit id alone; an RTU gateway cannot also speak MBAP.
        lines = {line.id for line in self.serial_lines}
        declared = ", ".join(line.id for line in self.serial_lines) or "none"
        units: dict[tuple[str, int], str] = {}
        framing: dict[str, tuple[str, str]] = {}
        for i, dev in enumerate(self.devices):
            if dev.protocol == "modbus_rtu":
                assert dev.line is not None
                if dev.line not in lines:
                    raise located(
                        f"unknown serial line {dev.line!r} (declared: {declared})",
                        "devices",
                        i,
                        "line",
                    )
                bus = f"on serial line {dev.line}"
            else:
                endpoint = f"{dev.host}:{dev.port}"
                other = framing.setdefault(endpoint, (dev.protocol, dev.id))
                if other[0] != dev.protocol:
                    raise located(
                        f"{endpoint} is already used by {other[1]!r} with protocol "
                        f"{other[0]}",
                        "devices",
                        i,
                        "protocol",
                    )
                if dev.protocol == "modbus_tcp":
                    continue  # one connection per device: nothing shared
                bus = f"behind {endpoint}"
            first = units.setdefault((bus, dev.unit_id), dev.id)
            if first != dev.id:
                raise located(
                    f"unit id {dev.unit_id} is already used by {first!r} {bus}",
                    "devices",
                    i,
                    "unit_id",
                )
        return self

    @property
    def agent_id(self) -> str:
        """The device id under which the agent publishes its own status."""
        return f"agent.{self.broker.client_id}"
