"""The drill's own processes: platform services, a real edge agent, the API.

- :class:`Service`: ``smartpark <args>`` as a child process that a fault kills
  with SIGKILL and that supervision starts again when it exits by itself.
- :class:`EdgeSite`: a real edge agent (``smartpark edge run``) polling a simulated
  enterprise (``smartpark simulate park``: Modbus TCP meters, one poll a second),
  publishing through the drill's TCP proxy, so the edge's network cut and
  Mosquitto's faults reach it as they reach the load; the ``edge`` fault kills it
  with SIGKILL. Its ledger is its own outbox: a poll is stored there with the
  device's next sequence number before anything is sent (:mod:`edge_agent.outbox`),
  so in the end every (device, seq) from 1 to the outbox's last one must be in the
  database, less the polls the outbox's bounds dropped or refused (counted, and
  none expected in a drill).
- :class:`Api`: ``smartpark api`` on a free loopback port; the ``api`` fault kills
  it with SIGKILL and measures how long until ``/ready`` (database and Kafka
  answer) says 200 again after the restart.
"""

from __future__ import annotations

import json
import secrets
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psycopg
import yaml

from bench.figures import spawn

EDGE_DEVICES = 4  # Modbus meters of the drill's enterprise, one poll a second each
EDGE_POLL_S = 1.0
# The outbox counters of polls or rows it gave up (edge_agent.outbox)
LOSS_COUNTERS = (
    "dropped_rows",
    "expired_rows",
    "refused_polls",
    "refused_rows",
    "requeue_skipped_rows",
)


class Service:
    """``smartpark <args>`` as a child process, killed with SIGKILL by a fault."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log: Path):
        self.name, self.args, self.env, self.log = name, args, env, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.held = False  # down on purpose (a fault): not restarted by supervision
        self.exits: list[int] = []  # exits nobody asked for

    def start(self) -> None:
        self.proc = spawn(self.args, self.env, self.log)
        self.held = False

    @property
    def pid(self) -> int:
        return -1 if self.proc is None else self.proc.pid

    def kill(self) -> str:
        """SIGKILL; what happened, for the report."""
        assert self.proc is not None
        self.held = True
        self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait(30)
        return f"{self.name} pid {self.proc.pid} exited {rc}"

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        self.held = True
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def logged(self, text: str) -> bool:
        return self.log.exists() and text in self.log.read_text(errors="replace")

    def lines(self, prefix: str) -> list[str]:
        """The rest of each line of the log that starts with ``prefix``."""
        if not self.log.exists():
            return []
        return [
            line[len(prefix) :].strip()
            for line in self.log.read_text(errors="replace").splitlines()
            if line.startswith(prefix)
        ]


class EdgeSite:
    """The simulated enterprise and its edge agent (see the module doc)."""

    def __init__(
        self,
        park: str,
        mqtt: tuple[str, int],
        env: dict[str, str],
        logs: Path,
        *,
        gateway: bool = False,
    ) -> None:
        self.park = park
        self.gateway = gateway  # the agent sends gateway messages (publish.gateway)
        self.dir = logs / "edge"
        self.sim = Service(
            "simulator",
            [
                "simulate", "park", "--seed", "1", "--park", park,
                "--enterprises", "1", "--devices", str(EDGE_DEVICES),
                "--port-base", "0", "--config-dir", str(self.dir),
                "--mqtt", f"{mqtt[0]}:{mqtt[1]}",
                "--poll-interval-s", f"{EDGE_POLL_S:g}",
            ],
            env,
            logs / "simulator.log",
        )  # fmt: skip
        self.config: Path | None = None
        self.agent: Service | None = None
        self._env, self._logs = env, logs

    def start(self, timeout_s: float = 60.0) -> Service:
        """Start the simulator, then the agent on the config it wrote."""
        self.sim.start()
        deadline = time.monotonic() + timeout_s
        while not (written := self.sim.lines("wrote ")):
            if self.sim.proc is not None and self.sim.proc.poll() is not None:
                raise RuntimeError(f"the park simulator exited (log {self.sim.log})")
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"no agent config in {timeout_s:g} s: {self.sim.log}"
                )
            time.sleep(0.2)
        self.config = Path(written[0])
        if self.gateway:
            data = yaml.safe_load(self.config.read_text(encoding="utf-8"))
            data.setdefault("publish", {})["gateway"] = True
            self.config.write_text(yaml.safe_dump(data), encoding="utf-8")
        self.agent = Service(
            "edge",
            ["edge", "run", "--config", str(self.config), "--stats-interval-s", "5"],
            self._env,
            self._logs / "edge.log",
        )
        self.agent.start()
        return self.agent

    @property
    def outbox(self) -> Path:
        assert self.config is not None
        return self.dir / "outbox" / f"{self.config.stem}.db"

    @property
    def enterprise(self) -> str:
        assert self.config is not None
        return self.config.stem

    def _read(self, query: str) -> list[tuple[Any, ...]]:
        # read-only, beside the agent's own connection (WAL)
        db = sqlite3.connect(f"file:{self.outbox}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(query).fetchall()
        finally:
            db.close()

    def pending(self) -> int:
        """Rows the broker has not acknowledged yet (-1 before the outbox exists)."""
        if not self.outbox.exists():
            return -1
        return int(
            self._read("SELECT count(*) FROM readings WHERE acked_ms IS NULL")[0][0]
        )

    def last_seqs(self) -> dict[str, int]:
        return {
            d: int(s) for d, s in self._read("SELECT device, last_seq FROM sequences")
        }

    def losses(self) -> dict[str, int]:
        """The outbox's own counters of what it dropped or refused (none expected)."""
        return {
            name: int(value)
            for name, value in self._read("SELECT name, value FROM counters")
            if value and name in LOSS_COUNTERS
        }

    async def missing(self, dsn: str, schema: str) -> tuple[int, list[tuple[str, int]]]:
        """(polls the outbox numbered, those of them not in the database)."""
        expected = {
            (device, seq)
            for device, last in self.last_seqs().items()
            for seq in range(1, last + 1)
        }
        async with await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, options=f"-c search_path={schema}"
        ) as conn:
            cur = await conn.execute(
                "SELECT DISTINCT s.device, t.seq FROM telemetry t"
                " JOIN series s ON s.id = t.series_id"
                " WHERE s.park = %s AND s.enterprise = %s",
                (self.park, self.enterprise),
            )
            stored = {(d, int(s)) for d, s in await cur.fetchall()}
        return len(expected), sorted(expected - stored)


class Api:
    """``smartpark api`` on a free loopback port (see the module doc)."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.service = Service(
            "api",
            ["api", "--host", "127.0.0.1", "--port", str(self.port)],
            # keys are stored as HMACs with a pepper; the drill's is thrown away
            env | {"SMARTPARK_API__KEY_PEPPER": secrets.token_hex(32)},
            logs / "api.log",
        )

    def ready(self) -> bool:
        url = f"http://127.0.0.1:{self.port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200 and json.load(resp))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def ready_after(self, timeout_s: float) -> float | None:
        """Seconds until ``/ready`` answers 200, None if not within ``timeout_s``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            if self.ready():
                return time.monotonic() - start
            time.sleep(0.1)
        return None
