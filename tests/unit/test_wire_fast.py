"""The fast decoder (smartpark.wire_fast) against the precise one
(smartpark.wire.decode_message): same result for every message the fast path
accepts, the precise errors for every other, and the fast path taken for the
messages the platform sees."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smartpark import wire_fast
from smartpark.errors import PayloadError
from smartpark.wire import Decoded, decode_message

NOW = 1_767_225_600_000
LATEST = NOW + 300_000


def _reading(
    seq: int = 3, metric: str = "active_power", **extra: Any
) -> dict[str, Any]:
    units = {"active_power": "kW", "active_energy": "kWh", "o2": "%", "so2": "mg/m3"}
    return {
        "seq": seq,
        "metric": metric,
        "value": 2.5,
        "unit": units[metric],
        "ts_ms": NOW,
        "q": "N",
        **extra,
    }


def _v1(**extra: Any) -> dict[str, Any]:
    return {
        "v": 1,
        "park": "p1",
        "enterprise": "alu-1",
        "device": "meter-7",
        "readings": [_reading(), _reading(metric="active_energy")],
        **extra,
    }


def _v2() -> dict[str, Any]:
    return {
        "v": 2,
        "park": "p1",
        "enterprise": "alu-1",
        "gateway": "agent.alu-1",
        "devices": [
            {
                "device": "meter-7",
                "epoch": "0123456789abcdef",
                "readings": [_reading()],
            },
            {
                "device": "cems-1",
                "readings": [
                    _reading(metric="so2", dt="hour", stat="max"),
                    _reading(metric="active_energy", reset="rollover"),
                ],
            },
        ],
    }


def _outcome(fn: Any, data: bytes | str) -> Decoded | tuple[str, str, str]:
    try:
        return fn(data)  # type: ignore[no-any-return]
    except PayloadError as exc:
        return (type(exc).__name__, exc.path, str(exc))


def _agree(data: bytes | str) -> None:
    """Both decoders give the same result or the same error; the fast path
    alone, when it answers, answers what the precise decoder does."""

    def precise(d: bytes | str) -> Decoded:
        return decode_message(d, now_ms=NOW, loads=orjson.loads)

    def fast(d: bytes | str) -> Decoded:
        return wire_fast.decode(d, now_ms=NOW, loads=orjson.loads)

    expected = _outcome(precise, data)
    assert _outcome(fast, data) == expected
    alone = wire_fast.fast(data, LATEST)
    if alone is not None:
        assert alone == expected
        assert all(type(r) is type(e) for r, e in zip(alone, expected, strict=True))


@pytest.mark.parametrize("doc", [_v1(), _v1(epoch="0123456789abcdef"), _v2()])
def test_valid_messages_take_the_fast_path(doc: dict[str, Any]) -> None:
    data = json.dumps(doc).encode()
    decoded = wire_fast.fast(data, LATEST)
    assert decoded is not None
    assert decoded == decode_message(data, now_ms=NOW)
    _agree(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"v":1.0,"park":"p1","enterprise":"e","device":"d","readings":'
        b'[{"seq":1,"metric":"o2","value":1,"unit":"%","ts_ms":1767225600000}]}',
        # duplicate keys: the last one counts (orjson, msgspec)
        b'{"v":1,"park":"p1","park":"p2","enterprise":"e","device":"d","readings":'
        b'[{"seq":1,"metric":"o2","value":1,"unit":"%","ts_ms":1767225600000}]}',
        b'{"v":1,"v":2,"park":"p1","enterprise":"e","device":"d","readings":'
        b'[{"seq":1,"metric":"o2","value":1,"unit":"%","ts_ms":1767225600000}]}',
        b'{"park":"p1","enterprise":"e","device":"d","v":1,"readings":'
        b'[{"seq":1,"metric":"o2","value":1,"unit":"%","ts_ms":1767225600000}]}',
        # explicit nulls are refused where a key may be left out
        json.dumps(_v1(readings=[_reading(reset=None)])).encode(),
        json.dumps(_v1(readings=[_reading(q=None)])).encode(),
        json.dumps(_v1(readings=[_reading(dt=None)])).encode(),
        json.dumps(_v1(epoch=None)).encode(),
        json.dumps(_v1(readings=[_reading(value=10**400)])).encode(),
        json.dumps(_v1(readings=[_reading(value=10**30)])).encode(),
        json.dumps(_v1(readings=[_reading(seq=2**63)])).encode(),
        json.dumps(_v1(readings=[_reading(), _reading()])).encode(),
        json.dumps(_v1(readings=[_reading(stat="min")])).encode(),
        json.dumps(_v1(readings=[_reading(dt="realtime", stat="value")])).encode(),
        json.dumps(_v1(readings=[_reading(metric="o2", reset="rollover")])).encode(),
        json.dumps(_v1(device="meter-7\n")).encode(),
        json.dumps(_v1(readings=[])).encode(),
        json.dumps(_v1(readings=[_reading(ts_ms=LATEST + 1)])).encode(),
        json.dumps(_v1(readings=[_reading(ts_ms=LATEST)])).encode(),
        b"\xef\xbb\xbf" + json.dumps(_v1()).encode(),
        json.dumps(_v1()),  # str
        b'{"v":1,"park":"p1","enterprise":"e","device":"d\\u00e9","readings":[]}',
        b"[1]",
        b"",
        b'{"v":1,"park":"p1","enterprise":"e","device":"d","readings":'
        b'[{"seq":1,"metric":"o2","value":NaN,"unit":"%","ts_ms":1767225600000}]}',
    ],
)
def test_edge_cases_agree(data: bytes | str) -> None:
    _agree(data)


@st.composite
def valid_readings(draw: st.DrawFn, n: int) -> list[dict[str, Any]]:
    """``n`` valid readings of one device, optional keys drawn."""
    out = []
    for seq in range(n):
        metric, unit = draw(
            st.sampled_from(
                [("active_energy", "kWh"), ("active_power", "kW"), ("so2", "mg/m3")]
            )
        )
        r: dict[str, Any] = {
            "seq": seq,
            "metric": metric,
            "value": draw(st.sampled_from([1.5, 0, -2, 2**60])),
            "unit": unit,
            "ts_ms": draw(st.sampled_from([NOW, LATEST, 946_684_800_000])),
        }
        if draw(st.booleans()):
            r["q"] = draw(st.sampled_from(["N", "D", "M"]))
        if metric == "active_energy" and draw(st.booleans()):
            r["reset"] = draw(st.sampled_from(["rollover", "replacement"]))
        if metric == "so2" and draw(st.booleans()):
            r["dt"] = draw(st.sampled_from(["realtime", "hour", "day"]))
            if r["dt"] != "realtime" and draw(st.booleans()):
                r["stat"] = draw(st.sampled_from(["value", "min", "cou"]))
                if r["stat"] == "cou":
                    r["unit"] = "kg"
        out.append(r)
    return out


@st.composite
def valid_messages(draw: st.DrawFn) -> dict[str, Any]:
    epoch = "0123456789abcdef"
    doc: dict[str, Any] = {
        "v": draw(st.sampled_from([1, 2])),
        "park": "p1",
        "enterprise": "alu-1",
    }
    if doc["v"] == 2:
        doc["gateway"] = "agent.1"
        doc["devices"] = []
        for i in range(draw(st.integers(1, 3))):
            device: dict[str, Any] = {
                "device": f"d{i}",
                "readings": draw(valid_readings(draw(st.integers(1, 3)))),
            }
            if draw(st.booleans()):
                device["epoch"] = epoch
            doc["devices"].append(device)
    else:
        doc["device"] = "d1"
        doc["readings"] = draw(valid_readings(draw(st.integers(1, 4))))
        if draw(st.booleans()):
            doc["epoch"] = epoch
    return doc


# One mutation: (where, key, wrong values). Where: the message, a device's entry
# (or the message itself for version 1) or a reading.
_WRONG_IDS = ["", "a b", "x\n", 7, None, "d" * 65]
_MUTATIONS: list[tuple[str, str, list[Any]]] = [
    ("message", "v", [2.0, 1.0, 3, None, "1"]),
    ("message", "park", _WRONG_IDS),
    ("message", "enterprise", _WRONG_IDS),
    ("message", "gateway", _WRONG_IDS),
    ("message", "x", [1, None]),
    ("message", "devices", [[], None, {}]),
    ("device", "device", [*_WRONG_IDS, "d0", "meter-7"]),  # a device twice
    ("device", "epoch", ["0123", None, 5, "0123456789ABCDEF"]),
    ("device", "readings", [[], None, [1]]),
    ("device", "x", [1]),
    ("reading", "seq", [-1, 2**63, 1.0, True, "1", 0]),  # 0: a duplicate
    ("reading", "metric", ["so3", 1, None, "o2"]),
    ("reading", "value", [10**400, None, "x", False, 10**30]),
    ("reading", "unit", [None, "MWh", "kg", 1]),
    ("reading", "ts_ms", [LATEST + 1, 5, 1.5, None]),
    ("reading", "q", ["X", None, 1, "n"]),
    ("reading", "reset", ["rollover", "reset", None, 1]),
    ("reading", "dt", ["week", None, "hour", "minute"]),
    ("reading", "stat", ["sum", None, "min", "cou"]),
    ("reading", "x", [1]),
]


@st.composite
def messages(draw: st.DrawFn) -> dict[str, Any]:
    """A valid message of either version, changed in one place (or not at all)."""
    doc = draw(valid_messages())
    if draw(st.integers(0, 3)) == 0:
        return doc
    where, key, wrong = draw(st.sampled_from(_MUTATIONS))
    devices = doc["devices"] if doc["v"] == 2 else [doc]
    target = doc
    if where != "message":
        target = draw(st.sampled_from(devices))
        if where == "reading":
            target = draw(st.sampled_from(target["readings"]))
    target[key] = draw(st.sampled_from(wrong))
    return doc


@settings(max_examples=1500)
@given(messages())
def test_generated_messages_agree(doc: dict[str, Any]) -> None:
    _agree(json.dumps(doc).encode())


@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_only_payload_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        wire_fast.decode(data, now_ms=NOW, loads=orjson.loads)


def test_the_generator_makes_valid_and_invalid_messages() -> None:
    """The agreement test is worth something only if many generated messages are
    valid (the fast path decides) and many are not."""
    valid = invalid = 0

    @settings(max_examples=300, derandomize=True)
    @given(messages())
    def count(doc: dict[str, Any]) -> None:
        nonlocal valid, invalid
        if wire_fast.fast(json.dumps(doc).encode(), LATEST) is None:
            invalid += 1
        else:
            valid += 1

    count()
    assert valid >= 100
    assert invalid >= 100


def _base(version: int) -> dict[str, Any]:
    """A valid message whose last reading carries every optional key."""
    so2 = _reading(metric="so2", dt="hour", stat="min", q="D")
    energy = _reading(metric="active_energy", reset="rollover")
    readings = [
        _reading(seq=s, metric=m) for s, m in ((0, "active_power"), (1, "active_power"))
    ]
    if version == 1:
        return {**_v1(epoch="0123456789abcdef"), "readings": [*readings, energy, so2]}
    doc = _v2()
    doc["devices"][1]["readings"] = [*readings, energy, so2]
    return doc


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("where", "key", "wrong"),
    [(w, k, v) for w, k, values in _MUTATIONS for v in values],
)
def test_every_single_change_agrees(
    version: int, where: str, key: str, wrong: Any
) -> None:
    """Each change of :data:`_MUTATIONS` to each reading and device of a valid
    message of each version: both decoders agree."""
    for i in range(len(_places(_base(version), where))):
        doc = _base(version)
        _places(doc, where)[i][key] = wrong
        _agree(json.dumps(doc).encode())


def _places(doc: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The message, its device entries (version 1: the message) or its readings."""
    if where == "message":
        return [doc]
    devices = doc["devices"] if doc["v"] == 2 else [doc]
    if where == "device":
        return devices
    return [r for d in devices for r in d["readings"]]
