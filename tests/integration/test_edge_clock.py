"""Edge agents check their clocks against the platform's (the bridge's beacon on
``sp/v1/clock``) through the real Mosquitto: a gateway whose clock is off or unset
refuses its polls and says why; one whose clock is right goes on."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.sample import utc_now
from edge_agent.status import health
from ingest.bridge import Bridge
from simulators.park import SimulatedPark
from tests.support.recorder import until
from tests.support.settings import platform_settings

pytestmark = pytest.mark.integration


def ahead_10_min() -> datetime:
    return utc_now() + timedelta(minutes=10)


def in_2000() -> datetime:  # a gateway without a battery-backed clock
    return utc_now() - timedelta(days=365 * 27)


async def test_a_gateway_with_a_wrong_clock_refuses_its_polls_and_says_why(
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    topic_prefix: str,
    park_id: str,
    tmp_path: Path,
) -> None:
    settings = platform_settings(mqtt_addr, kafka_bootstrap, topic_prefix, park_id)
    settings.bridge.clock_beacon_s = 0.2
    async with SimulatedPark(
        seed=3, park=park_id, enterprises=3, devices_per_enterprise=1, port_base=0
    ) as park:
        good, ahead, unset = park.agent_configs(*mqtt_addr, tmp_path, 0.2)
        async with Bridge(settings) as bridge:
            task = asyncio.create_task(bridge.run())
            try:
                async with (
                    EdgeAgent(good) as a,
                    EdgeAgent(ahead, clock=ahead_10_min) as b,
                    EdgeAgent(unset, clock=in_2000) as c,
                ):
                    await until(
                        lambda: (
                            b.stats().clock_problem != ""
                            and sum(d.clock_refused for d in b.stats().devices.values())
                            >= 3
                        ),
                        20,
                        "the skewed agent to refuse polls",
                    )
                    stored_b = sum(d.samples for d in b.stats().devices.values())
                    await asyncio.sleep(1.0)  # ~5 more polls each
                    sa, sb, sc = a.stats(), b.stats(), c.stats()
            finally:
                bridge.stop()
                await task
    assert bridge.stats.clock_beacons > 0
    # the good gateway: no problem, polls stored
    assert sa.clock_problem == ""
    assert sa.publisher.clock_offset_ms is not None
    assert abs(sa.publisher.clock_offset_ms) < 5_000
    assert all(d.polls_ok >= 5 and d.clock_refused == 0 for d in sa.devices.values())
    # 10 min ahead: refused once the first beacon came, nothing stored since
    assert sb.clock_problem.startswith("clock 600 s ahead of the platform's"), (
        sb.clock_problem
    )
    assert sum(d.samples for d in sb.devices.values()) == stored_b
    healthy, line = health(sb, now_ms=0, unhealthy_after_s=300)
    assert not healthy
    assert "polls refused: clock 600 s ahead" in line
    # unset (year 2000): refused from the first poll, no beacon needed
    assert sc.clock_problem.startswith("clock unset")
    assert all(d.samples == 0 and d.clock_refused > 0 for d in sc.devices.values())
