"""A recording MQTT subscriber and the checks the edge tests make with it.

What an edge agent published, as the broker delivered it: complete (every seq of
every device), in order per device, each poll with all its metrics.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from types import TracebackType

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.config import AgentConfig
from smartpark import wire


class Recorder:
    """A real MQTT subscriber that records every message it receives, in order.

    ``persistent`` uses a persistent session, so the broker queues messages for it
    while it reconnects after an outage; ``tls`` connects over TLS. ``client_id``
    (default: a fresh one): a second Recorder with the same id and ``persistent``
    takes over the first one's session and receives what the broker queued for it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        topic: str,
        *,
        persistent: bool,
        tls: ssl.SSLContext | None = None,
        client_id: str | None = None,
    ) -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"recorder-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 1)
        if tls is not None:
            self._client.tls_set_context(tls)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def __enter__(self) -> Recorder:
        self._client.connect(self._host, self._port, keepalive=10)
        self._client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, c: mqtt.Client, u: object, f: object, rc: object, p: object
    ) -> None:
        c.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, c: mqtt.Client, u: object, mid: int, rc: object, p: object
    ) -> None:
        self._subscribed.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((msg.topic, bytes(msg.payload)))

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._messages)

    def decoded(self) -> list[tuple[str, wire.Decoded]]:
        """The telemetry messages received, read by the platform's own decoder
        (either wire version), with their topics."""
        now_ms = int(time.time() * 1000)
        return [
            (topic, wire.decode_message(payload, now_ms=now_ms))
            for topic, payload in self.messages()
            if topic.endswith("/telemetry")
        ]

    def batches(self) -> list[wire.TelemetryBatch]:
        """Each device's part of every telemetry message, in arrival order."""
        return [b for _, message in self.decoded() for b in message.batches]

    def statuses(self, device: str) -> list[wire.DeviceStatus]:
        out = []
        for topic, payload in self.messages():
            if topic.endswith(f"/{device}/status"):
                doc = json.loads(payload)
                out.append(
                    wire.DeviceStatus(doc["online"], doc["ts_ms"], doc["reason"])
                )
        return out


async def until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def first_seen_seqs(batches: list[wire.TelemetryBatch]) -> dict[str, list[int]]:
    """Per device, each seq in the order it first arrived (re-deliveries ignored)."""
    seen: dict[str, list[int]] = defaultdict(list)
    done: set[tuple[str, int]] = set()
    for b in batches:
        for r in b.readings:
            if (b.device, r.seq) not in done:
                done.add((b.device, r.seq))
                seen[b.device].append(r.seq)
    return seen


def delivered_through(rec: Recorder, last: dict[str, int]) -> bool:
    """Every sequence number 1..n of each device was received (a gap keeps this
    False, so a wait on it fails rather than passing with a reading missing)."""
    seen = first_seen_seqs(rec.batches())
    return all(set(range(1, n + 1)) <= set(seen.get(d, ())) for d, n in last.items())


def assert_complete_and_ordered(
    batches: list[wire.TelemetryBatch],
    last: dict[str, int],
    metrics: dict[str, set[str]],
) -> None:
    seen = first_seen_seqs(batches)
    for device, n in last.items():
        assert seen[device] == list(range(1, n + 1)), f"{device}: gap or reorder"
    per_poll: dict[tuple[str, int], set[str]] = defaultdict(set)
    for b in batches:
        for r in b.readings:
            per_poll[(b.device, r.seq)].add(r.metric)
    for (device, seq), got in per_poll.items():
        assert got == metrics[device], f"{device} seq {seq} is incomplete"


def metrics_of(cfg: AgentConfig) -> dict[str, set[str]]:
    return {d.id: {r.metric for r in d.registers} for d in cfg.devices}


def fast_reconnect(cfg: AgentConfig) -> AgentConfig:
    broker = cfg.broker.model_copy(update={"reconnect_min_s": 1, "reconnect_max_s": 1})
    return cfg.model_copy(update={"broker": broker})
