"""The monthly report from data stored through the real pipeline.

simulated Modbus meters → EdgeAgent → Mosquitto → bridge → Kafka → sink →
PostgreSQL; the enterprise and its devices registered through the API; then the
report of the current local month as PDF (opened with pypdf: its pages and their
text), as PNG and as CSV, and what another tenant gets.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from pypdf import PdfReader

from edge_agent.agent import EdgeAgent
from simulators.park import SimulatedPark
from smartpark.settings import Settings
from smartpark.tenancy import Role
from tests.support.api import running_api
from tests.support.clients import wait_for
from tests.support.pipeline import (
    expected_keys,
    read_outboxes,
    running_platform,
    wait_stored,
)
from tests.support.recorder import metrics_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TZ = "Asia/Shanghai"


async def test_the_monthly_report_renders_from_data_stored_through_the_pipeline(
    mqtt_addr: tuple[str, int], park_id: str, platform: Settings, pg_dsn: str,
    db_schema: str, tmp_path: Path,
) -> None:  # fmt: skip
    async with (
        running_platform(platform) as (storage, _bridge, _sink),
        SimulatedPark(
            seed=13, park=park_id, enterprises=1, devices_per_enterprise=3,
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
    month = datetime.now(UTC).astimezone(ZoneInfo(TZ)).strftime("%Y-%m")
    async with running_api(pg_dsn, db_schema) as api:
        op = await api.key(Role.OPERATOR)

        async def post(url: str, body: dict[str, Any]) -> None:
            r = await api.client.post(url, headers=op, json=body)
            assert r.status_code == 201, r.text

        await post("/v1/parks", {"id": park_id, "name": "Park", "timezone": TZ})
        await post("/v1/enterprises", {
            "id": enterprise, "park": park_id, "name": "Plant",
            "energy_quota_tce": {"day": 50.0},
        })  # fmt: skip
        for device_id, metrics in sorted(metrics_of(cfg).items()):
            await post("/v1/devices", {
                "id": device_id, "enterprise": enterprise, "protocol": "modbus_tcp",
                "interval_s": 1, "metrics": sorted(metrics),
            })  # fmt: skip
        mine = await api.key(Role.ENTERPRISE, park_id, enterprise)
        url = "/v1/reports/monthly"
        query = {"enterprise": enterprise, "month": month}

        r = await api.client.get(url, headers=mine, params=query)
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/pdf"
        pdf = PdfReader(io.BytesIO(r.content))
        assert len(pdf.pages) == 2  # the summary, coverage and energy
        first = pdf.pages[0].extract_text()
        assert "Monthly report" in first
        assert f"enterprise {enterprise} (park {park_id}), {month}, {TZ}" in first
        for figure in ("coverage", "energy, equivalent value", "water intake"):
            assert figure in first
        assert "coverage by local day" in pdf.pages[1].extract_text()

        r = await api.client.get(url, headers=mine, params={**query, "format": "png"})
        assert r.status_code == 200
        assert r.content.startswith(b"\x89PNG\r\n\x1a\n")

        r = await api.client.get(url, headers=mine, params={**query, "format": "csv"})
        assert r.status_code == 200
        rows = list(csv.DictReader(io.StringIO(r.text)))
        summary = {row["panel"]: row["value"] for row in rows if row["section"] ==
                   "summary"}  # fmt: skip
        # the meters counted up while polled: a number, not "insufficient data"
        energy = summary["energy, equivalent value"]
        assert energy.endswith(" tce"), energy
        assert float(energy.split()[0].replace(" ", "")) > 0
        coverage = [row for row in rows if row["panel"] == "coverage by local day"]
        assert [row["value"] for row in coverage if row["value"]], coverage

        # another enterprise: the same 404 as an enterprise that does not exist
        other = await api.key(Role.ENTERPRISE, park_id, "someone-else")
        for who, params in ((other, query),
                            (mine, {**query, "enterprise": "nope"})):  # fmt: skip
            r = await api.client.get(url, headers=who, params=params)
            assert (r.status_code, r.json()["detail"]) == (404, "enterprise not found")
        # an enterprise never gets its park's report
        r = await api.client.get(url, headers=mine,
                                 params={"park": park_id, "month": month})  # fmt: skip
        assert r.status_code == 404
        # a park's report for its operator
        r = await api.client.get(url, headers=op,
                                 params={"park": park_id, "month": month})  # fmt: skip
        assert r.status_code == 200, r.text
        assert len(PdfReader(io.BytesIO(r.content)).pages) == 2
        # bad input names the field
        for params, field in (
            ({"enterprise": enterprise, "month": "2026-13"}, "query.month"),
            ({"month": month}, "query.enterprise"),
            ({**query, "tz": "Mars/Olympus"}, "query.tz"),
        ):
            r = await api.client.get(url, headers=mine, params=params)
            assert r.status_code == 422, r.text
            assert r.json()["errors"][0]["field"] == field
        # every report is in the audit log
        async with api.storage.connection() as conn:
            cur = await conn.execute(
                f'SELECT count(*) FROM "{db_schema}".audit_log'
                " WHERE action = 'report.monthly'"
            )
            row = await cur.fetchone()
        assert row is not None
        assert row[0] == 4
