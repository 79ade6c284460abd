"""The storage layer on plain PostgreSQL 15 (local services), one schema per test."""

from __future__ import annotations

import asyncio
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, date, datetime, timedelta

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from smartpark.errors import ConfigError, StorageError
from smartpark.settings import BulkMethod, DatabaseSettings
from smartpark.wire import Reading, TelemetryBatch
from storage import (
    Dialect,
    EpochRow,
    KafkaOffset,
    ReadingKey,
    RollupLevel,
    Storage,
    TelemetryRow,
    rows_from_batch,
)
from storage.series import text_array

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
TODAY_MS = int(T0.timestamp() * 1000)
MIGRATIONS = [
    "0001_telemetry", "0002_counter_reset", "0003_alerts", "0004_webhooks",
    "0005_device_epochs",
    "0006_series",
    "0007_api_keys",
    "0008_registry",
    "0009_webhook_secrets",
    "0010_marks",
    "0011_kpi_registry",
    "0012_device_data_types",
    "0013_rule_packs",
    "0014_archive",
    "0015_upstream",
    "0016_mqtt_accounts",
    "0017_no_raw_retention_policy",
    "0018_grafana_roles",
    "0019_rollup_log_append_only",
]  # fmt: skip


def settings(
    dsn: str, schema: str, bulk_method: BulkMethod = "copy"
) -> DatabaseSettings:
    return DatabaseSettings(
        dsn=SecretStr(dsn), schema=schema, dialect="postgres", bulk_method=bulk_method
    )


def rows_for(
    device: str, n: int, *, start: datetime = T0, step_s: int = 10
) -> list[TelemetryRow]:
    return [
        TelemetryRow(start + timedelta(seconds=i * step_s), "p1", "e1", device,
                     "active_power", float(i), "N", i)
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(params=["copy", "insert"])
async def storage(
    request: pytest.FixtureRequest, pg_dsn: str, db_schema: str
) -> AsyncIterator[Storage]:
    async with Storage(
        settings(pg_dsn, db_schema, bulk_method=request.param), clock=lambda: TODAY_MS
    ) as s:
        await s.migrate()
        yield s


async def test_migrate_is_idempotent_and_recorded(pg_dsn: str, db_schema: str) -> None:
    async with Storage(settings(pg_dsn, db_schema)) as s:
        assert s.dialect is Dialect.POSTGRES
        assert await s.pending_migrations() == MIGRATIONS
        with pytest.raises(ConfigError, match="not migrated"):
            await s.require_migrated()
        assert await s.migrate() == MIGRATIONS
        assert await s.migrate() == []
        await s.require_migrated()
        applied = await s.applied_migrations()
        assert [(m.version, m.name, m.dialect) for m in applied] == [
            (1, "telemetry", Dialect.POSTGRES),
            (2, "counter_reset", Dialect.POSTGRES),
            (3, "alerts", Dialect.POSTGRES),
            (4, "webhooks", Dialect.POSTGRES),
            (5, "device_epochs", Dialect.POSTGRES),
            (6, "series", Dialect.POSTGRES),
            (7, "api_keys", Dialect.POSTGRES),
            (8, "registry", Dialect.POSTGRES),
            (9, "webhook_secrets", Dialect.POSTGRES),
            (10, "marks", Dialect.POSTGRES),
            (11, "kpi_registry", Dialect.POSTGRES),
            (12, "device_data_types", Dialect.POSTGRES),
            (13, "rule_packs", Dialect.POSTGRES),
            (14, "archive", Dialect.POSTGRES),
            (15, "upstream", Dialect.POSTGRES),
            (16, "mqtt_accounts", Dialect.POSTGRES),
            (17, "no_raw_retention_policy", Dialect.POSTGRES),
            (18, "grafana_roles", Dialect.POSTGRES),
            (19, "rollup_log_append_only", Dialect.POSTGRES),
        ]
    # A second process (fresh Storage) sees the same state and applies nothing.
    async with Storage(DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)) as s:
        assert s.dialect is Dialect.POSTGRES
        assert await s.migrate() == []
        info = await s.info()
        assert info.row_counts["telemetry"] == 0
        assert len(info.partitions) == 9  # today-1 .. today+7


