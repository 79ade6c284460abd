"""Data marks over HTTP against the real PostgreSQL: a mark entered, corrected,
withdrawn and reviewed with its whole history kept; the scope applied by path,
body, filter and cursor (another tenant's device or mark is the same 404 as a
missing one); regulators review and never create; automatic marks derived from
flagged readings stored through the storage writer; bad input named; and the
``invalid_periods`` contract the coverage, KPIs and the report rely on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from smartpark.apikeys import parse_key
from smartpark.tenancy import Role, Scope
from storage import TelemetryRow
from storage.marks import InvalidPeriod
from tests.support.api import Api, running_api

T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
H = timedelta(hours=1)
M = timedelta(minutes=1)
OPERATOR = Scope(Role.OPERATOR)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class World:
    api: Api
    keys: dict[str, dict[str, str]]

    @property
    def client(self) -> httpx.AsyncClient:
        return self.api.client

    def key_id(self, who: str) -> str:
        parsed = parse_key(self.keys[who]["Authorization"].removeprefix("Bearer "))
        assert parsed is not None
        return parsed[0]

    async def call(self, method: str, url: str, who: str, **kw: Any) -> httpx.Response:
        return await self.client.request(method, url, headers=self.keys[who], **kw)

    async def ok(self, method: str, url: str, who: str, **kw: Any) -> Any:
        r = await self.call(method, url, who, **kw)
        assert r.status_code in {200, 201}, (method, url, r.status_code, r.text)
        return r.json()

    async def mark(self, who: str, **fields: Any) -> dict[str, Any]:
        body = {
            "device": "a1", "start": iso(T0), "end": iso(T0 + 2 * H),
            "kind": "startup", "reason": "cold start", **fields,
        }  # fmt: skip
        r = await self.call("POST", "/v1/marks", who, json=body)
        assert r.status_code == 201, r.text
        created: dict[str, Any] = r.json()
        return created


@pytest.fixture
async def world(
    pg_dsn: str, db_schema: str, request: pytest.FixtureRequest
) -> AsyncIterator[World]:
    """Parks p1, p2; enterprises e1, e2 of p1 and f1 of p2; devices a1 (e1, an
    analyser of so2 and o2), a2 (e1), b1 (e2), c1 (f1), every one reporting each
    minute; keys of every role. ``max_points`` by indirect parametrisation."""
    max_points: int = getattr(request, "param", 100_000)
    async with running_api(pg_dsn, db_schema, max_points=max_points) as api:
        reg = api.storage.registry
        await reg.create_park(OPERATOR, {"id": "p1", "name": "P1",
                                         "timezone": "Asia/Shanghai"})  # fmt: skip
        await reg.create_park(OPERATOR, {"id": "p2", "name": "P2",
                                         "timezone": "Europe/Berlin"})  # fmt: skip
        for ent, park in (("e1", "p1"), ("e2", "p1"), ("f1", "p2")):
            await reg.create_enterprise(OPERATOR, {"id": ent, "park": park,
                                                   "name": ent})  # fmt: skip
        for dev, ent, protocol, metrics in (
            ("a1", "e1", "hj212", ["so2", "o2"]),
            ("a2", "e1", "modbus_tcp", ["active_power"]),
            ("b1", "e2", "modbus_tcp", ["active_power"]),
            ("c1", "f1", "hj212", ["so2"]),
        ):
            await reg.create_device(OPERATOR, {
                "id": dev, "enterprise": ent, "protocol": protocol,
                "interval_s": 60, "metrics": metrics,
            })  # fmt: skip
        keys = {
            "e1": await api.key(Role.ENTERPRISE, "p1", "e1"),
            "e2": await api.key(Role.ENTERPRISE, "p1", "e2"),
            "op_p1": await api.key(Role.OPERATOR, "p1"),
            "op_p2": await api.key(Role.OPERATOR, "p2"),
            "reg": await api.key(Role.REGULATOR),
        }
        yield World(api, keys)


async def test_an_enterprise_marks_its_own_device_audited(world: World) -> None:
    m = await world.mark("e1", metric="so2", attachment="DCS log 17")
    assert (m["park"], m["enterprise"], m["device"], m["metric"]) == (
        "p1", "e1", "a1", "so2",
    )  # fmt: skip
    assert (at(m["start"]), at(m["end"])) == (T0, T0 + 2 * H)
    assert (m["kind"], m["invalid"], m["origin"]) == ("startup", True, "enterprise")
    assert m["created_by"] == world.key_id("e1")
    assert (m["state"], m["review"], m["supersedes"]) == ("in_force", None, None)
    assert m["links"]["self"] == f"/v1/marks/{m['id']}"
    [entry, *_] = await world.api.storage.keys.audit_log()
    assert (entry.action, entry.target) == ("mark.create", f"mark:{m['id']}")
    assert entry.detail["reason"] == "cold start"
    # an operator marks its park's devices, as the operator
    op = await world.mark("op_p1", device="b1", kind="fault", reason="dead pump")
    assert (op["origin"], op["enterprise"], op["created_by"]) == (
        "operator", "e2", world.key_id("op_p1"),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "given", "stored"),
    [
        ("startup", None, True), ("shutdown", None, True),
        ("planned_maintenance", None, True), ("calibration", None, True),
        ("comms_fault", None, True), ("stopped", None, True),
        ("startup", False, False), ("other", False, False), ("other", True, True),
    ],
)  # fmt: skip
async def test_invalid_defaults_by_kind(
    world: World, kind: str, given: bool | None, stored: bool
) -> None:
    extra = {} if given is None else {"invalid": given}
    m = await world.mark("e1", kind=kind, **extra)
    assert m["invalid"] is stored


async def test_other_must_say_whether_its_data_is_invalid(world: World) -> None:
    r = await world.call("POST", "/v1/marks", "e1", json={
        "device": "a1", "start": iso(T0), "end": iso(T0 + H), "kind": "other",
        "reason": "contractor on site",
    })  # fmt: skip
    assert r.status_code == 422
    assert r.json()["errors"][0]["field"] == "body.invalid"


async def test_a_correction_supersedes_and_the_history_is_kept(world: World) -> None:
    m1 = await world.mark("e1")
    m2 = await world.ok("POST", f"/v1/marks/{m1['id']}/supersede", "e1", json={
        "device": "a1", "start": iso(T0), "end": iso(T0 + 3 * H), "kind": "startup",
        "reason": "the start-up took an hour longer",
    })  # fmt: skip
    assert (m2["supersedes"], m2["withdrawn"], m2["state"]) == (
        m1["id"], False, "in_force",
    )  # fmt: skip
    assert at(m2["end"]) == T0 + 3 * H
    old = await world.ok("GET", f"/v1/marks/{m1['id']}", "e1")
    assert (old["state"], old["superseded_by"]) == ("superseded", m2["id"])
    assert at(old["end"]) == T0 + 2 * H  # the old row is unchanged
    assert old["reason"] == "cold start"
    assert [h["id"] for h in old["history"]] == [m1["id"], m2["id"]]
    listed = await world.ok("GET", "/v1/marks", "e1", params={"origin": "enterprise"})
    assert [i["id"] for i in listed["items"]] == [m2["id"]]
    # superseding the superseded mark again: 409 naming its successor
    r = await world.call("POST", f"/v1/marks/{m1['id']}/supersede", "e1",
                         json={"withdraw": True, "reason": "x"})  # fmt: skip
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"mark {m1['id']} is already superseded by mark {m2['id']}"
    )
    # a withdrawal copies the period and ends the chain
    m3 = await world.ok("POST", f"/v1/marks/{m2['id']}/supersede", "e1",
                        json={"withdraw": True, "reason": "wrong unit"})  # fmt: skip
    assert (m3["supersedes"], m3["withdrawn"], m3["state"]) == (
        m2["id"], True, "withdrawal",
    )  # fmt: skip
    assert (at(m3["start"]), at(m3["end"])) == (T0, T0 + 3 * H)
    assert m3["kind"] == "startup"
    assert m3["reason"] == "wrong unit"
    listed = await world.ok("GET", "/v1/marks", "e1", params={"origin": "enterprise"})
    assert listed["items"] == []
    chain = await world.ok("GET", f"/v1/marks/{m2['id']}", "e1")
    assert chain["state"] == "withdrawn"
    assert [(h["id"], h["state"]) for h in chain["history"]] == [
        (m1["id"], "superseded"), (m2["id"], "withdrawn"), (m3["id"], "withdrawal"),
    ]  # fmt: skip
    r = await world.call("POST", f"/v1/marks/{m3['id']}/supersede", "e1",
                         json={"withdraw": True, "reason": "again"})  # fmt: skip
    assert r.status_code == 409
    audited = [(a.action, a.target) for a in await world.api.storage.keys.audit_log()]
    assert audited[:3] == [
        ("mark.withdraw", f"mark:{m2['id']}"), ("mark.supersede", f"mark:{m1['id']}"),
        ("mark.create", f"mark:{m1['id']}"),
    ]  # fmt: skip


async def test_two_corrections_at_once_one_wins_the_other_is_told(
    world: World,
) -> None:
    m = await world.mark("e1")
    url = f"/v1/marks/{m['id']}/supersede"
    a, b = await asyncio.gather(
        world.call("POST", url, "e1", json={"withdraw": True, "reason": "a"}),
        world.call("POST", url, "op_p1", json={"withdraw": True, "reason": "b"}),
    )
    assert sorted([a.status_code, b.status_code]) == [201, 409]
    won, lost = (a, b) if a.status_code == 201 else (b, a)
    assert lost.json()["detail"] == (
        f"mark {m['id']} is already withdrawn by mark {won.json()['id']}"
    )
    chain = await world.ok("GET", f"/v1/marks/{m['id']}", "e1")
    assert len(chain["history"]) == 2


async def test_a_correction_keeps_the_device(world: World) -> None:
    m = await world.mark("e1")
    r = await world.call("POST", f"/v1/marks/{m['id']}/supersede", "e1", json={
        "device": "a2", "start": iso(T0), "end": iso(T0 + H), "kind": "startup",
        "reason": "other meter",
    })  # fmt: skip
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "body.device")


async def test_a_regulator_reviews_and_never_creates(world: World) -> None:
    m = await world.mark("e1")
    r = await world.call("POST", "/v1/marks", "reg", json={
        "device": "a1", "start": iso(T0), "end": iso(T0 + H), "kind": "startup",
        "reason": "x",
    })  # fmt: skip
    assert (r.status_code, r.json()["detail"]) == (403, "a regulator key is read-only")
    r = await world.call("POST", f"/v1/marks/{m['id']}/supersede", "reg",
                         json={"withdraw": True, "reason": "x"})  # fmt: skip
    assert r.status_code == 403
    for who in ("e1", "op_p1"):
        r = await world.call(
            "POST",
            f"/v1/marks/{m['id']}/review",
            who,
            json={"verdict": "accepted", "reason": "fine"},
        )
        assert (r.status_code, r.json()["detail"]) == (
            403, "only a regulator reviews marks",
        )  # fmt: skip
    first = await world.ok(
        "POST",
        f"/v1/marks/{m['id']}/review",
        "reg",
        json={"verdict": "accepted", "reason": "DCS log agrees"},
    )
    assert (first["mark_id"], first["verdict"], first["reviewed_by"]) == (
        m["id"], "accepted", world.key_id("reg"),
    )  # fmt: skip
    pending = await world.ok("GET", "/v1/marks", "e1", params={"review": "pending"})
    assert pending["items"] == []
    await world.ok(
        "POST",
        f"/v1/marks/{m['id']}/review",
        "reg",
        json={"verdict": "rejected", "reason": "no start-up on the 1st"},
    )
    one = await world.ok("GET", f"/v1/marks/{m['id']}", "e1")
    assert (one["state"], one["review"]["verdict"]) == ("rejected", "rejected")
    assert [(r["verdict"], r["reason"]) for r in one["reviews"]] == [
        ("accepted", "DCS log agrees"), ("rejected", "no start-up on the 1st"),
    ]  # fmt: skip
    rejected = await world.ok("GET", "/v1/marks", "e1", params={"review": "rejected"})
    assert [i["id"] for i in rejected["items"]] == [m["id"]]
    [entry, *_] = await world.api.storage.keys.audit_log()
    assert (entry.action, entry.detail["verdict"]) == ("mark.review", "rejected")
    # the reviews stay with the chain after a correction; the new mark awaits one
    m2 = await world.ok("POST", f"/v1/marks/{m['id']}/supersede", "e1", json={
        "device": "a1", "start": iso(T0 + H), "end": iso(T0 + 2 * H),
        "kind": "startup", "reason": "the second hour only",
    })  # fmt: skip
    assert (m2["state"], m2["review"]) == ("in_force", None)
    chain = await world.ok("GET", f"/v1/marks/{m2['id']}", "reg")
    assert len(chain["reviews"]) == 2
    r = await world.call("POST", f"/v1/marks/{m['id']}/review", "reg",
                         json={"verdict": "accepted", "reason": "late"})  # fmt: skip
    assert r.status_code == 409


async def test_another_tenants_device_or_mark_is_the_same_404(world: World) -> None:
    mine = await world.mark("e1")
    body = {"device": "a1", "start": iso(T0), "end": iso(T0 + H),
            "kind": "startup", "reason": "x"}  # fmt: skip
    theirs = await world.call("POST", "/v1/marks", "e2", json=body)
    unknown = await world.call("POST", "/v1/marks", "e2",
                               json={**body, "device": "zz"})  # fmt: skip
    assert theirs.status_code == unknown.status_code == 404
    assert theirs.json() == unknown.json()
    op_other = await world.call("POST", "/v1/marks", "op_p2", json=body)
    assert op_other.json() == unknown.json()
    missing_id = 10**9
    for method, path, payload in (
        ("GET", "", None),
        ("POST", "/supersede", {"withdraw": True, "reason": "mine now"}),
        ("POST", "/supersede", {**body, "reason": "mine now"}),
    ):
        a = await world.call(method, f"/v1/marks/{mine['id']}{path}", "e2",
                             json=payload)  # fmt: skip
        b = await world.call(method, f"/v1/marks/{missing_id}{path}", "e2",
                             json=payload)  # fmt: skip
        assert a.status_code == b.status_code == 404
        assert a.json() == b.json() == {
            "type": "about:blank", "title": "Not found", "status": 404,
            "detail": "mark not found",
        }  # fmt: skip
    for params in ({}, {"device": "a1"}, {"enterprise": "e1"}):
        page = await world.ok("GET", "/v1/marks", "e2", params=params)
        assert page["items"] == []
    untouched = await world.ok("GET", f"/v1/marks/{mine['id']}", "e1")
    assert untouched["state"] == "in_force"
    # the park's operator sees it; an operator of another park does not
    assert (
        await world.call("GET", f"/v1/marks/{mine['id']}", "op_p1")
    ).status_code == 200
    assert (
        await world.call("GET", f"/v1/marks/{mine['id']}", "op_p2")
    ).status_code == 404


async def test_an_enterprise_cannot_undo_an_operators_mark(world: World) -> None:
    op = await world.mark("op_p1", kind="comms_fault", reason="gateway down")
    r = await world.call("POST", f"/v1/marks/{op['id']}/supersede", "e1",
                         json={"withdraw": True, "reason": "no"})  # fmt: skip
    assert r.status_code == 403
    w = await world.ok(
        "POST",
        f"/v1/marks/{op['id']}/supersede",
        "op_p1",
        json={"withdraw": True, "reason": "gateway was fine"},
    )
    assert (w["withdrawn"], w["origin"]) == (True, "operator")


async def test_a_list_pages_by_cursor_within_the_scope(world: World) -> None:
    made = [
        (await world.mark("e1", start=iso(T0 + i * H), end=iso(T0 + (i + 1) * H)))["id"]
        for i in range(5)
    ]
    await world.mark("e2", device="b1")
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2, "origin": "enterprise"}
        if cursor:
            params["cursor"] = cursor
        page = await world.ok("GET", "/v1/marks", "e1", params=params)
        seen += [i["id"] for i in page["items"]]
        assert page["automatic"] is None
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == made[::-1]  # latest start first
    overlapping = await world.ok("GET", "/v1/marks", "e1", params={
        "origin": "enterprise", "from": iso(T0 + H + 30 * M),
        "to": iso(T0 + 3 * H),
    })  # fmt: skip
    assert [i["id"] for i in overlapping["items"]] == [made[2], made[1]]


async def test_automatic_marks_from_runs_of_flagged_readings(world: World) -> None:
    # a1 so2 every minute from T0: N N C C C N N D N F F; a1 o2 all N; c1 (another
    # park) C-flagged too.
    flags = "NNCCCNNDNFF"
    rows = [
        TelemetryRow(T0 + i * M, "p1", "e1", "a1", "so2", 10.0 + i, f, i)
        for i, f in enumerate(flags)
    ] + [
        TelemetryRow(T0 + i * M, "p1", "e1", "a1", "o2", 6.0, "N", i)
        for i in range(len(flags))
    ] + [
        TelemetryRow(T0 + i * M, "p2", "f1", "c1", "so2", 1.0, "C", i)
        for i in range(3)
    ]  # fmt: skip
    await world.api.storage.telemetry.write(rows)
    await world.mark("e1", kind="maintenance", reason="manual one")
    window = {"from": iso(T0), "to": iso(T0 + H)}
    page = await world.ok("GET", "/v1/marks", "e1",
                          params={**window, "origin": "automatic"})  # fmt: skip
    assert page["items"] == []  # manual marks are not asked for
    auto = page["automatic"]
    assert (auto["capped"], at(auto["start"]), at(auto["end"])) == (False, T0, T0 + H)
    got = [
        (a["device"], a["metric"], a["flag"], a["kind"], at(a["start"]),
         at(a["end"]), a["readings"], a["origin"], a["invalid"])
        for a in auto["items"]
    ]  # fmt: skip
    assert got == [
        # C at minutes 2..4, until the N reading at minute 5
        ("a1", "so2", "C", "calibration", T0 + 2 * M, T0 + 5 * M, 3, "automatic", True),
        # D at minute 7, until minute 8
        ("a1", "so2", "D", "fault", T0 + 7 * M, T0 + 8 * M, 1, "automatic", True),
        # F at minutes 9, 10: the range's last run, one step (1 min) after minute 10
        ("a1", "so2", "F", "stopped", T0 + 9 * M, T0 + 11 * M, 2, "automatic", True),
    ]  # fmt: skip
    # a kind filter, and a range starting inside a run (clipped to it)
    cal = await world.ok("GET", "/v1/marks", "e1", params={
        "from": iso(T0 + 3 * M), "to": iso(T0 + 10 * M + 30 * timedelta(seconds=1)),
        "kind": "calibration",
    })  # fmt: skip
    assert cal["items"] == []  # the manual mark is maintenance, not calibration
    assert [
        (at(a["start"]), at(a["end"]), a["readings"]) for a in cal["automatic"]["items"]
    ] == [(T0 + 3 * M, T0 + 5 * M, 2)]
    # the range ends inside the F run: clipped at its end
    stopped = await world.ok("GET", "/v1/marks", "e1", params={
        "from": iso(T0), "to": iso(T0 + 10 * M + 30 * timedelta(seconds=1)),
        "origin": "automatic", "kind": "stopped",
    })  # fmt: skip
    assert [(at(a["start"]), at(a["end"])) for a in stopped["automatic"]["items"]] == [
        (T0 + 9 * M, T0 + 10 * M + 30 * timedelta(seconds=1))
    ]
    # the operator of p2 sees c1's calibration, not e1's
    other = await world.ok("GET", "/v1/marks", "op_p2",
                           params={**window, "origin": "automatic"})  # fmt: skip
    assert [(a["device"], a["readings"]) for a in other["automatic"]["items"]] == [
        ("c1", 3)
    ]
    # manual-only filters leave automatic marks out
    manual = await world.ok("GET", "/v1/marks", "e1",
                            params={**window, "origin": "enterprise"})  # fmt: skip
    assert manual["automatic"] is None
    assert [i["kind"] for i in manual["items"]] == ["maintenance"]


@pytest.mark.parametrize("world", [10], indirect=True)
async def test_automatic_marks_that_would_read_too_much_are_refused(
    world: World,
) -> None:
    # max_points 10: at most 100 readings read. a1 reports so2 and o2 every
    # minute: an hour is 120 readings of a1, 60 of its so2.
    rows = [
        TelemetryRow(T0 + i * M, "p1", "e1", "a1", metric, 1.0, "C", i)
        for i in range(60)
        for metric in ("so2", "o2")
    ]
    await world.api.storage.telemetry.write(rows)
    hour = {"from": iso(T0), "to": iso(T0 + H), "device": "a1"}
    implicit = await world.ok("GET", "/v1/marks", "e1", params=hour)
    assert implicit["automatic"]["items"] == []
    assert (
        "about 120 readings, more than the limit of 100"
        in (implicit["automatic"]["skipped"])
    )
    r = await world.call("GET", "/v1/marks", "e1",
                         params={**hour, "origin": "automatic"})  # fmt: skip
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "query.to")
    so2 = await world.ok("GET", "/v1/marks", "e1",
                         params={**hour, "metric": "so2"})  # fmt: skip
    assert so2["automatic"]["skipped"] is None
    assert [(a["metric"], a["readings"]) for a in so2["automatic"]["items"]] == [
        ("so2", 60)
    ]


async def test_automatic_marks_are_capped_and_say_so(world: World) -> None:
    n = 2002  # C N C N …: 1001 runs of C
    await world.api.storage.telemetry.write([
        TelemetryRow(T0 + i * M, "p1", "e1", "a1", "so2", 1.0, "CN"[i % 2], i)
        for i in range(n)
    ])  # fmt: skip
    page = await world.ok("GET", "/v1/marks", "e1", params={
        "from": iso(T0), "to": iso(T0 + n * M), "origin": "automatic",
    })  # fmt: skip
    auto = page["automatic"]
    assert (auto["cap"], auto["capped"], len(auto["items"])) == (1000, True, 1000)
    last = auto["items"][-1]
    assert (at(last["start"]), at(last["end"])) == (T0 + 1998 * M, T0 + 1999 * M)


BAD: list[tuple[dict[str, Any], str, str]] = [
    ({"start": iso(T0 + H), "end": iso(T0)}, "body.end", "must be after start"),
    ({"end": iso(T0)}, "body.end", "must be after start"),
    ({"end": iso(T0 + timedelta(days=31, seconds=1))}, "body.end", "at most 31 days"),
    ({"start": "2026-03-01T00:00:00"}, "body.start", "needs a UTC offset"),
    ({"kind": "holiday"}, "body.kind", "Input should be"),
    ({"reason": "cold\x00start"}, "body.reason", "control characters"),
    ({"reason": ""}, "body.reason", "at least 1 character"),
    ({"colour": "red"}, "body.colour", "Extra inputs are not permitted"),
    ({"metric": "so3"}, "body.metric", "not a catalogue metric"),
    ({"metric": "active_power"}, "body.metric", "not registered to report"),
    ({"device": "a 1"}, "body.device", "should match pattern"),
]


@pytest.mark.parametrize(("change", "field", "reason"), BAD)
async def test_bad_input_is_a_precise_422(
    world: World, change: dict[str, Any], field: str, reason: str
) -> None:
    body = {"device": "a1", "start": iso(T0), "end": iso(T0 + H),
            "kind": "startup", "reason": "cold start", **change}  # fmt: skip
    r = await world.call("POST", "/v1/marks", "e1", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == [field], errors
    assert reason in errors[0]["reason"]
    assert await world.ok(
        "GET", "/v1/marks", "e1", params={"origin": "enterprise"}
    ) == {
        "items": [],
        "next_cursor": None,
        "automatic": None,
    }


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": iso(T0 + H), "to": iso(T0)}, "query.to"),
        ({"from": "2026-03-01T00:00:00"}, "query.from"),
        ({"from": iso(T0), "to": iso(T0 + timedelta(days=40))}, "query.to"),
        ({"metric": "so3"}, "query.metric"),
        ({"cursor": "bm9wZQ"}, "query.cursor"),
        ({"colour": "red"}, "query.colour"),
    ],
)
async def test_bad_list_queries_are_a_precise_422(
    world: World, params: dict[str, str], field: str
) -> None:
    r = await world.call("GET", "/v1/marks", "e1", params=params)
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == [field]


async def test_invalid_periods_are_in_force_invalid_and_clipped(world: World) -> None:
    async def mark(who: str, **fields: Any) -> int:
        made: int = (await world.mark(who, **fields))["id"]
        return made

    kept = await mark("e1", start=iso(T0), end=iso(T0 + 2 * H))
    so2 = await mark("e1", metric="so2", kind="calibration",
                     start=iso(T0 + 90 * M), end=iso(T0 + 4 * H))  # fmt: skip
    rejected = await mark("e1", start=iso(T0 + H), end=iso(T0 + 2 * H))
    await world.ok("POST", f"/v1/marks/{rejected}/review", "reg",
                   json={"verdict": "rejected", "reason": "not credible"})  # fmt: skip
    accepted = await mark("e1", device="a2", kind="fault",
                          start=iso(T0 + H), end=iso(T0 + 5 * H))  # fmt: skip
    await world.ok("POST", f"/v1/marks/{accepted}/review", "reg",
                   json={"verdict": "accepted", "reason": "ok"})  # fmt: skip
    old = await mark("e1", device="a2", start=iso(T0), end=iso(T0 + 3 * H))
    new = (await world.ok("POST", f"/v1/marks/{old}/supersede", "e1", json={
        "device": "a2", "start": iso(T0 + 2 * H), "end": iso(T0 + 150 * M),
        "kind": "shutdown", "reason": "only half an hour",
    }))["id"]  # fmt: skip
    gone = await mark("e1", start=iso(T0), end=iso(T0 + 3 * H))
    await world.ok("POST", f"/v1/marks/{gone}/supersede", "e1",
                   json={"withdraw": True, "reason": "wrong day"})  # fmt: skip
    await mark("e1", kind="other", invalid=False, start=iso(T0), end=iso(T0 + 3 * H))
    await mark("e1", start=iso(T0 + 3 * H), end=iso(T0 + 4 * H))  # after the range
    theirs = await mark("e2", device="b1", start=iso(T0), end=iso(T0 + 3 * H))

    start, end = T0 + H, T0 + 3 * H
    marks = world.api.storage.marks
    got = await marks.invalid_periods(Scope(Role.OPERATOR, "p1"), start=start, end=end)
    assert got == [
        InvalidPeriod("a1", None, T0 + H, T0 + 2 * H, "startup", "enterprise", kept),
        InvalidPeriod("a1", "so2", T0 + 90 * M, T0 + 3 * H, "calibration",
                      "enterprise", so2),
        InvalidPeriod("a2", None, T0 + H, T0 + 3 * H, "fault",
                      "enterprise", accepted),
        InvalidPeriod("a2", None, T0 + 2 * H, T0 + 150 * M, "shutdown", "enterprise",
                      new),
        InvalidPeriod("b1", None, T0 + H, T0 + 3 * H, "startup", "enterprise", theirs),
    ]  # fmt: skip
    e1 = await marks.invalid_periods(Scope(Role.ENTERPRISE, "p1", "e1"), start=start,
                                     end=end)  # fmt: skip
    assert [p.mark_id for p in e1] == [kept, so2, accepted, new]
    narrowed = await marks.invalid_periods(
        Scope(Role.REGULATOR), enterprise="e1", devices=["a2"], start=start, end=end
    )
    assert [p.mark_id for p in narrowed] == [accepted, new]
    assert (
        await marks.invalid_periods(
            Scope(Role.REGULATOR), devices=[], start=start, end=end
        )
        == []
    )
    assert (
        await marks.invalid_periods(Scope(Role.OPERATOR, "p2"), start=start, end=end)
        == []
    )


@pytest.mark.parametrize(
    ("body", "fields", "reason"),
    [
        ({"withdraw": True}, ["body.reason"], "Field required"),
        ({"withdraw": True, "reason": "x", "kind": "fault", "end": iso(T0)},
         ["body.end", "body.kind"], "not allowed with withdraw: true"),
        ({"reason": "x", "device": "a1"}, ["body.start", "body.end", "body.kind"],
         "required for a correction"),
        ({"reason": "x", "device": "a1", "start": iso(T0 + H), "end": iso(T0),
          "kind": "fault"}, ["body.end"], "must be after start"),
        ({"withdraw": "yes please", "reason": "x"}, ["body.withdraw"], "boolean"),
    ],
)  # fmt: skip
async def test_a_bad_supersede_body_is_a_precise_422(
    world: World, body: dict[str, Any], fields: list[str], reason: str
) -> None:
    m = await world.mark("e1")
    r = await world.call("POST", f"/v1/marks/{m['id']}/supersede", "e1", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["errors"]
    assert [e["field"] for e in errors] == fields
    assert all(reason in e["reason"] for e in errors), errors
    again = await world.ok("GET", f"/v1/marks/{m['id']}", "e1")
    assert (again["state"], len(again["history"])) == ("in_force", 1)
