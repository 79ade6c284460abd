"""Data marks in the live rules runner, on real Kafka and PostgreSQL: a mark
inserted while the runner runs changes the verdict of a closed window with a
``revised`` event stored in ``alert_events`` — within ``allowed_lateness`` from the
engine's own state, beyond it from stored telemetry — and a withdrawal revises it
back. Marks are inserted with plain SQL, as the marks API would store them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from psycopg import sql

from rules.runner import RulesRunner
from smartpark import wire
from smartpark.settings import Settings
from storage import Storage, TelemetryRow
from tests.support.clients import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACK = """\
pack: marks-test
version: "1"
watermark_delay: 0
allowed_lateness: 10min
rules:
  - {id: so2-10min, kind: window, metric: so2, window: 10min, limit: 35}
"""
T0 = 1_704_067_200_000  # 2024-01-01 00:00 UTC
MIN = 60_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# so2 at 50 mg/m3 at 00:01, 00:02, 00:03: the window 00:00-00:10 means 50 > 35
SO2 = [(T0 + i * MIN, 50.0) for i in (1, 2, 3)]


def at(ms: int) -> datetime:
    return EPOCH + timedelta(milliseconds=ms)


def fast(settings: Settings) -> Settings:
    rules = settings.rules.model_copy(update={"marks_poll_ms": 200})
    return settings.model_copy(update={"rules": rules})


async def produce(settings: Settings, batches: list[wire.TelemetryBatch]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for b in batches:  # keyed by enterprise, as the bridge does
            await producer.send_and_wait(
                settings.kafka.telemetry_topic,
                wire.encode_batch(b),
                key=b.enterprise.encode(),
            )
    finally:
        await producer.stop()


def so2_batches(park: str) -> list[wire.TelemetryBatch]:
    return [
        wire.TelemetryBatch(park, "e1", "s1", (wire.Reading(n, "so2", v, "mg/m3", ts),))
        for n, (ts, v) in enumerate(SO2, 1)
    ]


def tick(park: str, seq: int, ts: int) -> wire.TelemetryBatch:
    """A reading no rule reads, in e1's partition: it only moves the watermark."""
    return wire.TelemetryBatch(
        park, "e1", "clock", (wire.Reading(seq, "nh3", 1.0, "mg/m3", ts),)
    )


async def insert_mark(
    storage: Storage, park: str, *, start: int, end: int,
    supersedes: int | None = None, withdrawn: bool = False,
) -> int:  # fmt: skip
    async with storage.connection() as conn:
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} (park, enterprise, device, metric, start_at, end_at,"
                " kind, invalid, reason, origin, created_by, supersedes, withdrawn)"
                " VALUES (%s, 'e1', 's1', NULL, %s, %s, 'startup', true,"
                " 'boiler start-up', 'enterprise', 'key-1', %s, %s) RETURNING id"
            ).format(sql.Identifier(storage.schema, "marks")),
            (park, at(start), at(end), supersedes, withdrawn),
        )
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def stored(storage: Storage, park: str) -> list[dict[str, Any]]:
    return [e.body for e in await storage.alerts.events(park=park)]


async def until_kinds(
    storage: Storage, park: str, kinds: list[str]
) -> list[dict[str, Any]]:
    async with asyncio.timeout(90):
        while True:
            events = await stored(storage, park)
            if [e["kind"] for e in events] == kinds:
                return events
            assert len(events) <= len(kinds), events
            await asyncio.sleep(0.2)


@asynccontextmanager
async def running(settings: Settings, pack_path: Path) -> AsyncIterator[RulesRunner]:
    async with RulesRunner(settings, pack_path) as runner:
        task = asyncio.create_task(runner.run())
        try:
            yield runner
        finally:
            runner.stop()
            await task


