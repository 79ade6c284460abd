"""API query and export latency against the same SQL run directly (a script).

    .venv/bin/python -m bench.api_bench [--days 7] [--devices 40] [--dsn ...]

Generates a week of one enterprise's data (40 devices x 5 metrics, one reading every
10 s: 12.1 million rows), COPYs it into a fresh schema with its series and refreshes
the rollups, then starts ``smartpark api`` as its own process and measures, in one
run:

  (1) hourly means of one device over the week: ``GET /v1/aggregates`` against
      the same aggregate SQL run directly with psycopg (p50 / p95 over 20 calls);
  (2) daily totals (consumption) of the whole enterprise over the week: the same;
  (3) a full-week CSV export of the enterprise: rows/s and the API process's peak
      resident memory (VmHWM) against a raw ``COPY ... TO STDOUT`` of the same rows.

It prints the raw baseline beside each figure and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from psycopg import sql
from pydantic import SecretStr

from api.cli import create_key
from smartpark.settings import DatabaseSettings
from smartpark.tenancy import Role, Scope
from storage import Storage, TelemetryRow

METRICS = ("active_energy", "active_power", "reactive_energy", "power_factor",
           "water_volume")  # fmt: skip
STEP_S = 10
START = datetime(2026, 11, 23, tzinfo=UTC) - timedelta(hours=8)  # Monday 00:00 +08


async def generate(dsn: str, schema: str, devices: int, days: int) -> int:
    """Series through the storage API, rows by a raw COPY; returns the row count."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(
            sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema))
        )
    settings = DatabaseSettings(dsn=SecretStr(dsn), schema=schema, dialect="postgres")
    async with Storage(settings) as storage:
        await storage.migrate()
        names = [f"dev-{d:02d}" for d in range(devices)]
        probe = [
            TelemetryRow(START, "park-b", "ent-b", n, m, 0.0, "N", 0)
            for n in names
            for m in METRICS
        ]
        async with storage.connection() as conn:
            ids = await storage.telemetry.series.resolve(conn, probe)
        # partitions for every day of the range
        async with storage.connection() as conn:
            await storage.telemetry.partitions.ensure_days(
                conn, {(START + timedelta(days=d)).date() for d in range(days + 1)}
            )
        table = sql.Identifier(schema, "telemetry")
        total = 0
        steps = days * 86400 // STEP_S
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            for chunk in range(0, steps, 360):  # an hour of every series at a time
                async with (
                    conn.cursor() as cur,
                    cur.copy(
                        sql.SQL(
                            "COPY {} (time, seq, value, series_id) FROM STDIN"
                            " (FORMAT BINARY)"
                        ).format(table)
                    ) as copy,
                ):
                    copy.set_types(["timestamptz", "int8", "float8", "int4"])
                    for i in range(chunk, min(chunk + 360, steps)):
                        t = START + timedelta(seconds=i * STEP_S)
                        for k, sid in enumerate(ids):
                            value = float(i) if k % 5 in (0, 2, 4) else (i + k) % 97
                            await copy.write_row((t, i, value, sid))
                            total += 1
                await conn.commit()
        await storage.telemetry.refresh_rollups(START, START + timedelta(days=days))
        async with storage.connection() as conn:
            await conn.execute(sql.SQL("VACUUM ANALYZE {}").format(table))
    return total


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[int(0.95 * (len(ordered) - 1))]


async def timed(calls: int, fn: Any) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await fn()
        samples.append((time.perf_counter() - t0) * 1000)
    return percentiles(samples)


def start_api(dsn: str, schema: str, pepper: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SMARTPARK_DATABASE__DSN": dsn,
        "SMARTPARK_DATABASE__SCHEMA": schema,
        "SMARTPARK_API__KEY_PEPPER": pepper,
        "SMARTPARK_WEBHOOKS__SECRET_KEY": base64.urlsafe_b64encode(
            os.urandom(32)
        ).decode(),
        "SMARTPARK_API__PORT": str(port),
    }
    exe = Path(sys.executable).with_name("smartpark")
    log = Path(tempfile.gettempdir()) / "smartpark-api-bench.log"
    with log.open("wb") as out:  # the child keeps its own descriptor
        return subprocess.Popen([str(exe), "api"], env=env, stdout=out, stderr=out)


def peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


