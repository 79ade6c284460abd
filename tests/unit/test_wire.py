"""Wire format: every way a payload can be wrong is named precisely."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from smartpark.catalogue import METRICS, Kind
from smartpark.errors import PayloadError, UnsupportedVersion
from smartpark.wire import (
    Quality,
    Reading,
    Reset,
    TelemetryBatch,
    decode_batch,
    decode_status,
    encode_batch,
    parse_topic,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def good() -> dict[str, Any]:
    return {
        "v": 1,
        "park": "p1",
        "enterprise": "alu-1",
        "device": "meter-7",
        "readings": [
            {
                "seq": 3,
                "metric": "active_energy",
                "value": 10.5,
                "unit": "kWh",
                "ts_ms": NOW,
                "q": "N",
            },
            {
                "seq": 3,
                "metric": "active_power",
                "value": 2,
                "unit": "kW",
                "ts_ms": NOW,
            },
        ],
    }


def test_round_trip() -> None:
    batch = decode_batch(json.dumps(good()), now_ms=NOW)
    assert batch.readings[1] == Reading(3, "active_power", 2.0, "kW", NOW, "N")
    assert decode_batch(encode_batch(batch), now_ms=NOW) == batch


@pytest.mark.parametrize("reset", ["rollover", "replacement"])
def test_a_counter_reset_round_trips_and_is_sent_only_when_set(reset: str) -> None:
    doc = _set("readings.0.reset", reset)
    batch = decode_batch(json.dumps(doc), now_ms=NOW)
    assert batch.readings[0].reset == reset
    assert batch.readings[1].reset is None
    readings = batch.to_json()["readings"]
    assert readings[0]["reset"] == reset
    assert "reset" not in readings[1]
    assert decode_batch(encode_batch(batch), now_ms=NOW) == batch


def test_an_outbox_epoch_round_trips_and_a_bad_one_is_named() -> None:
    doc = {**good(), "epoch": "0123456789abcdef"}
    batch = decode_batch(json.dumps(doc), now_ms=NOW)
    assert batch.epoch == "0123456789abcdef"
    assert decode_batch(encode_batch(batch), now_ms=NOW) == batch
    assert "epoch" not in decode_batch(json.dumps(good()), now_ms=NOW).to_json()
    for bad in ("0123456789ABCDEF", "0123", 7, "0123456789abcdef\n"):
        with pytest.raises(PayloadError, match=r"^epoch: expected 16 hex digits"):
            decode_batch(json.dumps({**good(), "epoch": bad}), now_ms=NOW)


def _set(path: str, value: Any) -> dict[str, Any]:
    doc = good()
    target: Any = doc
    *parents, last = path.split(".")
    for p in parents:
        target = target[int(p)] if p.isdigit() else target[p]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value
    return doc


_DELETE = object()


@pytest.mark.parametrize(
    ("path", "value", "where", "why"),
    [
        ("v", 2, "v", "unsupported schema version 2"),
        ("v", _DELETE, "v", "unsupported schema version None"),
        ("park", "a/b", "park", "invalid id"),
        ("device", "+", "device", "invalid id"),
        ("enterprise", _DELETE, "enterprise", "missing"),
        ("readings", [], "readings", "non-empty list"),
        ("readings", {}, "readings", "non-empty list"),
        ("extra", 1, "extra", "unknown field"),
        ("readings.0.metric", "so3", "readings[0].metric", "unknown metric 'so3'"),
        ("readings.0.unit", "MWh", "readings[0].unit", "active_energy is in 'kWh'"),
        ("readings.0.value", "1.5", "readings[0].value", "expected a number"),
        ("readings.0.value", True, "readings[0].value", "expected a number"),
        ("readings.0.value", None, "readings[0].value", "expected a number"),
        ("readings.0.seq", -1, "readings[0].seq", "non-negative integer"),
        ("readings.0.seq", 1.0, "readings[0].seq", "non-negative integer"),
        ("readings.0.ts_ms", NOW + 10 * 60_000, "readings[0].ts_ms", "beyond"),
        ("readings.0.ts_ms", 1_000, "readings[0].ts_ms", "before 2000"),
        ("readings.0.ts_ms", "2026-01-01", "readings[0].ts_ms", "integer ms"),
        ("readings.0.q", "X", "readings[0].q", "unknown quality flag"),
        ("readings.1.metric", "active_energy", "readings[1].seq", "duplicate"),
        ("readings.1.colour", "red", "readings[1].colour", "unknown field"),
        ("readings.0.ts_ms", _DELETE, "readings[0].ts_ms", "missing"),
        ("readings.0.reset", "wrapped", "readings[0].reset", "got 'wrapped'"),
        ("readings.0.reset", None, "readings[0].reset", "got None"),
        ("readings.0.reset", ["rollover"], "readings[0].reset", "'rollover' or"),
        ("readings.0.reset", "Rollover", "readings[0].reset", "or 'replacement'"),
        (
            "readings.1.reset",
            "rollover",
            "readings[1].reset",
            "active_power is a gauge",
        ),
    ],
)
def test_each_mistake_is_named(path: str, value: Any, where: str, why: str) -> None:
    doc = _set(path, value)
    if path == "readings.1.metric":
        doc["readings"][1]["unit"] = "kWh"
    with pytest.raises(PayloadError) as err:
        decode_batch(json.dumps(doc), now_ms=NOW)
    assert err.value.path == where
    assert why in err.value.reason


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "expected a JSON object"),
        (
            b'{"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": '
            b'[{"seq": 1, "metric": "o2", "value": NaN, "unit": "%", "ts_ms": '
            + str(NOW).encode()
            + b"}]}",
            "non-finite",
        ),
        (
            b'{"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": '
            b'[{"seq": 1, "metric": "o2", "value": Infinity, "unit": "%", "ts_ms": '
            + str(NOW).encode()
            + b"}]}",
            "non-finite",
        ),
    ],
)
def test_malformed_bytes(raw: bytes, why: str) -> None:
    with pytest.raises(PayloadError, match=why):
        decode_batch(raw, now_ms=NOW)


def test_unknown_version_is_its_own_type() -> None:
    with pytest.raises(UnsupportedVersion):
        decode_batch(json.dumps(_set("v", 9)), now_ms=NOW)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_payload_error(data: bytes) -> None:
    with contextlib.suppress(PayloadError):
        decode_batch(data, now_ms=NOW)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["seq", "metric", "value", "unit", "ts_ms", "q", "reset", "x"]),
        json_values,
    )
)
def test_arbitrary_readings_raise_only_payload_error(reading: dict[str, Any]) -> None:
    doc = good()
    doc["readings"] = [reading]
    with contextlib.suppress(PayloadError):
        decode_batch(json.dumps(doc), now_ms=NOW)


@pytest.mark.parametrize(
    ("topic", "ok"),
    [
        ("sp/v1/p1/e1/d1/telemetry", True),
        ("sp/v1/p1/e1/d1/status", True),
        ("sp/v2/p1/e1/d1/telemetry", False),
        ("sp/v1/p1/e1/telemetry", False),
        ("sp/v1/p1/e 1/d1/telemetry", False),
        ("sp/v1/p1/e1/d1/x/telemetry", False),
    ],
)
def test_parse_topic(topic: str, ok: bool) -> None:
    if ok:
        assert parse_topic(topic)[:3] == ("p1", "e1", "d1")
    else:
        with pytest.raises(PayloadError):
            parse_topic(topic)


def test_status_round_trip_and_errors() -> None:
    from smartpark.wire import DeviceStatus

    s = DeviceStatus(online=False, ts_ms=NOW, reason="will")
    assert decode_status(s.encode()) == s
    with pytest.raises(PayloadError, match="online"):
        decode_status(b'{"v": 1, "online": "yes", "ts_ms": 1767225600000}')


def test_batch_encodes_without_nan() -> None:
    batch = TelemetryBatch("p", "e", "d", (Reading(1, "o2", float("nan"), "%", NOW),))
    with pytest.raises(ValueError, match="Out of range float"):
        encode_batch(batch)


def test_an_unknown_metric_with_a_null_unit_is_refused() -> None:
    # The hot path once compared the catalogue's "no such metric" (None) with the
    # payload's null unit, found them equal and accepted the reading.
    doc = _set("readings.0.metric", "so3")
    doc["readings"][0]["unit"] = None
    with pytest.raises(PayloadError) as err:
        decode_batch(json.dumps(doc), now_ms=NOW)
    assert err.value.path == "readings[0].metric"


def test_integer_too_large_for_a_double_is_refused() -> None:
    doc = _set("readings.0.value", 10**400)
    with pytest.raises(PayloadError, match="out of range"):
        decode_batch(json.dumps(doc), now_ms=NOW)


near_valid_readings = st.fixed_dictionaries(
    {
        "seq": st.sampled_from([0, 1, -1, 2**63, 1.0, True, "1"]),
        "metric": st.sampled_from(["o2", "active_energy", "so2", "so3", 1, ["o2"]]),
        "value": st.sampled_from([0, 1.5, -2, 10**400, float("nan"), None, "x", False]),
        "unit": st.sampled_from(["%", "kWh", "MWh", "mg/m3", "kg", None]),
        "ts_ms": st.sampled_from([NOW, NOW + 10**9, 5, 1.5]),
    },
    optional={
        "q": st.sampled_from(["N", "D", "X", ["N"], 1]),
        "reset": st.sampled_from(
            ["rollover", "replacement", "reset", "", None, ["rollover"], 1]
        ),
        "dt": st.sampled_from(["realtime", "hour", "day", "week", None, 1]),
        "stat": st.sampled_from(["value", "min", "cou", "sum", None, ["min"]]),
        "x": st.just(1),
    },
)


@given(st.lists(near_valid_readings, min_size=1, max_size=4))
def test_batch_fast_path_agrees_with_the_precise_validator(
    readings: list[dict[str, Any]],
) -> None:
    """The batch's hot loop accepts exactly the batches whose every reading the
    field-by-field validator accepts (duplicates refused), and builds the same
    readings."""
    from smartpark.wire import _reading, _valid_readings

    seen: set[tuple[int, str, str, str]] = set()
    latest = NOW + 300_000
    fast = _valid_readings(readings, latest)
    precise = []
    for r in readings:
        try:
            reading = _reading(r, "r.", latest, seen)
        except PayloadError:
            assert fast is None
            return
        seen.add((reading.seq, reading.metric, reading.data_type, reading.stat))
        precise.append(reading)
    assert fast == tuple(precise)
    assert all(type(r) is Reading for r in fast)


def test_a_duplicate_reading_is_named_at_its_place() -> None:
    doc = good()
    doc["readings"] = [doc["readings"][0], dict(doc["readings"][0])]
    with pytest.raises(PayloadError) as err:
        decode_batch(json.dumps(doc), now_ms=NOW)
    assert err.value.path == "readings[1].seq"
    assert "duplicate reading" in str(err.value)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_with_orjson_raise_only_payload_error(data: bytes) -> None:
    """The platform parses with orjson on its hot paths; errors stay PayloadError."""
    import orjson

    with contextlib.suppress(PayloadError):
        decode_batch(data, now_ms=NOW, loads=orjson.loads)


@pytest.mark.parametrize(
    "raw",
    [
        b'{"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": '
        b'[{"seq": 1, "metric": "o2", "value": NaN, "unit": "%", "ts_ms": 1}]}',
        b'{"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": '
        b'[{"seq": 1, "metric": "o2", "value": 1e999, "unit": "%", "ts_ms": 1}]}',
        b'{"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": '
        b'[{"seq": 99999999999999999999999, "metric": "o2", "value": 1}]}',
    ],
)
def test_orjson_refusals_are_payload_errors(raw: bytes) -> None:
    import orjson

    with pytest.raises(PayloadError):
        decode_batch(raw, now_ms=NOW, loads=orjson.loads)


def test_orjson_and_json_decode_alike() -> None:
    import orjson

    raw = json.dumps(good()).encode()
    assert decode_batch(raw, now_ms=NOW, loads=orjson.loads) == decode_batch(
        raw, now_ms=NOW
    )


_COUNTER_NAMES = sorted(n for n, m in METRICS.items() if m.kind is Kind.COUNTER)
_GAUGE_NAMES = sorted(n for n, m in METRICS.items() if m.kind is Kind.GAUGE)
_finite = st.floats(allow_nan=False, allow_infinity=False) | st.integers(
    -(2**53), 2**53
).map(float)


@st.composite
def valid_readings(draw: st.DrawFn, seq: int) -> Reading:
    """A reading decode_batch must accept: resets on counters only."""
    counter = draw(st.booleans())
    name = draw(st.sampled_from(_COUNTER_NAMES if counter else _GAUGE_NAMES))
    reset = draw(st.sampled_from([None, *Reset])) if counter else None
    return Reading(
        seq,
        name,
        draw(_finite),
        METRICS[name].unit,
        draw(st.integers(946_684_800_000, NOW + 300_000)),
        draw(st.sampled_from(list(Quality))).value,
        None if reset is None else reset.value,
    )


@st.composite
def valid_batches(draw: st.DrawFn) -> TelemetryBatch:
    readings: dict[tuple[int, str], Reading] = {}
    for _ in range(draw(st.integers(1, 12))):
        r = draw(valid_readings(draw(st.integers(0, 3))))
        readings.setdefault((r.seq, r.metric), r)  # (seq, metric) is unique
    return TelemetryBatch("p1", "e1", "d1", tuple(readings.values()))


@given(valid_batches())
def test_any_valid_batch_round_trips(batch: TelemetryBatch) -> None:
    """encode then decode is the identity, with json and with orjson, both paths."""
    import orjson

    raw = encode_batch(batch)
    assert decode_batch(raw, now_ms=NOW) == batch
    assert decode_batch(raw, now_ms=NOW, loads=orjson.loads) == batch
    sent = [r for r in json.loads(raw)["readings"] if "reset" in r]
    assert len(sent) == sum(r.reset is not None for r in batch.readings)


def test_interval_series_travel_with_their_data_type_and_stat() -> None:
    """An hourly mean, its min and its total are three series of their own, apart
    from the real-time value of the same metric and poll; they round-trip."""
    from smartpark.wire import Reading, TelemetryBatch, encode_batch

    readings = (
        Reading(1, "so2", 30.0, "mg/m3", NOW),
        Reading(1, "so2", 31.5, "mg/m3", NOW, data_type="hour"),
        Reading(1, "so2", 20.0, "mg/m3", NOW, data_type="hour", stat="min"),
        Reading(1, "so2", 1.25, "kg", NOW, data_type="hour", stat="cou"),
    )
    batch = TelemetryBatch("p1", "e1", "d1", readings)
    raw = encode_batch(batch)
    assert raw.count(b'"dt"') == 3
    assert decode_batch(raw, now_ms=NOW) == batch


@pytest.mark.parametrize(
    ("changes", "path", "match"),
    [
        ({"dt": "week"}, "readings[0].dt", "expected one of"),
        ({"stat": "min"}, "readings[0].stat", "needs interval data"),
        ({"dt": "hour", "stat": "cou"}, "readings[0].unit", "total of so2 is in 'kg'"),
        ({"metric": "o2", "unit": "%", "dt": "hour", "stat": "cou"},
         "readings[0].stat", "no interval total"),
    ],
)  # fmt: skip
def test_bad_series_tags_are_refused_by_name(
    changes: dict[str, Any], path: str, match: str
) -> None:
    reading: dict[str, Any] = {
        "seq": 1, "metric": "so2", "value": 1.0, "unit": "mg/m3", "ts_ms": NOW,
    }  # fmt: skip
    reading.update(changes)
    doc = {"v": 1, "park": "p", "enterprise": "e", "device": "d", "readings": [reading]}
    with pytest.raises(PayloadError, match=match) as err:
        decode_batch(json.dumps(doc), now_ms=NOW)
    assert err.value.path == path


def test_a_batch_without_series_tags_is_real_time() -> None:
    doc = {
        "v": 1, "park": "p", "enterprise": "e", "device": "d",
        "readings": [{"seq": 1, "metric": "so2", "value": 1.0, "unit": "mg/m3",
                      "ts_ms": NOW, "q": "N"}],
    }  # fmt: skip
    (r,) = decode_batch(json.dumps(doc), now_ms=NOW).readings
    assert (r.data_type, r.stat) == ("realtime", "value")
