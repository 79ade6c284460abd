"""``smartpark demo`` runs the whole path on embedded services and stops cleanly.

Needs no local services: the demo starts its own from the ``demo`` extra's wheels.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# The same entry point as the ``smartpark`` console script, which an editable
# install provides but a bare checkout does not.
COMMAND = [sys.executable, "-m", "smartpark.cli", "demo"]
STATUS = re.compile(
    r"^t=\d+s  readings/s: (?:\S+ \d+\.\d  )+stored (\d+) rows"
    r"  dead letters (\d+)  outbox (\d+)  alert events (\d+)  webhooks (\d+)$",
    re.M,
)
SUMMARY = re.compile(
    r"^summary after \d+ s: published (\d+) readings.*; stored (\d+) rows", re.M
)
WEBHOOKS = re.compile(r"; webhooks verified (\d+), rejected (\d+)$", re.M)
DATA_DIR = re.compile(r"data in (\S+) \(removed at exit\)")


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention ``text`` (Linux /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def _check_run(out: str, data_dir: str) -> None:
    lines = STATUS.findall(out)
    assert lines, out
    summary = SUMMARY.search(out)
    assert summary is not None, out
    published, stored = int(summary[1]), int(summary[2])
    assert stored > 0, out
    # The drain lets the sink store everything the broker acknowledged to the agents.
    assert stored == published, out
    assert not Path(data_dir).exists(), "the temporary data directory is left"
    if sys.platform == "linux":
        assert _processes_mentioning(data_dir) == []


def test_demo_runs_for_its_duration_and_stores_rows() -> None:
    started = time.monotonic()
    proc = subprocess.run(
        [*COMMAND, "--duration", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data_dir = DATA_DIR.search(proc.stdout)
    assert data_dir is not None, proc.stdout
    _check_run(proc.stdout, data_dir[1])
    assert len(STATUS.findall(proc.stdout)) >= 3, proc.stdout
    # the silenced meter went offline: its webhook arrived, and verified
    assert "webhook     device.offline: " in proc.stdout, proc.stdout
    webhooks = WEBHOOKS.search(proc.stdout)
    assert webhooks is not None, proc.stdout
    assert int(webhooks[1]) >= 1, proc.stdout
    assert int(webhooks[2]) == 0, proc.stdout
    assert elapsed < 90, f"took {elapsed:.0f} s"


def test_demo_stops_cleanly_on_ctrl_c() -> None:
    proc = subprocess.Popen(
        [*COMMAND, "--duration", "0", "--enterprises", "2", "--devices", "2"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        # Wait for the first status line: the pipeline runs and rows are stored.
        seen = []
        deadline = time.monotonic() + 90
        for line in proc.stdout:
            seen.append(line)
            if line.startswith("t=") or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = "".join(seen) + rest
    assert proc.returncode == 0, out + err
    assert "interrupted: stopping" in out
    data_dir = DATA_DIR.search(out)
    assert data_dir is not None, out
    _check_run(out, data_dir[1])
