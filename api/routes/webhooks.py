"""Webhook subscriptions over HTTP: what ``smartpark webhooks`` does, for the
tenants themselves.

An enterprise manages its own subscriptions (its park and enterprise come from
its key); an operator manages its park's (the park's own, without an enterprise,
and its enterprises'); a regulator reads. Every read and write goes through
:class:`storage.webhooks.WebhookStore` with the caller's scope, applied in SQL:
another tenant's subscription or delivery is the same 404 as one that does not
exist. Every write is in the audit log (never a secret).

- A new subscription's URL passes the notifier's SSRF policy
  (:mod:`smartpark.ssrf`, ``SMARTPARK_NOTIFIER__ALLOW``); its signing secret is in
  the response to the create, and never again.
- ``rotate`` gives a new secret (shown once); the old ones keep signing for the
  overlap (``SMARTPARK_NOTIFIER__ROTATION_OVERLAP_H`` unless given).
- ``redeliver`` and ``ping`` queue a delivery due now; the running notifier sends
  it through the same checks, signing, retries and log as any other (the API does
  not connect to receivers itself). Follow it with the delivery's ``attempts``.
"""

from __future__ import annotations

import asyncio
import secrets as stdlib_secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.auth import Caller, Reader, Writer
from api.problems import bad_input, not_found
from smartpark import webhooks as hooks
from smartpark.ssrf import UnsafeDestination, check_url
from smartpark.tenancy import Role
from storage.webhooks import AttemptRow, DeliveryRow, NewDelivery, Subscription

router = APIRouter(tags=["webhooks"])
MAX_LIMIT = 1000
MAX_OVERLAP_H = 720.0  # 30 days
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # smartpark.wire.valid_id
MAX_DELIVERY_ID = 2**63 - 1  # bigserial

EventType = Literal[
    "alert.opened", "alert.acknowledged", "alert.resolved", "alert.revised",
    "alert.insufficient_data", "device.offline", "device.back",
]  # fmt: skip

_SUB_EXAMPLE: dict[str, Any] = {
    "subscription_id": "sub_3f9a1c2e7b8d4a6f", "park": "park-1",
    "enterprise": "coal-power", "url": "https://hooks.coal-power.example/smartpark",
    "event_types": ["alert.opened", "alert.resolved"],
    "description": "duty engineer's pager", "enabled": True, "disabled_reason": None,
    "created_at": "2026-12-01T08:00:00Z",
    "deliveries": {"pending": 0, "delivered": 12, "failed": 1},
}  # fmt: skip
_SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSwAbCdEfGhIjK="  # noqa: S105 - an example
_DELIVERY_EXAMPLE: dict[str, Any] = {
    "delivery_id": 4211, "subscription_id": "sub_3f9a1c2e7b8d4a6f",
    "event_id": "a1b2c3d4e5f6a7b8c9d0e1f2", "event_type": "alert.opened",
    "status": "delivered", "attempts": 1,
    "next_attempt_at": "2026-12-01T08:00:00Z", "created_at": "2026-12-01T08:00:00Z",
    "finished_at": "2026-12-01T08:00:00.180Z", "last_error": None,
}  # fmt: skip
_ATTEMPT_EXAMPLE: dict[str, Any] = {
    "delivery_id": 4211, "attempt": 1, "started_at": "2026-12-01T08:00:00Z",
    "latency_ms": 180, "status_code": 200, "error": None, "outcome": "delivered",
    "address": "203.0.113.7",
}  # fmt: skip


def _plain(value: str) -> str:
    # PostgreSQL stores no NUL in text or jsonb: refused here as bad input, not
    # later as a database error.
    if any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in value):
        raise ValueError("control characters are not allowed")
    return value


Text = Annotated[str, AfterValidator(_plain)]


class Counts(BaseModel):
    pending: int
    delivered: int
    failed: int