async def test_schema_keeps_its_dialect(pg_dsn: str, db_schema: str) -> None:
    async with Storage(settings(pg_dsn, db_schema)) as s:
        await s.migrate()
    wrong = DatabaseSettings(
        dsn=SecretStr(pg_dsn), schema=db_schema, dialect="timescale"
    )
    with pytest.raises(ConfigError, match="migrated as postgres"):
        async with Storage(wrong):
            pass


async def test_duplicates_are_not_stored_twice(storage: Storage) -> None:
    first = rows_for("m1", 100)
    result = await storage.telemetry.write(first)
    assert (result.inserted, result.duplicates) == (100, 0)
    # Overlap plus a duplicate inside the batch itself (redelivered record).
    second = first[50:] + rows_for("m1", 150)[100:] + [first[120 - 100 + 50]]
    result = await storage.telemetry.write(second)
    assert (result.inserted, result.duplicates) == (50, 51)
    keys = await storage.telemetry.reading_keys(device="m1")
    assert keys == [ReadingKey("m1", i, "active_power") for i in range(150)]
    assert await storage.telemetry.count_rows() == 150


def energy_rows(device: str, resets: dict[int, str], n: int) -> list[TelemetryRow]:
    """A counter series of ``n`` readings, ``resets`` flagging some by index."""
    return [
        TelemetryRow(T0 + timedelta(seconds=10 * i), "p1", "e1", device,
                     "active_energy", float(i), "N", i, resets.get(i))
        for i in range(n)
    ]  # fmt: skip


async def test_counter_resets_are_stored_and_read_back(storage: Storage) -> None:
    """Both write paths, and COPY's staging fallback (a batch with a duplicate)."""
    resets = {3: "rollover", 7: "replacement"}
    rows = energy_rows("m1", resets, 10)
    assert (await storage.telemetry.write(rows[:5])).inserted == 5
    # rows[4] again: COPY into telemetry fails, the staging table takes the batch.
    assert (await storage.telemetry.write(rows[4:])).inserted == 5
    stored = await storage.telemetry.readings(device="m1")
    assert stored == rows
    assert {r.seq: r.reset for r in stored if r.reset} == resets


async def test_the_database_refuses_an_unknown_reset(storage: Storage) -> None:
    with pytest.raises(StorageError, match="telemetry_reset_kind"):
        await storage.telemetry.write(energy_rows("m1", {0: "wrapped"}, 1))
    assert await storage.telemetry.count_rows() == 0


async def test_upgrade_keeps_old_rows_without_a_reset(
    pg_dsn: str, db_schema: str
) -> None:
    async with Storage(settings(pg_dsn, db_schema), clock=lambda: TODAY_MS) as s:
        assert await s.migrate(up_to=1) == ["0001_telemetry"]
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (time, park, enterprise, device, metric, value,"
                    " seq) VALUES (%s, 'p1', 'e1', 'm1', 'active_energy', 5, 1)"
                ).format(sql.Identifier(db_schema, "telemetry")),
                (T0,),
            )
        assert await s.pending_migrations() == MIGRATIONS[1:]
        await s.migrate()
        await s.telemetry.write(energy_rows("m1", {2: "replacement"}, 3)[2:])
        stored = await s.telemetry.readings(device="m1")
    assert [(r.seq, r.value, r.reset) for r in stored] == [
        (1, 5.0, None),
        (2, 2.0, "replacement"),
    ]


