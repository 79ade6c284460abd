"""The direction of imports (ARCHITECTURE.md, "Components and where they live").

- The pure core (wire format, metric catalogue, rule evaluation, the HJ 212 codec,
  webhook signing and event shaping) imports no network, database or broker library,
  neither itself nor through anything it imports.
- Each room imports only the rooms below it: services stand on ``storage`` and
  ``stream`` and never import each other (``rules``, ``notifier`` and ``api`` never
  import ``ingest``); the platform layer imports no service; nothing imports
  ``demo`` or ``bench``.

Imports are read from the source (every ``import`` statement, those inside functions
too), so a lazy import cannot slip past.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROOMS = (
    "smartpark", "edge_agent", "simulators", "storage", "stream", "ingest", "rules",
    "notifier", "api", "demo", "bench",
    "upstream",
)  # fmt: skip

# Which rooms each room may import (itself included).
MAY_IMPORT: dict[str, set[str]] = {
    "smartpark": {"smartpark"},
    "edge_agent": {"smartpark", "edge_agent"},
    "simulators": {"smartpark", "edge_agent", "simulators"},
    "storage": {"smartpark", "storage"},
    "stream": {"smartpark", "storage", "stream"},
    "ingest": {"smartpark", "storage", "stream", "ingest"},
    "rules": {"smartpark", "storage", "stream", "rules"},
    "notifier": {"smartpark", "storage", "stream", "notifier"},
    "upstream": {"smartpark", "storage", "stream", "edge_agent", "upstream"},
    "api": {"smartpark", "storage", "rules", "api"},
    "demo": set(ROOMS) - {"bench"},
    "bench": set(ROOMS) - {"demo"},
}

# The pure core: plain functions and state machines over explicit inputs.
PURE = (
    "smartpark.wire", "smartpark.wire_fast", "smartpark.catalogue", "smartpark.clock",
    "smartpark.errors",
    "rules.model", "rules.engine", "rules.pack", "rules.kinds",
    "rules.replay",
    "edge_agent.hj212.codec", "edge_agent.hj212.model", "edge_agent.hj212.jsonform",
    "notifier.signing", "notifier.events", "notifier.retry",
    "api.grafana.macros",
)  # fmt: skip
# The rule core may not reach the rule runner, the CLI or any I/O room.
PURE_RULES_MAY_IMPORT = {"smartpark", "rules"}
RULES_IMPURE = {"rules.runner", "rules.cli"}

# Network, database and broker libraries (third-party and standard library).
IO_LIBRARIES = {
    "psycopg", "psycopg_pool", "aiokafka", "kafka", "paho", "httpx", "httpcore",
    "fastapi", "starlette", "uvicorn", "pymodbus", "serial", "grafana_client",
    "requests", "urllib3", "anyio", "sqlite3", "socket", "ssl", "asyncio", "http",
    "smtplib", "subprocess",
}  # fmt: skip

# Per room, libraries it must not import even though it does I/O of another kind.
# Services reach the database only through storage.
ROOM_BANS: dict[str, set[str]] = {
    "storage": {"aiokafka", "paho", "httpx", "fastapi"},
    "stream": {"psycopg", "psycopg_pool", "paho", "httpx", "fastapi"},
    "ingest": {"psycopg", "psycopg_pool"},
    "rules": {"psycopg", "psycopg_pool"},
    "notifier": {"psycopg", "psycopg_pool"},
    "upstream": {"psycopg", "psycopg_pool"},
    "api": {"psycopg", "psycopg_pool"},
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, absolute module name) of every import statement in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _module_name(path).rsplit(".", 1)[0]
    if path.name == "__init__.py":
        package = _module_name(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            yield node.lineno, name
            for alias in node.names:  # "from rules import cli" imports rules.cli
                yield node.lineno, f"{name}.{alias.name}"


def _files(room: str) -> list[Path]:
    return sorted(p for p in (ROOT / room).rglob("*.py") if ".venv" not in p.parts)


def _violations(room: str) -> list[str]:
    allowed = MAY_IMPORT[room]
    found = []
    for path in _files(room):
        for line, name in _imports(path):
            top = name.split(".")[0]
            where = f"{path.relative_to(ROOT)}:{line}"
            if top in ROOMS and top not in allowed:
                found.append(f"{where}: {room} imports {name}")
            if top in ROOM_BANS.get(room, set()):
                found.append(f"{where}: {room} imports {top}")
    return found


@pytest.mark.parametrize("room", ROOMS)
def test_each_room_imports_only_the_rooms_below_it(room: str) -> None:
    assert _violations(room) == []


def _pure_files() -> list[Path]:
    files = []
    for module in PURE:
        path = ROOT / module.replace(".", "/")
        files += (
            sorted(path.rglob("*.py")) if path.is_dir() else [path.with_suffix(".py")]
        )
    return files


@pytest.mark.parametrize("path", _pure_files(), ids=_module_name)
def test_the_pure_core_imports_no_io_library(path: Path) -> None:
    problems = []
    for line, name in _imports(path):
        top = name.split(".")[0]
        if top in IO_LIBRARIES:
            problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
        if not _module_name(path).startswith("rules."):
            continue
        impure = any(name == m or name.startswith(f"{m}.") for m in RULES_IMPURE)
        if impure or (top in ROOMS and top not in PURE_RULES_MAY_IMPORT):
            problems.append(
                f"{path.relative_to(ROOT)}:{line}: rule core imports {name}"
            )
    assert problems == []


def test_the_pure_core_loads_no_io_library_through_its_imports() -> None:
    # What the pure modules pull in transitively, in a fresh interpreter.
    code = (
        "import importlib, sys\n"
        f"for m in {list(PURE)!r}: importlib.import_module(m)\n"
        "import rules.kinds as k, pkgutil\n"
        "for i in pkgutil.iter_modules(k.__path__): importlib.import_module("
        "'rules.kinds.' + i.name)\n"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout.split()
    third_party_io = IO_LIBRARIES - set(sys.stdlib_module_names)
    assert sorted(set(out) & third_party_io) == []
    assert sorted(set(out) & {"storage", "stream", "ingest", "demo", "bench"}) == []


# What the upstream service may take from the edge agent: the pure HJ 212 codec.
UPSTREAM_EDGE_MODULES = (
    "edge_agent.hj212.codec", "edge_agent.hj212.model",
    "edge_agent.hj212.dictionary", "edge_agent.hj212.stream",
)  # fmt: skip


def test_upstream_takes_only_the_pure_hj212_codec_from_the_edge_agent() -> None:
    problems = []
    for path in _files("upstream"):
        for line, name in _imports(path):
            if name.split(".")[0] != "edge_agent":
                continue
            if not any(
                name == m or name.startswith(f"{m}.") for m in UPSTREAM_EDGE_MODULES
            ):
                problems.append(f"{path.relative_to(ROOT)}:{line}: imports {name}")
    assert problems == []
