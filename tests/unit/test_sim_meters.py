"""Simulated meters: deterministic, counters consistent with their rates."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.modbus import decode_value, encode_value, plan_reads
from simulators.meters import KINDS, Profile, build_meter


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_seed_same_values_other_seed_other_values(kind: str) -> None:
    a = build_meter(kind, seed=7, device_id="e1.m-1")
    b = build_meter(kind, seed=7, device_id="e1.m-1")
    c = build_meter(kind, seed=8, device_id="e1.m-1")
    d = build_meter(kind, seed=7, device_id="e1.m-2")
    for t in (0.0, 10.0, 3600.0):
        assert [ch.value(t) for ch in a] == [ch.value(t) for ch in b]
        assert [ch.value(t) for ch in a] != [ch.value(t) for ch in c]
        assert [ch.value(t) for ch in a] != [ch.value(t) for ch in d]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_meter_is_one_contiguous_read(kind: str) -> None:
    # served_polls relies on this: one agent poll = one Modbus request.
    meter = build_meter(kind, seed=1, device_id="x")
    assert len(plan_reads([ch.register for ch in meter])) == 1


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_counters_grow_and_fit_their_registers_for_a_year(kind: str) -> None:
    meter = build_meter(kind, seed=3, device_id="x")
    year = 365 * 24 * 3600.0
    for ch in meter:
        reg = ch.register
        if reg.type in ("f32", "f64", "i16"):
            continue
        values = [ch.value(t) for t in (0.0, 60.0, 3600.0, year)]
        assert values == sorted(values), reg.metric
        raw_max = (values[-1] - reg.offset) / reg.scale
        assert raw_max < 2 ** (16 * reg.width), f"{reg.metric} rolls over within a year"


@given(
    base=st.floats(1.0, 1e4),
    seed=st.integers(0, 1000),
    t0=st.floats(0.0, 1e6),
    dt=st.floats(1.0, 600.0),
)
def test_counter_is_the_integral_of_the_rate(
    base: float, seed: int, t0: float, dt: float
) -> None:
    p = Profile.random(random.Random(seed), base)
    steps = 400
    h = dt / steps
    # Simpson's rule over [t0, t0 + dt], in rate-hours
    acc = p.rate(t0) + p.rate(t0 + dt)
    acc += sum((4 if i % 2 else 2) * p.rate(t0 + i * h) for i in range(1, steps))
    numeric = acc * h / 3 / 3600
    assert p.integral_h(t0 + dt) - p.integral_h(t0) == pytest.approx(numeric, rel=1e-6)
    assert p.rate(t0) > 0


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_registers_hold_the_values_the_agent_will_decode(kind: str) -> None:
    for ch in build_meter(kind, seed=1, device_id="x"):
        reg, value = ch.register, ch.value(100.0)
        decoded = decode_value(encode_value(value, reg), reg)
        if reg.type == "f32":
            assert decoded == pytest.approx(value, rel=1e-7)
        else:  # integers are rounded to the register's resolution
            assert abs(decoded - value) <= reg.scale / 2 + 1e-9