async def test_storage_by_series_migrates_rows_and_rollups_in_place(
    pg_dsn: str, db_schema: str
) -> None:
    """A database written before 0006 (text ids on every row) keeps every row,
    every rollup row and every partition; the new layout then takes new rows and
    refreshes the old rollups incrementally."""
    async with Storage(settings(pg_dsn, db_schema), clock=lambda: TODAY_MS) as s:
        await s.migrate(up_to=5)
        old = [
            (T0 + timedelta(days=d, seconds=10 * k), f"e{k % 2}", f"m{k % 3}",
             ("active_power", "cod")[k % 2], k / 4, k, "rollover" if k == 7 else None)
            for d in (0, 1)
            for k in range(40)
        ]  # fmt: skip
        async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
            t = sql.Identifier(db_schema, "telemetry")  # partitions: by migrate
            async with conn.cursor() as cur:
                await cur.executemany(
                    sql.SQL(
                        "INSERT INTO {} (time, park, enterprise, device, metric,"
                        " value, seq, reset) VALUES (%s, 'p1', %s, %s, %s, %s, %s, %s)"
                    ).format(t),
                    old,
                )
            # A rollup row whose raw rows retention has already dropped.
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (bucket, park, enterprise, device, metric, n, sum,"
                    " min, max) VALUES ('2020-01-01', 'p1', 'e9', 'gone',"
                    " 'active_power', 3, 6, 1, 3)"
                ).format(sql.Identifier(db_schema, "telemetry_1d"))
            )
            await conn.commit()
            cur = await conn.execute(
                sql.SQL(
                    "SELECT time, park, enterprise, device, metric, value, quality,"
                    " seq, reset FROM {} ORDER BY time, device, metric"
                ).format(t)
            )
            before = await cur.fetchall()
        assert len(before) == 80
        assert (await s.migrate())[0] == "0006_series"
        after = await s.telemetry.readings()
        assert [tuple(r[:9]) for r in after] == before
        assert {(r.data_type, r.stat) for r in after} == {("realtime", "value")}
        since, until = T0 - timedelta(days=3000), T0 + timedelta(days=3)
        [gone] = await s.telemetry.rollup(RollupLevel.DAY, start=since, end=until)
        assert (gone.device, gone.n, gone.sum) == ("gone", 3, 6.0)
        # The old rows are rolled up by series like new ones.
        await s.telemetry.refresh_rollups(T0, T0 + timedelta(days=2))
        days = await s.telemetry.rollup(RollupLevel.DAY, start=since, end=until)
        assert sum(d.n for d in days) == 80 + 3
        info = await s.info()
        assert {"telemetry_p20260301", "telemetry_p20260302"} <= set(info.partitions)
        assert info.row_counts["series"] == 7  # 6 (enterprise, device, metric) + gone
        # New rows land beside the old ones, and the rollups follow.
        await s.telemetry.write(rows_for("m1", 3, start=T0 + timedelta(hours=5)))
        await s.telemetry.refresh_rollups()
        days = await s.telemetry.rollup(
            RollupLevel.DAY,
            start=T0 - timedelta(hours=12),
            end=T0 + timedelta(hours=12),
            device="m1",
        )
        assert sum(d.n for d in days) == len(
            [
                r
                for r in await s.telemetry.readings(device="m1")
                if r.time.date() == T0.date()
            ]
        )


async def test_offsets_are_committed_with_the_rows(storage: Storage) -> None:
    await storage.telemetry.write(
        rows_for("m1", 10), offsets=[KafkaOffset("g", "t", 0, 10)]
    )
    await storage.telemetry.write(
        rows_for("m1", 20)[10:],
        offsets=[KafkaOffset("g", "t", 0, 20), KafkaOffset("g", "t", 3, 7)],
    )
    assert await storage.offsets.load("g", "t") == {0: 20, 3: 7}
    assert await storage.offsets.load("other", "t") == {}


