"""Kafka topics read back, and the offline rule core over them, for rule tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from rules.engine import Engine
from rules.model import Obs
from rules.pack import load_pack
from smartpark import wire
from smartpark.settings import Settings
from storage import Storage

FAR_FUTURE_MS = 2**62


async def consume_all(
    settings: Settings, topic: str, done: Callable[[list[tuple[int, bytes]]], bool]
) -> list[tuple[int, bytes]]:
    """(partition, value) of the records of ``topic`` in partition order, until
    ``done`` says enough (the topic has the platform's partition count)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    out: list[tuple[int, bytes]] = []
    try:
        parts = [TopicPartition(topic, p) for p in range(settings.kafka.partitions)]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        async with asyncio.timeout(60):
            while not done(out):
                got = await consumer.getmany(timeout_ms=500)
                for tp, recs in got.items():
                    out += [(tp.partition, r.value or b"") for r in recs]
    finally:
        await consumer.stop()
    return out


def offline_events(
    pack_path: Path, records: list[tuple[int, bytes]]
) -> list[dict[str, Any]]:
    """The core over each partition's records in order: what must be raised."""
    pack = load_pack(pack_path)
    engines: dict[int, Engine] = {}
    out = []
    for partition, value in records:
        decoded = wire.decode_message(value, now_ms=FAR_FUTURE_MS)
        engine = engines.setdefault(partition, Engine(pack))
        for b in decoded.batches:  # a device's, or several (a gateway's record)
            for obs in batch_obs(b):
                out += [e.to_json() for e in engine.feed(obs)]
    return out


def batch_obs(b: wire.TelemetryBatch) -> list[Obs]:
    """A telemetry batch's readings as the runner feeds them to the core."""
    return [
        Obs(
            r.ts_ms, b.park, b.enterprise, b.device, r.metric, r.value, r.quality,
            r.seq, r.reset,
        )
        for r in b.readings
    ]  # fmt: skip


async def wait_caught_up(storage: Storage, settings: Settings, records: int) -> None:
    """Until the runner's stored offsets cover ``records`` telemetry records."""
    async with asyncio.timeout(120):
        while True:
            states = await storage.alerts.states(
                settings.rules.group_id, settings.kafka.telemetry_topic
            )
            if sum(s.next_offset for s in states) >= records:
                return
            await asyncio.sleep(0.5)


def by_enterprise(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Event ids per enterprise, in order: each enterprise is one partition."""
    out: dict[str, list[str]] = {}
    for e in events:
        out.setdefault(e["scope"]["enterprise"], []).append(e["event_id"])
    return out
