"""Webhook subscriptions over HTTP against the real PostgreSQL, with a real local
receiver: every route for every role, the scope applied by path, filter, body and
cursor (another tenant's subscription or delivery is the same 404 as a missing
one), regulators read only, every write audited, secrets shown once and stored
encrypted, bad input named; ping and redeliver sent by the notifier's own
deliverer and verified as a receiver would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from psycopg import sql

from api.app import create_app
from notifier import signing
from notifier.http import Sender
from notifier.service import Deliverer
from smartpark.errors import ConfigError
from smartpark.settings import NotifierSettings, WebhookSettings
from smartpark.tenancy import Role
from storage import Storage, Subscription
from storage.secretbox import SecretBox, new_key
from tests.support.api import Api, api_settings, running_api
from tests.support.settings import WEBHOOK_KEY
from tests.support.webhooks import Receiver

LOOPBACK = NotifierSettings(allow=["127.0.0.1/32"])
URL = "http://127.0.0.1:9/hook"  # allow-listed; nothing needs to listen for CRUD


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[Api]:
    async with running_api(pg_dsn, db_schema, notifier=LOOPBACK) as api:
        yield api


async def seed(api: Api) -> dict[str, str]:
    """A subscription per tenant, stored directly: e1 and e2 of p1, the park p1's
    operators, e3 of p2. Their ids by name."""
    subs = {
        "e1": Subscription("sub_e1", "p1", "e1", URL, ("alert.opened",)),
        "e2": Subscription("sub_e2", "p1", "e2", URL, ("alert.opened",)),
        "ops1": Subscription("sub_ops1", "p1", None, URL, ("alert.opened",)),
        "e3": Subscription("sub_e3", "p2", "e3", URL, ("alert.opened",)),
    }
    for sub in subs.values():
        await api.storage.webhooks.create_subscription(sub, signing.generate_secret())
    return {name: s.subscription_id for name, s in subs.items()}


async def deliver_due(api: Api, subscription_id: str) -> None:
    """What the running notifier does with a due delivery: one attempt."""
    store = api.storage.webhooks
    async with Sender(allow=["127.0.0.1/32"], connect_timeout_s=1, timeout_s=3) as s:
        due = await store.next_due(subscription_id, api.storage.clock())
        assert due is not None
        await Deliverer(store, s).attempt(due)


def ids(body: dict[str, Any]) -> set[str]:
    return {item["subscription_id"] for item in body["items"]}


@pytest.mark.parametrize(
    ("role", "park", "enterprise", "seen"),
    [
        (Role.ENTERPRISE, "p1", "e1", {"sub_e1"}),
        (Role.ENTERPRISE, "p1", "e2", {"sub_e2"}),
        (Role.OPERATOR, "p1", None, {"sub_e1", "sub_e2", "sub_ops1"}),
        (Role.OPERATOR, "p2", None, {"sub_e3"}),
        (Role.OPERATOR, None, None, {"sub_e1", "sub_e2", "sub_ops1", "sub_e3"}),
        (Role.REGULATOR, None, None, {"sub_e1", "sub_e2", "sub_ops1", "sub_e3"}),
    ],
)
async def test_every_role_reads_its_scope(
    api: Api, role: Role, park: str | None, enterprise: str | None, seen: set[str]
) -> None:
    await seed(api)
    key = await api.key(role, park, enterprise)
    r = await api.client.get("/v1/webhooks", headers=key)
    assert r.status_code == 200, r.text
    assert ids(r.json()) == seen
    assert all("secret" not in item for item in r.json()["items"])
    for sid in ("sub_e1", "sub_e2", "sub_ops1", "sub_e3"):
        one = await api.client.get(f"/v1/webhooks/{sid}", headers=key)
        assert one.status_code == (200 if sid in seen else 404)


async def test_an_enterprise_subscribes_itself_and_the_secret_is_shown_once(
    api: Api,
) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.post(
        "/v1/webhooks", headers=key,
        json={"url": URL, "event_types": ["alert.opened"], "description": "pager"},
    )  # fmt: skip
    assert r.status_code == 201, r.text
    created = r.json()
    sid, secret = created["subscription_id"], created["secret"]
    assert (created["park"], created["enterprise"]) == ("p1", "e1")
    assert secret.startswith("whsec_")
    again = (await api.client.get(f"/v1/webhooks/{sid}", headers=key)).json()
    assert "secret" not in again
    assert again["deliveries"] == {"pending": 0, "delivered": 0, "failed": 0}
    # at rest: a ciphertext and its key id, never the secret
    async with api.storage.connection() as conn:
        cur = await conn.execute(
            sql.SQL("SELECT secret, key_id FROM {}.webhook_secrets").format(
                sql.Identifier(api.storage.schema)
            )
        )
        [(stored, kid)] = await cur.fetchall()
    assert secret not in stored
    assert secret.removeprefix("whsec_") not in stored
    assert kid == SecretBox.from_text(WEBHOOK_KEY).current_id
    assert await api.storage.webhooks.signing_secrets(sid, api.storage.clock()) == [
        secret
    ]
    [entry, *_] = await api.storage.keys.audit_log()
    assert (entry.action, entry.target, entry.enterprise) == (
        "webhook.create", sid, "e1",
    )  # fmt: skip
    assert secret not in str(entry.detail)


async def test_operators_subscribe_their_parks_enterprises(api: Api) -> None:
    op = await api.key(Role.OPERATOR, "p1")
    r = await api.client.post(
        "/v1/webhooks", headers=op, json={"url": URL, "enterprise": "e2"}
    )
    assert (r.status_code, r.json()["park"], r.json()["enterprise"]) == (
        201, "p1", "e2",
    )  # fmt: skip
    assert len(r.json()["event_types"]) == 7  # every type by default
    r = await api.client.post("/v1/webhooks", headers=op, json={"url": URL})
    assert (r.status_code, r.json()["enterprise"]) == (201, None)
    everywhere = await api.key(Role.OPERATOR)
    r = await api.client.post("/v1/webhooks", headers=everywhere, json={"url": URL})
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "body.park")
    r = await api.client.post(
        "/v1/webhooks", headers=everywhere, json={"url": URL, "park": "p2"}
    )
    assert (r.status_code, r.json()["park"]) == (201, "p2")


async def test_another_tenant_by_body_is_a_404(api: Api) -> None:
    ent = await api.key(Role.ENTERPRISE, "p1", "e1")
    op = await api.key(Role.OPERATOR, "p1")
    for key, body, what in (
        (ent, {"url": URL, "enterprise": "e2"}, "enterprise"),
        (ent, {"url": URL, "park": "p2"}, "park"),
        (op, {"url": URL, "park": "p2"}, "park"),
    ):
        r = await api.client.post("/v1/webhooks", headers=key, json=body)
        assert (r.status_code, r.json()["detail"]) == (404, f"{what} not found")
    assert await api.storage.webhooks.subscriptions() == []


async def test_another_tenants_subscription_is_the_same_404_as_a_missing_one(
    api: Api,
) -> None:
    theirs = (await seed(api))["e2"]
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    for method, suffix, body in (
        ("GET", "", None), ("POST", "/disable", {}), ("POST", "/enable", None),
        ("POST", "/rotate", {}), ("POST", "/ping", None),
    ):  # fmt: skip
        a = await api.client.request(
            method, f"/v1/webhooks/sub_missing{suffix}", headers=key, json=body
        )
        b = await api.client.request(
            method, f"/v1/webhooks/{theirs}{suffix}", headers=key, json=body
        )
        assert a.status_code == b.status_code == 404, suffix
        assert a.json() == b.json()
    [sub] = [s for s in await api.storage.webhooks.subscriptions() if s.subscription_id
             == theirs]  # fmt: skip
    assert sub.enabled
    assert len(await api.storage.webhooks.signing_secrets(theirs, 0)) == 1
    assert await api.storage.webhooks.deliveries(subscription_id=theirs) == []
    # by cursor: a page after their id shows only mine
    r = await api.client.get("/v1/webhooks", headers=key, params={"cursor": theirs})
    assert ids(r.json()) <= {"sub_e1"}


async def test_another_tenants_deliveries_are_invisible(api: Api) -> None:
    subs = await seed(api)
    op2 = await api.key(Role.OPERATOR, "p2")
    theirs = (
        await api.client.post(f"/v1/webhooks/{subs['e3']}/ping", headers=op2)
    ).json()["delivery_id"]
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    mine = (
        await api.client.post(f"/v1/webhooks/{subs['e1']}/ping", headers=key)
    ).json()["delivery_id"]
    r = await api.client.get("/v1/webhook-deliveries", headers=key)
    assert [d["delivery_id"] for d in r.json()["items"]] == [mine]
    r = await api.client.get(
        "/v1/webhook-deliveries", headers=key, params={"subscription": subs["e3"]}
    )
    assert r.json()["items"] == []
    r = await api.client.get(
        "/v1/webhook-deliveries", headers=key, params={"cursor": str(theirs - 1)}
    )
    assert theirs not in [d["delivery_id"] for d in r.json()["items"]]
    for method, suffix in (("GET", "attempts"), ("POST", "redeliver")):
        a = await api.client.request(
            method, f"/v1/webhook-deliveries/999999/{suffix}", headers=key
        )
        b = await api.client.request(
            method, f"/v1/webhook-deliveries/{theirs}/{suffix}", headers=key
        )
        assert a.status_code == b.status_code == 404
        assert a.json() == b.json() == {
            "type": "about:blank", "title": "Not found", "status": 404,
            "detail": "delivery not found",
        }  # fmt: skip
    reg = await api.key(Role.REGULATOR)
    r = await api.client.get("/v1/webhook-deliveries", headers=reg)
    assert {d["delivery_id"] for d in r.json()["items"]} == {mine, theirs}


async def test_a_regulator_reads_but_never_writes(api: Api) -> None:
    subs = await seed(api)
    op = await api.key(Role.OPERATOR, "p1")
    delivery = (
        await api.client.post(f"/v1/webhooks/{subs['e1']}/ping", headers=op)
    ).json()["delivery_id"]
    reg = await api.key(Role.REGULATOR)
    sid = subs["e1"]
    for path, body in (
        ("/v1/webhooks", {"url": URL, "park": "p1"}),
        (f"/v1/webhooks/{sid}/disable", {}), (f"/v1/webhooks/{sid}/enable", None),
        (f"/v1/webhooks/{sid}/rotate", {}), (f"/v1/webhooks/{sid}/ping", None),
        (f"/v1/webhook-deliveries/{delivery}/redeliver", None),
    ):  # fmt: skip
        r = await api.client.post(path, headers=reg, json=body)
        assert (r.status_code, r.json()["detail"]) == (
            403, "a regulator key is read-only",
        ), path  # fmt: skip
    r = await api.client.get(f"/v1/webhook-deliveries/{delivery}/attempts", headers=reg)
    assert (r.status_code, r.json()["items"]) == (200, [])
    assert len(await api.storage.webhooks.subscriptions()) == 4


async def test_disable_enable_and_rotate_are_audited(api: Api) -> None:
    sid = (await seed(api))["e1"]
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.post(
        f"/v1/webhooks/{sid}/disable", headers=key, json={"reason": "moving"}
    )
    assert (r.json()["enabled"], r.json()["disabled_reason"]) == (False, "moving")
    r = await api.client.post(f"/v1/webhooks/{sid}/enable", headers=key)
    assert (r.json()["enabled"], r.json()["disabled_reason"]) == (True, None)
    [old] = await api.storage.webhooks.signing_secrets(sid, api.storage.clock())
    r = await api.client.post(
        f"/v1/webhooks/{sid}/rotate", headers=key, json={"overlap_h": 2}
    )
    assert r.status_code == 200, r.text
    new = r.json()["secret"]
    now = api.storage.clock()
    assert await api.storage.webhooks.signing_secrets(sid, now) == [new, old]
    assert await api.storage.webhooks.signing_secrets(sid, now + 3 * 3_600_000) == [new]
    log = await api.storage.keys.audit_log()
    assert [e.action for e in log[:3]] == [
        "webhook.rotate", "webhook.enable", "webhook.disable",
    ]  # fmt: skip
    assert new not in str(log[0].detail)


async def test_ping_and_redeliver_reach_a_real_receiver_signed(
    pg_dsn: str, db_schema: str
) -> None:
    with Receiver() as receiver:
        async with running_api(pg_dsn, db_schema, notifier=LOOPBACK) as api:
            key = await api.key(Role.ENTERPRISE, "p1", "e1")
            created = (
                await api.client.post(
                    "/v1/webhooks", headers=key, json={"url": receiver.url}
                )
            ).json()
            sid, secret = created["subscription_id"], created["secret"]
            r = await api.client.post(f"/v1/webhooks/{sid}/ping", headers=key)
            assert r.status_code == 202, r.text
            delivery = r.json()["delivery_id"]
            await deliver_due(api, sid)
            [got] = receiver.wait_for(lambda rs: len(rs) == 1, 5)
            signing.verify(secret, got.headers, got.body)
            assert got.headers["webhook-id"] == r.json()["event_id"]
            r = await api.client.get(
                f"/v1/webhook-deliveries/{delivery}/attempts", headers=key
            )
            [attempt] = r.json()["items"]
            assert (attempt["outcome"], attempt["status_code"]) == ("delivered", 200)

            r = await api.client.post(
                f"/v1/webhook-deliveries/{delivery}/redeliver", headers=key
            )
            assert (r.status_code, r.json()["status"]) == (202, "pending")
            await deliver_due(api, sid)
            first, second = receiver.wait_for(lambda rs: len(rs) == 2, 5)
            signing.verify(secret, second.headers, second.body)
            assert second.headers["webhook-id"] == first.headers["webhook-id"]
            assert second.body == first.body
            r = await api.client.get(
                "/v1/webhook-deliveries", headers=key, params={"subscription": sid}
            )
            [row] = r.json()["items"]
            assert (row["status"], row["attempts"]) == ("delivered", 2)
            r = await api.client.get(f"/v1/webhooks/{sid}", headers=key)
            assert r.json()["deliveries"]["delivered"] == 1
            actions = [e.action for e in await api.storage.keys.audit_log()]
            assert actions[:3] == [
                "webhook.redeliver",
                "webhook.ping",
                "webhook.create",
            ]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.2/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
        ("http://user:pw@example.com/hook", "credentials"),
    ],
)
async def test_unsafe_urls_are_refused_by_the_notifiers_policy(
    api: Api, url: str, reason: str
) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.post("/v1/webhooks", headers=key, json={"url": url})
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == "body.url"
    assert reason in error["reason"]


@pytest.mark.parametrize(
    ("method", "path", "params", "body", "field"),
    [
        ("POST", "/v1/webhooks", {}, {"url": URL, "secret": "x"}, "body.secret"),
        ("POST", "/v1/webhooks", {}, {"url": URL, "event_types": ["alert.nope"]},
         "body.event_types.0"),
        ("POST", "/v1/webhooks", {}, {"url": URL, "event_types": []},
         "body.event_types"),
        ("POST", "/v1/webhooks", {}, {}, "body.url"),
        ("POST", "/v1/webhooks", {}, {"url": "http://127.0.0.1/\x00"}, "body.url"),
        ("POST", "/v1/webhooks", {}, {"url": URL, "description": "a\x00"},
         "body.description"),
        ("POST", "/v1/webhooks/sub_e1/disable", {}, {"reason": "\x00"},
         "body.reason"),
        ("POST", "/v1/webhooks", {}, {"url": URL, "enterprise": "e\x001"},
         "body.enterprise"),
        ("POST", "/v1/webhooks/sub_e1/rotate", {}, {"overlap_h": -1}, "body.overlap_h"),
        ("POST", "/v1/webhooks/sub_e1/rotate", {}, {"overlap_h": 1e9},
         "body.overlap_h"),
        ("GET", "/v1/webhooks/sub%00", {}, None, "path.subscription_id"),
        ("GET", "/v1/webhook-deliveries/99999999999999999999/attempts", {}, None,
         "path.delivery_id"),
        ("GET", "/v1/webhook-deliveries/0/attempts", {}, None, "path.delivery_id"),
        ("GET", "/v1/webhook-deliveries", {"cursor": "abc"}, None, "query.cursor"),
        ("GET", "/v1/webhook-deliveries", {"since": "2026-12-01T00:00:00"}, None,
         "query.since"),
        ("GET", "/v1/webhook-deliveries", {"status": "lost"}, None, "query.status"),
        ("GET", "/v1/webhooks", {"limit": "0"}, None, "query.limit"),
    ],
)  # fmt: skip
async def test_bad_input_names_the_field(
    api: Api, method: str, path: str, params: dict[str, str],
    body: dict[str, Any] | None, field: str,
) -> None:  # fmt: skip
    await seed(api)
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.request(method, path, headers=key, params=params, json=body)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


async def test_clear_secrets_from_before_0009_are_encrypted_in_place(
    api: Api, pg_dsn: str, db_schema: str
) -> None:
    """A secret stored in clear (as before migration 0009) keeps signing, and
    ``reencrypt`` (the notifier at start-up, ``smartpark webhooks reencrypt``)
    encrypts it in place; a key rotation moves every secret to the new key."""
    store = api.storage.webhooks
    await store.create_subscription(
        Subscription("sub_old", "p1", "e1", URL, ("alert.opened",)), "unused"
    )
    clear = signing.generate_secret()
    t = sql.Identifier(api.storage.schema, "webhook_secrets")
    async with api.storage.connection() as conn:
        await conn.execute(sql.SQL("DELETE FROM {}").format(t))
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (subscription_id, secret) VALUES ('sub_old', %s)"
            ).format(t),
            (clear,),
        )
    assert await store.signing_secrets("sub_old", 0) == [clear]
    assert await store.reencrypt() == 1
    assert await store.reencrypt() == 0
    assert await store.signing_secrets("sub_old", 0) == [clear]

    # rotation of the encryption key: the old one kept for decryption only
    fresh = new_key()
    rotated = SecretBox.from_text(fresh, [WEBHOOK_KEY])
    database = api_settings(pg_dsn, db_schema).database
    async with Storage(
        database, webhook_keys=SecretBox.from_text(fresh)
    ) as without_old:
        with pytest.raises(ConfigError, match="SMARTPARK_WEBHOOKS__OLD_SECRET_KEYS"):
            await without_old.webhooks.signing_secrets("sub_old", 0)
    async with Storage(database, webhook_keys=rotated) as storage:
        assert await storage.webhooks.reencrypt() == 1
        assert await storage.webhooks.signing_secrets("sub_old", 0) == [clear]
    async with api.storage.connection() as conn:
        cur = await conn.execute(sql.SQL("SELECT secret, key_id FROM {}").format(t))
        [(stored, kid)] = await cur.fetchall()
    assert (kid, clear in stored) == (rotated.current_id, False)


def test_a_missing_or_malformed_key_is_a_config_error_naming_the_variable() -> None:
    settings = api_settings("postgresql://unused@127.0.0.1/none", "none")
    unset = settings.model_copy(update={"webhooks": WebhookSettings()})
    with pytest.raises(ConfigError, match="SMARTPARK_WEBHOOKS__SECRET_KEY"):
        create_app(unset)
    with pytest.raises(ConfigError, match="SMARTPARK_WEBHOOKS__SECRET_KEY"):
        SecretBox.from_text("too-short")
