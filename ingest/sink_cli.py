"""``smartpark sink``: run the Kafka → database sink until SIGINT or SIGTERM.

Settings come from the environment (``SMARTPARK_KAFKA__BOOTSTRAP``,
``SMARTPARK_DATABASE__DSN``, ``SMARTPARK_SINK__GROUP_ID``, ...; see
:mod:`smartpark.settings`). The sink does not migrate: it refuses to start until
``smartpark db migrate`` has been run on the configured schema.
"""

from __future__ import annotations

import argparse
import asyncio
import logging

from ingest.sink import Sink
from smartpark import logs
from smartpark.cli import command
from smartpark.settings import Settings, load_settings
from stream.service import run_until_signalled

log = logging.getLogger("smartpark.sink")


async def _run(settings: Settings, stats_every_s: float) -> None:
    async with Sink(settings) as sink:
        log.info(
            "sink started: %s -> schema %r (%s), group %s",
            settings.kafka.telemetry_topic,
            settings.database.schema_,
            sink.storage.dialect.value,
            settings.sink.group_id,
        )
        await run_until_signalled(sink, stats_every_s=stats_every_s, log=log)


@command("sink")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark sink", description=__doc__)
    parser.add_argument("--stats-every", type=float, default=10.0, metavar="S")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    asyncio.run(_run(settings, args.stats_every))
    return 0
