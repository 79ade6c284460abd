"""A broker that refuses the agent's publishes (ACL), on a real Mosquitto 2.0.

The agent logs in as a gateway account whose ACL grants the telemetry of one of its
two devices only. With MQTT 5 the PUBACK of the other device's messages says Not
authorized (0x87): its rows stay in the outbox, the refusals are counted, /healthz
is 503, the granted device keeps flowing, and once the ACL is fixed (file rewritten,
SIGHUP) the backlog arrives complete and in order. With MQTT 3.1.1 the same refusal
is invisible to the agent: the documented limit, shown here so that it stays true.
The recorder is anonymous and may read everything (the ACL file's first section).
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest

from demo.embedded import EmbeddedMqttBroker
from edge_agent.agent import EdgeAgent
from edge_agent.cli import probe_broker
from edge_agent.publisher import V311_HINT
from simulators.park import SimulatedPark
from tests.support.acl import (
    NOT_AUTHORIZED,
    POLL_S,
    RETRY_MAX_S,
    RETRY_MIN_S,
    USER,
    AclBroker,
    acl,
    agent_config,
    get,
)
from tests.support.recorder import (
    Recorder,
    assert_complete_and_ordered,
    delivered_through,
    first_seen_seqs,
    metrics_of,
    until,
)

pytestmark = pytest.mark.integration


async def test_refused_rows_stay_are_counted_and_arrive_once_the_acl_is_fixed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="edge_agent.publisher")
    async with SimulatedPark(
        seed=3, park="deny", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        enterprise = park.enterprises[0]
        ids = [d.device.device_id for d in park.devices]
        granted, denied = ids
        denied_topic = f"sp/v1/deny/{enterprise}/{denied}/telemetry"
        broker = AclBroker(tmp_path / "broker", acl("deny", enterprise, granted))
        with broker:
            cfg = agent_config(park, broker.port, tmp_path, protocol="5")
            with Recorder(
                "127.0.0.1", broker.port, "sp/v1/deny/#", persistent=False
            ) as rec:
                async with EdgeAgent(cfg) as agent:

                    def seqs() -> dict[str, int]:
                        return {d: agent.stats().devices[d].last_seq for d in ids}

                    def refused() -> int:
                        return sum(agent.stats().publisher.refused_messages.values())

                    started = time.monotonic()
                    await until(lambda: refused() >= 3, 10, "refused retries")
                    await until(lambda: seqs()[denied] >= 15, 10, "15 denied polls")
                    at = seqs()
                    await until(
                        lambda: delivered_through(rec, {granted: at[granted]}),
                        5,
                        "the granted device's readings",
                    )
                    during = agent.stats()
                    elapsed = time.monotonic() - started
                    kept = agent.outbox.pending(10_000, device=denied, after_id=0)
                    url = f"http://127.0.0.1:{agent.status_port}"
                    health_during = await asyncio.to_thread(get, f"{url}/healthz")
                    metrics_during = (await asyncio.to_thread(get, f"{url}/metrics"))[1]
                    heard_during = {b.device for b in rec.batches()}

                    broker.set_acl(acl("deny", enterprise, "+"))
                    broker.reload()
                    await until(
                        lambda: not agent.stats().publisher.refusing, 10, "accepted"
                    )
                    fixed = seqs()
                    await until(
                        lambda: delivered_through(rec, fixed), 10, "the backlog"
                    )
                    health_after = await asyncio.to_thread(get, f"{url}/healthz")
                final = agent.stats()
                last = {d: final.devices[d].last_seq for d in ids}
                await until(lambda: delivered_through(rec, last), 5, "everything")
                batches = rec.batches()
        broker_log = broker.log()

    # While denied: every reading of the denied device is still in the outbox ...
    assert {r.seq for r in kept} >= set(range(1, at[denied] + 1))
    assert denied not in heard_during
    # ... the granted device kept flowing in order meanwhile ...
    assert first_seen_seqs(batches)[granted][: at[granted]] == list(
        range(1, at[granted] + 1)
    )
    # ... the refusals are counted by reason, retried with a backoff, not in a loop
    pub = during.publisher
    assert set(pub.refused_messages) == {NOT_AUTHORIZED}
    assert 3 <= pub.refused_messages[NOT_AUTHORIZED] <= elapsed / RETRY_MIN_S + 2
    assert pub.refused_readings > 0
    assert [(r.topic, r.reason) for r in pub.refusing] == [
        (denied_topic, NOT_AUTHORIZED)
    ]
    assert health_during == (
        503,
        f"the broker refuses {denied_topic}: {NOT_AUTHORIZED}\n",
    )
    assert (
        'smartpark_edge_broker_refused_messages_total{agent="agent.edge-deny-'
        f'{enterprise}",reason="{NOT_AUTHORIZED}"}}'
    ) in metrics_during
    assert "Denied PUBLISH" in broker_log
    # After the fix: healthy, the backlog delivered complete and in order, the
    # outbox empty at the end, and each change logged once.
    assert health_after == (200, "ok\n")
    assert final.outbox.rows == 0
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
    messages = [r.getMessage() for r in caplog.records]
    assert (
        sum(m.startswith(f"the broker refuses {denied_topic}") for m in messages) == 1
    )
    assert (
        sum(m.startswith(f"the broker accepts {denied_topic}") for m in messages) == 1
    )


async def test_a_refused_status_is_retried_until_the_broker_takes_it(
    tmp_path: Path,
) -> None:
    async with SimulatedPark(
        seed=7, park="stat", enterprises=1, devices_per_enterprise=1, port_base=0
    ) as park:
        enterprise = park.enterprises[0]
        (device,) = (d.device.device_id for d in park.devices)
        site = f"sp/v1/stat/{enterprise}"
        # The device's status and telemetry are granted, the agent's status is not.
        narrow = (
            f"topic read sp/v1/#\nuser {USER}\ntopic write {site}/{device}/status\n"
            f"topic write {site}/+/telemetry\ntopic read sp/v1/clock\n"
        )
        broker = AclBroker(tmp_path / "broker", narrow)
        with broker:
            cfg = agent_config(park, broker.port, tmp_path, protocol="5")
            agent_topic = f"{site}/{cfg.agent_id}/status"
            with Recorder(
                "127.0.0.1", broker.port, f"{site}/+/status", persistent=False
            ) as rec:
                async with EdgeAgent(cfg) as agent:

                    def refused() -> int:
                        return sum(agent.stats().publisher.refused_messages.values())

                    await until(lambda: refused() >= 3, 10, "refused retries")
                    during = agent.stats()
                    heard_during = len(rec.statuses(cfg.agent_id))
                    broker.set_acl(acl("stat", enterprise, "+"))
                    broker.reload()
                    await until(
                        lambda: not agent.stats().publisher.refusing, 10, "accepted"
                    )
                    await until(
                        lambda: bool(rec.statuses(cfg.agent_id)), 5, "agent status"
                    )
                    online = rec.statuses(cfg.agent_id)[0].online
                    outbox_rows = agent.stats().outbox.rows

    assert [(r.topic, r.reason) for r in during.publisher.refusing] == [
        (agent_topic, NOT_AUTHORIZED)
    ]
    assert heard_during == 0
    assert online
    assert outbox_rows < 20  # the device's telemetry was never held up


async def test_a_refused_topic_does_not_spin_while_the_broker_is_away(
    tmp_path: Path,
) -> None:
    async with SimulatedPark(
        seed=6, park="spin", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        enterprise = park.enterprises[0]
        granted, denied = (d.device.device_id for d in park.devices)
        broker = AclBroker(tmp_path / "broker", acl("spin", enterprise, granted))
        with broker:
            cfg = agent_config(park, broker.port, tmp_path, protocol="5")
            async with EdgeAgent(cfg) as agent:
                await until(
                    lambda: len(agent.stats().publisher.refusing) == 1, 10, "refusal"
                )
                broker.stop()
                await until(lambda: not agent.stats().broker_connected, 5, "away")
                await asyncio.sleep(RETRY_MAX_S)  # the retry falls due meanwhile
                cpu, wall = time.process_time(), time.monotonic()
                await asyncio.sleep(2)
                cpu, wall = time.process_time() - cpu, time.monotonic() - wall
                stats = agent.stats()

    # Polling goes on (a few ms of CPU a second); a retry that cannot go (not
    # connected) must wait for the next tick, not loop on a zero timeout.
    assert cpu < 0.3 * wall, (cpu, wall)
    assert [r.topic for r in stats.publisher.refusing] == [
        f"sp/v1/spin/{enterprise}/{denied}/telemetry"
    ]


async def test_with_mqtt_3_1_1_a_refused_publish_looks_delivered(
    tmp_path: Path,
) -> None:
    async with SimulatedPark(
        seed=4, park="deny3", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        enterprise = park.enterprises[0]
        granted, denied = (d.device.device_id for d in park.devices)
        with AclBroker(
            tmp_path / "broker", acl("deny3", enterprise, granted)
        ) as broker:
            cfg = agent_config(park, broker.port, tmp_path, protocol="3.1.1")
            with Recorder(
                "127.0.0.1", broker.port, "sp/v1/deny3/#", persistent=False
            ) as rec:
                async with EdgeAgent(cfg) as agent:
                    await until(
                        lambda: agent.stats().devices[denied].last_seq >= 5,
                        10,
                        "denied polls",
                    )
                    await until(
                        lambda: not agent.outbox.pending(1, device=denied, after_id=0),
                        5,
                        "the denied rows acknowledged",
                    )
                    stats = agent.stats()
                    heard = {b.device for b in rec.batches()}

    # The broker dropped them, the agent deleted them and saw nothing wrong.
    assert denied not in heard
    assert granted in heard
    assert stats.publisher.refused_messages == {}
    assert stats.publisher.refusing == ()


async def test_a_3_1_1_only_broker_says_to_set_the_protocol(tmp_path: Path) -> None:
    async with (
        SimulatedPark(
            seed=5, park="old", enterprises=1, devices_per_enterprise=1, port_base=0
        ) as park,
        EmbeddedMqttBroker() as (host, port),
    ):
        cfg = park.agent_configs(host, port, tmp_path, POLL_S)[0]
        assert cfg.broker.protocol == "5"
        # amqtt misreads the agent's MQTT 5 CONNECT (its will) and never answers:
        # paho gives up after the keepalive
        broker = cfg.broker.model_copy(update={"keepalive_s": 5})
        async with EdgeAgent(cfg.model_copy(update={"broker": broker})) as agent:
            await until(
                lambda: agent.stats().publisher.connect_failures >= 1, 15, "failure"
            )
            stats = agent.stats()
        # edge check says the same; with protocol 3.1.1 the broker accepts it
        probed = await asyncio.to_thread(probe_broker, cfg.broker, timeout_s=2)
        v311 = cfg.broker.model_copy(update={"protocol": "3.1.1"})
        probed_v311 = await asyncio.to_thread(probe_broker, v311, timeout_s=2)
    # without a will amqtt parses the CONNECT and answers "unacceptable protocol"
    assert probed == f"refused: Unsupported protocol version{V311_HINT}"
    assert probed_v311 is None
    assert not stats.publisher.connected
    assert stats.publisher.last_connect_error.startswith(
        "the broker closed the connection before accepting it ("
    )
    assert stats.publisher.last_connect_error.endswith(
        '; a broker that speaks only MQTT 3.1.1 needs broker.protocol: "3.1.1"'
    )
    assert stats.publisher.last_connect_error.endswith(V311_HINT)