class WebhookPublic(BaseModel):
    """A subscription (never its secret)."""

    subscription_id: str
    park: str
    enterprise: str | None
    url: str
    event_types: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    created_at: datetime
    deliveries: Counts | None = None

    model_config = ConfigDict(json_schema_extra={"examples": [_SUB_EXAMPLE]})


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="the signing secret, shown this once")

    model_config = ConfigDict(
        json_schema_extra={"examples": [{**_SUB_EXAMPLE, "secret": _SECRET_EXAMPLE}]}
    )


class Webhooks(BaseModel):
    items: list[WebhookPublic]
    next_cursor: str | None

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_SUB_EXAMPLE], "next_cursor": None}]}
    )


class WebhookCreate(BaseModel):
    """A new subscription. An enterprise key subscribes its own enterprise (leave
    ``park`` and ``enterprise`` out); an operator names the enterprise (or none:
    every event of the park) and, with an every-park key, the park."""

    url: Text = Field(min_length=1, max_length=2048)
    event_types: list[EventType] | None = Field(
        default=None, min_length=1, description="default: every type"
    )
    description: Text = Field(default="", max_length=500)
    park: str | None = Field(default=None, pattern=ID_PATTERN)
    enterprise: str | None = Field(default=None, pattern=ID_PATTERN)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{
                "url": "https://hooks.coal-power.example/smartpark",
                "event_types": ["alert.opened", "alert.resolved"],
                "description": "duty engineer's pager",
            }]
        },
    )  # fmt: skip


class Disable(BaseModel):
    reason: Text = Field(default="disabled through the API", max_length=500)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"reason": "receiver being replaced"}]},
    )


class Rotate(BaseModel):
    overlap_h: float | None = Field(
        default=None, ge=0, le=MAX_OVERLAP_H, allow_inf_nan=False,
        description="hours the old secrets keep signing (default: the platform's)",
    )  # fmt: skip

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"overlap_h": 24}]}
    )


class Rotated(BaseModel):
    subscription_id: str
    secret: str = Field(description="the new signing secret, shown this once")
    old_secrets_sign_until: datetime

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                "subscription_id": "sub_3f9a1c2e7b8d4a6f", "secret": _SECRET_EXAMPLE,
                "old_secrets_sign_until": "2026-12-02T08:00:00Z",
            }]
        }
    )  # fmt: skip


class Delivery(BaseModel):
    delivery_id: int
    subscription_id: str
    event_id: str
    event_type: str
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None
    last_error: str | None

    model_config = ConfigDict(json_schema_extra={"examples": [_DELIVERY_EXAMPLE]})


class Deliveries(BaseModel):
    items: list[Delivery]
    next_cursor: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_DELIVERY_EXAMPLE], "next_cursor": "4211"}]
        }
    )


class Attempt(BaseModel):
    delivery_id: int
    attempt: int
    started_at: datetime
    latency_ms: int
    status_code: int | None
    error: str | None
    outcome: str
    address: str | None

    model_config = ConfigDict(json_schema_extra={"examples": [_ATTEMPT_EXAMPLE]})


class Attempts(BaseModel):
    items: list[Attempt]

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"items": [_ATTEMPT_EXAMPLE]}]}
    )


class Queued(BaseModel):
    """A delivery queued to be sent now by the notifier."""

    delivery_id: int
    event_id: str
    status: Literal["pending"] = "pending"

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"delivery_id": 4212, "event_id": "ping_0a1b2c",
                          "status": "pending"}]
        }
    )  # fmt: skip


def _example(doc: Any, status: int = 200) -> dict[int | str, dict[str, Any]]:
    return {status: {"content": {"application/json": {"example": doc}}}}


SubscriptionId = Annotated[str, Path(pattern=ID_PATTERN, description="sub_…")]
DeliveryId = Annotated[int, Path(ge=1, le=MAX_DELIVERY_ID)]


def _public(sub: Subscription, counts: dict[str, int] | None = None) -> WebhookPublic:
    return WebhookPublic(
        subscription_id=sub.subscription_id, park=sub.park,
        enterprise=sub.enterprise, url=sub.url, event_types=list(sub.event_types),
        description=sub.description, enabled=sub.enabled,
        disabled_reason=sub.disabled_reason,
        created_at=datetime.fromtimestamp(sub.created_ms / 1000, UTC),
        deliveries=None if counts is None else Counts(**counts),
    )  # fmt: skip


