"""Settings are checked at start-up: a typo names its environment variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from smartpark.errors import ConfigError
from smartpark.settings import ConsumerSettings, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("SMARTPARK_DATABASE__DIALECT", "timescale-db"),
        ("SMARTPARK_DATABASE__BULK_METHOD", "magic"),
        ("SMARTPARK_SINK__BATCH_MAX_RECORDS", "0"),
        ("SMARTPARK_NOTIFIER__BATCH_MAX_WAIT_MS", "soon"),
    ],
)
def test_a_wrong_setting_fails_at_start_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=f"^{var}: "):
        load_settings()


def test_the_consumers_share_one_settings_base() -> None:
    s = Settings()
    for consumer in (s.sink, s.rules, s.notifier):
        assert isinstance(consumer, ConsumerSettings)
    assert len({s.sink.group_id, s.rules.group_id, s.notifier.group_id}) == 3


@pytest.mark.parametrize("command", ["db", "sink", "bridge", "notifier"])
def test_every_command_refuses_a_bad_setting_with_exit_2(command: str) -> None:
    args = {"db": ["db", "info"]}.get(command, [command])
    done = subprocess.run(
        [sys.executable, "-m", "smartpark.cli", *args],
        env=os.environ | {"SMARTPARK_DATABASE__DIALECT": "postgress"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(
        f"smartpark {command}: SMARTPARK_DATABASE__DIALECT: Input should be"
    ), done.stderr
