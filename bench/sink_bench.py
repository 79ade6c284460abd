"""Sink write-path throughput against a raw COPY of the same rows (a script, no test).

    .venv/bin/python -m bench.sink_bench --dsn postgresql://postgres@127.0.0.1:54329/smartpark

Generates telemetry shaped like the city reference load (
280 enterprises x 40 devices x 5 metrics, one poll every 10 s = 5 600 readings/s),
encoded as wire batches (one Kafka record per device poll), then measures in one run,
on the same freshly truncated table:

  (a) the sink's write path through the storage API: decode every wire record
      (smartpark.wire.decode_batch), stage with COPY, INSERT .. ON CONFLICT DO NOTHING
      (plus the rollup invalidation log on plain PostgreSQL), upsert the offsets,
      commit —
      one transaction per sink batch, as Sink does;
  (c) the rollup refresh afterwards (plain PostgreSQL: recompute the logged buckets;
      TimescaleDB: refresh the continuous aggregates), which runs beside the write
      path, not in it;
  (b) a raw binary COPY of the same, already-built rows straight into ``telemetry``
      (series ids resolved beforehand, outside the timing), with the same batch
      boundaries and one commit per batch;
  (d) the storage cost: bytes per stored reading of ``telemetry`` (heap, indexes
      and TOAST of every partition or chunk) after (a), then once the day is
      closed: plain PostgreSQL compacts the partition (``smartpark db maintain``),
      TimescaleDB compresses every chunk.

It prints the raw numbers, the ratio (a)/(b), the headroom over the city reference
and the bytes per reading.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from smartpark.clock import system_ms
from smartpark.settings import DatabaseSettings, SinkSettings
from smartpark.wire import Reading, TelemetryBatch, decode_batch, encode_batch
from storage import KafkaOffset, Storage, TelemetryRow, rows_from_batch
from storage import statements as st
from stream.records import decode_record

CITY_READINGS_PER_S = 5600
ENTERPRISES, DEVICES_PER_ENTERPRISE = 280, 40
METRICS = (
    ("active_energy", "kWh"),
    ("active_power", "kW"),
    ("reactive_energy", "kvarh"),
    ("power_factor", "1"),
    ("water_volume", "m3"),
)
POLL_MS = 10_000


@dataclass
class Result:
    name: str
    rows: int
    seconds: float
    note: str = ""

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def wire_records(n_rows: int, now_ms: int) -> list[bytes]:
    """Device polls (five readings each), the newest poll ending at ``now_ms``."""
    devices = [
        (f"e{e:03d}", f"e{e:03d}-d{d:02d}")
        for e in range(ENTERPRISES)
        for d in range(DEVICES_PER_ENTERPRISE)
    ]
    polls = -(-n_rows // len(METRICS))
    rounds = -(-polls // len(devices))
    records = []
    for r in range(rounds):
        ts = now_ms - (rounds - r) * POLL_MS
        for i, (ent, dev) in enumerate(devices):
            readings = tuple(
                Reading(r, m, float((r * 7 + i + k) % 1000) + 0.25, unit, ts + i % 997)
                for k, (m, unit) in enumerate(METRICS)
            )
            records.append(encode_batch(TelemetryBatch("park1", ent, dev, readings)))
            if len(records) == polls:
                return records
    return records


async def truncate(conn: psycopg.AsyncConnection[Any], schema: str) -> None:
    """Empty the telemetry, rollup and bookkeeping tables (views are skipped)."""
    cur = await conn.execute(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname = ANY(%s)",
        (schema, ["telemetry", "telemetry_1m", "telemetry_1h", "telemetry_1d",
                  "kafka_offsets", "rollup_pending"]),
    )  # fmt: skip
    # (series is kept: its ids are cached by the storage the bench writes through)
    tables = [sql.Identifier(schema, name) for (name,) in await cur.fetchall()]
    await conn.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(tables)))
    await conn.execute(
        sql.SQL("VACUUM ANALYZE {}").format(sql.Identifier(schema, "telemetry"))
    )


async def sink_path(
    storage: Storage, batches: Sequence[Sequence[bytes]], now_ms: int
) -> Result:
    """(a): what Sink._process does per batch, minus Kafka."""
    offset = 0
    total = 0
    decoding = 0.0
    start = time.perf_counter()
    for records in batches:
        t0 = time.perf_counter()
        rows: list[TelemetryRow] = []
        for value in records:
            rows.extend(rows_from_batch(decode_record(value, now_ms=now_ms)))
        decoding += time.perf_counter() - t0
        offset += len(records)
        result = await storage.telemetry.write(
            rows, offsets=[KafkaOffset("bench", "bench.telemetry", 0, offset)]
        )
        total += result.inserted
    elapsed = time.perf_counter() - start
    note = (
        f"decode {decoding:.2f} s + storage.write {elapsed - decoding:.2f} s "
        f"({total / (elapsed - decoding):.0f} rows/s)"
    )
    return Result("sink write path (a)", total, elapsed, note)


async def refresh(storage: Storage, rows: int) -> Result:
    """(c): bring the rollups up to date for everything (a) wrote."""
    start = time.perf_counter()
    await storage.telemetry.refresh_rollups()
    return Result("rollup refresh (c)", rows, time.perf_counter() - start)


async def stored_rows(
    storage: Storage,
    conn: psycopg.AsyncConnection[Any],
    batches: Sequence[Sequence[TelemetryRow]],
) -> list[list[tuple[Any, ...]]]:
    """The rows of ``batches`` as telemetry stores them (series ids resolved)."""
    out = []
    for rows in batches:
        ids = await storage.telemetry.series.resolve(conn, rows)
        out.append(
            [
                (r.time, r.seq, r.value, i, r.quality, r.reset)
                for r, i in zip(rows, ids, strict=True)
            ]
        )
    return out


async def bytes_per_reading(
    conn: psycopg.AsyncConnection[Any], schema: str, *, compress: bool
) -> tuple[int, int]:
    """(rows, bytes) of ``telemetry``: heap, indexes and TOAST of its partitions
    (plain) or chunks (TimescaleDB, compressed first if ``compress``)."""
    table = sql.Identifier(schema, "telemetry").as_string(conn)
    cur = await conn.execute(
        "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
    )
    row = await cur.fetchone()
    timescale = bool(row and row[0]) and await _is_hypertable(conn, schema)
    if timescale:
        if compress:
            await conn.execute(
                "SELECT compress_chunk(c, if_not_compressed => true)"
                " FROM show_chunks(%s::regclass) AS c",
                (table,),
            )
        cur = await conn.execute("SELECT hypertable_size(%s::regclass)", (table,))
    else:
        cur = await conn.execute(
            "SELECT sum(pg_total_relation_size(inhrelid)) FROM pg_inherits"
            " WHERE inhparent = %s::regclass",
            (table,),
        )
    size = await cur.fetchone()
    cur = await conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.SQL(table)))
    count = await cur.fetchone()
    assert size is not None
    assert count is not None
    return int(count[0]), int(size[0] or 0)


async def _is_hypertable(conn: psycopg.AsyncConnection[Any], schema: str) -> bool:
    cur = await conn.execute(
        "SELECT count(*) FROM timescaledb_information.hypertables"
        " WHERE hypertable_schema = %s AND hypertable_name = 'telemetry'",
        (schema,),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def raw_copy(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    batches: Sequence[Sequence[tuple[Any, ...]]],
) -> Result:
    """(b): binary COPY of ready-made rows straight into telemetry."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, "telemetry"),
        sql.SQL(", ").join(sql.Identifier(c) for c in st.COLUMNS),
    )
    total = 0
    start = time.perf_counter()
    for rows in batches:
        async with conn.transaction(), conn.cursor() as cur, cur.copy(stmt) as copy:
            copy.set_types(list(st.COPY_TYPES))
            for row in rows:
                await copy.write_row(row)
        total += len(rows)
    return Result("raw COPY (b)", total, time.perf_counter() - start)


