"""``smartpark replay run``: replay stored telemetry through a rule pack, write the
signed report (the platform operator's command: every park, no API key).

    smartpark replay run --park P [--enterprise E | --outlet O | --device D]
        --start ISO --end ISO [--pack-name N] [--pack-version V | --pack FILE]
        [--warmup 6h] --out report.csv

Writes ``report.csv`` and ``report.csv.sig`` (see :mod:`api.replay.report` for
both and the one command that verifies them offline) and prints a summary: events,
new / vanished / changed, rows read, and the rows' digest. Without
``--pack-version`` or ``--pack`` each part of the range runs with the version in
force then. Needs ``SMARTPARK_SIGNING__PRIVATE_KEY`` (checked before anything is
read). Exit codes as every ``smartpark`` command: 2 for bad arguments, a bad pack
or a missing key, 1 for something that does not exist (a pack version, an outlet,
a range with no version in force) or an unavailable database.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from api.replay.report import sign_report
from api.replay.service import ReplayRequest, ReplayResult, ReplayScope, run_replay
from rules.kinds.base import parse_duration
from smartpark.cli import aware_datetime, command
from smartpark.errors import UsageError
from smartpark.settings import load_settings
from storage import Storage
from storage.signing import signer_from_settings


def _duration(text: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartpark replay", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="replay a range and write the signed report")
    run.add_argument("--park", required=True)
    narrower = run.add_mutually_exclusive_group()
    narrower.add_argument("--enterprise")
    narrower.add_argument("--outlet")
    narrower.add_argument("--device")
    run.add_argument("--start", required=True, type=aware_datetime, metavar="ISO")
    run.add_argument("--end", required=True, type=aware_datetime, metavar="ISO")
    run.add_argument("--pack-name", help="the pack (default: the only one recorded)")
    pack = run.add_mutually_exclusive_group()
    pack.add_argument("--pack-version", help="a recorded version, for the whole range")
    pack.add_argument("--pack", type=Path, help="a proposed pack (YAML file)")
    run.add_argument(
        "--warmup", type=_duration, default=0, metavar="DURATION",
        help="read this much more before the range (alerts open before it)",
    )  # fmt: skip
    run.add_argument("--out", required=True, type=Path, help="the CSV report")
    return parser


@command("replay")
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    settings = load_settings()
    signer = signer_from_settings(settings.signing)
    proposed = None
    if args.pack is not None:
        try:
            proposed = args.pack.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--pack {args.pack}: {exc.strerror}") from None
    request = ReplayRequest(
        ReplayScope(args.park, args.enterprise, args.outlet, args.device),
        args.start, args.end, args.pack_name, args.pack_version, proposed,
        args.warmup,
    )  # fmt: skip

    async def go() -> ReplayResult:
        async with Storage(settings.database) as storage:
            await storage.require_migrated()
            return await run_replay(storage, request)

    result = asyncio.run(go())
    report = sign_report(result, signer)
    out: Path = args.out
    try:
        out.write_bytes(report.csv)
        out.with_name(out.name + ".sig").write_bytes(report.signature)
    except OSError as exc:
        raise UsageError(f"--out {out}: {exc.strerror}") from None
    print(summary_line(result, out))
    return 0


def summary_line(result: ReplayResult, out: Path) -> str:
    s = result.summary()
    digests = ", ".join(
        f"{p.pack} {p.version} rows {p.rows_sha256[:16]}" for p in result.evidence.parts
    )
    return (
        f"{s['events']} events, {s['new']} new, {s['vanished']} vanished,"
        f" {s['changed']} changed; {s['rows']} rows read ({digests}); wrote {out}"
        f" and {out.name}.sig"
    )
