"""One bad message never holds up the park: oversized and malformed messages amid a
steady stream from several enterprises, and a record Kafka itself refuses.

The first test runs on a private Mosquitto without a packet limit, so the 2 MB
messages reach the bridge as they would behind a broker that lets them through;
the shared broker of ``deploy/local/services`` refuses them at the door (last test).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from ingest.bridge import Bridge
from smartpark.clock import system_ms
from smartpark.settings import Settings
from smartpark.wire import Reading, TelemetryBatch, encode_batch, telemetry_topic
from stream.kafka import (
    DLQ_KEEP_BYTES,
    DLQ_ORIGINAL_BYTES,
    DLQ_REASON,
    DLQ_SHA256,
    DLQ_TRUNCATED,
)
from tests.support.clients import consume_until, publish_all, wait_for
from tests.support.mosquitto import TestBroker
from tests.support.pipeline import running_platform
from tests.support.settings import platform_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DEVICES = [(f"ent-{e}", f"ent-{e}-m{d}") for e in range(3) for d in range(2)]
ROUNDS = 60
EVERY_S = 0.1


def batch(park: str, ent: str, dev: str, seq: int, n: int = 2) -> bytes:
    """One poll's readings; with ``n`` > 2, a large poll (its own seq per reading)."""
    now = system_ms()
    readings = [Reading(seq, "active_energy", 100.0 + seq, "kWh", now)]
    readings += [
        Reading(seq if n == 2 else seq * 1000 + i, "active_power", float(i), "kW", now)
        for i in range(n - 1)
    ]
    return encode_batch(TelemetryBatch(park, ent, dev, tuple(readings)))


def bad_messages(park: str) -> dict[int, tuple[str, bytes]]:
    """At which round which bad message goes out, and on which topic."""
    t = [telemetry_topic(park, e, d) for e, d in DEVICES]
    huge_json = json.dumps({"v": 1, "park": park, "pad": "x" * 2_000_000}).encode()
    unknown = batch(park, *DEVICES[3], 999).replace(b"active_power", b"active_powr")
    return {
        5: (t[0], os.urandom(2 * 1024 * 1024)),  # 2 MB of noise
        15: (t[2], huge_json),  # 2 MB of JSON
        25: (t[4], b"[" * (300 * 1024)),  # 300 KiB, over the bridge's limit
        35: (t[1], b"{"),
        45: (t[3], unknown),
    }


class Publisher(threading.Thread):
    """Sends a batch per device every 0.1 s, the bad ones in between, and records
    when each valid batch was acknowledged by the broker."""

    def __init__(self, port: int, park: str) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.park = park
        self.sent: dict[tuple[str, int], float] = {}
        self.bad = bad_messages(park)
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _run(self) -> None:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
        client.connect("127.0.0.1", self.port)
        client.loop_start()
        bad = self.bad
        try:
            for seq in range(1, ROUNDS + 1):
                started = time.monotonic()
                infos = []
                for ent, dev in DEVICES:
                    topic = telemetry_topic(self.park, ent, dev)
                    infos.append(
                        (
                            dev,
                            client.publish(
                                topic, batch(self.park, ent, dev, seq), qos=1
                            ),
                        )
                    )
                if seq in bad:
                    infos.append(("", client.publish(*bad[seq], qos=1)))
                for dev, info in infos:
                    info.wait_for_publish(timeout=30)
                    if dev:
                        self.sent[(dev, seq)] = time.monotonic()
                time.sleep(max(0.0, EVERY_S - (time.monotonic() - started)))
        finally:
            client.disconnect()
            client.loop_stop()


