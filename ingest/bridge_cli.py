"""``smartpark bridge``: run the MQTT → Kafka bridge until SIGINT or SIGTERM.

Settings come from the environment (``SMARTPARK_MQTT__HOST``, ``SMARTPARK_KAFKA__
BOOTSTRAP``, ...; see :mod:`smartpark.settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from ingest.bridge import Bridge
from smartpark import logs
from smartpark.cli import command
from smartpark.settings import Settings, load_settings
from stream.service import run_until_signalled

log = logging.getLogger("smartpark.bridge")


async def _run(settings: Settings, stats_every_s: float) -> None:
    async with Bridge(settings) as bridge:
        await run_until_signalled(bridge, stats_every_s=stats_every_s, log=log)


@command("bridge")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark bridge", description=__doc__)
    parser.add_argument("--stats-every", type=float, default=10.0, metavar="S")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    asyncio.run(_run(settings, args.stats_every))
    return 0
