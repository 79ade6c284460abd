"""Bridge throughput against a raw MQTT subscriber and the Kafka producer alone.

    smartpark bench bridge [--messages 20000]

One run, on fresh Kafka topics and a fresh park id (hence MQTT topics and sessions),
against the local services:

1. ``smartpark bridge`` is started once as a process, so its persistent session
   (``clean_session=False``) and subscription exist at the broker; a warm-up message
   goes through to Kafka; the bridge is stopped. A raw subscriber's persistent
   session is made the same way.
2. ``--messages`` device polls of the city load (:mod:`bench.load`, five readings a
   message, JSON wire batches) are published once at QoS 1. The broker queues a
   copy for each of the two sessions (``max_queued_messages`` of the local
   Mosquitto is 1 000 000).
3. **raw subscriber**: a paho client reconnects to its session and only counts
   the messages (paho acknowledges each on receipt): what the broker delivers to
   one QoS 1 session of Python, the bridge's ceiling on this machine.
4. **bridge**: ``smartpark bridge`` is started on its backlog; the telemetry
   topic's end offsets are sampled until every message is in Kafka. It validates
   each message, produces it with ``acks=all`` and acknowledges it to the broker
   only once Kafka has it.
5. **producer alone**: the same payloads, keyed by enterprise, produced by the
   platform's producer settings (:func:`stream.kafka.make_producer`) from this
   process, as fast as it takes them.

Rates are messages per second over the drain (:func:`bench.figures.drain_rate`);
readings per second are five times that. The bridge's peak RSS is read before it
stops. Topics and both MQTT sessions are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bench.drain import drop_topics, end_offsets, produce_all, watch_end_offsets
from bench.e2e import park_of
from bench.figures import (
    Figure,
    Memory,
    Progress,
    ServiceProcess,
    drain_rate,
    service_env,
)
from bench.load import PRESETS, Workload, encode, schedule
from smartpark.settings import KafkaSettings, MqttSettings, Settings
from smartpark.wire import Reading, TelemetryBatch, encode_batch, telemetry_topic
from stream.kafka import ensure_topics


@dataclass(frozen=True)
class Options:
    messages: int = 20_000
    mqtt: tuple[str, int] = ("127.0.0.1", 18830)
    kafka: str = "127.0.0.1:19092"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class Result:
    messages: int
    readings_per_message: int
    publish_s: float
    raw: Progress
    bridge: Progress
    producer_s: float
    memory: list[Memory]

    @property
    def ok(self) -> bool:
        """Both drains finished (a run that did not raises instead)."""
        return self.bridge.complete and self.raw.complete

    @property
    def bridge_rate(self) -> float:
        return drain_rate(self.bridge)

    @property
    def raw_rate(self) -> float:
        return drain_rate(self.raw)

    @property
    def producer_rate(self) -> float:
        return self.messages / self.producer_s if self.producer_s else math.nan

    def figures(self) -> list[Figure]:
        return [
            Figure(
                "bridge (MQTT -> Kafka, acks=all)",
                self.bridge_rate,
                "messages/s",
                "raw MQTT subscriber, only counts",
                self.raw_rate,
            ),
            Figure(
                "bridge (MQTT -> Kafka, acks=all)",
                self.bridge_rate,
                "messages/s",
                "Kafka producer alone, same records",
                self.producer_rate,
            ),
        ]

    def report(self) -> str:
        lines = [
            f"bench bridge: {self.messages:,} messages of the city load "
            f"({self.readings_per_message} readings each), queued at the broker "
            f"in {self.publish_s:.1f} s, drained by each consumer in turn",
            *(f.line() for f in self.figures()),
            f"  bridge {self.bridge_rate * self.readings_per_message:,.0f} readings/s",
            *(m.line() for m in self.memory),
        ]
        return "\n".join(lines)


def _settings(o: Options, uid: str) -> Settings:
    park = f"bbench{uid}"
    return Settings(
        mqtt=MqttSettings(
            host=o.mqtt[0],
            port=o.mqtt[1],
            client_id=f"bridge-{park}",
            subscription=f"sp/v1/{park}/+/+/telemetry",
        ),
        kafka=KafkaSettings(bootstrap=o.kafka, topic_prefix=f"bbench{uid}."),
    )


def backlog(w: Workload, park: str, n: int, t0_ms: int) -> list[tuple[str, bytes]]:
    """The first ``n`` messages of ``w``'s schedule as (topic, payload)."""
    per_s = w.devices * 1000 / w.step_ms / w.batch_polls
    duration_ms = math.ceil((n + w.devices) / per_s * 1000)
    messages = schedule(w, duration_ms)[:n]
    return [encode(w, park, m, t0_ms) for m in messages]


