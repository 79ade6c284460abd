"""Platform services as real OS processes, so fault tests can SIGKILL them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path


class ServiceProcess:
    """``smartpark <command>`` in a child process with its own log file."""

    def __init__(self, command: list[str], env: dict[str, str], log: Path) -> None:
        self.command = command
        self.env = env
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = os.environ | self.env
        with self.log.open("ab") as out:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "smartpark.cli", *self.command],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no chance to flush, acknowledge or commit anything."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        self._proc.wait(timeout=30)

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait: the graceful path. A process that does not exit in
        time is killed (never left behind) and reported as ``-SIGKILL``."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(timeout=30)
            return -signal.SIGKILL

    def logged(self, text: str) -> Callable[[], bool]:
        """A predicate: has the process written ``text`` to its log yet?"""
        return lambda: (
            self.log.exists() and text in self.log.read_text(errors="replace")
        )

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


def services_script(*args: str) -> None:
    """Run ``deploy/local/services`` (e.g. ``restart kafka``) and fail loudly."""
    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [str(root / "deploy/local/services"), *args],
        check=True,
        timeout=300,
    )
