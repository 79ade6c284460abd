"""A broker killed before it saved what it acknowledged: the agent sends it again.

Mosquitto acknowledges a QoS 1 PUBLISH from memory and writes its database only
every ``autosave_interval``. Here a private Mosquitto saves only on a graceful stop
(an autosave interval of an hour): the stand-in bridge's persistent session is
saved, the bridge goes offline, so the broker queues the agent's messages for it,
and then the broker is killed with SIGKILL: every message it acknowledged since
the save is gone. With ``publish.resend_window_s`` the agent sends those readings
again after the reconnect and the bridge, back online, receives every reading the
agent polled; with the window at 0 (rows deleted at their PUBACK, the old
behaviour) readings are lost, which shows the test can see the loss.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from simulators.park import SimulatedPark
from tests.support.mosquitto import TestBroker
from tests.support.recorder import (
    Recorder,
    delivered_through,
    fast_reconnect,
    first_seen_seqs,
    metrics_of,
    until,
)

pytestmark = [pytest.mark.integration]

POLL_S = 0.2
BRIDGE = "stand-in-bridge"


def with_window(cfg: AgentConfig, window_s: float) -> AgentConfig:
    publish = cfg.publish.model_copy(update={"resend_window_s": window_s})
    return cfg.model_copy(update={"publish": publish})


@pytest.mark.parametrize("window_s", [120.0, 0.0], ids=["resend", "no-resend"])
async def test_readings_a_killed_broker_had_acknowledged_are_sent_again(
    window_s: float, tmp_path: Path
) -> None:
    broker = TestBroker(tmp_path / "broker", persistence=True, autosave_interval_s=3600)
    with broker:
        port = broker.port
        async with SimulatedPark(
            seed=9, park="crash", enterprises=1, devices_per_enterprise=2, port_base=0
        ) as park:
            cfg = with_window(
                fast_reconnect(
                    park.agent_configs("127.0.0.1", port, tmp_path, POLL_S)[0]
                ),
                window_s,
            )
            devices = [d.id for d in cfg.devices]
            topic = "sp/v1/crash/+/+/telemetry"
            with Recorder("127.0.0.1", port, topic, persistent=True, client_id=BRIDGE):
                pass  # its persistent session exists; now it is offline ...
            broker.stop()  # ... and the session is on disk (SIGTERM saves)
            broker.start()
            async with EdgeAgent(cfg) as agent:

                def seqs() -> dict[str, int]:
                    return {d: agent.stats().devices[d].last_seq for d in devices}

                await until(
                    lambda: agent.stats().publisher.acked_messages >= 10,
                    10,
                    "messages acknowledged by the broker",
                )
                broker.kill()  # everything acknowledged since the start is lost
                at_kill = agent.stats()
                polled_at_kill = seqs()
                await until(lambda: not agent.stats().broker_connected, 10, "loss")
                broker.start()
                await until(lambda: agent.stats().broker_connected, 15, "reconnect")
                await until(
                    lambda: all(n >= polled_at_kill[d] + 10 for d, n in seqs().items()),
                    10,
                    "polls after the restart",
                )
                await until(lambda: agent.stats().outbox.rows == 0, 15, "backlog")
            final = agent.stats()
            last = {d: final.devices[d].last_seq for d in devices}
            bridge = Recorder(
                "127.0.0.1", port, topic, persistent=True, client_id=BRIDGE
            )
            with bridge:  # back online: the broker hands over what it queued
                # the last readings came after the restart: queued after any re-send
                await until(
                    lambda: all(
                        n in first_seen_seqs(bridge.batches()).get(d, ())
                        for d, n in last.items()
                    ),
                    20,
                    "the newest readings",
                )
                complete = delivered_through(bridge, last)
                seen = first_seen_seqs(bridge.batches())
    log = broker.log()

    assert at_kill.publisher.acked_readings > 0
    assert (final.publisher.connects, final.publisher.disconnects) == (2, 1)
    assert final.outbox.dropped_rows == final.outbox.expired_rows == 0
    missing = {
        d: sorted(set(range(1, n + 1)) - set(seen.get(d, ()))) for d, n in last.items()
    }
    if window_s:
        # every reading polled reached the bridge at least once
        assert complete, (missing, log[-3000:])
        # what the broker had acknowledged before the kill was queued again
        assert final.publisher.resends == 1
        assert final.publisher.resent_readings >= at_kill.publisher.acked_readings
        assert final.outbox.requeued_rows == final.publisher.resent_readings
        assert final.outbox.acked_rows > 0  # kept for the window after the stop
        n_metrics = {d: len(m) for d, m in metrics_of(cfg).items()}
        assert final.publisher.resent_readings <= sum(
            polled_at_kill[d] * n_metrics[d] for d in devices
        )
    else:
        # the control: without the window the broker's loss is the agent's loss
        assert not complete
        assert final.publisher.resends == final.publisher.resent_readings == 0
        for d, gone in missing.items():
            # only readings the broker had acknowledged before it was killed
            assert all(seq <= polled_at_kill[d] for seq in gone), (d, gone)
        assert sum(map(len, missing.values())) > 0


async def test_a_restarted_agent_sends_again_what_was_acknowledged_in_the_window(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    """The agent cannot know what the broker did while it was stopped: at start it
    sends again what its outbox kept acknowledged within the window."""
    host, port = mqtt_addr
    async with SimulatedPark(
        seed=4, park=park_id, enterprises=1, devices_per_enterprise=1, port_base=0
    ) as park:
        cfg = with_window(park.agent_configs(host, port, tmp_path, POLL_S)[0], 120.0)
        (device,) = (d.id for d in cfg.devices)
        topic = f"sp/v1/{park_id}/+/+/telemetry"
        with Recorder(host, port, topic, persistent=False) as rec:
            async with EdgeAgent(cfg) as agent:
                await until(
                    lambda: agent.stats().devices[device].last_seq >= 5, 10, "polls"
                )
            first = agent.stats()
            async with EdgeAgent(cfg) as agent:
                await until(lambda: agent.stats().outbox.rows == 0, 10, "re-sent")
            second = agent.stats()

            def copies() -> Counter[int]:
                return Counter(r.seq for b in rec.batches() for r in b.readings)

            n = first.devices[device].last_seq
            per_poll = len(metrics_of(cfg)[device])
            await until(
                lambda: all(copies()[s] >= 2 * per_poll for s in range(1, n + 1)),
                10,
                "every reading of the first run twice",
            )
    assert first.outbox.rows == 0  # the first run delivered everything
    assert first.publisher.resends == 0
    assert second.publisher.resends == 1
    assert second.publisher.resent_readings == first.publisher.acked_readings
