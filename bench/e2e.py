"""End to end: device time → row visible in the database, beside a raw MQTT subscriber.

    smartpark bench e2e --preset city --duration 60 [--rate-scale 1.0]

One run, on a fresh schema, fresh Kafka topics and a fresh park id (hence MQTT
topics), against the local services (``deploy/local/services up``):

1. migrates the schema, creates the topics, starts ``smartpark bridge`` and
   ``smartpark sink`` as processes (as they run in production), and waits until a
   warm-up reading has gone all the way to the database;
2. runs the open-loop load of :mod:`bench.load` (the preset, scaled by
   ``--rate-scale``) for ``--duration`` seconds, in ``--publishers`` processes;
3. measures, on a sample of the devices (the *probes*, one device in
   ``--probe-every``), the latency of every probe poll from its intended send time
   (its device time, for a poll sent on time):

   - **row visible**: the database is polled every ``--poll-ms`` for the probes'
     rows; a poll's latency is the start of the first query that sees it minus its
     intended time. A row committed between two queries is seen by the second, so
     the figure is an upper bound, late by at most the poll period plus the
     query's time to take its snapshot (both printed);
   - **raw baseline**: an MQTT subscriber in this process, subscribed at QoS 1 to
     the probes' topics only, records when each probe message arrives — what the
     broker alone costs on the same messages in the same run;
   - **produced to Kafka** (where the rest of the time goes): after the run, the
     telemetry topic is read back and each probe poll's first record's timestamp
     (the bridge producer's CreateTime: when it handed the record to the producer,
     the bridge's clock, this machine) is taken; row visible minus that is the
     sink's part;

4. waits until every acknowledged reading is stored (counts the rows), prints
   p50/p99/max of both, their ratio, the offered and achieved rates and whether
   the run is valid (:func:`bench.load.verdict`); then stops the services and
   drops the schema, the topics and the bridge's MQTT session.

Exit code 0 for a valid run with every reading stored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import math
import os
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql
from pydantic import SecretStr

from bench import hooks
from bench.figures import (
    GroupSampler,
    add_endpoints,
    cpu_seconds,
    machine_jiffies,
    service_env,
    spawn,
)
from bench.load import (
    METRICS,
    PRESETS,
    Stopped,
    Verdict,
    Workload,
    device_ids,
    device_messages,
    gateway_id,
    poll_time_ms,
    publish_all,
    verdict,
)
from notifier import signing
from smartpark.settings import (
    DatabaseSettings,
    KafkaSettings,
    MqttSettings,
    NotifierSettings,
    RulesSettings,
    Settings,
    SinkSettings,
    WebhookSettings,
)
from smartpark.wire import (
    Reading,
    TelemetryBatch,
    decode_message,
    encode_batch,
    telemetry_topic,
)
from storage import Storage, Subscription
from storage.secretbox import SecretBox
from storage.series import SeriesKey
from stream.kafka import ensure_topics

PROBE_METRIC = (
    "active_power"  # one metric stands for its poll (same record, same commit)
)
WARMUP_DEVICE = ("e-warmup", "warmup")
# What one Python publisher process offers on time beside every service on two
# cores: at 2 238 messages a second (twice the city) one fell behind (2026-12-06: 34 425
# readings unacknowledged, raw subscriber p99 12.8 s), two kept the schedule.
MESSAGES_PER_PUBLISHER = 1_500
# Probe devices at most, by default (1 in 20 at the city): more only load the
# database with the row-visible queries (the province's 5 600 took a fifth of a core).
PROBES = 560


@dataclass(frozen=True)
class Options:
    workload: Workload
    duration_s: float
    publishers: int
    probe_every: int = 20
    poll_ms: int = 50
    drain_s: float = 60.0
    dsn: str = "postgresql://postgres@127.0.0.1:54329/smartpark"
    mqtt: tuple[str, int] = ("127.0.0.1", 18830)
    kafka: str = "127.0.0.1:19092"
    alerts: int = 20  # enterprises with a breaching analyser (0: no rules, no hooks)


@dataclass(frozen=True)
class Latencies:
    """Latencies in seconds of the probe polls observed (sorted)."""

    values: list[float]
    expected: int

    def pct(self, q: float) -> float:
        """Nearest-rank percentile ``q`` (0..100); NaN if nothing was observed."""
        if not self.values:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(self.values)))
        return self.values[rank - 1]

    def cells(self) -> str:
        p50, p90, p99, top = (self.pct(q) for q in (50, 90, 99, 100))
        return (
            f"{p50 * 1000:9.0f} {p90 * 1000:9.0f} {p99 * 1000:9.0f} {top * 1000:9.0f}"
            f" {len(self.values):>7}/{self.expected}"
        )


@dataclass(frozen=True)
class Result:
    workload: Workload
    options: Options
    verdict: Verdict
    raw: Latencies
    visible: Latencies
    stored: int
    drain_s: float
    query_ms: tuple[float, float]  # p50 and max of the row-visible queries
    logs: Path
    schema: str  # dropped at the end of the run
    hooks: hooks.Outcome | None = None  # None: run without --alerts
    kafka: Latencies | None = None  # handed to Kafka by the bridge (after the run)
    # CPU seconds of each service process from the load's start to the drain's
    # end, the length of that time, and the share of the machine's CPU in use
    cpu_s: dict[str, float] = field(default_factory=dict)
    measured_s: float = math.nan
    machine_busy: float = math.nan
    series: tuple[int, float] = (0, 0.0)  # registered beforehand, in seconds
    # The rest of the machine over the same time: brokers, database, load, bench.
    other_cpu_s: dict[str, float] = field(default_factory=dict)

    @property
    def webhook(self) -> Latencies | None:
        if self.hooks is None:
            return None
        return Latencies(self.hooks.latencies, self.hooks.expected)

    @property
    def all_hooks(self) -> bool:
        """Every injected breach produced its webhook, each correctly signed and
        each accounted for by a breach (duplicates are allowed: at least once)."""
        h = self.hooks
        return h is None or (
            len(h.latencies) == h.expected and not h.bad_signatures and not h.unmatched
        )

    @property
    def all_stored(self) -> bool:
        """Every acknowledged reading is stored (readings acknowledged after the
        publishers gave up waiting are stored too, hence more rows than acks)."""
        return self.stored >= self.verdict.acked_readings

    @property
    def all_observed(self) -> bool:
        """Both latencies measured on every probe poll (a raw subscriber that lost
        its connection misses some: the baseline would be partial)."""
        return len(self.raw.values) == len(self.visible.values) == self.raw.expected

    @property
    def ok(self) -> bool:
        return (
            self.verdict.valid and self.all_stored and self.all_observed
            and self.all_hooks
        )  # fmt: skip

    def report(self) -> str:
        w, o = self.workload, self.options
        ratio = self.visible.pct(99) / self.raw.pct(99) if self.raw.values else math.nan
        lines = [
            f"bench e2e: {w.enterprises} enterprises x {w.devices_per_enterprise} "
            f"devices x {w.metrics_per_device} metrics every {w.step_ms / 1000:g} s "
            f"({w.out_of_order:.0%} of polls {w.ooo_delay_ms} ms out of order, "
            + (
                "one gateway message an enterprise and step"
                if w.gateway
                else f"{w.batch_polls} poll(s) a message"
            )
            + f"), seed {w.seed}, "
            f"{o.duration_s:g} s, {o.publishers} publisher(s)",
            f"load: {self.verdict.line()}",
            f"probes: 1 device in {o.probe_every}, metric {PROBE_METRIC}; database "
            f"polled every {o.poll_ms} ms (query p50 {self.query_ms[0]:.0f} ms, max "
            f"{self.query_ms[1]:.0f} ms): "
            "row-visible is an upper bound, late by at most the two",
            "latency from the intended send time (ms)       p50       p90"
            "       p99       max   observed",
            f"  raw MQTT subscriber (baseline)        {self.raw.cells()}",
            *(
                [f"  produced to Kafka by the bridge       {self.kafka.cells()}"]
                if self.kafka is not None
                else []
            ),
            f"  row visible in the database           {self.visible.cells()}",
            f"  ratio p99 row-visible / raw                               {ratio:9.1f}",
            *self._hook_lines(),
            f"stored: {self.stored:,} readings of {self.verdict.acked_readings:,} "
            f"acknowledged ({self.verdict.offered_readings:,} offered), the last "
            f"{self.drain_s:.1f} s after the schedule ended (counted every 0.2 s)"
            + ("" if self.all_stored else "  MISSING READINGS"),
            *self._cpu_lines(),
            f"series: the load's {self.series[0]:,} registered before the run (as"
            f" in a platform that has run before) in {self.series[1]:.1f} s",
            f"service logs: {self.logs}",
            "RESULT: "
            + ("VALID" if self.ok else "INVALID")
            + ("" if self.all_observed else " (probe polls not observed)")
            + ("" if self.all_hooks else " (webhooks missing or wrong)"),
        ]
        return "\n".join(lines)

    def _cpu_lines(self) -> list[str]:
        if not self.cpu_s:
            return []
        cores = os.cpu_count() or 1
        each = ", ".join(
            f"{name} {cpu:.1f} s ({cpu / self.measured_s:.0%} of a core)"
            for name, cpu in self.cpu_s.items()
        )
        rest = ", ".join(
            f"{name} {cpu:.1f} s ({cpu / self.measured_s:.0%})"
            for name, cpu in self.other_cpu_s.items()
        )
        return [
            f"CPU over the {self.measured_s:.0f} s of load and drain: the machine"
            f" {self.machine_busy:.0%} busy ({cores} cores, every process on it);"
            f" {each}",
            *([f"  the rest of the machine: {rest}"] if rest else []),
        ]

    def _hook_lines(self) -> list[str]:
        h, lat = self.hooks, self.webhook
        if h is None or lat is None:
            return []
        ratio = lat.pct(99) / self.raw.pct(99) if self.raw.values else math.nan
        return [
            f"  webhook received (breach reading)     {lat.cells()}",
            f"  ratio p99 webhook / raw                                   {ratio:9.1f}",
            f"webhooks: {len(h.latencies)} of {h.expected} breaches from "
            f"{self.options.alerts} enterprises' analysers (rules runner, notifier, a "
            f"local receiver per subscription), {h.duplicates} duplicate(s), "
            f"{h.unmatched} unmatched, {h.bad_signatures} bad signature(s)",
        ]


@dataclass
class Probes:
    """The probe polls, their intended send times, and when each was observed."""

    intended: dict[tuple[str, int], float]  # (device, seq) -> wall clock, s
    device_ms: dict[tuple[str, int], int]  # (device, seq) -> ts_ms on the wire
    raw: dict[tuple[str, int], float] = field(default_factory=dict)
    visible: dict[tuple[str, int], float] = field(default_factory=dict)

    @classmethod
    def plan(cls, w: Workload, o: Options, t0_s: float) -> Probes:
        """The probe polls of a run starting at ``t0_s`` (a whole millisecond, as
        the publishers stamp ``ts_ms`` from it)."""
        t0_ms = round(t0_s * 1000)
        intended: dict[tuple[str, int], float] = {}
        device_ms: dict[tuple[str, int], int] = {}
        for i in range(0, w.devices, o.probe_every):
            device = device_ids(w, i)[1]
            for m in device_messages(w, i, round(o.duration_s * 1000)):
                for seq in range(m.first_seq, m.first_seq + m.polls):
                    intended[(device, seq)] = (t0_ms + m.send_ms) / 1000
                    device_ms[(device, seq)] = t0_ms + poll_time_ms(w, i, seq)
        return cls(intended, device_ms)

    def latencies(self, seen: dict[tuple[str, int], float]) -> Latencies:
        values = sorted(seen[k] - self.intended[k] for k in seen if k in self.intended)
        return Latencies(values, len(self.intended))


def run_settings(o: Options, uid: str, schema: str) -> Settings:
    park = f"bench{uid}"
    return Settings(
        mqtt=MqttSettings(
            host=o.mqtt[0],
            port=o.mqtt[1],
            client_id=f"bridge-{park}",
            subscription=f"sp/v1/{park}/+/+/telemetry",
        ),
        kafka=KafkaSettings(bootstrap=o.kafka, topic_prefix=f"bench{uid}."),
        database=DatabaseSettings(dsn=SecretStr(o.dsn), schema=schema),
        sink=SinkSettings(group_id=f"sink-{park}"),
        rules=RulesSettings(group_id=f"rules-{park}"),
        notifier=NotifierSettings(group_id=f"notifier-{park}", allow=["127.0.0.1/32"]),
        webhooks=WebhookSettings(
            secret_key=SecretStr(base64.urlsafe_b64encode(os.urandom(32)).decode())
        ),
    )


def park_of(s: Settings) -> str:
    return s.mqtt.subscription.split("/")[2]


_SUBSCRIBE_CHUNK = 500


def _probe_topics(w: Workload, park: str, every: int) -> list[str]:
    """The topics the probe devices' polls arrive on (with gateway messages, their
    enterprises' gateway topics)."""
    topics: dict[str, None] = {}
    for i in range(0, w.devices, every):
        enterprise, device = device_ids(w, i)
        sender = gateway_id(enterprise) if w.gateway else device
        topics[telemetry_topic(park, enterprise, sender)] = None
    return list(topics)


