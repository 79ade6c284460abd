"""The MQTT → Kafka bridge against the real Mosquitto and Kafka."""

from __future__ import annotations

import asyncio
import json

import pytest

from ingest.bridge import Bridge
from smartpark.clock import system_ms
from smartpark.settings import Settings
from smartpark.wire import Reading, TelemetryBatch, encode_batch, telemetry_topic
from stream.kafka import DLQ_REASON, DLQ_SOURCE
from tests.support.clients import consume_until, publish_all, wait_for
from tests.support.settings import platform_settings

pytestmark = pytest.mark.integration


def batch(park: str, ent: str, dev: str, seq: int) -> TelemetryBatch:
    now = system_ms()
    return TelemetryBatch(
        park,
        ent,
        dev,
        (
            Reading(seq, "active_energy", 100.0 + seq, "kWh", now),
            Reading(seq, "active_power", 5.0, "kW", now),
        ),
    )


async def test_valid_batches_reach_kafka_keyed_by_enterprise_in_order(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    devices = [("ent-a", "m1"), ("ent-a", "m2"), ("ent-b", "m1")]
    sent = [
        (telemetry_topic(park_id, e, d), encode_batch(batch(park_id, e, d, seq)))
        for seq in range(1, 41)
        for e, d in devices
    ]
    async with Bridge(settings) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        await asyncio.to_thread(publish_all, *mqtt_addr, sent)
        await wait_for(
            lambda: bridge.stats.acked == len(sent), timeout_s=60, what="all acked"
        )
        bridge.stop()
        await task
    records = await consume_until(
        kafka_bootstrap, settings.kafka.telemetry_topic, lambda r: len(r) >= len(sent)
    )
    assert sorted(r.value for r in records) == sorted(p for _, p in sent)
    partitions: dict[bytes, set[int]] = {}
    seqs: dict[tuple[str, str], list[int]] = {}
    for r in sorted(records, key=lambda r: (r.partition, r.offset)):
        assert r.key is not None
        doc = json.loads(r.value)
        assert r.key.decode() == doc["enterprise"]
        partitions.setdefault(r.key, set()).add(r.partition)
        seqs.setdefault((doc["enterprise"], doc["device"]), []).append(
            doc["readings"][0]["seq"]
        )
    assert all(len(p) == 1 for p in partitions.values()), partitions
    assert all(s == list(range(1, 41)) for s in seqs.values()), seqs
    assert bridge.stats.dead_letters == 0


async def test_invalid_payloads_go_to_dead_letters_and_do_not_block(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    topic = telemetry_topic(park_id, "ent-a", "m1")
    good1 = encode_batch(batch(park_id, "ent-a", "m1", 1))
    good2 = encode_batch(batch(park_id, "ent-a", "m1", 2))
    wrong_device = encode_batch(batch(park_id, "ent-a", "m9", 3))
    future = json.loads(good1)
    future["readings"][0]["ts_ms"] += 3_600_000
    bad = [
        (topic, b"\x00garbage"),
        (topic, good1.replace(b"active_power", b"active_powr")),
        (topic, good1.replace(b'"unit":"kW"', b'"unit":"MW"')),
        (topic, json.dumps(future).encode()),
        (topic, good1.replace(b'"v":1', b'"v":7')),
        (topic, wrong_device),
    ]
    messages = [(topic, good1), *bad, (topic, good2)]
    async with Bridge(settings) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        await asyncio.to_thread(publish_all, *mqtt_addr, messages)
        await wait_for(
            lambda: bridge.stats.acked == len(messages), timeout_s=60, what="acks"
        )
        bridge.stop()
        await task
    assert bridge.stats.dead_letters == len(bad)
    good = await consume_until(
        kafka_bootstrap, settings.kafka.telemetry_topic, lambda r: len(r) >= 2
    )
    assert [r.value for r in good] == [good1, good2]
    dead = await consume_until(
        kafka_bootstrap, settings.kafka.deadletter_topic, lambda r: len(r) >= len(bad)
    )
    assert [r.value for r in dead] == [p for _, p in bad]
    reasons = [dict(r.headers)[DLQ_REASON].decode() for r in dead]
    expected = [
        "not JSON",
        "readings[1].metric: unknown metric 'active_powr'",
        "readings[1].unit: active_power is in 'kW', got 'MW'",
        "readings[0].ts_ms:",
        "v: unsupported schema version 7",
        "device: payload is for",
    ]
    for reason, want in zip(reasons, expected, strict=True):
        assert want in reason
    assert all(dict(r.headers)[DLQ_SOURCE] == f"mqtt:{topic}".encode() for r in dead)


async def test_a_bridge_joining_a_share_group_drops_its_unshared_subscription(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    """The persistent session of a bridge that ran unshared keeps that
    subscription. Once it (same client id) and a second bridge share the
    telemetry, Mosquitto would give it every message through the old subscription
    while the group gives half of them to the other: measured, 30 records for 20
    messages."""
    alone = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)

    def member(client_id: str) -> Settings:
        mqtt = alone.mqtt.model_copy(
            update={"share_group": "bridges", "client_id": client_id}
        )
        return alone.model_copy(update={"mqtt": mqtt})

    async with Bridge(alone) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        bridge.stop()
        await task
    topic = telemetry_topic(park_id, "ent-a", "m1")
    sent = [
        (topic, encode_batch(batch(park_id, "ent-a", "m1", s))) for s in range(1, 21)
    ]
    async with (
        Bridge(member(alone.mqtt.client_id)) as a,
        Bridge(member(f"{alone.mqtt.client_id}-b")) as b,
    ):
        tasks = [asyncio.create_task(x.run()) for x in (a, b)]
        await wait_for(
            lambda: a.stats.subscribed and b.stats.subscribed, timeout_s=20,
            what="MQTT",
        )  # fmt: skip
        await asyncio.to_thread(publish_all, *mqtt_addr, sent)
        await wait_for(
            lambda: a.stats.acked + b.stats.acked >= len(sent), timeout_s=60,
            what="all acked",
        )  # fmt: skip
        await asyncio.sleep(1.0)  # copies would have come by now
        a.stop()
        b.stop()
        await asyncio.gather(*tasks)
    assert (a.stats.acked + b.stats.acked, min(a.stats.acked, b.stats.acked) > 0) == (
        len(sent),
        True,
    )
