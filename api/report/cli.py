"""``smartpark report monthly``: the monthly report of an enterprise or a park,
written to a file, with the platform's own database access (no API key: the
platform operator's command, with the scope of every park).

    smartpark report monthly --enterprise E | --park P --month YYYY-MM
                             [--tz ZONE] --out report.pdf|report.png|report.csv

The format follows the file's suffix: ``.pdf`` (the report), ``.png`` (its first
page, e.g. for a README) or ``.csv`` (every number, one per row). The time zone
defaults to the park's.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime
from pathlib import Path

from api.report import monthly
from api.report.render import Report, to_csv, write_first_page_png, write_pdf
from api.routes.reports import DEFAULT_TZ, parse_month
from smartpark.cli import command
from smartpark.clock import zone
from smartpark.errors import NotFound, UsageError
from smartpark.settings import Settings, load_settings
from smartpark.tenancy import Role, Scope
from storage import Storage
from storage.registry import ENTERPRISES, PARKS

FORMATS = (".pdf", ".png", ".csv")


async def write_report(
    storage: Storage, *, enterprise: str | None, park: str | None, month: str,
    tz: str | None, out: Path, scope: Scope | None = None,
) -> str:  # fmt: skip
    """Write the report to ``out`` (format from its suffix); return a summary line.
    ``scope`` defaults to an operator of every park."""
    scope = scope or Scope(Role.OPERATOR)
    if out.suffix not in FORMATS:
        raise UsageError(f"--out: the file ends in one of {', '.join(FORMATS)}")
    try:
        first = parse_month(month)
    except ValueError as exc:
        raise UsageError(f"--month: {exc}") from None
    if enterprise is not None:
        ent = await storage.registry.get(ENTERPRISES, scope, enterprise)
        if ent is None:
            raise NotFound(f"no enterprise {enterprise!r} in the registry")
        park_id = ent.park
    else:
        assert park is not None
        row = await storage.registry.get(PARKS, scope, park)
        if row is None:
            raise NotFound(f"no park {park!r} in the registry")
        park_id = row.id
    try:
        tzinfo = zone(
            tz or await storage.queries.park_timezone(scope, park_id) or DEFAULT_TZ
        )
    except ValueError as exc:
        raise UsageError(f"--tz: {exc}") from None
    now = datetime.now(UTC).replace(microsecond=0)
    if enterprise is not None:
        report = await monthly.enterprise_report(
            storage, scope, enterprise, month=first, tz=tzinfo, generated_at=now
        )
    else:
        report = await monthly.park_report(
            storage, scope, park_id, month=first, tz=tzinfo, generated_at=now
        )
    assert report is not None  # found above, within the scope
    return await asyncio.to_thread(_write, report, out)


def _write(report: Report, out: Path) -> str:
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix == ".pdf":
        return f"{out}: {write_pdf(report, out)} pages"
    if out.suffix == ".png":
        write_first_page_png(report, out)
        return f"{out}: the first page"
    out.write_text(to_csv(report), encoding="utf-8")
    return f"{out}: {len(report.summary)} figures"


async def _run(settings: Settings, args: argparse.Namespace) -> None:
    async with Storage(settings.database) as storage:
        await storage.require_migrated()
        line = await write_report(
            storage, enterprise=args.enterprise, park=args.park, month=args.month,
            tz=args.tz, out=args.out,
        )  # fmt: skip
    print(line, flush=True)


@command("report")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark report", description="reports: monthly"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("monthly", help="the monthly report (PDF, PNG or CSV)")
    who = m.add_mutually_exclusive_group(required=True)
    who.add_argument("--enterprise")
    who.add_argument("--park")
    m.add_argument("--month", required=True, help="YYYY-MM, the local month")
    m.add_argument("--tz", help="default: the park's time zone")
    m.add_argument("--out", required=True, type=Path, help="report.pdf|.png|.csv")
    args = parser.parse_args(argv)
    asyncio.run(_run(load_settings(), args))
    return 0