class Observer:
    """The raw MQTT subscriber on the probes' topics; also sends the warm-up."""

    def __init__(self, s: Settings, probes: Probes, topics: Sequence[str]) -> None:
        self.probes = probes
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"bench-observer-{park_of(s)}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        # In chunks: one SUBSCRIBE with the province's 5 600 probe topics is larger
        # than the broker takes (Mosquitto closes the connection: oversize packet).
        self._chunks = [
            [(t, 1) for t in topics[i : i + _SUBSCRIBE_CHUNK]]
            for i in range(0, len(topics), _SUBSCRIBE_CHUNK)
        ]
        self._acks = 0
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(s.mqtt.host, s.mqtt.port, keepalive=30)
        self.client.loop_start()
        if not self._subscribed.wait(20):
            raise RuntimeError("the raw subscriber's subscription was not acknowledged")

    def _on_connect(self, client: mqtt.Client, *_: Any) -> None:
        self._acks = 0
        for chunk in self._chunks:  # again after a reconnection (clean session)
            client.subscribe(chunk)

    def _on_subscribe(self, *_: Any) -> None:
        self._acks += 1
        if self._acks >= len(self._chunks):
            self._subscribed.set()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        body = orjson.loads(msg.payload)
        for d in body.get("devices", [body]):  # a gateway's message, or a device's
            for r in d["readings"]:
                self.probes.raw.setdefault((d["device"], r["seq"]), now)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def _warm_up(s: Settings, observer: Observer, conn: Any) -> None:
    """Send a reading a second until one is in the database (bridge subscribed,
    sink assigned); the warm-up rows are not counted."""
    enterprise, device = WARMUP_DEVICE
    topic = telemetry_topic(park_of(s), enterprise, device)
    for seq in range(1, 61):
        reading = Reading(seq, PROBE_METRIC, 1.0, "kW", round(time.time() * 1000))
        payload = encode_batch(
            TelemetryBatch(park_of(s), enterprise, device, (reading,))
        )
        observer.client.publish(topic, payload, qos=1)
        await asyncio.sleep(1)
        if await _count(conn) > 0:  # only warm-up readings so far
            return
    raise RuntimeError("no warm-up reading reached the database in 60 s")


