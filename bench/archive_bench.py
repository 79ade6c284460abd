"""Archive cost and sealing speed against the hot table and a raw Parquet write
(a script, no test).

    .venv/bin/python -m bench.archive_bench --dsn postgresql://postgres@127.0.0.1:54329/smartpark

Stores one local day (Asia/Shanghai) of one enterprise in a fresh plain PostgreSQL
schema through the storage write path, then seals it with ``Archive.seal`` into a
temporary directory, and prints side by side:

  (a) bytes per reading: the sealed segment against the hot ``telemetry`` table
      (heap, indexes and TOAST of its partitions, after the partitions of the
      closed day are compacted as ``smartpark db maintain`` does); goal <= 8 B;
  (b) sealing rows/s (read the day's rows from the database, sort, encode, hash,
      sign, write atomically, index) against a raw ``pyarrow.parquet.write_table``
      of the same rows, already in an Arrow table, with pyarrow's defaults; and
      the segment encoding alone (sort + encode) against that raw write.

The data's shape: ``--devices`` devices, each polled every 10 s with five metrics —
active power (kW, one decimal, a random walk around its own level), an active
energy counter (kWh, two decimals, increasing by power x 10 s), SO2 (mg/m3, one
decimal, noise around a level), O2 (%, two decimals) and flue temperature (degC,
one decimal); quality N, sequence numbers counting up per device.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

import psycopg
import pyarrow.parquet as pq
from psycopg import sql
from pydantic import SecretStr

from bench.sink_bench import bytes_per_reading
from smartpark.settings import DatabaseSettings
from storage import Storage, TelemetryRow
from storage.archive import Archive, ArchiveFiles
from storage.archive.segment import encode, table_of
from storage.signing import Signer, Verifier, parse_private_key
from storage.signing import generate_private_key as new_key

DAY = date(2026, 3, 2)
START = datetime(2026, 3, 1, 16, 0, tzinfo=UTC)  # local midnight, UTC+8
NOW = datetime(2026, 3, 4, 0, 0, tzinfo=UTC)
POLL_S = 10


def day_rows(devices: int, seed: int = 1) -> list[TelemetryRow]:
    rnd = random.Random(seed)
    rows: list[TelemetryRow] = []
    for d in range(devices):
        device = f"dev{d:03d}"
        power = rnd.uniform(50, 900)
        energy = rnd.uniform(1e4, 1e6)
        so2 = rnd.uniform(5, 30)
        temp = rnd.uniform(90, 160)
        for i in range(86_400 // POLL_S):
            t = START + timedelta(seconds=POLL_S * i)
            power = max(0.0, power + rnd.gauss(0, 2))
            energy += power * POLL_S / 3600
            values = (
                ("active_power", round(power, 1)),
                ("active_energy", round(energy, 2)),
                ("so2", round(max(0.0, so2 + rnd.gauss(0, 1.5)), 1)),
                ("o2", round(rnd.gauss(9.5, 0.3), 2)),
                ("flue_temperature", round(temp + rnd.gauss(0, 0.8), 1)),
            )
            for metric, value in values:
                rows.append(TelemetryRow(t, "pb", "eb", device, metric, value, "N", i))
    return rows


async def fresh_schema(dsn: str, schema: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        ident = sql.Identifier(schema)
        await conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(ident))
        await conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))


async def register(storage: Storage) -> None:
    async with storage.connection() as conn:
        for name, query, params in (
            ("parks", "INSERT INTO {} (id, name, timezone) VALUES (%s, %s, %s)",
             ("pb", "pb", "Asia/Shanghai")),
            ("enterprises", "INSERT INTO {} (id, park, name) VALUES (%s, %s, %s)",
             ("eb", "pb", "eb")),
        ):  # fmt: skip
            table = sql.Identifier(storage.schema, name)
            await conn.execute(sql.SQL(query).format(table), params)


def raw_write(rows: list[TelemetryRow]) -> tuple[float, int, float, int]:
    """(seconds, bytes) of pyarrow's default write of the rows, and of the
    segment's sort + encode, from the same Arrow-ready rows."""
    archived = [
        (r.time, r.park, r.enterprise, r.device, r.metric, r.data_type, r.stat,
         "kW", r.value, r.quality, r.seq, r.reset)
        for r in rows
    ]  # fmt: skip
    table = table_of(archived)
    sink = io.BytesIO()
    t0 = time.perf_counter()
    pq.write_table(table, sink)
    raw_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    segment = encode(table_of(archived))
    encode_s = time.perf_counter() - t0
    return raw_s, len(sink.getvalue()), encode_s, len(segment)