async def test_oversized_and_malformed_messages_never_hold_up_the_park(
    private_broker: TestBroker,
    kafka_bootstrap: str,
    topic_prefix: str,
    park_id: str,
    pg_dsn: str,
    db_schema: str,
) -> None:
    settings = platform_settings(
        ("127.0.0.1", private_broker.port), kafka_bootstrap, topic_prefix, park_id,
        pg_dsn=pg_dsn, db_schema=db_schema,
    )  # fmt: skip
    expected = {(dev, seq) for _, dev in DEVICES for seq in range(1, ROUNDS + 1)}
    seen: dict[tuple[str, int], float] = {}
    async with running_platform(settings) as (storage, bridge, _sink):
        publisher = Publisher(private_broker.port, park_id)
        publisher.start()
        deadline = time.monotonic() + 120
        while len(seen) < len(expected) and time.monotonic() < deadline:
            for key in await storage.telemetry.reading_keys(park=park_id):
                seen.setdefault((key.device, key.seq), time.monotonic())
            await asyncio.sleep(0.2)
        publisher.join(timeout=30)
        stats = bridge.stats
    assert publisher.error is None, publisher.error
    assert set(seen) == expected, f"{len(expected - set(seen))} batches not stored"
    lags = [seen[k] - publisher.sent[k] for k in expected]
    # Stored within seconds of the broker's acknowledgement, the bad ones
    # notwithstanding (the poll of the database adds up to 0.2 s).
    assert max(lags) < 10.0, sorted(lags)[-5:]
    bad = publisher.bad
    assert stats.dead_letters == len(bad)
    letters = await consume_until(
        kafka_bootstrap, settings.kafka.deadletter_topic, lambda r: len(r) >= len(bad)
    )
    await asyncio.sleep(1)  # nothing more arrives: each bad message once
    letters = await consume_until(
        kafka_bootstrap, settings.kafka.deadletter_topic, lambda r: False, timeout_s=3
    )
    assert len(letters) == len(bad)
    by_digest = {dict(r.headers)[DLQ_SHA256].decode(): r for r in letters}
    for _, payload in bad.values():
        letter = by_digest[hashlib.sha256(payload).hexdigest()]
        headers = dict(letter.headers)
        assert int(headers[DLQ_ORIGINAL_BYTES]) == len(payload)
        assert letter.value == payload[:DLQ_KEEP_BYTES]
        assert (DLQ_TRUNCATED in headers) == (len(payload) > DLQ_KEEP_BYTES)
    reasons = sorted(dict(r.headers)[DLQ_REASON].decode() for r in letters)
    assert sum("bridge.max_payload_bytes" in r for r in reasons) == 3, reasons


async def _create_topic(bootstrap: str, name: str, config: dict[str, str]) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1, topic_configs=config)])
    finally:
        await admin.close()


async def test_a_record_kafka_refuses_becomes_a_dead_letter(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    settings: Settings = platform_settings(
        mqtt_addr, kafka_bootstrap, topic_prefix, park_id
    )
    # A telemetry topic whose records may not exceed 20 kB: Kafka accepts the
    # record for sending and the broker refuses it.
    await _create_topic(
        kafka_bootstrap, settings.kafka.telemetry_topic, {"max.message.bytes": "20000"}
    )
    ent, dev = DEVICES[0]
    topic = telemetry_topic(park_id, ent, dev)
    small1 = batch(park_id, ent, dev, 1)
    big = batch(park_id, ent, dev, 2, n=400)
    small2 = batch(park_id, ent, dev, 3)
    assert 20_000 < len(big) < settings.bridge.max_payload_bytes
    async with Bridge(settings) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        for n, payload in enumerate((small1, big, small2), 1):
            await asyncio.to_thread(publish_all, *mqtt_addr, [(topic, payload)])

            def acked(n: int = n) -> bool:
                return bridge.stats.acked == n

            await wait_for(acked, timeout_s=60, what=f"ack {n}")
        bridge.stop()
        await task
    assert (bridge.stats.refused_by_kafka, bridge.stats.dead_letters) == (1, 1)
    good = await consume_until(
        kafka_bootstrap, settings.kafka.telemetry_topic, lambda r: len(r) >= 2
    )
    assert [r.value for r in good] == [small1, small2]
    [letter] = await consume_until(
        kafka_bootstrap, settings.kafka.deadletter_topic, lambda r: len(r) >= 1
    )
    headers: dict[str, Any] = dict(letter.headers)
    assert headers[DLQ_REASON].decode().startswith("Kafka refused the record:")
    assert letter.value == big
    assert headers[DLQ_SHA256] == hashlib.sha256(big).hexdigest().encode()


def test_the_local_broker_refuses_a_2_mb_message_at_the_door(
    mqtt_addr: tuple[str, int], park_id: str
) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    gone = threading.Event()
    client.on_disconnect = lambda *_: gone.set()
    client.connect(*mqtt_addr)
    client.loop_start()
    try:
        topic = telemetry_topic(park_id, "ent-0", "m1")
        info = client.publish(topic, b"x" * (2 * 1024 * 1024), qos=1)
        assert gone.wait(10), "the broker kept a client that sent 2 MB"
        assert not info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()
    # and the broker still serves everyone else
    publish_all(*mqtt_addr, [(telemetry_topic(park_id, "ent-0", "m1"), b"{}")])
