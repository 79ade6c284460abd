"""``smartpark replay run``: what stops it before any database work, and how."""

from __future__ import annotations

import pytest

from api.replay.cli import main

ARGS = ["run", "--park", "p1", "--start", "2026-11-01T00:00+08:00",
        "--end", "2026-11-02T00:00+08:00", "--out", "report.csv"]  # fmt: skip


def test_without_a_signing_key_it_stops_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("SMARTPARK_SIGNING__PRIVATE_KEY", raising=False)
    assert main(ARGS) == 2
    assert "SMARTPARK_SIGNING__PRIVATE_KEY: required to sign" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--start", "2026-11-01T00:00"], "needs a zone"),
        (["--pack-version", "1", "--pack", "x.yaml"], "not allowed with argument"),
        (["--enterprise", "e1", "--device", "d1"], "not allowed with argument"),
        (["--warmup", "soon"], "not a duration"),
    ],
)
def test_bad_arguments_exit_2(
    change: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main([*ARGS, *change])
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err
