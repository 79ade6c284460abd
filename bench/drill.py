"""Fault drills under a steady load, with a ledger: what survives each crash.

    smartpark drill [--tier short|full] [--faults bridge,kafka,...] [--report PATH]

One run, on a fresh schema, fresh Kafka topics and a fresh park id, against the
local services (``deploy/local/services up``):

1. starts ``smartpark bridge``, ``sink``, ``rules run``, ``notifier`` and ``api``
   as processes, a local webhook receiver subscribed to the park's alerts, a TCP
   proxy (:mod:`bench.tcp_proxy`) in front of Mosquitto (the edge's network), and
   a real edge agent polling a simulated enterprise through that proxy
   (:class:`bench.drill_procs.EdgeSite`);
2. runs the open-loop load of :mod:`bench.load` (the pilot park) through the whole
   drill, publishing with paho at QoS 1 through the proxy. The **ledger** records
   every reading whose PUBACK the publisher got, and when. Like an edge agent's
   outbox (``publish.resend_window_s``), the publisher sends again, after a lost
   connection, what was acknowledged within ``--resend-window`` seconds before it
   (counted apart, never acknowledged twice);
3. injects the faults one after the other, with the load running: each is held
   for the tier's fault time, then undone; right after each fault starts, one
   reading breaching the drill's rule pack is published on a device of its own;
   the next fault waits until the backlog has drained (every reading acknowledged
   before the fault was undone is in the database) and the breach has its alert
   and its webhook, or until the tier's drain limit;
4. stops the load, waits for the last readings, stops the edge agent once its
   outbox is empty, and judges.

Faults (:data:`FAULTS`): ``kill -9`` of the edge agent, the bridge, the sink, the
rules runner, the notifier and the API (restarted after the fault time);
``kill -9`` of Mosquitto and of the Kafka broker, restarted with
``deploy/local/services restart``; PostgreSQL immediate shutdown (``pg_ctl stop -m
immediate``: no checkpoint, crash recovery on restart); the edge's network cut
(the proxy resets every connection and refuses new ones); the database down
(``pg_ctl stop -m fast``) for the fault time; ``mosquitto-backlog``: the bridge
killed, and half the fault time later, while Mosquitto holds the bridge session's
backlog in memory, ``kill -9`` of Mosquitto. Mosquitto saves its state every
second (``autosave_interval 1``), not per message: what it acknowledged since the
last save and had not handed to the bridge is lost, unless the publishers send it
again (with ``--resend-window 0`` the load's publisher does not, and the drill
fails on it, as an edge agent with ``publish.resend_window_s: 0`` would lose it).
A platform service that exits by itself meanwhile (e.g. on a database outage) is
started again after a second, as the deployment's restart policy does, and counted
in the report. The peak RSS of every process is read when each fault has been
undone and drained: what it held while a downstream was away.

Verdicts, stated the way Kafka's system tests state them:

- **every acknowledged reading is in the database**; FAIL otherwise, listing a few
  missing (device, seq, metric);
- **every poll the edge agent stored in its outbox is in the database** (its
  sequence numbers have no gap; its outbox dropped nothing);
- every injected breach produced its **alert** (alerts table) and its **webhook**
  (received by the local receiver, its Standard Webhooks signature verified with
  the subscription's secret as of its arrival);
- after each fault the backlog drained within the tier's limit (the time it took
  is reported, and how long PUBACKs stopped and when they resumed);
- the API answered ``/ready`` again after its restart;
- the local services are up and healthy at the end.

Counted apart, not failures: readings Kafka holds more than once (duplicates; the
sink stores each once), acknowledged readings that reached Kafka after a newer
reading of their device (late arrivals, beyond the workload's own held-back polls),
readings stored that the publisher never got a PUBACK for, and readings sent but
never acknowledged (the publisher keeps them, as the edge outbox does: none are
expected).

Tiers (:data:`TIERS`): ``short`` (CI) holds each fault 4 s after 2 s of steady
load, about three minutes in all; ``full`` holds each 2 minutes after 30 s, waits
up to 5 minutes for each backlog (with ``--fault-seconds 30`` it took 14 minutes)
and writes ``docs/drills.md`` unless ``--report`` says otherwise.

``--gateway``: the load and the edge agent send gateway messages (wire schema
version 2, one message an enterprise and step; the agent with ``publish.gateway``),
with the same ledger and verdicts.

Exit code 0 only when every verdict passes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from paho.mqtt.enums import CallbackAPIVersion
from psycopg import sql

from bench import e2e, hooks
from bench.drill_procs import Api, EdgeSite, Service
from bench.figures import (
    EXIT_INTERRUPTED,
    interrupt_on_terminate,
    peak_rss_kib,
    service_env,
)
from bench.load import (
    METRICS,
    PRESETS,
    Message,
    Workload,
    device_ids,
    encode,
    poll_time_ms,
    schedule,
)
from bench.tcp_proxy import TcpProxy
from edge_agent.config.model import PublishConfig
from notifier import signing
from notifier.signing import WebhookVerificationError
from smartpark import wire
from smartpark.cli import EXIT_FAILED, EXIT_OK, command
from smartpark.errors import SmartparkError, UsageError
from smartpark.settings import Settings
from storage import Storage, Subscription
from storage.secretbox import SecretBox
from stream.kafka import ensure_topics

ROOT = Path(__file__).resolve().parents[1]
SERVICES_SCRIPT = ROOT / "deploy" / "local" / "services"

PROCESS_FAULTS = ("edge", "bridge", "sink", "rules", "notifier", "api")
FAULTS = (
    *PROCESS_FAULTS,
    "mosquitto",
    "kafka",
    "postgres",
    "netcut",
    "dbdown",
    # compound (see the module doc): Mosquitto loses acknowledged readings, which
    # only the publishers' resend window brings back
    "mosquitto-backlog",
)
FAULT_TEXT = {
    "edge": "kill -9 of the edge agent",
    "api": "kill -9 of the API",
    "bridge": "kill -9 of the bridge",
    "sink": "kill -9 of the sink",
    "rules": "kill -9 of the rules runner",
    "notifier": "kill -9 of the notifier",
    "mosquitto": "kill -9 of Mosquitto, then restart",
    "kafka": "kill -9 of the Kafka broker, then restart",
    "postgres": "PostgreSQL immediate shutdown, then restart",
    "netcut": "the edge's network cut (TCP proxy), then restored",
    "dbdown": "the database down (fast shutdown), then started",
    "mosquitto-backlog": "kill -9 of Mosquitto holding a backlog (bridge down)",
}

# The bench's pack and breach readings (bench.hooks): one threshold rule on nh3.
BREACH_METRIC, BREACH_UNIT, BREACH_VALUE = hooks.METRIC, "mg/m3", hooks.HIGH
BREACH_ENTERPRISE = "e0000"  # shares a partition with the load
BREACH_RULE = "bench-nh3"
# Bits of the metrics a poll is stored with (a poll is complete when all are seen).
_BITS = {name: 1 << i for i, (name, _) in enumerate((*METRICS, (BREACH_METRIC, "")))}
# The publisher sends again what was acknowledged this long before a lost
# connection, as an edge agent does by default.
RESEND_WINDOW_S = PublishConfig().resend_window_s
ACK_GAP_S = 1.0  # a longer silence between PUBACKs means acknowledgements stopped
MISSING_SHOWN = 10


@dataclass(frozen=True)
class Tier:
    faults: tuple[str, ...]  # the default, in this order
    fault_s: float  # how long each fault is held
    steady_s: float  # load running before each fault
    drain_limit_s: float  # longest wait for a fault's backlog before the next one


TIERS = {
    "short": Tier(FAULTS, fault_s=4.0, steady_s=2.0, drain_limit_s=60.0),
    "full": Tier(FAULTS, fault_s=120.0, steady_s=30.0, drain_limit_s=300.0),
}


@dataclass(frozen=True)
class Options:
    tier: str
    faults: tuple[str, ...]
    workload: Workload
    fault_s: float
    steady_s: float
    drain_limit_s: float
    dsn: str
    mqtt: tuple[str, int]
    kafka: str
    services_dir: Path
    report: Path | None = None
    resend_window_s: float = RESEND_WINDOW_S
    # The load and the edge agent send gateway messages (wire version 2), as
    # agents with publish.gateway do (the workload's ``gateway``).
    gateway: bool = False


# -- the ledger: what the publisher sent and what the broker acknowledged ---------

Key = tuple[str, int]  # (device, seq): one poll


@dataclass(frozen=True)
class Sent:
    """One MQTT message of the drill: its polls, their metrics and device time,
    and what was published (kept to send it again, see :class:`Publisher`)."""

    keys: tuple[Key, ...]
    metrics: tuple[str, ...]
    ts_ms: int  # the oldest device time in it
    sent_s: float
    topic: str = field(default="", repr=False)
    payload: bytes = field(default=b"", repr=False)

    @property
    def readings(self) -> int:
        return len(self.keys) * len(self.metrics)


@dataclass
class Ledger:
    """Thread-safe: paho's thread acknowledges, the sender thread sends."""

    acked: list[tuple[float, Sent]] = field(default_factory=list)  # in ack order
    unacked: dict[int, Sent] = field(default_factory=dict)  # by MQTT message id
    early: dict[int, float] = field(default_factory=dict)  # acked before recorded
    planned_late: set[Key] = field(default_factory=set)  # the workload's own
    sent_readings: int = 0
    not_queued: int = 0  # readings paho refused (every message id in use)
    # sent again after a lost connection (Publisher): not in ``acked`` twice
    resent_unacked: dict[int, Sent] = field(default_factory=dict)
    resends: int = 0  # lost connections that queued acknowledged messages again
    resent_readings: int = 0
    resent_acked: int = 0  # readings of those acknowledged again
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, mid: int, sent: Sent, *, again: bool = False) -> None:
        with self.lock:
            at = self.early.pop(mid, None)
            if again:
                self.resent_readings += sent.readings
                if at is None:
                    self.resent_unacked[mid] = sent
                else:
                    self.resent_acked += sent.readings
                return
            self.sent_readings += sent.readings
            if at is None:
                self.unacked[mid] = sent
            else:
                self.acked.append((at, sent))

    def ack(self, mid: int, at_s: float) -> None:
        with self.lock:
            again = self.resent_unacked.pop(mid, None)
            if again is not None:
                self.resent_acked += again.readings
                return
            sent = self.unacked.pop(mid, None)
            if sent is None:
                self.early[mid] = at_s
            else:
                self.acked.append((at_s, sent))

    def acked_since(self, since_s: float) -> list[Sent]:
        """The messages first acknowledged at ``since_s`` or later, in ack order."""
        with self.lock:
            out = []
            for at, sent in reversed(self.acked):
                if at < since_s:
                    break
                out.append(sent)
        return out[::-1]

    @property
    def acked_readings(self) -> int:
        with self.lock:
            return sum(s.readings for _, s in self.acked)

    @property
    def unacked_readings(self) -> int:
        with self.lock:
            return sum(s.readings for s in self.unacked.values()) + sum(
                s.readings for s in self.resent_unacked.values()
            )


