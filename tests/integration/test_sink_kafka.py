"""The Kafka → PostgreSQL sink against the real Kafka and PostgreSQL.

Each test owns a topic prefix, a consumer group and a schema. "Exactly once" is
checked on (device, seq, metric) of every stored reading, and on the records each
sink instance processed (a record processed twice would show in the sum).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql
from pydantic import SecretStr

from ingest.sink import Sink
from smartpark.clock import system_ms
from smartpark.errors import ConfigError
from smartpark.settings import DatabaseSettings, KafkaSettings, Settings, SinkSettings
from smartpark.wire import (
    GatewayBatch,
    Reading,
    TelemetryBatch,
    encode_batch,
    encode_gateway,
)
from storage import ReadingKey, RollupLevel, Storage
from stream.kafka import DLQ_REASON, DLQ_SOURCE, ensure_topics, make_producer
from tests.support.clients import consume_until

pytestmark = pytest.mark.integration

Record = tuple[bytes | None, bytes | None]  # (key, value)


@pytest.fixture
def settings(
    pg_dsn: str, db_schema: str, kafka_bootstrap: str, topic_prefix: str, uid: str
) -> Settings:
    return Settings(
        kafka=KafkaSettings(bootstrap=kafka_bootstrap, topic_prefix=topic_prefix),
        database=DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema),
        sink=SinkSettings(
            group_id=f"sink-{uid}", batch_max_records=50, batch_max_wait_ms=100
        ),
    )


@pytest.fixture
async def migrated(settings: Settings) -> AsyncIterator[Storage]:
    """The migrated schema, and a Storage to inspect it with."""
    async with Storage(settings.database) as storage:
        await storage.migrate()
        yield storage


def telemetry(
    park: str, enterprises: int, devices: int, seqs: range
) -> tuple[list[Record], set[ReadingKey]]:
    """Wire batches keyed by enterprise (two readings each) and the keys they carry."""
    now = system_ms()
    records: list[Record] = []
    keys: set[ReadingKey] = set()
    for seq in seqs:
        for e in range(enterprises):
            for d in range(devices):
                device = f"{park}-e{e}-d{d}"
                ts = now - 1000 * (1000 - seq)
                batch = TelemetryBatch(park, f"e{e}", device, (
                    Reading(seq, "active_energy", 100.0 + seq, "kWh", ts),
                    Reading(seq, "active_power", 5.0, "kW", ts),
                ))  # fmt: skip
                records.append((f"e{e}".encode(), encode_batch(batch)))
                keys |= {
                    ReadingKey(device, seq, "active_energy"),
                    ReadingKey(device, seq, "active_power"),
                }
    return records, keys


async def produce(
    settings: Settings, records: list[Record], *, pause_every: int = 0
) -> dict[int, int]:
    """Produce to the telemetry topic; return the next offset per partition."""
    await ensure_topics(settings.kafka)
    producer = make_producer(settings.kafka, client_id="test-producer")
    await producer.start()
    ends: dict[int, int] = {}
    try:
        for i, (key, value) in enumerate(records):
            meta = await (
                await producer.send(settings.kafka.telemetry_topic, value, key=key)
            )
            ends[meta.partition] = max(ends.get(meta.partition, 0), meta.offset + 1)
            if pause_every and i % pause_every == pause_every - 1:
                await asyncio.sleep(0.05)
    finally:
        await producer.stop()
    return ends


async def until(
    predicate: Callable[[], Awaitable[bool]], *, timeout_s: float, what: str
) -> None:
    deadline = time.monotonic() + timeout_s
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.2)


def check(predicate: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return predicate()

    return wrapped


async def run_sink(
    settings: Settings,
    done: Callable[[Sink], Awaitable[bool]],
    *,
    timeout_s: float = 60,
) -> Sink:
    async with Sink(settings) as sink:
        task = asyncio.create_task(sink.run())
        try:
            await until(lambda: done(sink), timeout_s=timeout_s, what="the sink")
        finally:
            sink.stop()
            await asyncio.wait_for(task, 30)
    return sink


async def test_rows_exactly_once_and_invalid_records_dead_lettered(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    valid, keys = telemetry(park_id, 3, 3, range(1, 21))
    first = valid[0][1]
    assert first is not None
    invalid: list[Record] = [
        (b"e0", b"not json"),
        (b"e1", json.dumps({"v": 99, "park": park_id}).encode()),
        (b"e2", first.replace(b"active_power", b"no_such_metric")),
        (b"e0", None),  # a tombstone has no value at all
    ]
    redelivered = valid[:15]  # the bridge is at-least-once
    records = valid[:100] + invalid[:2] + valid[100:] + redelivered + invalid[2:]
    ends = await produce(settings, records)

    async def all_consumed(sink: Sink) -> bool:
        return sink.stats.records == len(records)

    sink = await run_sink(settings, all_consumed)

    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    assert await migrated.telemetry.count_rows(park=park_id) == len(keys)
    assert sink.stats.rows_inserted == len(keys)
    assert sink.stats.duplicates == 2 * len(redelivered)
    assert sink.stats.dead_letters == len(invalid)
    assert (
        await migrated.offsets.load(
            settings.sink.group_id, settings.kafka.telemetry_topic
        )
        == ends
    )

    letters = await consume_until(
        settings.kafka.bootstrap,
        settings.kafka.deadletter_topic,
        lambda r: len(r) >= len(invalid),
        timeout_s=20,
    )
    assert sorted(r.value or b"" for r in letters) == sorted(
        v or b"" for _, v in invalid
    )
    source = re.compile(rf"kafka:{re.escape(settings.kafka.telemetry_topic)}/\d+/\d+")
    sources = [dict(r.headers)[DLQ_SOURCE].decode() for r in letters]
    assert all(source.fullmatch(s) for s in sources), sources
    assert len(set(sources)) == len(invalid)
    reasons = sorted(dict(r.headers)[DLQ_REASON].decode() for r in letters)
    assert any("not JSON" in r for r in reasons)
    assert any("unsupported schema version" in r for r in reasons)
    assert any("unknown metric" in r for r in reasons)


async def reset_kafka_offsets(settings: Settings, partitions: int) -> None:
    """Commit offset 0 for the group in Kafka, so only the DB knows the position."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka.bootstrap,
        group_id=settings.sink.group_id,
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        tps = [
            TopicPartition(settings.kafka.telemetry_topic, p) for p in range(partitions)
        ]
        consumer.assign(tps)
        await consumer.commit(dict.fromkeys(tps, 0))
    finally:
        await consumer.stop()


