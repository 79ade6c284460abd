"""Simulated meters: deterministic, counters consistent with their rates."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import RegisterConfig
from edge_agent.modbus import decode_value, encode_value, plan_reads
from simulators.meters import (
    KINDS,
    Channel,
    Profile,
    build_meter,
    with_counter,
    wrap_at,
)


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


def _register(type_: str, **kw: object) -> RegisterConfig:
    return RegisterConfig.model_validate(
        {"address": 0, "type": type_, "metric": "active_energy", "unit": "kWh", **kw}
    )


@pytest.mark.parametrize(
    ("register", "expected"),
    [
        (_register("u32", scale=0.1), 429_496_729.6),
        (_register("u16", offset=10.0), 65_546.0),
        (_register("i16", scale=0.001), 32.768),  # where it turns negative
        (_register("u32", rollover_at=99_999_999), 99_999_999.0),
        (_register("f32"), None),
    ],
)
def test_wrap_at(register: RegisterConfig, expected: float | None) -> None:
    assert wrap_at(register) == (
        None if expected is None else pytest.approx(expected, rel=1e-15)
    )


def test_with_counter_jumps_then_grows_and_wraps_at_the_display_limit() -> None:
    # 1 kWh per second, on a meter whose display wraps at 1000 kWh.
    meter = (
        Channel(_register("u32", rollover_at=1000), lambda t: 100.0 + t),
        Channel(_register("f32", metric="active_power", unit="kW"), lambda t: 3600.0),
    )
    near = with_counter(meter, "active_energy", at_t=50.0, value=990.0)
    assert [near[0].value(t) for t in (50.0, 59.0, 60.0, 65.0)] == [
        990.0,
        999.0,
        0.0,
        5.0,
    ]
    assert near[1] is meter[1]  # the rest of the meter is untouched
    assert meter[0].value(50.0) == 150.0  # and so is the original
    replaced = with_counter(near, "active_energy", at_t=70.0, value=0.0)
    assert [replaced[0].value(t) for t in (70.0, 72.5)] == [0.0, 2.5]
    with pytest.raises(KeyError):
        with_counter(meter, "water_volume", at_t=0.0, value=0.0)
