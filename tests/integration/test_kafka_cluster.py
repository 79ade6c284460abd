"""A three-broker Kafka cluster on loopback: the partition leader killed under load.

``deploy/local/services up --kafka-cluster`` runs three combined broker + controller
nodes; the platform creates its topics with replication factor 3 and
``min.insync.replicas=2``. Simulated meters → edge agents → Mosquitto → bridge →
Kafka cluster → sink → PostgreSQL run while the node leading most telemetry
partitions is killed with SIGKILL: the bridge's producer (acks=all, idempotent)
moves to the new leaders, nothing the agents had acknowledged is lost and nothing
is stored twice; then the node comes back and catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from simulators.park import SimulatedPark
from smartpark.settings import KafkaSettings, Settings
from storage import Storage
from stream.kafka import ensure_topics
from tests.support.clients import wait_for
from tests.support.pipeline import (
    assert_exactly_once,
    expected_keys,
    read_outboxes,
    stored_keys,
    wait_stored,
)
from tests.support.procs import ServiceProcess, services_script
from tests.support.settings import settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CLUSTER = "127.0.0.1:19192,127.0.0.1:19292,127.0.0.1:19392"
SERVICES = Path(__file__).resolve().parents[2] / ".services"


@pytest.fixture
def kafka_cluster() -> str:
    """The three nodes' bootstrap list; fails (never skips) when one is down."""
    bootstrap = os.environ.get("SMARTPARK_TEST_KAFKA_CLUSTER", CLUSTER)
    for node in bootstrap.split(","):
        host, _, port = node.rpartition(":")
        try:
            with socket.create_connection((host, int(port)), timeout=2):
                pass
        except OSError as exc:
            pytest.fail(
                f"Kafka cluster node {node} is not answering ({exc}); start it with: "
                "deploy/local/services up --kafka-cluster"
            )
    return bootstrap


@contextlib.asynccontextmanager
async def running_agents(configs: list[AgentConfig]) -> AsyncIterator[list[EdgeAgent]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(EdgeAgent(c)) for c in configs]


async def describe(
    k: KafkaSettings,
) -> tuple[dict[int, int], dict[int, list[int]], str]:
    """Leader and in-sync replicas of each telemetry partition, and the topic's
    min.insync.replicas."""
    admin = AIOKafkaAdminClient(bootstrap_servers=k.bootstrap)
    await admin.start()
    try:
        [topic] = await admin.describe_topics([k.telemetry_topic])
        leaders = {p["partition"]: p["leader"] for p in topic["partitions"]}
        isr = {p["partition"]: sorted(p["isr"]) for p in topic["partitions"]}
        [resp] = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, k.telemetry_topic)]
        )
        configs = {c[0]: c[1] for r in resp.resources for c in r[4]}
        return leaders, isr, str(configs["min.insync.replicas"])
    finally:
        await admin.close()


def node_pid(node: int) -> int:
    return int((SERVICES / "kafka-cluster" / f"n{node}" / "kafka.pid").read_text())


async def test_killing_the_partition_leader_loses_no_acknowledged_reading(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    kafka_cluster: str,
    tmp_path: Path,
) -> None:
    settings = platform.model_copy(
        update={
            "kafka": platform.kafka.model_copy(
                update={
                    "bootstrap": kafka_cluster,
                    "replication_factor": 3,
                    "min_insync_replicas": 2,
                }
            )
        }
    )
    await ensure_topics(settings.kafka)
    leaders, isr, min_isr = await describe(settings.kafka)
    assert min_isr == "2"
    assert all(nodes == [1, 2, 3] for nodes in isr.values()), isr
    victim = Counter(leaders.values()).most_common(1)[0][0]

    env = {
        **settings_env(settings),
        "SMARTPARK_KAFKA__REPLICATION_FACTOR": "3",
        "SMARTPARK_KAFKA__MIN_INSYNC_REPLICAS": "2",
    }
    bridge = ServiceProcess(["bridge", "--stats-every", "2"], env, tmp_path / "b.log")
    sink = ServiceProcess(["sink"], env, tmp_path / "sink.log")
    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with SimulatedPark(
            seed=16, park=park_id, enterprises=3, devices_per_enterprise=3, port_base=0
        ) as park:
            configs = park.agent_configs(
                *mqtt_addr, tmp_path, poll_interval_s=0.25, max_backoff_s=2.0
            )
            bridge.start()
            sink.start()
            try:
                await wait_for(
                    bridge.logged("MQTT subscribed"), timeout_s=60, what="bridge"
                )
                async with running_agents(configs):
                    await asyncio.sleep(4)
                    os.kill(node_pid(victim), signal.SIGKILL)
                    killed = time.monotonic()
                    at_kill = len(await stored_keys(storage, park_id))
                    # Writes go on with two of three nodes: readings polled after
                    # the kill are stored while the node is still down.
                    await wait_for_growth(storage, park_id, at_kill + 200, 45)
                    recovered_s = time.monotonic() - killed
                    await asyncio.sleep(3)
                    during, _, _ = await describe(settings.kafka)
                    await asyncio.to_thread(
                        services_script, "restart", f"kafka-{victim}"
                    )
                    await asyncio.sleep(3)
                after = read_outboxes(configs)
                expected = expected_keys(configs, after)
                stored = await wait_stored(storage, park_id, expected, timeout_s=120)
            finally:
                bridge_rc = bridge.stop()
                sink_rc = sink.stop()
    assert after.pending_rows == 0  # every reading the agents polled was acknowledged
    assert_exactly_once(stored, expected)
    assert victim not in during.values()  # the partitions it led moved elsewhere
    assert recovered_s < 45
    assert (bridge_rc, sink_rc) == (0, 0)
    # The node came back and is in sync again (replication factor 3 restored).
    await wait_for_isr(settings.kafka, 60)


async def wait_for_growth(
    storage: Storage, park: str, rows: int, timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while len(await stored_keys(storage, park)) < rows:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {rows} rows stored {timeout_s} s after")
        await asyncio.sleep(0.5)


async def wait_for_isr(k: KafkaSettings, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        _, isr, _ = await describe(k)
        if all(nodes == [1, 2, 3] for nodes in isr.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"replicas not back in sync: {isr}")
        await asyncio.sleep(1)
