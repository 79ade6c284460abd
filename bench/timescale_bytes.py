"""Bytes per stored reading on the TimescaleDB dialect, before and after
compression (a script; the PGlite build takes one connection at a time, so every
step connects, works and disconnects in turn).

    .venv/bin/python -m bench.timescale_bytes \\
        --dsn postgresql://postgres:postgres@127.0.0.1:54330/postgres

Writes ``--rows`` readings shaped like the city load (devices x 5 metrics, one
reading every 10 s, through the storage write path, bulk method ``insert``), then
prints ``hypertable_size`` per reading, compresses every chunk and prints it again.
``smartpark bench storage`` runs the same (:func:`measure`).
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


async def measure(
    dsn: str, schema: str, *, rows: int, devices: int
) -> list[tuple[str, int, int]]:
    """(when, readings, bytes) uncompressed and compressed; ``schema`` is dropped
    before and after. Connections are opened one after another, never two at once.
    """
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))

    def execute(stmt: sql.Composed) -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(stmt)

    await asyncio.to_thread(execute, drop)
    try:
        await write(dsn, schema, rows, devices)
        out = []
        for label, compress in (("uncompressed", False), ("compressed", True)):
            n, b = await asyncio.to_thread(size, dsn, schema, compress=compress)
            out.append((label, n, b))
        return out
    finally:
        await asyncio.to_thread(execute, drop)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres:postgres@127.0.0.1:54330/postgres"
    )
    parser.add_argument("--schema", default="bench_ts_bytes")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--devices", type=int, default=400)
    args = parser.parse_args()
    sizes = asyncio.run(
        measure(args.dsn, args.schema, rows=args.rows, devices=args.devices)
    )
    for label, n, b in sizes:
        print(f"timescale {label:<13} {b:>11} bytes / {n} readings ="
              f" {b / n:6.1f} bytes per reading")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