def _delivery(d: DeliveryRow) -> Delivery:
    return Delivery(
        delivery_id=d.delivery_id, subscription_id=d.subscription_id,
        event_id=d.event_id, event_type=d.event_type,
        status=d.status,  # type: ignore[arg-type]  # the table's CHECK
        attempts=d.attempts, next_attempt_at=d.next_attempt_at,
        created_at=d.created_at, finished_at=d.finished_at, last_error=d.last_error,
    )  # fmt: skip


def _attempt(a: AttemptRow) -> Attempt:
    return Attempt(
        delivery_id=a.delivery_id, attempt=a.attempt, started_at=a.started_at,
        latency_ms=a.latency_ms, status_code=a.status_code, error=a.error,
        outcome=a.outcome, address=a.address,
    )  # fmt: skip


async def _owned(who: Caller, subscription_id: str) -> Subscription:
    sub = await who.storage.webhooks.subscription_within(who.scope, subscription_id)
    if sub is None:
        raise not_found("subscription")
    return sub


def _target(who: Caller, body: WebhookCreate) -> tuple[str, str | None]:
    """The (park, enterprise) a new subscription is for, within the key's scope:
    a park or enterprise outside it is the same 404 as one that does not exist."""
    scope = who.scope
    if scope.role is Role.ENTERPRISE:
        assert scope.park is not None  # an enterprise scope has both
        if body.park not in {None, scope.park}:
            raise not_found("park")
        if body.enterprise not in {None, scope.enterprise}:
            raise not_found("enterprise")
        return scope.park, scope.enterprise
    park = body.park or scope.park
    if park is None:
        raise bad_input("body.park", "required with an every-park operator key")
    if scope.park is not None and park != scope.park:
        raise not_found("park")
    return park, body.enterprise


@router.post(
    "/v1/webhooks",
    status_code=201,
    response_model=WebhookCreated,
    summary="Subscribe an endpoint",
    responses=_example({**_SUB_EXAMPLE, "secret": _SECRET_EXAMPLE}, 201),
)
async def create(who: Writer, body: WebhookCreate) -> WebhookCreated:
    """A new subscription. The URL must pass the SSRF policy (loopback, private,
    link-local and metadata addresses are refused unless the platform allows
    them). The signing secret is in this response and never shown again."""
    park, enterprise = _target(who, body)
    try:
        types = hooks.check_event_types(body.event_types or hooks.EVENT_TYPES)
    except ValueError as exc:
        raise bad_input("body.event_types", str(exc)) from None
    url = body.url.strip()
    try:
        await asyncio.to_thread(check_url, url, allow=who.settings.notifier.allow)
    except UnsafeDestination as exc:
        raise bad_input("body.url", f"refused: {exc}") from None
    except (OSError, UnicodeError, ValueError) as exc:
        raise bad_input("body.url", f"cannot resolve the host: {exc}") from None
    sub = Subscription(
        f"sub_{stdlib_secrets.token_hex(8)}", park, enterprise, url, types,
        body.description,
    )  # fmt: skip
    secret = hooks.generate_secret()
    await who.storage.webhooks.create_subscription(sub, secret)
    await who.audit(
        "webhook.create", sub.subscription_id,
        detail={"park": park, "enterprise": enterprise, "url": url,
                "event_types": list(types)},
    )  # fmt: skip
    stored = await _owned(who, sub.subscription_id)
    return WebhookCreated(**_public(stored).model_dump(), secret=secret)