def report(
    results: list[Result], batch_records: int, sizes: list[tuple[str, int, int]]
) -> None:
    print(f"batches of {batch_records} wire records ({batch_records * 5} rows)")
    for r in results:
        print(
            f"  {r.name:<28} {r.rows:>9} rows in {r.seconds:7.2f} s = "
            f"{r.rate:>9.0f} rows/s  ({r.rate / CITY_READINGS_PER_S:5.1f}x city)"
        )
        if r.note:
            print(f"      {r.note}")
    a, c = results[:2]
    if len(results) > 2:
        print(f"  ratio (a)/(b)                {a.rate / results[2].rate:6.1%}")
    else:
        print("  raw COPY (b) skipped: --bulk-method insert (a server without COPY)")
    both = 1 / (1 / a.rate + 1 / c.rate)
    print(
        f"  city reference {CITY_READINGS_PER_S} readings/s: sink headroom "
        f"{a.rate / CITY_READINGS_PER_S:.1f}x, {both / CITY_READINGS_PER_S:.1f}x "
        "with the rollup refresh on the same core"
    )
    for what, rows, size in sizes:
        print(
            f"  storage {what:<21} {size:>12} bytes / {rows} readings = "
            f"{size / max(rows, 1):6.1f} bytes per reading"
        )


