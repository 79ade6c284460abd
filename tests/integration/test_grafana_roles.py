"""Grafana's database roles against the real PostgreSQL: each role, logged in
directly with psycopg, reads its scope's rows and nothing else (telemetry,
rollups, alerts, registry), cannot read the platform's tables, cannot write, and
a second ``ensure`` changes nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator

import psycopg
import pytest
from psycopg import sql

from smartpark.tenancy import Role, Scope
from storage.grafana_roles import VIEWS, GrafanaRoles, RoleConflict, role_name
from storage.secretbox import SecretBox, new_key
from tests.support.grafana_world import (
    ENTERPRISES,
    SCOPES,
    World,
    grafana_world,
    scram_matches,
)
from tests.support.settings import WEBHOOK_KEY

pytestmark = pytest.mark.integration


@pytest.fixture
async def world(pg_dsn: str, db_schema: str) -> AsyncIterator[World]:
    async with grafana_world(pg_dsn, db_schema) as w:
        yield w


SCOPED = {
    # view: the columns naming park and enterprise
    "grafana_series": ("park", "enterprise"),
    "grafana_telemetry": ("park", "enterprise"),
    "grafana_telemetry_1m": ("park", "enterprise"),
    "grafana_telemetry_1h": ("park", "enterprise"),
    "grafana_telemetry_1d": ("park", "enterprise"),
    "grafana_alerts": ("park", "enterprise"),
    "grafana_enterprises": ("park", "id"),
    "grafana_outlets": ("park", "enterprise"),
    "grafana_devices": ("park", "enterprise"),
}


def seen(world: World, key: str, view: str) -> set[tuple[str, str]]:
    park, ent = SCOPED[view]
    with world.connect(key) as conn:
        rows = conn.execute(
            sql.SQL("SELECT DISTINCT {}, {} FROM {}").format(
                sql.Identifier(park), sql.Identifier(ent), sql.Identifier(view)
            )
        ).fetchall()
    return {(str(p), str(e)) for p, e in rows}


@pytest.mark.parametrize("view", sorted(SCOPED))
async def test_each_role_reads_exactly_its_scope(world: World, view: str) -> None:
    everyone = {(p, e) for e, p in ENTERPRISES.items()}
    for key in ("e1", "e2", "e3"):
        assert seen(world, key, view) == {(ENTERPRISES[key], key)}, key
    assert seen(world, "op-p1", view) == {("p1", "e1"), ("p1", "e2")}
    assert seen(world, "op-p2", view) == {("p2", "e3")}
    assert seen(world, "regulators", view) == everyone


async def test_parks_are_the_scopes_parks(world: World) -> None:
    for key, parks in (("e1", {"p1"}), ("e3", {"p2"}), ("op-p2", {"p2"}),
                       ("regulators", {"p1", "p2"})):  # fmt: skip
        with world.connect(key) as conn:
            got = conn.execute("SELECT id FROM grafana_parks").fetchall()
        assert {r[0] for r in got} == parks, key


async def test_enterprise_role_filters_cannot_reach_another_enterprise(
    world: World,
) -> None:
    """A query naming e2's device or series id directly still gets nothing."""
    async with world.storage.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT id FROM {} WHERE enterprise = 'e2'").format(
                sql.Identifier(world.storage.schema, "series")
            )
        )
        e2_ids = [r[0] for r in await cur.fetchall()]
    assert e2_ids
    with world.connect("e1") as conn:
        for query, params in (
            ("SELECT count(*) FROM grafana_telemetry WHERE device = 'e2-meter'", ()),
            ("SELECT count(*) FROM grafana_telemetry_1h WHERE series_id = ANY(%s)",
             (e2_ids,)),
            ("SELECT count(*) FROM grafana_alerts WHERE enterprise = 'e2'", ()),
        ):  # fmt: skip
            assert conn.execute(query, params).fetchone() == (0,), query


async def test_roles_cannot_read_any_table_of_the_platform(world: World) -> None:
    """Every table, partition and view of the schema but the grafana_* views
    (api_keys, webhook_secrets, audit_log, grafana_roles, the raw telemetry ...)
    is refused to every role."""
    async with world.storage.connection() as conn:
        cur = await conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = %s"
            " AND c.relkind IN ('r', 'p', 'v', 'm', 'f') ORDER BY 1",
            (world.storage.schema,),
        )
        names = [str(r[0]) for r in await cur.fetchall()]
    refused = [n for n in names if n not in VIEWS]
    assert {"api_keys", "webhook_secrets", "audit_log", "grafana_roles",
            "telemetry", "series", "alerts"} <= set(refused)  # fmt: skip
    for key in ("e1", "op-p1", "regulators"):
        for name in refused:
            with (
                world.connect(key) as conn,
                pytest.raises(psycopg.errors.InsufficientPrivilege),
            ):
                conn.execute(
                    sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                        sql.Identifier(world.storage.schema, name)
                    )
                )