async def run(args: argparse.Namespace) -> int:
    await fresh_schema(args.dsn, args.schema)
    cfg = DatabaseSettings(dsn=SecretStr(args.dsn), schema=args.schema,
                           dialect="postgres")  # fmt: skip
    rows = day_rows(args.devices)
    print(f"{len(rows)} readings: {args.devices} devices x 5 metrics, every"
          f" {POLL_S} s, local day {DAY}")  # fmt: skip
    key = parse_private_key(new_key())
    async with Storage(cfg, clock=lambda: int(NOW.timestamp() * 1000)) as storage:
        await storage.migrate()
        await register(storage)
        for i in range(0, len(rows), 50_000):
            await storage.telemetry.write(rows[i : i + 50_000])
        await storage.telemetry.compact_partitions(settle_days=0)
        async with storage.connection() as conn:
            hot_rows, hot_bytes = await bytes_per_reading(
                conn, args.schema, compress=False
            )
        with tempfile.TemporaryDirectory() as root:
            archive = Archive(
                storage, ArchiveFiles(root), seal_delay=timedelta(hours=2),
                signer=Signer(key), verifier=Verifier([key.public_key()]),
            )  # fmt: skip
            t0 = time.perf_counter()
            report = await archive.seal()
            seal_s = time.perf_counter() - t0
            sealed = sum(w[3] for w in report.written)
            segment_bytes = sum(
                len(ArchiveFiles(root).get(p))
                for p in ArchiveFiles(root).list("eb")
                if p.endswith(".parquet")
            )
    if not args.keep:
        async with await psycopg.AsyncConnection.connect(
            args.dsn, autocommit=True
        ) as c:
            await c.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(args.schema))
            )
    raw_s, raw_bytes, encode_s, encoded = raw_write(rows)
    print_results(
        Measured(len(rows), hot_rows, hot_bytes, sealed, segment_bytes, raw_bytes,
                 encoded, seal_s, raw_s, encode_s)
    )  # fmt: skip
    return 0


@dataclass(frozen=True)
class Measured:
    readings: int
    hot_rows: int
    hot_bytes: int
    sealed_rows: int
    segment_bytes: int
    raw_bytes: int
    encoded_bytes: int
    seal_s: float
    raw_s: float
    encode_s: float


def print_results(m: Measured) -> None:
    n = m.readings
    print("(a) bytes per reading")
    print(f"  hot table (compacted)  {m.hot_bytes:>12} bytes / {m.hot_rows} ="
          f" {m.hot_bytes / m.hot_rows:7.2f} B")  # fmt: skip
    print(f"  sealed segment         {m.segment_bytes:>12} bytes / {m.sealed_rows} ="
          f" {m.segment_bytes / m.sealed_rows:7.2f} B   (goal <= 8 B;"
          f" {m.hot_bytes / m.segment_bytes:.1f}x smaller than hot)")  # fmt: skip
    print(f"  raw pyarrow default    {m.raw_bytes:>12} bytes / {n} ="
          f" {m.raw_bytes / n:7.2f} B")  # fmt: skip
    print(f"  segment encoding alone {m.encoded_bytes:>12} bytes / {n} ="
          f" {m.encoded_bytes / n:7.2f} B")  # fmt: skip
    print("(b) rows per second")
    print(f"  raw pyarrow write_table (baseline) {n / m.raw_s:>12,.0f} rows/s"
          f"  ({m.raw_s:.3f} s)")  # fmt: skip
    print(
        f"  segment sort + encode              {n / m.encode_s:>12,.0f} rows/s"
        f"  ({m.encode_s:.3f} s, {m.raw_s / m.encode_s:.2f}x the baseline's speed)"
    )
    print(f"  Archive.seal end to end            {m.sealed_rows / m.seal_s:>12,.0f}"
          f" rows/s  ({m.seal_s:.3f} s, {m.raw_s / m.seal_s:.2f}x the baseline's"
          " speed)")  # fmt: skip


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    parser.add_argument("--schema", default="bench_archive")
    parser.add_argument("--devices", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    sys.exit(asyncio.run(run(parser.parse_args())))
