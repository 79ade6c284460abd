"""Gateway messages (``publish.gateway``) end to end, on the real services.

Simulated Modbus meters → EdgeAgent sending wire schema version 2 (several devices
a message, on the agent's own topic) → Mosquitto → bridge → Kafka → sink →
PostgreSQL. Every (device, seq, metric) the agent polled is stored exactly once,
with far fewer MQTT messages than polls; a broker killed mid-stream, with
messages in flight and acknowledged ones it never saved, loses nothing; and a
broker whose ACL refuses the gateway topic holds every device's readings back in
the outbox until it accepts them, then gets them all, in order per device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from simulators.park import SimulatedPark
from smartpark import wire
from smartpark.settings import Settings
from tests.support.acl import (
    NOT_AUTHORIZED,
    AclBroker,
    acl,
    agent_config,
)
from tests.support.mosquitto import TestBroker
from tests.support.pipeline import (
    assert_exactly_once,
    expected_keys,
    read_outboxes,
    running_platform,
    wait_stored,
)
from tests.support.recorder import (
    Recorder,
    assert_complete_and_ordered,
    delivered_through,
    fast_reconnect,
    metrics_of,
    until,
)
from tests.support.settings import platform_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_S = 0.2


def gateway_on(cfg: AgentConfig, **publish: Any) -> AgentConfig:
    update = cfg.publish.model_copy(update={"gateway": True, **publish})
    return cfg.model_copy(update={"publish": update})


async def test_a_gateway_agent_stores_every_reading_once_in_few_messages(
    mqtt_addr: tuple[str, int], park_id: str, platform: Settings, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    async with (
        running_platform(platform) as (storage, bridge, sink),
        SimulatedPark(
            seed=21, park=park_id, enterprises=1, devices_per_enterprise=4, port_base=0
        ) as park,
    ):
        cfg = gateway_on(park.agent_configs(host, port, tmp_path, POLL_S)[0])
        devices = [d.id for d in cfg.devices]
        topic = f"sp/v1/{park_id}/+/+/telemetry"
        with Recorder(host, port, topic, persistent=False) as rec:
            async with EdgeAgent(cfg) as agent:
                await until(
                    lambda: (
                        min(d.last_seq for d in agent.stats().devices.values()) >= 20
                    ),
                    20,
                    "20 polls of every device",
                )
            final = agent.stats()
            await until(
                lambda: len(rec.decoded()) == final.publisher.published_messages,
                10,
                "every message at the raw subscriber",
            )
            messages = rec.decoded()
        after = read_outboxes([cfg])
        expected = expected_keys([cfg], after)
        stored = await wait_stored(storage, park_id, expected, timeout_s=60)

    polls = sum(after.last_seq[d] for d in devices)
    pub = final.publisher
    assert after.pending_rows == 0
    assert_exactly_once(stored, expected)
    assert bridge.stats.dead_letters == 0
    assert sink.stats.dead_letters == 0
    # every message a version 2 one, on the agent's own topic, from the agent
    gateway_topic = wire.telemetry_topic(park_id, cfg.site.enterprise, cfg.agent_id)
    assert {t for t, _ in messages} == {gateway_topic}
    assert {(m.version, m.sender) for _, m in messages} == {(2, cfg.agent_id)}
    # batched: several devices a message, far fewer messages than polls
    assert pub.published_messages == pub.acked_messages == len(messages)
    assert pub.published_messages * 4 <= polls, (pub.published_messages, polls)
    assert max(len(m.batches) for _, m in messages) == len(devices)
    assert all(m.readings <= cfg.publish.max_readings_per_message for _, m in messages)
    # no reading sent twice in normal operation
    assert pub.published_readings == pub.acked_readings == len(expected)
    assert sum(m.readings for _, m in messages) == len(expected)


async def test_a_broker_killed_mid_stream_loses_nothing_with_gateway_messages(
    kafka_bootstrap: str,
    pg_dsn: str,
    db_schema: str,
    topic_prefix: str,
    park_id: str,
    tmp_path: Path,
) -> None:
    """The crash pattern of ``test_edge_broker_crash`` with gateway messages, through
    the real bridge, Kafka and sink: the broker is frozen (messages in flight, which
    paho re-sends), then SIGKILLed, losing what it had acknowledged since its last
    save (the resend window sends that again); the bridge is offline meanwhile, so
    the broker holds everything for its session."""
    broker = TestBroker(tmp_path / "broker", persistence=True, autosave_interval_s=3600)
    with broker:
        settings = platform_settings(
            ("127.0.0.1", broker.port),
            kafka_bootstrap,
            topic_prefix,
            park_id,
            pg_dsn=pg_dsn,
            db_schema=db_schema,
        )
        async with running_platform(settings):
            pass  # the bridge's persistent session exists; now it is offline ...
        broker.stop()  # ... and the session is on disk (SIGTERM saves)
        broker.start()
        async with SimulatedPark(
            seed=22, park=park_id, enterprises=1, devices_per_enterprise=3, port_base=0
        ) as park:
            cfg = gateway_on(
                fast_reconnect(
                    park.agent_configs("127.0.0.1", broker.port, tmp_path, POLL_S)[0]
                ),
                gateway_linger_s=0.3,
                resend_window_s=120.0,
                # the backlog after the restart is cut into messages mid-device
                max_readings_per_message=16,
            )
            devices = [d.id for d in cfg.devices]
            async with EdgeAgent(cfg) as agent:

                def seqs() -> dict[str, int]:
                    return {d: agent.stats().devices[d].last_seq for d in devices}

                await until(
                    lambda: agent.stats().publisher.acked_messages >= 5,
                    15,
                    "messages acknowledged by the broker",
                )
                broker.pause()
                await until(
                    lambda: agent.stats().publisher.in_flight >= 2, 10, "in flight"
                )
                broker.kill()  # acknowledged since the start, and in flight: gone
                at_kill = agent.stats()
                polled_at_kill = seqs()
                await until(lambda: not agent.stats().broker_connected, 10, "loss")
                broker.start()
                await until(lambda: agent.stats().broker_connected, 15, "reconnect")
                await until(
                    lambda: all(n >= polled_at_kill[d] + 10 for d, n in seqs().items()),
                    15,
                    "polls after the restart",
                )
                await until(lambda: agent.stats().outbox.rows == 0, 15, "backlog")
            final = agent.stats()
        after = read_outboxes([cfg])
        expected = expected_keys([cfg], after)
        # the bridge back online: the broker hands over what it holds for it
        async with running_platform(settings) as (storage, bridge, sink):
            stored = await wait_stored(storage, park_id, expected, timeout_s=60)
            dead_letters = bridge.stats.dead_letters + sink.stats.dead_letters

    assert at_kill.publisher.acked_readings > 0
    assert at_kill.publisher.in_flight >= 2
    assert (final.publisher.connects, final.publisher.disconnects) == (2, 1)
    assert final.outbox.dropped_rows == final.outbox.expired_rows == 0
    # what the broker had acknowledged before the kill was queued again
    assert final.publisher.resends == 1
    assert final.publisher.resent_readings >= at_kill.publisher.acked_readings
    assert after.pending_rows == 0
    assert_exactly_once(stored, expected)
    assert dead_letters == 0


async def test_a_refused_gateway_topic_holds_every_device_until_accepted(
    tmp_path: Path,
) -> None:
    """The ACL grants one device's topic, not the agent's: every gateway message is
    refused (0x87), so all devices wait in the outbox; fixed, all arrive in order."""
    async with SimulatedPark(
        seed=23, park="gwdeny", enterprises=1, devices_per_enterprise=3, port_base=0
    ) as park:
        enterprise = park.enterprises[0]
        ids = [d.device.device_id for d in park.devices]
        broker = AclBroker(tmp_path / "broker", acl("gwdeny", enterprise, ids[0]))
        with broker:
            cfg = gateway_on(
                agent_config(park, broker.port, tmp_path, protocol="5"),
                gateway_linger_s=0.2,
                max_readings_per_message=16,
            )
            gateway_topic = wire.telemetry_topic("gwdeny", enterprise, cfg.agent_id)
            with Recorder(
                "127.0.0.1", broker.port, "sp/v1/gwdeny/+/+/telemetry", persistent=False
            ) as rec:
                async with EdgeAgent(cfg) as agent:

                    def seqs() -> dict[str, int]:
                        return {d: agent.stats().devices[d].last_seq for d in ids}

                    def refused() -> int:
                        return sum(agent.stats().publisher.refused_messages.values())

                    await until(lambda: refused() >= 3, 10, "refused retries")
                    await until(lambda: min(seqs().values()) >= 10, 10, "10 polls")
                    during = agent.stats()
                    kept = agent.outbox.pending(100_000)
                    heard_during = len(rec.decoded())
                    broker.set_acl(acl("gwdeny", enterprise, "+"))
                    broker.reload()
                    await until(
                        lambda: not agent.stats().publisher.refusing, 10, "accepted"
                    )
                    fixed = seqs()
                    await until(
                        lambda: delivered_through(rec, fixed), 10, "the backlog"
                    )
                final = agent.stats()
                last = {d: final.devices[d].last_seq for d in ids}
                await until(lambda: delivered_through(rec, last), 5, "everything")
                batches = rec.batches()

    # while refused: nothing got through, every device's readings stayed
    assert heard_during == 0
    assert {(r.device, r.seq) for r in kept} >= {
        (d, s) for d in ids for s in range(1, 10)
    }
    pub = during.publisher
    assert set(pub.refused_messages) == {NOT_AUTHORIZED}
    assert [(r.topic, r.reason) for r in pub.refusing] == [
        (gateway_topic, NOT_AUTHORIZED)
    ]
    # accepted: the backlog complete, in order per device, the outbox empty
    assert final.outbox.rows == 0
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