async def test_failed_write_commits_neither_rows_nor_offsets(storage: Storage) -> None:
    await storage.telemetry.write(
        rows_for("m1", 5), offsets=[KafkaOffset("g", "t", 0, 5)]
    )
    batch = rows_for("m2", 300, start=T0 - timedelta(days=3))
    # The rows insert fine; the offsets violate next_offset >= 0 afterwards, so the
    # transaction fails after the rows were written into it.
    with pytest.raises(StorageError):
        await storage.telemetry.write(
            batch, offsets=[KafkaOffset("g", "t", 0, 305), KafkaOffset("g", "t", 1, -1)]
        )
    assert await storage.telemetry.count_rows(device="m2") == 0
    assert await storage.offsets.load("g", "t") == {0: 5}
    await storage.telemetry.refresh_rollups()
    day = await storage.telemetry.rollup(
        RollupLevel.DAY, start=T0 - timedelta(days=9), end=T0 + timedelta(days=9)
    )
    assert {r.device for r in day} == {"m1"}
    # The same batch goes through once the cause is gone (retry is safe).
    result = await storage.telemetry.write(
        batch, offsets=[KafkaOffset("g", "t", 0, 305)]
    )
    assert result.inserted == 300
    assert await storage.offsets.load("g", "t") == {0: 305}


async def test_partition_is_created_on_demand_for_an_old_day(storage: Storage) -> None:
    old = T0 - timedelta(days=400)
    before = (await storage.info()).partitions
    name = f"telemetry_p{old:%Y%m%d}"
    assert name not in before
    batch = rows_for("m1", 3, start=old) + rows_for("m1", 3, start=T0)
    assert (await storage.telemetry.write(batch)).inserted == 6
    after = (await storage.info()).partitions
    assert set(after) - set(before) == {name}
    assert (
        len(await storage.telemetry.readings(device="m1", end=T0 - timedelta(days=1)))
        == 3
    )


async def test_a_partition_dropped_elsewhere_is_recreated_on_retry(
    storage: Storage, pg_dsn: str, db_schema: str
) -> None:
    old = T0 - timedelta(days=100)
    await storage.telemetry.write(rows_for("m1", 2, start=old))
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # e.g. another retention
        conn.execute(
            sql.SQL("DROP TABLE {}").format(
                sql.Identifier(db_schema, f"telemetry_p{old:%Y%m%d}")
            )
        )
    batch = rows_for("m1", 3, start=old)
    with pytest.raises(StorageError):  # the cached belief fails once, retriably
        await storage.telemetry.write(batch)
    assert (await storage.telemetry.write(batch)).inserted == 3


async def test_retention_drops_old_partitions_and_keeps_rollups(
    storage: Storage,
) -> None:
    await storage.telemetry.write(rows_for("m1", 4, start=T0 - timedelta(days=40)))
    await storage.telemetry.write(rows_for("m1", 4, start=T0))
    await storage.telemetry.refresh_rollups()
    # rows no archive holds are kept, and named
    assert await storage.telemetry.apply_retention(keep_days=30) == (
        [], ["telemetry_p20260120"],
    )  # fmt: skip
    assert await storage.telemetry.count_rows() == 8
    dropped, kept = await storage.telemetry.apply_retention(
        keep_days=30, drop_unarchived=True
    )
    assert (dropped, kept) == (["telemetry_p20260120"], [])
    assert await storage.telemetry.count_rows() == 4
    daily = await storage.telemetry.rollup(
        RollupLevel.DAY, start=T0 - timedelta(days=50), end=T0 + timedelta(days=1)
    )
    assert [r.bucket.date() for r in daily] == [date(2026, 1, 20), date(2026, 3, 1)]
    assert (
        await storage.telemetry.ensure_partitions() == []
    )  # the window around today exists


