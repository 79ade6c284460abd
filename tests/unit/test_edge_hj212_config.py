"""The ``hj212`` section of the agent's config: loggers, series, pollutants, errors."""

from __future__ import annotations

from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from edge_agent.config import load_config
from smartpark.errors import ConfigError

# Line numbers matter below: keep this text in sync with the expectations.
GOOD = """\
site: {park: park1, enterprise: coal-power}
broker: {host: 127.0.0.1, client_id: edge-coal-power}
outbox: {path: outbox.db}
hj212:
  port: 9001
  loggers:
    - mn: "88888880000001"
      device: stack-1-cems
      hourly: stack-1-cems.hour
      password_env: TEST_HJ212_PW
      pollutants:
        a21026: {metric: so2, corrected: so2_corrected}
        a21002: {metric: nox, corrected: nox_corrected, unit: ug/m3}
        a19001: {metric: o2}
    - mn: "88888880000002"
      device: outlet-1-water
      timezone: UTC
      pollutants:
        w01018: {metric: cod}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_HJ212_PW", "s3cret-pw")


def test_good_file_maps_each_logger(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.devices == ()
    assert cfg.hj212 is not None
    assert (cfg.hj212.host, cfg.hj212.port, cfg.hj212.strict) == ("0.0.0.0", 9001, True)
    cems = cfg.hj212.mappings()["88888880000001"]
    assert cems.device_id == "stack-1-cems"
    assert cems.intervals == {"2061": "stack-1-cems.hour"}
    assert cems.metrics == {"a21026": "so2", "a21002": "nox", "a19001": "o2"}
    assert cems.corrected == {"a21026": "so2_corrected", "a21002": "nox_corrected"}
    assert cems.units == {"a21002": "ug/m3"}
    assert cems.password == "s3cret-pw"
    assert cems.tz == ZoneInfo("Asia/Shanghai")
    water = cfg.hj212.mappings()["88888880000002"]
    assert (water.password, water.tz, water.intervals) == (None, ZoneInfo("UTC"), {})
    # the password is read but never shown
    assert "s3cret-pw" not in repr(cfg)
    assert "s3cret-pw" not in str(cfg.model_dump())
    assert "s3cret-pw" not in repr(cems)


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "{metric: so2, corrected",
            "{metric: s02, corrected",
            "agent.yaml:12: hj212.loggers[0].pollutants.a21026.metric: unknown metric"
            " 's02' (did you mean 'so2'?)",
        ),
        (
            "unit: ug/m3}",
            "unit: mg/L}",
            "agent.yaml:13: hj212.loggers[0].pollutants.a21002.unit: unit 'mg/L'"
            " cannot be converted to 'mg/m3' for nox (for metric)",
        ),
        (
            "{metric: cod}",
            "{}",
            "agent.yaml:19: hj212.loggers[1].pollutants.w01018.metric: give metric,"
            " corrected or both",
        ),
        (
            '"88888880000002"',
            '"88888880000001"',
            "agent.yaml:15: hj212.loggers[1].mn: MN '88888880000001' is already"
            " loggers[0]",
        ),
        (
            '"88888880000002"',
            '"8888;0002"',
            "agent.yaml:15: hj212.loggers[1].mn: MN '8888;0002' may not contain ; , = &"
            " or spaces",
        ),
        (
            "device: outlet-1-water",
            "device: stack-1-cems.hour",
            "agent.yaml:16: hj212.loggers[1].device: device id 'stack-1-cems.hour' is"
            " already used by hj212.loggers[0].hourly",
        ),
        (
            "timezone: UTC",
            "timezone: Mars/Olympus",
            "agent.yaml:17: hj212.loggers[1].timezone: unknown time zone"
            " 'Mars/Olympus'",
        ),
        (
            "password_env: TEST_HJ212_PW",
            "password_env: TEST_HJ212_UNSET",
            "agent.yaml:10: hj212.loggers[0].password_env: environment variable"
            " TEST_HJ212_UNSET is not set",
        ),
        (
            "  port: 9001\n",
            "  port: 9001\n  strict: maybe\n",
            "agent.yaml:6: hj212.strict: Input should be a valid boolean, unable to"
            " interpret input (got 'maybe')",
        ),
        (
            "      pollutants:\n        w01018",
            "      polutants:\n        w01018",
            "agent.yaml:18: hj212.loggers[1].polutants: unknown field (a typo?)",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert GOOD.count(old) == 1, old
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, GOOD.replace(old, new)))
    assert str(info.value) == expected


def test_a_modbus_device_and_a_logger_series_cannot_share_an_id(
    tmp_path: Path,
) -> None:
    text = GOOD.replace(
        "hj212:\n",
        "devices:\n"
        "  - {id: stack-1-cems.hour, protocol: modbus_tcp, host: 10.0.0.2,"
        " poll_interval_s: 5,\n"
        "     registers: [{address: 0, type: u16, metric: o2, unit: '%'}]}\n"
        "hj212:\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == (
        "agent.yaml:12: hj212.loggers[0].hourly: device id 'stack-1-cems.hour' is"
        " already used by devices[0]"
    )


def test_nothing_to_read_is_a_mistake(tmp_path: Path) -> None:
    text = GOOD[: GOOD.index("hj212:")]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert str(info.value) == (
        "agent.yaml:1: devices: give at least one device or an hj212 listener"
    )


def test_an_interval_may_share_the_loggers_device(tmp_path: Path) -> None:
    """Interval readings carry their data type, so they need no device of their
    own; configurations that give them one keep working."""
    config = load_config(
        write(
            tmp_path, GOOD.replace("hourly: stack-1-cems.hour", "hourly: stack-1-cems")
        )
    )
    assert config.hj212 is not None
    mapping = config.hj212.loggers[0].mapping()
    assert mapping.series_device("2061") == mapping.device_id == "stack-1-cems"
