"""Rollup refresh cost per new row across an hour (plain PostgreSQL; a script).

    .venv/bin/python -m bench.rollup_bench --dsn postgresql://postgres@127.0.0.1:54329/smartpark

Writes one hour of telemetry minute by minute (``--series`` series, one reading per
series every 10 s, through the storage write path) and brings the rollups up to date
after each minute, in two schemas with the same rows:

  (a) the platform's refresh (storage.rollups.refresh): recompute the touched
      minutes from the raw rows and merge only the difference into the hour and
      the day;
  (b) the baseline it replaced: recompute the touched minutes, then the whole hour
      from its minute rows and the whole day from its hour rows.

It prints the time per new row of each over five-minute stretches of the hour: (a)
should stay flat while (b) grows as the hour fills. Both end equal (checked).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from smartpark.clock import MsClock
from smartpark.settings import DatabaseSettings
from storage import Storage, TelemetryRow

METRICS = ("active_energy", "active_power", "reactive_energy", "power_factor", "cod")
SHOWN = ((1, 5), (16, 20), (31, 35), (46, 50), (56, 60))  # minutes, inclusive


def fixed(ms: int) -> MsClock:
    return lambda: ms


def minute_rows(series: int, minute: int, start: datetime) -> list[TelemetryRow]:
    devices = series // len(METRICS)
    rows = []
    for tick in range(6):  # one reading every 10 s
        t = start + timedelta(minutes=minute, seconds=10 * tick)
        seq = minute * 6 + tick
        for d in range(devices):
            for m, metric in enumerate(METRICS):
                value = float((d * 7 + m * 3 + seq) % 97)
                rows.append(
                    TelemetryRow(
                        t, "p1", f"e{d % 50}", f"d{d}", metric, value, "N", seq
                    )
                )
    return rows


async def baseline_refresh(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], schema: str
) -> None:
    """The refresh before it became incremental: every touched hour and day is
    recomputed from the level below (the code it replaced, for comparison)."""
    pending = sql.Identifier(schema, "rollup_pending")
    levels = (
        ("telemetry_1m", 60, "telemetry", "time",
         "count(*), sum(value), min(value), max(value)"),
        ("telemetry_1h", 3600, "telemetry_1m", "bucket",
         "sum(n), sum(sum), min(min), max(max)"),
        ("telemetry_1d", 86400, "telemetry_1h", "bucket",
         "sum(n), sum(sum), min(min), max(max)"),
    )  # fmt: skip
    async with conn.transaction():
        cur = await conn.execute(
            sql.SQL("DELETE FROM {} RETURNING bucket").format(pending)
        )
        buckets = sorted(r[0] for r in await cur.fetchall())
        for table, width, source, column, aggregates in levels:
            epochs = {int(b.timestamp()) // width * width for b in buckets}
            buckets = [datetime.fromtimestamp(e, UTC) for e in sorted(epochs)]
            for b in buckets:
                end = b + timedelta(seconds=width)
                target = sql.Identifier(schema, table)
                await conn.execute(
                    sql.SQL("DELETE FROM {} WHERE bucket >= %s AND bucket < %s").format(
                        target
                    ),
                    (b, end),
                )
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {t} (bucket, series_id, n, sum, min, max)"
                        " SELECT date_bin({w}::interval, {c}, TIMESTAMPTZ 'epoch'),"
                        " series_id, {a} FROM {s} WHERE {c} >= %s AND {c} < %s"
                        " GROUP BY 1, 2"
                    ).format(
                        t=target,
                        w=sql.Literal(f"{width} seconds"),
                        c=sql.Identifier(column),
                        a=sql.SQL(aggregates),
                        s=sql.Identifier(schema, source),
                    ),
                    (b, end),
                )


async def rollup_table(
    conn: psycopg.AsyncConnection[tuple[Any, ...]], schema: str, table: str
) -> list[tuple[object, ...]]:
    cur = await conn.execute(
        sql.SQL(
            "SELECT r.bucket, s.device, s.metric, r.n, r.sum, r.min, r.max FROM {} r"
            " JOIN {} s ON s.id = r.series_id ORDER BY 1, 2, 3"
        ).format(sql.Identifier(schema, table), sql.Identifier(schema, "series"))
    )
    return list(await cur.fetchall())


async def main(args: argparse.Namespace) -> int:
    start = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)  # an hour's first minute
    schemas = {"a": f"{args.schema}_a", "b": f"{args.schema}_b"}
    times: dict[str, list[float]] = {"a": [], "b": []}
    new_rows: list[int] = []
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        stores = {}
        for side, schema in schemas.items():
            await conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )
            db = DatabaseSettings(
                dsn=SecretStr(args.dsn), schema=schema, dialect="postgres"
            )
            stores[side] = Storage(db, clock=fixed(int(start.timestamp() * 1000)))
            await stores[side].open()
            await stores[side].migrate()
        try:
            for minute in range(60):
                rows = minute_rows(args.series, minute, start)
                new_rows.append(len(rows))
                for side in ("a", "b"):
                    await stores[side].telemetry.write(rows)
                t0 = time.perf_counter()
                await stores["a"].telemetry.refresh_rollups()
                times["a"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                await baseline_refresh(conn, schemas["b"])
                times["b"].append(time.perf_counter() - t0)
            for table in ("telemetry_1m", "telemetry_1h", "telemetry_1d"):
                a = await rollup_table(conn, schemas["a"], table)
                b = await rollup_table(conn, schemas["b"], table)
                assert a == b, f"{table}: the two refreshes disagree"
        finally:
            for side, storage in stores.items():
                await storage.close()
                if not args.keep:
                    await conn.execute(
                        sql.SQL("DROP SCHEMA {} CASCADE").format(
                            sql.Identifier(schemas[side])
                        )
                    )
    print(
        f"{args.series} series, one reading per 10 s: {new_rows[0]} new rows a minute,"
        " rollups refreshed after each minute of one hour; results equal: True"
    )
    print(
        "minutes of the hour   (a) incremental µs/row   (b) recompute µs/row (baseline)"
    )
    for first, last in SHOWN:
        count = sum(new_rows[first - 1 : last])
        per_a = sum(times["a"][first - 1 : last]) / count * 1e6
        per_b = sum(times["b"][first - 1 : last]) / count * 1e6
        span = f"{first}-{last}"
        print(f"  {span:<5}               {per_a:>10.2f}               {per_b:>10.2f}")
    growth_a = sum(times["a"][-5:]) / sum(times["a"][:5])
    growth_b = sum(times["b"][-5:]) / sum(times["b"][:5])
    print(f"last 5 / first 5 minutes: (a) {growth_a:.2f}x   (b) {growth_b:.2f}x")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    parser.add_argument("--schema", default="bench_rollup")
    parser.add_argument("--series", type=int, default=2000)
    parser.add_argument("--keep", action="store_true", help="keep the bench schemas")
    sys.exit(asyncio.run(main(parser.parse_args())))
