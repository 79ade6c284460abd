"""``rollover_at`` in a register config: a counter's display limit, checked at load."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config
from edge_agent.counters import moduli_from_config
from smartpark.errors import ConfigError

# Line numbers matter below: the register under test is on line 10.
TEMPLATE = """\
site: {{park: park1, enterprise: e1}}
broker: {{host: 127.0.0.1, client_id: edge-e1}}
outbox: {{path: outbox.db}}
devices:
  - id: m1
    protocol: modbus_tcp
    host: 10.0.0.21
    poll_interval_s: 10
    registers:
      - {{address: 0, {register}}}
      - {{address: 8, type: f32, metric: active_power, unit: kW}}
"""


def load(tmp_path: Path, register: str) -> AgentConfig:
    path = tmp_path / "agent.yaml"
    path.write_text(TEMPLATE.format(register=register), encoding="utf-8")
    return load_config(path)


@pytest.mark.parametrize(
    ("register", "metric", "modulus"),
    [
        # The display wraps at 99 999 999 kWh, long before the u32 register would.
        (
            "type: u32, metric: active_energy, unit: kWh, rollover_at: 99999999",
            "active_energy",
            99_999_999.0,
        ),
        # Device unit to catalogue unit: 9 999 999 L wraps at 9 999.999 m3.
        (
            "type: u32, metric: water_volume, unit: L, rollover_at: 9999999",
            "water_volume",
            9_999.999,
        ),
        # A float register wraps only where the config says.
        (
            "type: f32, metric: steam_mass, unit: t, rollover_at: 1000000",
            "steam_mass",
            1_000_000.0,
        ),
        # Without rollover_at an integer register wraps at its range: 2**32 * 0.01.
        (
            "type: u32, metric: active_energy, unit: kWh, scale: 0.01",
            "active_energy",
            42_949_672.96,
        ),
        # 2**16 MWh is 65 536 000 kWh.
        ("type: u16, metric: active_energy, unit: MWh", "active_energy", 65_536_000.0),
    ],
)
def test_rollover_at_sets_the_modulus(
    tmp_path: Path, register: str, metric: str, modulus: float
) -> None:
    assert moduli_from_config(load(tmp_path, register)) == {
        ("m1", metric): pytest.approx(modulus, rel=1e-15)
    }


def test_a_float_register_without_rollover_at_has_no_modulus(tmp_path: Path) -> None:
    config = load(tmp_path, "type: f64, metric: active_energy, unit: kWh")
    assert moduli_from_config(config) == {}


@pytest.mark.parametrize(
    ("register", "reason"),
    [
        (
            "type: u32, metric: active_energy, unit: kWh, rollover_at: 0",
            "rollover_at: Input should be greater than 0 (got 0)",
        ),
        (
            "type: u32, metric: active_energy, unit: kWh, rollover_at: -5",
            "rollover_at: Input should be greater than 0 (got -5)",
        ),
        (
            "type: f32, metric: active_energy, unit: kWh, rollover_at: .inf",
            "rollover_at: Input should be a finite number",
        ),
        (
            "type: f32, metric: active_power, unit: kW, rollover_at: 1000",
            "rollover_at: only for counter metrics; active_power is a gauge",
        ),
        (
            "type: u16, metric: active_energy, unit: kWh, rollover_at: 99999",
            "rollover_at: beyond the register's range: a u16 at scale 1 wraps at "
            "65536 first",
        ),
        (
            "type: u32, metric: active_energy, unit: kWh, scale: 0.01,"
            " rollover_at: 99999999",
            "rollover_at: beyond the register's range: a u32 at scale 0.01 wraps at "
            "42949672.96 first",
        ),
    ],
)
def test_mistakes_name_the_field(tmp_path: Path, register: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, register)
    assert str(info.value).startswith("agent.yaml:10: devices[0].registers[0]."), str(
        info.value
    )
    assert reason in str(info.value)
