"""The load generator: deterministic for a seed, open loop, honest about its rate."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import pytest

from bench.load import (
    PRESETS,
    AckLog,
    PublisherResult,
    Workload,
    device_ids,
    device_messages,
    encode,
    run_open_loop,
    schedule,
    verdict,
)

SMALL = Workload(
    enterprises=4, devices_per_enterprise=5, step_ms=1000, out_of_order=0.2
)


def payloads(w: Workload, duration_ms: int, t0_ms: int) -> list[tuple[str, bytes]]:
    return [encode(w, "p1", m, t0_ms) for m in schedule(w, duration_ms)]


def test_same_seed_same_load_other_seed_other_load() -> None:
    first = payloads(SMALL, 10_000, 1_767_225_600_000)
    assert first == payloads(SMALL, 10_000, 1_767_225_600_000)
    assert first != payloads(replace(SMALL, seed=17), 10_000, 1_767_225_600_000)


def test_parts_split_the_devices_without_loss_or_overlap() -> None:
    whole = schedule(SMALL, 10_000)
    parts = [m for k in range(3) for m in schedule(SMALL, 10_000, part=k, parts=3)]
    assert sorted(parts) == whole


def test_every_poll_once_some_late_with_their_device_time() -> None:
    w, t0 = SMALL, 1_767_225_600_000
    sent = [json.loads(p) for _, p in payloads(w, 30_000, t0)]
    keys = [(b["device"], r["seq"], r["metric"]) for b in sent for r in b["readings"]]
    assert len(keys) == len(set(keys))
    late = [m for m in schedule(w, 30_000) if m.late]
    assert late, "a 20 % out-of-order share produced no late poll"
    m = late[0]
    _, payload = encode(w, "p1", m, t0)
    ts = json.loads(payload)["readings"][0]["ts_ms"]
    assert ts == t0 + m.send_ms - w.ooo_delay_ms  # sent late, stamped on time


def readings_of(payload: bytes) -> list[tuple[str, int, str, int]]:
    """(device, seq, metric, ts_ms) of a device's or a gateway's message."""
    body = json.loads(payload)
    return [
        (d["device"], r["seq"], r["metric"], r["ts_ms"])
        for d in body.get("devices", [body])
        for r in d["readings"]
    ]


def test_gateway_messages_carry_the_same_readings_in_fewer_messages() -> None:
    t0 = 1_767_225_600_000
    gateway = replace(SMALL, gateway=True)
    device_msgs = payloads(SMALL, 30_000, t0)
    gateway_msgs = payloads(gateway, 30_000, t0)
    by_gateway = [k for _, p in gateway_msgs for k in readings_of(p)]
    assert len(by_gateway) == len(set(by_gateway))
    # every device's polls (as its own schedule has them), all its metrics
    polls: dict[str, set[int]] = {}
    for device, seq, _, _ in by_gateway:
        polls.setdefault(device, set()).add(seq)
    assert polls == {
        device_ids(gateway, i)[1]: {
            m.first_seq for m in device_messages(gateway, i, 30_000)
        }
        for i in range(SMALL.devices)
    }
    assert len(by_gateway) == sum(map(len, polls.values())) * SMALL.metrics_per_device
    assert len(gateway_msgs) < len(device_msgs) / 2
    for topic, payload in gateway_msgs:
        body = json.loads(payload)
        assert body["v"] == 2
        assert topic.split("/")[3:5] == [body["enterprise"], body["gateway"]]
        # an enterprise's devices poll together: one time a message
        assert len({k[3] for k in readings_of(payload)}) == 1
    messages = schedule(gateway, 30_000)
    assert sum(m.readings(gateway) for m in messages) == len(by_gateway)
    parts = [m for k in range(3) for m in schedule(gateway, 30_000, part=k, parts=3)]
    assert sorted(parts) == messages


def test_a_late_poll_goes_in_a_gateway_message_of_its_own() -> None:
    gateway, t0 = replace(SMALL, gateway=True), 1_767_225_600_000
    late = [m for m in schedule(gateway, 30_000) if m.late]
    assert late
    assert all(len(m.devices) == 1 for m in late)
    _, payload = encode(gateway, "p1", late[0], t0)
    ((_, _, _, ts), *_) = readings_of(payload)
    assert ts == t0 + late[0].send_ms - gateway.ooo_delay_ms


def test_gateway_messages_take_one_poll_a_device() -> None:
    with pytest.raises(ValueError, match="one poll"):
        replace(SMALL, gateway=True, batch_polls=2)


def test_presets_follow_the_reference_load() -> None:
    assert [PRESETS[p].rate for p in ("pilot", "city", "province")] == [
        600,
        5600,
        56000,
    ]
    assert PRESETS["city"].scaled(2).rate == 11200


def run(send_cost_s: float) -> PublisherResult:
    """1 000 messages/s for 0.5 s, each acknowledged when ``send`` returns."""
    w = Workload(enterprises=10, devices_per_enterprise=20, step_ms=200, out_of_order=0)
    acks = AckLog()

    def send(_topic: str, _payload: bytes, readings: int) -> None:
        time.sleep(send_cost_s)
        acks.ack(readings, time.time())

    return run_open_loop(
        w,
        "p1",
        schedule(w, 500),
        t0_s=time.time() + 0.05,
        duration_s=0.5,
        send=send,
        acks=acks,
        ack_timeout_s=0.1,
    )


def test_a_publisher_keeping_up_is_valid() -> None:
    v = verdict([run(0)])
    assert v.valid, v.line()
    assert v.offered_rate == pytest.approx(5000, rel=0.05)  # phases are drawn


def test_a_publisher_falling_behind_is_invalid_with_both_rates() -> None:
    v = verdict([run(0.002)])  # 2 ms a send: at most 500 messages/s of 1 000
    assert not v.valid
    assert v.achieved_rate < v.offered_rate * 0.7
    assert v.max_send_lag_s > 0.3
    assert f"below the offered {v.offered_rate:,.0f}/s" in v.reason
    assert f"achieved {v.achieved_rate:,.0f} readings/s" in v.line()
    assert "INVALID" in v.line()


def test_unacknowledged_readings_make_the_run_invalid() -> None:
    on_time = PublisherResult(100, 100, 20, 0.0, 1.0, 1.0, 0.0)
    lost = PublisherResult(100, 95, 20, 0.0, 1.0, 1.0, 0.0)
    assert verdict([on_time, on_time]).valid
    v = verdict([on_time, lost])
    assert not v.valid
    assert v.reason == "5 readings not acknowledged"
