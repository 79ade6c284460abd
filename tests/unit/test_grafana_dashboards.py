"""Generated dashboards: their JSON round-trips through the SDK's models
unchanged, every target is a typed PostgreSQL query on the shared data source,
panels follow the registry, and no query uses a UTC day."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import Dashboard

from api.grafana.dashboards import Registry, all_dashboards
from api.grafana.query import DATASOURCE_UID, PostgresQuery
from storage.registry import DeviceRow, EnterpriseRow, OutletRow, ParkRow

T = datetime(2026, 1, 1, tzinfo=UTC)
# the queries' own common table expressions
CTES = {"sel", "x", "steps", "day", "judged"}


def registry() -> Registry:
    return Registry(
        parks=[ParkRow("p1", "Park 1", "Asia/Shanghai", T, T, None)],
        enterprises=[
            EnterpriseRow(
                "e1",
                "p1",
                "Smelter",
                None,
                [],
                {"day": 3.0},
                {},
                None,
                T,
                T,
                None,
                {"metric": "production_mass", "indicator": "aluminium_liquid_ac_power"},
            ),
            EnterpriseRow("e2", "p1", "Other", None, [], {}, {}, None, T, T, None),
        ],
        outlets=[
            OutletRow(
                "s1",
                "p1",
                "e1",
                "stack",
                "Stack 1",
                6.0,
                {"so2": 35.0, "nox": 50.0},
                T,
                T,
                None,
            )
        ],
        devices=[
            DeviceRow(
                "m1",
                "p1",
                "e1",
                None,
                "modbus_tcp",
                60,
                ["active_energy"],
                None,
                T,
                T,
                None,
            )
        ],
    )


def as_json(model: Any) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(model, cls=JSONEncoder))
    return out


def test_dashboard_json_round_trips_through_the_sdk_models() -> None:
    boards = all_dashboards(registry())
    assert sorted(boards) == ["sp-dev-e1", "sp-dev-e2", "sp-ent-e1", "sp-ent-e2",
                              "sp-park-p1"]  # fmt: skip
    for board in boards.values():
        first = as_json(board.model)
        back = Dashboard.from_json(first)
        assert as_json(back) == first, board.uid
        for panel in back.panels or []:
            for target in getattr(panel, "targets", None) or []:
                assert isinstance(target, PostgresQuery)
        assert first["uid"] == board.uid


def test_every_query_is_on_the_shared_data_source_and_listed() -> None:
    for board in all_dashboards(registry()).values():
        doc = as_json(board.model)
        sqls = [t["rawSql"] for p in doc["panels"] for t in p["targets"]]
        sqls += [v["query"] for v in doc["templating"]["list"]]
        sqls += [a["target"]["rawSql"] for a in doc["annotations"]["list"]]
        assert sorted(sqls) == sorted(q.sql for q in board.queries)
        refs = [p["datasource"] for p in doc["panels"]]
        assert all(r["uid"] == DATASOURCE_UID for r in refs)
        for sql in sqls:
            # no UTC-day bucketing, no table but the role's views
            assert "$__timeGroup" not in sql
            tables = re.findall(r"\b(?:FROM|JOIN)\s+([a-z_0-9]+)", sql)
            assert all(t.startswith("grafana_") or t in CTES for t in tables), (
                board.uid, tables,
            )  # fmt: skip


def test_outlet_panels_follow_the_registry_limits() -> None:
    board = all_dashboards(registry())["sp-ent-e1"]
    doc = as_json(board.model)
    limits = {}
    for p in doc["panels"]:
        if "hourly mean" in p["title"]:
            steps = p["fieldConfig"]["defaults"]["thresholds"]["steps"]
            limits[p["title"]] = steps[-1]["value"]
            assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"] == {
                "mode": "line"
            }
    # reference O2 set: judged on the corrected metrics
    assert limits == {
        "Stack 1: nox_corrected hourly mean (limit 50)": 50.0,
        "Stack 1: so2_corrected hourly mean (limit 35)": 35.0,
    }
    unit = next(p for p in doc["panels"] if p["title"].startswith("Unit-product"))
    levels = [
        s["value"] for s in unit["fieldConfig"]["defaults"]["thresholds"]["steps"]
    ]
    assert levels == [None, 12650, 12750, 13700]  # GB 21346-2013 aluminium liquid