async def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    rows = await generate(args.dsn, args.schema, args.devices, args.days)
    took = time.perf_counter() - t0
    print(f"generated {rows} rows ({args.devices} devices x {len(METRICS)} metrics,"
          f" {args.days} days, every {STEP_S} s) in {took:.0f} s")  # fmt: skip
    pepper = secrets.token_urlsafe(32)
    settings = DatabaseSettings(dsn=SecretStr(args.dsn), schema=args.schema)
    async with Storage(settings) as storage:
        key = await create_key(storage, pepper.encode(), scope=Scope(
            Role.ENTERPRISE, "park-b", "ent-b"), name="bench")  # fmt: skip
    proc = start_api(args.dsn, args.schema, pepper, args.port)
    base = f"http://127.0.0.1:{args.port}"
    headers = {"Authorization": f"Bearer {key}"}
    end = START + timedelta(days=args.days)
    week = {"start": START.isoformat(), "end": end.isoformat()}
    try:
        async with httpx.AsyncClient(
            base_url=base, headers=headers, timeout=600
        ) as http:
            for _ in range(150):
                if proc.poll() is not None:
                    log = Path(tempfile.gettempdir()) / "smartpark-api-bench.log"
                    raise SystemExit(f"smartpark api exited: {log.read_text()[-2000:]}")
                try:
                    if (await http.get("/health")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.2)
            async with await psycopg.AsyncConnection.connect(args.dsn) as conn:
                await report(http, conn, args, week)
            # (3) export
            before = peak_rss_kib(proc.pid)
            t0 = time.perf_counter()
            lines = 0
            async with http.stream("GET", "/v1/exports/readings",
                                   params={**week, "format": "csv"}) as r:  # fmt: skip
                async for chunk in r.aiter_bytes():
                    lines += chunk.count(b"\n")
            api_s = time.perf_counter() - t0
            peak = peak_rss_kib(proc.pid)
        t0 = time.perf_counter()
        copied = 0
        async with await psycopg.AsyncConnection.connect(args.dsn) as conn:
            q = sql.SQL(
                "COPY (SELECT t.time, s.device, s.metric, t.value FROM {} t JOIN {} s"
                " ON s.id = t.series_id ORDER BY t.time, s.device, s.metric)"
                " TO STDOUT (FORMAT CSV)"
            ).format(sql.Identifier(args.schema, "telemetry"),
                     sql.Identifier(args.schema, "series"))  # fmt: skip
            async with conn.cursor() as cur, cur.copy(q) as copy:
                async for data in copy:
                    copied += bytes(data).count(b"\n")
        copy_s = time.perf_counter() - t0
        print(f"(3) week export, CSV        API {lines - 1:>9} rows in {api_s:6.1f} s ="
              f" {(lines - 1) / api_s:8.0f} rows/s | raw COPY TO STDOUT {copied} rows"
              f" in {copy_s:5.1f} s = {copied / copy_s:8.0f} rows/s | ratio"
              f" {copied / copy_s / ((lines - 1) / api_s):4.1f}x")  # fmt: skip
        print(f"    API process peak RSS (VmHWM): {before / 1024:.0f} MiB before the"
              f" export, {peak / 1024:.0f} MiB after")  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(10)
    if not args.keep:
        async with await psycopg.AsyncConnection.connect(
            args.dsn, autocommit=True
        ) as c:
            await c.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(
                sql.Identifier(args.schema)))  # fmt: skip
    return 0


async def report(
    http: httpx.AsyncClient, conn: psycopg.AsyncConnection[Any],
    args: argparse.Namespace, week: dict[str, str],
) -> None:  # fmt: skip
    s = args.schema
    hourly_sql = sql.SQL(
        "SELECT date_trunc('hour', r.bucket, 'Asia/Shanghai') b, s.metric,"
        " sum(r.sum) / sum(r.n) FROM {} r JOIN {} s ON s.id = r.series_id"
        " WHERE s.device = 'dev-00' AND r.bucket >= %s AND r.bucket < %s"
        " GROUP BY 1, 2 ORDER BY 1, 2"
    ).format(sql.Identifier(s, "telemetry_1h"), sql.Identifier(s, "series"))
    daily_sql = sql.SQL(
        "SELECT date_trunc('day', t.time, 'Asia/Shanghai') b, s.device, s.metric,"
        " sum(greatest(t.value - p.prev, 0)) FROM (SELECT series_id, time, value,"
        " lag(value) OVER (PARTITION BY series_id ORDER BY time) prev FROM {} WHERE"
        " time >= %s AND time < %s) t JOIN {} s ON s.id = t.series_id,"
        " LATERAL (SELECT t.prev) p WHERE s.metric IN ('active_energy',"
        " 'reactive_energy', 'water_volume') GROUP BY 1, 2, 3"
    ).format(sql.Identifier(s, "telemetry"), sql.Identifier(s, "series"))
    span = (datetime.fromisoformat(week["start"]), datetime.fromisoformat(week["end"]))

    async def api_hourly() -> None:
        r = await http.get("/v1/aggregates", params={
            **week, "interval": "1h", "device": "dev-00", "limit": 10000,
            "consumption": "false"})  # fmt: skip
        assert r.status_code == 200, r.text

    async def sql_hourly() -> None:
        await (await conn.execute(hourly_sql, span)).fetchall()

    async def api_daily() -> None:
        r = await http.get("/v1/aggregates", params={
            **week, "interval": "1d", "limit": 10000})  # fmt: skip
        assert r.status_code == 200, r.text

    async def sql_daily() -> None:
        await (await conn.execute(daily_sql, span)).fetchall()

    for name, api_fn, sql_fn, calls in (
        ("(1) hourly means, 1 device  ", api_hourly, sql_hourly, 20),
        ("(2) daily totals, enterprise", api_daily, sql_daily, 5),
    ):
        await api_fn()  # warm
        a50, a95 = await timed(calls, api_fn)
        s50, s95 = await timed(calls, sql_fn)
        ratio = a50 / s50
        api = f"API p50 {a50:7.1f} ms p95 {a95:7.1f} ms"
        direct = f"direct SQL p50 {s50:7.1f} ms p95 {s95:7.1f} ms"
        print(f"{name}  {api} | {direct} | ratio p50 {ratio:4.1f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    parser.add_argument("--schema", default="bench_api")
    parser.add_argument("--devices", type=int, default=40)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--port", type=int, default=18081)
    parser.add_argument("--keep", action="store_true")
    sys.exit(asyncio.run(main(parser.parse_args())))