class Publisher:
    """The open-loop load of :mod:`bench.load` and the drill's breach readings,
    through one paho client at QoS 1 that reconnects by itself (every 1-2 s) and
    sends again what was not acknowledged, as an edge agent does.

    As an edge agent's outbox does (``publish.resend_window_s``, see
    :mod:`edge_agent.publisher`), it also sends again, after each reconnect, the
    messages first acknowledged within ``resend_window_s`` before the connection
    was lost: a broker killed before its autosave loses what it acknowledged. They
    are counted apart in the ledger (``resent_*``), never as acknowledged twice;
    0 turns it off."""

    def __init__(
        self, w: Workload, park: str, addr: tuple[str, int], resend_window_s: float
    ) -> None:
        self.w, self.park, self.addr = w, park, addr
        self.resend_window_s = resend_window_s
        self.ledger = Ledger()
        self.disconnects = 0
        self._lost_s: float | None = None  # the connection lost, not yet resent
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._messages: list[Message] = []
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"drill-load-{park}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(10_000)
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.on_publish = self._on_publish
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect

    def connect(self) -> None:
        self.client.connect(*self.addr, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        self.ledger.ack(mid, time.time())

    def _on_disconnect(self, *_: Any) -> None:
        self.disconnects += 1
        if self._lost_s is None:
            self._lost_s = time.time()

    def _on_connect(self, *_: Any) -> None:
        lost, self._lost_s = self._lost_s, None
        if lost is None or self.resend_window_s <= 0:
            return
        again = self.ledger.acked_since(lost - self.resend_window_s)
        if not again:
            return
        with self.ledger.lock:
            self.ledger.resends += 1
        for sent in again:
            self.send(sent.topic, sent.payload, sent, again=True)

    def send(
        self, topic: str, payload: bytes, sent: Sent, *, again: bool = False
    ) -> None:
        info = self.client.publish(topic, payload, qos=1)
        if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:  # 65,535 message ids in use
            with self.ledger.lock:
                self.ledger.not_queued += sent.readings
            return
        self.ledger.record(info.mid, sent, again=again)

    def breach(self, device: str, seq: int = 1) -> None:
        """One reading over the pack's limit on a device of its own, now."""
        ts = round(time.time() * 1000)
        r = wire.Reading(seq, BREACH_METRIC, BREACH_VALUE, BREACH_UNIT, ts)
        batch = wire.TelemetryBatch(self.park, BREACH_ENTERPRISE, device, (r,))
        topic = wire.telemetry_topic(self.park, BREACH_ENTERPRISE, device)
        payload = wire.encode_batch(batch)
        sent = Sent(((device, seq),), (BREACH_METRIC,), ts, time.time(), topic, payload)
        self.send(topic, payload, sent)

    def plan(self, duration_s: float) -> None:
        """Compute the schedule beforehand: seconds of CPU for a long drill, which
        would otherwise delay the first messages."""
        self._messages = schedule(self.w, round(duration_s * 1000))

    def start_load(self, t0_s: float) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(t0_s,), name="drill-load", daemon=True
        )
        self._thread.start()

    def _run(self, t0_s: float) -> None:
        w = self.w
        t0_ms = round(t0_s * 1000)
        metrics = tuple(
            METRICS[k % len(METRICS)][0] for k in range(w.metrics_per_device)
        )
        for m in self._messages:
            due = t0_s + m.send_ms / 1000
            if self._stop.wait(max(0.0, due - time.time())):
                return
            if m.devices:  # a gateway message: one poll of each of its devices
                keys = tuple((device_ids(w, d)[1], m.first_seq) for d in m.devices)
            else:
                device = device_ids(w, m.device_index)[1]
                keys = tuple(
                    (device, s) for s in range(m.first_seq, m.first_seq + m.polls)
                )
            if m.late:
                self.ledger.planned_late.update(keys)
            ts = t0_ms + poll_time_ms(w, m.device_index, m.first_seq)
            topic, payload = encode(w, self.park, m, t0_ms)
            self.send(
                topic, payload, Sent(keys, metrics, ts, time.time(), topic, payload)
            )

    def stop_load(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def close(self) -> None:
        self.stop_load()
        self.client.disconnect()
        self.client.loop_stop()


# -- what is stored: polled from the database -----------------------------------


class StoreWatcher:
    """Polls the park's stored readings; notes when each poll became complete.

    The query reads rows from the oldest device time still awaited (an acknowledged
    poll not complete yet), and at least the last minute, on a connection of its
    own that it opens again after a database outage.
    """

    def __init__(self, o: Options, schema: str, park: str, ledger: Ledger) -> None:
        self.o, self.schema, self.park, self.ledger = o, schema, park, ledger
        self.masks: dict[Key, int] = {}
        self.complete_at: dict[Key, float] = {}
        self.waiting: dict[Key, tuple[int, float]] = {}  # acked: (ts_ms, ack_s)
        self.alert_at: dict[str, float] = {}  # breach device -> first seen
        self.round_s = 0.0  # start of the last round that finished
        self.errors = 0
        self.failed: DrillFailed | None = None
        self._taken = 0  # ledger.acked entries taken into waiting
        self._stop = asyncio.Event()

    def stop(self) -> None:
        self._stop.set()

    def give_up(self, acked_until_s: float) -> int:
        """Stop awaiting the polls acknowledged by ``acked_until_s`` (a fault's
        drain limit passed): later faults are judged without them, the final
        verdict still counts them. How many polls."""
        overdue = [k for k, (_, ack) in self.waiting.items() if ack <= acked_until_s]
        for key in overdue:
            del self.waiting[key]
        return len(overdue)

    def drained(self, acked_until_s: float) -> bool:
        """Every poll acknowledged by ``acked_until_s`` is stored, as of a round
        that started after it."""
        return self.round_s > acked_until_s and not any(
            ack <= acked_until_s for _, ack in self.waiting.values()
        )

    def check(self) -> None:
        """Raise what stopped :meth:`run` (a failed query is no outage)."""
        if self.failed is not None:
            raise self.failed

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:  # any: the drill must not wait on a dead watcher
            self.failed = DrillFailed(f"watching the stored readings: {exc!r}")
            raise

    async def _run(self) -> None:
        while not self._stop.is_set():
            try:
                async with await psycopg.AsyncConnection.connect(
                    self.o.dsn,
                    autocommit=True,
                    options=f"-c search_path={self.schema}",
                    connect_timeout=3,
                ) as conn:
                    while not self._stop.is_set():
                        began = time.time()
                        await self._round(conn, began)
                        self.round_s = began
                        took = time.time() - began
                        await asyncio.sleep(max(0.3, 2 * took))
            except psycopg.OperationalError:  # the database is down: try again
                self.errors += 1
                await asyncio.sleep(0.5)

    def _take_acks(self) -> None:
        with self.ledger.lock:
            new = self.ledger.acked[self._taken :]
            self._taken += len(new)
        for ack_s, sent in new:
            for key in sent.keys:
                if key not in self.complete_at:
                    self.waiting[key] = (sent.ts_ms, ack_s)

    async def _round(self, conn: psycopg.AsyncConnection[Any], began: float) -> None:
        self._take_acks()
        since_ms = min([round(began * 1000) - 60_000, *self._oldest()])
        cur = await conn.execute(
            "SELECT s.device, t.seq, s.metric FROM telemetry t"
            " JOIN series s ON s.id = t.series_id"
            " WHERE s.park = %s AND t.time >= to_timestamp(%s / 1000.0)",
            (self.park, since_ms - 1),
        )
        for device, seq, metric in await cur.fetchall():
            key = (device, seq)
            mask = self.masks.get(key, 0) | _BITS.get(metric, 0)
            self.masks[key] = mask
            if key not in self.complete_at and mask == self._need(device):
                self.complete_at[key] = began
                self.waiting.pop(key, None)
        cur = await conn.execute(
            "SELECT device FROM alerts WHERE park = %s AND rule_id = %s",
            (self.park, BREACH_RULE),
        )
        for (device,) in await cur.fetchall():
            self.alert_at.setdefault(device, began)

    def _oldest(self) -> list[int]:
        return [min(ts for ts, _ in self.waiting.values())] if self.waiting else []

    def _need(self, device: str) -> int:
        if device.startswith("breach-"):
            return _BITS[BREACH_METRIC]
        per = self.o.workload.metrics_per_device
        return sum({_BITS[METRICS[k % len(METRICS)][0]] for k in range(per)})


# -- the enterprise's webhook receiver ------------------------------------------


class Webhooks:
    """What the enterprise's receiver (:class:`bench.hooks.Receiver`, a real HTTP
    server on loopback) got, each request's signature checked with the
    subscription's secret as of its arrival, as a receiver checks it."""

    def __init__(self) -> None:
        self.receiver = hooks.Receiver()
        self.secret = ""  # the subscription's, set before an alert can arrive

    @property
    def url(self) -> str:
        return self.receiver.url("drill")

    def bad_signatures(self) -> int:
        return sum(1 for h in self.receiver.snapshot() if not self._verified(h))

    def duplicates(self) -> int:
        ids = Counter(h.headers.get("webhook-id", "") for h in self.receiver.snapshot())
        return sum(n - 1 for n in ids.values())

    def opened(self) -> dict[str, float]:
        """Breach device -> when its first verified ``alert.opened`` arrived."""
        out: dict[str, float] = {}
        for h in self.receiver.snapshot():
            doc = json.loads(h.body)
            if doc.get("type") == "alert.opened" and self._verified(h):
                out.setdefault(str(doc["data"]["scope"]["device"]), h.at_s)
        return out

    def _verified(self, h: hooks.Hook) -> bool:
        try:
            signing.verify(self.secret, h.headers, h.body, now_s=h.at_s)
        except WebhookVerificationError:
            return False
        return True


# -- the platform's processes and the shared services -----------------------------


class SharedServices:
    """Mosquitto, Kafka and PostgreSQL of ``deploy/local/services``: kill -9 by the
    pid in their files, shut down PostgreSQL with ``pg_ctl``, start with the script."""

    def __init__(self, services_dir: Path) -> None:
        self.dir = services_dir

    def pid(self, name: str) -> int:
        files = {"mosquitto": ("mosquitto/mosquitto.pid", "mosquitto"),
                 "kafka": ("kafka/kafka.pid", "kafka.Kafka"),
                 "postgres": ("postgres/data/postmaster.pid", "postgres")}  # fmt: skip
        rel, marker = files[name]
        path = self.dir / rel
        try:
            pid = int(path.read_text().split()[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError) as exc:
            raise DrillFailed(f"{name} is not running ({path}: {exc})") from exc
        if marker.encode() not in cmdline:
            raise DrillFailed(f"{name}: pid {pid} of {path} is not {marker}")
        return pid

    def kill9(self, name: str) -> str:
        """SIGKILL and wait until the process is gone (it is not our child)."""
        pid = self.pid(name)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while _alive(pid):
            if time.monotonic() > deadline:
                raise DrillFailed(f"{name} (pid {pid}) still alive 30 s after SIGKILL")
            time.sleep(0.05)
        return f"{name} pid {pid} killed"

    def pg_stop(self, mode: str) -> None:
        pg_ctl = "/usr/lib/postgresql/15/bin/pg_ctl"
        cmd = [pg_ctl, "-D", str(self.dir / "postgres" / "data"), "-m", mode]
        cmd += ["-w", "-t", "60", "stop"]
        if os.geteuid() == 0:  # the data directory belongs to postgres
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        _run(cmd)

    def restart(self, name: str) -> None:
        _run([str(SERVICES_SCRIPT), "restart", name])

    def healthy(self) -> tuple[bool, str]:
        done = subprocess.run(
            [str(SERVICES_SCRIPT), "status"],
            capture_output=True,
            text=True,
            check=False,
            env=os.environ | {"SMARTPARK_SERVICES_DIR": str(self.dir)},
        )
        return done.returncode == 0, done.stdout.strip()


def _alive(pid: int) -> bool:
    """Running and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _run(cmd: Sequence[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0:
        raise DrillFailed(
            f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.strip()[-500:]}"
        )


class DrillFailed(SmartparkError):
    """The drill could not run: a service did not start or a fault not apply."""


# -- one fault, measured ------------------------------------------------------------


@dataclass
class FaultResult:
    name: str
    injected_s: float
    recovered_s: float = 0.0  # the fault undone (the service answering again)
    settled_s: float = 0.0  # the wait for its backlog ended
    drained_s: float | None = None  # recovery -> every earlier ack stored
    ack_gap_s: float = 0.0  # longest silence between PUBACKs in the fault
    acks_resumed_s: float | None = None  # recovery -> first PUBACK after it
    breach: str = ""
    alert_s: float | None = None  # breach sent -> its alert row seen
    webhook_s: float | None = None  # breach sent -> its webhook received
    exits: dict[str, int] = field(default_factory=dict)
    evidence: str = ""  # what was killed or cut, and the new pid
    overdue: int = 0  # polls acknowledged and not stored within the drain limit
    api_ready_s: float | None = None  # the API restarted -> /ready 200 (api fault)
    rss_mib: dict[str, float] = field(default_factory=dict)  # peak RSS so far

    @property
    def held_s(self) -> float:
        return self.recovered_s - self.injected_s


@dataclass(frozen=True)
class EdgeLedger:
    """The real edge agent's outcome (:class:`bench.drill_procs.EdgeSite`)."""

    polls: int  # numbered in its outbox
    missing: list[tuple[str, int]]  # (device, seq) not in the database
    losses: dict[str, int]  # the outbox's drop/expire/refuse counters, if any
    pending: int  # rows still unacknowledged when it was stopped


@dataclass
class Outcome:
    options: Options
    faults: list[FaultResult]
    acked: int
    missing: list[tuple[str, int, str]]
    stored_unacked: int
    unacked: int
    not_queued: int
    sent: int
    duplicates: int
    late: int
    kafka_readings: int
    breaches: list[str]
    no_alert: list[str]
    no_webhook: list[str]
    bad_signatures: int
    webhook_duplicates: int
    exits: dict[str, int]
    healthy: bool
    status: str
    edge: EdgeLedger
    publisher_disconnects: int
    resends: tuple[int, int, int]  # lost connections, readings sent again, acked
    proxy: tuple[int, int]
    logs: Path
    elapsed_s: float

    @property
    def verdicts(self) -> list[tuple[str, bool, str]]:
        shown = ", ".join(f"{d}/{s}/{m}" for d, s, m in self.missing[:MISSING_SHOWN])
        undrained = [f.name for f in self.faults if f.drained_s is None]
        edge_shown = ", ".join(f"{d}/{q}" for d, q in self.edge.missing[:MISSING_SHOWN])
        return [
            (
                "every acknowledged reading is in the database",
                not self.missing,
                f"{self.acked:,} acknowledged, {len(self.missing):,} missing"
                + (f" (e.g. {shown})" if self.missing else ""),
            ),
            (
                "every injected breach produced its alert",
                not self.no_alert,
                f"{len(self.breaches) - len(self.no_alert)}/{len(self.breaches)}"
                + (f", none for {', '.join(self.no_alert)}" if self.no_alert else ""),
            ),
            (
                "every injected breach produced its signed webhook",
                not self.no_webhook and not self.bad_signatures,
                f"{len(self.breaches) - len(self.no_webhook)}/{len(self.breaches)}, "
                f"{self.bad_signatures} bad signatures"
                + (
                    f", none for {', '.join(self.no_webhook)}"
                    if self.no_webhook
                    else ""
                ),
            ),
            (
                "after each fault the backlog drained",
                not undrained,
                "all within the limit"
                if not undrained
                else f"not within {self.options.drain_limit_s:g} s: "
                + ", ".join(undrained),
            ),
            (
                "every poll the edge agent stored in its outbox is in the database",
                self.edge.polls > 0 and not self.edge.missing and not self.edge.losses,
                f"{self.edge.polls:,} polls, {len(self.edge.missing):,} missing"
                + (f" (e.g. {edge_shown})" if self.edge.missing else "")
                + (f", outbox gave up {self.edge.losses}" if self.edge.losses else "")
                + (f", {self.edge.pending} rows unsent" if self.edge.pending else ""),
            ),
            *(
                (
                    "the API answered /ready again after its restart",
                    f.api_ready_s is not None,
                    f"{_s(f.api_ready_s)} s",
                )
                for f in self.faults
                if f.name == "api"
            ),
            ("the local services are healthy at the end", self.healthy, ""),
        ]

    @property
    def ok(self) -> bool:
        return all(passed for _, passed, _ in self.verdicts)

    def _memory(self) -> list[str]:
        """Peak RSS of each process at the end of each fault: its bound while a
        downstream was away (VmHWM: since the process started; a process killed
        by the fault starts again from nothing)."""
        names = sorted({n for f in self.faults for n in f.rss_mib})
        if not names:
            return []
        rows = [
            "Peak RSS of each process (MiB, VmHWM since its start) when each fault "
            "had been undone and its backlog drained: what a process held while a "
            "downstream was away.",
            "",
            "| fault | " + " | ".join(names) + " |",
            "|---|" + "---:|" * len(names),
        ]
        for f in self.faults:
            cells = [f"{f.rss_mib[n]:.0f}" if n in f.rss_mib else "-" for n in names]
            rows.append(f"| {f.name} | " + " | ".join(cells) + " |")
        return [*rows, ""]

    def report(self) -> str:
        o, w = self.options, self.options.workload
        lines = [
            f"# Fault drill ({o.tier} tier)",
            "",
            f"Load: {w.enterprises} enterprises x {w.devices_per_enterprise} devices "
            f"x {w.metrics_per_device} metrics every {w.step_ms / 1000:g} s "
            f"({w.rate:,.0f} readings/s, {w.out_of_order:.0%} of polls held back "
            f"{w.ooo_delay_ms} ms), "
            + (
                "gateway messages (wire version 2, the load and the edge agent), "
                if w.gateway
                else "a message a device, "
            )
            + "QoS 1 through a TCP proxy; each fault held "
            f"{o.fault_s:g} s after {o.steady_s:g} s of steady load; drain limit "
            f"{o.drain_limit_s:g} s. Run took {self.elapsed_s:.0f} s.",
            "",
            "| fault | held s | PUBACKs stopped s | PUBACKs resumed s after "
            "| backlog drained s after | breach → alert s | breach → webhook s "
            "| service restarts |",
            "|---|---:|---:|---:|---:|---:|---:|---|",
        ]
        for f in self.faults:
            exits = ", ".join(f"{k} {v}" for k, v in f.exits.items()) or "-"
            lines.append(
                f"| {FAULT_TEXT[f.name]} | {f.held_s:.1f} | "
                f"{_s(f.ack_gap_s if f.ack_gap_s > ACK_GAP_S else None, '-')} | "
                f"{_s(f.acks_resumed_s, '-')} | {_s(f.drained_s)} | "
                f"{_s(f.alert_s)} | {_s(f.webhook_s)} | {exits} |"
            )
        lines += [
            "",
            "Times after are from the moment the fault was undone (the service "
            "answering again); PUBACKs stopped is the longest silence between "
            "acknowledgements from the fault's start (shown when over "
            f"{ACK_GAP_S:g} s); breach times are from the breach reading's send, "
            "right after the fault started, to the webhook's receipt and to the "
            "first poll of the alerts table that saw the alert (polled every 0.3 s "
            "or more: an upper bound). FAILED: never within the drain limit.",
            "",
            "What each fault did:",
            "",
            *(
                f"- {f.name}: {f.evidence}"
                + (f"; {f.overdue} polls not stored in time" if f.overdue else "")
                for f in self.faults
            ),
            "",
            *self._memory(),
            "## Ledger",
            "",
            f"- sent: {self.sent:,} readings; acknowledged (PUBACK): {self.acked:,}; "
            f"sent and never acknowledged: {self.unacked:,}; not sent (every "
            f"MQTT message id in use): {self.not_queued:,}",
            f"- acknowledged and not in the database: **{len(self.missing):,}**",
            f"- in the database without a PUBACK: {self.stored_unacked:,}",
            f"- in Kafka: {self.kafka_readings:,} readings, of which duplicates "
            f"{self.duplicates:,} (stored once), late arrivals {self.late:,}",
            f"- edge agent (real, {self.edge.polls:,} polls numbered in its outbox, "
            f"killed -9 by the edge fault): {len(self.edge.missing):,} polls not in "
            "the database",
            f"- webhooks: {len(self.breaches)} breaches, duplicate deliveries "
            f"{self.webhook_duplicates}, bad signatures {self.bad_signatures}",
            f"- sent again after a lost connection (acknowledged within "
            f"{o.resend_window_s:g} s before it, as an edge agent's outbox does): "
            f"{self.resends[1]:,} readings after {self.resends[0]} reconnects, "
            f"{self.resends[2]:,} of them acknowledged again",
            f"- publisher disconnects: {self.publisher_disconnects}; proxy "
            f"connections {self.proxy[0]}, refused during the cut {self.proxy[1]}",
            "- platform services that exited by themselves and were started again: "
            + (", ".join(f"{k} {v}" for k, v in self.exits.items()) or "none"),
            f"- service logs: {self.logs}",
            "",
            "## Verdicts",
            "",
        ]
        for what, passed, detail in self.verdicts:
            lines.append(
                f"- {'PASS' if passed else 'FAIL'}: {what}"
                + (f" ({detail})" if detail else "")
            )
        if not self.healthy:
            lines += ["", "```", self.status, "```"]
        lines += ["", f"RESULT: {'PASS' if self.ok else 'FAIL'}"]
        return "\n".join(lines) + "\n"


def _s(v: float | None, none: str = "FAILED") -> str:
    return none if v is None else f"{v:.1f}"


# -- the drill ------------------------------------------------------------------


class Drill:
    def __init__(self, o: Options) -> None:
        self.o = o
        self.uid = uuid.uuid4().hex[:8]
        self.schema = f"drill_{self.uid}"
        # the bench's settings: this run's topics, groups, schema, park, webhook key
        self.settings: Settings = e2e.run_settings(
            e2e.Options(o.workload, 0.0, 1, dsn=o.dsn, mqtt=o.mqtt, kafka=o.kafka),
            self.uid,
            self.schema,
        )
        self.park = e2e.park_of(self.settings)
        self.logs = Path(tempfile.mkdtemp(prefix=f"smartpark-drill-{self.uid}-"))
        self.shared = SharedServices(o.services_dir)
        self.webhooks = Webhooks()
        self.services: dict[str, Service] = {}
        self.edge: EdgeSite | None = None
        self.api: Api | None = None
        self.breach_sent: dict[str, float] = {}
        self.say: Callable[[str], None] = lambda line: print(line, flush=True)

    def _env(self) -> dict[str, str]:
        # A delivery that failed (the database was down) is retried within
        # seconds, not on the production schedule of minutes to days.
        return service_env(self.settings) | {
            "SMARTPARK_NOTIFIER__POLL_MS": "100",
            "SMARTPARK_NOTIFIER__SCHEDULE_MS": json.dumps([0, *[500] * 20]),
            "SMARTPARK_NOTIFIER__TIMEOUT_S": "3",
            "SMARTPARK_NOTIFIER__CONNECT_TIMEOUT_S": "1",
        }

    async def run(self) -> Outcome:
        """The whole drill (module doc); cleans up even when it fails."""
        started = time.time()
        async with await psycopg.AsyncConnection.connect(
            self.o.dsn, autocommit=True
        ) as c:
            await c.execute(
                sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(self.schema))
            )
        self.webhooks.receiver.start()
        publisher: Publisher | None = None
        try:
            async with TcpProxy(self.o.mqtt) as proxy:
                publisher = Publisher(
                    self.o.workload, self.park, proxy.address, self.o.resend_window_s
                )
                return await self._drill(proxy, publisher, started)
        finally:
            if publisher is not None:
                publisher.close()
            for svc in self.services.values():
                svc.stop()
            self.webhooks.receiver.close()
            with contextlib.suppress(OSError, psycopg.Error, KafkaError):
                await e2e.clean_up(self.settings, self.o.dsn)

    async def _prepare(self, edge_network: tuple[str, int]) -> None:
        s = self.settings
        box = SecretBox.from_settings(s.webhooks)
        async with Storage(s.database, webhook_keys=box) as storage:
            await storage.migrate()
            self.webhooks.secret = signing.generate_secret()
            await storage.webhooks.create_subscription(
                Subscription("drill", self.park, None, self.webhooks.url,
                             ("alert.opened",)),
                self.webhooks.secret,
            )  # fmt: skip
        await ensure_topics(s.kafka)
        pack = self.logs / "pack.yaml"
        pack.write_text(hooks.PACK)
        env = os.environ | self._env()
        commands = {
            "bridge": ["bridge", "--stats-every", "5"],
            "sink": ["sink", "--stats-every", "5"],
            "rules": ["rules", "run", "--pack", str(pack), "--stats-every", "5"],
            "notifier": ["notifier", "--stats-every", "5"],
        }
        for name, args in commands.items():
            self.services[name] = Service(name, args, env, self.logs / f"{name}.log")
            self.services[name].start()
        self.api = Api(env, self.logs)
        self.services["api"] = self.api.service
        self.api.service.start()
        self.edge = EdgeSite(
            self.park, edge_network, env, self.logs, gateway=self.o.gateway
        )
        self.services["simulator"] = self.edge.sim
        self.services["edge"] = await asyncio.to_thread(self.edge.start)
        if await asyncio.to_thread(self.api.ready_after, 60.0) is None:
            raise DrillFailed(f"the API was not ready in 60 s (log {self.logs})")

    async def _drill(
        self, proxy: TcpProxy, publisher: Publisher, started: float
    ) -> Outcome:
        o = self.o
        await self._prepare(proxy.address)
        await _until(
            lambda: self.services["bridge"].logged("MQTT subscribed"),
            60,
            "the bridge's MQTT subscription",
        )
        publisher.connect()
        watcher = StoreWatcher(o, self.schema, self.park, publisher.ledger)
        watching = asyncio.create_task(watcher.run())
        supervising = asyncio.create_task(self._supervise())
        try:
            # the whole path, rules and webhooks included, before the load starts
            publisher.breach("breach-warmup")
            self.breach_sent["breach-warmup"] = time.time()
            await _until(
                lambda: "breach-warmup" in self.webhooks.opened(),
                120,
                "the warm-up breach's webhook (bridge, Kafka, rules, notifier)",
            )
            self.say(f"drill {o.tier}: park {self.park}, logs {self.logs}")
            # long enough for every fault's slowest case (a restart within 90 s)
            phase = o.steady_s + o.fault_s + 90 + o.drain_limit_s
            await asyncio.to_thread(
                publisher.plan, o.steady_s + len(o.faults) * phase + 60
            )
            publisher.start_load(round(time.time() + 1.0, 3))
            results = []
            for name in o.faults:
                await asyncio.sleep(o.steady_s)
                results.append(await self._fault(name, proxy, publisher, watcher))
            await asyncio.sleep(o.steady_s)
            publisher.stop_load()
            await _until(
                lambda: publisher.ledger.unacked_readings == 0, 30, "the last PUBACKs",
                fail=False,
            )  # fmt: skip
            end = time.time()
            self.say("load stopped; waiting for the last readings")
            await _until(
                lambda: watcher.drained(end), o.drain_limit_s, "drain", fail=False
            )
            await _until(self._breaches_done, o.drain_limit_s, "alerts", fail=False)
            edge = await self._edge_settled()
        finally:
            watcher.stop()
            supervising.cancel()
            await asyncio.gather(watching, supervising, return_exceptions=True)
        return await self._judge(
            results,
            publisher=publisher,
            watcher=watcher,
            proxy=proxy,
            edge=edge,
            started=started,
        )

    async def _edge_settled(self) -> EdgeLedger:
        """Stop the edge agent once its outbox has nothing left to send, then wait
        for every poll it numbered to be stored (each up to the drain limit)."""
        assert self.edge is not None
        edge, limit = self.edge, self.o.drain_limit_s
        await _until(
            lambda: edge.pending() == 0, limit, "the edge outbox", fail=False
        )  # fmt: skip
        await asyncio.to_thread(self.services["edge"].stop)
        deadline = time.time() + limit
        while True:
            polls, missing = await edge.missing(self.o.dsn, self.schema)
            if not missing or time.time() > deadline:
                return EdgeLedger(polls, missing, edge.losses(), edge.pending())
            await asyncio.sleep(0.5)

    def _breaches_done(self) -> bool:
        opened = self.webhooks.opened()
        return all(d in opened for d in self.breach_sent)

    async def _supervise(self) -> None:
        """Start again a platform service that exited by itself (restart policy)."""
        while True:
            await asyncio.sleep(1.0)
            for svc in self.services.values():
                if (
                    svc.proc is not None
                    and not svc.held
                    and svc.proc.poll() is not None
                ):
                    svc.exits.append(svc.proc.returncode)
                    self.say(
                        f"  {svc.name} exited ({svc.proc.returncode}): started again"
                    )
                    svc.start()

    async def _fault(
        self, name: str, proxy: TcpProxy, publisher: Publisher, watcher: StoreWatcher
    ) -> FaultResult:
        o = self.o
        exits_before = {k: len(s.exits) for k, s in self.services.items()}
        breach = f"breach-{len(self.breach_sent)}-{name}"
        result = FaultResult(name, time.time(), breach=breach)
        self.say(f"fault {name}: {FAULT_TEXT[name]}")
        done = await asyncio.to_thread(self._inject, name, proxy)
        publisher.breach(result.breach)
        self.breach_sent[result.breach] = sent = time.time()
        await asyncio.sleep(o.fault_s)
        undone = await asyncio.to_thread(self._recover, name, proxy)
        result.evidence = f"{done}; {undone}"
        result.recovered_s = recovered = time.time()
        deadline = recovered + o.drain_limit_s
        while time.time() < deadline:
            watcher.check()
            if (
                watcher.drained(recovered)
                and result.breach in watcher.alert_at
                and result.breach in self.webhooks.opened()
            ):
                break
            await asyncio.sleep(0.2)
        if name == "api":
            assert self.api is not None
            result.api_ready_s = await asyncio.to_thread(
                self.api.ready_after, o.drain_limit_s
            )
        result.settled_s = time.time()
        result.rss_mib = {
            n: kib / 1024
            for n, svc in self.services.items()
            if svc.proc is not None
            and svc.proc.poll() is None
            and (kib := peak_rss_kib(svc.pid))
        }
        with contextlib.suppress(KeyError):
            result.alert_s = watcher.alert_at[result.breach] - sent
        with contextlib.suppress(KeyError):
            result.webhook_s = self.webhooks.opened()[result.breach] - sent
        if watcher.drained(recovered):
            result.drained_s = _drained_at(watcher, publisher.ledger, recovered)
        else:
            result.overdue = watcher.give_up(recovered)
        gap, resumed = _ack_gap(publisher.ledger, result.injected_s, result.settled_s)
        result.ack_gap_s = gap
        if gap > ACK_GAP_S:
            result.acks_resumed_s = resumed - recovered
        result.exits = {
            k: len(s.exits) - exits_before[k]
            for k, s in self.services.items()
            if len(s.exits) > exits_before[k]
        }
        self.say(
            f"  {result.evidence}; held {result.held_s:.1f} s; "
            f"drained {_s(result.drained_s)} s after; "
            f"alert {_s(result.alert_s)} s, webhook {_s(result.webhook_s)} s "
            "after the breach"
        )
        return result

    def _inject(self, name: str, proxy: TcpProxy) -> str:
        """Apply the fault; what was done, checked (for the report)."""
        if name == "mosquitto-backlog":
            # the broker queues for the bridge's session, then dies mid-interval
            killed = self.services["bridge"].kill()
            time.sleep(self.o.fault_s / 2)
            return f"{killed}; {self.shared.kill9('mosquitto')}"
        if name in PROCESS_FAULTS:
            return self.services[name].kill()
        if name in ("mosquitto", "kafka"):
            return self.shared.kill9(name)
        if name in ("postgres", "dbdown"):
            pid = self.shared.pid("postgres")
            mode = "immediate" if name == "postgres" else "fast"
            self.shared.pg_stop(mode)
            if _alive(pid):
                raise DrillFailed(f"postgres pid {pid} alive after pg_ctl stop")
            return f"postgres pid {pid} stopped -m {mode}"
        proxy.cut()
        return f"proxy cut (connections {proxy.connections})"

    def _recover(self, name: str, proxy: TcpProxy) -> str:
        """Undo the fault; the new process's pid, for the report."""
        if name == "mosquitto-backlog":
            self.shared.restart("mosquitto")
            self.services["bridge"].start()
            return (
                f"new pid {self.shared.pid('mosquitto')}, "
                f"bridge new pid {self.services['bridge'].pid}"
            )
        if name in PROCESS_FAULTS:
            self.services[name].start()
            return f"new pid {self.services[name].pid}"
        if name in ("mosquitto", "kafka", "postgres", "dbdown"):
            service = "postgres" if name == "dbdown" else name
            self.shared.restart(service)
            return f"new pid {self.shared.pid(service)}"
        proxy.restore()
        return f"proxy restored (refused {proxy.refused} during the cut)"

    async def _judge(
        self,
        faults: list[FaultResult],
        *,
        publisher: Publisher,
        watcher: StoreWatcher,
        proxy: TcpProxy,
        edge: EdgeLedger,
        started: float,
    ) -> Outcome:
        ledger = publisher.ledger
        stored = await self._stored()
        expected: set[tuple[str, int, str]] = set()
        with ledger.lock:
            acked = list(ledger.acked)
        for _, sent in acked:
            expected.update((d, s, m) for d, s in sent.keys for m in sent.metrics)
        missing = sorted(expected - stored)
        duplicates, late, in_kafka = await self._kafka(ledger.planned_late)
        opened = self.webhooks.opened()
        alerts = watcher.alert_at
        healthy, status = self.shared.healthy()
        return Outcome(
            options=self.o,
            faults=faults,
            acked=len(expected),
            missing=missing,
            stored_unacked=len(stored - expected),
            unacked=ledger.unacked_readings,
            not_queued=ledger.not_queued,
            sent=ledger.sent_readings,
            duplicates=duplicates,
            late=late,
            kafka_readings=in_kafka,
            breaches=sorted(self.breach_sent),
            no_alert=sorted(d for d in self.breach_sent if d not in alerts),
            no_webhook=sorted(d for d in self.breach_sent if d not in opened),
            bad_signatures=self.webhooks.bad_signatures(),
            webhook_duplicates=self.webhooks.duplicates(),
            exits={k: len(s.exits) for k, s in self.services.items() if s.exits},
            healthy=healthy,
            status=status,
            edge=edge,
            publisher_disconnects=publisher.disconnects,
            resends=(ledger.resends, ledger.resent_readings, ledger.resent_acked),
            proxy=(proxy.connections, proxy.refused),
            logs=self.logs,
            elapsed_s=time.time() - started,
        )

    async def _stored(self) -> set[tuple[str, int, str]]:
        """The readings of the load's publisher in the database (the edge agent's
        enterprise has a ledger of its own)."""
        assert self.edge is not None
        async with await psycopg.AsyncConnection.connect(
            self.o.dsn, autocommit=True, options=f"-c search_path={self.schema}"
        ) as conn:
            cur = await conn.execute(
                "SELECT s.device, t.seq, s.metric FROM telemetry t"
                " JOIN series s ON s.id = t.series_id"
                " WHERE s.park = %s AND s.enterprise <> %s",
                (self.park, self.edge.enterprise),
            )
            return {(d, int(s), m) for d, s, m in await cur.fetchall()}

    async def _kafka(self, planned_late: set[Key]) -> tuple[int, int, int]:
        """(duplicates, late arrivals, readings) in the telemetry topic."""
        k = self.settings.kafka
        consumer = AIOKafkaConsumer(
            bootstrap_servers=k.bootstrap, enable_auto_commit=False
        )
        await consumer.start()
        seen: Counter[tuple[str, int, str]] = Counter()
        late = 0
        try:
            parts = [TopicPartition(k.telemetry_topic, p) for p in range(k.partitions)]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            ends = await consumer.end_offsets(parts)
            newest: dict[str, int] = {}
            for tp in parts:
                while await consumer.position(tp) < ends[tp]:
                    got = await consumer.getmany(tp, timeout_ms=1000)
                    for rec in got.get(tp, []):
                        value = rec.value or b""
                        d = wire.decode_message(value, now_ms=2**62)
                        for b in d.batches:
                            for r in b.readings:
                                key = (b.device, r.seq, r.metric)
                                seen[key] += 1
                                top = newest.get(b.device, 0)
                                if seen[key] == 1 and r.seq < top:
                                    late += (b.device, r.seq) not in planned_late
                                newest[b.device] = max(top, r.seq)
        finally:
            await consumer.stop()
        return sum(n - 1 for n in seen.values()), late, sum(seen.values())


def _drained_at(watcher: StoreWatcher, ledger: Ledger, recovered: float) -> float:
    """Seconds from ``recovered`` until the last poll acknowledged by then was
    stored (0 when all were stored before it)."""
    with ledger.lock:
        acked = [sent for at, sent in ledger.acked if at <= recovered]
    last = max(
        (watcher.complete_at.get(k, 0.0) for sent in acked for k in sent.keys),
        default=0.0,
    )
    return max(0.0, last - recovered)


def _ack_gap(ledger: Ledger, start: float, end: float) -> tuple[float, float]:
    """The longest silence between PUBACKs in ``[start, end]`` and when it ended."""
    with ledger.lock:
        times = sorted(at for at, _ in ledger.acked if start <= at <= end)
    gap, resumed, prev = 0.0, start, start
    for at in times:
        if at - prev > gap:
            gap, resumed = at - prev, at
        prev = at
    return gap, resumed


async def _until(
    check: Callable[[], bool], within_s: float, what: str, *, fail: bool = True
) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            if fail:
                raise DrillFailed(f"timed out after {within_s:g} s waiting for {what}")
            return False
        await asyncio.sleep(0.2)
    return True


# -- the command ----------------------------------------------------------------


def options(args: argparse.Namespace) -> Options:
    tier = TIERS[args.tier]
    faults = tuple(f for f in args.faults.split(",") if f) or tier.faults
    known = FAULTS
    unknown = sorted(set(faults) - set(known))
    if unknown:
        raise UsageError(
            f"--faults: unknown {', '.join(unknown)} (known: {', '.join(known)})"
        )
    host, _, port = args.mqtt.rpartition(":")
    report = args.report
    if report is None and args.tier == "full":
        report = ROOT / "docs" / "drills.md"
    return Options(
        tier=args.tier,
        faults=faults,
        workload=replace(PRESETS[args.preset], gateway=args.gateway),
        fault_s=args.fault_seconds if args.fault_seconds else tier.fault_s,
        steady_s=tier.steady_s,
        drain_limit_s=args.drain_limit if args.drain_limit else tier.drain_limit_s,
        dsn=args.dsn,
        mqtt=(host, int(port)),
        kafka=args.kafka,
        services_dir=Path(
            os.environ.get("SMARTPARK_SERVICES_DIR", str(ROOT / ".services"))
        ),
        report=report,
        resend_window_s=args.resend_window,
        gateway=args.gateway,
    )


def parser() -> argparse.ArgumentParser:
    env = os.environ.get
    p = argparse.ArgumentParser(
        prog="smartpark drill",
        description="Fault drills under a steady load, with a ledger (see "
        "bench/drill.py). Needs the local services (deploy/local/services up); "
        "restarts Mosquitto, Kafka and PostgreSQL: run nothing else meanwhile.",
    )
    p.add_argument("--tier", choices=sorted(TIERS), default="short")
    p.add_argument(
        "--faults",
        default="",
        help=f"comma-separated, of {','.join(FAULTS)} (default: the tier's)",
    )
    p.add_argument(
        "--fault-seconds", type=float, default=0.0, metavar="S",
        help="how long each fault is held (default: the tier's)",
    )  # fmt: skip
    p.add_argument(
        "--drain-limit", type=float, default=0.0, metavar="S",
        help="longest wait for a fault's backlog (default: the tier's)",
    )  # fmt: skip
    p.add_argument(
        "--resend-window", type=float, default=RESEND_WINDOW_S, metavar="S",
        help="after a lost connection the load's publisher sends again what was "
        "acknowledged this long before it, as an edge agent does "
        f"(publish.resend_window_s; default {RESEND_WINDOW_S:g}; 0: off)",
    )  # fmt: skip
    p.add_argument("--preset", choices=sorted(PRESETS), default="pilot")
    p.add_argument(
        "--gateway", action="store_true",
        help="the load and the edge agent send gateway messages (wire schema "
        "version 2), one an enterprise and step, as agents with publish.gateway do",
    )  # fmt: skip
    p.add_argument("--report", type=Path, default=None, metavar="PATH")
    p.add_argument(
        "--dsn",
        default=env(
            "SMARTPARK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/smartpark"
        ),
    )
    p.add_argument("--mqtt", default=env("SMARTPARK_TEST_MQTT", "127.0.0.1:18830"))
    p.add_argument("--kafka", default=env("SMARTPARK_TEST_KAFKA", "127.0.0.1:19092"))
    return p


@command("drill")
def main(argv: list[str] | None = None) -> int:
    o = options(parser().parse_args(argv))
    interrupt_on_terminate()
    try:
        outcome = asyncio.run(Drill(o).run())
    except KeyboardInterrupt:  # Ctrl-C or kill: the run's clean-up has run
        print("interrupted; the run's clean-up ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, psycopg.Error, KafkaError, subprocess.SubprocessError) as exc:
        raise DrillFailed(
            f"{type(exc).__name__}: {exc} (are the local services up? "
            "deploy/local/services up)"
        ) from exc
    text = outcome.report()
    print(text)
    if o.report is not None:
        o.report.parent.mkdir(parents=True, exist_ok=True)
        o.report.write_text(text)
    return EXIT_OK if outcome.ok else EXIT_FAILED
