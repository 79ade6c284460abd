"""The ``smartpark`` command, and how every sub-command ends.

Each sub-command lives with its component and is imported only when used, so the
edge agent runs on a gateway that has only the edge dependencies installed.

Exit codes, the same for every sub-command (:func:`exit_code`, applied by
:func:`command`):

- ``0`` — done;
- ``1`` — what was asked for does not exist (:class:`NotFound`), a service it needs
  is unavailable (:class:`StorageError`, a device or broker error), or what it
  checked was found faulty (``rules check`` with bad lines, ``edge check`` with a
  device not answering);
- ``2`` — bad input: arguments (:class:`UsageError`, argparse), settings or a
  configuration file (:class:`ConfigError`), a payload (:class:`PayloadError`).

Every failure is one line on stderr, ``smartpark <command>: <what and why>``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Callable
from datetime import datetime

from smartpark.errors import (
    ConfigError,
    PayloadError,
    SmartparkError,
    UsageError,
)

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2

_BAD_INPUT = (ConfigError, PayloadError, UsageError)

Main = Callable[[list[str] | None], int]


def exit_code(exc: SmartparkError) -> int:
    """The exit code of a command that stopped on ``exc`` (see the module doc)."""
    return EXIT_BAD_INPUT if isinstance(exc, _BAD_INPUT) else EXIT_FAILED


def command(name: str) -> Callable[[Main], Main]:
    """Decorate a sub-command's ``main``: a :class:`SmartparkError` it raises becomes
    one line on stderr and :func:`exit_code`."""

    def wrap(main: Main) -> Main:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except SmartparkError as exc:
                print(f"smartpark {name}: {exc}", file=sys.stderr)
                return exit_code(exc)

        return run

    return wrap


def aware_datetime(text: str) -> datetime:
    """An ISO 8601 time with its zone, for an argparse ``type=``: anything else is
    an argparse error saying what is missing."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not ISO 8601: {text!r}") from None
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"needs a zone (e.g. +08:00 or Z): {text!r}")
    return moment


COMMANDS: dict[str, tuple[str, str]] = {
    "edge": ("edge_agent.cli", "edge agent: run | check"),
    "hj212": ("edge_agent.hj212.cli", "HJ 212-2017 frames: decode | encode"),
    "simulate": ("simulators.cli", "simulated plant devices: park, cems, wastewater"),
    "rules": ("rules.cli", "rule packs: check a pack over recorded readings"),
    "notifier": ("notifier.cli:notifier_main", "alert webhooks: deliver"),
    "webhooks": ("notifier.cli", "webhook subscriptions, deliveries, ping"),
    "bridge": ("ingest.bridge_cli", "MQTT → Kafka bridge"),
    "sink": ("ingest.sink_cli", "Kafka → database sink"),
    "db": ("storage.cli", "database: migrate | info | maintain"),
    "api": ("api.cli:api_main", "the platform HTTP API"),
    "keys": ("api.cli", "API keys: create | list | revoke"),
    "mqtt": ("api.mqtt.cli", "MQTT accounts; the broker's password and ACL files"),
    "grafana": ("api.grafana.cli", "Grafana: provision (HTTP API) | export DIR"),
    "report": ("api.report.cli", "reports: monthly (PDF, PNG, CSV)"),
    "signing": ("storage.signing_cli", "the platform's signing key: keygen | public"),
    "replay": ("api.replay.cli", "regulator replay: run (a signed CSV report)"),
    "archive": ("storage.archive.cli", "sealed archive: seal | verify | retain"),
    "upstream": ("upstream.cli", "HJ 212 forwarding to regulators: run | status"),
    "demo": ("demo.cli", "embedded demo: the whole path on one laptop, no services"),
    "bench": ("bench.cli", "benchmarks on the local services: e2e (open-loop load)"),
    "drill": ("bench.drill", "fault drills under load, with a ledger: short | full"),
}


def _usage() -> str:
    lines = ["usage: smartpark <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return EXIT_OK if args else EXIT_BAD_INPUT
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"smartpark: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return EXIT_BAD_INPUT
    module_name, _, func = entry[0].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(
            f"smartpark {args[0]}: missing dependency ({exc.name}); "
            "install the matching extra, e.g. pip install 'smartpark[platform]'",
            file=sys.stderr,
        )
        return EXIT_BAD_INPUT
    rc: int = getattr(module, func or "main")(args[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main())
