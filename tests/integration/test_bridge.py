"""The MQTT → Kafka bridge against the real Mosquitto and Kafka."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ingest.bridge import Bridge
from smartpark.clock import system_ms
from smartpark.settings import Settings
from smartpark.wire import (
    GatewayBatch,
    Reading,
    TelemetryBatch,
    encode_batch,
    encode_gateway,
    telemetry_topic,
)
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


async def bridge_all(
    settings: Settings, mqtt_addr: tuple[str, int], messages: list[tuple[str, bytes]]
) -> Bridge:
    """Run a bridge, publish ``messages`` and stop it once it acknowledged them all."""
    async with Bridge(settings) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        await asyncio.to_thread(publish_all, *mqtt_addr, messages)
        await wait_for(
            lambda: bridge.stats.acked == len(messages), timeout_s=60, what="all acked"
        )
        bridge.stop()
        await task
    return bridge


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
    bridge = await bridge_all(settings, mqtt_addr, sent)
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
    bridge = await bridge_all(settings, mqtt_addr, messages)
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
        "device: payload is from",
    ]
    for reason, want in zip(reasons, expected, strict=True):
        assert want in reason
    assert all(dict(r.headers)[DLQ_SOURCE] == f"mqtt:{topic}".encode() for r in dead)


async def test_gateway_messages_pass_on_their_agent_topic_only(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    """A gateway message (wire version 2) goes to Kafka unchanged, keyed by its
    enterprise, from the topic of the agent it names; from another agent's topic,
    or of another enterprise, it is a dead letter that says why."""
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    devices = tuple(batch(park_id, "ent-a", f"m{i}", 1) for i in range(3))
    good = encode_gateway(GatewayBatch(park_id, "ent-a", "agent.a1", devices))
    messages = [
        (telemetry_topic(park_id, "ent-a", "agent.a1"), good),
        (telemetry_topic(park_id, "ent-a", "agent.a2"), good),
        (telemetry_topic(park_id, "ent-b", "agent.a1"), good),
    ]
    bridge = await bridge_all(settings, mqtt_addr, messages)
    (record,) = await consume_until(
        kafka_bootstrap, settings.kafka.telemetry_topic, lambda r: len(r) >= 1
    )
    assert (record.key, record.value) == (b"ent-a", good)
    dead = await consume_until(
        kafka_bootstrap, settings.kafka.deadletter_topic, lambda r: len(r) >= 2
    )
    reasons = sorted(dict(r.headers)[DLQ_REASON].decode() for r in dead)
    assert all(r.startswith("gateway: payload is from") for r in reasons), reasons
    assert bridge.stats.dead_letters == 2


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


def _session_client(
    mqtt_addr: tuple[str, int], client_id: str, *, seen: list[bytes]
) -> mqtt.Client:
    """A client resuming the persistent session ``client_id``: it collects what the
    broker delivers and acknowledges nothing, nor reconnects if pushed out."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        clean_session=False,
        protocol=mqtt.MQTTv311,
        manual_ack=True,
        reconnect_on_failure=False,
    )
    connected = threading.Event()
    client.on_connect = lambda *_: connected.set()
    client.on_message = lambda _c, _u, msg: seen.append(bytes(msg.payload))
    client.connect(*mqtt_addr)
    client.loop_start()
    if not connected.wait(10):
        raise AssertionError(f"no CONNACK for {client_id} in 10 s")
    return client


def _unacknowledged(mqtt_addr: tuple[str, int], client_id: str) -> list[bytes]:
    """What the broker still holds for session ``client_id``: it delivers the
    session's unacknowledged messages again as soon as the session is resumed."""
    seen: list[bytes] = []
    client = _session_client(mqtt_addr, client_id, seen=seen)
    time.sleep(2.0)
    client.disconnect()
    client.loop_stop()
    return seen


