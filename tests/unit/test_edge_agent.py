"""Agent pieces without services: backoff schedule, stats line, CLI errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edge_agent import cli
from edge_agent.agent import backoff_delay
from edge_agent.hj212.listener import ListenerStats
from edge_agent.outbox import OutboxStats
from edge_agent.publisher import PublisherStats, Refusal
from edge_agent.stats import AgentStats, DeviceStats


@pytest.mark.parametrize(
    ("interval", "failures", "cap", "expected"),
    [
        (10.0, 0, 300.0, 10.0),  # healthy: the normal cadence
        (10.0, 1, 300.0, 10.0),  # one failure: try again at the normal cadence
        (10.0, 2, 300.0, 20.0),
        (10.0, 3, 300.0, 40.0),
        (10.0, 5, 300.0, 160.0),
        (10.0, 6, 300.0, 300.0),  # capped
        (0.2, 4, 1.0, 1.0),
        (10.0, 10_000, 300.0, 300.0),  # a device dead for weeks does not overflow
    ],
)
def test_backoff_delay(
    interval: float, failures: int, cap: float, expected: float
) -> None:
    assert backoff_delay(interval, failures, cap) == expected


def test_stats_line_names_failing_devices() -> None:
    stats = AgentStats(
        devices={
            "meter-1": DeviceStats(polls_ok=5, last_seq=5),
            "meter-2": DeviceStats(
                errors=3, consecutive_failures=3, last_error="no answer", backoff_s=30
            ),
        },
        outbox=OutboxStats(12, 3.4, 1000, 0, 0, 0, 0),
        publisher=PublisherStats(False, 1, 1, "lost", 2, 10, 8, 40, 32),
    )
    line = cli.format_stats(stats)
    assert "broker DISCONNECTED" in line
    assert "outbox 12/1000 rows (oldest 3 s" in line
    assert "meter-1: ok 5 errors 0 seq 5;" in line
    assert "kept for resend 0 rows, sent again 0 readings after 0 lost" in line
    assert "NOT QUEUED AGAIN" not in line
    assert "meter-2: ok 0 errors 3 seq 0 FAILING x3 (no answer) backoff 30 s" in line
    assert "hj212" not in line
    assert "BROKER REFUSES" not in line


def test_stats_line_names_the_topics_the_broker_refuses() -> None:
    refusal = Refusal("sp/v1/p1/e1/meter-2/telemetry", "Not authorized (0x87)", 0, 4)
    stats = AgentStats(
        devices={"meter-2": DeviceStats(polls_ok=5, last_seq=5)},
        outbox=OutboxStats(12, 3.4, 1000, 0, 0, 0, 0),
        publisher=PublisherStats(
            True,
            1,
            0,
            "",
            0,
            10,
            6,
            40,
            24,
            refused_messages={"Not authorized (0x87)": 4},
            refusing=(refusal,),
        ),
    )
    line = cli.format_stats(stats)
    assert line.startswith(
        "BROKER REFUSES sp/v1/p1/e1/meter-2/telemetry: Not authorized (0x87);"
    )
    assert "messages published 10 acked 6 refused 4 in flight 0" in line


def test_stats_line_shows_the_hj212_listener_and_counter_resets() -> None:
    hj = ListenerStats(frames_ok=7, unmapped_codes=2, connections_open=1)
    hj.frames_rejected.update({"crc": 2, "unknown_mn": 1})
    stats = AgentStats(
        devices={"meter-1": DeviceStats(polls_ok=5, rollovers=1, replacements=2)},
        outbox=OutboxStats(0, None, 1000, 0, 0, 0, 0),
        publisher=PublisherStats(True, 1, 0, "", 0, 10, 10, 40, 40),
        hj212=hj,
    )
    line = cli.format_stats(stats)
    assert (
        "hj212 1 loggers connected, packets ok 7 rejected 3 (crc 2, unknown_mn 1),"
        " unmapped codes 2;" in line
    )
    assert "meter-1: ok 5 errors 0 seq 0 counter rollovers 1 replacements 2" in line


def test_cli_bad_config_exits_2_with_the_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("site: {park: p1, enterprise: e1}\nbrokr: {}\n", encoding="utf-8")
    assert cli.main(["check", "--config", str(path)]) == 2
    assert capsys.readouterr().err == (
        "smartpark edge: agent.yaml:2: brokr: unknown field (a typo?)\n"
    )
    assert cli.main(["run", "--config", str(tmp_path / "missing.yaml")]) == 2


def test_cli_requires_a_command() -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


def test_edge_agent_imports_only_its_small_dependency_set() -> None:
    # The agent runs on plant gateways: no platform libraries may creep in.
    code = (
        "import sys, edge_agent.agent, edge_agent.cli\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    ).stdout.split()
    third_party = {
        m for m in out if m not in sys.stdlib_module_names and not m.startswith("_")
    }
    allowed = {
        "edge_agent", "smartpark", "paho", "pymodbus", "pydantic", "pydantic_core",
        "yaml", "annotated_types", "typing_extensions", "typing_inspection",
        "serial",  # pyserial: pymodbus opens RS-485 ports with it (modbus_rtu)
    }  # fmt: skip
    assert third_party - {"cython_runtime"} <= allowed
    assert "simulators" not in out


def test_stats_line_shows_the_resend_window() -> None:
    stats = AgentStats(
        devices={},
        outbox=dataclasses.replace(
            OutboxStats(0, None, 1000, 0, 0, 0, 0),
            acked_rows=120,
            requeue_skipped_rows=7,
        ),
        publisher=dataclasses.replace(
            PublisherStats(True, 1, 0, "", 0, 10, 10, 40, 40),
            resends=2,
            resent_readings=300,
        ),
    )
    line = cli.format_stats(stats)
    assert (
        "kept for resend 120 rows, sent again 300 readings after 2 lost connections,"
        " NOT QUEUED AGAIN 7 (outbox full)"
    ) in line
