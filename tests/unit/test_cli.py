"""The smartpark command dispatches and explains itself."""

from __future__ import annotations

import pytest

from smartpark.cli import main


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("edge", "bridge", "sink", "db", "simulate", "demo"):
        assert command in out


def test_unknown_command_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["brdige"]) == 2
    assert "unknown command 'brdige'" in capsys.readouterr().err
