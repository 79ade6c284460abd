"""``smartpark bridge``: run the MQTT → Kafka bridge until SIGINT or SIGTERM.

Settings come from the environment (``SMARTPARK_MQTT__HOST``, ``SMARTPARK_KAFKA__
BOOTSTRAP``, ...; see :mod:`smartpark.settings`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from dataclasses import asdict

from ingest.bridge import Bridge
from smartpark import logs
from smartpark.settings import Settings

log = logging.getLogger("smartpark.bridge")


async def _run(settings: Settings, stats_every_s: float) -> None:
    async with Bridge(settings) as bridge:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, bridge.stop)
        task = asyncio.create_task(bridge.run())
        while not task.done():
            await asyncio.wait({task}, timeout=stats_every_s)
            log.info("stats %s", asdict(bridge.stats))
        await task


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smartpark bridge", description=__doc__)
    parser.add_argument("--stats-every", type=float, default=10.0, metavar="S")
    args = parser.parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_level)
    asyncio.run(_run(settings, args.stats_every))
    return 0
