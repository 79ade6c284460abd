"""The fast path of :func:`smartpark.wire.decode_message` for valid messages.

The bridge, the sink and the rules runner decode every telemetry message. Parsing
the JSON into dicts (orjson) and then checking every field of every reading in
Python cost about 1.4 µs a reading, more than half of the sink's own work and
as much as PostgreSQL's share of a raw COPY of the rows. Here msgspec parses
the JSON straight into typed structs, checking the shape (the keys, their types,
no unknown key) in C, and a loop checks what depends on values (ids, catalogue
units, time bounds, duplicates).

The contract is :func:`smartpark.wire.decode_message`'s, exactly: :func:`decode`
returns what it returns for a message both accept, and a message this path does
not accept (any error, or a spelling the typed structs do not take, such as
``"v": 1.0``) is handed to ``decode_message`` with the same arguments, which
accepts it or says where and why it is wrong. So the fast path only ever decides
"valid, and this is the result"; every error message still comes from
``smartpark.wire``. ``tests/unit/test_wire_fast.py`` checks the two against each
other on generated and mutated messages.

msgspec is a parser, like the standard library's ``json``: no I/O.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

import msgspec

from smartpark.wire import (
    _COUNTERS,
    _DATA_TYPES,
    _EPOCH_MATCH,
    _ID_MATCH,
    _MAX_FLOAT_INT,
    _MAX_SEQ,
    _QUALITIES,
    _REALTIME,
    _RESETS,
    _STATS,
    _TOTAL_UNIT_OF,
    _UNIT_OF,
    _VALUE,
    DEFAULT_MAX_FUTURE_MS,
    GATEWAY_VERSION,
    MAX_READINGS,
    MIN_TS_MS,
    SCHEMA_VERSION,
    Decoded,
    Reading,
    TelemetryBatch,
    _new_reading,
    decode_message,
)


class _Reading(msgspec.Struct, forbid_unknown_fields=True):
    seq: int
    metric: str
    value: int | float
    unit: str
    ts_ms: int
    q: str = "N"
    # UNSET, not None: an explicit null is refused, as decode_message does
    reset: str | msgspec.UnsetType = msgspec.UNSET
    dt: str = _REALTIME
    stat: str = _VALUE


class _Device(msgspec.Struct, forbid_unknown_fields=True):
    device: str
    readings: list[_Reading]
    epoch: str | None = None


class _Batch(
    msgspec.Struct, tag_field="v", tag=SCHEMA_VERSION, forbid_unknown_fields=True
):
    park: str
    enterprise: str
    device: str
    readings: list[_Reading]
    epoch: str | None = None


class _Gateway(
    msgspec.Struct, tag_field="v", tag=GATEWAY_VERSION, forbid_unknown_fields=True
):
    park: str
    enterprise: str
    gateway: str
    devices: list[_Device]


_decode_json = msgspec.json.Decoder(_Batch | _Gateway).decode


def decode(
    data: bytes | str,
    *,
    now_ms: int,
    max_future_ms: int = DEFAULT_MAX_FUTURE_MS,
    loads: Callable[[bytes | str], Any] = json.loads,
) -> Decoded:
    """:func:`smartpark.wire.decode_message`, faster for a valid message (same
    arguments, same result, same errors; ``loads`` is used only by the fallback).
    """
    decoded = fast(data, now_ms + max_future_ms)
    if decoded is None:
        return decode_message(
            data, now_ms=now_ms, max_future_ms=max_future_ms, loads=loads
        )
    return decoded


def fast(data: bytes | str, latest_ms: int) -> Decoded | None:
    """The message if it is valid and spelt as the typed structs take it (no
    reading after ``latest_ms``), else None; never raises."""
    try:
        msg = _decode_json(data)
    except (msgspec.DecodeError, UnicodeDecodeError, TypeError):
        return None
    if isinstance(msg, _Batch):
        return _batch(msg, latest_ms)
    return _gateway(msg, latest_ms)


def _batch(msg: _Batch, latest: int) -> Decoded | None:
    park, enterprise, device = msg.park, msg.enterprise, msg.device
    if (
        _ID_MATCH(park) is None
        or _ID_MATCH(enterprise) is None
        or _ID_MATCH(device) is None
        or not 0 < len(msg.readings) <= MAX_READINGS
        or (msg.epoch is not None and _EPOCH_MATCH(msg.epoch) is None)
    ):
        return None
    readings = _readings(msg.readings, latest)
    if readings is None:
        return None
    batch = TelemetryBatch(park, enterprise, device, readings, msg.epoch)
    return Decoded(park, enterprise, device, (batch,))


def _gateway(msg: _Gateway, latest: int) -> Decoded | None:
    park, enterprise, devices = msg.park, msg.enterprise, msg.devices
    if (
        _ID_MATCH(park) is None
        or _ID_MATCH(enterprise) is None
        or _ID_MATCH(msg.gateway) is None
        or not devices
        or sum(len(d.readings) for d in devices) > MAX_READINGS
    ):
        return None
    batches = []
    seen: set[str] = set()
    for d in devices:
        if (
            _ID_MATCH(d.device) is None
            or d.device in seen
            or not d.readings
            or (d.epoch is not None and _EPOCH_MATCH(d.epoch) is None)
        ):
            return None
        seen.add(d.device)
        readings = _readings(d.readings, latest)
        if readings is None:
            return None
        batches.append(TelemetryBatch(park, enterprise, d.device, readings, d.epoch))
    return Decoded(park, enterprise, msg.gateway, tuple(batches), GATEWAY_VERSION)


def _readings(raw: list[_Reading], latest_ms: int) -> tuple[Reading, ...] | None:
    """The readings if each is valid (the checks of ``smartpark.wire._reading``
    the structs do not make), else None."""
    seen: set[tuple[int, str, str, str]] = set()
    seen_add = seen.add
    out: list[Reading] = []
    append = out.append
    unit_of, qualities, unset = _UNIT_OF, _QUALITIES, msgspec.UNSET
    for r in raw:
        seq, name, value, ts_ms = r.seq, r.metric, r.value, r.ts_ms
        data_type, stat, quality = r.dt, r.stat, r.q
        units = unit_of
        if data_type is not _REALTIME or stat is not _VALUE:  # (the defaults)
            if data_type not in _DATA_TYPES or stat not in _STATS:
                return None
            if stat != _VALUE:
                if data_type == _REALTIME:
                    return None
                if stat == "cou":
                    units = _TOTAL_UNIT_OF
        if (
            units.get(name, ()) != r.unit
            or not 0 <= seq <= _MAX_SEQ
            or not MIN_TS_MS <= ts_ms <= latest_ms
            or quality not in qualities
        ):
            return None
        reset: str | None = None
        if r.reset is not unset:
            reset = r.reset
            if reset not in _RESETS or name not in _COUNTERS:
                return None
        if type(value) is float:
            if not math.isfinite(value):
                return None
        elif -_MAX_FLOAT_INT <= value <= _MAX_FLOAT_INT:
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
                (seq, name, value, r.unit, ts_ms, quality, reset, data_type, stat),
            )
        )
    return tuple(out)
