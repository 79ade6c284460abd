"""What every component benchmark shares: a figure beside its baseline, the platform
services as measured processes, and drain rates read from progress samples.

A :class:`Figure` is one measured rate printed beside the raw baseline measured in
the same run on the same input, and their ratio; the goal, where the issue sets one,
is printed with it and judged from the numbers.

Service processes (:class:`ServiceProcess`) are ``smartpark <command>`` children, as
they run in production; their peak resident set size is read from the kernel
(``VmHWM`` in ``/proc/<pid>/status``, the high-water mark of the process's RSS) just
before they are stopped, so it covers the whole run.

Rates of a drain (:func:`drain_rate`): a service started on a backlog is sampled
(units done so far, wall clock) until it has done everything; the rate counts from
the first sample that shows progress to the first that shows the end, so start-up
(connecting, joining the group) is not in the figure, and is at most one sampling
period late at either end.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from smartpark.settings import Settings

SAMPLE_S = 0.1  # how often a drain's progress is sampled


@dataclass(frozen=True)
class Figure:
    """A measured figure beside its baseline from the same run.

    ``goal_ratio``: the issue asks for figure / baseline at least this;
    ``goal_max``: it asks for the figure itself at most this (bytes a reading).
    """

    what: str
    value: float
    unit: str
    baseline: str
    baseline_value: float
    goal_ratio: float | None = None
    goal_max: float | None = None

    @property
    def ratio(self) -> float:
        if not self.baseline_value:
            return math.nan
        return self.value / self.baseline_value

    @property
    def meets_goal(self) -> bool | None:
        if self.goal_ratio is not None:
            return self.ratio >= self.goal_ratio
        if self.goal_max is not None:
            return self.value <= self.goal_max
        return None

    def goal_text(self) -> str:
        verdict = "met" if self.meets_goal else "NOT met"
        if self.goal_ratio is not None:
            return f"goal ratio >= {self.goal_ratio:.0%}: {verdict}"
        if self.goal_max is not None:
            return f"goal <= {self.goal_max:g} {self.unit}: {verdict}"
        return ""

    def cell(self, value: float) -> str:
        return f"{value:,.1f}" if abs(value) < 1000 else f"{value:,.0f}"

    def line(self) -> str:
        return (
            f"  {self.what:<36} {self.cell(self.value):>11} {self.unit:<11}"
            f" vs {self.baseline:<36} {self.cell(self.baseline_value):>11}"
            f"  ratio {self.ratio:7.1%}  {self.goal_text()}"
        ).rstrip()


@dataclass(frozen=True)
class Memory:
    """Peak resident set size of one process of a run, and the CPU time it used
    (user + system; beside the wall time of its work it tells a component that
    computes from one that waits). ``cpu_s`` is NaN where not measured."""

    process: str
    peak_kib: int
    cpu_s: float = math.nan
    alive_s: float = math.nan  # from its start to when it was measured

    def cpu_text(self) -> str:
        if math.isnan(self.cpu_s):
            return ""
        return (
            f"CPU {self.cpu_s:.2f} s in {self.alive_s:.2f} s alive"
            f" ({self.cpu_s / self.alive_s:.0%})"
        )

    def line(self) -> str:
        cpu = self.cpu_text()
        return f"  peak RSS {self.process:<40} {self.peak_kib / 1024:8.1f} MiB" + (
            f", {cpu}" if cpu else ""
        )


@dataclass
class Progress:
    """(seconds since the drain started, units done) samples of one drain."""

    label: str
    total: int
    samples: list[tuple[float, int]] = field(default_factory=list)

    def add(self, at_s: float, done: int) -> None:
        self.samples.append((at_s, done))

    @property
    def complete(self) -> bool:
        return bool(self.samples) and self.samples[-1][1] >= self.total


def drain_rate(progress: Progress) -> float:
    """Units per second from the first sample showing progress to the first showing
    the whole backlog done. A backlog done within one sample has no such span: then
    from the last sample showing nothing (or the drain's start), a lower bound late
    by at most one period. NaN if the drain never finished."""
    moving = [(t, n) for t, n in progress.samples if n > 0]
    ends = [(t, n) for t, n in moving if n >= progress.total]
    if not ends:
        return math.nan
    (t0, n0), (t1, n1) = moving[0], ends[0]
    if t1 <= t0:
        idle = [(t, n) for t, n in progress.samples if n == 0 and t < t1]
        # none: done before the first sample; from the drain's start then
        t0, n0 = idle[-1] if idle else (0.0, 0)
    return (n1 - n0) / (t1 - t0) if t1 > t0 else math.nan


def own_peak_kib() -> int:
    """Peak RSS of this (the bench) process so far, in KiB (Linux reports KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def peak_rss_kib(pid: int) -> int:
    """Peak RSS of a live process ``pid`` (its ``VmHWM``), in KiB; 0 if unknown."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process ``pid`` so far; NaN if unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return math.nan
    fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _group_of(entry: Path) -> str | None:
    """What process ``entry`` (``/proc/<pid>``) is, for :class:`GroupSampler`."""
    comm = (entry / "comm").read_text().strip()
    if comm == "postgres":
        return "PostgreSQL"
    if comm == "mosquitto":
        return "Mosquitto"
    if comm == "java":
        cmdline = (entry / "cmdline").read_bytes()
        if b"kafka" in cmdline:
            return "Kafka cluster (idle)" if b"kafka-cluster" in cmdline else "Kafka"
    return None


class GroupSampler:
    """CPU seconds of the brokers and the database over a span: ``PostgreSQL``
    (every process of the server), ``Mosquitto``, ``Kafka`` (the broker's JVM; the
    local three-broker cluster's as ``Kafka cluster (idle)``).

    Each of :meth:`start` and :meth:`stop` takes one snapshot, and a group's CPU
    in a snapshot counts every live process's own time *and* the time of the
    children it has reaped (``cutime``/``cstime``). PostgreSQL starts processes
    that end within a second (parallel query workers, autovacuum); when one ends,
    its time moves into the postmaster's children's time, so it is counted
    whenever it lived. (Sampling each process's own time every 0.5 s missed them:
    half the machine stayed unaccounted at the province load.)"""

    def start(self) -> None:
        self._before = group_cpu()

    def stop(self) -> dict[str, float]:
        """The CPU seconds each group spent since :meth:`start`."""
        after = group_cpu()
        return {g: after[g] - self._before.get(g, 0.0) for g in after}


def group_cpu(
    classify: Callable[[Path], str | None] | None = None,
) -> dict[str, float]:
    """CPU seconds so far of each group ``classify`` (default :func:`_group_of`)
    names from a ``/proc/<pid>`` entry: its live processes' own time plus that of
    the children they have reaped."""
    classify = classify or _group_of
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            group = classify(entry)
            if group is None:
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        # utime, stime, cutime, cstime (fields 14-17 of proc(5))
        jiffies = sum(int(f) for f in fields[11:15])
        out[group] = out.get(group, 0.0) + jiffies / tick
    return out


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, in clock ticks
    (``/proc/stat``; busy is everything but idle and iowait)."""
    fields = [
        int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    ]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def service_env(s: Settings) -> dict[str, str]:
    """``s`` as the environment a ``smartpark`` service process reads."""
    env = {
        "SMARTPARK_MQTT__HOST": s.mqtt.host,
        "SMARTPARK_MQTT__PORT": str(s.mqtt.port),
        "SMARTPARK_MQTT__CLIENT_ID": s.mqtt.client_id,
        "SMARTPARK_MQTT__SUBSCRIPTION": s.mqtt.subscription,
        "SMARTPARK_KAFKA__BOOTSTRAP": s.kafka.bootstrap,
        "SMARTPARK_KAFKA__TOPIC_PREFIX": s.kafka.topic_prefix,
        "SMARTPARK_DATABASE__DSN": s.database.dsn.get_secret_value(),
        "SMARTPARK_DATABASE__SCHEMA": s.database.schema_,
        "SMARTPARK_SINK__GROUP_ID": s.sink.group_id,
        "SMARTPARK_RULES__GROUP_ID": s.rules.group_id,
        "SMARTPARK_NOTIFIER__GROUP_ID": s.notifier.group_id,
        "SMARTPARK_NOTIFIER__ALLOW": json.dumps(s.notifier.allow),
    }
    if s.webhooks.secret_key is not None:
        env["SMARTPARK_WEBHOOKS__SECRET_KEY"] = s.webhooks.secret_key.get_secret_value()
    return {**os.environ, **env}


EXIT_INTERRUPTED = 130  # as a shell reports a process ended by SIGINT


def interrupt_on_terminate() -> None:
    """``kill`` (SIGTERM) ends a run as Ctrl-C does, so its clean-up runs: the
    service processes stopped, the run's schema, Kafka topics and the bridge's
    persistent MQTT session removed. (Killed without it, a run left them behind,
    and the local Mosquitto then saved the sessions' backlog every second.)"""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``smartpark <args>`` as a child process, its output appended to ``log``."""
    with log.open("ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "smartpark.cli", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class ServiceProcess:
    """``smartpark <args>`` as a child process, its output in ``log``."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.args = args
        self.env = env
        self.log = log
        self._proc: subprocess.Popen[bytes] | None = None
        self.peak_kib = 0
        self.cpu_s = math.nan
        self.alive_s = math.nan
        self._started = 0.0

    def start(self) -> None:
        self._started = time.monotonic()
        self._proc = spawn(self.args, self.env, self.log)

    @property
    def pid(self) -> int:
        assert self._proc is not None
        return self._proc.pid

    def check_running(self) -> None:
        """Raise RuntimeError naming the log if the process has exited."""
        if self._proc is not None and self._proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"smartpark {self.args[0]} exited with {self._proc.returncode}"
                f" (log {self.log}):\n{tail}"
            )

    def stop(self, timeout_s: float = 30.0) -> Memory:
        """Read the peak RSS and CPU time, then SIGTERM (SIGKILL after
        ``timeout_s``)."""
        if self._proc is None:
            return Memory(f"smartpark {self.args[0]}", 0)
        if self._proc.poll() is None:
            self.peak_kib = peak_rss_kib(self._proc.pid)
            self.cpu_s = cpu_seconds(self._proc.pid)
            self.alive_s = time.monotonic() - self._started
            self._proc.terminate()
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return Memory(
            f"smartpark {self.args[0]}", self.peak_kib, self.cpu_s, self.alive_s
        )


def add_endpoints(parser: argparse.ArgumentParser) -> None:
    """``--dsn``, ``--mqtt``, ``--kafka``, ``--timescale-dsn``: the local services
    unless the test variables say otherwise."""
    env = os.environ.get
    parser.add_argument(
        "--dsn",
        default=env(
            "SMARTPARK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/smartpark"
        ),
    )
    parser.add_argument("--mqtt", default=env("SMARTPARK_TEST_MQTT", "127.0.0.1:18830"))
    parser.add_argument(
        "--kafka", default=env("SMARTPARK_TEST_KAFKA", "127.0.0.1:19092")
    )
    parser.add_argument(
        "--timescale-dsn",
        default=env(
            "SMARTPARK_TEST_TIMESCALE_DSN",
            "postgresql://postgres:postgres@127.0.0.1:54330/postgres",
        ),
        help="the PGlite TimescaleDB build; 'none' skips the TimescaleDB figures",
    )