async def test_rollups_equal_a_group_by_over_the_raw_rows(
    storage: Storage, pg_dsn: str, db_schema: str
) -> None:
    rng = random.Random(7)
    universe = [
        TelemetryRow(
            T0 + timedelta(seconds=rng.randrange(0, 3 * 86400)),
            "p1", f"e{d % 2}", f"m{d}", metric, rng.randrange(-1000, 1000) / 4, "N", k,
        )
        for k in range(3000)
        for d in [k % 5]
        for metric in [("active_power", "cod")[k % 2]]
    ]  # fmt: skip
    # Overlapping, shuffled batches: every row is delivered one to three times.
    for i in range(6):
        await storage.telemetry.write(rng.sample(universe, 1200))
        if i % 2:  # refreshes in between: buckets are recomputed, never added twice
            await storage.telemetry.refresh_rollups()
    await storage.telemetry.write(universe)
    assert await storage.telemetry.refresh_rollups() > 0
    assert await storage.telemetry.refresh_rollups() == 0  # the log is empty now

    stored = await storage.telemetry.readings()
    expected: dict[RollupLevel, dict[tuple[object, ...], list[float]]] = {}
    for level, width in ((RollupLevel.MINUTE, 60), (RollupLevel.HOUR, 3600),
                         (RollupLevel.DAY, 86400)):  # fmt: skip
        groups: dict[tuple[object, ...], list[float]] = defaultdict(list)
        for r in stored:
            epoch = int(r.time.timestamp())
            bucket = datetime.fromtimestamp(epoch - epoch % width, UTC)
            groups[(bucket, r.park, r.enterprise, r.device, r.metric)].append(r.value)
        expected[level] = groups
    for level, groups in expected.items():
        got = await storage.telemetry.rollup(
            level, start=T0 - timedelta(days=1), end=T0 + timedelta(days=4)
        )
        assert len(got) == len(groups)
        for g in got:
            values = groups[(g.bucket, g.park, g.enterprise, g.device, g.metric)]
            # Quarter values: the float sums are exact whatever the order.
            assert (g.n, g.sum, g.min, g.max) == (
                len(values),
                sum(values),
                min(values),
                max(values),
            )
    # And the same against SQL's own GROUP BY over the raw table.
    with psycopg.connect(pg_dsn) as conn:
        raw = conn.execute(
            sql.SQL(
                "SELECT date_bin('1 hour', time, 'epoch'), device, metric, count(*),"
                " sum(value) FROM {} t JOIN {} s ON s.id = t.series_id"
                " GROUP BY 1, 2, 3 ORDER BY 1, 2, 3"
            ).format(
                sql.Identifier(db_schema, "telemetry"),
                sql.Identifier(db_schema, "series"),
            )
        ).fetchall()
    hourly = await storage.telemetry.rollup(
        RollupLevel.HOUR, start=T0 - timedelta(days=1), end=T0 + timedelta(days=4)
    )
    assert raw == sorted((r.bucket, r.device, r.metric, r.n, r.sum) for r in hourly)


async def test_late_rows_update_an_already_refreshed_bucket(storage: Storage) -> None:
    await storage.telemetry.write(rows_for("m1", 6))  # one minute: 0, 10 .. 50 s
    await storage.telemetry.refresh_rollups()
    late = [r._replace(seq=100, time=r.time + timedelta(seconds=5), value=100.0)
            for r in rows_for("m1", 1)]  # fmt: skip
    await storage.telemetry.write(late)
    await storage.telemetry.refresh_rollups()
    [minute] = await storage.telemetry.rollup(
        RollupLevel.MINUTE, start=T0, end=T0 + timedelta(minutes=1)
    )
    assert (minute.n, minute.sum, minute.min, minute.max) == (7, 115.0, 0.0, 100.0)
    [day] = await storage.telemetry.rollup(
        RollupLevel.DAY, start=T0 - timedelta(days=1), end=T0
    )
    assert day.bucket == datetime(2026, 3, 1, tzinfo=UTC)
    assert day.n == 7