async def _register_series(
    storage: Storage, o: Options, s: Settings
) -> tuple[int, float]:
    """Create the load's series before the run, as a platform that has run before
    has them: otherwise the first step of the run (the province: 560 000 series in
    10 s) measures creating series, a start-up cost (timed apart by ``bench sink``).
    The sink still reads their ids on first sight. (count, seconds)"""
    w, park = o.workload, park_of(s)
    keys: list[SeriesKey] = [
        (park, *device_ids(w, i), METRICS[k % len(METRICS)][0], "realtime", "value")
        for i in range(w.devices)
        for k in range(w.metrics_per_device)
    ]
    t0 = time.perf_counter()
    async with await _connect(o, s) as conn:
        for i in range(0, len(keys), 50_000):
            await storage.telemetry.series.load(conn, keys[i : i + 50_000])
    storage.telemetry.series.forget()  # (its cache is the bench's, not the sink's)
    return len(keys), time.perf_counter() - t0


async def _count(conn: Any, but_series: Sequence[int] = ()) -> int:
    cur = await conn.execute(
        "SELECT count(*) FROM telemetry WHERE series_id <> ALL(%s)", (list(but_series),)
    )
    row = await cur.fetchone()
    return int(row[0])


async def _not_load(conn: Any) -> list[int]:
    """The series that are not the load's: the warm-up's and the breach
    analysers' (whose readings are counted by their webhooks)."""
    cur = await conn.execute(
        "SELECT id FROM series WHERE device = %s OR metric = %s",
        (WARMUP_DEVICE[1], hooks.METRIC),
    )
    return [int(r[0]) for r in await cur.fetchall()]


