"""``smartpark bench``: benchmarks of the whole platform on the local services.

Every figure is printed beside a raw baseline measured in the same run on the same
input, with their ratio:

``smartpark bench e2e``: the open-loop load of :mod:`bench.load` through MQTT →
bridge → Kafka → sink → PostgreSQL, device time → row-visible latency beside a raw
MQTT subscriber (:mod:`bench.e2e`). Exit code 0 for a valid run with every reading
stored, 1 otherwise.

``smartpark bench sink``: the sink's write path and the sink process draining a
Kafka backlog, against a raw COPY and a row-by-row INSERT of the same rows; bytes
per stored reading (:mod:`bench.sink_bench`).

``smartpark bench bridge``: the bridge draining an MQTT backlog, against a raw
subscriber that only counts and the Kafka producer alone (:mod:`bench.bridge_bench`).

``smartpark bench rules``: the rules runner draining a Kafka backlog, against the
rule core on the same readings in memory (:mod:`bench.rules_bench`).

``smartpark bench storage``: bytes per stored reading on plain PostgreSQL and, where
the TimescaleDB build answers, compressed (:mod:`bench.storage_bench`).

``smartpark bench report [--quick]``: all of the above and ``e2e`` at the city load
(and two, three and four times it without ``--quick``); writes ``docs/benchmarks.md``
and its plots (:mod:`bench.report`).

The component benches exit 0 when they ran to the end (a goal not met is printed,
not an error); ``report`` exits 1 if an e2e run was invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

import psycopg
from aiokafka.errors import KafkaError

from bench import bridge_bench, e2e, report, rules_bench, sink_bench, storage_bench
from bench.figures import EXIT_INTERRUPTED, add_endpoints, interrupt_on_terminate
from smartpark.cli import EXIT_FAILED, EXIT_OK, command
from smartpark.errors import SmartparkError


class BenchFailed(SmartparkError):
    """A service the bench needs did not answer, or the run could not start."""


class Outcome(Protocol):
    """What every bench returns: its printed report, and whether it passed."""

    @property
    def ok(self) -> bool: ...

    def report(self) -> str: ...


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartpark bench", description=__doc__)
    sub = parser.add_subparsers(dest="bench", required=True)
    e2e.add_arguments(sub.add_parser("e2e", help="open-loop load, row-visible latency"))
    for name, module, text in (
        ("sink", sink_bench, "sink vs raw COPY vs row-by-row INSERT"),
        ("bridge", bridge_bench, "bridge vs raw subscriber vs producer alone"),
        ("rules", rules_bench, "rules runner vs the rule core in memory"),
        ("storage", storage_bench, "bytes per stored reading"),
        ("report", report, "everything; writes docs/benchmarks.md"),
    ):
        p = sub.add_parser(name, help=text)
        module.add_arguments(p)
        add_endpoints(p)
    return parser


@command("bench")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    interrupt_on_terminate()
    runs: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, Outcome]]] = {
        "e2e": lambda a: e2e.run(e2e.options(a)),
        "sink": lambda a: sink_bench.run(sink_bench.options(a)),
        "bridge": lambda a: bridge_bench.run(bridge_bench.options(a)),
        "rules": lambda a: rules_bench.run(rules_bench.options(a)),
        "storage": lambda a: storage_bench.run(storage_bench.options(a)),
        "report": lambda a: report.run(report.options(a)),
    }
    try:
        result: Outcome = asyncio.run(runs[args.bench](args))
    except KeyboardInterrupt:  # Ctrl-C or kill: the run's clean-up has run
        print("interrupted; the run's clean-up ran", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (OSError, psycopg.Error, KafkaError, RuntimeError) as exc:
        raise BenchFailed(
            f"{type(exc).__name__}: {exc} (are the local services up? "
            "deploy/local/services up)"
        ) from exc
    print(result.report())
    return EXIT_OK if result.ok else EXIT_FAILED