async def test_roles_are_read_only_and_see_the_platform_schema(world: World) -> None:
    with world.connect("e1") as conn:
        assert conn.execute("SHOW search_path").fetchone() == (world.storage.schema,)
        assert conn.execute("SHOW transaction_read_only").fetchone() == ("on",)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("CREATE TEMP TABLE x (a int)")
    # read-only by default; a session that turns it off still has no right to write
    schema = sql.Identifier(world.storage.schema)
    for statement in (
        sql.SQL("INSERT INTO {}.parks (id, name, timezone) VALUES ('x', 'x', 'UTC')"),
        sql.SQL("UPDATE {}.alerts SET status = 'resolved'"),
        sql.SQL("CREATE TABLE {}.x (a int)"),
    ):
        with world.connect("op-p1") as conn:
            conn.execute("SET default_transaction_read_only = off")
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.format(schema))


async def test_only_the_views_are_granted(world: World) -> None:
    with world.connect("e2") as conn:
        rows = conn.execute(
            "SELECT table_name FROM information_schema.role_table_grants"
            " WHERE grantee = current_user AND table_schema = %s"
            " AND privilege_type = 'SELECT'",
            (world.storage.schema,),
        ).fetchall()
        other = conn.execute(
            "SELECT count(*) FROM information_schema.role_table_grants"
            " WHERE grantee = current_user AND privilege_type <> 'SELECT'"
        ).fetchone()
    assert sorted(r[0] for r in rows) == sorted(VIEWS)
    assert other == (0,)


async def test_ensure_twice_changes_nothing_and_the_password_is_the_roles(
    world: World,
) -> None:
    e1 = world.by_scope["e1"]
    again, created = await world.roles.ensure(SCOPES["e1"])
    assert (again, created) == (e1, False)
    assert await world.roles.get(SCOPES["e1"]) == e1
    async with world.storage.connection() as conn:
        cur = await conn.execute(
            "SELECT rolpassword, rolsuper, rolcreaterole, rolcanlogin, rolbypassrls"
            " FROM pg_authid WHERE rolname = %s",
            (e1.role,),
        )
        row = await cur.fetchone()
    assert row is not None
    assert scram_matches(row[0], e1.password)
    assert not scram_matches(row[0], e1.password + "x")
    assert row[1:] == (False, False, True, False)
    assert len({r.password for r in world.by_scope.values()}) == len(SCOPES)


def test_role_names_are_per_schema_and_fit_postgres() -> None:
    a = role_name("t_a", Scope(Role.ENTERPRISE, "p", "e1"))
    assert a == "sp_grafana_t_a_e_e1"
    assert a != role_name("t_b", Scope(Role.ENTERPRISE, "p", "e1"))
    assert role_name("s", Scope(Role.OPERATOR, "p1")) == "sp_grafana_s_p_p1"
    long1 = role_name("s", Scope(Role.ENTERPRISE, "p", "x" * 60 + "1"))
    long2 = role_name("s", Scope(Role.ENTERPRISE, "p", "x" * 60 + "2"))
    assert len(long1.encode()) <= 63
    assert long1 != long2


async def test_a_taken_name_is_never_reused_for_another_scope(world: World) -> None:
    """A role that exists without this schema's record (another platform's, or
    made by hand) is refused, and so is a record of another scope."""
    upper = Scope(Role.ENTERPRISE, "p1", "E1")
    assert role_name(world.storage.schema, upper) != world.by_scope["e1"].role
    foreign = role_name(world.storage.schema, Scope(Role.ENTERPRISE, "p1", "e9"))
    async with world.storage.connection() as conn:
        await conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(foreign)))
    try:
        with pytest.raises(RoleConflict, match="exists already"):
            await world.roles.ensure(Scope(Role.ENTERPRISE, "p1", "e9"))
    finally:
        async with world.storage.connection() as conn:
            await conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(foreign)))
    async with world.storage.connection() as conn:
        await conn.execute(
            sql.SQL("UPDATE {} SET enterprise = 'e2' WHERE role = %s").format(
                sql.Identifier(world.storage.schema, "grafana_roles")
            ),
            (world.by_scope["e1"].role,),
        )
    with pytest.raises(RoleConflict, match="belongs to enterprise p1/e2"):
        await world.roles.ensure(SCOPES["e1"])


async def test_a_webhook_key_rotation_moves_the_role_passwords_to_the_new_key(
    world: World,
) -> None:
    """Role passwords are sealed with the webhook secret key: after a rotation
    (the new key current, the old one still configured) the next ensure seals
    each with the new key, so the old key can go and provisioning still works."""
    new = new_key()
    roles = GrafanaRoles(world.storage, SecretBox.from_text(new, [WEBHOOK_KEY]))
    again, created = await roles.ensure(SCOPES["e1"])
    assert (again.password, created) == (world.by_scope["e1"].password, False)
    only_new = GrafanaRoles(world.storage, SecretBox.from_text(new))
    assert await only_new.get(SCOPES["e1"]) == again
