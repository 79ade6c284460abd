"""``provision`` against a local server that answers as Grafana's HTTP API and
records the calls (tests/support/grafana_server.py), with the roles created in
the real PostgreSQL: a first run builds everything, a second changes nothing, a
new enterprise adds exactly its organisation, role, data source and dashboards,
and folder permissions are always the full intended list."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from psycopg import sql

from api.grafana import cli as grafana_cli
from api.grafana.provision import (
    FOLDER_PERMISSIONS,
    FOLDER_UID,
    Database,
    connector,
    provision,
)
from api.grafana.query import DATASOURCE_UID
from smartpark.tenancy import Role, Scope
from storage.grafana_roles import role_name
from tests.support.grafana_server import FakeGrafana
from tests.support.grafana_world import SCOPES, World, grafana_world
from tests.support.settings import WEBHOOK_KEY

pytestmark = pytest.mark.integration

DB = Database("db.park.example:5432", "smartpark")
ORGS = {
    "smartpark regulators": "regulators",
    "smartpark park p1 operators": "op-p1",
    "smartpark park p2 operators": "op-p2",
    "smartpark enterprise e1": "e1",
    "smartpark enterprise e2": "e2",
    "smartpark enterprise e3": "e3",
}
DASHBOARDS = {
    "smartpark regulators": {"sp-park-p1", "sp-park-p2", "sp-ent-e1", "sp-dev-e1",
                             "sp-ent-e2", "sp-dev-e2", "sp-ent-e3", "sp-dev-e3"},
    "smartpark park p1 operators": {"sp-park-p1", "sp-ent-e1", "sp-dev-e1",
                                    "sp-ent-e2", "sp-dev-e2"},
    "smartpark park p2 operators": {"sp-park-p2", "sp-ent-e3", "sp-dev-e3"},
    "smartpark enterprise e1": {"sp-ent-e1", "sp-dev-e1"},
    "smartpark enterprise e2": {"sp-ent-e2", "sp-dev-e2"},
    "smartpark enterprise e3": {"sp-ent-e3", "sp-dev-e3"},
}  # fmt: skip


@pytest.fixture
async def world(pg_dsn: str, db_schema: str) -> AsyncIterator[World]:
    async with grafana_world(pg_dsn, db_schema) as w:
        yield w


@pytest.fixture
def grafana() -> Iterator[tuple[FakeGrafana, str]]:
    fake = FakeGrafana()
    url = fake.start()
    yield fake, url
    fake.stop()


async def run(world: World, url: str) -> list[str]:
    return await provision(world.storage, world.roles,
                           connector(url, ("admin", "admin")), DB)  # fmt: skip


def intended() -> list[dict[str, object]]:
    return [dict(p) for p in FOLDER_PERMISSIONS]


async def test_first_run_builds_every_organisation_and_second_changes_nothing(
    world: World, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    first = await run(world, url)
    assert sorted(c for c in first if c.startswith("organisation created")) == sorted(
        f"organisation created: {o}" for o in ORGS
    )
    for name, key in ORGS.items():
        org = fake.org_named(name)
        ds = org.datasources[DATASOURCE_UID]
        role = world.by_scope[key]
        assert ds["user"] == role.role
        assert ds["url"] == DB.host
        assert ds["jsonData"]["database"] == "smartpark"
        assert org.secure[DATASOURCE_UID] == {"password": role.password}
        assert set(org.dashboards) == DASHBOARDS[name]
        assert all(d["folderUid"] == FOLDER_UID for d in org.dashboards.values())
        # Grafana's default Editor-edit grant is gone: exactly the intended list
        assert org.permissions[FOLDER_UID] == intended()
    sent = [c for c in fake.calls if c.path.endswith("/permissions")
            and c.method == "POST"]  # fmt: skip
    assert len(sent) == len(ORGS)
    assert all(c.body == {"items": intended()} for c in sent)
    assert len([c for c in first if c.startswith("dashboard created")]) == sum(
        len(v) for v in DASHBOARDS.values()
    )

    writes = len(fake.changes())
    assert await run(world, url) == []
    assert len(fake.changes()) == writes


async def test_a_new_enterprise_adds_exactly_its_org_role_datasource_dashboards(
    world: World, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    await run(world, url)
    async with world.storage.connection() as conn:
        s = world.storage.schema
        await conn.execute(sql.SQL(
            "INSERT INTO {} (id, park, name) VALUES ('e4', 'p1', 'New')"
        ).format(sql.Identifier(s, "enterprises")))  # fmt: skip
    before = len(fake.changes())
    got = await run(world, url)
    role = role_name(world.storage.schema, Scope(Role.ENTERPRISE, "p1", "e4"))
    org = "smartpark enterprise e4"
    assert sorted(got) == sorted([
        f"database role created: {role}",
        f"organisation created: {org}",
        f"data source created: {org}: {role}",
        f"folder created: {org}: smartpark",
        f"folder permissions set: {org}: smartpark"
        " (was [('role', 'Editor', 2), ('role', 'Viewer', 1)])",
        f"dashboard created: {org}: sp-ent-e4",
        f"dashboard created: {org}: sp-dev-e4",
        "dashboard created: smartpark park p1 operators: sp-ent-e4",
        "dashboard created: smartpark park p1 operators: sp-dev-e4",
        "dashboard created: smartpark regulators: sp-ent-e4",
        "dashboard created: smartpark regulators: sp-dev-e4",
    ])  # fmt: skip
    assert len(fake.changes()) - before == len(got) - 1  # the role is the database's
    new = fake.org_named(org)
    assert new.datasources[DATASOURCE_UID]["user"] == role
    assert set(new.dashboards) == {"sp-ent-e4", "sp-dev-e4"}
    assert await world.roles.get(Scope(Role.ENTERPRISE, "p1", "e4")) is not None
    assert await run(world, url) == []


async def test_a_widened_grant_or_changed_dashboard_is_put_back(
    world: World, grafana: tuple[FakeGrafana, str]
) -> None:
    fake, url = grafana
    await run(world, url)
    org = fake.org_named("smartpark enterprise e1")
    org.permissions[FOLDER_UID].append({"teamId": 7, "permission": 4})
    org.dashboards["sp-ent-e1"]["dashboard"]["title"] = "edited by hand"
    org.datasources[DATASOURCE_UID]["user"] = role_name(
        world.storage.schema, SCOPES["e2"]
    )
    got = await run(world, url)
    assert sorted(got) == sorted([
        "data source updated: smartpark enterprise e1: "
        + world.by_scope["e1"].role,
        "folder permissions set: smartpark enterprise e1: smartpark (was"
        " [('role', 'Editor', 1), ('role', 'Viewer', 1), ('teamId', '7', 4)])",
        "dashboard updated: smartpark enterprise e1: sp-ent-e1",
    ])  # fmt: skip
    assert org.permissions[FOLDER_UID] == intended()
    assert org.datasources[DATASOURCE_UID]["user"] == world.by_scope["e1"].role


def test_the_command_exports_files_and_provisions_once(
    world: World,
    grafana: tuple[FakeGrafana, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake, url = grafana
    monkeypatch.setenv("SMARTPARK_DATABASE__DSN", world.dsn)
    monkeypatch.setenv("SMARTPARK_DATABASE__SCHEMA", world.storage.schema)
    monkeypatch.setenv("SMARTPARK_WEBHOOKS__SECRET_KEY", WEBHOOK_KEY)
    out = tmp_path / "grafana"
    db = ["--db-host", "db:5432", "--sslmode", "disable"]
    assert grafana_cli.main(["export", str(out), *db]) == 0
    assert "wrote " in capsys.readouterr().out
    sources = json.loads((out / "provisioning/datasources/smartpark.yaml").read_text())
    by_user = {d["user"]: d for d in sources["datasources"]}
    assert set(by_user) == {r.role for r in world.by_scope.values()}
    env = dict(
        line.split("=", 1)
        for line in (out / "grafana.env").read_text().splitlines()
    )  # fmt: skip
    assert stat.S_IMODE((out / "grafana.env").stat().st_mode) == 0o600
    for role in world.by_scope.values():
        ds = by_user[role.role]
        var = ds["secureJsonData"]["password"].removeprefix("$")
        assert env[var] == role.password
        assert ds["jsonData"]["database"] == "smartpark"  # the DSN's
    providers = json.loads((out / "provisioning/dashboards/smartpark.yaml").read_text())
    assert {p["orgId"] for p in providers["providers"]} == {
        d["orgId"] for d in sources["datasources"]
    }
    e1 = out / "dashboards" / "smartpark-enterprise-e1"
    assert sorted(p.name for p in e1.iterdir()) == ["sp-dev-e1.json", "sp-ent-e1.json"]

    assert grafana_cli.main(["provision", "--url", url, "--user", "admin", *db]) == 2
    assert "GRAFANA_PASSWORD" in capsys.readouterr().err
    monkeypatch.setenv("GRAFANA_PASSWORD", "admin")
    assert grafana_cli.main(["provision", "--url", url, "--user", "admin", *db]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([x for x in lines if x.startswith("organisation created")]) == len(ORGS)
    assert grafana_cli.main(["provision", "--url", url, "--user", "admin", *db]) == 0
    assert capsys.readouterr().out == ""
    assert (
        fake.org_named("smartpark enterprise e1").datasources[DATASOURCE_UID][
            "jsonData"
        ]["sslmode"]
        == "disable"
    )
