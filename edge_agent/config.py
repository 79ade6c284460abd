"""The edge agent's YAML configuration, parsed once into frozen, typed models.

A commented example ships next to this module as ``agent.example.yaml``; the
shape is::

    site: {park, enterprise}
    broker: {host, port, client_id, username, password_file | password_env, ...}
    outbox: {path, max_rows, max_age_s, overflow: drop_oldest | refuse_new}
    publish: {max_readings_per_message, max_in_flight}
    devices:
      - {id, protocol: modbus_tcp, host, port, unit_id, poll_interval_s, timeout_s,
         max_backoff_s, registers: [{address, table: holding | input,
         type: u16 | i16 | u32 | i32 | f32 | u64 | i64 | f64,
         word_order: big | little, byte_order: big | little, scale, offset,
         metric, unit}]}

Contract of :func:`load_config`: it returns an :class:`AgentConfig` or raises
:class:`~smartpark.errors.ConfigError` whose text reads ``file:line: field: reason``
(``agent.yaml:14: devices[0].registers[1].type: unknown value 'u23' (expected ...)``)
— for YAML syntax errors, duplicate keys, unknown keys (typos), wrong types, unknown
metrics, units that cannot be converted to the metric's unit, invalid ids and
unreadable password files. Nothing else is raised for a bad file.

A register's value is ``raw * scale + offset`` in the device's ``unit``; the agent
converts it to the catalogue unit with :func:`smartpark.catalogue.to_canonical`.
The broker password is read at load time from ``password_file`` or the environment
variable named by ``password_env`` and kept as a ``SecretStr``: it is never logged
and never part of ``model_dump()``.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from smartpark import wire
from smartpark.catalogue import METRICS, to_canonical
from smartpark.errors import ConfigError, PayloadError

RegisterType = Literal["u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64"]
Order = Literal["big", "little"]
# Modbus caps one read at 125 registers; a value never spans more than 4.
MAX_READ_REGISTERS = 125
REGISTER_WIDTH: dict[str, int] = {
    "u16": 1, "i16": 1, "u32": 2, "i32": 2, "f32": 2, "u64": 4, "i64": 4, "f64": 4,
}  # fmt: skip


def _located(reason: str, *at: str | int) -> PydanticCustomError:
    """A validation error that points ``at`` a node below the validated field.

    :func:`load_config` appends ``at`` to the error's location, so a duplicate in a
    list is reported on the line of the duplicate, not of the list.
    """
    return PydanticCustomError("smartpark", "{reason}", {"reason": reason, "at": at})


def _check_id(value: str) -> str:
    if not wire.valid_id(value):
        raise ValueError(
            f"invalid id {value!r}: 1-64 characters of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return value


class _Model(BaseModel):
    # extra="forbid": a typo'd key must fail loudly, not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Model):
    park: str
    enterprise: str

    @field_validator("park", "enterprise")
    @classmethod
    def _ids(cls, value: str) -> str:
        return _check_id(value)


class BrokerConfig(_Model):
    host: str
    port: int = Field(default=1883, ge=1, le=65535)
    client_id: str
    username: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    keepalive_s: int = Field(default=30, ge=5, le=3600)
    reconnect_min_s: int = Field(default=1, ge=1)
    reconnect_max_s: int = Field(default=60, ge=1)
    _password: SecretStr | None = PrivateAttr(default=None)

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, value: str) -> str:
        _check_id(value)
        if not wire.valid_id(f"agent.{value}"):
            raise ValueError(
                "at most 58 characters: the agent's status is published as device "
                "'agent.{client_id}'"
            )
        return value

    @field_validator("password_file")
    @classmethod
    def _password_path(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        return _resolve(value, info)

    @model_validator(mode="after")
    def _read_password(self) -> BrokerConfig:
        if self.password_file is not None and self.password_env is not None:
            raise _located(
                "give password_file or password_env, not both", "password_env"
            )
        if self.password_file is not None:
            try:
                secret = self.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise _located(
                    f"cannot read password file: {exc.strerror}", "password_file"
                ) from None
            self._password = SecretStr(secret)
        elif self.password_env is not None:
            env = os.environ.get(self.password_env)
            if env is None:
                raise _located(
                    f"environment variable {self.password_env} is not set",
                    "password_env",
                )
            self._password = SecretStr(env)
        return self

    @property
    def password(self) -> SecretStr | None:
        return self._password


class OutboxConfig(_Model):
    path: Path
    max_rows: int = Field(default=1_000_000, ge=1)
    max_age_s: float = Field(default=7 * 24 * 3600, gt=0)
    overflow: Literal["drop_oldest", "refuse_new"] = "drop_oldest"

    @field_validator("path")
    @classmethod
    def _path(cls, value: Path, info: ValidationInfo) -> Path:
        resolved = _resolve(value, info)
        assert resolved is not None
        return resolved


class PublishConfig(_Model):
    max_readings_per_message: int = Field(default=500, ge=1, le=wire.MAX_READINGS)
    max_in_flight: int = Field(default=20, ge=1, le=1000)


class RegisterConfig(_Model):
    address: int = Field(ge=0, le=65535)
    table: Literal["holding", "input"] = "holding"
    type: RegisterType
    word_order: Order = "big"
    byte_order: Order = "big"
    scale: float = 1.0
    offset: float = 0.0
    metric: str
    unit: str

    @property
    def width(self) -> int:
        """Registers this value occupies."""
        return REGISTER_WIDTH[self.type]

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        if value not in METRICS:
            near = difflib.get_close_matches(value, METRICS, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ValueError(f"unknown metric {value!r}{hint}")
        return value

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
            raise _located(
                f"a {self.type} at {self.address} runs past 65535", "address"
            )
        return self


class DeviceConfig(_Model):
    id: str
    protocol: Literal["modbus_tcp"]
    host: str
    port: int = Field(default=502, ge=1, le=65535)
    unit_id: int = Field(default=1, ge=0, le=255)
    poll_interval_s: float = Field(gt=0)
    timeout_s: float = Field(default=2.0, gt=0)
    # Failed polls back off exponentially from poll_interval_s up to this ceiling.
    max_backoff_s: float = Field(default=300.0, gt=0)
    registers: tuple[RegisterConfig, ...] = Field(min_length=1)

    @field_validator("id")
    @classmethod
    def _id(cls, value: str) -> str:
        return _check_id(value)

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
                raise _located(
                    f"metric {reg.metric!r} is already read by registers[{first}]",
                    i,
                    "metric",
                )
            seen[reg.metric] = i
        return value


class AgentConfig(_Model):
    site: SiteConfig
    broker: BrokerConfig
    outbox: OutboxConfig
    publish: PublishConfig = PublishConfig()
    devices: tuple[DeviceConfig, ...] = Field(min_length=1)

    @field_validator("devices")
    @classmethod
    def _unique_ids(cls, value: tuple[DeviceConfig, ...]) -> tuple[DeviceConfig, ...]:
        seen: set[str] = set()
        for i, dev in enumerate(value):
            if dev.id in seen:
                raise _located(f"duplicate device id {dev.id!r}", i, "id")
            seen.add(dev.id)
        return value

    @property
    def agent_id(self) -> str:
        """The device id under which the agent publishes its own status."""
        return f"agent.{self.broker.client_id}"


def _resolve(value: Path | None, info: ValidationInfo) -> Path | None:
    base = (info.context or {}).get("base_dir")
    if value is None or value.is_absolute() or base is None:
        return value
    return Path(base) / value


def parse_config(
    data: Any, *, source: str = "<config>", base_dir: Path | None = None
) -> AgentConfig:
    """Validate already-loaded data (e.g. built in Python); ConfigError without line."""
    return _validate(data, source, None, base_dir)


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate the YAML file at ``path`` (see the module contract)."""
    path = Path(path)
    name = path.name
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=str(path)) from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise ConfigError("the file is empty", file=name)
        _reject_duplicate_keys(node, name)
        data = loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        raise ConfigError(
            f"not valid YAML: {exc.problem}", file=name, line=line
        ) from None
    finally:
        loader.dispose()
    return _validate(data, name, node, path.resolve().parent)


