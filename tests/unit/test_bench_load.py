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
