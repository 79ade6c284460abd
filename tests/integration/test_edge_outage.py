"""A broker outage of minutes while meters are polled and an HJ 212 logger sends.

Simulated Modbus meters and a simulated CEMS data logger → EdgeAgent → a private
Mosquitto that this test stops for ``SMARTPARK_TEST_OUTAGE_S`` seconds (default 180)
→ a persistent-session subscriber. Nothing may be lost, and every device's readings
must arrive in sequence order.
"""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import Hj212Config
from simulators.analysers import Station
from simulators.hj212_logger import Hj212Logger
from simulators.hj212_source import PacketSource, SimClock
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

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("SMARTPARK_TEST_OUTAGE_S", "180"))
MN = "88888880000009"
CEMS = Hj212Config.model_validate(
    {
        "host": "127.0.0.1",
        "port": 0,
        "loggers": [
            {
                "mn": MN,
                "device": "stack-9",
                "pollutants": {
                    "a21026": {"metric": "so2", "corrected": "so2_corrected"},
                    "a21002": {"metric": "nox", "corrected": "nox_corrected"},
                    "a34013": {
                        "metric": "particulate",
                        "corrected": "particulate_corrected",
                    },
                    "a19001": {"metric": "o2"},
                    "a01012": {"metric": "flue_temperature"},
                    "a00000": {"metric": "flue_gas_flow"},
                },
            }
        ],
    }
)


async def test_minutes_of_broker_outage_lose_nothing_and_keep_order(
    private_broker: TestBroker, tmp_path: Path
) -> None:
    port = private_broker.port
    async with SimulatedPark(
        seed=8, park="outage2", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        base = park.agent_configs("127.0.0.1", port, tmp_path, 0.5)[0]
        cfg = fast_reconnect(base).model_copy(update={"hj212": CEMS})
        devices = [d.id for d in cfg.devices] + ["stack-9"]
        metrics = metrics_of(cfg) | {
            "stack-9": {
                m
                for p in CEMS.loggers[0].pollutants.values()
                for m in (p.metric, p.corrected)
                if m
            }
        }
        with Recorder(
            "127.0.0.1", port, "sp/v1/outage2/+/+/telemetry", persistent=True
        ) as rec:
            async with EdgeAgent(cfg) as agent:
                assert agent.hj212_port is not None
                station = Station("cems", MN, flag=5, minute=False, hourly=False)
                logger = Hj212Logger(
                    PacketSource(station, seed=3),
                    SimClock(
                        datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1), 1
                    ),
                    "127.0.0.1",
                    agent.hj212_port,
                    interval_s=0.5,
                )
                async with logger:

                    def seqs() -> dict[str, int]:
                        return {d: agent.stats().devices[d].last_seq for d in devices}

                    await until(lambda: min(seqs().values()) >= 5, 10, "first data")
                    await until(lambda: delivered_through(rec, seqs()), 10, "delivery")
                    private_broker.pause()
                    await until(
                        lambda: agent.stats().publisher.in_flight >= 3, 10, "in flight"
                    )
                    private_broker.stop()
                    await until(
                        lambda: not agent.stats().broker_connected, 10, "disconnect"
                    )
                    before = seqs()
                    await asyncio.sleep(OUTAGE_S)
                    during = agent.stats()
                    private_broker.start()
                    await until(lambda: agent.stats().broker_connected, 30, "reconnect")
                    await until(lambda: agent.stats().outbox.rows == 0, 120, "backlog")
                    logger.stop()
                final = agent.stats()
            last = {d: final.devices[d].last_seq for d in devices}
            await until(lambda: delivered_through(rec, last), 60, "all delivered")
            batches = rec.batches()

    # the meters were polled and the logger's packets stored all through the outage
    expected_growth = OUTAGE_S * 2 * 0.8  # 2 a second, with slack for a slow machine
    for d in devices:
        assert during.devices[d].last_seq >= before[d] + expected_growth, d
    assert during.outbox.rows > 0
    # every packet the logger sent became one seq, and each one was answered
    valid = [p for p in logger.sent if p.valid]
    assert last["stack-9"] == len(valid)
    assert logger.unanswered == []
    assert final.outbox.dropped_rows == final.outbox.refused_polls == 0
    assert_complete_and_ordered(batches, last, metrics)