async def _watch(
    s: Settings, probes: Probes, o: Options, stop: asyncio.Event
) -> list[float]:
    """Poll the probes' rows until all are seen or ``stop``; query times (ms).

    On a connection of its own, so the bench's other queries never delay a poll.
    """
    async with await _connect(o, s) as conn:
        return await _poll(conn, s, probes, o, stop)


async def _connect(o: Options, s: Settings) -> Any:
    return await psycopg.AsyncConnection.connect(
        o.dsn,
        autocommit=True,
        options=f"-c search_path={s.database.schema_}",
        prepare_threshold=None,  # a custom plan each poll: prunes partitions
    )


async def _poll(
    conn: Any, s: Settings, probes: Probes, o: Options, stop: asyncio.Event
) -> list[float]:
    # By series id, each probe series one descent of the primary key (series_id,
    # time). Joined to ``series`` by park, metric and device, the planner chose a
    # parallel scan of the partition: every poll took 75-155 ms of two parallel
    # workers, a good part of PostgreSQL's CPU at the province load.
    resolve = (
        "SELECT id, device FROM series"
        " WHERE park = %s AND metric = %s AND device = ANY(%s)"
    )
    stmt = (
        "SELECT series_id, seq FROM telemetry"
        " WHERE series_id = ANY(%s) AND time >= to_timestamp(%s / 1000.0)"
    )
    devices = sorted({d for d, _ in probes.intended})
    device_of: dict[int, str] = {}
    took: list[float] = []
    while not stop.is_set():
        unseen = [k for k in probes.intended if k not in probes.visible]
        if not unseen:
            break
        since_ms = min(probes.device_ms[k] for k in unseen) - 1  # (float rounding)
        start = time.time()
        if start * 1000 >= since_ms:
            if len(device_of) < len(devices):  # (registered before the run)
                cur = await conn.execute(resolve, (park_of(s), PROBE_METRIC, devices))
                device_of = {int(i): d for i, d in await cur.fetchall()}
            cur = await conn.execute(stmt, (list(device_of), since_ms))
            for series_id, seq in await cur.fetchall():
                probes.visible.setdefault((device_of[series_id], seq), start)
            took.append((time.time() - start) * 1000)
        await asyncio.sleep(max(0.0, start + o.poll_ms / 1000 - time.time()))
    return took


