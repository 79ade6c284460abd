"""``smartpark bench report``: every benchmark in one run, written to
``docs/benchmarks.md`` with its plots.

    smartpark bench report [--quick] [--out docs]

Runs, one after another so they do not compete for the cores: ``bench sink``,
``bench bridge``, ``bench rules``, ``bench storage`` and ``bench e2e`` at the city
load and two, three and four times it (``--quick``: smaller backlogs and the city load
alone, for a run of a few minutes). Then writes ``benchmarks.md`` in ``--out``:

- the machine: cores, memory, CPU model, and the versions of PostgreSQL, Mosquitto
  and Kafka the run talked to;
- the exact command;
- one table per benchmark: figure, baseline from the same run, ratio, goal;
- plots as PNG beside it: readings/s over time of each drain, and the e2e latency
  histograms (raw MQTT subscriber and row visible);
- "what it means for a park", computed from the figures: enterprises per core of
  each component and of the whole chain, what to scale first, and the highest
  load the e2e runs carried within the latency goal.

Every number in the file comes from the run that wrote it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import platform
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
from matplotlib.figure import Figure as Canvas  # no pyplot: no display, no state
from paho.mqtt.enums import CallbackAPIVersion

from bench import bridge_bench, e2e, rules_bench, sink_bench, storage_bench
from bench.figures import Figure, Memory, Progress
from bench.load import PRESETS, Workload

# sizing.md: an enterprise is 40 devices x 5 metrics every 10 s.
READINGS_PER_ENTERPRISE_S = PRESETS["city"].rate / PRESETS["city"].enterprises
P99_GOAL_S = 1.0  # issue 16: p99 row-visible at most 1 s
# (preset, rate scale, gateway messages): a message a device at 1-4x the city, then
# gateway messages (wire version 2) at the city, 4x and the province.
QUICK_E2E = (("city", 1.0, False), ("city", 1.0, True))
FULL_E2E = (
    ("city", 1.0, False), ("city", 2.0, False), ("city", 3.0, False),
    ("city", 4.0, False), ("city", 1.0, True), ("city", 4.0, True),
    ("province", 1.0, True),
)  # fmt: skip
ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Options:
    quick: bool
    out: Path
    dsn: str
    mqtt: tuple[str, int]
    kafka: str
    timescale_dsn: str | None
    sink_rows: int
    bridge_messages: int
    rules_stacks: int
    rules_hours: int
    storage_rows: int
    timescale_rows: int
    # (rate scale, gateway messages) of each e2e run, in turn
    e2e_runs: tuple[tuple[str, float, bool], ...]
    e2e_duration_s: float = 60.0
    command: str = "smartpark bench report"


@dataclass
class Machine:
    cores: int
    memory_gib: float
    cpu: str
    python: str
    postgres: str
    mosquitto: str
    kafka: str
    timescale: str

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("cores", str(self.cores)),
            ("memory", f"{self.memory_gib:.1f} GiB"),
            ("CPU", self.cpu),
            ("OS", f"{platform.system()} {platform.release()}"),
            ("Python", self.python),
            ("PostgreSQL", self.postgres),
            ("Mosquitto", self.mosquitto),
            ("Kafka", self.kafka),
            ("TimescaleDB (PGlite)", self.timescale),
        ]


@dataclass
class Report:
    options: Options
    machine: Machine
    started: datetime
    sink: sink_bench.SinkRun
    bridge: bridge_bench.Result
    rules: rules_bench.RulesRun
    storage: storage_bench.StorageRun
    e2e: list[e2e.Result]
    seconds: float = 0.0
    written: list[Path] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.e2e)

    def report(self) -> str:
        lines = [
            self.sink.report(),
            self.bridge.report(),
            self.rules.report(),
            self.storage.report(),
            *(r.report() for r in self.e2e),
            *park_lines(self),
            f"written: {', '.join(str(p) for p in self.written)}"
            f" ({self.seconds:.0f} s in all)",
        ]
        return "\n".join(lines)


# -- the machine -------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return math.nan


def _pg_version(dsn: str) -> str:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT version()").fetchone()
        ts = conn.execute(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        ).fetchone()
    text = str(row[0]).split(" on ")[0] if row else "unknown"
    return text + (f", timescaledb {ts[0]}" if ts else "")


def _mosquitto_version(host: str, port: int) -> str:
    """The broker's ``$SYS/broker/version`` (retained by Mosquitto)."""
    got: list[str] = []
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        got.append(msg.payload.decode(errors="replace"))
        done.set()

    c = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-version-{os.getpid()}"
    )
    c.on_connect = lambda client, *_: client.subscribe("$SYS/broker/version")
    c.on_message = on_message
    c.connect(host, port)
    c.loop_start()
    try:
        done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0] if got else "unknown (no $SYS/broker/version)"


