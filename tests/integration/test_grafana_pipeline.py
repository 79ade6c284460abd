"""Every query of every generated dashboard over data stored through the real
pipeline: simulated Modbus meters → EdgeAgent → Mosquitto → bridge → Kafka → sink
→ PostgreSQL, the park, enterprise and devices registered, the rollups refreshed;
then each dashboard's variables and panel queries, expanded by the port of
Grafana's PostgreSQL macros, run as the organisation's own read-only role, as
Grafana would."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from api.grafana.dashboards import Built, PanelQuery, all_dashboards, load_registry
from api.grafana.macros import TimeRange, Variable, expand
from edge_agent.agent import EdgeAgent
from simulators.park import SimulatedPark
from smartpark.settings import Settings
from smartpark.tenancy import Role, Scope
from storage.grafana_roles import GrafanaRole, GrafanaRoles
from storage.secretbox import SecretBox
from tests.support.api import api_settings
from tests.support.clients import wait_for
from tests.support.pipeline import (
    expected_keys,
    read_outboxes,
    running_platform,
    wait_stored,
)
from tests.support.recorder import metrics_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OPERATOR = Scope(Role.OPERATOR)


def run(dsn: str, role: GrafanaRole, q: PanelQuery, rng: TimeRange,
        variables: dict[str, Variable]) -> tuple[list[str], list[Any]]:  # fmt: skip
    with psycopg.connect(
        dsn, user=role.role, password=role.password, autocommit=True
    ) as conn:
        cur = conn.execute(expand(q.sql, rng, variables).encode())
        assert cur.description is not None
        return [c.name for c in cur.description], cur.fetchall()


def resolved(dsn: str, role: GrafanaRole, board: Built,
             rng: TimeRange) -> dict[str, Variable]:  # fmt: skip
    """The variables as Grafana resolves them when the dashboard opens."""
    out: dict[str, Variable] = {}
    for q in board.queries:
        if q.kind != "variable":
            continue
        default = board.defaults[q.title]
        _, rows = run(dsn, role, q, rng, out)
        values = [str(r[0]) for r in rows]
        if default.include_all and not default.value:
            out[q.title] = Variable(values, multi=True, include_all=True)
        else:
            assert default.value in values, (board.uid, q.title, values)
            out[q.title] = default
    return out


async def test_every_dashboard_query_runs_over_data_stored_through_the_pipeline(
    mqtt_addr: tuple[str, int], park_id: str, platform: Settings, pg_dsn: str,
    db_schema: str, tmp_path: Path,
) -> None:  # fmt: skip
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    async with (
        running_platform(platform) as (storage, _bridge, _sink),
        SimulatedPark(
            seed=17, park=park_id, enterprises=1, devices_per_enterprise=3,
            port_base=0,
        ) as park,
    ):  # fmt: skip
        [cfg] = park.agent_configs(*mqtt_addr, tmp_path, poll_interval_s=0.5)
        async with EdgeAgent(cfg) as agent:
            await wait_for(
                lambda: all(d.polls_ok >= 6 for d in agent.stats().devices.values()),
                timeout_s=30, what="polls",
            )  # fmt: skip
        expected = expected_keys([cfg], read_outboxes([cfg]))
        assert await wait_stored(storage, park_id, expected, 60) == expected
        enterprise = cfg.site.enterprise
        reg = storage.registry
        await reg.create_park(OPERATOR, {"id": park_id, "name": "Park",
                                         "timezone": "Asia/Shanghai"})  # fmt: skip
        await reg.create_enterprise(OPERATOR, {
            "id": enterprise, "park": park_id, "name": "Plant",
            "energy_quota_tce": {"day": 50.0},
        })  # fmt: skip
        for device_id, metrics in sorted(metrics_of(cfg).items()):
            await reg.create_device(OPERATOR, {
                "id": device_id, "enterprise": enterprise, "protocol": "modbus_tcp",
                "interval_s": 1, "metrics": sorted(metrics),
            })  # fmt: skip
        await storage.telemetry.refresh_rollups()
        box = SecretBox.from_settings(api_settings(pg_dsn, db_schema).webhooks)
        roles = GrafanaRoles(storage, box)
        try:
            org = {
                "park": (await roles.ensure(Scope(Role.OPERATOR, park_id)))[0],
                "enterprise": (await roles.ensure(
                    Scope(Role.ENTERPRISE, park_id, enterprise)))[0],
                "regulators": (await roles.ensure(Scope(Role.REGULATOR)))[0],
            }  # fmt: skip
            boards = all_dashboards(await load_registry(storage.registry))
            rng = TimeRange(start - timedelta(minutes=1), datetime.now(UTC))
            answered: dict[str, set[str]] = {}
            for uid, board in sorted(boards.items()):
                opener = org["park"] if uid.startswith("sp-park-") else org[
                    "enterprise"]  # fmt: skip
                for role in (opener, org["regulators"]):
                    variables = resolved(pg_dsn, role, board, rng)
                    for q in board.queries:
                        columns, rows = run(pg_dsn, role, q, rng, variables)
                        assert tuple(columns) == q.columns, (uid, q.title)
                        if rows:
                            answered.setdefault(uid, set()).add(q.title)
        finally:
            await roles.drop_all()
    assert sorted(boards) == sorted(
        [f"sp-park-{park_id}", f"sp-ent-{enterprise}", f"sp-dev-{enterprise}"]
    )
    # the pipeline's readings reach the panels: coverage and today's energy
    park_panels = answered[f"sp-park-{park_id}"]
    assert "Coverage" in park_panels, park_panels
    assert any("Energy" in t for t in park_panels), park_panels
    assert "Electricity per local day" in answered[f"sp-ent-{enterprise}"]
    assert "Latest values" in answered[f"sp-dev-{enterprise}"]
