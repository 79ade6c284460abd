"""A meter that rolls over and is then replaced, flagged from the edge to the database.

simulated Modbus TCP energy meter → EdgeAgent (CounterGuard) → Mosquitto → bridge →
Kafka → sink → PostgreSQL. The meter's clock stands still, so its counter changes
only when the test sets it: the stored series is known reading by reading.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent
from edge_agent.sample import utc_now
from simulators.meters import wrap_at
from simulators.park import SimulatedPark
from smartpark.settings import Settings
from tests.support.clients import wait_for
from tests.support.pipeline import (
    assert_exactly_once,
    expected_keys,
    read_outboxes,
    running_platform,
    wait_stored,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

POLL_S = 0.25


async def test_rollover_and_replacement_are_flagged_end_to_end(
    mqtt_addr: tuple[str, int],
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    frozen = utc_now()
    # One enterprise with one device: an energy meter (kWh as u32 at 0.1).
    async with (
        running_platform(settings) as (storage, bridge, sink),
        SimulatedPark(
            seed=5,
            park=park_id,
            enterprises=1,
            devices_per_enterprise=1,
            port_base=0,
            clock=lambda: frozen,
        ) as park,
    ):
        [config] = park.agent_configs(*mqtt_addr, tmp_path, poll_interval_s=POLL_S)
        [device] = park.devices
        meter = device.device
        energy = next(r for r in meter.registers if r.metric == "active_energy")
        assert (energy.type, energy.scale, energy.unit) == ("u32", 0.1, "kWh")
        wrap = wrap_at(energy)
        assert wrap is not None
        assert wrap == pytest.approx(429_496_729.6)
        async with EdgeAgent(config) as agent:

            def stored_polls() -> int:
                return agent.stats().devices[meter.device_id].polls_ok

            async def three_more_polls() -> None:
                # The first may have read the registers before the change.
                goal = stored_polls() + 3
                await wait_for(
                    lambda: stored_polls() >= goal, timeout_s=30, what="polls"
                )

            await three_more_polls()
            meter.set_counter("active_energy", wrap - 1.0)  # up: continues
            await three_more_polls()
            meter.set_counter("active_energy", wrap + 0.5)  # wraps to 0.5
            await three_more_polls()
            meter.set_counter("active_energy", 0.2)  # a new meter
            await three_more_polls()
            stats = agent.stats().devices[meter.device_id]
        after = read_outboxes([config])
        assert after.pending_rows == 0
        expected = expected_keys([config], after)
        stored = await wait_stored(storage, park_id, expected, timeout_s=60)
        rows = await storage.telemetry.readings(park=park_id)
    assert_exactly_once(stored, expected)
    assert (stats.rollovers, stats.replacements) == (1, 1)
    assert sink.stats.dead_letters == 0
    assert bridge.stats.dead_letters == 0

    series = sorted(
        (r for r in rows if r.metric == "active_energy"), key=lambda r: r.seq
    )
    # Runs of equal (value, reset): the flag is on the first reading after each step
    # down, and on nothing else.
    runs = [key for key, _ in itertools.groupby((r.value, r.reset) for r in series)]
    start = series[0].value
    assert start < wrap - 1.0
    assert runs == [
        (start, None),
        (pytest.approx(wrap - 1.0), None),
        (0.5, "rollover"),
        (0.5, None),
        (0.2, "replacement"),
        (0.2, None),
    ]
    assert [r.reset for r in series].count("rollover") == 1
    assert [r.reset for r in series].count("replacement") == 1
    assert all(r.reset is None for r in rows if r.metric != "active_energy")


async def test_the_last_counter_value_survives_an_agent_restart(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    """The meter wraps while its agent is down: the next agent still flags it."""
    frozen = utc_now()
    async with SimulatedPark(
        seed=5,
        park=park_id,
        enterprises=1,
        devices_per_enterprise=1,
        port_base=0,
        clock=lambda: frozen,
    ) as park:
        [config] = park.agent_configs(*mqtt_addr, tmp_path, poll_interval_s=POLL_S)
        meter = park.devices[0].device
        wrap = wrap_at(next(r for r in meter.registers if r.metric == "active_energy"))
        assert wrap is not None

        async def run_agent(polls: int) -> int:
            async with EdgeAgent(config, flush_timeout_s=1.0) as agent:
                await wait_for(
                    lambda: agent.stats().devices[meter.device_id].polls_ok >= polls,
                    timeout_s=30,
                    what="polls",
                )
            return agent.stats().devices[meter.device_id].rollovers

        meter.set_counter("active_energy", wrap - 1.0)
        assert await run_agent(3) == 0
        meter.set_counter("active_energy", wrap + 0.5)  # wraps while nobody polls
        # A new agent process, same outbox file: its guard starts from the stored
        # last value (wrap - 1.0), so the first reading it takes is a rollover.
        assert await run_agent(3) == 1
