"""The agent's YAML config: a good file loads; every mistake names file:line: field."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config
from smartpark.errors import ConfigError

# Line numbers matter below: keep this text in sync with the expectations.
GOOD = """\
site: {park: park1, enterprise: alu-smelter}
broker: {host: 127.0.0.1, port: 1883, client_id: edge-alu-smelter, keepalive_s: 30}
outbox: {path: data/outbox.db, max_rows: 1000, max_age_s: 3600, overflow: drop_oldest}
publish: {max_readings_per_message: 500, max_in_flight: 20}
devices:
  - id: pot-line-1-meter
    protocol: modbus_tcp
    host: 10.0.0.21
    port: 502
    unit_id: 1
    poll_interval_s: 10
    timeout_s: 2
    registers:
      - {address: 0, type: u32, scale: 0.01, metric: active_energy, unit: kWh}
      - {address: 2, table: holding, type: f32, metric: active_power, unit: MW}
  - id: water-in
    protocol: modbus_tcp
    host: 10.0.0.22
    poll_interval_s: 60
    registers:
      - address: 0
        table: input
        type: u32
        word_order: little
        metric: water_volume
        unit: L
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.site.enterprise == "alu-smelter"
    assert cfg.agent_id == "agent.edge-alu-smelter"
    # relative outbox paths are relative to the config file, not the cwd
    assert cfg.outbox.path == tmp_path.resolve() / "data" / "outbox.db"
    meter, water = cfg.devices
    assert meter.registers[0].scale == 0.01
    assert meter.registers[1].unit == "MW"
    # defaults a plant engineer may leave out
    assert (water.port, water.unit_id, water.timeout_s) == (502, 1, 2.0)
    assert water.registers[0].word_order == "little"
    assert water.registers[0].byte_order == "big"
    assert cfg.broker.password is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a typo'd type
        (
            "type: f32, metric: active_power",
            "type: u23, metric: active_power",
            "agent.yaml:15: devices[0].registers[1].type: unknown value 'u23' (expected"
            " one of 'u16', 'i16', 'u32', 'i32', 'f32', 'u64', 'i64' or 'f64')",
        ),
        # a typo'd key is reported on the key's own line
        (
            "    timeout_s: 2\n",
            "    timout_s: 2\n",
            "agent.yaml:12: devices[0].timout_s: unknown field (a typo?)",
        ),
        (
            "broker: {host",
            "brokr: {host",
            "agent.yaml:2: brokr: unknown field (a typo?)",
        ),
        # a wrong type
        (
            "    port: 502\n",
            "    port: five-o-two\n",
            "agent.yaml:9: devices[0].port: Input should be a valid integer, unable to "
            "parse string as an integer (got 'five-o-two')",
        ),
        (
            "poll_interval_s: 60",
            "poll_interval_s: -1",
            "agent.yaml:19: devices[1].poll_interval_s: Input should be greater than 0 "
            "(got -1)",
        ),
        # an unknown metric, with a hint
        (
            "metric: water_volume",
            "metric: water_volum",
            "agent.yaml:25: devices[1].registers[0].metric: unknown metric "
            "'water_volum' (did you mean 'water_volume'?)",
        ),
        # a unit that cannot become the metric's unit
        (
            "metric: active_power, unit: MW",
            "metric: active_power, unit: MWh",
            "agent.yaml:15: devices[0].registers[1].unit: unit 'MWh' cannot be "
            "converted to 'kW' for active_power",
        ),
        (
            "        unit: L\n",
            "        unit: kg\n",
            "agent.yaml:26: devices[1].registers[0].unit: unit 'kg' cannot be "
            "converted to 'm3' for water_volume",
        ),
        # ids end up in MQTT topics
        (
            "id: water-in",
            "id: water/in",
            "agent.yaml:16: devices[1].id: invalid id 'water/in': 1-64 characters of "
            "A-Z a-z 0-9 _ . : -, starting with a letter or digit",
        ),
        # cross-field checks point at the offending entry, not at its list
        (
            "id: water-in",
            "id: pot-line-1-meter",
            "agent.yaml:16: devices[1].id: duplicate device id 'pot-line-1-meter'",
        ),
        (
            "metric: active_power, unit: MW",
            "metric: active_energy, unit: MWh",
            "agent.yaml:15: devices[0].registers[1].metric: metric 'active_energy' is "
            "already read by registers[0]",
        ),
        # a missing field is reported on its parent mapping
        (
            "    host: 10.0.0.22\n",
            "",
            "agent.yaml:16: devices[1].host: missing required field",
        ),
        (
            "        word_order: little\n",
            "        word_order: middle\n",
            "agent.yaml:24: devices[1].registers[0].word_order: unknown value 'middle' "
            "(expected one of 'big' or 'little')",
        ),
        (
            "      - address: 0\n",
            "      - address: 65535\n",
            "agent.yaml:21: devices[1].registers[0].address: a u32 at 65535 runs past "
            "65535",
        ),
        (
            "overflow: drop_oldest",
            "overflow: drop_newest",
            "agent.yaml:3: outbox.overflow: unknown value 'drop_newest' (expected one "
            "of 'drop_oldest' or 'refuse_new')",
        ),
        (
            "client_id: edge-alu-smelter",
            "client_id: " + "x" * 60,
            "agent.yaml:2: broker.client_id: at most 58 characters: the agent's status"
            " is published as device 'agent.{client_id}'",
        ),
        # YAML itself
        (
            "    unit_id: 1\n",
            "    unit_id: 1\n    unit_id: 2\n",
            "agent.yaml:11: duplicate key 'unit_id'",
        ),
        (
            "    host: 10.0.0.21\n",
            "    host: [10.0.0.21\n",
            "agent.yaml:9: not valid YAML: expected ',' or ']', but got ':'",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    err = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert str(err) == expected
    assert err.file == "agent.yaml"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert str(error_of(tmp_path, "")) == "agent.yaml: the file is empty"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_password_from_file_is_secret(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("s3cret\n", encoding="utf-8")
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, username: edge, password_file: mqtt.pass}"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.broker.password is not None
    assert cfg.broker.password.get_secret_value() == "s3cret"
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json()):
        assert "s3cret" not in shown


def test_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, password_env: SP_TEST_PW}"
    )
    monkeypatch.setenv("SP_TEST_PW", "from-env")
    password = load_config(write(tmp_path, text)).broker.password
    assert password is not None
    assert password.get_secret_value() == "from-env"
    monkeypatch.delenv("SP_TEST_PW")
    assert str(error_of(tmp_path, text)) == (
        "agent.yaml:2: broker.password_env: environment variable SP_TEST_PW is not set"
    )


def test_unreadable_password_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, password_file: none.pass}"
    )
    assert str(error_of(tmp_path, text)) == (
        "agent.yaml:2: broker.password_file: cannot read password file: "
        "No such file or directory"
    )


def test_parse_config_from_data_has_no_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"site": {"park": "p"}}, source="generated")
    assert str(info.value) == "generated: site.enterprise: missing required field"
    assert info.value.line is None


def test_models_are_frozen(tmp_path: Path) -> None:
    cfg: AgentConfig = load_config(write(tmp_path, GOOD))
    with pytest.raises(ValueError, match="frozen"):
        cfg.devices[0].port = 1


def test_the_shipped_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPARK_MQTT_PASSWORD", "x")
    example = Path(__file__).resolve().parents[2] / "edge_agent" / "agent.example.yaml"
    cfg = load_config(example)
    assert [d.id for d in cfg.devices] == ["pot-line-1-meter", "fresh-water-in"]
    assert cfg.devices[0].registers[1].unit == "MW"
