"""Replay throughput: readings/s from the database through ``storage.history`` and
the rule core, against the rule core on the same readings in memory (a script).

    .venv/bin/python -m bench.replay_bench \\
        --dsn postgresql://postgres@127.0.0.1:54329/smartpark [--stacks 100] [--hours 6]

Creates a fresh schema (dropped at the end), stores CEMS-shaped data (one SO2 and
one O2 reading per stack per minute) with the platform's own write path, then
measures in one run:

  (a) replay: :class:`rules.replay.Replayer` fed from
      :meth:`storage.history.HistoryStore.read` (server-side cursor, batches of
      5000, rows digested) — what a replay job does;
  (b) baseline: the same Replayer over the same readings already in memory, in
      the same order (the rule core and the digest alone, no database).

It checks both raise the same events and digest the same rows, then prints
readings/s of each and the ratio (a)/(b).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from pydantic import SecretStr

from rules.model import Obs
from rules.pack import parse_pack
from rules.replay import Replayer, plan
from smartpark import wire
from smartpark.settings import DatabaseSettings
from storage import Storage, rows_from_batch
from storage.history import HistoryScope, HistoryStore

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
MINUTE, HOUR = 60_000, 3_600_000
PACK = {
    "pack": "bench", "version": "1", "timezone": "UTC", "watermark_delay": 0,
    "rules": [
        {"id": "so2-hourly", "kind": "window", "metric": "so2", "window": "1h",
         "aggregate": "mean", "limit": 35,
         "o2_correction": {"reference": 6, "o2_metric": "o2"}},
    ],
}  # fmt: skip


def generate(stacks: int, hours: int, seed: int) -> list[wire.TelemetryBatch]:
    rng = random.Random(seed)
    out = []
    for s in range(stacks):
        readings = []
        for minute in range(hours * 60 + 1):  # one more: closes the last hour
            ts = T0 + minute * MINUTE
            so2 = round(rng.uniform(15, 40) + (9 if minute // 60 % 3 == 1 else 0), 2)
            o2 = round(rng.uniform(5.5, 9.5), 2)
            readings += [
                wire.Reading(minute + 1, "so2", so2, "mg/m3", ts),
                wire.Reading(minute + 1, "o2", o2, "%", ts),
            ]
        out.append(
            wire.TelemetryBatch("p1", f"e{s // 2}", f"e{s // 2}.stack-{s % 2}",
                                tuple(readings))
        )  # fmt: skip
    return out


async def run(args: argparse.Namespace) -> int:
    schema = f"bench_replay_{random.randrange(1 << 30):x}"
    async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as c:
        await c.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    settings = DatabaseSettings(dsn=SecretStr(args.dsn), schema=schema)
    try:
        async with Storage(settings, pool_size=2) as storage:
            await storage.migrate()
            for batch in generate(args.stacks, args.hours, 7):
                await storage.telemetry.write(rows_from_batch(batch))
            return await measure(storage, args.hours)
    finally:
        async with await psycopg.AsyncConnection.connect(
            args.dsn, autocommit=True
        ) as c:
            await c.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema))
            )


async def measure(storage: Storage, hours: int) -> int:
    pack = parse_pack(PACK)
    p = plan(pack, T0, T0 + hours * HOUR)
    start = datetime.fromtimestamp(p.read_from_ms / 1000, UTC)
    until = start + timedelta(milliseconds=p.read_until_ms - p.read_from_ms)
    history = HistoryStore(storage)

    t = time.perf_counter()
    from_db = Replayer(p)
    db_events = []
    kept: list[Obs] = []
    async for batch in history.read(HistoryScope("p1"), start, until):
        obs = [Obs._make(r) for r in batch]
        db_events += from_db.feed(obs)
        kept += obs
    db_s = time.perf_counter() - t

    t = time.perf_counter()
    in_memory = Replayer(p)
    mem_events = in_memory.feed(kept)
    mem_s = time.perf_counter() - t

    if (db_events, from_db.rows_digest) != (mem_events, in_memory.rows_digest):
        print("the two runs differ", file=sys.stderr)
        return 1
    n = from_db.rows
    print(f"{n} readings, {len(db_events)} alert events, {storage.dialect.value}")
    print(f"  replay from the database : {n / db_s:>10,.0f} readings/s ({db_s:.2f} s)")
    print(
        f"  rule core in memory      : {n / mem_s:>10,.0f} readings/s ({mem_s:.2f} s)"
    )
    print(f"  ratio (database/memory)  : {mem_s / db_s:.2f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--stacks", type=int, default=100)
    parser.add_argument("--hours", type=int, default=6)
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