async def test_stop_and_restart_mid_stream_resumes_from_db_offsets(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    records, keys = telemetry(park_id, 4, 2, range(1, 51))  # 400 records
    producing = asyncio.create_task(produce(settings, records, pause_every=20))

    async def some_consumed(sink: Sink) -> bool:
        return sink.stats.records >= 100

    first = await run_sink(settings, some_consumed)
    assert not producing.done(), "the first sink should stop mid-stream"
    ends = await producing
    await reset_kafka_offsets(settings, settings.kafka.partitions)

    async def rest_consumed(sink: Sink) -> bool:
        return first.stats.records + sink.stats.records >= len(records)

    second = await run_sink(settings, rest_consumed)
    # Nothing was processed twice: the second sink started where the DB said.
    assert first.stats.records + second.stats.records == len(records)
    assert first.stats.duplicates == second.stats.duplicates == 0
    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    assert await migrated.telemetry.count_rows(park=park_id) == len(keys)
    assert (
        await migrated.offsets.load(
            settings.sink.group_id, settings.kafka.telemetry_topic
        )
        == ends
    )


async def test_revocation_waits_for_the_batch_in_flight(
    settings: Settings, migrated: Storage, park_id: str, pg_dsn: str, db_schema: str
) -> None:
    records, keys = telemetry(park_id, 8, 2, range(1, 31))  # 480 records
    half = len(records) // 2
    await produce(settings, records[:half])
    async with Sink(settings) as a:
        task_a = asyncio.create_task(a.run())
        await until(check(lambda: a.stats.records == half), timeout_s=60, what="a")
        with psycopg.connect(pg_dsn) as blocker:
            # Hold the offsets table: a's next batch stays in flight, mid-transaction.
            blocker.execute(
                sql.SQL("LOCK TABLE {} IN EXCLUSIVE MODE").format(
                    sql.Identifier(db_schema, "kafka_offsets")
                )
            )
            await produce(settings, records[half:])

            async def a_blocked() -> bool:
                with psycopg.connect(pg_dsn) as conn:
                    row = conn.execute(
                        "SELECT count(*) FROM pg_locks WHERE NOT granted"
                    ).fetchone()
                return row is not None and row[0] > 0

            await until(a_blocked, timeout_s=30, what="a's batch to block")

            async def release_later() -> None:
                await asyncio.sleep(4)
                blocker.commit()

            release = asyncio.create_task(release_later())
            # b joins: the group rebalances while a's batch is in flight, and b's
            # start waits for a's revocation, which waits for that batch.
            async with Sink(settings) as b:
                assert release.done(), "b was assigned before a's batch finished"
                task_b = asyncio.create_task(b.run())

                async def all_stored() -> bool:
                    return await migrated.telemetry.count_rows(park=park_id) == len(
                        keys
                    )

                await until(all_stored, timeout_s=60, what="all rows")
                b.stop()
                await task_b
        a.stop()
        await task_a
    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    # b started where a's in-flight batch ended: nothing was written twice.
    assert a.stats.duplicates + b.stats.duplicates == 0
    assert a.stats.rows_inserted + b.stats.rows_inserted == len(keys)
    assert a.stats.records + b.stats.records == len(records)


async def test_database_failure_is_retried_without_loss(
    settings: Settings, migrated: Storage, park_id: str, pg_dsn: str, db_schema: str
) -> None:
    records, keys = telemetry(park_id, 2, 2, range(1, 31))  # 120 records
    offsets = sql.Identifier(db_schema, "kafka_offsets")
    async with Sink(settings) as sink:
        task = asyncio.create_task(sink.run())
        await produce(settings, records[:40])
        await until(
            check(lambda: sink.stats.records == 40), timeout_s=60, what="first part"
        )
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO offsets_away").format(offsets)
            )
        await produce(settings, records[40:])
        await until(
            check(lambda: sink.stats.retries >= 2), timeout_s=60, what="retries"
        )
        assert (
            await migrated.telemetry.count_rows(park=park_id) == 80
        )  # nothing of the failing batches
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("ALTER TABLE {} RENAME TO kafka_offsets").format(
                    sql.Identifier(db_schema, "offsets_away")
                )
            )
        await until(
            check(lambda: sink.stats.records == len(records)),
            timeout_s=60,
            what="catch-up",
        )
        sink.stop()
        await task
    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    assert sink.stats.rows_inserted == len(keys)
    assert sink.stats.duplicates == 0