def _kafka_version() -> str:
    """Kafka's release as the local services build it (the broker does not say)."""
    pom = ROOT / "deploy/local/kafka/pom.xml"
    try:
        m = re.search(r"<kafka\.version>([^<]+)<", pom.read_text())
    except OSError:
        m = None
    return (
        f"{m.group(1)} (deploy/local/kafka/pom.xml), KRaft, one node"
        if m
        else "unknown"
    )


def machine(o: Options) -> Machine:
    ts = "not measured (--timescale-dsn none)"
    if o.timescale_dsn is not None:
        why = storage_bench.answers(o.timescale_dsn)
        ts = why or _pg_version(o.timescale_dsn)
    return Machine(
        cores=os.cpu_count() or 0,
        memory_gib=_memory_gib(),
        cpu=_cpu_model(),
        python=sys.version.split()[0],
        postgres=_pg_version(o.dsn),
        mosquitto=_mosquitto_version(*o.mqtt),
        kafka=_kafka_version(),
        timescale=ts,
    )


# -- running -------------------------------------------------------------------------


async def run(o: Options) -> Report:
    """Every bench in turn, then the document and its plots."""
    started = datetime.now(UTC)
    t0 = time.perf_counter()
    m = await asyncio.to_thread(machine, o)
    sink = await sink_bench.run(
        sink_bench.Options(
            rows=o.sink_rows, schema="bench_sink_report", dsn=o.dsn, kafka=o.kafka
        )
    )
    bridge = await bridge_bench.run(
        bridge_bench.Options(messages=o.bridge_messages, mqtt=o.mqtt, kafka=o.kafka)
    )
    rules = await rules_bench.run(
        rules_bench.Options(
            stacks=o.rules_stacks, hours=o.rules_hours, dsn=o.dsn, kafka=o.kafka
        )
    )
    storage = await storage_bench.run(
        storage_bench.Options(
            rows=o.storage_rows,
            timescale_rows=o.timescale_rows,
            dsn=o.dsn,
            timescale_dsn=o.timescale_dsn,
        )
    )
    runs = [await e2e.run(e2e_options(o, *run)) for run in o.e2e_runs]
    r = Report(o, m, started, sink, bridge, rules, storage, runs)
    r.seconds = time.perf_counter() - t0
    r.written = write(r)
    return r


def e2e_argv(o: Options, preset: str, scale: float, gateway: bool) -> list[str]:
    """The ``smartpark bench e2e`` arguments of one e2e run of the report."""
    return [
        "--preset", preset, "--rate-scale", f"{scale:g}",
        "--duration", f"{o.e2e_duration_s:g}", *(["--gateway"] if gateway else []),
    ]  # fmt: skip


def e2e_options(o: Options, preset: str, scale: float, gateway: bool) -> e2e.Options:
    """Parsed by ``smartpark bench e2e``'s own parser: the command the document
    shows is the run it reports."""
    parser = argparse.ArgumentParser()
    e2e.add_arguments(parser)
    endpoints = ["--dsn", o.dsn, "--mqtt", f"{o.mqtt[0]}:{o.mqtt[1]}"]
    return e2e.options(
        parser.parse_args(
            [*e2e_argv(o, preset, scale, gateway), *endpoints, "--kafka", o.kafka]
        )
    )


