"""Replay jobs over HTTP on the real database: who may, progress to done, the
events and the signed report, the bound on running jobs, cancellation, and a job
left running by a stopped process found interrupted."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from psycopg import sql
from pydantic import SecretStr

from api.app import create_app
from smartpark import wire
from smartpark.settings import ApiSettings, SigningSettings
from smartpark.tenancy import Role
from storage import Storage, rows_from_batch
from storage.replay_jobs import ReplayJobStore
from storage.rule_packs import RulePackStore
from storage.secretbox import SecretBox
from storage.signing import generate_private_key, signer_from_settings
from tests.support.api import PEPPER, Api, api_settings

pytestmark = [pytest.mark.integration]

PACK = """\
pack: replay-test
version: "1"
timezone: Asia/Shanghai
watermark_delay: 1min
rules:
  - {id: so2-hourly, kind: window, metric: so2, window: 1h, limit: 50, clear: 45}
"""
HOUR = 3_600_000
T0 = datetime(2026, 11, 1, 13, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
MEANS = (10.0, 60.0, 10.0, 70.0, 10.0)
KEY = generate_private_key()


def telemetry(park: str) -> list[Any]:
    readings = [
        wire.Reading(h * 6 + i + 1, "so2", mean, "mg/m3",
                     T0_MS + h * HOUR + i * 600_000)
        for h, mean in enumerate(MEANS)
        for i in range(6)
    ]  # fmt: skip
    return rows_from_batch(wire.TelemetryBatch(park, "e1", "stack-1", tuple(readings)))


@pytest.fixture
async def api(pg_dsn: str, db_schema: str, park_id: str) -> AsyncIterator[Api]:
    settings = api_settings(pg_dsn, db_schema)
    settings.api = ApiSettings(key_pepper=SecretStr(PEPPER), max_replays=1)
    settings.signing = SigningSettings(private_key=SecretStr(KEY))
    keys = SecretBox.from_settings(settings.webhooks)
    async with Storage(settings.database, pool_size=4, webhook_keys=keys) as storage:
        await storage.migrate()
        await storage.telemetry.write(telemetry(park_id))
        await RulePackStore(storage).record(
            pack="replay-test", version="1", content=PACK,
            sha256=hashlib.sha256(PACK.encode()).hexdigest(),
            at=T0 - timedelta(days=1),
        )  # fmt: skip
        # a job a stopped process left running
        await ReplayJobStore(storage).create("0" * 32, key_id="k", request={
            "scope": {"park": park_id}})  # fmt: skip
        await ReplayJobStore(storage).start("0" * 32, rows_estimated=1)
        app = create_app(settings, storage=storage)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://api.test"
            ) as client,
        ):
            yield Api(storage, client)


BODY = {"start": T0.isoformat(), "end": (T0 + timedelta(hours=5)).isoformat()}


async def done(api: Api, headers: dict[str, str], job_id: str) -> dict[str, Any]:
    for _ in range(200):
        got: dict[str, Any] = (
            await api.client.get(f"/v1/replays/{job_id}", headers=headers)
        ).json()
        if got["status"] not in ("queued", "running"):
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"replay {job_id} still {got['status']}")


async def test_a_regulator_replays_and_gets_a_signed_report(
    api: Api, park_id: str
) -> None:
    regulator = await api.key(Role.REGULATOR)
    left = await api.client.get(f"/v1/replays/{'0' * 32}", headers=regulator)
    assert left.json()["status"] == "interrupted"  # marked when the API started

    enterprise = await api.key(Role.ENTERPRISE, park_id, "e1")
    refused = await api.client.post(
        "/v1/replays", json={"park": park_id, **BODY}, headers=enterprise
    )
    assert refused.status_code == 403
    other = await api.key(Role.OPERATOR, "another-park")
    hidden = await api.client.post(
        "/v1/replays", json={"park": park_id, **BODY}, headers=other
    )
    assert hidden.status_code == 404

    created = await api.client.post(
        "/v1/replays", json={"park": park_id, **BODY}, headers=regulator
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["id"]
    assert created.headers["location"] == f"/v1/replays/{job_id}"
    assert (
        await api.client.get(f"/v1/replays/{job_id}", headers=other)
    ).status_code == 404

    job = await done(api, regulator, job_id)
    assert job["status"] == "done", job
    assert job["progress"] == {"rows_read": 30, "rows_estimated": 30}
    summary = job["summary"]
    # nothing ran live here: each breach is new, the resolutions are ok
    assert (summary["events"], summary["new"], summary["vanished"]) == (3, 2, 0)
    [part] = summary["evidence"]["parts"]
    assert (part["pack"], part["version"], part["rows"]) == ("replay-test", "1", 30)

    events = await api.client.get(f"/v1/replays/{job_id}/events", headers=regulator)
    assert events.headers["content-type"].startswith("application/x-ndjson")
    kinds = [json.loads(line)["kind"] for line in events.text.splitlines()]
    assert kinds == ["opened", "resolved", "opened"]

    report = await api.client.get(f"/v1/replays/{job_id}/report.csv", headers=regulator)
    sig = await api.client.get(
        f"/v1/replays/{job_id}/report.csv.sig", headers=regulator
    )
    assert len(sig.content) == 64
    signer = signer_from_settings(SigningSettings(private_key=SecretStr(KEY)))
    assert f"# key_id: {signer.key_id}\n" in report.text
    signer.public.verify(sig.content, report.content)  # raises if it does not match

    audit = [(a.action, a.target) for a in await api.storage.keys.audit_log()]
    assert ("replay.create", f"replay:{job_id}") in audit
    assert ("replay.report", f"replay:{job_id}") in audit


async def test_running_jobs_are_bounded_and_can_be_cancelled(
    api: Api, park_id: str, pg_dsn: str, db_schema: str
) -> None:
    operator = await api.key(Role.OPERATOR, park_id)
    # hold the series table: the first job waits on it, still running
    blocking = await psycopg.AsyncConnection.connect(pg_dsn)
    async with blocking as blocker, blocker.transaction():
        await blocker.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.Identifier(db_schema, "series")
            )
        )
        first = await api.client.post(
            "/v1/replays", json={"park": park_id, **BODY}, headers=operator
        )
        assert first.status_code == 202
        job_id = first.json()["id"]
        busy = await api.client.post(
            "/v1/replays", json={"park": park_id, **BODY}, headers=operator
        )
        assert busy.status_code == 429, busy.text
        assert busy.headers["retry-after"] == "30"
        cancelled = await api.client.delete(f"/v1/replays/{job_id}", headers=operator)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["status"] == "cancelled"
    again = await api.client.delete(f"/v1/replays/{job_id}", headers=operator)
    assert again.status_code == 409
    not_done = await api.client.get(
        f"/v1/replays/{job_id}/report.csv", headers=operator
    )
    assert not_done.status_code == 409
    # the bound is free again
    second = await api.client.post(
        "/v1/replays", json={"park": park_id, **BODY}, headers=operator
    )
    assert second.status_code == 202
    assert (await done(api, operator, second.json()["id"]))["status"] == "done"


async def test_bad_requests_are_named(api: Api, park_id: str) -> None:
    regulator = await api.key(Role.REGULATOR)
    cases = [
        ({"end": T0.isoformat()}, "body.end"),
        ({"enterprise": "e1", "device": "stack-1"}, "body.enterprise"),
        ({"proposed_pack": "pack: ["}, "body.proposed_pack"),
        ({"proposed_pack": PACK, "pack_version": "1"}, "body.pack_version"),
        ({"warmup": "soon"}, "body.warmup"),
    ]
    for extra, field in cases:
        got = await api.client.post(
            "/v1/replays", json={"park": park_id, **BODY, **extra}, headers=regulator
        )
        assert got.status_code == 422, (extra, got.text)
        assert got.json()["errors"][0]["field"] == field
    unknown = await api.client.post(
        "/v1/replays", json={"park": park_id, **BODY, "pack_version": "9"},
        headers=regulator,
    )  # fmt: skip
    job = await done(api, regulator, unknown.json()["id"])
    assert job["status"] == "failed"
    assert "no version '9' of pack 'replay-test'" in job["error"]
