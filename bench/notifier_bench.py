"""Webhook delivery throughput and memory against raw HTTP posts (a script, no test).

    .venv/bin/python -m bench.notifier_bench --dsn postgresql://postgres@127.0.0.1:54329/smartpark

A receiver runs in a child process (a threading HTTP server answering 200 at
once), with ``--endpoints`` subscriptions pointing at it. Then, in one run:

  (a) the notifier's delivery path: ``--deliveries`` queued in PostgreSQL (alert
      event bodies of a realistic size), delivered by the production
      :class:`~notifier.service.Dispatcher` — per endpoint: read the next
      due delivery, its secrets, check the URL (SSRF), sign, POST on a new
      connection, record the attempt and the delivery's state in one transaction;
  (b) raw posts of the same bodies to the same receiver with the same
      concurrency (one request in flight per endpoint, a new connection each),
      no database, no signing, no checks.

Memory: the queue lives in the database and a worker holds one delivery, so the
process's peak RSS must not grow with the queue. (a) runs twice, with a tenth of
the deliveries and then all of them; the peak RSS after each is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import psycopg
from psycopg import sql
from pydantic import SecretStr

from notifier import events, signing
from notifier.http import Sender
from notifier.service import Deliverer, Dispatcher, NotifierStats
from smartpark.clock import system_ms
from smartpark.settings import (
    DatabaseSettings,
    NotifierSettings,
    Settings,
    WebhookSettings,
)
from storage import NewDelivery, Storage, Subscription, WebhookStore
from storage.secretbox import SecretBox


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length") or 0))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def serve() -> None:
    ThreadingHTTPServer.request_queue_size = 256  # not 5: bursts of new connections
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    print(server.server_address[1], flush=True)
    server.serve_forever()


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.notifier_bench", "--serve"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        yield f"http://127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.wait()


def event_body(i: int, park: str, enterprise: str) -> str:
    event = {
        "event_id": f"{i:024x}",
        "alert_id": f"a{i:023x}",
        "kind": "opened",
        "rule_id": "so2-hourly",
        "rule_version": "2026.1",
        "severity": "major",
        "scope": {
            "park": park,
            "enterprise": enterprise,
            "device": "stack-1",
            "metric": "so2_corrected",
        },
        "at_ms": 1_795_831_200_000 + i,
        "value": 41.7,
        "window": {"start_ms": 1_795_827_600_000, "end_ms": 1_795_831_200_000},
        "evidence": {
            "pack": "coal-power-ultra-low",
            "rule_kind": "window",
            "limit": 35.0,
            "verdict": "breach",
            "valid": 58,
            "expected": 60,
            "o2_reference": 6.0,
        },
    }
    return events.body(event, "alert.opened")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def delivery_path(
    settings: Settings, store: WebhookStore, subs: list[str], n: int, tag: str
) -> float:
    """Queue ``n`` deliveries round-robin over ``subs``; deliveries/s to drain."""
    now = system_ms()
    for start in range(0, n, 1000):
        await store.enqueue(
            [
                NewDelivery(
                    subs[i % len(subs)],
                    f"{tag}{i:020x}",
                    "alert.opened",
                    f"{tag}-{i}",
                    now,
                    event_body(i, "park1", "e"),
                )
                for i in range(start, min(n, start + 1000))
            ],
            [],
            now_ms=now,
        )
    cfg = settings.notifier
    stats = NotifierStats()
    async with Sender(allow=cfg.allow, timeout_s=cfg.timeout_s) as sender:
        dispatcher = Dispatcher(
            settings, store, Deliverer(store, sender, stats=stats), stats=stats
        )
        began = time.perf_counter()
        dispatcher.start()
        while stats.delivered < n:
            await asyncio.sleep(0.05)
            if time.perf_counter() - began > 600:
                raise SystemExit(f"only {stats.delivered} of {n} delivered in 10 min")
        elapsed = time.perf_counter() - began
        await dispatcher.close()
    if stats.attempts != n:
        print(f"{tag}: {stats.attempts} attempts for {n} deliveries: {stats.outcomes}")
    return n / elapsed


async def raw_posts(base_url: str, endpoints: int, n: int) -> float:
    bodies = [event_body(i, "park1", "e").encode() for i in range(n)]
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(limits=limits) as client:

        async def endpoint(k: int) -> None:
            for i in range(k, n, endpoints):
                r = await client.post(f"{base_url}/hook/{k}", content=bodies[i])
                r.raise_for_status()

        began = time.perf_counter()
        await asyncio.gather(*(endpoint(k) for k in range(endpoints)))
        return n / (time.perf_counter() - began)


async def main_async(dsn: str, n: int, endpoints: int) -> None:
    schema = f"bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
    settings = Settings(
        database=DatabaseSettings(dsn=SecretStr(dsn), schema=schema),
        notifier=NotifierSettings(allow=["127.0.0.1/32"], poll_ms=100),
        webhooks=WebhookSettings(
            secret_key=SecretStr(base64.urlsafe_b64encode(os.urandom(32)).decode())
        ),
    )
    try:
        with receiver() as base_url:
            async with Storage(
                settings.database,
                pool_size=18,
                webhook_keys=SecretBox.from_settings(settings.webhooks),
            ) as storage:
                await storage.migrate()
                store = storage.webhooks
                subs = []
                for k in range(endpoints):
                    sid = f"sub-{k}"
                    await store.create_subscription(
                        Subscription(
                            sid, "park1", f"e{k}", f"{base_url}/hook/{k}",
                            events.EVENT_TYPES,
                        ),
                        signing.generate_secret(),
                    )  # fmt: skip
                    subs.append(sid)
                rss0 = peak_rss_mb()
                small = await delivery_path(settings, store, subs, n // 10, "s")
                rss1 = peak_rss_mb()
                full = await delivery_path(settings, store, subs, n, "f")
                rss2 = peak_rss_mb()
            raw = await raw_posts(base_url, endpoints, n)
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema))
            )
    print(f"{n:,} deliveries to {endpoints} endpoints (one in flight each)")
    print(f"(a) notifier delivery path : {full:10,.0f} deliveries/s")
    print(f"(b) raw HTTP posts         : {raw:10,.0f} deliveries/s")
    print(f"    ratio (a)/(b)          : {full / raw:10.1%}")
    print(f"    {n // 10:,} first          : {small:10,.0f} deliveries/s")
    print(
        f"peak RSS: {rss0:.0f} MB before, {rss1:.0f} MB after {n // 10:,}, "
        f"{rss2:.0f} MB after {n:,} queued and delivered"
    )
    print(json.dumps({"a": full, "b": raw, "rss_mb": [rss0, rss1, rss2]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dsn", default="postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--endpoints", type=int, default=20)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve()
        return
    asyncio.run(main_async(args.dsn, args.deliveries, args.endpoints))


if __name__ == "__main__":
    main()