def _hold(predicate: Callable[[], bool], *, timeout_s: float, what: str) -> None:
    """Wait without giving the event loop a turn (paho's thread goes on)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


async def test_a_burst_reaches_kafka_in_order_and_is_all_acknowledged(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    """Paho's thread hands messages over in batches: a burst published while the
    bridge runs arrives whole and in order, every message is acknowledged (none
    waits for a wake-up that never comes), and the broker keeps nothing back."""
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    topic = telemetry_topic(park_id, "ent-a", "m1")
    sent = [
        (topic, encode_batch(batch(park_id, "ent-a", "m1", s))) for s in range(3000)
    ]
    bridge = await bridge_all(settings, mqtt_addr, sent)
    records = await consume_until(
        kafka_bootstrap, settings.kafka.telemetry_topic, lambda r: len(r) >= len(sent)
    )
    assert [r.value for r in records] == [p for _, p in sent]
    assert bridge.stats.received == len(sent)
    assert bridge.stats.redelivery_expected == 0
    assert bridge.stats.handoffs < bridge.stats.received  # batched, not one by one
    unacknowledged = await asyncio.to_thread(
        _unacknowledged, mqtt_addr, settings.mqtt.client_id
    )
    assert unacknowledged == []


def _deliver_twice_on_a_held_loop(
    bridge: Bridge,
    mqtt_addr: tuple[str, int],
    settings: Settings,
    sent: list[tuple[str, bytes]],
) -> None:
    """Publish ``sent``, let paho's thread receive it, then make the broker drop
    the bridge's connection and wait for paho to reconnect and receive it again;
    the caller's event loop gets no turn meanwhile."""
    publish_all(*mqtt_addr, sent)
    time.sleep(1.0)  # paho's thread receives them (fewer than the in-flight window)
    # Resuming the bridge's session elsewhere makes the broker drop the bridge's
    # connection; paho reconnects after its 1 s delay and is given the
    # unacknowledged messages again.
    intruder = _session_client(mqtt_addr, settings.mqtt.client_id, seen=[])
    intruder.disconnect()
    intruder.loop_stop()
    _hold(lambda: not bridge.stats.connected, timeout_s=10, what="disconnect")
    _hold(lambda: bridge.stats.connected, timeout_s=20, what="reconnect")
    time.sleep(1.0)  # and receives the messages again


async def test_messages_of_a_lost_connection_are_not_acknowledged_on_the_next(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, topic_prefix: str, park_id: str
) -> None:
    """Messages are stamped with their connection in paho's thread. Here they are
    received, the connection is lost and the next one receives them again, all
    before the event loop gets a turn to forward any: the first copies go to Kafka
    but are not acknowledged (their message ids belonged to the lost connection),
    the second copies are. Stamped when the loop took them, all would count as the
    new connection's."""
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    topic = telemetry_topic(park_id, "ent-a", "m1")
    sent = [
        (topic, encode_batch(batch(park_id, "ent-a", "m1", s))) for s in range(1, 21)
    ]
    async with Bridge(settings) as bridge:
        task = asyncio.create_task(bridge.run())
        await wait_for(lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT")
        # Called, not awaited: the event loop is held until it returns.
        _deliver_twice_on_a_held_loop(bridge, mqtt_addr, settings, sent)
        await wait_for(
            lambda: (
                bridge.stats.acked + bridge.stats.redelivery_expected >= 2 * len(sent)
            ),
            timeout_s=60,
            what="both copies settled",
        )
        bridge.stop()
        await task
    s = bridge.stats
    n = len(sent)
    assert (s.received, s.acked, s.redelivery_expected) == (2 * n, n, n)
    records = await consume_until(
        kafka_bootstrap,
        settings.kafka.telemetry_topic,
        lambda r: len(r) >= 2 * len(sent),
    )
    assert [r.value for r in records] == [p for _, p in sent] * 2
    unacknowledged = await asyncio.to_thread(
        _unacknowledged, mqtt_addr, settings.mqtt.client_id
    )
    assert unacknowledged == []