def _start(
    command: Sequence[str], env: dict[str, str], logs: Path
) -> subprocess.Popen[bytes]:
    return spawn([*command, "--stats-every", "5"], env, logs / f"{command[0]}.log")


def _stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


async def clean_up(s: Settings, admin_dsn: str) -> None:
    """Drop the schema, the topics and the bridge's persistent MQTT session."""
    from aiokafka.admin import AIOKafkaAdminClient

    async with await psycopg.AsyncConnection.connect(admin_dsn, autocommit=True) as c:
        await c.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(s.database.schema_)
            )
        )
    admin = AIOKafkaAdminClient(bootstrap_servers=s.kafka.bootstrap)
    await admin.start()
    try:
        k = s.kafka
        ours = {k.telemetry_topic, k.status_topic, k.alerts_topic, k.deadletter_topic}
        existing = ours & set(await admin.list_topics())
        if existing:  # (none if the run failed before creating them)
            await admin.delete_topics(sorted(existing))
    finally:
        await admin.close()
    session = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=s.mqtt.client_id, clean_session=True
    )
    session.connect(s.mqtt.host, s.mqtt.port)
    session.loop_start()
    await asyncio.sleep(0.5)
    session.disconnect()
    session.loop_stop()


async def run(o: Options) -> Result:
    """One end-to-end run (see the module doc); cleans up even when it fails."""
    uid = uuid.uuid4().hex[:8]
    schema = f"bench_{uid}"
    s = run_settings(o, uid, schema)
    logs = Path(tempfile.mkdtemp(prefix=f"smartpark-bench-{uid}-"))
    async with await psycopg.AsyncConnection.connect(o.dsn, autocommit=True) as c:
        await c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    procs: list[subprocess.Popen[bytes]] = []
    observer: Observer | None = None
    receiver: hooks.Receiver | None = None
    try:
        secrets: dict[str, str] = {}
        async with Storage(
            s.database, webhook_keys=SecretBox.from_settings(s.webhooks)
        ) as storage:
            await storage.migrate()
            series = await _register_series(storage, o, s)
            if o.alerts:
                receiver = hooks.Receiver()
                receiver.start()
                secrets = await _subscribe(storage, o, s, receiver)
        await ensure_topics(s.kafka)
        commands = [["bridge"], ["sink"]]
        if o.alerts:
            pack = logs / "bench-pack.yaml"
            pack.write_text(hooks.PACK)
            commands += [["rules", "run", "--pack", str(pack)], ["notifier"]]
        procs = [_start(c, service_env(s), logs) for c in commands]
        async with await _connect(o, s) as conn:
            probes = Probes({}, {})  # the warm-up is not measured
            topics = _probe_topics(o.workload, park_of(s), o.probe_every)
            observer = Observer(s, probes, topics)
            await _warm_up(s, observer, conn)
            meter = CpuMeter(
                {c[0]: p.pid for c, p in zip(commands, procs, strict=True)}
            )
            result = await _measure(
                o, s, observer=observer, conn=conn, logs=logs,
                receiver=receiver, secrets=secrets, meter=meter,
            )  # fmt: skip
            return replace(
                result,
                cpu_s=meter.services,
                other_cpu_s=meter.others,
                measured_s=meter.seconds,
                machine_busy=meter.busy,
                series=series,
            )
    finally:
        if observer is not None:
            observer.close()
        if receiver is not None:
            receiver.close()
        _stop(procs)
        await clean_up(s, o.dsn)