async def test_a_late_mark_revises_a_closed_window_and_its_withdrawal_back(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    settings = fast(platform)
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with running(settings, pack_path) as runner:
            # the window closes at 00:10 (lateness 10 min: held until 00:20)
            await produce(
                settings, [*so2_batches(park_id), tick(park_id, 1, T0 + 10 * MIN)]
            )
            [opened] = await until_kinds(storage, park_id, ["opened"])
            assert (opened["value"], opened["at_ms"]) == (50.0, T0 + 10 * MIN)

            mark_id = await insert_mark(storage, park_id, start=T0, end=T0 + 10 * MIN)
            events = await until_kinds(storage, park_id, ["opened", "revised"])
            applied = events[1]
            # every reading marked: 0 valid < 1 -> insufficient data, no value
            assert applied["value"] is None
            assert applied["evidence"]["verdict"] == "insufficient_data"
            assert applied["evidence"]["previous"] == {
                "verdict": "breach",
                "value": 50.0,
            }
            assert applied["evidence"]["counts"]["excluded_mark"] == 3
            assert (
                applied["evidence"]["mark"]["id"],
                applied["evidence"]["mark"]["change"],
            ) == (mark_id, "applied")
            assert applied["window"] == {"start_ms": T0, "end_ms": T0 + 10 * MIN}

            # the enterprise withdraws it: the data counts again
            await insert_mark(
                storage, park_id, start=T0, end=T0 + 10 * MIN,
                supersedes=mark_id, withdrawn=True,
            )  # fmt: skip
            events = await until_kinds(
                storage, park_id, ["opened", "revised", "revised"]
            )
            lifted = events[2]
            assert (lifted["value"], lifted["evidence"]["verdict"]) == (50.0, "breach")
            assert lifted["evidence"]["mark"]["change"] == "lifted"
            assert runner.stats.mark_events == 2


async def test_a_mark_beyond_lateness_is_rejudged_from_stored_telemetry(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    settings = fast(platform)
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        # what the sink stored of s1
        await storage.telemetry.write(
            [TelemetryRow(at(ts), park_id, "e1", "s1", "so2", v, "N", n)
             for n, (ts, v) in enumerate(SO2, 1)]
        )  # fmt: skip
        batches = [
            *so2_batches(park_id),
            tick(park_id, 1, T0 + 10 * MIN),  # closes 00:00-00:10
            tick(park_id, 2, T0 + 30 * MIN),  # 00:10 + 10 min lateness is past
        ]
        async with running(settings, pack_path) as runner:
            await produce(settings, batches)
            await until_kinds(storage, park_id, ["opened"])
            await wait_for(
                lambda: runner.stats.readings == 5, timeout_s=60, what="all read"
            )
            mark_id = await insert_mark(storage, park_id, start=T0, end=T0 + 5 * MIN)
            events = await until_kinds(storage, park_id, ["opened", "revised"])
        revised = events[1]
        assert revised["evidence"]["rejudged"] == "stored_telemetry"
        assert revised["evidence"]["verdict"] == "insufficient_data"
        assert revised["evidence"]["previous"] == {"verdict": "breach", "value": 50.0}
        assert revised["evidence"]["mark"]["id"] == mark_id
        assert revised["at_ms"] == T0 + 10 * MIN

        # A restart reads the recent marks again: nothing is stored twice.
        async with running(settings, pack_path) as again:
            await wait_for(
                lambda: again.stats.mark_polls >= 3, timeout_s=60, what="polls"
            )
            assert again.stats.events == 0
        assert [e["event_id"] for e in await stored(storage, park_id)] == [
            e["event_id"] for e in events
        ]


async def review(storage: Storage, mark_id: int, verdict: str) -> None:
    async with storage.connection() as conn:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (mark_id, verdict, reason, reviewed_by)"
                " VALUES (%s, %s, 'checked against the DCS log', 'regulator-1')"
            ).format(sql.Identifier(storage.schema, "mark_reviews")),
            (mark_id, verdict),
        )


async def test_a_regulator_rejecting_then_accepting_a_mark_revises_each_time(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    settings = fast(platform)
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        # entered before the data: the window is judged with it, no alert
        mark_id = await insert_mark(storage, park_id, start=T0, end=T0 + 10 * MIN)
        async with running(settings, pack_path) as runner:
            await wait_for(
                lambda: runner.stats.mark_polls >= 1, timeout_s=60, what="poll"
            )
            await produce(
                settings, [*so2_batches(park_id), tick(park_id, 1, T0 + 10 * MIN)]
            )
            [first] = await until_kinds(storage, park_id, ["insufficient_data"])
            assert first["evidence"]["marks"] == [mark_id]
            # rejected: judged as if unmarked -> the breach, as a revision
            await review(storage, mark_id, "rejected")
            events = await until_kinds(
                storage, park_id, ["insufficient_data", "revised"]
            )
            assert (events[1]["value"], events[1]["evidence"]["verdict"]) == (
                50.0,
                "breach",
            )
            assert events[1]["evidence"]["mark"]["change"] == "lifted"
            # accepted on appeal: in force again
            await review(storage, mark_id, "accepted")
            events = await until_kinds(
                storage, park_id, ["insufficient_data", "revised", "revised"]
            )
            assert events[2]["evidence"]["verdict"] == "insufficient_data"
            assert events[2]["evidence"]["mark"]["change"] == "applied"