@router.get(
    "/v1/webhooks",
    response_model=Webhooks,
    summary="List subscriptions",
    responses=_example({"items": [_SUB_EXAMPLE], "next_cursor": None}),
)
async def list_webhooks(
    who: Reader,
    *,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="next_cursor of the last page"),
    ] = None,
) -> Webhooks:
    """Subscriptions within your scope (never their secrets), by id, with how many
    of their deliveries are pending, delivered and failed."""
    subs = await who.storage.webhooks.find_subscriptions(
        who.scope, limit=limit + 1, after=cursor
    )
    more = len(subs) > limit
    subs = subs[:limit]
    counts = await who.storage.webhooks.delivery_counts_within(
        who.scope, [s.subscription_id for s in subs]
    )
    return Webhooks(
        items=[_public(s, counts[s.subscription_id]) for s in subs],
        next_cursor=subs[-1].subscription_id if more else None,
    )


@router.get(
    "/v1/webhooks/{subscription_id}",
    response_model=WebhookPublic,
    summary="One subscription",
    responses=_example(_SUB_EXAMPLE),
)
async def get_webhook(who: Reader, subscription_id: SubscriptionId) -> WebhookPublic:
    """The subscription (never its secret) with its delivery counts."""
    sub = await _owned(who, subscription_id)
    counts = await who.storage.webhooks.delivery_counts_within(
        who.scope, [subscription_id]
    )
    return _public(sub, counts[subscription_id])


@router.post(
    "/v1/webhooks/{subscription_id}/disable",
    response_model=WebhookPublic,
    summary="Disable a subscription",
    responses=_example(
        {**_SUB_EXAMPLE, "enabled": False, "disabled_reason": "receiver replaced"}
    ),
)
async def disable(
    who: Writer, subscription_id: SubscriptionId, body: Disable | None = None
) -> WebhookPublic:
    """Nothing new is queued for it, and what is queued waits until it is enabled
    again."""
    await _owned(who, subscription_id)
    reason = (body or Disable()).reason
    await who.storage.webhooks.set_enabled(subscription_id, False, reason=reason)
    await who.audit("webhook.disable", subscription_id, detail={"reason": reason})
    return await get_webhook(who, subscription_id)


@router.post(
    "/v1/webhooks/{subscription_id}/enable",
    response_model=WebhookPublic,
    summary="Enable a subscription",
    responses=_example(_SUB_EXAMPLE),
)
async def enable(who: Writer, subscription_id: SubscriptionId) -> WebhookPublic:
    """Deliveries resume, the queued ones first."""
    await _owned(who, subscription_id)
    await who.storage.webhooks.set_enabled(subscription_id, True)
    await who.audit("webhook.enable", subscription_id)
    return await get_webhook(who, subscription_id)


@router.post(
    "/v1/webhooks/{subscription_id}/rotate",
    response_model=Rotated,
    summary="Rotate the signing secret",
    responses=_example(
        {
            "subscription_id": "sub_3f9a1c2e7b8d4a6f",
            "secret": _SECRET_EXAMPLE,
            "old_secrets_sign_until": "2026-12-02T08:00:00Z",
        }
    ),
)
async def rotate(
    who: Writer, subscription_id: SubscriptionId, body: Rotate | None = None
) -> Rotated:
    """A new signing secret, shown this once. Until the overlap ends every request
    carries a signature with the old secrets too, so the receiver can switch at
    any time within it."""
    await _owned(who, subscription_id)
    hours = (body or Rotate()).overlap_h
    if hours is None:
        hours = who.settings.notifier.rotation_overlap_h
    until_ms = who.storage.clock() + round(hours * 3_600_000)
    secret = hooks.generate_secret()
    if not await who.storage.webhooks.rotate_secret(
        subscription_id, secret, old_until_ms=until_ms
    ):
        raise not_found("subscription")  # pragma: no cover - deleted meanwhile
    await who.audit("webhook.rotate", subscription_id, detail={"overlap_h": hours})
    return Rotated(
        subscription_id=subscription_id, secret=secret,
        old_secrets_sign_until=datetime.fromtimestamp(until_ms / 1000, UTC),
    )  # fmt: skip