def _validate(
    data: Any, source: str, node: yaml.Node | None, base_dir: Path | None
) -> AgentConfig:
    try:
        return AgentConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        errors = exc.errors()
        # A typo'd key also makes the intended key "missing": report the typo.
        err = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        loc = tuple(err["loc"]) + tuple(err.get("ctx", {}).get("at", ()))
        line = _line_of(node, loc, key=err["type"] == "extra_forbidden")
        field = _format_loc(loc)
        raise ConfigError(_reason(err), file=source, line=line, field=field) from None


def _reason(err: Any) -> str:
    kind, msg, value = err["type"], err["msg"], err.get("input")
    if kind == "extra_forbidden":
        return "unknown field (a typo?)"
    if kind == "missing":
        return "missing required field"
    if kind == "literal_error":
        return f"unknown value {value!r} (expected one of {err['ctx']['expected']})"
    if kind == "value_error":
        return str(msg).removeprefix("Value error, ")
    if kind == "smartpark":
        return str(msg)
    return f"{msg} (got {value!r})"


def _format_loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else part
    return out


def _line_of(
    node: yaml.Node | None, loc: Sequence[str | int], *, key: bool
) -> int | None:
    """1-based line of the YAML node at ``loc``, or of its deepest existing parent.

    ``key`` points at the key itself (an unknown field) rather than at its value.
    """
    if node is None:
        return None
    for depth, part in enumerate(loc):
        child: yaml.Node | None = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode) and k.value == str(part):
                    last = depth == len(loc) - 1
                    child = k if key and last else v
                    break
        elif (
            isinstance(node, yaml.SequenceNode)
            and isinstance(part, int)
            and 0 <= part < len(node.value)
        ):
            child = node.value[part]
        if child is None:
            break
        node = child
    return node.start_mark.line + 1


def _reject_duplicate_keys(node: yaml.Node, source: str) -> None:
    # PyYAML silently keeps the last of two equal keys; an engineer who pasted a
    # register twice would never learn which one is used.
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if isinstance(k, yaml.ScalarNode):
                if k.value in seen:
                    raise ConfigError(
                        f"duplicate key {k.value!r}",
                        file=source,
                        line=k.start_mark.line + 1,
                    )
                seen.add(k.value)
            _reject_duplicate_keys(v, source)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _reject_duplicate_keys(item, source)
