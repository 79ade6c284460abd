"""The telemetry wire format (schema version 1), shared by edge, bridge and sink.

A batch is the readings of one device, published as JSON on
``sp/v1/{park}/{enterprise}/{device}/telemetry`` and carried unchanged (after
validation) as the value of a Kafka record keyed by enterprise::

    {"v": 1, "park": "p1", "enterprise": "e1", "device": "d1",
     "readings": [{"seq": 7, "metric": "active_energy", "value": 1234.5,
                   "unit": "kWh", "ts_ms": 1767225600000, "q": "N"}]}

``seq`` is the device's sequence number of the poll that produced the reading: it
grows by one per poll, and all readings of one poll share it, so a gap or a
duplicate is visible end to end by (device, seq, metric). ``q`` is the HJ 212 data
flag. ``ts_ms`` is the event time in UTC milliseconds.

``reset`` (optional, counter metrics only) marks a discontinuity of a cumulative
counter: this reading does not continue from the device's previous reading of the
metric, so the step across it is *not* ``value - previous``. ``"rollover"``: the
register wrapped past its range (or the meter's display limit); ``"replacement"``:
the counter went backwards for another reason (a new or reset meter). Absent means
the reading continues the series. The edge agent sets it
(:mod:`edge_agent.counters`); a gauge carrying it, or any other value, is refused.
The key was added within schema version 1: a payload without it is unchanged, and a
platform older than the key dead-letters a batch that carries it, so the bridge and
sink are upgraded before the agents.

``epoch`` (optional, on the batch) names the edge outbox the sequence numbers come
from (16 hex digits). A replaced or deleted outbox starts again at ``seq`` 1 under a
new epoch, so (device, epoch, seq) identifies a poll for good. It was added within
schema version 1 the same way as ``reset``.

``dt`` (optional, on a reading) is the HJ 212 data type of the series the reading
belongs to: ``"minute"``, ``"hour"`` or ``"day"`` for a logger's interval data (CN
2051, 2061, 2031; ``ts_ms`` is the interval's start), absent (or ``"realtime"``)
for real-time data (CN 2011) and every meter reading. ``stat`` (optional, interval
data only) says which of the interval's values it is: absent (or ``"value"``) for
the interval's mean (``-Avg``), ``"min"``, ``"max"``, or ``"cou"`` for the
interval's total (``-Cou``: emitted mass or volume, in the metric's ``total_unit``
from the catalogue, e.g. kg for a concentration). A reading's series is (device,
metric, dt, stat): two series never mix, in a window or in storage. Both keys were
added within schema version 1 the same way as ``reset``; a batch without them is
real-time data, as it always was.

**Gateway messages (schema version 2).** One edge agent reads all the devices of
its enterprise; sending each device's poll as its own message makes the per-message
costs (the broker's, the bridge's, Kafka's per record) the platform's ceiling long
before its per-reading costs are. A version 2 message carries the polls of several
devices of one enterprise, published on
``sp/v1/{park}/{enterprise}/{gateway}/telemetry`` (the topic's third id names the
sending agent, ``agent.{client_id}``, not a device) and carried unchanged as one
Kafka record::

    {"v": 2, "park": "p1", "enterprise": "e1", "gateway": "agent.e1",
     "devices": [{"device": "d1", "epoch": "…", "readings": [...]},
                 {"device": "d2", "readings": [...]}]}

Each entry of ``devices`` is a version 1 batch without ``v``, ``park`` and
``enterprise`` (the same keys, the same checks, ``epoch`` optional); a device
appears at most once, and the readings of all devices together are at most
:data:`MAX_READINGS`. :func:`decode_message` reads both versions. A platform
older than version 2 refuses such a message as an unsupported version (a dead
letter naming ``v``), so the bridge, sink and rules runner are upgraded before any
agent sends version 2.

:func:`decode_batch` is strict: every way a payload can be wrong raises
:class:`PayloadError` naming the field path and the reason. It imports nothing but
the standard library, so it is cheap on the hot path.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

from smartpark.catalogue import METRICS, Kind
from smartpark.errors import PayloadError, UnsupportedVersion

SCHEMA_VERSION = 1
GATEWAY_VERSION = 2  # several devices of one enterprise in one message
TOPIC_ROOT = "sp/v1"
# About 110 bytes a reading: 5 000 keep a batch well under Kafka's default 1 MB record
# limit, which a record must fit or the bridge could not forward it.
MAX_READINGS = 5_000
# Beyond this the clock of the device or the agent is wrong; refusing is safer than
# storing a reading in the future where it would distort every window.
DEFAULT_MAX_FUTURE_MS = 5 * 60 * 1000
# 2000-01-01: anything earlier is a meter with an unset clock.
MIN_TS_MS = 946_684_800_000
_MAX_SEQ = 2**63 - 1
# Integers beyond this do not fit a double (float() would raise OverflowError).
_MAX_FLOAT_INT = 2**1023
_EPOCH_RE = re.compile(r"^[0-9a-f]{16}$")
_EPOCH_MATCH = _EPOCH_RE.fullmatch
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
_ID_MATCH = _ID_RE.fullmatch  # match() would take a trailing newline
_BATCH_KEYS = frozenset({"v", "park", "enterprise", "device", "epoch", "readings"})
_GATEWAY_KEYS = frozenset({"v", "park", "enterprise", "gateway", "devices"})
_DEVICE_KEYS = frozenset({"device", "epoch", "readings"})


class Quality(StrEnum):
    """HJ 212-2017 data flags."""

    NORMAL = "N"
    STOPPED = "F"
    MAINTENANCE = "M"
    MANUAL = "S"
    FAULT = "D"
    CALIBRATION = "C"
    OVER_RANGE = "T"
    COMMS_FAULT = "B"


_QUALITIES = frozenset(q.value for q in Quality)


class Reset(StrEnum):
    """Why a counter reading does not continue from the previous one (``reset``)."""

    ROLLOVER = "rollover"
    REPLACEMENT = "replacement"


_RESETS = frozenset(r.value for r in Reset)


class DataType(StrEnum):
    """The HJ 212 data type of a series (``dt`` on the wire)."""

    REALTIME = "realtime"
    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"


class Stat(StrEnum):
    """Which value of an interval a reading is (``stat`` on the wire)."""

    VALUE = "value"  # real-time: the value; interval: the mean (-Avg)
    MIN = "min"
    MAX = "max"
    TOTAL = "cou"  # the interval's total (-Cou), in the metric's total unit


_DATA_TYPES = frozenset(d.value for d in DataType)
_STATS = frozenset(s.value for s in Stat)
_REALTIME = DataType.REALTIME.value
_VALUE = Stat.VALUE.value


class Reading(NamedTuple):
    """One reading; a named tuple because the bridge and the sink make millions."""

    seq: int
    metric: str
    value: float
    unit: str
    ts_ms: int
    quality: str = Quality.NORMAL.value
    reset: str | None = None  # a Reset value; only on counter metrics
    data_type: str = DataType.REALTIME.value  # a DataType value (``dt``)
    stat: str = Stat.VALUE.value  # a Stat value; not VALUE only on interval data


@dataclass(frozen=True, slots=True)
class TelemetryBatch:
    park: str
    enterprise: str
    device: str
    readings: tuple[Reading, ...]
    epoch: str | None = None  # the edge outbox's epoch (see the module doc)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "v": SCHEMA_VERSION,
            "park": self.park,
            "enterprise": self.enterprise,
            "device": self.device,
        }
        if self.epoch is not None:
            out["epoch"] = self.epoch
        out["readings"] = [_reading_json(r) for r in self.readings]
        return out


@dataclass(frozen=True, slots=True)
class GatewayBatch:
    """Polls of several devices of one enterprise, sent by one agent (version 2)."""

    park: str
    enterprise: str
    gateway: str  # the sending agent, the topic's third id
    batches: tuple[TelemetryBatch, ...]  # one a device, of this park and enterprise

    def to_json(self) -> dict[str, Any]:
        devices = []
        for b in self.batches:
            if (b.park, b.enterprise) != (self.park, self.enterprise):
                raise ValueError(
                    f"device {b.device} of {b.park}/{b.enterprise} in a gateway"
                    f" message of {self.park}/{self.enterprise}"
                )
            device: dict[str, Any] = {"device": b.device}
            if b.epoch is not None:
                device["epoch"] = b.epoch
            device["readings"] = [_reading_json(r) for r in b.readings]
            devices.append(device)
        return {
            "v": GATEWAY_VERSION,
            "park": self.park,
            "enterprise": self.enterprise,
            "gateway": self.gateway,
            "devices": devices,
        }


def encode_gateway(batch: GatewayBatch) -> bytes:
    return json.dumps(batch.to_json(), separators=(",", ":"), allow_nan=False).encode()


class Decoded(NamedTuple):
    """A decoded telemetry message of either version."""

    park: str
    enterprise: str
    sender: str  # the device (version 1) or the gateway (version 2): the topic's id
    batches: tuple[TelemetryBatch, ...]  # one a device
    version: int = SCHEMA_VERSION

    @property
    def readings(self) -> int:
        return sum(len(b.readings) for b in self.batches)


def _reading_json(r: Reading) -> dict[str, Any]:
    out: dict[str, Any] = {
        "seq": r.seq,
        "metric": r.metric,
        "value": r.value,
        "unit": r.unit,
        "ts_ms": r.ts_ms,
        "q": r.quality,
    }
    if r.reset is not None:
        out["reset"] = r.reset
    if r.data_type != _REALTIME:
        out["dt"] = r.data_type
    if r.stat != _VALUE:
        out["stat"] = r.stat
    return out


def encode_batch(batch: TelemetryBatch) -> bytes:
    return json.dumps(batch.to_json(), separators=(",", ":"), allow_nan=False).encode()


def valid_id(value: str) -> bool:
    """Park, enterprise and device ids: 1 to 64 of ``A-Za-z0-9_.:-``, no wildcards."""
    return _ID_MATCH(value) is not None


def telemetry_topic(park: str, enterprise: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{park}/{enterprise}/{device}/telemetry"


def status_topic(park: str, enterprise: str, device: str) -> str:
    return f"{TOPIC_ROOT}/{park}/{enterprise}/{device}/status"


# The platform's clock: the bridge publishes {"ts_ms": ...} here (QoS 0, not
# retained) every few seconds, so edge agents can check their own clocks.
CLOCK_TOPIC = f"{TOPIC_ROOT}/clock"


def encode_clock(ts_ms: int) -> bytes:
    return json.dumps({"ts_ms": ts_ms}, separators=(",", ":")).encode()


def decode_clock(payload: bytes) -> int:
    """The platform time of a clock beacon; :class:`PayloadError` if malformed."""
    try:
        doc = json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("", f"not JSON: {exc}") from None
    ts = doc.get("ts_ms") if isinstance(doc, dict) else None
    if not isinstance(ts, int) or isinstance(ts, bool) or ts < MIN_TS_MS:
        raise PayloadError("ts_ms", f"expected integer milliseconds, got {ts!r}")
    return ts


def parse_topic(topic: str) -> tuple[str, str, str, str]:
    """``(park, enterprise, device, channel)`` of a device topic, else PayloadError."""
    parts = topic.split("/")
    if len(parts) != 6 or f"{parts[0]}/{parts[1]}" != TOPIC_ROOT:
        raise PayloadError("topic", f"not a device topic: {topic!r}")
    _, _, park, enterprise, device, channel = parts
    for name, value in (("park", park), ("enterprise", enterprise), ("device", device)):
        if not valid_id(value):
            raise PayloadError("topic", f"invalid {name} id {value!r} in {topic!r}")
    return park, enterprise, device, channel


def _need(obj: dict[str, Any], key: str, path: str) -> Any:
    try:
        return obj[key]
    except KeyError:
        raise PayloadError(f"{path}{key}", "missing") from None


def _load(data: bytes | str, loads: Callable[[bytes | str], Any]) -> dict[str, Any]:
    try:
        obj = loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError("", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def decode_batch(
    data: bytes | str,
    *,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    loads: Callable[[bytes | str], Any] = json.loads,
) -> TelemetryBatch:
    """Parse and validate one telemetry batch (version 1: one device).

    ``now_ms`` is the receiver's clock (injected, so replay and tests are
    deterministic); readings more than ``max_future_ms`` ahead of it are refused.
    Raises :class:`UnsupportedVersion` for an unknown ``v`` and :class:`PayloadError`
    for anything else; never any other exception. ``loads`` lets the platform's hot
    paths use a faster JSON parser (orjson); it must raise ``ValueError`` on bad
    input, as ``json.loads`` does.
    """
    obj = _load(data, loads)
    version = obj.get("v")
    if version != SCHEMA_VERSION:
        raise UnsupportedVersion("v", f"unsupported schema version {version!r}")
    return _device_batch(obj, now_ms + max_future_ms)


def decode_message(
    data: bytes | str,
    *,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    loads: Callable[[bytes | str], Any] = json.loads,
) -> Decoded:
    """Parse and validate a telemetry message of version 1 or 2 (a gateway's), as
    :func:`decode_batch` does (same arguments, same errors)."""
    obj = _load(data, loads)
    version = obj.get("v")
    latest = now_ms + max_future_ms
    if version == SCHEMA_VERSION:
        batch = _device_batch(obj, latest)
        return Decoded(batch.park, batch.enterprise, batch.device, (batch,))
    if version == GATEWAY_VERSION:
        return _gateway(obj, latest)
    raise UnsupportedVersion("v", f"unsupported schema version {version!r}")


def _device_batch(obj: dict[str, Any], latest: int) -> TelemetryBatch:
    park = _id_at(obj, "park", "")
    enterprise = _id_at(obj, "enterprise", "")
    device = _id_at(obj, "device", "")
    raw = _need(obj, "readings", "")
    if isinstance(raw, list) and len(raw) > MAX_READINGS:
        raise PayloadError("readings", f"{len(raw)} readings, limit {MAX_READINGS}")
    # Five keys are required; with six, the sixth must be "epoch".
    size = len(obj)
    if size != 5 and (size != 6 or "epoch" not in obj):
        unknown = obj.keys() - _BATCH_KEYS
        if unknown:
            raise PayloadError(sorted(unknown)[0], "unknown field")
    epoch = _epoch(obj, "")
    return TelemetryBatch(park, enterprise, device, _readings(raw, "", latest), epoch)


def _gateway(obj: dict[str, Any], latest: int) -> Decoded:
    park = _id_at(obj, "park", "")
    enterprise = _id_at(obj, "enterprise", "")
    gateway = _id_at(obj, "gateway", "")
    unknown = obj.keys() - _GATEWAY_KEYS
    if unknown:
        raise PayloadError(sorted(unknown)[0], "unknown field")
    devices = _need(obj, "devices", "")
    if not isinstance(devices, list) or not devices:
        raise PayloadError("devices", "expected a non-empty list")
    total = sum(
        len(d["readings"])
        for d in devices
        if type(d) is dict and type(d.get("readings")) is list
    )
    if total > MAX_READINGS:
        raise PayloadError("devices", f"{total} readings, limit {MAX_READINGS}")
    batches = []
    seen: set[str] = set()
    for i, d in enumerate(devices):
        path = f"devices[{i}]."
        if type(d) is not dict:
            raise PayloadError(path.rstrip("."), "expected an object")
        device = _id_at(d, "device", path)
        if device in seen:
            raise PayloadError(f"{path}device", f"device {device!r} appears twice")
        seen.add(device)
        unknown = d.keys() - _DEVICE_KEYS
        if unknown:
            raise PayloadError(f"{path}{sorted(unknown)[0]}", "unknown field")
        raw = _need(d, "readings", path)
        readings = _readings(raw, path, latest)
        batches.append(
            TelemetryBatch(park, enterprise, device, readings, _epoch(d, path))
        )
    return Decoded(park, enterprise, gateway, tuple(batches), GATEWAY_VERSION)


def _id_at(obj: dict[str, Any], key: str, path: str) -> str:
    value = obj.get(key)
    if type(value) is not str or _ID_MATCH(value) is None:
        if key not in obj:
            raise PayloadError(f"{path}{key}", "missing")
        raise PayloadError(f"{path}{key}", f"invalid id {value!r}")
    return value


def _epoch(obj: dict[str, Any], path: str) -> str | None:
    epoch = obj.get("epoch")
    if epoch is not None and (
        not isinstance(epoch, str) or _EPOCH_MATCH(epoch) is None
    ):
        raise PayloadError(f"{path}epoch", f"expected 16 hex digits, got {epoch!r}")
    return epoch


def _readings(raw: Any, path: str, latest: int) -> tuple[Reading, ...]:
    """A device's readings (``raw`` under ``path``), validated."""
    if not isinstance(raw, list) or not raw:
        raise PayloadError(f"{path}readings", "expected a non-empty list")
    readings = _valid_readings(raw, latest)
    if readings is None:  # one of them is wrong: say which and why
        seen: set[tuple[int, str, str, str]] = set()
        checked = []
        for i, r in enumerate(raw):
            reading = _reading(r, f"{path}readings[{i}].", latest, seen)
            seen.add((reading.seq, reading.metric, reading.data_type, reading.stat))
            checked.append(reading)
        readings = tuple(checked)
    return readings


_UNIT_OF = {name: m.unit for name, m in METRICS.items()}
_TOTAL_UNIT_OF = {name: m.total_unit for name, m in METRICS.items() if m.total_unit}
_COUNTERS = frozenset(name for name, m in METRICS.items() if m.kind is Kind.COUNTER)
_READING_KEYS = frozenset(
    {"seq", "metric", "value", "unit", "ts_ms", "q", "reset", "dt", "stat"}
)


_new_reading = tuple.__new__  # Reading(...) without its Python-level __new__


def _valid_readings(raw: list[Any], latest_ms: int) -> tuple[Reading, ...] | None:
    """The readings if every one of ``raw`` is valid, else None (then the caller
    looks at them one by one to say which is wrong and why).

    The hot path of the bridge and the sink: the checks of :func:`_reading`, in
    one loop over the batch, no error messages built.
    """
    seen: set[tuple[int, str, str, str]] = set()
    seen_add = seen.add
    out: list[Reading] = []
    append = out.append
    unit_of, qualities = _UNIT_OF, _QUALITIES
    for r in raw:
        if type(r) is not dict:
            return None
        size = len(r)
        reset = None
        data_type, stat, units = _REALTIME, _VALUE, unit_of
        if size != 6 or "q" not in r:
            if size == 5:
                pass
            else:
                reset = r.get("reset")
                data_type = r.get("dt", _REALTIME)
                stat = r.get("stat", _VALUE)
                optional = (
                    ("q" in r) + (reset is not None) + ("dt" in r) + ("stat" in r)
                )
                if size != 5 + optional:
                    return None
                if type(data_type) is not str or data_type not in _DATA_TYPES:
                    return None
                if type(stat) is not str or stat not in _STATS:
                    return None
                if stat != _VALUE:
                    if data_type == _REALTIME:
                        return None
                    if stat == "cou":
                        units = _TOTAL_UNIT_OF
        try:
            seq = r["seq"]
            name = r["metric"]
            value = r["value"]
            unit = r["unit"]
            ts_ms = r["ts_ms"]
        except KeyError:
            return None
        quality = r.get("q", "N")
        # An unknown metric's unit is (), equal to no JSON value (None is null);
        # a name that is not a str is not a key of units either (a list would not
        # hash: checked first).
        if (
            type(name) is not str
            or units.get(name, ()) != unit
            or type(seq) is not int
            or not 0 <= seq <= _MAX_SEQ
            or type(ts_ms) is not int
            or not MIN_TS_MS <= ts_ms <= latest_ms
            or type(quality) is not str
            or quality not in qualities
        ):
            return None
        if reset is not None and (
            type(reset) is not str or reset not in _RESETS or name not in _COUNTERS
        ):
            return None
        value_type = type(value)
        if value_type is float:
            if not math.isfinite(value):
                return None
        elif value_type is int and -_MAX_FLOAT_INT <= value <= _MAX_FLOAT_INT:
            value = float(value)
        else:
            return None
        n = len(seen)
        seen_add((seq, name, data_type, stat))
        if len(seen) == n:
            return None  # a duplicate
        append(
            _new_reading(
                Reading,
                (seq, name, value, unit, ts_ms, quality, reset, data_type, stat),
            )
        )
    return tuple(out)


def _reading(
    r: Any, path: str, latest_ms: int, seen: set[tuple[int, str, str, str]]
) -> Reading:
    if not isinstance(r, dict):
        raise PayloadError(path.rstrip("."), "expected an object")
    seq = _need(r, "seq", path)
    if type(seq) is not int or not 0 <= seq <= _MAX_SEQ:
        raise PayloadError(
            f"{path}seq", f"expected a non-negative integer, got {seq!r}"
        )
    name = _need(r, "metric", path)
    m = METRICS.get(name) if isinstance(name, str) else None
    if m is None:
        raise PayloadError(f"{path}metric", f"unknown metric {name!r}")
    value = _need(r, "value", path)
    if type(value) is int:
        if not -_MAX_FLOAT_INT <= value <= _MAX_FLOAT_INT:
            raise PayloadError(f"{path}value", f"integer {value} is out of range")
        value = float(value)
    elif type(value) is not float:
        raise PayloadError(f"{path}value", f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise PayloadError(f"{path}value", f"non-finite value {value!r}")
    data_type, stat = _series_tags(r, path)
    unit = _need(r, "unit", path)
    if stat == Stat.TOTAL.value:
        if m.total_unit is None:
            raise PayloadError(f"{path}stat", f"{name} has no interval total")
        if unit != m.total_unit:
            raise PayloadError(
                f"{path}unit",
                f"the total of {name} is in {m.total_unit!r}, got {unit!r}",
            )
    elif unit != m.unit:
        raise PayloadError(f"{path}unit", f"{name} is in {m.unit!r}, got {unit!r}")
    ts_ms = _need(r, "ts_ms", path)
    if type(ts_ms) is not int:
        raise PayloadError(f"{path}ts_ms", f"expected integer ms, got {ts_ms!r}")
    if ts_ms < MIN_TS_MS:
        raise PayloadError(f"{path}ts_ms", f"{ts_ms} is before 2000-01-01")
    if ts_ms > latest_ms:
        raise PayloadError(
            f"{path}ts_ms",
            f"{ts_ms} is {ts_ms - latest_ms} ms beyond the allowed future",
        )
    quality = r.get("q", "N")
    if not isinstance(quality, str) or quality not in _QUALITIES:
        raise PayloadError(f"{path}q", f"unknown quality flag {quality!r}")
    reset = r.get("reset")
    if "reset" in r:
        if not isinstance(reset, str) or reset not in _RESETS:
            raise PayloadError(
                f"{path}reset",
                f"expected 'rollover' or 'replacement' (or no key), got {reset!r}",
            )
        if m.kind is not Kind.COUNTER:
            raise PayloadError(
                f"{path}reset", f"{name} is a {m.kind.value}: only counters reset"
            )
    extra = r.keys() - _READING_KEYS
    if extra:
        raise PayloadError(f"{path}{sorted(extra)[0]}", "unknown field")
    if (seq, name, data_type, stat) in seen:
        raise PayloadError(
            f"{path}seq",
            f"duplicate reading seq={seq} metric={name} dt={data_type} stat={stat}",
        )
    return Reading(seq, name, value, unit, ts_ms, quality, reset, data_type, stat)


def _series_tags(r: dict[str, Any], path: str) -> tuple[str, str]:
    """``(dt, stat)`` of a reading, defaults applied (see the module doc)."""
    data_type = r.get("dt", _REALTIME)
    if not isinstance(data_type, str) or data_type not in _DATA_TYPES:
        raise PayloadError(
            f"{path}dt",
            f"expected one of {sorted(_DATA_TYPES)} (or no key), got {data_type!r}",
        )
    stat = r.get("stat", _VALUE)
    if not isinstance(stat, str) or stat not in _STATS:
        raise PayloadError(
            f"{path}stat", f"expected one of {sorted(_STATS)} (or no key), got {stat!r}"
        )
    if stat != _VALUE and data_type == _REALTIME:
        raise PayloadError(
            f"{path}stat", f"{stat!r} needs interval data (dt minute, hour or day)"
        )
    return data_type, stat


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """Retained device status (``.../status``), also the agent's last will."""

    online: bool
    ts_ms: int
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "v": SCHEMA_VERSION,
            "online": self.online,
            "ts_ms": self.ts_ms,
            "reason": self.reason,
        }

    def encode(self) -> bytes:
        return json.dumps(self.to_json(), separators=(",", ":")).encode()


def decode_status(data: bytes | str) -> DeviceStatus:
    """Parse a device status message; :class:`PayloadError` if it is invalid."""
    try:
        obj = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PayloadError("", f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise PayloadError("", f"expected a JSON object, got {type(obj).__name__}")
    if obj.get("v") != SCHEMA_VERSION:
        raise UnsupportedVersion("v", f"unsupported schema version {obj.get('v')!r}")
    online = _need(obj, "online", "")
    if type(online) is not bool:
        raise PayloadError("online", f"expected true or false, got {online!r}")
    ts_ms = _need(obj, "ts_ms", "")
    if type(ts_ms) is not int or ts_ms < MIN_TS_MS:
        raise PayloadError("ts_ms", f"expected integer ms after 2000, got {ts_ms!r}")
    reason = obj.get("reason", "")
    if not isinstance(reason, str):
        raise PayloadError("reason", f"expected a string, got {reason!r}")
    return DeviceStatus(online, ts_ms, reason)
