"""``smartpark rules check | run``: rule packs over recorded readings, or live.

``smartpark rules alerts [--park P]`` lists alerts with their status (JSON lines);
``smartpark rules ack ALERT_ID --by NAME`` acknowledges an open alert (the engine
still resolves it when the breach ends).

``smartpark rules run --pack FILE`` runs the live runner (:mod:`rules.runner`) on
the telemetry topic until SIGINT/SIGTERM; settings from the environment
(``SMARTPARK_KAFKA__BOOTSTRAP``, ``SMARTPARK_DATABASE__DSN``,
``SMARTPARK_RULES__GROUP_ID``...). Exit codes as every ``smartpark`` command
(:mod:`smartpark.cli`): 2 for a bad pack, argument or setting, 1 for an unknown
alert or an unavailable database.

``smartpark rules check --pack FILE --readings FILE``:

For people who write rules: evaluates the pack with the same core the live runner
uses and prints the alert events as JSON lines on stdout, in order, so what it
prints is what production would raise for the same readings in the same order.

Readings files:

- JSON lines (``.jsonl``/``.json``/``-`` for stdin): each line is either one reading
  ``{"ts_ms", "park", "enterprise", "device", "metric", "value", "q", "seq",
  "reset"}`` (``q``, ``seq``, ``reset`` optional) or a telemetry batch as on the wire
  and the telemetry topic (``{"v": 1, "park", "enterprise", "device", "readings":
  [...]}``), whose readings are taken in order.
- CSV (``.csv``): a header with ``time`` (ISO 8601 with a zone, or ``ts_ms``),
  ``park``, ``enterprise``, ``device``, ``metric``, ``value`` and optionally
  ``quality``, ``seq``, ``reset``.

At the end of the input the devices still silent are judged as of the newest
reading's time (``--until ISO`` for another time, e.g. when the file was cut): a
``missing_data`` rule reports ``opened`` for each device silent for more than its
``max_silence`` by then, as the live runner does while a device is silent.

A bad line is reported on stderr as ``FILE:LINE: reason`` and counted; the lines
around it are still evaluated. Exit code 0, 1 if any line was bad, 2 for a bad pack
or an unreadable file. A summary goes to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import dataclasses
import io
import json
import logging
import math
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from rules.engine import Engine
from rules.model import Obs
from rules.pack import load_pack
from smartpark import logs
from smartpark.cli import aware_datetime, command
from smartpark.errors import NotFound, UsageError
from smartpark.settings import load_settings
from smartpark.wire import DataType, Stat

log = logging.getLogger("smartpark.rules")

_WIRE_KEYS = frozenset({"seq", "metric", "value", "unit", "ts_ms", "q", "reset"})


class BadLine(ValueError):
    pass


@command("rules")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartpark rules", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="evaluate a pack over a readings file")
    check.add_argument("--pack", required=True, type=Path)
    check.add_argument("--readings", required=True, help="JSON lines or CSV; - = stdin")
    check.add_argument(
        "--until",
        type=_when,
        metavar="ISO",
        help="judge silences as of this time at the end (default: newest reading)",
    )
    run = sub.add_parser("run", help="the live runner on the telemetry topic")
    run.add_argument("--pack", required=True, type=Path)
    run.add_argument("--stats-every", type=float, default=10.0, metavar="S")
    ack = sub.add_parser("ack", help="acknowledge an open alert")
    ack.add_argument("alert_id")
    ack.add_argument("--by", required=True, help="who takes it")
    alerts = sub.add_parser("alerts", help="list alerts and their status")
    alerts.add_argument("--park")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "run":
        return _run_live(args.pack, args.stats_every)
    if args.command == "ack":
        return asyncio.run(_ack(args.alert_id, args.by))
    if args.command == "alerts":
        return asyncio.run(_list_alerts(args.park))
    pack = load_pack(args.pack)
    try:
        source = _open(args.readings)
    except OSError as exc:
        raise UsageError(f"{args.readings}: {exc.strerror}") from None
    with source:
        return check_readings(
            pack_engine=Engine(pack),
            name=args.readings,
            text=source,
            until_ms=args.until,
        )


def _run_live(pack: Path, stats_every_s: float) -> int:
    from rules.runner import RulesRunner
    from stream.service import run_until_signalled

    settings = load_settings()
    logs.configure(settings.log_level)

    async def go() -> None:
        async with RulesRunner(settings, pack) as runner:
            log.info(
                "rules runner started: %s %s on %s, group %s",
                runner.pack.pack, runner.pack.version,
                settings.kafka.telemetry_topic, settings.rules.group_id,
            )  # fmt: skip
            await run_until_signalled(runner, stats_every_s=stats_every_s, log=log)

    asyncio.run(go())
    return 0


async def _ack(alert_id: str, by: str) -> int:
    from storage import Storage

    async with Storage(load_settings().database) as storage:
        status = await storage.alerts.acknowledge(alert_id, by=by)
    if status is None:
        raise NotFound(f"no alert {alert_id}")
    print(f"{alert_id} {status}")
    return 0


async def _list_alerts(park: str | None) -> int:
    from storage import Storage

    async with Storage(load_settings().database) as storage:
        rows = await storage.alerts.list_alerts(park=park)
    for row in rows:
        print(json.dumps(dataclasses.asdict(row), default=str, sort_keys=True))
    return 0


def _open(name: str) -> TextIO:
    if name == "-":
        return io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8")
    return Path(name).open(encoding="utf-8", newline="")


def _when(text: str) -> int:
    return round(aware_datetime(text).timestamp() * 1000)


def check_readings(
    *, pack_engine: Engine, name: str, text: TextIO, until_ms: int | None = None
) -> int:
    """Feed every reading of ``text`` to the engine, then judge silences as of
    ``until_ms`` (default: the newest reading); print events; the exit code."""
    bad = readings = events = 0
    rows = _csv(text) if name.endswith(".csv") else _jsonl(text)
    out = sys.stdout
    for line_no, item in rows:
        if isinstance(item, BadLine):
            bad += 1
            print(f"{Path(name).name}:{line_no}: {item}", file=sys.stderr)
            continue
        readings += 1
        for event in pack_engine.feed(item):
            events += 1
            out.write(event.to_line() + "\n")
    end = pack_engine.newest_ms if until_ms is None else until_ms
    if end is not None:
        for event in pack_engine.idle(end):
            events += 1
            out.write(event.to_line() + "\n")
    out.flush()
    stats = pack_engine.stats
    print(
        f"{readings} readings, {bad} bad lines, {events} alert events,"
        f" {stats.dropped_late} readings too late for their window",
        file=sys.stderr,
    )
    return 1 if bad else 0


def _jsonl(text: TextIO) -> Iterator[tuple[int, Obs | BadLine]]:
    for line_no, line in enumerate(text, 1):
        if not line.strip():
            continue
        try:
            items = _line_readings(line)
        except BadLine as exc:
            yield line_no, exc
            continue
        for obs in items:
            yield line_no, obs


def _line_readings(line: str) -> list[Obs]:
    try:
        doc = json.loads(line)
    except ValueError as exc:
        raise BadLine(f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadLine("expected a JSON object")
    return _batch(doc) if "readings" in doc else [_obs(doc, doc)]


def _batch(doc: dict[str, Any]) -> list[Obs]:
    readings = doc["readings"]
    if not isinstance(readings, list):
        raise BadLine("readings: expected a list")
    out = []
    for i, r in enumerate(readings):
        if not isinstance(r, dict) or not set(r) <= _WIRE_KEYS:
            raise BadLine(f"readings[{i}]: not a wire reading")
        try:
            out.append(_obs(r, doc))
        except BadLine as exc:
            raise BadLine(f"readings[{i}].{exc}") from None
    return out


def _obs(r: dict[str, Any], where: dict[str, Any]) -> Obs:
    def text(key: str, src: dict[str, Any]) -> str:
        value = src.get(key)
        if not isinstance(value, str) or not value:
            raise BadLine(f"{key}: expected a non-empty string, got {value!r}")
        return value

    ts = r.get("ts_ms")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise BadLine(f"ts_ms: expected integer milliseconds, got {ts!r}")
    value = r.get("value")
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise BadLine(f"value: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise BadLine(f"value: not finite: {value!r}")
    quality = r.get("q", "N")
    seq = r.get("seq", 0)
    reset = r.get("reset")
    if not isinstance(quality, str) or not isinstance(seq, int):
        raise BadLine(
            f"q/seq: expected a flag letter and an integer, got {quality!r}/{seq!r}"
        )
    data_type, stat = r.get("dt", "realtime"), r.get("stat", "value")
    if data_type not in set(DataType) or stat not in set(Stat):
        raise BadLine(f"dt/stat: unknown series {data_type!r}/{stat!r}")
    return Obs(
        ts,
        text("park", where),
        text("enterprise", where),
        text("device", where),
        text("metric", r),
        float(value),
        quality,
        seq,
        reset if isinstance(reset, str) else None,
        data_type,
        stat,
    )


def _csv(text: TextIO) -> Iterator[tuple[int, Obs | BadLine]]:
    reader = csv.DictReader(text)
    fields = set(reader.fieldnames or ())
    missing = {"park", "enterprise", "device", "metric", "value"} - fields
    if "time" not in fields and "ts_ms" not in fields:
        missing.add("time")
    if missing:
        yield 1, BadLine(f"header: missing columns {sorted(missing)}")
        return
    for row in reader:
        line_no = reader.line_num
        try:
            yield line_no, _csv_obs(row)
        except BadLine as exc:
            yield line_no, exc


def _csv_obs(row: dict[str, str]) -> Obs:
    if row.get("ts_ms"):
        try:
            ts = int(row["ts_ms"])
        except ValueError:
            raise BadLine(f"ts_ms: not an integer: {row['ts_ms']!r}") from None
    else:
        try:
            moment = datetime.fromisoformat(row["time"])
        except ValueError:
            raise BadLine(f"time: not ISO 8601: {row['time']!r}") from None
        if moment.tzinfo is None:
            raise BadLine(f"time: needs a zone (e.g. +08:00 or Z): {row['time']!r}")
        ts = round(moment.timestamp() * 1000)
    try:
        value = float(row["value"])
    except ValueError:
        raise BadLine(f"value: not a number: {row['value']!r}") from None
    doc: dict[str, Any] = {
        "ts_ms": ts,
        "park": row["park"],
        "enterprise": row["enterprise"],
        "device": row["device"],
        "metric": row["metric"],
        "value": value,
        "q": row.get("quality") or "N",
        "seq": int(row["seq"]) if row.get("seq") else 0,
        "reset": row.get("reset") or None,
    }
    return _obs(doc, doc)
