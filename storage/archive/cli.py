"""``smartpark archive``: seal days into the archive, verify it, evict old days.

    smartpark archive seal [--enterprise E] [--until DAY]
                        seal every due local day (and amend sealed days with late
                        rows); idempotent
    smartpark archive verify [--enterprise E]
                        check the chains, signatures, segments and the hot rows of
                        sealed days; exit 1 with one line per finding
    smartpark archive retain --older-than N [--enterprise E]
                        seal, verify, then move the days older than N days out of
                        the hot database (a finding blocks its day)

Settings: ``SMARTPARK_ARCHIVE__URL``, ``SMARTPARK_ARCHIVE__SEAL_DELAY``, the
signing key (``SMARTPARK_SIGNING__PRIVATE_KEY`` to seal, its public keys to
verify) and the database. Exit codes as every ``smartpark`` command
(:mod:`smartpark.cli`); a finding is exit 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import date

from smartpark import logs
from smartpark.cli import EXIT_FAILED, EXIT_OK, command
from smartpark.errors import UsageError
from smartpark.settings import Settings, load_settings
from storage import Dialect, Storage
from storage.archive.archive import Archive, Finding, SealReport
from storage.archive.files import ArchiveFiles
from storage.signing import signer_from_settings, verifier_from_settings

# The refresh window of the daily continuous aggregate on TimescaleDB (migration
# 0006): a refresh recomputes its buckets from the raw rows, so rows evicted within
# it would leave the aggregates.
CAGG_DAYS = 35


def _out(line: str) -> None:
    sys.stdout.write(line + "\n")


def _print_seal(report: SealReport) -> None:
    for enterprise, day, kind, rows in report.written:
        _out(f"sealed {kind}: {enterprise} {day} ({rows} rows)")
    for p in report.problems:
        _out(f"not sealed: {p}")
    if not report.written:
        _out("nothing to seal")


def _print_findings(findings: list[Finding]) -> None:
    for f in findings:
        _out(f"FINDING {f}")


async def _run(settings: Settings, args: argparse.Namespace) -> int:
    cfg = settings.archive
    signer = signer_from_settings(settings.signing) if args.cmd != "verify" else None
    verifier = verifier_from_settings(settings.signing)
    async with Storage(settings.database) as storage:
        await storage.require_migrated()
        archive = Archive(
            storage, ArchiveFiles(cfg.url), seal_delay=cfg.seal_delay,
            signer=signer, verifier=verifier,
        )  # fmt: skip
        if args.cmd == "seal":
            report = await archive.seal(enterprise=args.enterprise, until=args.until)
            _print_seal(report)
            return EXIT_FAILED if report.problems else EXIT_OK
        if args.cmd == "verify":
            v = await archive.verify(enterprise=args.enterprise)
            _print_findings(v.findings)
            for enterprise, (position, digest) in v.heads.items():
                _out(f"head {enterprise} position {position} sha256 {digest}")
            _out(
                f"{len(v.findings)} findings: {v.enterprises} enterprises,"
                f" {v.manifests} manifests, {v.segments} segments verified,"
                f" {v.rows_compared} archived rows compared with the database"
            )
            return EXIT_FAILED if v.findings else EXIT_OK
        if storage.dialect is Dialect.TIMESCALE and args.older_than <= CAGG_DAYS:
            raise UsageError(
                f"--older-than must exceed {CAGG_DAYS} days on TimescaleDB: the daily"
                " continuous aggregate is refreshed from raw rows that recent"
            )
        r = await archive.retain(
            older_than_days=args.older_than, enterprise=args.enterprise
        )
        _print_seal(r.seal)
        _print_findings(r.findings)
        for enterprise, day, rows in r.evicted:
            _out(f"evicted: {enterprise} {day} ({rows} rows)")
        _out(f"{len(r.evicted)} days evicted, {len(r.findings)} findings")
        return EXIT_FAILED if r.findings or r.seal.problems else EXIT_OK


@command("archive")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark archive", description="sealed archive: seal | verify | retain"
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    seal = sub.add_parser("seal", help="seal every due day (idempotent)")
    seal.add_argument("--enterprise", metavar="E")
    seal.add_argument(
        "--until", type=date.fromisoformat, metavar="DAY",
        help="seal no local day after DAY (YYYY-MM-DD)",
    )  # fmt: skip
    verify = sub.add_parser("verify", help="check chains, signatures, segments, rows")
    verify.add_argument("--enterprise", metavar="E")
    retain = sub.add_parser("retain", help="evict sealed, verified old days")
    retain.add_argument("--older-than", type=int, required=True, metavar="N")
    retain.add_argument("--enterprise", metavar="E")
    args = parser.parse_args(argv)
    settings = load_settings()
    logs.configure(settings.log_level)
    return asyncio.run(_run(settings, args))
