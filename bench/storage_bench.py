"""Bytes per stored reading in the hot table, beside the rows' own size.

    smartpark bench storage [--rows 500000] [--timescale-rows 200000]

Plain PostgreSQL (``--dsn``): the city load's readings (:func:`bench.sink_bench.
wire_records`) are written through the sink's write path into a fresh schema; the
size of ``telemetry`` (heap, indexes and TOAST of every partition,
``pg_total_relation_size``) over its rows is measured while its day is being
written, and again once the day is closed and its partition compacted (``smartpark
db maintain``). The baseline is the heap alone (``pg_relation_size``: the rows
without any index), so the ratio is what the indexes and free space add. A week of
the hot table holds two days as written (today, yesterday) and five compacted; that
average is computed from the two figures. Goal (issue 16): at most
:data:`GOAL_BYTES` a reading.

TimescaleDB (``--timescale-dsn``, the PGlite build; ``none`` skips it): the
readings of :mod:`bench.timescale_bytes`, compressed against uncompressed
(``hypertable_size``). PGlite takes one connection at a time: nothing else may use
it during the run.
"""

from __future__ import annotations

import argparse
import socket
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql
from pydantic import SecretStr

from bench import timescale_bytes
from bench.figures import Figure
from bench.sink_bench import bytes_per_reading, sink_path, wire_records
from smartpark.clock import system_ms
from smartpark.settings import DatabaseSettings, SinkSettings
from storage import Storage

GOAL_BYTES = 100.0


@dataclass(frozen=True)
class Options:
    rows: int = 500_000
    timescale_rows: int = 200_000
    timescale_devices: int = 400
    dsn: str = "postgresql://postgres@127.0.0.1:54329/smartpark"
    timescale_dsn: str | None = (
        "postgresql://postgres:postgres@127.0.0.1:54330/postgres"
    )


@dataclass(frozen=True)
class Size:
    """The readings in ``telemetry`` and what they take."""

    when: str
    readings: int
    total_bytes: int  # heap, indexes, TOAST
    heap_bytes: int  # the rows alone (plain); uncompressed total (TimescaleDB)

    @property
    def per_reading(self) -> float:
        return self.total_bytes / max(self.readings, 1)


@dataclass(frozen=True)
class StorageRun:
    plain: list[Size]  # while written, compacted
    timescale: list[Size]  # empty when the TimescaleDB build did not answer
    timescale_skipped: str = ""

    @property
    def ok(self) -> bool:
        return True

    @property
    def week_average(self) -> float:
        """Bytes a reading over a week of the hot table: two days as written,
        five compacted."""
        written, compacted = self.plain
        return (2 * written.per_reading + 5 * compacted.per_reading) / 7

    def figures(self) -> list[Figure]:
        out = [
            Figure(
                f"PostgreSQL, {s.when}",
                s.per_reading,
                "B/reading",
                "the heap alone (no index)",
                s.heap_bytes / max(s.readings, 1),
                goal_max=GOAL_BYTES,
            )
            for s in self.plain
        ]
        if self.timescale:
            raw, packed = self.timescale
            out.append(
                Figure(
                    "TimescaleDB, compressed",
                    packed.per_reading,
                    "B/reading",
                    "TimescaleDB, uncompressed",
                    raw.per_reading,
                    goal_max=GOAL_BYTES,
                )
            )
        return out

    def report(self) -> str:
        written, _ = self.plain
        lines = [
            f"bench storage: {written.readings:,} readings of the city load on plain"
            " PostgreSQL"
            + (
                f", {self.timescale[0].readings:,} on TimescaleDB (PGlite)"
                if self.timescale
                else f"; TimescaleDB skipped: {self.timescale_skipped}"
            ),
            *(f.line() for f in self.figures()),
            f"  a week of the hot table (2 days as written, 5 compacted):"
            f" {self.week_average:.1f} B/reading",
        ]
        return "\n".join(lines)


async def _heap_bytes(conn: psycopg.AsyncConnection[Any], schema: str) -> int:
    table = sql.Identifier(schema, "telemetry").as_string(conn)
    cur = await conn.execute(
        "SELECT sum(pg_relation_size(inhrelid)) FROM pg_inherits"
        " WHERE inhparent = %s::regclass",
        (table,),
    )
    row = await cur.fetchone()
    return int(row[0] or 0) if row else 0


async def plain(o: Options) -> list[Size]:
    """Sizes while written and once compacted, on a fresh schema (dropped after)."""
    schema = f"bench_bytes_{uuid.uuid4().hex[:8]}"
    db = DatabaseSettings(dsn=SecretStr(o.dsn), schema=schema, dialect="postgres")
    now_ms = system_ms()
    records = wire_records(o.rows, now_ms)
    n = SinkSettings().batch_max_records
    batches = [records[i : i + n] for i in range(0, len(records), n)]
    drop = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
    async with await psycopg.AsyncConnection.connect(o.dsn, autocommit=True) as conn:
        try:
            async with Storage(db) as storage:
                await storage.migrate()
                await sink_path(storage, batches, now_ms)
                rows, total = await bytes_per_reading(conn, schema, compress=False)
                sizes = [
                    Size("while written", rows, total, await _heap_bytes(conn, schema))
                ]
                tomorrow = datetime.fromtimestamp(now_ms / 1000 + 86400, UTC).date()
                await storage.telemetry.compact_partitions(
                    settle_days=0, today=tomorrow
                )
                rows, total = await bytes_per_reading(conn, schema, compress=False)
                heap = await _heap_bytes(conn, schema)
                sizes.append(Size("compacted", rows, total, heap))
            return sizes
        finally:
            await conn.execute(drop)


def answers(dsn: str) -> str:
    """'' if something listens at ``dsn``'s host and port, else why not."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host, port = str(info.get("host", "127.0.0.1")), int(str(info.get("port", 5432)))
    try:
        with socket.create_connection((host, port), timeout=2):
            return ""
    except OSError as exc:
        return f"nothing answers at {host}:{port} ({exc.strerror or exc})"


async def run(o: Options) -> StorageRun:
    sizes = await plain(o)
    skipped = "--timescale-dsn none" if o.timescale_dsn is None else ""
    ts: list[Size] = []
    if o.timescale_dsn is not None:
        skipped = answers(o.timescale_dsn)
        if not skipped:
            measured = await timescale_bytes.measure(
                o.timescale_dsn,
                f"bench_ts_{uuid.uuid4().hex[:8]}",
                rows=o.timescale_rows,
                devices=o.timescale_devices,
            )
            (_, n0, b0), (_, n1, b1) = measured
            ts = [Size("uncompressed", n0, b0, b0), Size("compressed", n1, b1, b0)]
    return StorageRun(sizes, ts, skipped)


def options(args: argparse.Namespace) -> Options:
    return Options(
        rows=args.rows,
        timescale_rows=args.timescale_rows,
        dsn=args.dsn,
        timescale_dsn=None if args.timescale_dsn == "none" else args.timescale_dsn,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """This bench's own arguments (:mod:`bench.cli` adds the endpoints)."""
    parser.add_argument("--rows", type=int, default=Options.rows)
    parser.add_argument("--timescale-rows", type=int, default=Options.timescale_rows)