async def test_a_refresh_before_a_minute_leaves_it_logged_for_later(
    storage: Storage,
) -> None:
    """The sink's refresh passes the minute in progress as ``before``: the minutes
    before it are merged, that one stays in the log until a later refresh."""
    await storage.telemetry.write(rows_for("m1", 12))  # two minutes of rows
    second = T0 + timedelta(minutes=1)
    assert await storage.telemetry.refresh_rollups(before=second) == 1
    end = T0 + timedelta(minutes=2)
    minutes = await storage.telemetry.rollup(RollupLevel.MINUTE, start=T0, end=end)
    assert [(m.bucket, m.n) for m in minutes] == [(T0, 6)]
    assert await storage.telemetry.refresh_rollups() == 1
    minutes = await storage.telemetry.rollup(RollupLevel.MINUTE, start=T0, end=end)
    assert [(m.bucket, m.n) for m in minutes] == [(T0, 6), (second, 6)]


async def test_unreachable_database_is_a_storage_error(db_schema: str) -> None:
    s = Storage(
        DatabaseSettings(
            dsn=SecretStr("postgresql://postgres@127.0.0.1:9/none"), schema=db_schema
        ),
        connect_timeout_s=1,
    )
    with pytest.raises(StorageError, match="cannot connect"):
        await s.open()


async def test_closed_days_are_compacted_once(storage: Storage) -> None:
    """A day's partition has its indexes rebuilt once the day ended a day ago
    or more; the day being written is left alone, and nothing is lost."""
    old = rows_for("m1", 500, start=T0 - timedelta(days=2))
    await storage.telemetry.write(old)
    await storage.telemetry.write(rows_for("m1", 5))
    done = await storage.telemetry.compact_partitions()
    assert [c.partition for c in done] == ["telemetry_p20260227"]
    assert done[0].bytes_after > 0
    assert await storage.telemetry.compact_partitions() == []  # once
    assert len(await storage.telemetry.readings()) == 505
    # late rows still land in a compacted day
    late = [r._replace(time=r.time + timedelta(seconds=5)) for r in old[:3]]
    assert (await storage.telemetry.write(late)).inserted == 3


async def test_retention_drops_a_partition_the_archive_emptied(
    storage: Storage, db_schema: str
) -> None:
    old = T0 - timedelta(days=40)
    await storage.telemetry.write(rows_for("m1", 4, start=old))
    async with storage.connection() as conn:  # what archive retain does to a day
        await conn.execute(
            sql.SQL("DELETE FROM {}").format(
                sql.Identifier(db_schema, f"telemetry_p{old:%Y%m%d}")
            )
        )
    assert await storage.telemetry.apply_retention(keep_days=30) == (
        [f"telemetry_p{old:%Y%m%d}"], [],
    )  # fmt: skip


async def test_a_write_does_not_wait_for_a_refresh_of_its_minute(
    storage: Storage, pg_dsn: str, db_schema: str
) -> None:
    """A refresh deletes the minutes it takes off the log inside its transaction. A
    write marking the same minute meanwhile must not wait for that transaction (with
    the minute as the log's key it did: every batch of the current minute stalled
    for the whole refresh), and its rows reach the rollups at the next refresh."""
    await storage.telemetry.write(rows_for("m1", 3))  # 0, 10, 20 s of one minute
    async with (
        await psycopg.AsyncConnection.connect(pg_dsn) as held,
        held.transaction(),  # a refresh, between its delete and commit
    ):
        cur = await held.execute(
            sql.SQL("DELETE FROM {} RETURNING bucket").format(
                sql.Identifier(db_schema, "rollup_pending")
            )
        )
        assert [r[0] for r in await cur.fetchall()] == [T0]
        later = [r._replace(seq=10 + r.seq, time=r.time + timedelta(seconds=30))
                 for r in rows_for("m1", 3)]  # fmt: skip
        await asyncio.wait_for(storage.telemetry.write(later), timeout=5)
    await storage.telemetry.refresh_rollups()
    [minute] = await storage.telemetry.rollup(
        RollupLevel.MINUTE, start=T0, end=T0 + timedelta(minutes=1)
    )
    assert (minute.n, minute.sum) == (6, 0.0 + 1 + 2 + 0 + 1 + 2)


