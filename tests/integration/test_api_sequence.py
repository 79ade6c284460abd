"""Polls missing by sequence number over HTTP, on the real PostgreSQL: a device
whose edge lost polls (numbers missing), then restarted with a new outbox (a new
epoch from 1: neither a gap nor a replay); local dates in the park's zone; another
tenant's device is the 404 of a missing one; bad input is a 422 naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smartpark.tenancy import Role, Scope
from storage import TelemetryRow
from storage.model import EpochRow
from tests.support.api import Api, running_api

pytestmark = pytest.mark.integration

OPERATOR = Scope(Role.OPERATOR)
# 2026-03-02 00:00 in Asia/Shanghai
D0 = datetime(2026, 3, 1, 16, tzinfo=UTC)


def poll(i: int, seq: int) -> list[TelemetryRow]:
    t = D0 + timedelta(seconds=10 * i)
    return [TelemetryRow(t, "p1", "e1", "m1", metric, 1.0, "N", seq)
            for metric in ("active_power", "active_energy")]  # fmt: skip


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[Api]:
    """m1 (e1, p1 in Asia/Shanghai): epoch a polls 1..360 over the first hour of
    2026-03-02 without 100..104 and 200; then epoch b from 1 at 02:00, 60 polls;
    m2 of e2 one poll."""
    async with running_api(pg_dsn, db_schema, clock=lambda: 1_900_000_000_000) as a:
        reg = a.storage.registry
        await reg.create_park(OPERATOR, {"id": "p1", "name": "p1",
                                         "timezone": "Asia/Shanghai"})  # fmt: skip
        for ent in ("e1", "e2"):
            await reg.create_enterprise(OPERATOR, {"id": ent, "park": "p1",
                                                   "name": ent})  # fmt: skip
        for dev, ent in (("m1", "e1"), ("m2", "e2")):
            await reg.create_device(OPERATOR, {
                "id": dev, "enterprise": ent, "protocol": "modbus_tcp",
                "interval_s": 10, "metrics": ["active_power"],
            })  # fmt: skip
        rows = [r for i in range(360) if not (99 <= i < 104 or i == 199)
                for r in poll(i, i + 1)]  # fmt: skip
        rows += [r for i in range(60) for r in poll(720 + i, i + 1)]
        rows.append(TelemetryRow(D0, "p1", "e2", "m2", "active_power", 1.0, "N", 1))
        epochs = [
            EpochRow("p1", "e1", "m1", "a" * 16, 1, D0),
            EpochRow("p1", "e1", "m1", "b" * 16, 1, D0 + timedelta(hours=2)),
        ]
        await a.storage.telemetry.write(rows, epochs=epochs)
        yield a


async def get(api: Api, key: dict[str, str], **params: Any) -> Any:
    return await api.client.get("/v1/coverage/sequence", headers=key, params=params)


async def test_missing_polls_are_counted_per_epoch(api: Api) -> None:
    key = await api.key(Role.REGULATOR)
    r = await get(api, key, device="m1", **{"from": "2026-03-02", "to": "2026-03-02"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["polls"], body["missing"]) == (414, 6)
    assert body["timezone"] == "Asia/Shanghai"
    a, b = body["epochs"]
    assert (a["epoch"], a["first_seq"], a["last_seq"], a["polls"], a["missing"]) == (
        "a" * 16, 1, 360, 354, 6,
    )  # fmt: skip
    assert [(x["after_seq"], x["before_seq"], x["missing"]) for x in a["runs"]] == [
        (99, 105, 5), (199, 201, 1),
    ]  # fmt: skip
    assert a["runs"][0]["after"] == "2026-03-02T00:16:20+08:00"
    assert (b["epoch"], b["first_seq"], b["last_seq"], b["missing"]) == (
        "b" * 16, 1, 60, 0,
    )  # fmt: skip
    assert "never stored" in body["definition"]


async def test_the_range_is_local_days_and_runs_can_be_capped(api: Api) -> None:
    key = await api.key(Role.OPERATOR, "p1")
    before = await get(api, key, device="m1", **{"from": "2026-03-01",
                                                 "to": "2026-03-01"})  # fmt: skip
    assert before.status_code == 200, before.text
    assert before.json()["epochs"] == []
    capped = await get(api, key, device="m1", runs=1,
                       **{"from": "2026-03-02", "to": "2026-03-02"})  # fmt: skip
    (a, _) = capped.json()["epochs"]
    assert (len(a["runs"]), a["runs_truncated"], a["missing"]) == (1, True, 6)


async def test_another_tenants_device_is_not_found_and_bad_input_is_named(
    api: Api,
) -> None:
    mine = await api.key(Role.ENTERPRISE, "p1", "e1")
    day = {"from": "2026-03-02", "to": "2026-03-02"}
    theirs = await get(api, mine, device="m2", **day)
    missing = await get(api, mine, device="nope", **day)
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json()["detail"] == missing.json()["detail"].replace("nope", "m2")
    ok = await get(api, mine, device="m1", **day)
    assert ok.status_code == 200
    long = await get(api, mine, device="m1", **{"from": "2026-01-01",
                                                "to": "2026-03-02"})  # fmt: skip
    assert long.status_code == 422
    assert long.json()["errors"][0]["field"] == "query.to"
