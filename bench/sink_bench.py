"""Sink throughput against a raw COPY and a row-by-row INSERT of the same rows.

    smartpark bench sink [--rows 500000] [--no-process]
    .venv/bin/python -m bench.sink_bench --dsn postgresql://postgres@127.0.0.1:54329/smartpark

Generates telemetry shaped like the city reference load (
280 enterprises x 40 devices x 5 metrics, one poll every 10 s = 5 600 readings/s),
encoded as wire batches (one Kafka record per device poll), then measures in one run,
on the same freshly truncated table:

  (a) the sink's write path through the storage API: decode every wire record
      (``stream.records.decode_record``) in chunks as storage asks for them, and
      store the batch's polls (``TelemetryStore.write_stream``: each chunk's rows
      COPY'd while the next chunk is decoded, falling back to a staging table and
      INSERT .. ON CONFLICT DO NOTHING on a conflict, plus the rollup
      invalidation log on plain PostgreSQL), upsert the offsets, commit — one
      transaction per sink batch, with the garbage collector paused per batch,
      as Sink does; the series are created beforehand (timed apart), as for (b);
  (c) the rollup refresh afterwards (plain PostgreSQL: recompute the logged buckets;
      TimescaleDB: refresh the continuous aggregates), which runs beside the write
      path, not in it;
  (b) a raw binary COPY of the same, already-built rows straight into ``telemetry``
      (series ids resolved beforehand, outside the timing), with the same batch
      boundaries and one commit per batch;
  (d) the storage cost: bytes per stored reading of ``telemetry`` (heap, indexes
      and TOAST of every partition or chunk) after (a), then once the day is
      closed: plain PostgreSQL compacts the partition (``smartpark db maintain``),
      TimescaleDB compresses every chunk;
  (e) a row-by-row INSERT of the same rows (one ``INSERT .. ON CONFLICT DO
      NOTHING`` a row, pipelined a batch at a time, one commit a batch): what
      JDBC-style sinks do;
  (f) ``smartpark sink`` as a process on a Kafka backlog of the same wire records
      (its own topics and consumer group), sampled by its committed offsets
      (:mod:`bench.drain`); its peak RSS is read before it stops.

It prints the raw numbers, (a) and (f) beside (b) and (e) with their ratios (the
goal of (a)/(b) is :data:`SINK_GOAL`), the headroom over the city reference, the
bytes per reading and the peak RSS of the bench process (which holds every
generated row) and of the sink process.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import psycopg
from psycopg import sql
from pydantic import SecretStr

from bench.drain import drop_topics, produce_all, watch_committed
from bench.figures import (
    Figure,
    Memory,
    Progress,
    ServiceProcess,
    add_endpoints,
    drain_rate,
    own_peak_kib,
    service_env,
)
from ingest.sink import CHUNK_READINGS, collector_paused
from smartpark.clock import system_ms
from smartpark.settings import DatabaseSettings, KafkaSettings, Settings, SinkSettings
from smartpark.wire import Reading, TelemetryBatch, decode_batch, encode_batch
from storage import KafkaOffset, Storage, TelemetryRow, rows_from_batch
from storage import statements as st
from stream.kafka import ensure_topics
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
CHUNK_RECORDS = CHUNK_READINGS // len(METRICS)  # as the sink decodes


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
    storage: Storage, batches: Sequence[Sequence[bytes]], now_ms: int, note: str = ""
) -> Result:
    """(a): what Sink.process does per batch, minus Kafka: the records decoded in
    chunks of ``CHUNK_READINGS`` readings as ``write_stream`` asks for
    them, so the server stores one chunk while the next is decoded. The series
    are known (created beforehand, as for (b)): a sink meets a series new to the
    database once in its life, not in 11 % to 28 % of its rows as in a short
    bench."""
    offset = 0
    total = 0
    decoding = 0.0

    def decoded(records: Sequence[bytes]) -> Iterator[list[TelemetryBatch]]:
        nonlocal decoding
        for i in range(0, len(records), CHUNK_RECORDS):
            t0 = time.perf_counter()
            polls = [
                b
                for value in records[i : i + CHUNK_RECORDS]
                for b in decode_record(value, now_ms=now_ms).batches
            ]
            decoding += time.perf_counter() - t0
            yield polls

    start = time.perf_counter()
    for records in batches:
        with collector_paused():  # as Sink.process
            offset += len(records)
            result = await storage.telemetry.write_stream(
                decoded(records),
                offsets=[KafkaOffset("bench", "bench.telemetry", 0, offset)],
            )
        total += result.inserted
    elapsed = time.perf_counter() - start
    note = (f"of which decoding {decoding:.2f} s, overlapping the server's inserts") + (
        f"; {note}" if note else ""
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


async def row_inserts(
    conn: psycopg.AsyncConnection[Any],
    schema: str,
    batches: Sequence[Sequence[tuple[Any, ...]]],
) -> Result:
    """(e): one ``INSERT .. ON CONFLICT DO NOTHING`` a row, the statements of a batch
    pipelined (psycopg's ``executemany``, as a JDBC batch without rewriting), one
    commit a batch: what JDBC-style sinks do."""
    stmt = sql.SQL("INSERT INTO {} ({}) VALUES ({}) ON CONFLICT DO NOTHING").format(
        sql.Identifier(schema, "telemetry"),
        sql.SQL(", ").join(sql.Identifier(c) for c in st.COLUMNS),
        sql.SQL(", ").join(sql.Placeholder() * len(st.COLUMNS)),
    )
    total = 0
    start = time.perf_counter()
    for rows in batches:
        async with conn.transaction(), conn.cursor() as cur:
            await cur.executemany(stmt, rows)
            total += cur.rowcount  # rows inserted, conflicts not counted
    return Result("row-by-row INSERT (e)", total, time.perf_counter() - start)


async def sink_process(
    o: Options, records: Sequence[bytes], rows: int, logs: Path
) -> tuple[Result, Progress, Memory]:
    """(f): ``smartpark sink`` as a process draining ``records`` from a Kafka topic
    of its own into ``o.schema`` (emptied before), as it runs in production: Kafka
    fetch, decode, write, offsets, and its rollup refresh on its own timer."""
    uid = uuid.uuid4().hex[:8]
    settings = Settings(
        kafka=KafkaSettings(bootstrap=o.kafka, topic_prefix=f"sbench{uid}."),
        database=DatabaseSettings(dsn=SecretStr(o.dsn), schema=o.schema),
        sink=SinkSettings(group_id=f"sbench-sink-{uid}"),
    )
    k = settings.kafka
    await ensure_topics(k)
    try:
        now_ms = system_ms()
        keyed = [(decode_record(r, now_ms=now_ms).enterprise.encode(), r)
                 for r in records]  # fmt: skip
        await produce_all(k, k.telemetry_topic, keyed)
        proc = ServiceProcess(
            ["sink", "--stats-every", "5"], service_env(settings), logs / "sink.log"
        )
        progress = Progress("sink process", rows)
        start = time.perf_counter()
        proc.start()
        try:
            await watch_committed(
                o.kafka,
                settings.sink.group_id,
                progress,
                per_record=len(METRICS),
                proc=proc,
                timeout_s=o.timeout_s,
            )
        finally:
            memory = proc.stop()
        elapsed = time.perf_counter() - start
        rate = drain_rate(progress)
        note = f"process start to last commit {elapsed:.2f} s; rate over the drain"
        seconds = math.inf if math.isnan(rate) else rows / rate
        return Result("sink process (f)", rows, seconds, note), progress, memory
    finally:
        await drop_topics(
            o.kafka,
            [k.telemetry_topic, k.status_topic, k.alerts_topic, k.deadletter_topic],
        )


@dataclass(frozen=True)
class Options:
    rows: int = 500_000
    batch_records: int = SinkSettings().batch_max_records
    bulk_method: Literal["copy", "insert"] = "copy"
    dialect: Literal["auto", "timescale", "postgres"] = "auto"
    schema: str = "bench_sink"
    keep: bool = False
    process: bool = True  # (f): the sink process on a Kafka backlog
    dsn: str = "postgresql://postgres@127.0.0.1:54329/smartpark"
    kafka: str = "127.0.0.1:19092"
    timeout_s: float = 300.0


@dataclass(frozen=True)
class SinkRun:
    """Every measurement of one run; :meth:`figures` pairs them with baselines."""

    dialect: str
    batch_records: int
    results: dict[str, Result]  # by letter: a, c, b, e, f
    sizes: list[tuple[str, int, int]]  # (when, readings, bytes)
    memory: list[Memory]
    progress: Progress | None  # the sink process's drain

    @property
    def ok(self) -> bool:
        return True

    def figures(self) -> list[Figure]:
        r = self.results
        out: list[Figure] = []
        for letter, what in (("a", "sink write path (a)"), ("f", "sink process (f)")):
            if letter not in r:
                continue
            for base, label, goal in (
                ("b", "raw COPY (b)", SINK_GOAL if letter == "a" else None),
                ("e", "row-by-row INSERT (e)", None),
            ):
                if base in r:
                    out.append(
                        Figure(what, r[letter].rate, "rows/s", label, r[base].rate,
                               goal)
                    )  # fmt: skip
        return out

    def bytes_per_reading(self) -> list[tuple[str, float]]:
        return [(what, size / max(rows, 1)) for what, rows, size in self.sizes]

    def report(self) -> str:
        lines = [
            f"bench sink: {self.dialect}, batches of {self.batch_records} wire"
            f" records ({self.batch_records * len(METRICS)} rows)"
        ]
        for r in self.results.values():
            lines.append(
                f"  {r.name:<28} {r.rows:>9} rows in {r.seconds:7.2f} s = "
                f"{r.rate:>9.0f} rows/s  ({r.rate / CITY_READINGS_PER_S:5.1f}x city)"
            )
            if r.note:
                lines.append(f"      {r.note}")
        lines += [f.line() for f in self.figures()]
        if "b" not in self.results:
            lines.append("  raw COPY (b) skipped: bulk method insert (no COPY)")
        a, c = self.results["a"], self.results["c"]
        both = 1 / (1 / a.rate + 1 / c.rate)
        lines.append(
            f"  city reference {CITY_READINGS_PER_S} readings/s: sink headroom "
            f"{a.rate / CITY_READINGS_PER_S:.1f}x, {both / CITY_READINGS_PER_S:.1f}x "
            "with the rollup refresh on the same core"
        )
        for what, rows, size in self.sizes:
            lines.append(
                f"  storage {what:<21} {size:>12} bytes / {rows} readings = "
                f"{size / max(rows, 1):6.1f} bytes per reading"
            )
        lines += [m.line() for m in self.memory]
        return "\n".join(lines)


SINK_GOAL = 0.70  # issue 16: the sink's write path at least 70 % of a raw COPY


async def run(o: Options) -> SinkRun:
    """One run (see the module doc) in schema ``o.schema``, dropped at the end
    unless ``o.keep``."""
    db = DatabaseSettings(
        dsn=SecretStr(o.dsn),
        schema=o.schema,
        dialect=o.dialect,
        bulk_method=o.bulk_method,
    )
    now_ms = system_ms()
    records = wire_records(o.rows, now_ms)
    batches = [
        records[i : i + o.batch_records]
        for i in range(0, len(records), o.batch_records)
    ]
    rows_batches = [
        [r for v in b for r in rows_from_batch(decode_batch(v, now_ms=now_ms))]
        for b in batches
    ]
    results: dict[str, Result] = {}
    memory: list[Memory] = []
    progress = None
    logs = Path(tempfile.mkdtemp(prefix="smartpark-bench-sink-"))
    async with await psycopg.AsyncConnection.connect(o.dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(o.schema))
        )
        try:
            async with Storage(db) as storage:
                await storage.migrate()
                dialect = storage.dialect.value
                await truncate(conn, o.schema)
                t0 = time.perf_counter()
                stored = await stored_rows(storage, conn, rows_batches)
                series = (
                    f"series created beforehand in {time.perf_counter() - t0:.2f} s"
                )
                results["a"] = await sink_path(storage, batches, now_ms, series)
                results["c"] = await refresh(storage, results["a"].rows)
                sizes = [
                    ("after (a)", *await bytes_per_reading(conn, o.schema,
                                                           compress=False)),
                ]  # fmt: skip
                if dialect == "timescale":
                    compressed = await bytes_per_reading(conn, o.schema, compress=True)
                    sizes.append(("compressed", *compressed))
                else:  # the day closes: its partition is compacted (db maintain)
                    tomorrow = datetime.fromtimestamp(now_ms / 1000 + 86400, UTC).date()
                    await storage.telemetry.compact_partitions(
                        settle_days=0, today=tomorrow
                    )
                    closed = await bytes_per_reading(conn, o.schema, compress=False)
                    sizes.append(("after compaction", *closed))
                if o.bulk_method == "copy":
                    await truncate(conn, o.schema)
                    results["b"] = await raw_copy(conn, o.schema, stored)
                await truncate(conn, o.schema)
                results["e"] = await row_inserts(conn, o.schema, stored)
            memory.append(
                Memory("bench process (in-process paths, all rows)", own_peak_kib())
            )
            if o.process:
                await truncate(conn, o.schema)
                rows = sum(len(b) for b in rows_batches)
                results["f"], progress, mem = await sink_process(o, records, rows, logs)
                memory.append(mem)
        finally:
            if not o.keep:
                await conn.execute(
                    sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                        sql.Identifier(o.schema)
                    )
                )
    return SinkRun(dialect, o.batch_records, results, sizes, memory, progress)


def options(args: argparse.Namespace) -> Options:
    return Options(
        rows=args.rows,
        batch_records=args.batch_records,
        bulk_method=args.bulk_method,
        dialect=args.dialect,
        schema=args.schema,
        keep=args.keep,
        process=not args.no_process,
        dsn=args.dsn,
        kafka=args.kafka,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's own arguments (:mod:`bench.cli` adds the endpoints)."""
    parser.add_argument("--schema", default=Options.schema)
    parser.add_argument(
        "--dialect", choices=["auto", "timescale", "postgres"], default="auto"
    )
    parser.add_argument("--rows", type=int, default=Options.rows)
    parser.add_argument(
        "--batch-records",
        type=int,
        default=Options.batch_records,
        help="wire records per transaction (default: the sink's batch_max_records)",
    )
    parser.add_argument(
        "--bulk-method",
        choices=["copy", "insert"],
        default="copy",
        help="insert: for servers without COPY (the PGlite TimescaleDB); skips (b)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench schema")
    parser.add_argument(
        "--no-process", action="store_true", help="skip (f), the sink process"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    add_arguments(parser)
    add_endpoints(parser)
    print(asyncio.run(run(options(parser.parse_args()))).report())
    sys.exit(0)
