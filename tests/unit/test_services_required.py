"""A missing service fails the run; it never skips (so CI cannot pass without it)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_integration_test_fails_when_a_service_is_missing() -> None:
    env = os.environ | {
        "CI": "true",
        "SMARTPARK_TEST_KAFKA": f"127.0.0.1:{closed_port()}",
    }
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            "--tb=short",
            "tests/integration/test_bridge.py",
            "-k",
            "keyed_by_enterprise",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stdout
    assert "Kafka is not answering" in result.stdout
    assert "deploy/local/services up" in result.stdout
    assert "1 error" in result.stdout
    assert "skipped" not in result.stdout
