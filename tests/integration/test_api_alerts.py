"""Alerts over HTTP against the real PostgreSQL: every route for every role, the
scope applied by path, filter and cursor (another tenant's alert is the same 404
as a missing one), acknowledgement and resolution by hand as events of their own,
audited; bad input named."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from smartpark.tenancy import Role
from storage.alerts import AlertEventRow
from tests.support.api import Api, running_api

T0 = 1_764_576_000_000  # 2025-12-01T08:00:00Z


def opened(
    n: int,
    park: str,
    enterprise: str | None,
    device: str | None,
    *,
    severity: str = "major",
    rule: str = "so2-hourly",
) -> AlertEventRow:
    alert_id = f"al{n:04d}"
    body = {
        "event_id": f"ev{n:04d}", "alert_id": alert_id, "kind": "opened",
        "rule_id": rule, "rule_version": "3", "severity": severity,
        "scope": {"park": park, "enterprise": enterprise, "device": device,
                  "metric": "so2"},
        "at_ms": T0 + n * 60_000, "value": 61.2,
        "window": {"start_ms": T0 - 3_600_000, "end_ms": T0}, "limit": 35.0,
        "evidence": {"pack": "ule", "limit": 35.0, "values": [58.1, 64.3]},
    }  # fmt: skip
    return AlertEventRow(
        f"ev{n:04d}", alert_id, "opened", "ule", rule, "3", severity, park,
        enterprise, device, "so2", T0 + n * 60_000, body,
    )  # fmt: skip


SEED = [
    opened(1, "p1", "e1", "a1"),
    opened(2, "p1", "e1", "a2", severity="minor", rule="nox-hourly"),
    opened(3, "p1", "e2", "b1"),
    opened(4, "p2", "e3", "c1"),
    opened(5, "p1", None, None, rule="park-water"),
]
MINE = {"al0001", "al0002"}


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[Api]:
    async with running_api(pg_dsn, db_schema) as api:
        await api.storage.alerts.write(SEED, [])
        yield api


def ids(body: dict[str, Any]) -> set[str]:
    return {a["alert_id"] for a in body["items"]}


@pytest.mark.parametrize(
    ("role", "park", "enterprise", "seen"),
    [
        (Role.ENTERPRISE, "p1", "e1", MINE),
        (Role.ENTERPRISE, "p1", "e2", {"al0003"}),
        (Role.OPERATOR, "p1", None, {"al0001", "al0002", "al0003", "al0005"}),
        (Role.OPERATOR, None, None, {f"al000{n}" for n in range(1, 6)}),
        (Role.REGULATOR, None, None, {f"al000{n}" for n in range(1, 6)}),
    ],
)
async def test_every_role_lists_its_scope(
    api: Api, role: Role, park: str | None, enterprise: str | None, seen: set[str]
) -> None:
    key = await api.key(role, park, enterprise)
    r = await api.client.get("/v1/alerts", headers=key)
    assert r.status_code == 200, r.text
    assert ids(r.json()) == seen
    for alert_id in seen:
        one = await api.client.get(f"/v1/alerts/{alert_id}", headers=key)
        assert one.status_code == 200
    for alert_id in {f"al000{n}" for n in range(1, 6)} - seen:
        one = await api.client.get(f"/v1/alerts/{alert_id}", headers=key)
        assert (one.status_code, one.json()["detail"]) == (404, "alert not found")


async def test_one_alert_has_its_events_and_evidence(api: Api) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.get("/v1/alerts/al0001", headers=key)
    body = r.json()
    assert (body["rule_version"], body["status"], body["pack"]) == ("3", "open", "ule")
    assert body["links"]["self"] == "/v1/alerts/al0001"
    [event] = body["events"]
    assert (event["kind"], event["value"], event["limit"]) == ("opened", 61.2, 35.0)
    assert event["window"] == {"start_ms": T0 - 3_600_000, "end_ms": T0}
    assert event["evidence"]["values"] == [58.1, 64.3]


async def test_another_tenants_alert_is_the_same_404_as_a_missing_one(
    api: Api,
) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    missing = await api.client.get("/v1/alerts/al9999", headers=key)
    theirs = await api.client.get("/v1/alerts/al0003", headers=key)
    assert missing.status_code == theirs.status_code == 404
    assert missing.json() == theirs.json()
    for path in ("acknowledge", "resolve"):
        body = {"reason": "x"} if path == "resolve" else {"comment": "x"}
        a = await api.client.post(f"/v1/alerts/al9999/{path}", headers=key, json=body)
        b = await api.client.post(f"/v1/alerts/al0003/{path}", headers=key, json=body)
        assert a.status_code == b.status_code == 404
        assert a.json() == b.json()
    [theirs_row] = [
        a for a in await api.storage.alerts.list_alerts() if a.alert_id == "al0003"
    ]
    assert theirs_row.status == "open"  # untouched


@pytest.mark.parametrize(
    "params",
    [
        {"enterprise": "e2"}, {"device": "b1"}, {"enterprise": "e3"},
        {"rule": "park-water"}, {"device": "c1", "status": "open"},
    ],
)  # fmt: skip
async def test_filters_narrow_the_scope_never_widen_it(
    api: Api, params: dict[str, str]
) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.get("/v1/alerts", headers=key, params=params)
    assert (r.status_code, r.json()["items"]) == (200, [])


async def test_a_cursor_made_from_another_tenants_alert_shows_nothing_of_theirs(
    api: Api,
) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    theirs = SEED[3]  # al0004 of e3, opened last but one
    at = "2025-12-01T08:04:00+00:00"
    raw = json.dumps([at, theirs.alert_id]).encode()
    cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    r = await api.client.get("/v1/alerts", headers=key, params={"cursor": cursor})
    assert r.status_code == 200
    assert ids(r.json()) <= MINE


async def test_pages_follow_the_cursor_without_gaps_or_repeats(api: Api) -> None:
    key = await api.key(Role.REGULATOR)
    seen: list[str] = []
    params: dict[str, Any] = {"limit": 2}
    while True:
        r = await api.client.get("/v1/alerts", headers=key, params=params)
        page = r.json()
        seen += [a["alert_id"] for a in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seen == [f"al000{n}" for n in range(5, 0, -1)]  # newest first


async def test_filters_by_status_severity_rule_device_and_time(api: Api) -> None:
    key = await api.key(Role.OPERATOR, "p1")
    cases: list[tuple[dict[str, str], set[str]]] = [
        ({"severity": "minor"}, {"al0002"}),
        ({"rule": "so2-hourly"}, {"al0001", "al0003"}),
        ({"device": "a2"}, {"al0002"}),
        ({"enterprise": "e2"}, {"al0003"}),
        ({"status": "resolved"}, set()),
        ({"since": "2025-12-01T08:02:00Z", "until": "2025-12-01T08:04:00Z"},
         {"al0002", "al0003"}),
    ]  # fmt: skip
    for params, want in cases:
        r = await api.client.get("/v1/alerts", headers=key, params=params)
        assert ids(r.json()) == want, params


async def test_acknowledge_with_a_comment_is_an_audited_event(api: Api) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.post(
        "/v1/alerts/al0001/acknowledge", headers=key,
        json={"comment": "crew sent to stack 1"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "acknowledged"
    assert body["acknowledged_by"].startswith("test enterprise (key ")
    ack = body["events"][-1]
    assert (ack["kind"], ack["evidence"]["comment"]) == (
        "acknowledged", "crew sent to stack 1",
    )  # fmt: skip
    again = await api.client.post("/v1/alerts/al0001/acknowledge", headers=key, json={})
    assert (again.status_code, again.json()["detail"]) == (
        409, "alert is already acknowledged",
    )  # fmt: skip
    [entry, *_] = await api.storage.keys.audit_log()
    assert (entry.action, entry.target, entry.enterprise) == (
        "alert.acknowledge", "al0001", "e1",
    )  # fmt: skip
    unproduced = await api.storage.alerts.unproduced()
    assert any(e.kind == "acknowledged" for e in unproduced)  # reaches webhooks


async def test_resolve_by_hand_says_who_and_why_and_not_the_rule(api: Api) -> None:
    key = await api.key(Role.OPERATOR, "p1")
    r = await api.client.post(
        "/v1/alerts/al0003/resolve", headers=key,
        json={"reason": "analyser in calibration"},
    )  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "resolved"
    last = body["events"][-1]
    assert last["kind"] == "resolved"
    assert last["value"] is None
    assert last["window"] is None
    assert last["evidence"]["resolution"] == "manual"
    assert last["evidence"]["reason"] == "analyser in calibration"
    assert last["evidence"]["resolved_by"].startswith("test operator (key ")
    again = await api.client.post(
        "/v1/alerts/al0003/resolve", headers=key, json={"reason": "again"}
    )
    assert again.status_code == 409
    ack = await api.client.post("/v1/alerts/al0003/acknowledge", headers=key, json={})
    assert ack.status_code == 409
    # the rule resolving it later is kept as an event; the resolution stays the
    # person's
    later = AlertEventRow(
        "ev-engine", "al0003", "resolved", "ule", "so2-hourly", "3", "major", "p1",
        "e2", "b1", "so2", T0 + 3_600_000,
        {"event_id": "ev-engine", "kind": "resolved", "value": 20.0},
    )  # fmt: skip
    await api.storage.alerts.write([later], [])
    body = (await api.client.get("/v1/alerts/al0003", headers=key)).json()
    assert body["resolved_at"] == r.json()["resolved_at"]
    assert [e["kind"] for e in body["events"]] == ["opened", "resolved", "resolved"]
    [entry, *_] = await api.storage.keys.audit_log()
    assert (entry.action, entry.detail["reason"]) == (
        "alert.resolve", "analyser in calibration",
    )  # fmt: skip


async def test_a_regulator_reads_but_never_writes(api: Api) -> None:
    key = await api.key(Role.REGULATOR)
    assert (await api.client.get("/v1/alerts/al0001", headers=key)).status_code == 200
    for path, body in (("acknowledge", {}), ("resolve", {"reason": "x"})):
        r = await api.client.post(f"/v1/alerts/al0001/{path}", headers=key, json=body)
        assert (r.status_code, r.json()["detail"]) == (
            403, "a regulator key is read-only",
        )  # fmt: skip
    assert {a.status for a in await api.storage.alerts.list_alerts()} == {"open"}


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "field"),
    [
        ("GET", "/v1/alerts", {"since": "2025-12-01T08:00:00"}, None, "query.since"),
        ("GET", "/v1/alerts", {"since": "2025-12-02T00:00:00Z",
                               "until": "2025-12-01T00:00:00Z"}, None, "query.until"),
        ("GET", "/v1/alerts", {"limit": "0"}, None, "query.limit"),
        ("GET", "/v1/alerts", {"limit": "100000"}, None, "query.limit"),
        ("GET", "/v1/alerts", {"cursor": "not-a-cursor"}, None, "query.cursor"),
        ("GET", "/v1/alerts", {"status": "closed"}, None, "query.status"),
        ("GET", "/v1/alerts", {"enterprise": "e1\x00"}, None, "query.enterprise"),
        ("GET", "/v1/alerts/al%00x", {}, None, "path.alert_id"),
        ("POST", "/v1/alerts/al0001/resolve", {}, {}, "body.reason"),
        ("POST", "/v1/alerts/al0001/resolve", {}, {"reason": ""}, "body.reason"),
        ("POST", "/v1/alerts/al0001/resolve", {}, {"reason": "a\x00b"}, "body.reason"),
        ("POST", "/v1/alerts/al0001/acknowledge", {}, {"comment": "\x00"},
         "body.comment"),
        ("POST", "/v1/alerts/al0001/acknowledge", {}, {"comment": "x", "by": "y"},
         "body.by"),
        ("POST", "/v1/alerts/al0001/acknowledge", {}, {"comment": 5}, "body.comment"),
    ],
)  # fmt: skip
async def test_bad_input_names_the_field(
    api: Api, method: str, path: str, params: dict[str, str],
    body: dict[str, Any] | None, field: str,
) -> None:  # fmt: skip
    key = await api.key(Role.OPERATOR, "p1")
    r = await api.client.request(method, path, headers=key, params=params, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


async def test_a_malformed_body_is_a_422_not_a_500(api: Api) -> None:
    key = await api.key(Role.OPERATOR, "p1")
    r = await api.client.post(
        "/v1/alerts/al0001/resolve",
        headers={**key, "content-type": "application/json"},
        content=b"{not json",
    )
    assert r.status_code == 422
