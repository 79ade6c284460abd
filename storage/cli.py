"""``smartpark db``: migrate the schema, show what is in it, run maintenance.

Exit codes as every ``smartpark`` command (:mod:`smartpark.cli`). Settings come
from the environment (``SMARTPARK_DATABASE__DSN``,
``SMARTPARK_DATABASE__SCHEMA``, ``SMARTPARK_DATABASE__DIALECT`` = auto | timescale |
postgres; see :mod:`smartpark.settings`).

    smartpark db migrate            apply missing migrations (idempotent)
    smartpark db info [--json]      dialect, applied migrations, row counts
    smartpark db maintain [--retention-days N [--drop-unarchived]]
                                    partitions around today, rollup refresh,
                                    drop raw partitions older than N days that
                                    the archive emptied (or all of them)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from dataclasses import asdict

from smartpark import logs
from smartpark.cli import command
from smartpark.settings import Settings, load_settings
from storage import Storage, StorageInfo


def _out(line: str) -> None:
    # Command output for people and scripts (ruff's T20 flags print in services).
    sys.stdout.write(line + "\n")


async def _migrate(storage: Storage) -> None:
    applied = await storage.migrate()
    where = f"schema {storage.schema!r} ({storage.dialect.value})"
    if applied:
        _out(f"{where}: applied {', '.join(applied)}")
    else:
        _out(f"{where}: up to date")


def _print_info(info: StorageInfo) -> None:
    _out(f"schema      {info.schema}")
    _out(f"dialect     {info.dialect.value}")
    ts = f", timescaledb {info.timescaledb_version}" if info.timescaledb_version else ""
    _out(f"server      PostgreSQL {info.server_version}{ts}")
    for m in info.migrations:
        _out(
            f"applied     {m.version:04d}_{m.name}  {m.applied_at:%Y-%m-%d %H:%M:%S%z}"
        )
    for name in info.pending:
        _out(f"pending     {name}")
    for table, count in info.row_counts.items():
        _out(f"rows        {table:<16} {count}")
    if info.partitions:
        _out(
            f"partitions  {len(info.partitions)}:"
            f" {info.partitions[0]} .. {info.partitions[-1]}"
        )


async def _info(storage: Storage, as_json: bool) -> None:
    info = await storage.info()
    if as_json:
        _out(json.dumps(asdict(info), default=str, indent=2))
    else:
        _print_info(info)


async def _maintain(
    storage: Storage, retention_days: int | None, drop_unarchived: bool
) -> None:
    await storage.require_migrated()
    created = await storage.telemetry.ensure_partitions()
    _out(f"partitions created: {', '.join(created) or 'none'}")
    refreshed = await storage.telemetry.refresh_rollups()
    _out(f"rollups refreshed ({refreshed} one-minute buckets recomputed)")
    for c in await storage.telemetry.compact_partitions():
        _out(
            f"partition compacted: {c.partition} {c.bytes_before} -> "
            f"{c.bytes_after} bytes"
        )
    if retention_days is not None:
        dropped, kept = await storage.telemetry.apply_retention(
            keep_days=retention_days, drop_unarchived=drop_unarchived
        )
        _out(f"partitions dropped: {', '.join(dropped) or 'none'}")
        if kept:
            _out(
                f"partitions kept (rows in no archive: smartpark archive retain"
                f" moves them): {', '.join(kept)}"
            )


async def _run(settings: Settings, args: argparse.Namespace) -> None:
    async with Storage(settings.database) as storage:
        if args.command == "migrate":
            await _migrate(storage)
        elif args.command == "info":
            await _info(storage, args.json)
        else:
            await _maintain(storage, args.retention_days, args.drop_unarchived)


@command("db")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark db",
        description="database: migrate | info | maintain",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("migrate", help="apply missing migrations (idempotent)")
    info = sub.add_parser("info", help="dialect, migrations, row counts")
    info.add_argument("--json", action="store_true", help="machine-readable output")
    maintain = sub.add_parser(
        "maintain", help="partitions, rollups, compaction of closed days, retention"
    )
    maintain.add_argument(
        "--retention-days",
        type=int,
        metavar="N",
        help="drop raw partitions older than N days that the archive emptied"
        " (plain PostgreSQL)",
    )
    maintain.add_argument(
        "--drop-unarchived",
        action="store_true",
        help="with --retention-days: drop old partitions even when they hold rows"
        " no archive holds (those rows are lost)",
    )
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    asyncio.run(_run(settings, args))
    return 0
