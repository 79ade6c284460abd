"""Every query of every generated dashboard, expanded by the port of Grafana's
PostgreSQL macros (api.grafana.macros) and run against the real PostgreSQL as
the organisation's own data-source role, over data written through the storage
write path; and the daily energy panel against the API's local-day totals."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from psycopg import sql

from api.grafana.dashboards import Built, PanelQuery, all_dashboards, load_registry
from api.grafana.macros import TimeRange, Variable, expand
from storage import Dialect, Storage
from storage.grafana_roles import GrafanaRoles
from storage.secretbox import SecretBox
from tests.support.api import api_settings, running_api
from tests.support.grafana_world import (
    END,
    SCOPES,
    START,
    World,
    grafana_world,
    register,
    world_rows,
)

pytestmark = pytest.mark.integration

RANGE = TimeRange(START, END)  # p1's local 2023-03-01 and 2023-03-02


@pytest.fixture
async def world(pg_dsn: str, db_schema: str) -> AsyncIterator[World]:
    async with grafana_world(pg_dsn, db_schema) as w:
        yield w


@pytest.fixture
async def boards(world: World) -> dict[str, Built]:
    return all_dashboards(await load_registry(world.storage.registry))


Result = tuple[list[str], list[tuple[Any, ...]]]


def run(world: World, key: str, q: PanelQuery,
        variables: dict[str, Variable]) -> Result:  # fmt: skip
    with world.connect(key) as conn:
        cur = conn.execute(expand(q.sql, RANGE, variables).encode())
        assert cur.description is not None
        return [c.name for c in cur.description], cur.fetchall()


def resolved(world: World, key: str, board: Built) -> dict[str, Variable]:
    """The variables as Grafana resolves them on opening: an include-all
    variable at "All" becomes every value its query returns."""
    out: dict[str, Variable] = {}
    for q in board.queries:
        if q.kind != "variable":
            continue
        default = board.defaults[q.title]
        _, rows = run(world, key, q, out)
        values = [str(r[0]) for r in rows]
        if default.include_all and not default.value:
            out[q.title] = Variable(values, multi=True, include_all=True)
        else:
            assert default.value in values, (board.uid, q.title, values)
            out[q.title] = default
    return out


# the organisation whose role opens each dashboard
OPENED_BY = {
    "sp-park-p1": "op-p1", "sp-park-p2": "op-p2",
    "sp-ent-e1": "e1", "sp-dev-e1": "e1", "sp-ent-e2": "e2", "sp-dev-e2": "e2",
    "sp-ent-e3": "e3", "sp-dev-e3": "e3",
}  # fmt: skip
# queries that return no row in this world, and why
EMPTY = {
    ("sp-park-p2", "Emissions against limits (hourly means)"),  # stack-3: no device
    ("sp-park-p2", "Devices silent now"),  # e3-meter reports to the end
    # e2-cems: so2 and so2_corrected only
    ("sp-ent-e2", "stack-2: nox_corrected hourly mean (limit 50)"),
    ("sp-ent-e2", "stack-2: particulate_corrected hourly mean (limit 10)"),
    ("sp-ent-e2", "Unit-product energy per local day (kWh/t)"),  # no production
    ("sp-ent-e2", "Water per local day (m3)"),  # no water meter
    ("sp-ent-e3", "Unit-product energy per local day (kWh/t)"),
    ("sp-ent-e3", "Water per local day (m3)"),
    ("sp-ent-e3", "stack-3: so2 hourly mean (limit 35)"),  # stack-3: no device
    ("sp-ent-e3", "stack-3: nox hourly mean (limit 50)"),
    ("sp-ent-e3", "stack-3: particulate hourly mean (limit 10)"),
}


async def test_every_query_of_every_dashboard_runs_as_its_organisations_role(
    world: World, boards: dict[str, Built]
) -> None:
    assert sorted(boards) == sorted(OPENED_BY)
    ran = 0
    empty = set()
    for uid, board in sorted(boards.items()):
        for key in (OPENED_BY[uid], "regulators"):
            variables = resolved(world, key, board)
            for q in board.queries:
                columns, rows = run(world, key, q, variables)
                assert tuple(columns) == q.columns, (uid, q.title)
                if not rows:
                    empty.add((uid, q.title))
                ran += 1
    assert ran == 2 * sum(len(b.queries) for b in boards.values())
    assert empty == EMPTY, (empty - EMPTY, EMPTY - empty)


async def test_panel_figures_of_the_park_overview(
    world: World, boards: dict[str, Built]
) -> None:
    board = boards["sp-park-p1"]
    variables = resolved(world, "op-p1", board)
    by_title = {q.title: q for q in board.queries}

    _, rows = run(world, "op-p1", by_title["Open alerts by severity"], variables)
    assert rows == [("critical", 2), ("warning", 1)]
    _, rows = run(world, "op-p1", by_title["Devices silent now"], variables)
    assert [(r[0], r[1], r[3]) for r in rows] == [("e1", "e1-silent", None)]
    _, rows = run(world, "op-p1", by_title["Coverage"], variables)
    cov = {r[1]: float(r[2]) for r in rows}
    assert cov["meter-1"] == cov["aux-1"] == cov["coal-1"] == 100.0
    assert cov["e1-silent"] == 0.0
    # today = p1's local 2023-03-02: e1's purchased electricity 7157 kWh (meter-1,
    # a replacement: 143 x 50 + 7; aux-1 is no purchased meter) x 0.1229 kgce/kWh
    # and coal 8.43 t (143 x 0.01 + 7) x 0.7143 kgce/kg; e2 144 x 7 kWh
    _, rows = run(world, "op-p1",
                  by_title["Energy today against quota (tce)"], variables)  # fmt: skip
    assert [(r[0], r[2]) for r in rows] == [("e1", 2.5), ("e2", 2.5)]
    assert [r[1] for r in rows] == pytest.approx(
        [7157 * 0.1229 / 1000 + 8.43 * 0.7143, 1008 * 0.1229 / 1000]
    )
    emissions = by_title["Emissions against limits (hourly means)"]
    _, rows = run(world, "op-p1", emissions, variables)
    # so2 = 10 + UTC hour: hours 0-23 twice; mean over an hour is constant
    emis = {(r[1], r[2]): (r[4], r[5]) for r in rows}
    assert emis[("stack-1", "so2")] == (33.0, 0)
    assert emis[("stack-1", "nox")] == (43.0, 0)
    assert emis[("stack-1", "particulate")] == (24.0, 2 * 14)  # 1 + h > 10: h 10-23
    # stack-2 has a reference O2: judged on so2_corrected (200 + hour), not so2
    assert emis[("stack-2", "so2_corrected")] == (223.0, 48)
    assert ("stack-2", "so2") not in emis


async def test_daily_energy_panel_equals_the_apis_local_day_totals(
    world: World, boards: dict[str, Built], pg_dsn: str
) -> None:
    board = boards["sp-ent-e1"]
    variables = resolved(world, "e1", board)
    [q] = [q for q in board.queries if q.title == "Electricity per local day"]
    _, rows = run(world, "e1", q, variables)
    panel = [(r[0].isoformat(), r[1]) for r in rows]
    assert panel == [("2023-02-28T16:00:00+00:00", 7200.0),
                     ("2023-03-01T16:00:00+00:00", 7157.0)]  # fmt: skip
    async with running_api(pg_dsn, world.storage.schema) as api:
        key = await api.key(*_enterprise("e1"))
        # the panel's meters: e1's purchased electricity, meter-*
        r = await api.client.get("/v1/aggregates", headers=key, params={
            "interval": "1d", "device": "meter-1", "metric": "active_energy",
            "start": START.isoformat(), "end": END.isoformat(),
        })  # fmt: skip
        assert r.status_code == 200, r.text
    totals: dict[str, float] = {}
    for item in r.json()["items"]:
        totals[item["bucket"]] = totals.get(item["bucket"], 0.0) + item["consumption"]
    assert [v for _, v in sorted(totals.items())] == [v for _, v in panel]
    assert sorted(totals) == ["2023-03-01T00:00:00+08:00", "2023-03-02T00:00:00+08:00"]


def _enterprise(ent: str) -> tuple[Any, str, str]:
    from smartpark.tenancy import Role

    return Role.ENTERPRISE, "p1", ent


async def test_every_query_runs_on_timescaledb_as_each_role(
    timescale_dsn: str, uid: str
) -> None:
    """The same dashboards on TimescaleDB (continuous aggregates behind the
    rollup views), each query run under the organisation's role (SET ROLE: the
    PGlite build takes one connection at a time, so no second login)."""
    schema = f"t_{uid}"
    settings = api_settings(timescale_dsn, schema, bulk_method="insert")
    box = SecretBox.from_settings(settings.webhooks)
    names: list[str] = []
    try:
        async with Storage(settings.database, pool_size=1) as storage:
            await storage.migrate()
            assert storage.dialect is Dialect.TIMESCALE
            await register(storage)
            await storage.telemetry.write(world_rows())
            await storage.telemetry.refresh_rollups()
            roles = GrafanaRoles(storage, box)
            by_scope = {k: (await roles.ensure(s))[0].role for k, s in SCOPES.items()}
            names = await roles.names()
            boards = all_dashboards(await load_registry(storage.registry))
        with psycopg.connect(timescale_dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(schema)))

            def as_role(
                key: str, q: PanelQuery, variables: dict[str, Variable]
            ) -> Result:
                conn.execute(
                    sql.SQL("SET ROLE {}").format(sql.Identifier(by_scope[key]))
                )
                try:
                    cur = conn.execute(expand(q.sql, RANGE, variables).encode())
                    assert cur.description is not None
                    return [c.name for c in cur.description], cur.fetchall()
                finally:
                    conn.execute("RESET ROLE")

            empty = set()
            for board_uid, board in sorted(boards.items()):
                key = OPENED_BY[board_uid]
                variables: dict[str, Variable] = {}
                for q in board.queries:
                    if q.kind == "variable":
                        _, rows = as_role(key, q, variables)
                        default = board.defaults[q.title]
                        variables[q.title] = (
                            Variable([str(r[0]) for r in rows], True, True)
                            if default.include_all and not default.value else default
                        )  # fmt: skip
                for q in board.queries:
                    columns, rows = as_role(key, q, variables)
                    assert tuple(columns) == q.columns, (board_uid, q.title)
                    if not rows:
                        empty.add((board_uid, q.title))
                    if q.title == "Electricity per local day" and key == "e1":
                        assert [r[1] for r in rows] == [7200.0, 7157.0]
                    if q.kind == "panel" and key == "e2":
                        assert all("e1" not in map(str, r) for r in rows), q.title
            assert empty == EMPTY, (empty - EMPTY, EMPTY - empty)
    finally:
        with psycopg.connect(timescale_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )
            for name in names:
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