# -- what it means for a park -----------------------------------------------------


@dataclass(frozen=True)
class Capacity:
    component: str
    readings_per_s: float

    @property
    def enterprises(self) -> float:
        """Enterprises one process of it carries (each is one Python process, one
        core at most)."""
        return self.readings_per_s / READINGS_PER_ENTERPRISE_S


def capacities(r: Report) -> list[Capacity]:
    per_message = r.bridge.readings_per_message
    out = [
        Capacity("bridge", r.bridge.bridge_rate * per_message),
        Capacity("rules runner", r.rules.runner_rate),
    ]
    if "f" in r.sink.results:
        out.insert(1, Capacity("sink", r.sink.results["f"].rate))
    return sorted(out, key=lambda c: c.readings_per_s)


def chain_enterprises_per_core(caps: list[Capacity]) -> float:
    """Enterprises one core carries through every component in turn (the time a
    reading takes in each adds up)."""
    return 1 / sum(1 / c.enterprises for c in caps if c.enterprises > 0)


def within_goal(r: Report) -> list[e2e.Result]:
    return [x for x in r.e2e if x.ok and x.visible.pct(99) <= P99_GOAL_S]


def park_lines(r: Report) -> list[str]:
    caps = capacities(r)
    chain = chain_enterprises_per_core(caps)
    city = PRESETS["city"]
    lines = [
        "what it means for a park (an enterprise: "
        f"{READINGS_PER_ENTERPRISE_S:g} readings/s):",
        *(
            f"  {c.component:<14} {c.readings_per_s:>10,.0f} readings/s ="
            f" {c.enterprises:>7,.0f} enterprises a process (one core at most)"
            for c in caps
        ),
        f"  every component on one core: {chain:,.0f} enterprises"
        f" ({chain / city.enterprises:.1f}x the city's {city.enterprises})",
        f"  scale first: the {caps[0].component} (lowest, {caps[0].enterprises:,.0f}"
        f" enterprises a process), then the {caps[1].component}",
    ]
    ok = within_goal(r)
    if ok:
        best = max(ok, key=lambda x: x.verdict.offered_rate)
        rate = best.workload.rate
        lines.append(
            f"  end to end on this machine: {rate:,.0f} readings/s"
            f" ({rate / READINGS_PER_ENTERPRISE_S:,.0f} enterprises,"
            f" {_shape(best.workload)}) carried with p99"
            f" row-visible {best.visible.pct(99) * 1000:.0f} ms <="
            f" {P99_GOAL_S * 1000:.0f} ms, the highest of the loads measured"
            f" ({', '.join(f'{x.workload.rate:,.0f}' for x in r.e2e)} readings/s);"
            " a second machine is due past it, unless a higher load is measured"
            " within the goal"
        )
    else:
        lines.append(
            "  end to end on this machine: no load measured was valid with p99"
            f" row-visible <= {P99_GOAL_S * 1000:.0f} ms"
        )
    lines += _province_lines(r)
    return lines


def _province_lines(r: Report) -> list[str]:
    """The province from the CPU spent a reading in the highest valid end-to-end
    load of each message shape (its fixed costs spread the most): the platform's
    own processes, and with them the brokers and the database (the load generator
    and the bench apart, which a real park does not run on this machine)."""
    out = []
    province = PRESETS["province"].rate
    for gateway in (False, True):
        runs = [
            x for x in r.e2e if x.cpu_s and x.stored and x.workload.gateway == gateway
        ]
        if not runs:
            continue
        valid = [x for x in runs if x.ok] or runs
        x = max(valid, key=lambda x: x.workload.rate)
        own = sum(x.cpu_s.values()) / x.stored
        infra = own + sum(x.other_cpu_s.get(k, 0.0) for k in _INFRA) / x.stored
        busy = ", ".join(f"{y.workload.rate:,.0f}/s {y.machine_busy:.0%}" for y in runs)
        out.append(
            f"  {_shape(x.workload)}: at {x.workload.rate:,.0f} readings/s the"
            f" platform's processes ({', '.join(x.cpu_s)}) spent {own * 1e6:.0f} µs a"
            f" reading, {infra * 1e6:.0f} µs with {', '.join(_INFRA)}: the province"
            f" ({province:,.0f} readings/s) needs {province * own:.1f} cores for the"
            f" processes, {province * infra:.1f} with the brokers and the database"
            f" (machine busy by load: {busy})"
        )
    return out


