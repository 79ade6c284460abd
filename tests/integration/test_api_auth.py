"""API keys against the real PostgreSQL: the key is the only source of the scope;
missing, malformed, unknown, revoked and expired keys are 401 problems; health and
readiness; ``smartpark keys`` end to end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.cli import create_key
from api.cli import main as keys_main
from smartpark.tenancy import Role, Scope
from tests.support.api import PEPPER, running_api


async def test_a_key_is_the_only_source_of_the_scope(
    pg_dsn: str, db_schema: str, kafka_bootstrap: str
) -> None:
    async with running_api(pg_dsn, db_schema, kafka=kafka_bootstrap) as api:
        ent = await api.key(Role.ENTERPRISE, "p1", "e1")
        # a parameter the route does not take is refused, never a scope
        r = await api.client.get("/v1/me?enterprise=e2&park=p2", headers=ent)
        assert r.status_code == 422
        r = await api.client.get(
            "/v1/me", headers={**ent, "X-Enterprise": "e2", "X-Tenant": "e2"}
        )
        assert r.status_code == 200
        assert (r.json()["role"], r.json()["park"], r.json()["enterprise"]) == (
            "enterprise", "p1", "e1",
        )  # fmt: skip
        reg = await api.key(Role.REGULATOR)
        assert (await api.client.get("/v1/me", headers=reg)).json()[
            "role"
        ] == "regulator"
        [row] = [k for k in await api.storage.keys.all() if k.role == "enterprise"]
        assert row.last_used_at is not None  # the use was recorded


@pytest.mark.parametrize(
    ("header", "detail"),
    [
        ({}, "send the API key"),
        ({"Authorization": "Basic dXNlcjpwdw=="}, "send the API key"),
        ({"Authorization": "Bearer "}, "send the API key"),
        ({"Authorization": "Bearer not-a-key"}, "malformed API key"),
        ({"Authorization": "Bearer spk_000000000000_" + "a" * 43}, "unknown API key"),
    ],
)
async def test_without_a_good_key_nothing_is_served(
    pg_dsn: str, db_schema: str, header: dict[str, str], detail: str
) -> None:
    async with running_api(pg_dsn, db_schema) as api:
        r = await api.client.get("/v1/me", headers=header)
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.headers["www-authenticate"] == "Bearer"
    assert detail in r.json()["detail"]


async def test_a_wrong_secret_revoked_or_expired_key_is_refused(
    pg_dsn: str, db_schema: str
) -> None:
    async with running_api(pg_dsn, db_schema) as api:
        good = await api.key(Role.OPERATOR, "p1")
        token = good["Authorization"].removeprefix("Bearer ")
        forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
        r = await api.client.get(
            "/v1/me", headers={"Authorization": f"Bearer {forged}"}
        )
        assert (r.status_code, r.json()["detail"]) == (401, "unknown API key")
        key_id = token.split("_")[1]
        await api.storage.keys.revoke(key_id)
        r = await api.client.get("/v1/me", headers=good)
        assert (r.status_code, r.json()["detail"]) == (
            401,
            f"API key {key_id} is revoked",
        )
        past = datetime.now(UTC) - timedelta(seconds=1)
        old = await create_key(
            api.storage, PEPPER.encode(), scope=Scope(Role.REGULATOR), name="old",
            expires_at=past,
        )  # fmt: skip
        r = await api.client.get("/v1/me", headers={"Authorization": f"Bearer {old}"})
        assert r.status_code == 401
        assert r.json()["detail"].endswith("is expired")


async def test_keys_are_stored_hashed_never_in_clear(
    pg_dsn: str, db_schema: str
) -> None:
    import psycopg
    from psycopg import sql

    async with running_api(pg_dsn, db_schema) as api:
        header = await api.key(Role.REGULATOR)
    secret = header["Authorization"].rsplit("_", 1)[1]
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            sql.SQL("SELECT * FROM {}").format(sql.Identifier(db_schema, "api_keys"))
        ).fetchall()
    assert len(rows) == 1
    assert secret not in repr(rows)
    assert secret.encode() not in b"".join(
        bytes(v) for v in rows[0] if isinstance(v, bytes | memoryview)
    )


async def test_health_and_readiness(
    pg_dsn: str, db_schema: str, kafka_bootstrap: str
) -> None:
    async with running_api(pg_dsn, db_schema, kafka=kafka_bootstrap) as api:
        assert (await api.client.get("/health")).json() == {"status": "ok"}
        r = await api.client.get("/ready")
        assert (r.status_code, r.json()["checks"]) == (
            200, {"database": "ok", "kafka": "ok"},
        )  # fmt: skip
    # Kafka not answering: not ready, and it says which.
    async with running_api(pg_dsn, db_schema, kafka="127.0.0.1:1") as api:
        r = await api.client.get("/ready")
    assert r.status_code == 503
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["checks"]["kafka"].startswith("unavailable")
    assert r.json()["checks"]["database"] == "ok"


def test_the_keys_command_creates_lists_and_revokes(
    pg_dsn: str, db_schema: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("SMARTPARK_DATABASE__DSN", pg_dsn)
    monkeypatch.setenv("SMARTPARK_DATABASE__SCHEMA", db_schema)
    monkeypatch.setenv("SMARTPARK_API__KEY_PEPPER", PEPPER)
    from storage.cli import main as db_main

    assert db_main(["migrate"]) == 0
    capsys.readouterr()
    args = ["create", "--role", "enterprise", "--park", "p1", "--enterprise", "e1"]
    assert keys_main([*args, "--name", "gateway e1"]) == 0
    key = capsys.readouterr().out.splitlines()[0]
    assert key.startswith("spk_")
    assert keys_main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "enterprise" in listed
    secret = key.split("_", 2)[2]  # spk_<id>_<secret>; the secret may hold "_"
    assert len(secret) == 43
    assert secret not in listed  # the secret is never shown again
    assert keys_main(["revoke", key]) == 0
    assert "revoked" in capsys.readouterr().out
    assert keys_main(["revoke", "000000000000"]) == 1
    # an enterprise key without its enterprise is bad input
    assert keys_main(["create", "--role", "enterprise", "--name", "x"]) == 2
    assert "enterprise scope needs" in capsys.readouterr().err
    monkeypatch.delenv("SMARTPARK_API__KEY_PEPPER")
    assert keys_main(["create", "--role", "regulator", "--name", "x"]) == 2
    assert "SMARTPARK_API__KEY_PEPPER" in capsys.readouterr().err


async def test_metrics_count_requests_by_route_and_status(
    pg_dsn: str, db_schema: str
) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    async with running_api(pg_dsn, db_schema) as api:
        key = await api.key(Role.REGULATOR)
        await api.client.get("/v1/me", headers=key)
        await api.client.get("/v1/me", headers=key)
        await api.client.get("/v1/me")
        r = await api.client.get("/metrics")
    assert r.status_code == 200
    samples = {
        (s.labels["route"], s.labels["status"]): s.value
        for family in text_string_to_metric_families(r.text)
        if family.name == "smartpark_api_requests"
        for s in family.samples
        if s.name == "smartpark_api_requests_total"
    }
    assert samples[("/v1/me", "200")] == 2
    assert samples[("/v1/me", "401")] == 1
    assert key["Authorization"] not in r.text
