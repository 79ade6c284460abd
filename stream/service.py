"""Running a platform service in the foreground: signals, periodic stats, clean stop."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import asdict
from typing import Any, Protocol


class Service(Protocol):
    """What the bridge and the sink share: ``run()`` until ``stop()``, with stats."""

    @property
    def stats(self) -> Any: ...

    async def run(self) -> None: ...

    def stop(self) -> None: ...


async def run_until_signalled(
    service: Service, *, stats_every_s: float, log: logging.Logger
) -> None:
    """Run ``service`` until SIGINT or SIGTERM asks it to stop, logging its stats."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, service.stop)
    task = asyncio.create_task(service.run())
    while not task.done():
        await asyncio.wait({task}, timeout=stats_every_s)
        log.info("stats %s", asdict(service.stats))
    await task
