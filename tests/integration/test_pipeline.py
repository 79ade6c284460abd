"""The telemetry spine end to end on the real services, with and without faults.

simulated Modbus meters → edge agents → Mosquitto → bridge → Kafka → sink →
PostgreSQL. Each reading is identified by (device, seq, metric): every poll the
agents made must be stored exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from simulators.park import SimulatedPark
from smartpark.settings import Settings
from storage import Storage
from tests.support.clients import Subscriber, wait_for
from tests.support.pipeline import (
    assert_exactly_once,
    expected_keys,
    read_outboxes,
    running_platform,
    wait_stored,
)
from tests.support.procs import ServiceProcess, services_script
from tests.support.settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_S = 0.25


@contextlib.asynccontextmanager
async def running_agents(configs: list[AgentConfig]) -> AsyncIterator[list[EdgeAgent]]:
    async with contextlib.AsyncExitStack() as stack:
        agents = [await stack.enter_async_context(EdgeAgent(c)) for c in configs]
        yield agents


async def test_every_polled_reading_is_stored_exactly_once(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    async with (
        running_platform(settings) as (storage, bridge, sink),
        SimulatedPark(
            seed=7, park=park_id, enterprises=3, devices_per_enterprise=3, port_base=0
        ) as park,
    ):
        configs = park.agent_configs(*mqtt_addr, tmp_path, poll_interval_s=POLL_S)
        async with running_agents(configs):
            await asyncio.sleep(8)
        after = read_outboxes(configs)
        assert after.pending_rows == 0
        expected = expected_keys(configs, after)
        stored = await wait_stored(storage, park_id, expected, timeout_s=60)
        served = park.served_polls()
        epochs = await storage.telemetry.epochs()
    # Each gateway's outbox epoch travelled with its batches: one per device, from
    # its first poll.
    assert sorted((e.device, e.first_seq) for e in epochs) == sorted(
        (device, 1) for device in after.last_seq
    )
    assert len({e.epoch for e in epochs}) == len(configs)
    # Every poll the simulators answered became a stored sequence number, except at
    # most the one a device was answering when its agent was told to stop.
    assert served.keys() == after.last_seq.keys()
    for device, seq in after.last_seq.items():
        assert served[device] - seq in (0, 1), (device, served[device], seq)
    assert min(after.last_seq.values()) >= 10
    assert_exactly_once(stored, expected)
    assert sink.stats.dead_letters == 0
    assert bridge.stats.dead_letters == 0


async def test_nothing_lost_or_duplicated_through_kills_and_restarts(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    """SIGKILL the bridge and the sink mid-stream, restart Mosquitto and Kafka."""
    settings = platform
    env = settings_env(settings)
    bridge = ServiceProcess(
        ["bridge", "--stats-every", "2"], env, tmp_path / "bridge.log"
    )
    sink = ServiceProcess(["sink"], env, tmp_path / "sink.log")
    # A persistent-session observer sees the order in which agents deliver.
    observer = Subscriber(
        *mqtt_addr, f"sp/v1/{park_id}/+/+/telemetry", client_id=f"observer-{park_id}"
    )
    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with SimulatedPark(
            seed=11, park=park_id, enterprises=2, devices_per_enterprise=3, port_base=0
        ) as park:
            configs = park.agent_configs(
                *mqtt_addr, tmp_path, poll_interval_s=POLL_S, max_backoff_s=2.0
            )
            bridge.start()
            sink.start()
            try:
                # Agents start once the bridge's session holds its subscription;
                # before that the broker has nobody to keep messages for.
                await wait_for(
                    bridge.logged("MQTT subscribed"), timeout_s=60, what="bridge"
                )
                async with running_agents(configs) as agents:
                    await asyncio.sleep(4)
                    bridge.kill()
                    await asyncio.sleep(2)
                    bridge.start()
                    await asyncio.sleep(4)
                    sink.kill()
                    await asyncio.sleep(2)
                    sink.start()
                    await asyncio.sleep(3)

                    def polls() -> int:
                        return sum(
                            d.last_seq
                            for a in agents
                            for d in a.stats().devices.values()
                        )

                    before = polls()
                    await asyncio.to_thread(services_script, "restart", "mosquitto")
                    during_outage = polls() - before
                    await asyncio.sleep(4)
                    await asyncio.to_thread(services_script, "restart", "kafka")
                    await asyncio.sleep(4)
                    assert all(a.stats().publisher.disconnects >= 1 for a in agents)
                after = read_outboxes(configs)
                assert after.pending_rows == 0
                expected = expected_keys(configs, after)
                stored = await wait_stored(storage, park_id, expected, timeout_s=120)
            finally:
                bridge_rc = bridge.stop()
                sink_rc = sink.stop()
                observer.close()
    assert_exactly_once(stored, expected)
    # The agents kept polling while the broker was down.
    assert during_outage > 0
    assert (bridge_rc, sink_rc) == (0, 0)
    first_seen: dict[str, list[int]] = {}
    for _topic, payload in observer.snapshot():
        doc = json.loads(payload)
        seqs = first_seen.setdefault(doc["device"], [])
        for r in doc["readings"]:
            if r["seq"] not in seqs:
                seqs.append(r["seq"])
    for device, seqs in first_seen.items():
        assert seqs == sorted(seqs), f"{device} delivered out of order"