_INFRA = ("Mosquitto", "Kafka", "PostgreSQL")


def _shape(w: Workload) -> str:
    return "gateway messages" if w.gateway else "a message a device"


# -- the document -------------------------------------------------------------------


def _table(figures: list[Figure]) -> list[str]:
    out = [
        "| figure | value | baseline (same run) | value | ratio | goal |",
        "|---|---:|---|---:|---:|---|",
    ]
    out.extend(
        f"| {f.what} | {f.cell(f.value)} {f.unit} | {f.baseline} |"
        f" {f.cell(f.baseline_value)} {f.unit} | {f.ratio:.1%} |"
        f" {f.goal_text()} |"
        for f in figures
    )
    return out


def _memory(memory: list[Memory]) -> list[str]:
    return [
        f"- peak RSS of {m.process}: {m.peak_kib / 1024:.1f} MiB"
        + (f", {m.cpu_text()}" if m.cpu_text() else "")
        for m in memory
    ]


def _ms(seconds: float) -> str:
    return "-" if math.isnan(seconds) else f"{seconds * 1000:,.0f}"


def _pcts(x: e2e.Latencies | None) -> str:
    if x is None:
        return "not measured"
    return " / ".join(_ms(x.pct(q)) for q in (50, 99, 100))


def _e2e_table(runs: list[e2e.Result]) -> list[str]:
    out = [
        "| load | messages | offered readings/s | achieved | valid |"
        " stored / acknowledged |"
        " raw MQTT p50 / p99 / max (ms) | produced to Kafka p50 / p99 / max (ms) |"
        " row visible p50 / p99 / max (ms) | ratio p99 |"
        " webhook received p50 / p99 / max (ms) | p99 row visible <= 1 s |"
        " machine CPU busy |",
        "|---|---|---:|---:|---|---|---|---|---|---:|---|---|---:|",
    ]
    for x in runs:
        w, v = x.workload, x.verdict
        raw, vis = x.raw, x.visible
        ratio = vis.pct(99) / raw.pct(99) if raw.values else math.nan
        goal = "met" if x.ok and vis.pct(99) <= P99_GOAL_S else "NOT met"
        out.append(
            f"| {w.enterprises} x {w.devices_per_enterprise} devices |"
            f" {_shape(w)} | {v.offered_rate:,.0f} | {v.achieved_rate:,.0f} |"
            f" {'yes' if x.ok else 'NO: ' + (v.reason or 'see the run')} |"
            f" {x.stored:,} / {v.acked_readings:,} |"
            f" {_pcts(raw)} | {_pcts(x.kafka)} | {_pcts(vis)} | {ratio:.1f} |"
            f" {_pcts(x.webhook)} |"
            f" {goal} | {x.machine_busy:.0%} |"
        )
    return out


def windowed(p: Progress, *, window_s: float) -> tuple[list[float], list[float]]:
    """Rate at each sample over the ``window_s`` before it (a batch committed at
    once would otherwise show as a spike between idle samples)."""
    xs: list[float] = []
    ys: list[float] = []
    for t, n in p.samples:
        since = [(t0, n0) for t0, n0 in p.samples if t - window_s <= t0 < t]
        if since:
            t0, n0 = since[0]
            xs.append(t)
            ys.append((n - n0) / (t - t0))
    return xs, ys


