"""``smartpark bench``: benchmarks of the whole platform on the local services.

``smartpark bench e2e``: the open-loop load of :mod:`bench.load` through MQTT →
bridge → Kafka → sink → PostgreSQL, device time → row-visible latency beside a raw
MQTT subscriber (:mod:`bench.e2e`). Exit code 0 for a valid run with every reading
stored, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio

import psycopg
from aiokafka.errors import KafkaError

from bench import e2e
from smartpark.cli import EXIT_FAILED, EXIT_OK, command
from smartpark.errors import SmartparkError


class BenchFailed(SmartparkError):
    """A service the bench needs did not answer, or the run could not start."""


@command("bench")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    e2e.add_arguments(sub.add_parser("e2e", help="open-loop load, row-visible latency"))
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(e2e.run(e2e.options(args)))
    except (OSError, psycopg.Error, KafkaError, RuntimeError) as exc:
        raise BenchFailed(
            f"{type(exc).__name__}: {exc} (are the local services up? "
            "deploy/local/services up)"
        ) from exc
    print(result.report())
    return EXIT_OK if result.ok else EXIT_FAILED
