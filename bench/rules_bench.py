"""Rules runner and rule core throughput: hourly means with O2 correction.

    smartpark bench rules [--stacks 200] [--hours 6]
    .venv/bin/python -m bench.rules_bench [--stacks 200] [--hours 6] [--no-runner]

Generates CEMS data shaped like the city's stacks (one SO2 and one O2 reading per
stack per minute, the O2 at the same event time, a few flagged C), then measures in
one run:

  (a) the rule core: ``rules.engine.Engine`` with one ``window`` rule (hourly mean
      of SO2 corrected to 6 % O2, validity and hysteresis included), fed every
      reading one at a time in stream order, as the runner does;
  (b) NumPy: the same corrected hourly means computed column-wise over arrays built
      beforehand (no validity, no lifecycle, no events) — the floor for the
      arithmetic alone.

It checks that both give the same hourly means, then prints readings/s of each, the
ratio, and the headroom of (a) over the city reference rate.

``smartpark bench rules`` also measures

  (c) ``smartpark rules run`` as a process, the same readings on a Kafka backlog
      (one wire record per stack and minute, SO2 and O2, keyed by enterprise; its
      own topics, consumer group and schema): decode, the engine, alert events
      and checkpoints written to the database; sampled by its committed offsets
      (:mod:`bench.drain`), peak RSS read before it stops;

and prints (c) beside (a), the rule core on the same readings in memory.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import yaml
from psycopg import sql
from pydantic import SecretStr

from bench.drain import drop_topics, produce_all, watch_committed
from bench.figures import (
    Figure,
    Memory,
    Progress,
    ServiceProcess,
    add_endpoints,
    drain_rate,
    service_env,
)
from rules.engine import Engine
from rules.kinds.base import RuleSpec
from rules.model import AlertEvent, Finding, Obs
from rules.pack import parse_pack
from smartpark.settings import DatabaseSettings, KafkaSettings, RulesSettings, Settings
from smartpark.wire import Reading, TelemetryBatch, encode_batch
from storage import Storage
from stream.kafka import ensure_topics

CITY_READINGS_PER_S = 5600
T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
MINUTE, HOUR = 60_000, 3_600_000
PACK = {
    "pack": "bench",
    "version": "1",
    "watermark_delay": 0,
    "allowed_lateness": "1h",
    "rules": [
        {
            "id": "so2-hourly",
            "kind": "window",
            "metric": "so2",
            "window": "1h",
            "aggregate": "mean",
            "limit": 35,
            "o2_correction": {"reference": 6, "o2_metric": "o2"},
        }
    ],
}


def generate(stacks: int, hours: int, seed: int) -> list[Obs]:
    rng = random.Random(seed)
    out: list[Obs] = []
    for minute in range(hours * 60 + 1):  # one more: closes the last hour
        ts = T0 + minute * MINUTE
        for s in range(stacks):
            device = f"e{s // 2}.stack-{s % 2}"
            enterprise = f"e{s // 2}"
            flag = "C" if rng.random() < 0.02 else "N"
            so2 = round(rng.uniform(15, 40), 2)
            o2 = round(rng.uniform(5.5, 9.5), 2)
            out.append(Obs(ts, "p1", enterprise, device, "so2", so2, flag))
            out.append(Obs(ts, "p1", enterprise, device, "o2", o2))
    return out


class RecordingEngine(Engine):
    """The engine, also keeping every window verdict (the lifecycle only turns
    changes into events, and a compliant hour is no event)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.means: dict[tuple[str, int], float] = {}

    def _lifecycle(self, rule: RuleSpec, findings: list[Finding]) -> list[AlertEvent]:
        for f in findings:
            if f.window is not None and f.value is not None and not f.revision:
                self.means[(f.scope.device or "", f.window.start_ms)] = f.value
        return super()._lifecycle(rule, findings)


def core(stream: list[Obs]) -> tuple[float, dict[tuple[str, int], float]]:
    engine = RecordingEngine(parse_pack(PACK))
    started = time.perf_counter()
    for obs in stream:
        engine.feed(obs)
    return time.perf_counter() - started, engine.means


