"""The real EdgeAgent polling two Modbus RTU devices on one pseudo-terminal line,
one of them dead: the live one keeps its poll rate (agent → real Mosquitto)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from edge_agent.agent import EdgeAgent, backoff_delay
from edge_agent.config import parse_config
from edge_agent.rtu import QUIET_S
from edge_agent.sample import utc_now
from simulators.device import Fault
from simulators.meters import build_meter
from simulators.rtu import PtyRtuLine, RtuSlaves

pytestmark = pytest.mark.integration

LIVE_S = 0.4  # the live device's poll interval
LIVE_TIMEOUT_S = 0.25  # shorter than the dead one's: waiting must not count
DEAD_TIMEOUT_S = 0.3
DEAD_MAX_BACKOFF_S = 1.2
POLLS = 12  # of the live device: about 4.4 s


def max_attempts(elapsed_s: float, interval_s: float) -> int:
    """Attempts the agent's backoff allows a dead device within ``elapsed_s``,
    each costing its timeout."""
    attempts, t = 0, 0.0
    while t <= elapsed_s:
        attempts += 1
        t += DEAD_TIMEOUT_S + backoff_delay(interval_s, attempts, DEAD_MAX_BACKOFF_S)
    return attempts


async def test_a_dead_device_does_not_slow_the_live_one_on_its_line(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    slaves = RtuSlaves(
        {
            1: build_meter("water", seed=7, device_id="live"),
            2: build_meter("water", seed=7, device_id="dead"),
        },
        clock=utc_now,
    )
    slaves.set_fault(2, Fault.timeout())
    host, port = mqtt_addr
    async with PtyRtuLine(slaves) as line:
        where = {"protocol": "modbus_rtu", "line": "line-1"}
        cfg = parse_config(
            {
                "site": {"park": park_id, "enterprise": "boiler-house"},
                "broker": {"host": host, "port": port, "client_id": f"{park_id}-rtu"},
                "outbox": {"path": str(tmp_path / "outbox.db")},
                "serial_lines": [{"id": "line-1", "port": line.path}],
                "devices": [
                    # first, so it takes the bus at the start and the live device's
                    # first poll has to wait for its whole timeout
                    slaves.device_config(
                        2,
                        "dead",
                        poll_interval_s=LIVE_S,
                        timeout_s=DEAD_TIMEOUT_S,
                        max_backoff_s=DEAD_MAX_BACKOFF_S,
                        **where,
                    ),
                    slaves.device_config(
                        1,
                        "live",
                        poll_interval_s=LIVE_S,
                        timeout_s=LIVE_TIMEOUT_S,
                        **where,
                    ),
                ],
            },
            source="test",
        )
        loop = asyncio.get_running_loop()
        started = loop.time()  # before the agent's first poll: a generous bound
        async with EdgeAgent(cfg, flush_timeout_s=1.0) as agent:
            try:
                async with asyncio.timeout(POLLS * LIVE_S * 2 + 2):
                    await slaves.wait_served(1, POLLS)
            except TimeoutError:
                pytest.fail(
                    f"the live device answered {slaves.served_reads[1]} polls in "
                    f"{loop.time() - started:.1f} s, not {POLLS} (every {LIVE_S} s)"
                )
            elapsed = loop.time() - started
            dead_attempts = slaves.requests[2]
            stats = agent.stats()

    # The live device kept its rate: its mean interval is the configured one
    # (within 10 %), and a poll is late by at most one dead attempt (its timeout,
    # the quiet gap after it, and a margin for a loaded machine), never more.
    stamps = slaves.served_at[1][:POLLS]
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    mean = (stamps[-1] - stamps[0]) / (POLLS - 1)
    assert 0.9 * LIVE_S <= mean <= 1.1 * LIVE_S, gaps
    assert max(gaps) <= LIVE_S + DEAD_TIMEOUT_S + QUIET_S + 0.15, gaps
    # It never failed, although it waited behind the dead device for longer than
    # its own timeout: waiting for the bus does not count.
    live, dead = stats.devices["live"], stats.devices["dead"]
    assert (live.errors, live.polls_ok >= POLLS - 1) == (0, True), live
    # The dead device was tried, one request per attempt, no more often than its
    # backoff allows.
    assert dead.last_error == f"no answer within {DEAD_TIMEOUT_S} s"
    assert dead.polls_ok == 0
    assert 2 <= dead_attempts <= max_attempts(elapsed, LIVE_S), (
        dead_attempts,
        elapsed,
    )
    assert dead_attempts in (dead.errors, dead.errors + 1)  # +1: cut by the stop