def plot_throughput(r: Report, path: Path) -> None:
    """Readings/s between consecutive samples of every drain."""
    drains: list[tuple[Progress, float]] = [
        (r.bridge.raw, r.bridge.readings_per_message),
        (r.bridge.bridge, r.bridge.readings_per_message),
    ]
    if r.sink.progress is not None:
        drains.append((r.sink.progress, 1))
    if r.rules.runner is not None:
        drains.append((r.rules.runner, 1))
    fig = Canvas(figsize=(9, 4.5))
    ax = fig.subplots()
    for p, scale in drains:
        xs, ys = windowed(p, window_s=1.0)
        ys = [y * scale for y in ys]
        ax.plot(xs, ys, marker=".", label=f"{p.label} ({p.total:,} in the backlog)")
    ax.set_xlabel("seconds since the component started on its backlog")
    ax.set_ylabel("readings/s")
    ax.set_title("Throughput over time (over the second before each sample)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def plot_latency(r: Report, path: Path) -> None:
    """Histograms (log scale) of the e2e latencies, one panel per load."""
    n = max(1, len(r.e2e))
    fig = Canvas(figsize=(9, 3.2 * n))
    axes = fig.subplots(n, 1, squeeze=False)
    for ax, x in zip(axes[:, 0], r.e2e, strict=False):
        values = [v for v in x.raw.values + x.visible.values if v > 0]
        low = max(min(values, default=1e-3), 1e-4)
        high = max(values, default=1.0) * 1.1
        bins = [low * (high / low) ** (i / 40) for i in range(41)]
        ax.hist(x.raw.values, bins=bins, alpha=0.6, label="raw MQTT")
        ax.hist(x.visible.values, bins=bins, alpha=0.6, label="row visible")
        ax.set_xscale("log")
        ax.axvline(P99_GOAL_S, color="red", linestyle="--", label="1 s")
        ax.set_title(
            f"{x.verdict.offered_rate:,.0f} readings/s offered"
            f" ({_shape(x.workload)}): latency from the intended send time"
        )
        ax.set_xlabel("seconds")
        ax.set_ylabel("probe polls")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def document(r: Report, throughput_png: str, latency_png: str) -> str:
    o, m = r.options, r.machine
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{o.command}` on {r.started:%Y-%m-%d %H:%M} UTC in"
        f" {r.seconds:.0f} s; do not edit by hand. Every figure is printed beside a"
        " raw baseline measured in the same run on the same input. Figures from a"
        " machine shared with other work are noisy: compare ratios, not runs.",
        "",
        "## The machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in m.rows()),
        "",
        "## The commands",
        "",
        "```sh",
        "deploy/local/services up --with-timescale",
        o.command,
        "```",
        "",
        "runs, in turn: "
        f"`smartpark bench sink --rows {o.sink_rows}`, "
        f"`smartpark bench bridge --messages {o.bridge_messages}`, "
        f"`smartpark bench rules --stacks {o.rules_stacks} --hours {o.rules_hours}`, "
        f"`smartpark bench storage --rows {o.storage_rows} --timescale-rows"
        f" {o.timescale_rows}`, and "
        + ", ".join(
            f"`smartpark bench e2e {' '.join(e2e_argv(o, *run))}`" for run in o.e2e_runs
        )
        + ".",
        "",
        "## Sink: Kafka → database",
        "",
        "(a) the sink's write path in process (decode, series ids, COPY into"
        " telemetry in a savepoint, rollup log, offsets, commit); (f) `smartpark"
        " sink` as a process draining a Kafka"
        " backlog of the same records; (b) a raw binary COPY of the same rows;"
        " (e) one INSERT a row, pipelined, one commit a batch (what JDBC-style sinks"
        " do). See `bench/sink_bench.py`.",
        "",
        *_table(r.sink.figures()),
        "",
        *(
            f"- {x.name}: {x.rows:,} rows in {x.seconds:.2f} s"
            + (f" ({x.note})" if x.note else "")
            for x in r.sink.results.values()
        ),
        *_memory(r.sink.memory),
        "",
        "## Bridge: MQTT → Kafka",
        "",
        f"{r.bridge.messages:,} messages of the city load queued at the broker, then"
        " drained by each in turn. See `bench/bridge_bench.py`.",
        "",
        *_table(r.bridge.figures()),
        "",
        *_memory(r.bridge.memory),
        "",
        "## Rules",
        "",
        f"{r.rules.readings:,} readings (SO2 and O2 a stack a minute, hourly means"
        " corrected to 6 % O2). See `bench/rules_bench.py`.",
        "",
        *_table(r.rules.figures()),
        "",
        *_memory(r.rules.memory),
        "",
        "## Storage: bytes per reading",
        "",
        "See `bench/storage_bench.py`.",
        "",
        *_table(r.storage.figures()),
        "",
        f"- a week of the hot table on plain PostgreSQL (two days as written, five"
        f" compacted): {r.storage.week_average:.1f} bytes a reading",
        *(
            [f"- TimescaleDB not measured: {r.storage.timescale_skipped}"]
            if not r.storage.timescale
            else []
        ),
        "",
        "## End to end: device time → row visible",
        "",
        "Open loop (`bench/load.py`); bridge, sink, rules runner and notifier as"
        " processes; latency from each probe poll's intended send time (webhooks:"
        " from the breach reading's). \"Produced to Kafka\" is the bridge's part (the"
        " record's timestamp, read back after the run); row visible minus it is the"
        " sink's. Machine CPU busy: the share of both cores in use over the run, every"
        " process included (the publishers too); near 100 % the machine is saturated."
        " See `bench/e2e.py`.",
        "",
        *_e2e_table(r.e2e),
        "",
        f"![latency histograms]({latency_png})",
        "",
        f"![throughput over time]({throughput_png})",
        "",
        "## What it means for a park",
        "",
        "Computed from the figures above. Each component is one single-threaded"
        " Python process, so its rate is what one core gives it; the brokers and the"
        " database are not in these rates (they are in the end-to-end runs). The"
        " rules runner's rate is for the bench's pack (one windowed rule with O2"
        " correction): a pack with more rules costs more a reading.",
        "",
        *(f"- {' '.join(line.split())}" for line in park_lines(r)[1:]),
        "",
    ]
    return "\n".join(lines)


