"""Bytes per stored reading on the TimescaleDB dialect, before and after
compression (a script; the PGlite build takes one connection at a time, so every
step connects, works and disconnects in turn).

    .venv/bin/python -m bench.timescale_bytes \\
        --dsn postgresql://postgres:postgres@127.0.0.1:54330/postgres

Writes ``--rows`` readings shaped like the city load (devices x 5 metrics, one
reading every 10 s, through the storage write path, bulk method ``insert``), then
prints ``hypertable_size`` per reading, compresses every chunk and prints it again.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from pydantic import SecretStr

from smartpark.settings import DatabaseSettings
from storage import Storage, TelemetryRow

METRICS = ("active_energy", "active_power", "reactive_energy", "power_factor",
           "water_volume")  # fmt: skip


def size(dsn: str, schema: str, *, compress: bool) -> tuple[int, int]:
    table = sql.Identifier(schema, "telemetry")
    with psycopg.connect(dsn, autocommit=True) as conn:
        name = table.as_string(conn)
        if compress:
            conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true)"
                " FROM show_chunks(%s::regclass) AS c",
                (name,),
            )
        row = conn.execute("SELECT hypertable_size(%s::regclass)", (name,)).fetchone()
        count = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(table)
        ).fetchone()
    assert row is not None
    assert count is not None
    return int(count[0]), int(row[0])


async def write(dsn: str, schema: str, rows: int, devices: int) -> None:
    settings = DatabaseSettings(
        dsn=SecretStr(dsn), schema=schema, dialect="timescale", bulk_method="insert"
    )
    start = datetime(2026, 11, 1, tzinfo=UTC)
    async with Storage(settings) as storage:
        await storage.migrate()
        batch: list[TelemetryRow] = []
        i = 0
        while i < rows:
            t = start + timedelta(seconds=10 * (i // (devices * len(METRICS))))
            for d in range(devices):
                for k, m in enumerate(METRICS):
                    value = float((i + k) % 1000) + 0.25
                    batch.append(
                        TelemetryRow(
                            t, "park1", f"e{d % 40}", f"d{d}", m, value, "N", i
                        )
                    )
                    i += 1
            if len(batch) >= 5000 or i >= rows:
                await storage.telemetry.write(batch)
                batch = []


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres:postgres@127.0.0.1:54330/postgres"
    )
    parser.add_argument("--schema", default="bench_ts_bytes")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=400)
    args = parser.parse_args()
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
        sql.Identifier(args.schema)
    )
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(drop)
    asyncio.run(write(args.dsn, args.schema, args.rows, args.devices))
    for label, compress in (("uncompressed", False), ("compressed", True)):
        n, b = size(args.dsn, args.schema, compress=compress)
        print(f"timescale {label:<13} {b:>11} bytes / {n} readings ="
              f" {b / n:6.1f} bytes per reading")  # fmt: skip
    with psycopg.connect(args.dsn, autocommit=True) as conn:
        conn.execute(drop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