def polls_for(device: str, n: int, *, start_seq: int = 0) -> list[TelemetryBatch]:
    """``n`` polls of ``device``: energy (a counter reset at seq 3), power, and an
    hourly minimum of power (an interval series of its own)."""
    ts0 = int(T0.timestamp() * 1000)
    return [
        TelemetryBatch("p1", "e1", device, (
            Reading(s, "active_energy", float(s), "kWh", ts0 + s * 10_000,
                    reset="rollover" if s == 3 else None),
            Reading(s, "active_power", 2.5 * s, "kW", ts0 + s * 10_000, "D"),
            Reading(s, "active_power", 1.0, "kW", ts0 + s * 3_600_000,
                    data_type="hour", stat="min"),
        ))
        for s in range(start_seq, start_seq + n)
    ]  # fmt: skip


async def test_polls_are_stored_as_their_rows(storage: Storage) -> None:
    """write_polls (the sink's path) stores exactly what write() of the same
    polls' rows stores, creating the series it meets, and counts duplicates."""
    polls = polls_for("m1", 6)
    rows = [r for p in polls for r in rows_from_batch(p)]
    result = await storage.telemetry.write_polls(
        polls[:4], offsets=[KafkaOffset("g", "t", 0, 4)]
    )
    assert (result.inserted, result.duplicates) == (12, 0)
    # A redelivered poll beside new ones: COPY refuses, the staging table decides.
    result = await storage.telemetry.write_polls(
        polls[3:], offsets=[KafkaOffset("g", "t", 0, 6)]
    )
    assert (result.inserted, result.duplicates) == (6, 3)
    assert await storage.offsets.load("g", "t") == {0: 6}
    stored = await storage.telemetry.readings(device="m1")
    assert sorted(stored) == sorted(rows)
    # A restarted sink (empty cache) finds the same series and stores nothing twice.
    storage.telemetry.series.forget()
    result = await storage.telemetry.write_polls(polls)
    assert (result.inserted, result.duplicates) == (0, 18)
    await storage.telemetry.write_polls(polls_for("m1", 2, start_seq=6))
    assert await storage.telemetry.count_rows(device="m1") == 24


def _in_chunks(
    polls: list[TelemetryBatch], size: int
) -> Iterator[list[TelemetryBatch]]:
    for i in range(0, len(polls), size):
        yield polls[i : i + size]


async def test_a_stream_of_polls_is_stored_as_write_polls_stores_it(
    storage: Storage,
) -> None:
    """write_stream (the sink's path) with each reason to leave the stream for
    the careful way: a day whose partition is not known, a series not cached, a
    poll stored already (mid-stream); every row is stored once, the duplicates
    counted, the offsets committed with them."""
    polls = polls_for("m1", 8)
    # T0's day and the series are new: the first chunk goes the careful way
    result = await storage.telemetry.write_stream(
        _in_chunks(polls[:4], 2), offsets=[KafkaOffset("g", "t", 0, 4)]
    )
    assert (result.inserted, result.duplicates) == (12, 0)
    # known now; the second chunk repeats polls 2 and 3 (COPY refused mid-stream)
    result = await storage.telemetry.write_stream(
        _in_chunks([*polls[4:6], *polls[2:4], *polls[6:8]], 2),
        offsets=[KafkaOffset("g", "t", 0, 8)],
    )
    assert (result.inserted, result.duplicates) == (12, 6)
    # a device not cached yet in the last chunk
    result = await storage.telemetry.write_stream(
        _in_chunks([*polls_for("m1", 2, start_seq=8), *polls_for("m2", 2)], 2)
    )
    assert (result.inserted, result.duplicates) == (12, 0)
    # a known series on a day long gone, whose partition is not known
    old_ms = int((T0 - timedelta(days=400)).timestamp() * 1000)
    old = TelemetryBatch(
        "p1", "e1", "m1", (Reading(100, "active_power", 1.0, "kW", old_ms, "D"),)
    )
    result = await storage.telemetry.write_stream(_in_chunks([polls[0], old], 1))
    assert (result.inserted, result.duplicates) == (1, 3)
    assert await storage.offsets.load("g", "t") == {0: 8}
    stored = await storage.telemetry.readings(device="m1")
    expected = [r for p in [*polls_for("m1", 10), old] for r in rows_from_batch(p)]
    assert sorted(stored) == sorted(expected)
    assert await storage.telemetry.count_rows(device="m2") == 6