def numpy_means(stream: list[Obs]) -> tuple[float, dict[tuple[str, int], float]]:
    # Arrays built outside the timing, as a columnar engine would hold them.
    so2 = [o for o in stream if o.metric == "so2"]
    o2 = {(o.device, o.ts_ms): o.value for o in stream if o.metric == "o2"}
    devices = sorted({o.device for o in so2})
    index = {d: i for i, d in enumerate(devices)}
    dev = np.array([index[o.device] for o in so2])
    ts = np.array([o.ts_ms for o in so2], dtype=np.int64)
    c = np.array([o.value for o in so2])
    ox = np.array([o2[(o.device, o.ts_ms)] for o in so2])
    valid = np.array([o.quality == "N" for o in so2])
    started = time.perf_counter()
    hour = (ts - T0) // HOUR
    closed = hour < hour.max()  # the last hour is still open in the core too
    keep = valid & closed
    corrected = c[keep] * (21 - 6) / (21 - ox[keep])
    key = dev[keep] * (hour.max() + 1) + hour[keep]
    sums = np.bincount(key, weights=corrected)
    counts = np.bincount(key)
    nz = np.nonzero(counts)[0]
    result = sums[nz] / counts[nz]
    elapsed = time.perf_counter() - started
    nhours = int(hour.max()) + 1
    means = {
        (devices[int(k) // nhours], T0 + int(k) % nhours * HOUR): float(m)
        for k, m in zip(nz, result, strict=True)
    }
    return elapsed, means


UNITS = {"so2": "mg/m3", "o2": "%"}


def wire_records(stream: list[Obs]) -> list[tuple[bytes, bytes]]:
    """``stream`` as Kafka records: one wire batch per stack and minute (its SO2
    and O2), keyed by enterprise, in stream order; seq is the minute."""
    polls: dict[tuple[str, str, int], list[Obs]] = defaultdict(list)
    for o in stream:
        polls[(o.enterprise, o.device, o.ts_ms)].append(o)
    out = []
    for (enterprise, device, ts), obs in polls.items():
        seq = (ts - T0) // MINUTE + 1
        readings = tuple(
            Reading(seq, o.metric, o.value, UNITS[o.metric], ts, o.quality) for o in obs
        )
        batch = TelemetryBatch(obs[0].park, enterprise, device, readings)
        out.append((enterprise.encode(), encode_batch(batch)))
    return out


@dataclass(frozen=True)
class Options:
    stacks: int = 200
    hours: int = 6
    seed: int = 1
    runner: bool = True  # (c): the runner process on a Kafka backlog
    dsn: str = "postgresql://postgres@127.0.0.1:54329/smartpark"
    kafka: str = "127.0.0.1:19092"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class RulesRun:
    readings: int
    core_s: float
    numpy_s: float
    same_means: bool
    means: int
    runner: Progress | None
    memory: list[Memory]

    @property
    def ok(self) -> bool:
        return self.same_means

    @property
    def core_rate(self) -> float:
        return self.readings / self.core_s

    @property
    def runner_rate(self) -> float:
        return drain_rate(self.runner) if self.runner else float("nan")

    def figures(self) -> list[Figure]:
        out = [
            Figure(
                "rule core (a), one reading at a time",
                self.core_rate,
                "readings/s",
                "NumPy (b), arithmetic only",
                self.readings / self.numpy_s,
            )
        ]
        if self.runner is not None:
            out.insert(
                0,
                Figure(
                    "rules runner process (c)",
                    self.runner_rate,
                    "readings/s",
                    "rule core (a), same readings",
                    self.core_rate,
                ),
            )
        return out

    def report(self) -> str:
        lines = [
            f"bench rules: {self.readings:,} readings, SO2 + O2 a stack a minute;"
            f" {self.means} hourly means, core equal to NumPy: {self.same_means}",
            *(f.line() for f in self.figures()),
            f"  headroom of the rule core: {self.core_rate / CITY_READINGS_PER_S:.1f}x"
            f" the city reference ({CITY_READINGS_PER_S} readings/s) on one core",
            *(m.line() for m in self.memory),
        ]
        return "\n".join(lines)


async def runner_drain(
    o: Options, stream: list[Obs], logs: Path
) -> tuple[Progress, Memory]:
    """(c): ``smartpark rules run`` on a Kafka backlog of ``stream``."""
    uid = uuid.uuid4().hex[:8]
    schema = f"bench_rules_{uid}"
    s = Settings(
        kafka=KafkaSettings(bootstrap=o.kafka, topic_prefix=f"rbench{uid}."),
        database=DatabaseSettings(dsn=SecretStr(o.dsn), schema=schema),
        rules=RulesSettings(group_id=f"rbench-rules-{uid}"),
    )
    pack = logs / "pack.yaml"
    pack.write_text(yaml.safe_dump(PACK))
    k = s.kafka
    async with await psycopg.AsyncConnection.connect(o.dsn, autocommit=True) as c:
        await c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    try:
        async with Storage(s.database) as storage:
            await storage.migrate()
        await ensure_topics(k)
        await produce_all(k, k.telemetry_topic, wire_records(stream))
        proc = ServiceProcess(
            ["rules", "run", "--pack", str(pack), "--stats-every", "5"],
            service_env(s),
            logs / "rules.log",
        )
        progress = Progress("rules runner", len(stream))
        proc.start()
        try:
            await watch_committed(
                o.kafka,
                s.rules.group_id,
                progress,
                per_record=2,
                proc=proc,
                timeout_s=o.timeout_s,
            )
        finally:
            memory = proc.stop()
        return progress, memory
    finally:
        await drop_topics(
            o.kafka,
            [k.telemetry_topic, k.status_topic, k.alerts_topic, k.deadletter_topic],
        )
        async with await psycopg.AsyncConnection.connect(o.dsn, autocommit=True) as c:
            await c.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )


async def run(o: Options) -> RulesRun:
    """(a), (b) and, with ``o.runner``, (c) on the same readings."""
    stream = generate(o.stacks, o.hours, o.seed)
    t_core, core_means = core(stream)
    t_np, np_means = numpy_means(stream)
    worst = max(abs(core_means[k] - np_means[k]) for k in np_means)
    same = core_means.keys() == np_means.keys() and worst < 1e-9
    progress, memory = None, []
    if o.runner:
        logs = Path(tempfile.mkdtemp(prefix="smartpark-bench-rules-"))
        progress, mem = await runner_drain(o, stream, logs)
        memory.append(mem)
    return RulesRun(len(stream), t_core, t_np, same, len(np_means), progress, memory)


def options(args: argparse.Namespace) -> Options:
    return Options(
        stacks=args.stacks,
        hours=args.hours,
        seed=args.seed,
        runner=not args.no_runner,
        dsn=args.dsn,
        kafka=args.kafka,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's own arguments (:mod:`bench.cli` adds the endpoints)."""
    parser.add_argument("--stacks", type=int, default=Options.stacks)
    parser.add_argument("--hours", type=int, default=Options.hours)
    parser.add_argument("--seed", type=int, default=Options.seed)
    parser.add_argument(
        "--no-runner", action="store_true", help="skip (c), the runner process"
    )


def main(argv: list[str] | None = None) -> int:
    """The same as ``smartpark bench rules``; ``--no-runner`` needs no services."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    add_endpoints(parser)
    args = parser.parse_args(argv)
    result = asyncio.run(run(options(args)))
    print(result.report())
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
