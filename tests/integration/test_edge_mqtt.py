"""Simulated park → EdgeAgent → real Mosquitto → a real paho subscriber.

Every (device, seq) the agent produced must arrive, complete, in order per device:
with faulty devices beside live ones, through a broker outage of ~10 s (a private
Mosquitto this test stops and starts), and across an agent restart with a backlog.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from simulators.device import Fault
from simulators.park import SimulatedPark
from tests.support.mosquitto import TestBroker
from tests.support.recorder import (
    Recorder,
    assert_complete_and_ordered,
    delivered_through,
    fast_reconnect,
    metrics_of,
    until,
)

pytestmark = pytest.mark.integration

POLL_S = 0.2


async def test_every_poll_arrives_in_order_while_faulty_devices_fail(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    async with SimulatedPark(
        seed=11, park=park_id, enterprises=1, devices_per_enterprise=4, port_base=0
    ) as park:
        cfg = park.agent_configs(
            host, port, tmp_path, POLL_S, timeout_s=0.5, max_backoff_s=2.0
        )[0]
        live_a, dead, broken, live_b = (d.id for d in cfg.devices)
        park.set_fault(dead, Fault.timeout())
        park.set_fault(broken, Fault.exception(4))
        with Recorder(host, port, f"sp/v1/{park_id}/#", persistent=False) as rec:
            started = time.monotonic()
            async with EdgeAgent(cfg) as agent:
                await until(
                    lambda: (
                        min(agent.stats().devices[d].last_seq for d in (live_a, live_b))
                        >= 15
                    ),
                    10,
                    "15 polls of each live device",
                )
                elapsed = time.monotonic() - started
                stats = agent.stats()
            after_stop = agent.stats()
            last = {d: after_stop.devices[d].last_seq for d in (live_a, live_b)}
            await until(lambda: delivered_through(rec, last), 5, "delivery")
            await asyncio.sleep(0.3)  # anything late would show up as a duplicate
            batches = rec.batches()
        served = park.served_polls()

    # The dead device (0.5 s timeouts, retried a few times meanwhile) and the
    # broken one did not hold the live ones up: their polls kept the 0.2 s cadence
    # (one hiccup allowed for a loaded machine), 15 of them in about 3 s.
    assert elapsed < 15 * POLL_S * 2 + 1, elapsed
    for device in (live_a, live_b):
        stamps = sorted(
            {r.ts_ms for b in batches if b.device == device for r in b.readings}
        )
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert sum(gap >= 450 for gap in gaps) <= 1, gaps
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
    assert {b.device for b in batches} == {live_a, live_b}
    # normal operation: no duplicates at all
    assert sum(len(b.readings) for b in batches) == sum(
        n * len(metrics_of(cfg)[d]) for d, n in last.items()
    )
    # one successful Modbus read per seq (a read cut short by the stop may be extra)
    for device, n in last.items():
        assert 0 <= served[device] - n <= 1
    assert served[dead] == served[broken] == 0
    # failures counted, with reasons, and backing off
    dead_stats, broken_stats = stats.devices[dead], stats.devices[broken]
    assert dead_stats.errors >= 2
    assert dead_stats.last_error == "no answer within 0.5 s"
    assert broken_stats.errors >= 2
    assert broken_stats.last_error.startswith(
        "Modbus exception 4 (server device failure)"
    )
    assert broken_stats.backoff_s > 0
    assert (dead_stats.polls_ok, dead_stats.last_seq) == (0, 0)
    # everything flushed on stop, every message acknowledged
    assert after_stop.outbox.rows == 0
    assert (
        after_stop.publisher.acked_messages == after_stop.publisher.published_messages
    )
    # retained statuses: the dead device went offline with its reason, and on a
    # graceful stop the agent and every device say so
    assert "no answer within 0.5 s" in [
        s.reason for s in rec.statuses(dead) if not s.online
    ]
    agent_status = rec.statuses(cfg.agent_id)
    assert agent_status[0].online
    assert (agent_status[-1].online, agent_status[-1].reason) == (
        False,
        "agent stopped",
    )
    assert rec.statuses(live_a)[0].online
    assert rec.statuses(live_a)[-1].reason == "agent stopped"


@pytest.mark.slow
async def test_broker_outage_loses_nothing_and_keeps_order(
    private_broker: TestBroker, tmp_path: Path
) -> None:
    port = private_broker.port
    async with SimulatedPark(
        seed=5, park="outage", enterprises=1, devices_per_enterprise=3, port_base=0
    ) as park:
        cfg = fast_reconnect(park.agent_configs("127.0.0.1", port, tmp_path, POLL_S)[0])
        devices = [d.id for d in cfg.devices]
        with Recorder(
            "127.0.0.1", port, "sp/v1/outage/+/+/telemetry", persistent=True
        ) as rec:
            async with EdgeAgent(cfg) as agent:

                def seqs() -> dict[str, int]:
                    return {d: agent.stats().devices[d].last_seq for d in devices}

                await until(lambda: min(seqs().values()) >= 5, 5, "first polls")
                await until(lambda: delivered_through(rec, seqs()), 5, "first delivery")
                # Freeze the broker first so messages are in flight (sent, not
                # acknowledged) when it goes down: paho must re-send those.
                private_broker.pause()
                await until(
                    lambda: agent.stats().publisher.in_flight >= 5,
                    5,
                    "unacked messages",
                )
                private_broker.stop()
                await until(lambda: not agent.stats().broker_connected, 5, "disconnect")
                before = seqs()
                await asyncio.sleep(10)
                during = agent.stats()
                private_broker.start()
                await until(lambda: agent.stats().broker_connected, 10, "reconnect")
                await until(lambda: agent.stats().outbox.rows == 0, 15, "backlog")
            final = agent.stats()
            last = {d: final.devices[d].last_seq for d in devices}
            await until(lambda: delivered_through(rec, last), 10, "all delivered")
            batches = rec.batches()

    # polling went on into the outbox during the outage
    for d in devices:
        assert during.devices[d].last_seq >= before[d] + 30
    assert during.outbox.rows > 0
    assert during.publisher.in_flight >= 5
    # connected, lost once, reconnected (a graceful stop is not a lost connection)
    assert (final.publisher.connects, final.publisher.disconnects) == (2, 1)
    assert final.outbox.dropped_rows == final.outbox.refused_polls == 0
    assert_complete_and_ordered(batches, last, metrics_of(cfg))


@pytest.mark.slow
async def test_backlog_survives_an_agent_restart_and_seq_continues(
    private_broker: TestBroker, tmp_path: Path
) -> None:
    port = private_broker.port
    async with SimulatedPark(
        seed=6, park="restart", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        cfg = fast_reconnect(park.agent_configs("127.0.0.1", port, tmp_path, POLL_S)[0])
        devices = [d.id for d in cfg.devices]
        with Recorder(
            "127.0.0.1", port, "sp/v1/restart/+/+/telemetry", persistent=True
        ) as rec:
            private_broker.stop()  # the agent starts and stops while the broker is down
            async with EdgeAgent(cfg, flush_timeout_s=0.5) as agent:
                await until(
                    lambda: (
                        min(agent.stats().devices[d].last_seq for d in devices) >= 5
                    ),
                    5,
                    "polls into the outbox",
                )
            first_run = agent.stats()
            assert first_run.outbox.rows > 0  # stayed on disk
            private_broker.start()
            async with EdgeAgent(cfg) as agent:
                await until(lambda: agent.stats().outbox.rows == 0, 10, "backlog sent")
                await until(
                    lambda: all(
                        agent.stats().devices[d].last_seq
                        > first_run.devices[d].last_seq + 2
                        for d in devices
                    ),
                    5,
                    "new polls",
                )
            last = {d: agent.stats().devices[d].last_seq for d in devices}
            await until(lambda: delivered_through(rec, last), 10, "all delivered")
            batches = rec.batches()
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
