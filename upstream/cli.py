"""``smartpark upstream``: forward outlets' data to regulator platforms over HJ 212.

- ``run --config FILE [--stats-every S]``: the feed and the links
  (:mod:`upstream.service`) until SIGINT/SIGTERM; the file is checked first
  (:mod:`upstream.config`), an error names ``file:line: field: reason``.
- ``status [--config FILE]``: per upstream (those of the file, else every one
  with outbox rows), one JSON line: ``pending`` packets, ``oldest_pending_age_s``,
  ``acked``, ``frames_sent`` and ``resent`` (frames beyond the first of a packet).

Settings from the environment (``SMARTPARK_DATABASE__DSN``,
``SMARTPARK_KAFKA__BOOTSTRAP``, ``SMARTPARK_UPSTREAM__GROUP_ID``...). Exit codes
as every ``smartpark`` command (:mod:`smartpark.cli`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys

from smartpark import logs
from smartpark.cli import command
from smartpark.clock import system_ms
from smartpark.settings import load_settings
from storage import Storage
from storage.upstream import UpstreamStore
from upstream import config as upstream_config

log = logging.getLogger("smartpark.upstream")


@command("upstream")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark upstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="forward to the configured platforms")
    run.add_argument("--config", required=True, metavar="FILE")
    run.add_argument("--stats-every", type=float, default=30.0, metavar="S")
    status = sub.add_parser("status", help="backlog and counts per upstream")
    status.add_argument("--config", metavar="FILE")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    if args.command == "run":
        cfg = upstream_config.load(args.config)
        from stream.service import run_until_signalled
        from upstream.service import UpstreamService

        async def go() -> None:
            async with UpstreamService(settings, cfg) as service:
                log.info(
                    "upstream started on %s, group %s, platforms %s",
                    settings.kafka.telemetry_topic, settings.upstream.group_id,
                    ", ".join(f"{u.name}={u.host}:{u.port}" for u in cfg.upstreams),
                )  # fmt: skip
                await run_until_signalled(
                    service, stats_every_s=args.stats_every, log=log
                )

        asyncio.run(go())
        return 0
    names = None
    if args.config is not None:
        names = [u.name for u in upstream_config.load(args.config).upstreams]

    async def show() -> None:
        async with Storage(settings.database) as storage:
            await storage.require_migrated()
            now_s = system_ms() / 1000
            for b in await UpstreamStore(storage).backlog(names):
                age = (
                    None
                    if b.oldest_pending is None
                    else round(now_s - b.oldest_pending.timestamp(), 1)
                )
                print(json.dumps({
                    "upstream": b.upstream, "pending": b.pending,
                    "oldest_pending_age_s": age, "acked": b.acked,
                    "frames_sent": b.frames_sent, "resent": b.resent,
                }))  # fmt: skip

    asyncio.run(show())
    return 0
