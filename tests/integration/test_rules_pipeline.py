"""Alerts end to end on the real services.

simulated CEMS stack (HJ 212, a breach hour) → edge agent → Mosquitto → bridge →
Kafka → rules runner (the shipped coal-power ultra-low pack) → alerts in PostgreSQL
and on the alerts topic. The alerts must be exactly what the offline core computes
over the same telemetry records, and the breach hour must be among them.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from importlib import resources
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, parse_config
from rules.runner import RulesRunner
from simulators.analysers import Station
from simulators.hj212_logger import Hj212Logger
from simulators.hj212_source import PacketSource, Phase, SimClock
from smartpark.settings import Settings
from tests.support.pipeline import running_platform
from tests.support.rules import (
    by_enterprise,
    consume_all,
    offline_events,
    wait_caught_up,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MN = "88888880000001"
HOUR = 3_600_000


def agent_config(host: str, port: int, park: str, tmp_path: Path) -> AgentConfig:
    return parse_config(
        {
            "site": {"park": park, "enterprise": "coal-power-1"},
            "broker": {"host": host, "port": port, "client_id": f"edge-{park}"},
            "outbox": {"path": str(tmp_path / "outbox.db")},
            "hj212": {
                "host": "127.0.0.1",
                "port": 0,
                "loggers": [
                    {
                        "mn": MN,
                        "device": "stack-1",
                        "pollutants": {
                            "a21026": {"metric": "so2", "corrected": "so2_corrected"},
                            "a21002": {"metric": "nox", "corrected": "nox_corrected"},
                            "a34013": {
                                "metric": "particulate",
                                "corrected": "particulate_corrected",
                            },
                            "a19001": {"metric": "o2"},
                        },
                    }
                ],
            },
        }
    )


async def test_a_breach_hour_raises_exactly_the_expected_alerts(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    pack_path = tmp_path / "coal-power-ultra-low.yaml"
    pack_path.write_bytes(
        (resources.files("rules.packs") / "coal-power-ultra-low.yaml").read_bytes()
    )
    # Four hours of data time, one real-time packet per minute, ending hours ago:
    # normal, breach (the second hour), normal, normal.
    start = (datetime.now(UTC) - timedelta(hours=6)).replace(
        minute=0, second=0, microsecond=0
    )
    start_ms = int(start.timestamp() * 1000)
    source = PacketSource(
        Station("cems", MN, flag=4, minute=False, hourly=False),
        seed=5,
        schedule=(Phase("breach", 3600, 3600),),
    )
    async with (
        running_platform(settings) as (storage, _bridge, _sink),
        RulesRunner(settings, pack_path) as runner,
    ):
        runner_task = asyncio.create_task(runner.run())
        try:
            async with EdgeAgent(agent_config(*mqtt_addr, park_id, tmp_path)) as agent:
                assert agent.hj212_port is not None
                async with Hj212Logger(
                    source,
                    SimClock(start, 60),
                    "127.0.0.1",
                    agent.hj212_port,
                    count=4 * 60,
                    interval_s=0.002,
                ) as logger:
                    await logger.wait()
            records = await consume_all(
                settings,
                settings.kafka.telemetry_topic,
                lambda got: (
                    sum(len(json.loads(v)["readings"]) for _, v in got) >= 4 * 60 * 7
                ),  # 7 readings a packet
            )
            await wait_caught_up(storage, settings, len(records))
            stored = [e.body for e in await storage.alerts.events(park=park_id)]
        finally:
            runner.stop()
            await runner_task
    expected = offline_events(pack_path, records)

    def ids(recs: list[tuple[int, bytes]]) -> set[str]:
        return {json.loads(v)["event_id"] for _, v in recs}

    produced = await consume_all(
        settings, settings.kafka.alerts_topic, lambda r: len(ids(r)) >= len(stored)
    )
    # exactly what the core computes over the same records, stored and produced
    assert by_enterprise(stored) == by_enterprise(expected)
    assert stored == expected
    assert ids(produced) == {e["event_id"] for e in stored}
    # ...and what that is: the breach hour opens an alert on the corrected SO2,
    # NOx and particulate (both rule sets: raw with O2 correction, and Zs), the
    # next hour resolves them; no normal hour opens anything.
    opened = {
        (e["rule_id"], e["window"]["start_ms"]) for e in stored if e["kind"] == "opened"
    }
    breach_hour = start_ms + HOUR
    assert opened == {
        (rule, breach_hour)
        for rule in (
            "so2-hourly",
            "nox-hourly",
            "particulate-hourly",
            "so2-corrected-hourly",
            "nox-corrected-hourly",
            "particulate-corrected-hourly",
        )
    }, opened
    resolved = {
        (e["rule_id"], e["window"]["start_ms"])
        for e in stored
        if e["kind"] == "resolved"
    }
    assert resolved == {(rule, breach_hour + HOUR) for rule, _ in opened}
