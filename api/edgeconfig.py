"""An enterprise's edge agent YAML from the registry, and the registry's devices
from an agent YAML (pure: no I/O).

:func:`export_config` writes the file for the enterprise's gateway: its site, a
broker placeholder, its Modbus devices and HJ 212 loggers as registered. What the
registry does not know (hosts, serial ports, register maps, unknown MNs or HJ 212
codes) becomes a placeholder value starting with ``FILL-IN``, listed in the
file's header; the file loads as it is (``smartpark edge check``), so the operator
can fill the placeholders in one at a time.

:func:`import_devices` reads the devices an agent YAML declares. ``api`` may not
import ``edge_agent`` (tests/unit/test_layers.py), so the file is read here by the
part the registry keeps (site, device ids, protocols, poll intervals, register
metrics, loggers' MNs and pollutant metrics), checked as the agent checks it;
the rest of the file (broker, outbox, register maps...) is the agent's business
and is not checked here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from smartpark import wire
from smartpark.catalogue import METRICS, check_metric
from storage.registry import DeviceRow, EnterpriseRow

PLACEHOLDER = "FILL-IN"
MEDIA_TYPES = ("application/yaml", "text/yaml", "application/x-yaml")
# What HJ 212 real-time data usually arrives at; the agent file does not say.
HJ212_INTERVAL_S = 60
# A gateway's file has hundreds of values, not millions.
MAX_NODES = 200_000
_CODE = re.compile(r"\b([aw]\d{5})\b")
_MN_FORBIDDEN = frozenset(";,=&")


def _hj212_code(metric: str) -> str | None:
    found = _CODE.search(METRICS[metric].description)
    return found.group(1) if found else None


def _pollutants(metrics: Sequence[str]) -> dict[str, dict[str, str]]:
    """HJ 212 code -> {metric, corrected}; unknown codes are placeholders."""
    out: dict[str, dict[str, str]] = {}
    for metric in metrics:
        base = metric.removesuffix("_corrected")
        corrected = base != metric
        if corrected and base in metrics:
            continue  # rides on its measured metric's code
        code = _hj212_code(base if base in METRICS else metric)
        if code is None or code in out:
            code = f"{PLACEHOLDER}-code-{metric}"
        entry = {"corrected": metric} if corrected else {"metric": metric}
        if not corrected and f"{metric}_corrected" in metrics:
            entry["corrected"] = f"{metric}_corrected"
        out[code] = entry
    return out


def _registers(metrics: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"address": 2 * i, "table": "holding", "type": "f32",
         "metric": m, "unit": METRICS[m].unit}
        for i, m in enumerate(metrics)
    ]  # fmt: skip


def export_config(
    ent: EnterpriseRow, devices: Sequence[DeviceRow], *, timezone: str | None
) -> str:
    """The agent YAML of ``ent``'s gateway with ``devices`` (its active ones;
    at least one). ``timezone``: the park's, for the HJ 212 loggers' clocks."""
    doc: dict[str, Any] = {
        "site": {"park": ent.park, "enterprise": ent.id},
        "broker": {
            "host": f"{PLACEHOLDER}-broker-host",
            "port": 1883,
            "client_id": f"edge-{ent.id}"[:58],
            "keepalive_s": 30,
        },
        "outbox": {"path": "/var/lib/smartpark/outbox.db", "max_rows": 1_000_000,
                   "max_age_s": 604800, "overflow": "drop_oldest"},
    }  # fmt: skip
    lines: list[dict[str, Any]] = []
    modbus: list[dict[str, Any]] = []
    loggers: list[dict[str, Any]] = []
    rtu = 0
    for dev in devices:
        if dev.protocol == "hj212":
            logger: dict[str, Any] = {
                "mn": dev.mn or f"{PLACEHOLDER}-MN-{len(loggers) + 1}",
                "device": dev.id,
            }
            if timezone is not None:
                logger["timezone"] = timezone
            logger["pollutants"] = _pollutants(dev.metrics)
            loggers.append(logger)
            continue
        entry: dict[str, Any] = {"id": dev.id, "protocol": dev.protocol}
        if dev.protocol == "modbus_rtu":
            line, unit = divmod(rtu, 247)
            rtu += 1
            name = f"line-{line + 1}"
            if unit == 0:
                port = f"/dev/{PLACEHOLDER}-serial-port-{line + 1}"
                lines.append({"id": name, "port": port})
            entry.update(line=name, unit_id=unit + 1)
        else:
            entry.update(host=f"{PLACEHOLDER}-host-of-{dev.id}", port=502, unit_id=1)
        entry["poll_interval_s"] = dev.interval_s
        entry["registers"] = _registers(dev.metrics)
        modbus.append(entry)
    if lines:
        doc["serial_lines"] = lines
    if modbus:
        doc["devices"] = modbus
    if loggers:
        # the loggers connect from the plant network
        listen = "0.0.0.0"  # noqa: S104
        doc["hj212"] = {"host": listen, "port": 9001, "loggers": loggers}
    header = (
        f"# Edge agent configuration of enterprise {ent.id} (park {ent.park}),\n"
        "# exported from the smartpark registry.\n"
        f"# Every value starting with {PLACEHOLDER} is a placeholder the registry\n"
        "# does not know: the broker host, Modbus hosts and serial ports, HJ 212 MNs,\n"
        "# pollutant codes. The Modbus register maps are placeholders too: one f32 at\n"
        "# address 0, 2, 4... per registered metric, in the catalogue unit; replace\n"
        "# address, table, type, scale and unit with the meter's own register map.\n"
        "# MQTT credentials: add broker.username and broker.password_env (or\n"
        "# password_file). Check the file with: smartpark edge check --config FILE\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


# -- import ---------------------------------------------------------------------------


class _Loose(BaseModel):
    # The rest of the agent's sections and fields are the agent's to check.
    model_config = ConfigDict(extra="ignore")


def _check_id(value: str) -> str:
    if not wire.valid_id(value):
        raise ValueError(
            f"invalid id {value!r}: 1-64 characters of A-Z a-z 0-9 _ . : -, "
            "starting with a letter or digit"
        )
    return value


class _Site(_Loose):
    park: str
    enterprise: str

    _ids = field_validator("park", "enterprise")(_check_id)


class _Register(_Loose):
    metric: str

    _metric = field_validator("metric")(check_metric)


class _Device(_Loose):
    id: str
    protocol: Literal["modbus_tcp", "modbus_rtu", "modbus_rtu_tcp"]
    poll_interval_s: float = Field(gt=0, allow_inf_nan=False)
    registers: list[_Register] = Field(min_length=1)

    _id = field_validator("id")(_check_id)


class _Pollutant(_Loose):
    metric: str | None = None
    corrected: str | None = None

    @field_validator("metric", "corrected")
    @classmethod
    def _metric(cls, value: str | None) -> str | None:
        return None if value is None else check_metric(value)


class _Logger(_Loose):
    mn: str = Field(min_length=1, max_length=24)
    device: str
    pollutants: dict[str, _Pollutant] = Field(min_length=1)

    _id = field_validator("device")(_check_id)

    @field_validator("mn", mode="before")
    @classmethod
    def _mn(cls, value: Any) -> Any:
        if isinstance(value, str) and (
            _MN_FORBIDDEN & set(value) or not value.isprintable() or " " in value
        ):
            raise ValueError(f"MN {value!r} may not contain ; , = & or spaces")
        return value


class _Hj212(_Loose):
    loggers: list[_Logger] = Field(min_length=1)


class AgentFile(_Loose):
    site: _Site
    devices: list[_Device] = []
    hj212: _Hj212 | None = None


class NotAnAgentFile(ValueError):
    """The file cannot be imported; ``field`` names where (``body.site.park``)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _loc(parts: Sequence[int | str]) -> str:
    out = "body"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def _bounded(data: Any, cap: int = MAX_NODES) -> None:
    """Refuse a file whose YAML aliases expand past ``cap`` values (a few
    hundred bytes of nested aliases can expand to billions)."""
    stack, seen = [data], 0
    while stack:
        item = stack.pop()
        seen += 1
        if seen > cap:
            raise NotAnAgentFile(
                "body", f"more than {cap} values once its aliases are expanded"
            )
        if isinstance(item, dict):
            stack.extend(item.values())
            stack.extend(item.keys())
        elif isinstance(item, list):
            stack.extend(item)