async def main(args: argparse.Namespace) -> int:
    db = DatabaseSettings(
        dsn=SecretStr(args.dsn),
        schema=args.schema,
        dialect=args.dialect,
        bulk_method=args.bulk_method,
    )
    now_ms = system_ms()
    records = wire_records(args.rows, now_ms)
    batches = [
        records[i : i + args.batch_records]
        for i in range(0, len(records), args.batch_records)
    ]
    rows_batches = [
        [r for v in b for r in rows_from_batch(decode_batch(v, now_ms=now_ms))]
        for b in batches
    ]
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                sql.Identifier(args.schema)
            )
        )
        async with Storage(db) as storage:
            await storage.migrate()
            print(
                f"{storage.dialect.value} at {args.dsn.rsplit('@', 1)[-1]}, "
                f"{sum(len(b) for b in rows_batches)} rows, {len(records)} wire records"
            )
            await truncate(conn, args.schema)
            results = [await sink_path(storage, batches, now_ms)]
            results.append(await refresh(storage, results[0].rows))
            sizes = [
                (
                    "after (a)",
                    *await bytes_per_reading(conn, args.schema, compress=False),
                )
            ]
            if storage.dialect.value == "timescale":
                sizes.append(
                    (
                        "compressed",
                        *await bytes_per_reading(conn, args.schema, compress=True),
                    )
                )
            else:  # the day closes: its partition is compacted (db maintain)
                tomorrow = datetime.fromtimestamp(now_ms / 1000 + 86400, UTC).date()
                await storage.telemetry.compact_partitions(
                    settle_days=0, today=tomorrow
                )
                closed = await bytes_per_reading(conn, args.schema, compress=False)
                sizes.append(("after compaction", *closed))
            if args.bulk_method == "copy":
                stored = await stored_rows(storage, conn, rows_batches)
                await truncate(conn, args.schema)
                results.append(await raw_copy(conn, args.schema, stored))
        if not args.keep:
            await conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(args.schema))
            )
    report(results, args.batch_records, sizes)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    parser.add_argument("--schema", default="bench_sink")
    parser.add_argument("--dialect", default="auto")
    parser.add_argument("--rows", type=int, default=500_000)
    parser.add_argument(
        "--batch-records",
        type=int,
        default=SinkSettings().batch_max_records,
        help="wire records per transaction (default: the sink's batch_max_records)",
    )
    parser.add_argument(
        "--bulk-method",
        choices=["copy", "insert"],
        default="copy",
        help="insert: for servers without COPY (the PGlite TimescaleDB); skips (b)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    sys.exit(asyncio.run(main(parser.parse_args())))