class CpuMeter:
    """CPU seconds over the run of the platform's services (by name), of the rest
    of the machine (PostgreSQL, Mosquitto, Kafka, the load generator, this bench
    process with its raw subscriber and row-visible queries), and the machine's
    busy share. ``start`` and ``stop`` bracket the load and its drain."""

    def __init__(self, services: dict[str, int]) -> None:
        self._pids = services
        self.services: dict[str, float] = {}
        self.others: dict[str, float] = {}
        self.seconds = math.nan
        self.busy = math.nan

    def start(self) -> None:
        self._before = {n: cpu_seconds(p) for n, p in self._pids.items()}
        self._groups = GroupSampler()
        self._groups.start()
        self._own = time.process_time()
        self._jiffies = machine_jiffies()
        self._t0 = time.monotonic()

    def stop(self, *, publishers: float) -> None:
        self.seconds = time.monotonic() - self._t0
        self.services = {
            n: cpu_seconds(p) - self._before[n] for n, p in self._pids.items()
        }
        self.others = self._groups.stop()
        self.others["load generator"] = publishers
        self.others["bench (raw subscriber, queries)"] = time.process_time() - self._own
        busy, total = (
            a - b for a, b in zip(machine_jiffies(), self._jiffies, strict=True)
        )
        self.busy = busy / total if total else math.nan
        counted = sum(self.services.values()) + sum(self.others.values())
        self.others["unaccounted (kernel, other processes)"] = max(
            0.0, busy / os.sysconf("SC_CLK_TCK") - counted
        )