def write(r: Report) -> list[Path]:
    out = r.options.out
    out.mkdir(parents=True, exist_ok=True)
    throughput, latency = out / "bench-throughput.png", out / "bench-latency.png"
    plot_throughput(r, throughput)
    plot_latency(r, latency)
    md = out / "benchmarks.md"
    md.write_text(document(r, throughput.name, latency.name))
    return [md, throughput, latency]


def options(args: argparse.Namespace) -> Options:
    host, _, port = args.mqtt.rpartition(":")
    quick = args.quick
    argv = " --quick" if quick else ""
    return Options(
        quick=quick,
        out=Path(args.out),
        dsn=args.dsn,
        mqtt=(host, int(port)),
        kafka=args.kafka,
        timescale_dsn=None if args.timescale_dsn == "none" else args.timescale_dsn,
        sink_rows=500_000,
        bridge_messages=10_000 if quick else 40_000,
        rules_stacks=100 if quick else 200,
        rules_hours=3 if quick else 6,
        storage_rows=200_000 if quick else 500_000,
        timescale_rows=50_000 if quick else 200_000,
        e2e_runs=QUICK_E2E if quick else FULL_E2E,
        e2e_duration_s=20.0 if quick else 60.0,
        command=f"smartpark bench report{argv}",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's own arguments (:mod:`bench.cli` adds the endpoints)."""
    parser.add_argument(
        "--quick", action="store_true", help="smaller backlogs, the city load only"
    )
    parser.add_argument(
        "--out", default=str(ROOT / "docs"), help="where benchmarks.md goes"
    )
