"""The ``devices`` and ``serial_lines`` sections: Modbus meters and their registers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge_agent.config.base import StrictModel, check_id
from smartpark.catalogue import METRICS, Kind, check_metric, to_canonical
from smartpark.errors import PayloadError
from smartpark.yamlfile import located

RegisterType = Literal["u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64"]
Order = Literal["big", "little"]
# Modbus caps one read at 125 registers; a value never spans more than 4.
MAX_READ_REGISTERS = 125
REGISTER_WIDTH: dict[str, int] = {
    "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "u64": 4, "i64": 4, "f64": 4,
}  # fmt: skip


class RegisterConfig(StrictModel):
    address: int = Field(ge=0, le=65535)
    table: Literal["holding", "input"] = "holding"
    type: RegisterType
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    metric: str
    unit: str
    # Counter metrics only: the value (device unit) at which the meter wraps to 0,
    # when that is below the register's own range (a display limit like 99999999).
    # None: an integer register wraps at 2**(16*width) * scale, a float one never.
    rollover_at: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @property
    def width(self) -> int:
        """Registers this value occupies."""
        return REGISTER_WIDTH[self.type]

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("unit")
    @classmethod
    def _unit(cls, value: str, info: ValidationInfo) -> str:
        metric = info.data.get("metric")
        if metric is not None:  # else the metric itself is already reported
            try:
                to_canonical(metric, 1.0, value)
            except PayloadError as exc:
                raise ValueError(exc.reason) from None
        return value

    @model_validator(mode="after")
    def _fits(self) -> RegisterConfig:
        if self.address + self.width > 65536:
            raise located(f"a {self.type} at {self.address} runs past 65535", "address")
        if self.rollover_at is not None:
            kind = METRICS[self.metric].kind
            if kind is not Kind.COUNTER:
                raise located(
                    f"only for counter metrics; {self.metric} is a {kind.value}",
                    "rollover_at",
                )
            if not self.type.startswith("f"):
                span = 2 ** (16 * self.width) * abs(self.scale)
                if self.rollover_at > span:
                    raise located(
                        f"beyond the register's range: a {self.type} at scale "
                        f"{self.scale:g} wraps at {span:.16g} first",
                        "rollover_at",
                    )
        return self


ModbusProtocol = Literal["modbus_tcp", "modbus_rtu", "modbus_rtu_tcp"]


class SerialLineConfig(StrictModel):
    """An RS-485 line the agent owns; its devices use ``protocol: modbus_rtu``."""

    id: str
    port: str = Field(min_length=1)  # /dev/ttyUSB0, /dev/serial/by-id/...
    baudrate: int = Field(default=9600, ge=300, le=4_000_000)
    bytesize: Literal[7, 8] = 8
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value)

    @field_validator("parity", mode="before")
    @classmethod
    def _parity(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


class DeviceConfig(StrictModel):
    """One Modbus device; ``protocol`` says how it is reached:

    - ``modbus_tcp``: Modbus TCP at ``host:port`` (port 502 by default);
    - ``modbus_rtu``: Modbus RTU on the serial line named by ``line`` (no host or
      port);
    - ``modbus_rtu_tcp``: RTU frames over TCP at ``host:port``, as a serial device
      server in transparent mode passes them; devices behind one ``host:port``
      share one connection.

    RTU unit ids are 1..247 (0 is broadcast, which no device answers).
    """

    id: str
    protocol: ModbusProtocol
    host: str | None = None
    port: int = Field(default=502, ge=1, le=65535)  # unused by modbus_rtu
    line: str | None = None
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    # Failed polls back off exponentially from poll_interval_s up to this ceiling.
    max_backoff_s: float = Field(default=300.0, gt=0)
    registers: tuple[RegisterConfig, ...] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return check_id(value)

    @field_validator("registers")
    @classmethod
    def _unique_metrics(
        cls, value: tuple[RegisterConfig, ...]
    ) -> tuple[RegisterConfig, ...]:
        # A batch may not carry two readings of one metric with the same seq.
        seen: dict[str, int] = {}
        for i, reg in enumerate(value):
            if reg.metric in seen:
                first = seen[reg.metric]
                raise located(
                    f"metric {reg.metric!r} is already read by registers[{first}]",
                    i,
                    "metric",
                )
            seen[reg.metric] = i
        return value

    @model_validator(mode="after")
    def _reached(self) -> DeviceConfig:
        if self.protocol == "modbus_rtu":
            if self.line is None:
                raise located("missing required field", "line")
            for name in ("host", "port"):
                if name in self.model_fields_set:
                    raise located(
                        "not used by protocol modbus_rtu: the device is reached "
                        "through its serial line",
                        name,
                    )
        else:
            if self.host is None:
                raise located("missing required field", "host")
            if self.line is not None:
                raise located(
                    f"only for protocol modbus_rtu ({self.protocol} devices are "
                    "reached at host:port)",
                    "line",
                )
        if self.protocol != "modbus_tcp" and not 1 <= self.unit_id <= 247:
            raise located(
                f"Modbus RTU unit ids are 1..247 (got {self.unit_id})", "unit_id"
            )
        return self
