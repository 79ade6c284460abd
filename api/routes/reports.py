"""The monthly report over HTTP: a PDF with plots, its first page as a PNG, or
the same figures as CSV (see :mod:`api.report.monthly` for what is in it).

An enterprise gets its own enterprise's report; operators and regulators also
get a park's. Every report is an export: it is recorded in the audit log.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Annotated, Literal

from fastapi import APIRouter, Query
from fastapi.responses import Response

from api.auth import Reader
from api.problems import bad_input, not_found
from api.report import monthly
from api.report.render import Report, to_csv, write_first_page_png, write_pdf
from smartpark import wire
from smartpark.clock import zone
from storage.registry import ENTERPRISES, PARKS

router = APIRouter(prefix="/v1", tags=["reports"])
DEFAULT_TZ = "Asia/Shanghai"
_MONTH = re.compile(r"^(\d{4})-(\d{2})$")
MEDIA = {"pdf": "application/pdf", "png": "image/png", "csv": "text/csv"}


def parse_month(value: str) -> date:
    """``YYYY-MM`` as the first day of that month (ValueError otherwise)."""
    m = _MONTH.match(value)
    if m is None:
        raise ValueError("a month is YYYY-MM, e.g. 2026-11")
    year, month = int(m.group(1)), int(m.group(2))
    if not 1 <= month <= 12 or not 2000 <= year <= 2100:
        raise ValueError("a month is YYYY-MM with a month 01-12 of the years 2000-2100")
    return date(year, month, 1)


def render(report: Report, fmt: str) -> bytes:
    """The report's bytes in ``fmt`` (pdf, png or csv)."""
    if fmt == "csv":
        return to_csv(report).encode()
    with tempfile.TemporaryDirectory(prefix="smartpark-report-") as d:
        path = Path(d) / f"report.{fmt}"
        if fmt == "pdf":
            write_pdf(report, path)
        else:
            write_first_page_png(report, path)
        return path.read_bytes()


_CONTENT = {
    "content": {
        "application/pdf": {"schema": {"type": "string", "format": "binary"}},
        "image/png": {"schema": {"type": "string", "format": "binary"}},
        "text/csv": {
            "schema": {"type": "string"},
            "example": "section,panel,series,time,value,unit,definition\n"
            "summary,coverage,,,98.20 %,,...\n",
        },
    },
    "description": "The report (the PDF, its first page as a PNG, or the CSV).",
}


@router.get(
    "/reports/monthly",
    summary="The monthly report of an enterprise or a park",
    description="Coverage by local day, energy against quota, unit-product energy"
    " against the GB 21346 levels, hourly means against the permit limit per"
    " outlet, and a summary of every figure with its definition (the same figures"
    " as the coverage and KPI routes). `format=pdf` (default), `png` (the first"
    " page), or `csv` (every number, one per row). Give `enterprise` or `park`."
    " Recorded in the audit log.",
    response_class=Response,
    responses={200: _CONTENT},
)  # fmt: skip
async def monthly_report(
    who: Reader,
    *,
    month: Annotated[str, Query(description="the local month, YYYY-MM",
                                examples=["2026-11"])],
    enterprise: Annotated[str | None, Query(max_length=64)] = None,
    park: Annotated[str | None, Query(max_length=64)] = None,
    tz: Annotated[str | None, Query(max_length=64,
                                    description="default: the park's")] = None,
    format: Annotated[Literal["pdf", "png", "csv"], Query()] = "pdf",
) -> Response:  # fmt: skip
    try:
        first = parse_month(month)
    except ValueError as exc:
        raise bad_input("query.month", str(exc)) from None
    if (enterprise is None) == (park is None):
        raise bad_input("query.enterprise", "give exactly one of enterprise or park")
    target = enterprise or park
    assert target is not None
    if not wire.valid_id(target):
        field = "query.enterprise" if enterprise else "query.park"
        raise bad_input(field, "invalid id: 1-64 characters of A-Z a-z 0-9 _ . : -")
    if enterprise is not None:
        ent = await who.storage.registry.get(ENTERPRISES, who.scope, enterprise)
        if ent is None:
            raise not_found("enterprise")
        park_id = ent.park
    else:
        if who.scope.enterprise is not None:
            raise not_found("park")  # park totals would show the other enterprises
        row = await who.storage.registry.get(PARKS, who.scope, target)
        if row is None:
            raise not_found("park")
        park_id = row.id
    try:
        tzinfo = zone(tz or await who.park_timezone(park_id) or DEFAULT_TZ)
    except ValueError as exc:
        raise bad_input("query.tz", str(exc)) from None
    now = datetime.now(UTC).replace(microsecond=0)
    if enterprise is not None:
        report = await monthly.enterprise_report(
            who.storage, who.scope, enterprise, month=first, tz=tzinfo,
            generated_at=now,
        )  # fmt: skip
    else:
        report = await monthly.park_report(
            who.storage, who.scope, park_id, month=first, tz=tzinfo, generated_at=now
        )
    if report is None:
        raise not_found("enterprise" if enterprise else "park")
    # matplotlib takes seconds for a month of hourly means: not on the event loop
    body = await asyncio.to_thread(render, report, format)
    await who.audit(
        "report.monthly",
        f"{'enterprise' if enterprise else 'park'}:{target}",
        detail={"month": month, "format": format, "tz": tzinfo.key},
    )
    name = f"smartpark-{target}-{month}.{format}"
    return Response(
        body,
        media_type=MEDIA[format],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