class _Refused(Exception):
    pass


@pytest.mark.parametrize("fails", ["in the stream", "before the commit"])
async def test_a_failed_stream_commits_nothing(storage: Storage, fails: str) -> None:
    """The iterator raising after a chunk was sent (a bug in decoding), or
    ``before_commit`` raising (the dead letters not acknowledged): no row, no
    offset, no epoch is committed, and the connection serves the next write."""
    polls = polls_for("m1", 6)
    await storage.telemetry.write_polls(polls[:1])  # day and series known: streamed
    epoch = EpochRow("p1", "e1", "m1", "00000000000000aa", 1, T0)

    def chunks() -> Iterator[list[TelemetryBatch]]:
        yield polls[1:3]
        yield polls[3:5]
        if fails == "in the stream":
            raise _Refused

    async def refuse() -> None:
        if fails == "before the commit":
            raise _Refused

    with pytest.raises(_Refused):
        await storage.telemetry.write_stream(
            chunks(), offsets=[KafkaOffset("g", "t", 0, 5)],
            epochs=lambda: [epoch], before_commit=refuse,
        )  # fmt: skip
    assert await storage.telemetry.count_rows(device="m1") == 3
    assert await storage.offsets.load("g", "t") == {}
    assert await storage.telemetry.epochs() == []
    result = await storage.telemetry.write_stream(
        _in_chunks(polls[1:], 2), offsets=[KafkaOffset("g", "t", 0, 6)],
        epochs=lambda: [epoch],
    )  # fmt: skip
    assert (result.inserted, result.duplicates) == (15, 0)
    assert await storage.telemetry.epochs() == [epoch]


async def test_the_server_stores_a_chunk_while_the_next_is_made(
    pg_dsn: str, db_schema: str
) -> None:
    """The point of write_stream: while the iterator makes a chunk, the server
    is already inserting the rows of the chunks before it (COPY progress seen
    from another connection), so decoding and inserting overlap."""
    async with Storage(settings(pg_dsn, db_schema), clock=lambda: TODAY_MS) as s:
        await s.migrate()  # the series and the day made known first:
        await s.telemetry.write_polls([polls_for(f"d{d}", 1)[0] for d in range(200)])
        polls = [p for d in range(200) for p in polls_for(f"d{d}", 9, start_seq=1)]
        seen: list[int] = []

        def chunks() -> Iterator[list[TelemetryBatch]]:
            with psycopg.connect(pg_dsn, autocommit=True) as other:
                for i, chunk in enumerate(_in_chunks(polls, 200)):
                    if i == 5:  # 3 000 rows sent: wait until the server has some
                        for _ in range(100):
                            row = other.execute(
                                "SELECT tuples_processed FROM pg_stat_progress_copy"
                                " WHERE relid = to_regclass(%s)",
                                (f"{db_schema}.telemetry",),
                            ).fetchone()
                            if row and row[0] > 0:
                                seen.append(row[0])
                                break
                            time.sleep(0.05)
                    yield chunk

        result = await s.telemetry.write_stream(chunks())
    assert (result.inserted, result.duplicates) == (len(polls) * 3, 0)
    assert seen, "no row inserted while the iterator was still making chunks"


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["a"],
        ["NULL", "null", ""],
        ['x"y', "b\\c", '\\"', "{,}", " sp ", "é"],
    ],
)
async def test_text_arrays_arrive_as_they_were(pg_dsn: str, values: list[str]) -> None:
    async with await psycopg.AsyncConnection.connect(pg_dsn) as conn:
        cur = await conn.execute("SELECT %s::text[]", (text_array(values),))
        assert await cur.fetchone() == (values,)