class _Client:
    """A paho client at QoS 1 in its own network thread."""

    def __init__(self, s: Settings, client_id: str, *, clean: bool) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean,
            protocol=mqtt.MQTTv311,
        )
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        self.connected = threading.Event()
        self.client.on_connect = lambda *_: self.connected.set()
        self.client.connect(s.mqtt.host, s.mqtt.port, keepalive=60)
        self.client.loop_start()
        if not self.connected.wait(20):
            raise RuntimeError(f"MQTT client {client_id}: no CONNACK in 20 s")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publish(s: Settings, messages: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1 and wait for every PUBACK; seconds taken."""
    acked = threading.Semaphore(0)
    pub = _Client(s, f"{s.mqtt.client_id}-load", clean=True)
    pub.client.on_publish = lambda *_: acked.release()
    start = time.perf_counter()
    try:
        for topic, payload in messages:
            pub.client.publish(topic, payload, qos=1)
        for _ in messages:
            if not acked.acquire(timeout=60):
                raise RuntimeError("the broker stopped acknowledging the backlog")
        return time.perf_counter() - start
    finally:
        pub.close()


class RawSubscriber:
    """Counts the messages of its persistent session, with their arrival times."""

    def __init__(self, s: Settings, total: int) -> None:
        self.s = s
        self.client_id = f"{s.mqtt.client_id}-raw"
        self.progress = Progress("raw MQTT subscriber", total)
        self._count = 0
        self._start = 0.0
        self._done = threading.Event()

    def subscribe_session(self) -> None:
        """Create the persistent session and its subscription, then leave."""
        subscribed = threading.Event()
        c = _Client(self.s, self.client_id, clean=False)
        c.client.on_subscribe = lambda *_: subscribed.set()
        c.client.subscribe(self.s.mqtt.subscription, qos=1)
        if not subscribed.wait(20):
            raise RuntimeError("the raw subscriber's SUBACK did not come in 20 s")
        c.close()

    def _on_message(self, *_: Any) -> None:
        self._count += 1
        if self._count % 500 == 0 or self._count >= self.progress.total:
            self.progress.add(time.perf_counter() - self._start, self._count)
        if self._count >= self.progress.total:
            self._done.set()

    def drain(self, timeout_s: float) -> None:
        self._start = time.perf_counter()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        c.on_message = self._on_message
        c.connect(self.s.mqtt.host, self.s.mqtt.port, keepalive=60)
        c.loop_start()
        try:
            if not self._done.wait(timeout_s):
                raise RuntimeError(
                    f"raw subscriber: {self._count} of {self.progress.total}"
                    f" messages after {timeout_s:.0f} s"
                )
        finally:
            c.disconnect()
            c.loop_stop()


def forget_sessions(s: Settings, client_ids: list[str]) -> None:
    """Remove persistent MQTT sessions (a clean-session connect discards them)."""
    for cid in client_ids:
        _Client(s, cid, clean=True).close()


async def run(o: Options) -> Result:
    """One run (see the module doc); cleans up even when it fails."""
    uid = uuid.uuid4().hex[:8]
    s = _settings(o, uid)
    logs = Path(tempfile.mkdtemp(prefix=f"smartpark-bench-bridge-{uid}-"))
    env = service_env(s)
    # The producer alone writes to topics of its own, created like the platform's.
    alone = KafkaSettings(bootstrap=o.kafka, topic_prefix=f"{s.kafka.topic_prefix}a.")
    raw = RawSubscriber(s, o.messages)
    memory: list[Memory] = []
    try:
        await ensure_topics(s.kafka)
        topic = s.kafka.telemetry_topic
        bridge = ServiceProcess(["bridge", "--stats-every", "5"], env, logs / "b.log")
        bridge.start()
        try:
            await _warm_up(s, topic, bridge)
        finally:
            memory.append(bridge.stop())
        base = await end_offsets(o.kafka, topic)
        raw.subscribe_session()
        w = PRESETS["city"]
        messages = backlog(w, park_of(s), o.messages, round(time.time() * 1000))
        publish_s = await asyncio.to_thread(publish, s, messages)
        await asyncio.to_thread(raw.drain, o.timeout_s)
        progress = Progress("bridge", o.messages)
        bridge = ServiceProcess(["bridge", "--stats-every", "5"], env, logs / "b.log")
        bridge.start()
        try:
            await watch_end_offsets(
                o.kafka, topic, progress, base=base, proc=bridge, timeout_s=o.timeout_s
            )
        finally:
            memory[0] = bridge.stop()
        records = [(t.split("/")[3].encode(), p) for t, p in messages]
        await ensure_topics(alone)
        producer_s = await produce_all(
            alone, alone.telemetry_topic, records, warm_up=True
        )
        return Result(
            o.messages,
            w.metrics_per_device * w.batch_polls,
            publish_s,
            raw.progress,
            progress,
            producer_s,
            memory,
        )
    finally:
        await drop_topics(
            o.kafka,
            [
                t
                for k in (s.kafka, alone)
                for t in (k.telemetry_topic, k.status_topic, k.alerts_topic,
                          k.deadletter_topic)
            ],
        )  # fmt: skip
        await asyncio.to_thread(forget_sessions, s, [s.mqtt.client_id, raw.client_id])


async def _warm_up(s: Settings, topic: str, bridge: ServiceProcess) -> None:
    """Publish a reading a second until one is in Kafka: the bridge's session and
    subscription exist at the broker from then on."""
    pub = _Client(s, f"{s.mqtt.client_id}-warmup", clean=True)
    try:
        for seq in range(1, 61):
            batch = TelemetryBatch(
                park_of(s),
                "e-warmup",
                "warmup",
                (Reading(seq, "active_power", 1.0, "kW", round(time.time() * 1000)),),
            )
            pub.client.publish(
                telemetry_topic(park_of(s), "e-warmup", "warmup"),
                encode_batch(batch),
                qos=1,
            )
            await asyncio.sleep(1)
            bridge.check_running()
            if await end_offsets(s.kafka.bootstrap, topic) > 0:
                return
    finally:
        pub.close()
    raise RuntimeError("no warm-up message reached Kafka through the bridge in 60 s")


def options(args: argparse.Namespace) -> Options:
    host, _, port = args.mqtt.rpartition(":")
    return Options(args.messages, (host, int(port)), args.kafka)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--messages`` (the endpoints are added by :mod:`bench.cli`)."""
    parser.add_argument("--messages", type=int, default=Options.messages)