@router.post(
    "/v1/webhooks/{subscription_id}/ping",
    status_code=202,
    response_model=Queued,
    summary="Send a signed test event",
    responses=_example(
        {"delivery_id": 4212, "event_id": "ping_0a1b2c", "status": "pending"}, 202
    ),
)
async def ping(who: Writer, subscription_id: SubscriptionId) -> Queued:
    """Queue a signed ``webhook.ping`` due now; the notifier sends it through the
    same checks, signing, retries and log as any delivery. Follow it with
    ``GET /v1/webhook-deliveries/{delivery_id}/attempts``."""
    sub = await _owned(who, subscription_id)
    now = who.storage.clock()
    event_id = f"ping_{stdlib_secrets.token_hex(12)}"
    delivery = NewDelivery(
        sub.subscription_id, event_id, hooks.PING, event_id, now,
        hooks.ping_body(sub.subscription_id, now),
    )  # fmt: skip
    delivery_id = await who.storage.webhooks.queue_one(delivery, now_ms=now)
    await who.audit(
        "webhook.ping", subscription_id, detail={"delivery_id": delivery_id}
    )
    return Queued(delivery_id=delivery_id, event_id=event_id)


@router.get(
    "/v1/webhook-deliveries",
    response_model=Deliveries,
    summary="The delivery log",
    responses=_example({"items": [_DELIVERY_EXAMPLE], "next_cursor": None}),
)
async def deliveries(
    who: Reader,
    *,
    subscription: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    status: Literal["pending", "delivered", "failed"] | None = None,
    since: Annotated[
        datetime | None, Query(description="created at or after (ISO 8601, offset)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="created before (ISO 8601, offset)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None,
        Query(pattern=r"^[0-9]{1,18}$", description="next_cursor of the last page"),
    ] = None,
) -> Deliveries:
    """Deliveries of your subscriptions (without bodies), oldest first; another
    tenant's subscription as a filter gives an empty list."""
    bounds: list[int | None] = []
    for name, t in (("since", since), ("until", until)):
        if t is not None and (t.tzinfo is None or t.utcoffset() is None):
            raise bad_input(f"query.{name}", "needs a UTC offset (e.g. +08:00 or Z)")
        bounds.append(None if t is None else int(t.timestamp() * 1000))
    if since is not None and until is not None and until <= since:
        raise bad_input("query.until", "must be after since")
    rows = await who.storage.webhooks.find_deliveries(
        who.scope, subscription_id=subscription, status=status,
        since_ms=bounds[0], until_ms=bounds[1],
        after=None if cursor is None else int(cursor), limit=limit + 1,
    )  # fmt: skip
    more = len(rows) > limit
    rows = rows[:limit]
    return Deliveries(
        items=[_delivery(d) for d in rows],
        next_cursor=str(rows[-1].delivery_id) if more else None,
    )


@router.get(
    "/v1/webhook-deliveries/{delivery_id}/attempts",
    response_model=Attempts,
    summary="Every attempt of a delivery",
    responses=_example({"items": [_ATTEMPT_EXAMPLE]}),
)
async def attempts(who: Reader, delivery_id: DeliveryId) -> Attempts:
    """Status code, latency, error and the address connected to, per attempt: what
    a dispute about a missed webhook needs."""
    rows = await who.storage.webhooks.attempts_within(who.scope, delivery_id)
    if rows is None:
        raise not_found("delivery")
    return Attempts(items=[_attempt(a) for a in rows])


@router.post(
    "/v1/webhook-deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=Delivery,
    summary="Send a delivery again",
    responses=_example({**_DELIVERY_EXAMPLE, "status": "pending"}, 202),
)
async def redeliver(who: Writer, delivery_id: DeliveryId) -> Delivery:
    """Queue the delivery again, due now, with a fresh schedule and the same
    ``webhook-id`` (receivers de-duplicate by it); the notifier sends it."""
    queued = await who.storage.webhooks.redeliver_within(
        who.scope, [delivery_id], who.storage.clock()
    )
    if not queued:
        raise not_found("delivery")
    await who.audit("webhook.redeliver", str(delivery_id))
    row = await who.storage.webhooks.delivery_within(who.scope, delivery_id)
    if row is None:  # pragma: no cover - it was there a moment ago
        raise not_found("delivery")
    return _delivery(row)