async def _measure(
    o: Options,
    s: Settings,
    *,
    observer: Observer,
    conn: Any,
    logs: Path,
    receiver: hooks.Receiver | None,
    secrets: dict[str, str],
    meter: CpuMeter,
) -> Result:
    meter.start()
    # The publisher processes start and connect meanwhile; a whole millisecond.
    t0 = round(time.time() + 3.0, 3)
    probes = Probes.plan(o.workload, o, t0)
    observer.probes = probes  # from now on the probe messages are measured
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(s, probes, o, stop))
    breaches = hooks.plan(o.workload, park_of(s), o.alerts, t0, o.duration_s)
    sender = asyncio.create_task(_send_breaches(observer, breaches))
    halt = threading.Event()
    publishing = asyncio.create_task(
        asyncio.to_thread(
            publish_all,
            o.workload,
            park_of(s),
            *o.mqtt,
            t0_s=t0,
            duration_s=o.duration_s,
            publishers=o.publishers,
            stop=halt,
        )
    )
    try:
        results = await asyncio.shield(publishing)
    except asyncio.CancelledError:  # interrupted: stop the publishers, then go
        halt.set()
        with contextlib.suppress(Stopped):
            await publishing
        raise
    run_verdict = verdict(results)
    end = t0 + o.duration_s
    stored = await _count(conn, await _not_load(conn))
    grown = time.time()  # when the count last grew
    deadline = grown + o.drain_s
    while stored < run_verdict.offered_readings and time.time() < deadline:
        await asyncio.sleep(0.2)
        count = await _count(conn, await _not_load(conn))
        if count > stored:
            stored, grown = count, time.time()
    drained = max(0.0, grown - end)
    try:  # the watcher ends once every probe poll is seen
        await asyncio.wait_for(
            asyncio.shield(watcher), max(0.0, deadline - time.time())
        )
    except TimeoutError:
        stop.set()
    took = sorted(await watcher)
    await sender
    # (before reading the topic back, which is the bench's work, not the run's)
    meter.stop(publishers=sum(r.cpu_s for r in results))
    kafka = probes.latencies(await _produced(s.kafka, probes))
    outcome = None
    if receiver is not None:
        await _wait_for_hooks(receiver, len(breaches), deadline)
        outcome = hooks.match(breaches, receiver.snapshot(), secrets)
    return Result(
        o.workload,
        o,
        run_verdict,
        probes.latencies(probes.raw),
        probes.latencies(probes.visible),
        stored,
        drained,
        (took[len(took) // 2], took[-1]) if took else (math.nan, math.nan),
        logs,
        s.database.schema_,
        outcome,
        kafka,
    )


async def _produced(k: KafkaSettings, probes: Probes) -> dict[tuple[str, int], float]:
    """When each probe poll was first handed to Kafka (its record's timestamp), read
    back from the telemetry topic after the run (no load on the run itself)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=k.bootstrap, enable_auto_commit=False)
    await consumer.start()
    seen: dict[tuple[str, int], float] = {}
    try:
        parts = [TopicPartition(k.telemetry_topic, p) for p in range(k.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        for tp in parts:
            while await consumer.position(tp) < ends[tp]:
                got = await consumer.getmany(tp, timeout_ms=1000, max_records=5000)
                for rec in got.get(tp, []):
                    decoded = decode_message(rec.value or b"", now_ms=2**62)
                    for batch in decoded.batches:
                        for r in batch.readings:
                            key = (batch.device, r.seq)
                            if key in probes.intended and key not in seen:
                                seen[key] = rec.timestamp / 1000
    finally:
        await consumer.stop()
    return seen


async def _subscribe(
    storage: Storage, o: Options, s: Settings, receiver: hooks.Receiver
) -> dict[str, str]:
    """One subscription per breaching enterprise, each its own endpoint; the
    secrets by enterprise."""
    secrets: dict[str, str] = {}
    for enterprise in hooks.enterprises(o.workload, o.alerts):
        secret = signing.generate_secret()
        await storage.webhooks.create_subscription(
            Subscription(
                f"bench-{enterprise}", park_of(s), enterprise,
                receiver.url(enterprise), hooks.EVENT_TYPES,
            ),
            secret,
        )  # fmt: skip
        secrets[enterprise] = secret
    return secrets


async def _wait_for_hooks(receiver: hooks.Receiver, n: int, deadline: float) -> None:
    while time.time() < deadline:
        if len(receiver.snapshot()) >= n:
            return
        await asyncio.sleep(0.2)


async def _send_breaches(observer: Observer, breaches: Sequence[hooks.Breach]) -> None:
    """Open loop: each breach reading is published at its intended time."""
    for b in breaches:
        await asyncio.sleep(max(0.0, b.send_s - time.time()))
        observer.client.publish(b.topic, b.payload, qos=1)


def options(args: argparse.Namespace) -> Options:
    w = PRESETS[args.preset]
    if args.rate_scale != 1.0:
        w = w.scaled(args.rate_scale)
    if args.seed is not None:
        w = replace(w, seed=args.seed)
    if args.batch_polls != w.batch_polls or args.gateway:
        w = replace(w, batch_polls=args.batch_polls, gateway=args.gateway)
    senders = w.enterprises if w.gateway else w.devices
    messages_per_s = senders * 1000 / w.step_ms / w.batch_polls
    publishers = args.publishers or max(
        1, math.ceil(messages_per_s / MESSAGES_PER_PUBLISHER)
    )
    host, _, port = args.mqtt.rpartition(":")
    return Options(
        w,
        args.duration,
        publishers,
        probe_every=args.probe_every or max(20, w.devices // PROBES),
        poll_ms=args.poll_ms,
        dsn=args.dsn,
        mqtt=(host, int(port)),
        kafka=args.kafka,
        alerts=args.alerts,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", choices=sorted(PRESETS), default="city")
    parser.add_argument("--duration", type=float, default=60.0, metavar="S")
    parser.add_argument("--rate-scale", type=float, default=1.0, metavar="X")
    parser.add_argument("--publishers", type=int, default=0, help="0: automatic")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--batch-polls",
        type=int,
        default=1,
        metavar="N",
        help="consecutive polls of a device in one message (latency: N-1 steps more)",
    )
    parser.add_argument(
        "--gateway",
        action="store_true",
        help="one message an enterprise and step, as agents with publish.gateway"
        " send (wire schema version 2)",
    )
    parser.add_argument(
        "--probe-every",
        type=int,
        default=0,
        metavar="N",
        help=f"1 device in N is a probe (0: automatic, about {PROBES} probe devices)",
    )
    parser.add_argument("--poll-ms", type=int, default=50)
    parser.add_argument(
        "--alerts",
        type=int,
        default=Options.alerts,
        metavar="N",
        help="enterprises whose analyser breaches every 20 s: rules runner, notifier"
        " and webhook latency (0: bridge and sink only)",
    )
    add_endpoints(parser)