def parse_agent_file(text: bytes) -> AgentFile:
    """The file's registry part, or :class:`NotAnAgentFile` naming the field."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise NotAnAgentFile("body", f"not valid YAML{where}: {exc.problem}") from None
    except yaml.YAMLError as exc:
        raise NotAnAgentFile("body", f"not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise NotAnAgentFile("body", "not an agent configuration (a YAML mapping)")
    _bounded(data)
    try:
        parsed = AgentFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        reason = str(err["msg"]).removeprefix("Value error, ")
        raise NotAnAgentFile(_loc(err["loc"]), reason) from None
    if not parsed.devices and parsed.hj212 is None:
        raise NotAnAgentFile("body.devices", "give at least one device or hj212 logger")
    seen: dict[str, str] = {}
    for at, dev_id in [
        *((f"body.devices[{i}].id", d.id) for i, d in enumerate(parsed.devices)),
        *((f"body.hj212.loggers[{i}].device", lg.device)
          for i, lg in enumerate(parsed.hj212.loggers if parsed.hj212 else ())),
    ]:  # fmt: skip
        if dev_id in seen:
            raise NotAnAgentFile(at, f"device id {dev_id!r} is already {seen[dev_id]}")
        seen[dev_id] = at.removeprefix("body.")
    return parsed


def import_devices(parsed: AgentFile) -> list[tuple[str, dict[str, Any]]]:
    """(where in the file, registry values) of every device the file declares.

    RTU over TCP is registered as ``modbus_rtu``; an HJ 212 logger's device
    carries its MN and no interval (a new one gets :data:`HJ212_INTERVAL_S`)."""
    out: list[tuple[str, dict[str, Any]]] = []
    for i, dev in enumerate(parsed.devices):
        out.append((f"body.devices[{i}]", {
            "id": dev.id,
            "protocol": "modbus_tcp" if dev.protocol == "modbus_tcp" else "modbus_rtu",
            "interval_s": max(1, math.ceil(dev.poll_interval_s)),
            "metrics": list(dict.fromkeys(r.metric for r in dev.registers)),
            "mn": None,
        }))  # fmt: skip
    for i, lg in enumerate(parsed.hj212.loggers if parsed.hj212 else ()):
        metrics: list[str] = []
        for p in lg.pollutants.values():
            metrics += [m for m in (p.metric, p.corrected) if m and m not in metrics]
        # An MN left a placeholder (as exported) is not the logger's MN.
        mn = None if lg.mn.startswith(PLACEHOLDER) else lg.mn
        out.append((f"body.hj212.loggers[{i}]", {
            "id": lg.device, "protocol": "hj212", "metrics": metrics, "mn": mn,
        }))  # fmt: skip
    return out
