"""Gateway messages (wire schema version 2): several devices of one enterprise in
one message, checked as strictly as a device's batch, every error naming its path."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from smartpark.errors import PayloadError, UnsupportedVersion
from smartpark.wire import (
    GATEWAY_VERSION,
    MAX_READINGS,
    GatewayBatch,
    Reading,
    TelemetryBatch,
    decode_batch,
    decode_message,
    encode_batch,
    encode_gateway,
    valid_id,
)

NOW = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def reading(seq: int, metric: str = "active_power", ts: int = NOW) -> dict[str, Any]:
    unit = {"active_power": "kW", "active_energy": "kWh"}[metric]
    return {"seq": seq, "metric": metric, "value": 1.5, "unit": unit, "ts_ms": ts}


def good() -> dict[str, Any]:
    return {
        "v": 2,
        "park": "p1",
        "enterprise": "alu-1",
        "gateway": "agent.alu-1",
        "devices": [
            {
                "device": "meter-1",
                "epoch": "00112233445566ff",
                "readings": [reading(1), reading(1, "active_energy")],
            },
            {"device": "meter-2", "readings": [reading(7)]},
        ],
    }


def decode(obj: Any) -> Any:
    return decode_message(json.dumps(obj), now_ms=NOW)


def refusal(obj: Any) -> tuple[str, str]:
    with pytest.raises(PayloadError) as info:
        decode(obj)
    return info.value.path, str(info.value)


def test_a_gateway_message_is_one_batch_a_device() -> None:
    d = decode(good())
    assert (d.park, d.enterprise, d.sender, d.version) == (
        "p1",
        "alu-1",
        "agent.alu-1",
        GATEWAY_VERSION,
    )
    assert [b.device for b in d.batches] == ["meter-1", "meter-2"]
    assert d.batches[0].epoch == "00112233445566ff"
    assert d.batches[1].epoch is None
    assert d.batches[1] == TelemetryBatch(
        "p1", "alu-1", "meter-2", (Reading(7, "active_power", 1.5, "kW", NOW),)
    )
    assert d.readings == 3


def test_round_trip() -> None:
    d = decode(good())
    again = decode_message(
        encode_gateway(GatewayBatch("p1", "alu-1", "agent.alu-1", d.batches)),
        now_ms=NOW,
    )
    assert again == d


def test_a_version_1_batch_decodes_as_one_device() -> None:
    batch = TelemetryBatch(
        "p1", "e1", "d1", (Reading(1, "active_power", 2.0, "kW", NOW),)
    )
    d = decode_message(encode_batch(batch), now_ms=NOW)
    assert (d.sender, d.batches, d.version) == ("d1", (batch,), 1)


def test_a_version_1_reader_refuses_version_2_by_its_version() -> None:
    """What a platform older than version 2 does: an unsupported version, named."""
    with pytest.raises(UnsupportedVersion) as info:
        decode_batch(json.dumps(good()), now_ms=NOW)
    assert info.value.path == "v"
    assert "2" in str(info.value)


def test_an_unknown_version_is_refused() -> None:
    obj = good() | {"v": 3}
    with pytest.raises(UnsupportedVersion):
        decode(obj)


def test_a_device_of_another_enterprise_cannot_be_encoded() -> None:
    other = TelemetryBatch(
        "p1", "e2", "d1", (Reading(1, "active_power", 2.0, "kW", NOW),)
    )
    with pytest.raises(ValueError, match="e2"):
        encode_gateway(GatewayBatch("p1", "e1", "agent.e1", (other,)))


def _with(path: list[Any], value: Any) -> dict[str, Any]:
    obj = copy.deepcopy(good())
    target: Any = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return obj


@pytest.mark.parametrize(
    ("obj", "path", "words"),
    [
        (_with(["gateway"], "bad/id"), "gateway", "invalid id"),
        ({k: v for k, v in good().items() if k != "gateway"}, "gateway", "missing"),
        (_with(["devices"], []), "devices", "non-empty list"),
        (_with(["devices"], {"device": "d"}), "devices", "non-empty list"),
        (_with(["devices", 1], "meter-2"), "devices[1]", "expected an object"),
        (_with(["devices", 1, "device"], "meter-1"), "devices[1].device", "twice"),
        (_with(["devices", 1, "device"], "a+b"), "devices[1].device", "invalid id"),
        (_with(["devices", 0, "epoch"], "xyz"), "devices[0].epoch", "16 hex"),
        (_with(["devices", 1, "readings"], []), "devices[1].readings", "non-empty"),
        (_with(["devices", 1, "colour"], "red"), "devices[1].colour", "unknown field"),
        (_with(["colour"], "red"), "colour", "unknown field"),
        (
            _with(["devices", 1, "readings", 0, "value"], "x"),
            "devices[1].readings[0].value",
            "expected a number",
        ),
        (
            _with(["devices", 0, "readings", 1], reading(1)),
            "devices[0].readings[1].seq",
            "duplicate reading",
        ),
        (
            _with(["devices", 1, "readings", 0, "ts_ms"], NOW + 3_600_000),
            "devices[1].readings[0].ts_ms",
            "future",
        ),
    ],
)
def test_every_error_names_its_path(obj: Any, path: str, words: str) -> None:
    where, message = refusal(obj)
    assert where == path
    assert words in message


def test_the_readings_of_all_devices_together_are_limited() -> None:
    per = MAX_READINGS // 2 + 1
    devices = [
        {"device": f"d{i}", "readings": [reading(s) for s in range(per)]}
        for i in range(2)
    ]
    path, message = refusal(good() | {"devices": devices})
    assert path == "devices"
    assert str(MAX_READINGS) in message
    ok = [{"device": "d0", "readings": [reading(s) for s in range(per)]}]
    assert decode(good() | {"devices": ok}).readings == per


def test_the_same_seq_on_two_devices_is_no_duplicate() -> None:
    d = decode(_with(["devices", 1, "readings"], [reading(1)]))
    assert [b.readings[0].seq for b in d.batches] == [1, 1]


def test_an_id_with_a_trailing_newline_is_invalid() -> None:
    assert not valid_id("meter-1\n")
    path, _ = refusal(_with(["devices", 0, "device"], "meter-1\n"))
    assert path == "devices[0].device"
