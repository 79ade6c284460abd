"""The storage layer on the TimescaleDB build on PGlite (services up --with-timescale).

PGlite serves one connection at a time: each test closes its Storage before it opens
a plain connection, and the schema fixture's connections are closed around the test.
There is no COPY there, so the INSERT path (bulk_method="insert") is what runs.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from smartpark.errors import ConfigError
from smartpark.settings import DatabaseSettings, DialectSetting
from storage import Dialect, KafkaOffset, RollupLevel, Storage, TelemetryRow
from storage.migrate import COMMON, available, migrations_root

pytestmark = [pytest.mark.integration, pytest.mark.timescale]

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def ts_schema(timescale_dsn: str, uid: str) -> Iterator[str]:
    name = f"t_{uid}"
    yield name
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(name))
        )


def ts_settings(
    dsn: str, schema: str, dialect: DialectSetting = "auto"
) -> DatabaseSettings:
    return DatabaseSettings(
        dsn=SecretStr(dsn), schema=schema, dialect=dialect, bulk_method="insert"
    )


def rows(n: int, device: str = "m1") -> list[TelemetryRow]:
    return [
        TelemetryRow(T0 + timedelta(seconds=7 * i), "p1", "e1", device,
                     ("active_power", "cod")[i % 2], (i % 40) / 4, "N", i // 2)
        for i in range(n)
    ]  # fmt: skip


async def test_migrate_is_idempotent_and_creates_timescale_objects(
    timescale_dsn: str, ts_schema: str
) -> None:
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        assert s.dialect is Dialect.TIMESCALE  # auto detected the extension
        assert await s.migrate() == [
            "0001_telemetry",
            "0002_counter_reset",
            "0003_alerts",
            "0004_webhooks",
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
        ]
        assert await s.migrate() == []
        await s.require_migrated()
    async with Storage(ts_settings(timescale_dsn, ts_schema, "timescale")) as s:
        assert await s.migrate() == []
    with psycopg.connect(timescale_dsn) as conn:
        hypertables = conn.execute(
            "SELECT hypertable_name, compression_enabled"
            " FROM timescaledb_information.hypertables WHERE hypertable_schema = %s",
            (ts_schema,),
        ).fetchall()
        caggs = conn.execute(
            "SELECT view_name, materialized_only FROM"
            " timescaledb_information.continuous_aggregates WHERE view_schema = %s"
            " ORDER BY 1",
            (ts_schema,),
        ).fetchall()
        jobs = conn.execute(
            "SELECT proc_name, count(*) FROM timescaledb_information.jobs j"
            " LEFT JOIN timescaledb_information.continuous_aggregates c"
            "   ON c.materialization_hypertable_name = j.hypertable_name"
            " WHERE j.hypertable_schema = %s OR c.view_schema = %s"
            " GROUP BY 1 ORDER BY 1",
            (ts_schema, ts_schema),
        ).fetchall()
    assert ("telemetry", True) in hypertables
    assert caggs == [
        ("telemetry_1d", False),
        ("telemetry_1h", False),
        ("telemetry_1m", False),
    ]
    assert dict(jobs) == {
        "policy_compression": 1,
        "policy_refresh_continuous_aggregate": 3,
    }


async def test_a_postgres_schema_is_not_reopened_as_timescale(
    timescale_dsn: str, ts_schema: str
) -> None:
    async with Storage(ts_settings(timescale_dsn, ts_schema, "postgres")) as s:
        await s.migrate()
    with pytest.raises(ConfigError, match="migrated as postgres"):
        async with Storage(ts_settings(timescale_dsn, ts_schema, "timescale")):
            pass


async def test_writes_are_idempotent_and_rollups_match_the_raw_rows(
    timescale_dsn: str, ts_schema: str
) -> None:
    batch = rows(3000)
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        await s.migrate()
        first = await s.telemetry.write(
            batch[:2000], offsets=[KafkaOffset("g", "t", 0, 10)]
        )
        again = await s.telemetry.write(batch, offsets=[KafkaOffset("g", "t", 0, 20)])
        assert (first.inserted, first.duplicates) == (2000, 0)
        assert (again.inserted, again.duplicates) == (1000, 2000)
        assert await s.telemetry.count_rows() == 3000
        assert await s.offsets.load("g", "t") == {0: 20}
        # Real-time aggregation already shows the rows; the refresh materialises
        # them, and both must agree with the raw table.
        before = await s.telemetry.rollup(
            RollupLevel.HOUR, start=T0, end=T0 + timedelta(days=1)
        )
        await s.telemetry.refresh_rollups()
        levels = {
            level: await s.telemetry.rollup(
                level, start=T0 - timedelta(days=1), end=T0 + timedelta(days=2)
            )
            for level in RollupLevel
        }
    assert before == levels[RollupLevel.HOUR]
    for level, width in ((RollupLevel.MINUTE, 60), (RollupLevel.HOUR, 3600),
                         (RollupLevel.DAY, 86400)):  # fmt: skip
        groups: dict[tuple[object, ...], list[float]] = defaultdict(list)
        for r in batch:
            epoch = int(r.time.timestamp())
            bucket = datetime.fromtimestamp(epoch - epoch % width, UTC)
            groups[(bucket, r.device, r.metric)].append(r.value)
        got = {
            (r.bucket, r.device, r.metric): (r.n, r.sum, r.min, r.max)
            for r in levels[level]
        }
        assert got == {
            k: (len(v), sum(v), min(v), max(v)) for k, v in groups.items()
        }, level


async def test_reset_column_is_added_over_a_compressed_chunk(
    timescale_dsn: str, ts_schema: str
) -> None:
    """0002 and 0006 (storage by series) on a hypertable holding a compressed
    chunk: every row survives, and resets round-trip, also into a compressed chunk
    of the new layout."""
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        assert await s.migrate(up_to=1) == ["0001_telemetry"]
    table = sql.Identifier(ts_schema, "telemetry")
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL(
                "INSERT INTO {} (time, park, enterprise, device, metric, value, seq)"
                " SELECT %s + i * interval '10 seconds', 'p1', 'e1', 'm1',"
                " 'active_energy', i, i FROM generate_series(0, 99) AS i"
            ).format(table),
            (T0,),
        )
        conn.execute(
            sql.SQL("SELECT compress_chunk(c) FROM show_chunks({}) AS c").format(
                sql.Literal(table.as_string(conn))
            )
        )
        compressed = conn.execute(
            "SELECT bool_and(is_compressed) FROM timescaledb_information.chunks"
            " WHERE hypertable_schema = %s",
            (ts_schema,),
        ).fetchone()
    assert compressed == (True,)
    later = [
        TelemetryRow(T0 + timedelta(seconds=10 * i + 5), "p1", "e1", "m1",
                     "active_energy", float(i), "N", 100 + i, reset)
        for i, reset in enumerate(["rollover", None, "replacement"])
    ]  # fmt: skip
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        assert (await s.migrate())[0] == "0002_counter_reset"
        assert len(await s.telemetry.readings(device="m1")) == 100
    # (The PGlite server takes one connection at a time.)
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        conn.execute(
            sql.SQL("SELECT compress_chunk(c) FROM show_chunks({}) AS c").format(
                sql.Literal(table.as_string(conn))
            )
        )
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        first = await s.telemetry.write(later)
        again = await s.telemetry.write(later)  # ON CONFLICT into the compressed chunk
        stored = await s.telemetry.readings(device="m1")
    assert (first.inserted, again.duplicates) == (3, 3)
    assert len(stored) == 103
    assert {r.seq: r.reset for r in stored if r.reset is not None} == {
        100: "rollover",
        102: "replacement",
    }


async def test_policies_run_through_run_job(timescale_dsn: str, ts_schema: str) -> None:
    # Inside one hour bucket that ended over an hour ago: the 1 h policy (end_offset
    # 1 hour) materialises whole buckets only.
    base = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    base -= timedelta(hours=3)
    recent = [r._replace(time=base + (r.time - T0)) for r in rows(200)]
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        await s.migrate()
        await s.telemetry.write(
            rows(200, device="old")
        )  # months old: due for compression
        await s.telemetry.write(recent)
    with psycopg.connect(timescale_dsn, autocommit=True) as conn:
        # Continuous-aggregate policies are listed under the view's name.
        jobs = conn.execute(
            "SELECT job_id, proc_name, hypertable_name"
            " FROM timescaledb_information.jobs"
            " WHERE hypertable_schema = %s ORDER BY job_id",
            (ts_schema,),
        ).fetchall()
        assert sorted((proc, table) for _, proc, table in jobs) == [
            ("policy_compression", "telemetry"),
            ("policy_refresh_continuous_aggregate", "telemetry_1d"),
            ("policy_refresh_continuous_aggregate", "telemetry_1h"),
            ("policy_refresh_continuous_aggregate", "telemetry_1m"),
        ]
        for job_id, _, _ in jobs:
            conn.execute("CALL run_job(%s)", (job_id,))
        materialized = {}
        for view, mschema, mtable in conn.execute(
            "SELECT view_name, materialization_hypertable_schema,"
            " materialization_hypertable_name"
            " FROM timescaledb_information.continuous_aggregates"
            " WHERE view_schema = %s",
            (ts_schema,),
        ).fetchall():
            total = conn.execute(
                sql.SQL("SELECT coalesce(sum(n), 0)::int FROM {}").format(
                    sql.Identifier(mschema, mtable)
                )
            ).fetchone()
            assert total is not None
            materialized[view] = total[0]
        compressed = conn.execute(
            "SELECT is_compressed, range_start < now() - interval '30 days'"
            " FROM timescaledb_information.chunks WHERE hypertable_schema = %s",
            (ts_schema,),
        ).fetchall()
    # The refresh policies materialised the recent rows (1 d buckets lag a day).
    assert materialized == {"telemetry_1m": 200, "telemetry_1h": 200, "telemetry_1d": 0}
    # The compression policy compressed the old chunk and left the recent ones.
    assert sorted(compressed) == [(False, False)] * (len(compressed) - 1) + [
        (True, True)
    ]


def _common_tables() -> list[str]:
    """Tables created by the migrations both dialects share, plus the two that 0001
    writes identically in each (offsets, bookkeeping)."""
    names = {"kafka_offsets", "schema_migrations"}
    for mig in available(Dialect.POSTGRES):
        if (migrations_root() / COMMON / f"{mig.version:04d}_{mig.name}.sql").exists():
            names |= set(re.findall(r"CREATE TABLE (\w+)", mig.sql))
    return sorted(names)


def _shape(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, Any]:
    """Columns, constraints and indexes of ``schema.table``, schema name removed."""
    columns = conn.execute(
        "SELECT column_name, data_type, is_nullable, column_default"
        " FROM information_schema.columns WHERE table_schema = %s AND table_name = %s"
        " ORDER BY ordinal_position",
        (schema, table),
    ).fetchall()
    constraints = conn.execute(
        "SELECT conname, pg_get_constraintdef(c.oid) FROM pg_constraint c"
        " JOIN pg_class t ON t.oid = c.conrelid"
        " JOIN pg_namespace n ON n.oid = t.relnamespace"
        " WHERE n.nspname = %s AND t.relname = %s ORDER BY conname",
        (schema, table),
    ).fetchall()
    indexes = conn.execute(
        "SELECT indexname, indexdef FROM pg_indexes"
        " WHERE schemaname = %s AND tablename = %s ORDER BY indexname",
        (schema, table),
    ).fetchall()
    shape = {"columns": columns, "constraints": constraints, "indexes": indexes}
    text = repr(shape).replace(f"{schema}.", "").replace(f'"{schema}".', "")
    return {"table": table, "shape": text, "columns": len(columns)}


async def test_both_dialects_end_at_the_same_schema_for_the_common_tables(
    timescale_dsn: str, ts_schema: str, pg_dsn: str, db_schema: str
) -> None:
    async with Storage(ts_settings(timescale_dsn, ts_schema)) as s:
        await s.migrate()
    plain = DatabaseSettings(
        dsn=SecretStr(pg_dsn), schema=db_schema, dialect="postgres"
    )
    async with Storage(plain) as s:
        await s.migrate()
    tables = _common_tables()
    assert {"alert_events", "alerts", "rule_state", "webhook_deliveries"} <= set(tables)
    with psycopg.connect(timescale_dsn) as conn:
        on_timescale = [_shape(conn, ts_schema, t) for t in tables]
    with psycopg.connect(pg_dsn) as conn:
        on_postgres = [_shape(conn, db_schema, t) for t in tables]
    assert all(t["columns"] > 0 for t in on_postgres), on_postgres
    assert on_timescale == on_postgres
