"""CounterGuard: a counter that goes backwards is flagged rollover or replacement.

Every expected outcome below is computed by hand from the register layout: the wrap
modulus ``M`` (catalogue unit), the implied step ``value + M - previous`` and the
10 % rule.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from edge_agent.config import RegisterConfig
from edge_agent.counters import (
    CounterGuard,
    CounterReset,
    classify,
    register_modulus,
)
from edge_agent.outbox import Outbox
from edge_agent.sample import Sample
from smartpark.wire import Reset

TS = 1_767_225_600_000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def reg(
    type_: str, metric: str = "active_energy", unit: str = "kWh", **kw: Any
) -> RegisterConfig:
    return RegisterConfig.model_validate(
        {"address": 0, "type": type_, "metric": metric, "unit": unit, **kw}
    )


def energy(value: float, metric: str = "active_energy", unit: str = "kWh") -> Sample:
    return Sample(metric, value, unit, TS)


@pytest.mark.parametrize(
    ("register", "modulus"),
    [
        (reg("u16"), 65_536.0),
        (reg("i16"), 65_536.0),
        (reg("u32", scale=0.01), 42_949_672.96),
        (reg("u32", scale=0.1), 429_496_729.6),
        (reg("u64"), 2.0**64),
        # Device unit Wh, catalogue unit kWh: 2**32 Wh = 4 294 967.296 kWh.
        (reg("u32", unit="Wh"), 4_294_967.296),
        # A display limit wins over the register's range.
        (reg("u32", rollover_at=99_999_999), 99_999_999.0),
        (reg("u32", metric="water_volume", unit="L", rollover_at=999_999), 999.999),
        (reg("f32"), None),
        (reg("f64"), None),
        (reg("f32", rollover_at=1e6), 1e6),
    ],
)
def test_register_modulus(register: RegisterConfig, modulus: float | None) -> None:
    assert register_modulus(register) == (
        None if modulus is None else pytest.approx(modulus, rel=1e-15)
    )


R, P = Reset.ROLLOVER, Reset.REPLACEMENT


@pytest.mark.parametrize(
    ("register", "previous", "value", "expected"),
    [
        # u16 at scale 1: M = 65 536; 65 530 -> 4 is a step of 4 + 65 536 - 65 530 = 10.
        (reg("u16"), 65_530.0, 4.0, R),
        # The 10 % rule at its edge: 0.1 * 65 536 = 6 553.6.
        (reg("u16"), 60_000.0, 1_017.0, R),  # step 6 553
        (reg("u16"), 60_000.0, 1_018.0, P),  # step 6 554
        # i32: +2 147 483 600 -> -2 147 483 600 is a step of 96 across the sign wrap.
        (reg("i32"), 2_147_483_600.0, -2_147_483_600.0, R),
        # u32 at scale 0.01 kWh: M = 42 949 672.96; 42 949 670.00 -> 1.50: step 4.46.
        (reg("u32", scale=0.01), 42_949_670.00, 1.50, R),
        # The same meter 0.01 kWh lower than before: a step of M - 0.01, not a wrap.
        (reg("u32", scale=0.01), 1_000.00, 999.99, P),
        # A new meter at 12.5 kWh after the old one read 20 000 000: step ~ M/2.
        (reg("u32", scale=0.01), 20_000_000.00, 12.50, P),
        # Display wraps at 99 999 999 (scale 1): 99 999 990 -> 5 is a step of 14.
        (reg("u32", rollover_at=99_999_999), 99_999_990.0, 5.0, R),
        # ... which against the bare u32 (M = 4 294 967 296) would be a replacement.
        (reg("u32"), 99_999_990.0, 5.0, P),
        # Wh on the register, kWh on the wire: M = 4 294 967.296 kWh.
        (reg("u32", unit="Wh"), 4_294_967.0, 0.5, R),
        # A float register does not wrap: any backwards step is a replacement.
        (reg("f32"), 1_000.0, 3.0, P),
        (reg("f64"), 1e12, 1e12 - 1, P),
        # Not backwards: nothing to flag.
        (reg("u16"), 100.0, 100.0, None),
        (reg("u16"), 100.0, 101.0, None),
        (reg("f32"), 5.0, 1e9, None),
    ],
)
def test_classify(
    register: RegisterConfig, previous: float, value: float, expected: Reset | None
) -> None:
    assert classify(previous, value, register_modulus(register)) is expected


def guard(**moduli: float) -> CounterGuard:
    return CounterGuard({("m1", metric): m for metric, m in moduli.items()})


def test_first_reading_and_growth_are_not_flagged() -> None:
    g = guard(active_energy=65_536.0)
    first = g.check("m1", [energy(10.0)])
    assert first.samples == [energy(10.0)]
    assert first.last == {"active_energy": 10.0}
    assert first.resets == []
    g.commit(first)
    assert g.check("m1", [energy(11.0)]).resets == []


def test_poll_is_annotated_and_gauges_are_left_alone() -> None:
    g = guard(active_energy=65_536.0)
    g.commit(g.check("m1", [energy(65_530.0), energy(500.0, "active_power", "kW")]))
    poll = [
        energy(4.0),
        energy(100.0, "active_power", "kW"),  # a gauge going down is just a value
        energy(7.0, "water_volume", "m3"),  # first reading of this series
    ]
    checked = g.check("m1", poll)
    assert checked.samples == [
        Sample("active_energy", 4.0, "kWh", TS, reset="rollover"),
        poll[1],
        poll[2],
    ]
    assert checked.resets == [CounterReset("active_energy", R, 65_530.0, 4.0)]
    assert (checked.rollovers, checked.replacements) == (1, 0)
    assert checked.last == {"active_energy": 4.0, "water_volume": 7.0}


def test_a_series_without_a_modulus_is_replaced_not_rolled_over() -> None:
    # HJ 212 series and float registers: no modulus is known.
    g = guard()
    g.commit(g.check("hj1", [energy(99_999.0, "water_volume", "m3")]))
    checked = g.check("hj1", [energy(3.0, "water_volume", "m3")])
    assert [s.reset for s in checked.samples] == ["replacement"]
    assert (checked.rollovers, checked.replacements) == (0, 1)


def test_check_does_not_change_the_state_commit_does() -> None:
    g = guard(active_energy=65_536.0)
    g.commit(g.check("m1", [energy(65_530.0)]))
    uncommitted = g.check("m1", [energy(4.0)])  # e.g. the outbox refused the poll
    assert uncommitted.resets
    assert g.last("m1", "active_energy") == 65_530.0
    # The next poll is still compared with the last *stored* value.
    assert g.check("m1", [energy(6.0)]).samples[0].reset == "rollover"
    g.commit(g.check("m1", [energy(6.0)]))
    assert g.last("m1", "active_energy") == 6.0
    assert g.check("m1", [energy(7.0)]).resets == []


def test_devices_are_separate_series() -> None:
    g = CounterGuard({})
    g.commit(g.check("a", [energy(100.0)]))
    assert g.check("b", [energy(1.0)]).resets == []


def test_snapshot_and_restore() -> None:
    g = guard(active_energy=65_536.0)
    g.commit(g.check("m1", [energy(65_530.0)]))
    other = guard(active_energy=65_536.0)
    other.restore(g.snapshot())
    assert other.snapshot() == {("m1", "active_energy"): 65_530.0}
    assert other.check("m1", [energy(4.0)]).samples[0].reset == "rollover"


def make_outbox(path: Path, **kw: Any) -> Outbox:
    args: dict[str, Any] = {"max_rows": 100, "max_age_s": 3600.0}
    args.update(kw)
    args.setdefault("overflow", "drop_oldest")
    box = Outbox(path, clock=lambda: T0, **args)
    box.open()
    return box


def store(box: Outbox, g: CounterGuard, value: float) -> bool:
    """What the agent's _store does: check, append with the state, commit if stored."""
    checked = g.check("m1", [energy(value)])
    appended = box.append("m1", checked.samples, last_counters=checked.last)
    if appended.stored:
        g.commit(checked)
    return appended.stored


def test_state_survives_reopening_the_outbox(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = make_outbox(path)
    g = guard(active_energy=65_536.0)
    assert store(box, g, 65_000.0)
    assert store(box, g, 65_530.0)
    box.close()

    box = make_outbox(path)
    restarted = guard(active_energy=65_536.0)
    restarted.restore(box.counter_values())
    assert restarted.snapshot() == {("m1", "active_energy"): 65_530.0}
    assert store(box, restarted, 4.0)
    assert store(box, restarted, 2.0)  # backwards again: a new meter
    assert [(r.value, r.reset) for r in box.pending(10)] == [
        (65_000.0, None),
        (65_530.0, None),
        (4.0, "rollover"),
        (2.0, "replacement"),
    ]
    box.close()


def test_a_refused_poll_leaves_the_stored_state_alone(tmp_path: Path) -> None:
    box = make_outbox(tmp_path / "o.db", max_rows=1, overflow="refuse_new")
    g = guard(active_energy=65_536.0)
    assert store(box, g, 65_530.0)
    assert not store(box, g, 4.0)  # full: refused, so its value was never stored
    assert box.counter_values() == {("m1", "active_energy"): 65_530.0}
    assert g.last("m1", "active_energy") == 65_530.0
    box.close()
