"""Drawing the park overview from given query results (no database): what does
not fit a table is counted, not dropped silently; an empty result says "No
data"; a NULL quota draws no line."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from api.grafana.dashboards import park_overview
from api.grafana.macros import TimeRange
from api.grafana.render import draw
from storage.grafana_queries import QueryResult
from storage.registry import EnterpriseRow, ParkRow

NOW = datetime(2026, 12, 1, 4, tzinfo=UTC)
PARK = ParkRow("p", "P", "Asia/Shanghai", NOW, NOW, None)
ENTERPRISES = [
    EnterpriseRow(e, "p", e, None, [], quota, {}, None, NOW, NOW, None)
    for e, quota in (("e1", {"day": 2.5}), ("e2", {}))
]


def test_rows_that_do_not_fit_are_counted_and_empty_results_say_no_data() -> None:
    board = park_overview(PARK, ENTERPRISES, [], [])
    coverage = QueryResult(
        ("enterprise", "device", "coverage_pct"),
        [("e1", f"d{i:02}", 100.0 - i) for i in range(30)],
    )
    results = {
        "Coverage": coverage,
        "Devices silent now": QueryResult(
            ("enterprise", "device", "interval_s", "last_seen"), []
        ),
        "Open alerts by severity": QueryResult(("severity", "open"), [("warning", 3)]),
        "Energy today against quota (tce)": QueryResult(
            ("enterprise", "tce_today", "quota_tce"),
            [("e1", 1.25, 2.5), ("e2", 0.5, None)],
        ),
    }
    rng = TimeRange(NOW - timedelta(days=2), NOW)
    fig, rendered = draw(board, results, rng, ZoneInfo("Asia/Shanghai"), "role")
    texts = rendered.texts
    # the coverage panel is 8 grid rows high: 11 rows and the count of the rest
    shown = [f"d{i:02}" for i in range(30) if f"d{i:02}" in texts]
    assert shown == [f"d{i:02}" for i in range(11)]
    assert "... 19 more rows" in texts
    assert "No data" in texts
    assert {"3", "warning"} <= set(texts)
    assert {"1.25", "0.5", "quota_tce 2.5"} <= set(texts)
    assert not any(t.startswith("quota_tce") and t != "quota_tce 2.5" for t in texts)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=40)
    assert png.getvalue()[:4] == b"\x89PNG"
