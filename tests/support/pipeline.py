"""What the agents polled and what the database stored, for end-to-end checks.

Each reading is identified by (device, seq, metric); the helpers read the agents'
outboxes after they stopped and compare with the rows stored by the sink.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox
from edge_agent.sample import utc_now
from ingest.bridge import Bridge
from ingest.sink import Sink
from smartpark.settings import Settings
from storage import Storage
from tests.support.clients import wait_for


@dataclass(frozen=True)
class AfterStop:
    """What the agents' outboxes hold once the agents stopped (read from disk)."""

    last_seq: dict[str, int]
    pending_rows: int


def read_outboxes(configs: list[AgentConfig]) -> AfterStop:
    last_seq: dict[str, int] = {}
    pending = 0
    for config in configs:
        outbox = Outbox.from_config(config.outbox, clock=utc_now)
        outbox.open()
        try:
            pending += outbox.stats().rows
            for device in config.devices:
                last_seq[device.id] = outbox.last_seq(device.id)
        finally:
            outbox.close()
    return AfterStop(last_seq, pending)


def expected_keys(
    configs: list[AgentConfig], after: AfterStop
) -> list[tuple[str, int, str]]:
    """(device, seq, metric) of every reading the agents polled."""
    return sorted(
        (device.id, seq, r.metric)
        for config in configs
        for device in config.devices
        for seq in range(1, after.last_seq[device.id] + 1)
        for r in device.registers
    )


async def stored_keys(storage: Storage, park: str) -> list[tuple[str, int, str]]:
    return [
        (k.device, k.seq, k.metric)
        for k in await storage.telemetry.reading_keys(park=park)
    ]


async def wait_stored(
    storage: Storage, park: str, expected: list[tuple[str, int, str]], timeout_s: float
) -> list[tuple[str, int, str]]:
    stored: list[tuple[str, int, str]] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        stored = await stored_keys(storage, park)
        if len(stored) >= len(expected):
            break
        await asyncio.sleep(0.5)
    return stored


def assert_exactly_once(
    stored: list[tuple[str, int, str]], expected: list[tuple[str, int, str]]
) -> None:
    missing = sorted(set(expected) - set(stored))
    extra = sorted(set(stored) - set(expected))
    dupes = len(stored) - len(set(stored))
    assert not missing, f"{len(missing)} readings missing, first {missing[:5]}"
    assert not extra, f"{len(extra)} readings nobody polled, first {extra[:5]}"
    assert dupes == 0, f"{dupes} duplicated readings"


@contextlib.asynccontextmanager
async def running_platform(
    settings: Settings,
) -> AsyncIterator[tuple[Storage, Bridge, Sink]]:
    """A migrated database with the bridge and the sink running in this loop.

    Yields once the bridge's MQTT subscription is in place (before that the broker
    would keep nothing for it); stops both at the end, also when the test fails.
    """
    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with Bridge(settings) as bridge, Sink(settings) as sink:
            tasks = [asyncio.create_task(bridge.run()), asyncio.create_task(sink.run())]
            try:
                await wait_for(
                    lambda: bridge.stats.subscribed, timeout_s=20, what="MQTT"
                )
                yield storage, bridge, sink
            finally:
                bridge.stop()
                sink.stop()
                await asyncio.gather(*tasks)
