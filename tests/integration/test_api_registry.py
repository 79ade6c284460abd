"""The registry over HTTP against the real PostgreSQL: every route for every role,
tenancy (another tenant's id by path, filter, body and cursor is the same 404 or
the same empty page as a missing one), bad input as 422 naming the field,
retirement, the audit log, and the edge agent YAML round trip."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from api import edgeconfig
from edge_agent.config.loader import parse_config
from smartpark.tenancy import EVERYTHING, Role
from storage.registry import DeviceRow, EnterpriseRow
from tests.support.api import Api, running_api

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
H = dict[str, str]


@dataclass
class World:
    api: Api
    keys: dict[str, H]

    @property
    def client(self) -> httpx.AsyncClient:
        return self.api.client

    async def ok(self, method: str, url: str, who: str = "op_all", **kw: Any) -> Any:
        r = await self.client.request(method, url, headers=self.keys[who], **kw)
        assert r.status_code in {200, 201}, (method, url, r.status_code, r.text)
        return r.json()


ROLES = ("op_p1", "op_p2", "op_all", "ent_e1", "ent_f1", "reg")


@pytest.fixture
async def world(pg_dsn: str, db_schema: str) -> AsyncIterator[World]:
    """Parks p1 (Asia/Shanghai) and p2; enterprises e1, e2 of p1 and f1 of p2;
    a stack and an outfall of e1, one of f1; devices of e1 (Modbus TCP, RTU,
    HJ 212), e2 and f1; keys of every role."""
    async with running_api(pg_dsn, db_schema) as api:
        keys = {
            "op_p1": await api.key(Role.OPERATOR, "p1"),
            "op_p2": await api.key(Role.OPERATOR, "p2"),
            "op_all": await api.key(Role.OPERATOR),
            "ent_e1": await api.key(Role.ENTERPRISE, "p1", "e1"),
            "ent_f1": await api.key(Role.ENTERPRISE, "p2", "f1"),
            "reg": await api.key(Role.REGULATOR),
        }
        w = World(api, keys)
        body: dict[str, Any]
        for body in (
            {"id": "p1", "name": "Park one", "timezone": "Asia/Shanghai"},
            {"id": "p2", "name": "Park two", "timezone": "Europe/Berlin"},
        ):
            await w.ok("POST", "/v1/parks", json=body)
        for body in (
            {"id": "e1", "park": "p1", "name": "Power", "industry": "power",
             "permits": ["P-1"], "energy_quota_tce": {"day": 10.5},
             "water_quota_m3": {"month": 300}, "quotas_from": "2026-01-01"},
            {"id": "e2", "park": "p1", "name": "Paper"},
        ):  # fmt: skip
            await w.ok("POST", "/v1/enterprises", "op_p1", json=body)
        await w.ok("POST", "/v1/enterprises", "op_p2",
                   json={"id": "f1", "park": "p2", "name": "Steel"})  # fmt: skip
        rows: tuple[tuple[str, dict[str, Any]], ...] = (
            ("op_p1", {"id": "stack-1", "enterprise": "e1", "kind": "stack",
                       "name": "Stack", "reference_o2": 6, "limits": {"so2": 35}}),
            ("op_p1", {"id": "outfall-1", "enterprise": "e1",
                       "kind": "wastewater_outfall", "name": "Outfall",
                       "limits": {"cod": 50}}),
            ("op_p2", {"id": "f-stack", "enterprise": "f1", "kind": "stack",
                       "name": "F stack"}),
        )  # fmt: skip
        for who, body in rows:
            await w.ok("POST", "/v1/outlets", who, json=body)
        rows = (
            ("op_p1", {"id": "e1-meter", "enterprise": "e1", "protocol": "modbus_tcp",
                       "interval_s": 10, "metrics": ["active_energy", "active_power"]}),
            ("op_p1", {"id": "e1-rtu", "enterprise": "e1", "protocol": "modbus_rtu",
                       "interval_s": 10, "metrics": ["water_volume"]}),
            ("op_p1", {"id": "e1-cems", "enterprise": "e1", "outlet": "stack-1",
                       "protocol": "hj212", "interval_s": 60,
                       "metrics": ["so2", "so2_corrected", "o2"],
                       "mn": "88888880000001"}),
            ("op_all", {"id": "e2-meter", "enterprise": "e2", "protocol": "modbus_tcp",
                        "interval_s": 10, "metrics": ["active_power"]}),
            ("op_p2", {"id": "f1-meter", "enterprise": "f1", "protocol": "modbus_tcp",
                       "interval_s": 30, "metrics": ["steam_flow"]}),
        )  # fmt: skip
        for who, body in rows:
            await w.ok("POST", "/v1/devices", who, json=body)
        yield w


def ids(page: Any) -> list[str]:
    return [item["id"] for item in page["items"]]


# What each role lists (active rows, no filter).
VISIBLE = {
    "op_p1": {"parks": ["p1"], "enterprises": ["e1", "e2"],
              "outlets": ["outfall-1", "stack-1"],
              "devices": ["e1-cems", "e1-meter", "e1-rtu", "e2-meter"]},
    "op_p2": {"parks": ["p2"], "enterprises": ["f1"], "outlets": ["f-stack"],
              "devices": ["f1-meter"]},
    "ent_e1": {"parks": ["p1"], "enterprises": ["e1"],
               "outlets": ["outfall-1", "stack-1"],
               "devices": ["e1-cems", "e1-meter", "e1-rtu"]},
    "ent_f1": {"parks": ["p2"], "enterprises": ["f1"], "outlets": ["f-stack"],
               "devices": ["f1-meter"]},
}  # fmt: skip
ALL = {
    "parks": ["p1", "p2"], "enterprises": ["e1", "e2", "f1"],
    "outlets": ["f-stack", "outfall-1", "stack-1"],
    "devices": ["e1-cems", "e1-meter", "e1-rtu", "e2-meter", "f1-meter"],
}  # fmt: skip
VISIBLE["op_all"] = VISIBLE["reg"] = ALL


async def test_every_role_lists_and_reads_exactly_its_scope(world: World) -> None:
    for role in ROLES:
        for kind, expected in VISIBLE[role].items():
            assert ids(await world.ok("GET", f"/v1/{kind}", role)) == expected, (
                role, kind,
            )  # fmt: skip
            for id_ in ALL[kind]:
                r = await world.client.get(
                    f"/v1/{kind}/{id_}", headers=world.keys[role]
                )
                if id_ in expected:
                    assert r.status_code == 200
                    assert r.json()["id"] == id_
                else:  # not yours: word for word the answer for a missing id
                    missing = await world.client.get(
                        f"/v1/{kind}/no-such-id", headers=world.keys[role]
                    )
                    assert (r.status_code, r.json()) == (404, missing.json())
                    assert r.json()["detail"] == f"{kind[:-1]} not found"


async def test_rows_carry_what_was_registered(world: World) -> None:
    e1 = await world.ok("GET", "/v1/enterprises/e1", "ent_e1")
    assert (e1["park"], e1["permits"], e1["energy_quota_tce"], e1["water_quota_m3"],
            e1["quotas_from"]) == ("p1", ["P-1"], {"day": 10.5}, {"month": 300.0},
                                   "2026-01-01")  # fmt: skip
    stack = await world.ok("GET", "/v1/outlets/stack-1", "reg")
    assert (stack["park"], stack["reference_o2"], stack["limits"]) == (
        "p1", 6.0, {"so2": 35.0},
    )  # fmt: skip
    cems = await world.ok("GET", "/v1/devices/e1-cems", "ent_e1")
    assert (cems["park"], cems["outlet"], cems["mn"], cems["metrics"]) == (
        "p1", "stack-1", "88888880000001", ["so2", "so2_corrected", "o2"],
    )  # fmt: skip
    # The telemetry queries read the park's time zone from the registry.
    tz = await world.api.storage.queries.park_timezone(EVERYTHING, "p1")
    assert tz == "Asia/Shanghai"


async def test_filters_and_cursor_pages_stay_within_the_scope(world: World) -> None:
    c = world
    assert ids(await c.ok("GET", "/v1/devices?enterprise=e1&protocol=hj212")) == [
        "e1-cems"
    ]
    assert ids(await c.ok("GET", "/v1/devices?outlet=stack-1", "ent_e1")) == ["e1-cems"]
    assert ids(await c.ok("GET", "/v1/devices?park=p2")) == ["f1-meter"]
    assert ids(await c.ok("GET", "/v1/outlets?enterprise=f1")) == ["f-stack"]
    assert ids(await c.ok("GET", "/v1/enterprises?park=p1", "reg")) == ["e1", "e2"]
    # Another tenant's ids as filters: the same empty page as unknown ids.
    for who, url in (
        ("ent_e1", "/v1/devices?enterprise=e2"), ("ent_e1", "/v1/devices?park=p2"),
        ("ent_e1", "/v1/outlets?enterprise=f1"), ("op_p1", "/v1/devices?park=p2"),
        ("op_p1", "/v1/enterprises?park=p2"), ("op_p2", "/v1/devices?outlet=stack-1"),
        ("op_p1", "/v1/devices?enterprise=nobody"),
    ):  # fmt: skip
        assert await c.ok("GET", url, who) == {"items": [], "next_cursor": None}
    # Pages of one, keyed on id.
    seen: list[str] = []
    url = "/v1/devices?limit=1"
    while True:
        page = await c.ok("GET", url, "op_p1")
        seen += ids(page)
        if page["next_cursor"] is None:
            break
        url = f"/v1/devices?limit=1&cursor={page['next_cursor']}"
    assert seen == VISIBLE["op_p1"]["devices"]
    # A cursor crafted from the whole platform's listing reveals nothing more.
    page = await c.ok("GET", "/v1/devices?limit=3")  # op_all: e1-cems..e1-rtu
    cursor = page["next_cursor"]
    assert ids(await c.ok("GET", f"/v1/devices?cursor={cursor}", "ent_e1")) == []
    assert ids(await c.ok("GET", f"/v1/devices?cursor={cursor}", "op_p2")) == [
        "f1-meter"
    ]


WRITES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/v1/parks", {"id": "p9", "name": "P", "timezone": "UTC"}),
    ("PATCH", "/v1/parks/p1", {"name": "Renamed"}),
    ("POST", "/v1/parks/p1/retire", None),
    ("POST", "/v1/enterprises", {"id": "e9", "park": "p1", "name": "N"}),
    ("PATCH", "/v1/enterprises/e1", {"industry": "chemicals"}),
    ("POST", "/v1/enterprises/e2/retire", None),
    ("POST", "/v1/outlets", {"id": "o9", "enterprise": "e1", "kind": "stack",
                             "name": "N"}),
    ("PATCH", "/v1/outlets/stack-1", {"limits": {"so2": 30}}),
    ("POST", "/v1/outlets/outfall-1/retire", None),
    ("POST", "/v1/devices", {"id": "d9", "enterprise": "e1", "protocol": "modbus_tcp",
                             "interval_s": 5, "metrics": ["active_power"]}),
    ("PATCH", "/v1/devices/e1-meter", {"interval_s": 20}),
    ("POST", "/v1/devices/e1-rtu/retire", None),
]  # fmt: skip


async def _audited(world: World) -> list[tuple[str, str]]:
    return [(a.action, a.target) for a in await world.api.storage.keys.audit_log()]


@pytest.mark.parametrize(("method", "url", "body"), WRITES)
async def test_registry_writes_are_operators_of_the_park(
    world: World, method: str, url: str, body: dict[str, Any] | None
) -> None:
    before = await _audited(world)
    for who, status in (("reg", 403), ("ent_e1", 403), ("ent_f1", 403)):
        r = await world.client.request(method, url, headers=world.keys[who], json=body)
        assert r.status_code == status, (who, r.text)
        assert r.headers["content-type"] == "application/problem+json"
    # The operator of another park: the 404 of a missing row (or its parent).
    r = await world.client.request(method, url, headers=world.keys["op_p2"], json=body)
    if url == "/v1/parks":
        assert r.status_code == 403  # only all-parks operators register parks
    else:
        assert r.status_code == 404, r.text
        what = r.json()["detail"]
        missing_body: dict[str, Any] | None
        if url.count("/") == 2:  # a create: its parent park or enterprise is missing
            missing_url, missing_body = (
                url,
                {
                    k: "zz" if k in {"park", "enterprise"} else v
                    for k, v in (body or {}).items()
                },
            )
        else:  # the row itself is missing
            missing_url, missing_body = re.sub(r"^(/v1/\w+/)[^/]+", r"\1zz", url), body
        m = await world.client.request(
            method, missing_url, headers=world.keys["op_p2"], json=missing_body
        )
        assert (m.status_code, m.json()["detail"]) == (404, what)
    assert await _audited(world) == before  # nothing refused was recorded
    # The park's operator (and an all-parks operator) may; the write is audited.
    who = "op_all" if url == "/v1/parks" else "op_p1"
    r = await world.client.request(method, url, headers=world.keys[who], json=body)
    if url.endswith(("/p1/retire", "/e2/retire")):
        assert r.status_code == 409  # active children: retire them first
        assert r.json()["errors"][0]["field"] == "path.id"
        return
    assert r.status_code in {200, 201}, r.text
    [(action, target), *_] = await _audited(world)
    assert action.startswith("registry.")
    assert target.endswith(":" + (r.json()["id"]))


async def test_retired_rows_stay_readable_and_are_listed_apart(world: World) -> None:
    c = world
    r = await c.client.post("/v1/enterprises/e2/retire", headers=c.keys["op_p1"])
    assert r.status_code == 409
    assert "active device" in r.json()["detail"]
    first = await c.ok("POST", "/v1/devices/e2-meter/retire", "op_p1")
    assert first["retired_at"] is not None
    again = await c.ok("POST", "/v1/devices/e2-meter/retire", "op_p1")
    assert again["retired_at"] == first["retired_at"]  # idempotent
    assert (await c.ok("GET", "/v1/devices/e2-meter", "reg"))["retired_at"]
    assert "e2-meter" not in ids(await c.ok("GET", "/v1/devices", "op_p1"))
    assert ids(await c.ok("GET", "/v1/devices?retired=true", "op_p1")) == ["e2-meter"]
    assert ids(await c.ok("GET", "/v1/devices?retired=true", "op_p2")) == []
    await c.ok("POST", "/v1/enterprises/e2/retire", "op_p1")
    assert ids(await c.ok("GET", "/v1/enterprises?retired=true", "reg")) == ["e2"]
    # A retired row is not updated, and takes no new children.
    r = await c.client.patch(
        "/v1/devices/e2-meter", headers=c.keys["op_p1"], json={"interval_s": 5}
    )
    assert (r.status_code, r.json()["errors"][0]["field"]) == (409, "path.id")
    r = await c.client.post("/v1/devices", headers=c.keys["op_p1"], json={
        "id": "e2-new", "enterprise": "e2", "protocol": "modbus_tcp",
        "interval_s": 5, "metrics": ["active_power"]})  # fmt: skip
    assert (r.status_code, r.json()["detail"]) == (404, "enterprise not found")
    # A device id is unique platform-wide, retired or not.
    r = await c.client.post("/v1/devices", headers=c.keys["op_p2"], json={
        "id": "e2-meter", "enterprise": "f1", "protocol": "modbus_tcp",
        "interval_s": 5, "metrics": ["active_power"]})  # fmt: skip
    assert (r.status_code, r.json()["errors"][0]["field"]) == (409, "body.id")


async def test_another_tenants_ids_in_a_body_are_not_found(world: World) -> None:
    c = world
    # An outlet of another enterprise (or park) for a device: the outlet's 404.
    for who, body in (
        ("op_p1", {"id": "x1", "enterprise": "e2", "outlet": "stack-1",
                   "protocol": "modbus_tcp", "interval_s": 5,
                   "metrics": ["active_power"]}),
        ("op_p2", {"id": "x2", "enterprise": "f1", "outlet": "stack-1",
                   "protocol": "modbus_tcp", "interval_s": 5,
                   "metrics": ["active_power"]}),
        ("op_p2", {"id": "x3", "enterprise": "f1", "outlet": "nope",
                   "protocol": "modbus_tcp", "interval_s": 5,
                   "metrics": ["active_power"]}),
    ):  # fmt: skip
        r = await c.client.post("/v1/devices", headers=c.keys[who], json=body)
        assert (r.status_code, r.json()["detail"]) == (404, "outlet not found")
    r = await c.client.patch(
        "/v1/devices/f1-meter", headers=c.keys["op_p2"], json={"outlet": "stack-1"}
    )
    assert (r.status_code, r.json()["detail"]) == (404, "outlet not found")
    # An enterprise of another park for a new outlet: the enterprise's 404.
    r = await c.client.post("/v1/outlets", headers=c.keys["op_p2"], json={
        "id": "o1", "enterprise": "e1", "kind": "stack", "name": "N"})  # fmt: skip
    assert (r.status_code, r.json()["detail"]) == (404, "enterprise not found")
    await c.ok("PATCH", "/v1/devices/e1-meter", "op_p1", json={"outlet": "outfall-1"})
    cleared = await c.ok("PATCH", "/v1/devices/e1-meter", "op_p1",
                         json={"outlet": None})  # fmt: skip
    assert cleared["outlet"] is None


BAD: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/parks", {"id": "p3", "name": "P", "timezone": "Mars/Olympus"},
     "body.timezone"),
    ("POST", "/v1/parks", {"id": "p3", "name": "P", "timezone": "../../etc/passwd"},
     "body.timezone"),
    ("POST", "/v1/parks", {"id": "p 3", "name": "P", "timezone": "UTC"}, "body.id"),
    ("POST", "/v1/parks", {"id": "p3", "name": "P\x00", "timezone": "UTC"},
     "body.name"),
    ("POST", "/v1/parks", {"id": "p3", "name": "P", "timezone": "UTC", "colour": 1},
     "body.colour"),
    ("POST", "/v1/parks", {"id": "p3", "timezone": "UTC"}, "body.name"),
    ("PATCH", "/v1/parks/p1", {"timezone": "Asia/Shangai"}, "body.timezone"),
    ("PATCH", "/v1/parks/p1", {"timezone": "Asia"}, "body.timezone"),
    ("PATCH", "/v1/parks/p1", {"timezone": "localtime"}, "body.timezone"),
    ("PATCH", "/v1/parks/p1", {"timezone": None}, "body.timezone"),
    ("PATCH", "/v1/parks/p1", {"id": "p5"}, "body.id"),
    ("PATCH", "/v1/parks/p*", {"name": "x"}, "path.id"),
    ("POST", "/v1/enterprises", {"id": "e3", "park": "p1", "name": "N",
                                 "energy_quota_tce": {"day": -1}},
     "body.energy_quota_tce.day"),
    ("POST", "/v1/enterprises", {"id": "e3", "park": "p1", "name": "N",
                                 "water_quota_m3": {"week": 1}},
     "body.water_quota_m3.week"),
    ("POST", "/v1/enterprises", {"id": "e3", "park": "p1", "name": "N",
                                 "quotas_from": "2026-13-01"}, "body.quotas_from"),
    ("PATCH", "/v1/enterprises/e1", {"park": "p2"}, "body.park"),
    ("PATCH", "/v1/enterprises/e1", {"name": None}, "body.name"),
    ("POST", "/v1/outlets", {"id": "o3", "enterprise": "e1", "kind": "chimney",
                             "name": "N"}, "body.kind"),
    ("POST", "/v1/outlets", {"id": "o3", "enterprise": "e1",
                             "kind": "wastewater_outfall", "name": "N",
                             "reference_o2": 6}, "body.reference_o2"),
    ("POST", "/v1/outlets", {"id": "o3", "enterprise": "e1", "kind": "stack",
                             "name": "N", "reference_o2": 30}, "body.reference_o2"),
    ("POST", "/v1/outlets", {"id": "o3", "enterprise": "e1", "kind": "stack",
                             "name": "N", "limits": {"sulphur": 3}}, "body.limits"),
    ("POST", "/v1/outlets", {"id": "o3", "enterprise": "e1", "kind": "stack",
                             "name": "N", "limits": {"so2": 0}}, "body.limits.so2"),
    ("PATCH", "/v1/outlets/outfall-1", {"reference_o2": 3}, "body.reference_o2"),
    ("PATCH", "/v1/outlets/stack-1", {"kind": "wastewater_outfall"}, "body.kind"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "opcua",
                             "interval_s": 5, "metrics": ["o2"]}, "body.protocol"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "hj212",
                             "interval_s": 0, "metrics": ["o2"]}, "body.interval_s"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "hj212",
                             "interval_s": 5, "metrics": []}, "body.metrics"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "hj212",
                             "interval_s": 5, "metrics": ["o2", "o2"]},
     "body.metrics"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "hj212",
                             "interval_s": 5, "metrics": ["oxygen"]},
     "body.metrics.0"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "modbus_tcp",
                             "interval_s": 5, "metrics": ["o2"], "mn": "123"},
     "body.mn"),
    ("POST", "/v1/devices", {"id": "d3", "enterprise": "e1", "protocol": "hj212",
                             "interval_s": 5, "metrics": ["o2"], "mn": "1;2"},
     "body.mn"),
    ("PATCH", "/v1/devices/e1-meter", {"mn": "123"}, "body.mn"),
    ("PATCH", "/v1/devices/e1-meter", {"metrics": None}, "body.metrics"),
    ("POST", "/v1/devices", "not json", "body"),
    ("POST", "/v1/devices", [1, 2], "body"),
    ("GET", "/v1/devices?limit=0", None, "query.limit"),
    ("GET", "/v1/devices?limit=100000", None, "query.limit"),
    ("GET", "/v1/devices?cursor=!!!", None, "query.cursor"),
    ("GET", "/v1/devices?cursor=WyJwYXJrcyIsInAxIl0", None, "query.cursor"),
    ("GET", "/v1/devices?park=p%00", None, "query.park"),
    ("GET", "/v1/devices?outlet=a%20b", None, "query.outlet"),
    ("GET", "/v1/devices?protocol=opcua", None, "query.protocol"),
    ("GET", "/v1/devices?retired=perhaps", None, "query.retired"),
    ("GET", "/v1/devices/" + "d" * 65, None, "path.id"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "url", "body", "field"), BAD)
async def test_bad_input_is_a_422_naming_the_field(
    world: World, method: str, url: str, body: Any, field: str
) -> None:
    kw: dict[str, Any] = (
        {"content": body, "headers": {**world.keys["op_all"],
                                      "Content-Type": "application/json"}}
        if isinstance(body, str)
        else {"json": body, "headers": world.keys["op_all"]}
    )  # fmt: skip
    r = await world.client.request(method, url, **kw)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    fields = [e["field"] for e in r.json()["errors"]]
    assert any(f == field or f.startswith(field + ".") for f in fields), fields


async def test_only_an_all_parks_operator_registers_parks(world: World) -> None:
    body = {"id": "p3", "name": "P", "timezone": "UTC"}
    r = await world.client.post("/v1/parks", headers=world.keys["op_p1"], json=body)
    assert r.status_code == 403
    await world.ok("POST", "/v1/parks", json=body)
    r = await world.client.post("/v1/parks", headers=world.keys["op_all"], json=body)
    assert (r.status_code, r.json()["errors"][0]["field"]) == (409, "body.id")
    r = await world.client.post("/v1/devices", headers=world.keys["op_p1"], json={
        "id": "e1-cems-2", "enterprise": "e1", "protocol": "hj212", "interval_s": 60,
        "metrics": ["o2"], "mn": "88888880000001"})  # fmt: skip
    assert (r.status_code, r.json()["errors"][0]["field"]) == (409, "body.mn")


# -- edge config --------------------------------------------------------------------


async def test_the_exported_edge_config_loads_as_an_agent_config(
    world: World,
) -> None:
    for who in ("op_p1", "ent_e1", "reg", "op_all"):
        r = await world.client.get(
            "/v1/enterprises/e1/edge-config", headers=world.keys[who]
        )
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/yaml")
    assert "FILL-IN" in r.text
    log = await world.api.storage.keys.audit_log()
    assert [e.action for e in log[:4]] == ["registry.edge_config.export"] * 4
    config = parse_config(yaml.safe_load(r.text))
    assert (config.site.park, config.site.enterprise) == ("p1", "e1")
    assert {d.id: d.protocol for d in config.devices} == {
        "e1-meter": "modbus_tcp", "e1-rtu": "modbus_rtu",
    }  # fmt: skip
    meter = next(d for d in config.devices if d.id == "e1-meter")
    assert [reg.metric for reg in meter.registers] == ["active_energy", "active_power"]
    assert meter.poll_interval_s == 10
    assert config.hj212 is not None
    [logger] = config.hj212.loggers
    assert (logger.mn, logger.device, logger.timezone) == (
        "88888880000001", "e1-cems", "Asia/Shanghai",
    )  # fmt: skip
    assert logger.pollutants["a21026"].metric == "so2"
    assert logger.pollutants["a21026"].corrected == "so2_corrected"
    assert logger.pollutants["a19001"].metric == "o2"
    # Another tenant's enterprise: the 404 of a missing one.
    for who, url in (("ent_e1", "/v1/enterprises/e2/edge-config"),
                     ("op_p2", "/v1/enterprises/e1/edge-config"),
                     ("op_p2", "/v1/enterprises/zz/edge-config")):  # fmt: skip
        r = await world.client.get(url, headers=world.keys[who])
        assert (r.status_code, r.json()["detail"]) == (404, "enterprise not found")


def test_placeholders_of_an_export_are_not_imported() -> None:
    t = datetime(2026, 12, 1, tzinfo=UTC)
    ent = EnterpriseRow("e1", "p1", "E", None, [], {}, {}, None, t, t, None)
    cems = DeviceRow("c1", "p1", "e1", None, "hj212", 60, ["wastewater_flow", "cod"],
                     None, t, t, None)  # fmt: skip
    text = edgeconfig.export_config(ent, [cems], timezone=None)
    assert "mn: FILL-IN-MN-1" in text
    assert "FILL-IN-code-wastewater_flow" in text
    [(at, values)] = edgeconfig.import_devices(
        edgeconfig.parse_agent_file(text.encode())
    )
    assert (at, values["mn"], values["metrics"]) == (
        "body.hj212.loggers[0]", None, ["wastewater_flow", "cod"],
    )  # fmt: skip


# Aliases of aliases: 10**6 values from a few hundred bytes.
LAUGHS = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 6)
)


def _example_for(park: str, enterprise: str) -> str:
    text = (ROOT / "edge_agent/agent.example.yaml").read_text()
    text = re.sub(r"park: park1\b", f"park: {park}", text)
    return text.replace("enterprise: alu-smelter", f"enterprise: {enterprise}")


async def test_importing_an_agent_yaml_registers_its_devices(world: World) -> None:
    c = world
    # (e1-cems has the example's first MN)
    text = _example_for("p2", "f1").replace("88888880000001", "99999990000001")
    yaml_h = {**c.keys["op_p2"], "Content-Type": "application/yaml"}
    r = await c.client.post("/v1/enterprises/f1/edge-config", headers=yaml_h,
                            content=text)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json() == {
        "created": ["pot-line-1-meter", "fresh-water-in", "stack-1-cems", "outfall-1"],
        "updated": [], "unchanged": [],
    }  # fmt: skip
    devices = {d["id"]: d for d in (await c.ok("GET", "/v1/devices?enterprise=f1",
                                               "op_p2"))["items"]}  # fmt: skip
    assert devices["pot-line-1-meter"]["metrics"] == ["active_energy", "active_power"]
    assert devices["pot-line-1-meter"]["interval_s"] == 10
    assert devices["stack-1-cems"]["protocol"] == "hj212"
    assert devices["stack-1-cems"]["mn"] == "99999990000001"
    assert "so2_corrected" in devices["stack-1-cems"]["metrics"]
    # Idempotent: the same file again changes nothing.
    r = await c.client.post("/v1/enterprises/f1/edge-config", headers=yaml_h,
                            content=text)  # fmt: skip
    assert r.json()["created"] == []
    assert r.json()["updated"] == []
    assert len(r.json()["unchanged"]) == 4
    # A changed poll interval updates the device; the audit log has both imports.
    changed = text.replace("poll_interval_s: 60", "poll_interval_s: 30")
    r = await c.client.post("/v1/enterprises/f1/edge-config",
                            headers={**yaml_h, "Content-Type": "text/yaml"},
                            content=changed)  # fmt: skip
    assert r.json()["updated"] == ["fresh-water-in"]
    assert [a for a, _ in await _audited(c)].count("registry.edge_config.import") == 3
    # The exported file of the enterprise round-trips through the import.
    exported = (await c.client.get("/v1/enterprises/f1/edge-config",
                                   headers=c.keys["op_p2"])).text  # fmt: skip
    parse_config(yaml.safe_load(exported))
    r = await c.client.post("/v1/enterprises/f1/edge-config", headers=yaml_h,
                            content=exported)  # fmt: skip
    assert r.status_code == 200, r.text
    assert r.json()["created"] == []


async def test_an_agent_yaml_is_refused_precisely(world: World) -> None:
    c = world
    yaml_h = {**c.keys["op_p1"], "Content-Type": "application/yaml"}
    url = "/v1/enterprises/e1/edge-config"
    for content_type in ("application/json", "text/plain", "multipart/form-data", ""):
        r = await c.client.post(url, content=_example_for("p1", "e1"),
                                headers={**c.keys["op_p1"],
                                         "Content-Type": content_type})  # fmt: skip
        assert r.status_code == 415, content_type
    example = _example_for("p1", "e1")
    for text, field in (
        (_example_for("p1", "e2"), "body.site.enterprise"),
        (_example_for("p2", "e1"), "body.site.park"),
        ("site: [unclosed", "body"),
        ("- just\n- a list", "body"),
        ("", "body"),
        ("site: {park: p1, enterprise: e1}\n", "body.devices"),

        (example.replace("metric: so2,", "metric: sulphur,"),
         "body.hj212.loggers[0].pollutants.a21026.metric"),
        (example.replace("id: fresh-water-in", "id: pot-line-1-meter"),
         "body.devices[1].id"),
        (example.replace("protocol: modbus_tcp", "protocol: bacnet", 1),
         "body.devices[0].protocol"),
    ):  # fmt: skip
        r = await c.client.post(url, headers=yaml_h, content=text)
        assert r.status_code == 422, (field, r.text)
        assert r.json()["errors"][0]["field"] == field, r.json()
    huge = "x" * (1 << 20) + "\n"
    for text, reason in (
        (LAUGHS, "once its aliases are expanded"),
        (huge, "larger than 1048576 bytes"),
    ):
        r = await c.client.post(url, headers=yaml_h, content=text)
        assert r.status_code == 422
        assert [e["field"] for e in r.json()["errors"]] == ["body"]
        assert reason in r.json()["detail"]
    # A device id of another enterprise: refused, and nothing of the file is kept.
    text = example.replace("id: fresh-water-in", "id: f1-meter")
    r = await c.client.post(url, headers=yaml_h, content=text)
    assert (r.status_code, r.json()["errors"][0]["field"]) == (
        409, "body.devices[1].id",
    )  # fmt: skip
    assert "pot-line-1-meter" not in ids(await c.ok("GET", "/v1/devices"))
    # Who may: not a regulator, not an enterprise, not another park's operator.
    for who, status in (("reg", 403), ("ent_e1", 403), ("op_p2", 404)):
        headers = {**c.keys[who], "Content-Type": "application/yaml"}
        r = await c.client.post(url, content=example, headers=headers)
        assert r.status_code == status, who