async def test_refuses_to_start_on_an_unmigrated_schema(settings: Settings) -> None:
    with pytest.raises(ConfigError, match="smartpark db migrate"):
        async with Sink(settings):
            pass


async def test_the_sink_keeps_the_rollups_up_to_date_off_its_write_loop(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    """Plain PostgreSQL: a refresh task of the sink's own merges what was written
    into the minute, hour and day rollups, while the write loop goes on."""
    settings.sink.rollup_refresh_ms = 300
    valid, keys = telemetry(park_id, 2, 2, range(1, 31))
    await produce(settings, valid)

    async def rolled_up(sink: Sink) -> bool:
        if sink.stats.records < len(valid) or sink.stats.rollup_refreshes < 2:
            return False
        hours = await migrated.telemetry.rollup(
            RollupLevel.HOUR,
            start=datetime.now(UTC) - timedelta(days=2),
            end=datetime.now(UTC) + timedelta(days=1),
            park=park_id,
        )
        return sum(h.n for h in hours) == len(keys)

    sink = await run_sink(settings, rolled_up)
    assert sink.stats.rollup_failures == 0
    assert sink.stats.rollup_minutes > 0
    days = await migrated.telemetry.rollup(
        RollupLevel.DAY,
        start=datetime.now(UTC) - timedelta(days=2),
        end=datetime.now(UTC) + timedelta(days=1),
        park=park_id,
    )
    assert sum(d.n for d in days) == len(keys)


async def test_a_new_outbox_epoch_is_recorded_once_with_its_first_poll(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    """A gateway whose outbox was replaced starts at seq 1 again under a new epoch:
    both epochs are recorded (once each, with their first poll), and the readings of
    both are stored."""
    now = system_ms()
    device = f"{park_id}-m1"
    old, new = "00000000000000aa", "00000000000000bb"

    def batch(epoch: str | None, seq: int, ts: int) -> Record:
        reading = Reading(seq, "active_power", float(seq), "kW", ts)
        b = TelemetryBatch(park_id, "e0", device, (reading,), epoch)
        return b"e0", encode_batch(b)

    records = [batch(old, s, now - 100_000 + s * 1000) for s in range(1, 6)]
    records += [batch(new, s, now - 50_000 + s * 1000) for s in range(1, 4)]
    records += [batch(None, 4, now - 40_000)]  # an agent without epochs still works
    records += records[:2]  # redelivered: nothing recorded twice
    await produce(settings, records)

    async def all_consumed(sink: Sink) -> bool:
        return sink.stats.records == len(records)

    await run_sink(settings, all_consumed)
    epochs = await migrated.telemetry.epochs(device=device)
    assert [(e.epoch, e.first_seq) for e in epochs] == [(old, 1), (new, 1)]
    assert await migrated.telemetry.count_rows(park=park_id) == 9


async def test_gateway_records_are_stored_a_row_a_reading_of_every_device(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    """A gateway's record (wire version 2) carries several devices' polls: each
    reading is stored under its own device, each device's epoch recorded, a
    redelivered record is stored once, and device records between them still work."""
    records, keys = telemetry(park_id, 1, 3, range(1, 6))  # version 1, devices d0-d2
    now = system_ms()
    epochs = {f"{park_id}-g{d}": f"{d:016x}" for d in range(4)}
    for seq in range(1, 6):
        ts = now - 1000 * (1000 - seq)
        batches = []
        for device, epoch in epochs.items():
            readings = (
                Reading(seq, "active_energy", 100.0 + seq, "kWh", ts),
                Reading(seq, "active_power", 5.0, "kW", ts),
            )
            batches.append(TelemetryBatch(park_id, "e0", device, readings, epoch))
            keys |= {
                ReadingKey(device, seq, "active_energy"),
                ReadingKey(device, seq, "active_power"),
            }
        gateway = GatewayBatch(park_id, "e0", "agent.e0", tuple(batches))
        records.append((b"e0", encode_gateway(gateway)))
    records += records[-2:]  # redelivered
    await produce(settings, records)

    async def all_consumed(sink: Sink) -> bool:
        return sink.stats.records == len(records)

    sink = await run_sink(settings, all_consumed)
    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    assert sink.stats.rows_inserted == len(keys) == 15 * 2 + 20 * 2
    assert sink.stats.duplicates == 2 * 4 * 2
    assert sink.stats.dead_letters == 0
    for device, epoch in epochs.items():
        stored = await migrated.telemetry.epochs(device=device)
        assert [(e.epoch, e.first_seq) for e in stored] == [(epoch, 1)]


@pytest.mark.parametrize(
    ("linger_ms", "batches"), [(2000, range(1, 3)), (0, range(4, 99))]
)
async def test_a_batch_lingers_for_the_records_that_follow(
    settings: Settings, migrated: Storage, linger_ms: int, batches: range
) -> None:
    """Records produced 50 ms apart: with a linger they go in one or two
    transactions; without one (the control) each getmany is a batch of its own."""
    sink_settings = settings.sink.model_copy(update={"batch_linger_ms": linger_ms})
    settings = settings.model_copy(update={"sink": sink_settings})
    records, keys = telemetry(
        settings.kafka.topic_prefix.strip("."), 1, 1, range(1, 13)
    )
    await ensure_topics(settings.kafka)
    async with Sink(settings) as sink:
        task = asyncio.create_task(sink.run())
        try:
            await until(
                check(lambda: bool(sink.assigned)), timeout_s=60, what="assignment"
            )
            await produce(settings, records, pause_every=1)
            await until(
                check(lambda: sink.stats.rows_inserted == len(keys)),
                timeout_s=60,
                what="every row",
            )
        finally:
            sink.stop()
            await asyncio.wait_for(task, 30)
    assert sink.stats.batches in batches, sink.stats


async def test_a_batch_holds_at_most_its_bytes_and_the_rest_follows_in_order(
    settings: Settings, migrated: Storage, park_id: str
) -> None:
    """24 records waiting, about three records' worth of bytes a batch: at least
    eight transactions, every row stored once, the offsets at the end. (Without
    the cap they are one batch: the linger test's control.)"""
    records, keys = telemetry(park_id, 2, 2, range(1, 7))
    size = max(len(v or b"") for _, v in records)
    sink_settings = settings.sink.model_copy(
        update={"batch_max_bytes": 3 * size, "batch_linger_ms": 0}
    )
    settings = settings.model_copy(update={"sink": sink_settings})
    ends = await produce(settings, records)  # all waiting before the sink starts

    async def all_stored(sink: Sink) -> bool:
        return sink.stats.rows_inserted == len(keys)

    sink = await run_sink(settings, all_stored)
    assert sink.stats.batches >= len(records) // 3, sink.stats
    assert sink.stats.duplicates == 0
    assert set(await migrated.telemetry.reading_keys(park=park_id)) == keys
    assert (
        await migrated.offsets.load(
            settings.sink.group_id, settings.kafka.telemetry_topic
        )
        == ends
    )
