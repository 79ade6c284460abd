"""The ``smartpark`` command.

Each sub-command lives with its component and is imported only when used, so the
edge agent runs on a gateway that has only the edge dependencies installed.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS: dict[str, tuple[str, str]] = {
    "edge": ("edge_agent.cli", "edge agent: run | check"),
    "hj212": ("edge_agent.hj212.cli", "HJ 212-2017 frames: decode | encode"),
    "simulate": ("simulators.cli", "simulated plant devices: park, cems, wastewater"),
    "rules": ("rules.cli", "rule packs: check a pack over recorded readings"),
    "notifier": ("rules.notifier.cli:notifier_main", "alert webhooks: deliver"),
    "webhooks": ("rules.notifier.cli", "webhook subscriptions, deliveries, ping"),
    "bridge": ("ingest.bridge_cli", "MQTT → Kafka bridge"),
    "sink": ("ingest.sink_cli", "Kafka → database sink"),
    "db": ("ingest.db_cli", "database: migrate | info"),
    "demo": ("demo.cli", "embedded demo: the whole path on one laptop, no services"),
}


def _usage() -> str:
    lines = ["usage: smartpark <command> [options]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in {"-h", "--help"}:
        print(_usage())
        return 0 if args else 2
    entry = COMMANDS.get(args[0])
    if entry is None:
        print(f"smartpark: unknown command {args[0]!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _, func = entry[0].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        print(
            f"smartpark {args[0]}: missing dependency ({exc.name}); "
            "install the matching extra, e.g. pip install 'smartpark[platform]'",
            file=sys.stderr,
        )
        return 2
    rc: int = getattr(module, func or "main")(args[1:])
    return rc


if __name__ == "__main__":
    sys.exit(main())
