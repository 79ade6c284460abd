"""Alerts over HTTP: list and filter, one alert with its events and evidence,
acknowledge with a comment, resolve by hand with a reason.

Every read and write goes through :class:`storage.alerts.AlertStore` with the
caller's scope, applied in SQL: an enterprise sees and acts on its own
enterprise's alerts, an operator its park's (or every park's), a regulator reads
everything and writes nothing. Another tenant's alert is the same 404 as one that
does not exist, by path, by filter and by cursor. Webhook bodies link here
(``/v1/alerts/{id}``).

A resolution by hand is an event of its own (``resolved`` with evidence
``resolution: "manual"``, who and why); it never claims the rule judged the alert
resolved. Every acknowledgement and resolution is in the audit log.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from api.auth import Reader, Writer
from api.problems import Problem, bad_input, not_found
from storage.alerts import AlertEventRow, AlertFilters, AlertKey, AlertRecord

router = APIRouter(tags=["alerts"])
MAX_LIMIT = 1000
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"  # smartpark.wire.valid_id
ALERT_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"

_ALERT_EXAMPLE: dict[str, Any] = {
    "alert_id": "3f9a1c2e7b8d4a6f0e1d2c3b", "pack": "ultra-low-emission",
    "rule_id": "so2-hourly-mean", "rule_version": "3", "severity": "major",
    "status": "open", "park": "park-1", "enterprise": "coal-power",
    "device": "stack-1-cems", "metric": "so2",
    "opened_at": "2026-12-01T08:00:00Z", "resolved_at": None,
    "acknowledged_at": None, "acknowledged_by": None,
    "links": {"self": "/v1/alerts/3f9a1c2e7b8d4a6f0e1d2c3b"},
}  # fmt: skip


def _plain(value: str) -> str:
    # PostgreSQL stores no NUL in text or jsonb: refused here as bad input, not
    # later as a database error.
    if any((c < " " and c not in "\t\n\r") or c == "\x7f" for c in value):
        raise ValueError("control characters are not allowed")
    return value


Text = Annotated[str, AfterValidator(_plain)]


class Alert(BaseModel):
    alert_id: str
    pack: str
    rule_id: str
    rule_version: str
    severity: str
    status: Literal["open", "acknowledged", "resolved"]
    park: str
    enterprise: str | None
    device: str | None
    metric: str | None
    opened_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    links: dict[str, str]

    model_config = ConfigDict(json_schema_extra={"examples": [_ALERT_EXAMPLE]})


class Alerts(BaseModel):
    items: list[Alert]
    next_cursor: str | None

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"items": [_ALERT_EXAMPLE], "next_cursor": "WyIyMDI2Il0"}]
        }
    )


class AlertEvent(BaseModel):
    """One event of an alert's life, with the evidence the rule recorded."""

    event_id: str
    kind: str
    at: datetime
    rule_version: str
    value: Any = None
    window: Any = None
    limit: Any = None
    evidence: dict[str, Any] = {}


class AlertDetail(Alert):
    events: list[AlertEvent]

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{
                **_ALERT_EXAMPLE,
                "events": [{
                    "event_id": "a1b2c3d4e5f6a7b8c9d0e1f2", "kind": "opened",
                    "at": "2026-12-01T08:00:00Z", "rule_version": "3",
                    "value": 61.2,
                    "window": {"start_ms": 1764572400000, "end_ms": 1764576000000},
                    "limit": 35.0,
                    "evidence": {"limit": 35.0, "values": [58.1, 64.3]},
                }],
            }]
        }
    )  # fmt: skip


class Acknowledge(BaseModel):
    """What the person acknowledging says (kept with the event)."""

    comment: Text = Field(default="", max_length=2000)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"comment": "crew sent to stack 1"}]},
    )


class Resolve(BaseModel):
    """Why the alert is resolved by hand (required)."""

    reason: Text = Field(min_length=1, max_length=2000)

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"reason": "analyser was in calibration; data flagged C"}]
        },
    )


def _example(doc: dict[str, Any]) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": doc}}}}


AlertId = Annotated[
    str, Path(pattern=ALERT_ID_PATTERN, description="an alert id (from a list)")
]
Id = Annotated[str | None, Query(pattern=ID_PATTERN)]


def _alert(r: AlertRecord) -> Alert:
    return Alert(
        alert_id=r.alert_id, pack=r.pack, rule_id=r.rule_id,
        rule_version=r.rule_version, severity=r.severity,
        status=r.status,  # type: ignore[arg-type]  # the table's CHECK
        park=r.park, enterprise=r.enterprise, device=r.device, metric=r.metric,
        opened_at=r.opened_at, resolved_at=r.resolved_at,
        acknowledged_at=r.acknowledged_at, acknowledged_by=r.acknowledged_by,
        links={"self": f"/v1/alerts/{r.alert_id}"},
    )  # fmt: skip


def _event(e: AlertEventRow) -> AlertEvent:
    evidence = e.body.get("evidence")
    evidence = evidence if isinstance(evidence, dict) else {}
    limit = e.body.get("limit", evidence.get("limit"))
    return AlertEvent(
        event_id=e.event_id, kind=e.kind,
        at=datetime.fromtimestamp(e.at_ms / 1000, UTC), rule_version=e.rule_version,
        value=e.body.get("value"), window=e.body.get("window"), limit=limit,
        evidence=evidence,
    )  # fmt: skip


def encode_cursor(key: AlertKey) -> str:
    raw = json.dumps([key[0].isoformat(), key[1]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str | None) -> AlertKey | None:
    if text is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        t, alert_id = json.loads(raw)
        when = datetime.fromisoformat(t)
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        raise bad_input("query.cursor", "not a cursor this API returned") from None
    if when.tzinfo is None or not isinstance(alert_id, str) or "\x00" in alert_id:
        raise bad_input("query.cursor", "not a cursor this API returned")
    return when, alert_id


def _moment(name: str, t: datetime | None) -> None:
    if t is not None and (t.tzinfo is None or t.utcoffset() is None):
        raise bad_input(f"query.{name}", "needs a UTC offset (e.g. +08:00 or Z)")


@router.get(
    "/v1/alerts",
    response_model=Alerts,
    summary="List alerts",
    responses=_example({"items": [_ALERT_EXAMPLE], "next_cursor": None}),
)
async def list_alerts(
    who: Reader,
    *,
    status: Annotated[
        Literal["open", "acknowledged", "resolved"] | None,
        Query(description="the alert's current status"),
    ] = None,
    severity: Annotated[str | None, Query(pattern=r"^[a-z_]{1,32}$")] = None,
    rule: Annotated[
        str | None, Query(pattern=ID_PATTERN, description="a rule id")
    ] = None,
    enterprise: Id = None,
    device: Id = None,
    outlet: Annotated[
        str | None,
        Query(pattern=ID_PATTERN, description="the devices of a registered outlet"),
    ] = None,
    since: Annotated[
        datetime | None, Query(description="opened at or after (ISO 8601, offset)")
    ] = None,
    until: Annotated[
        datetime | None, Query(description="opened before (ISO 8601, offset)")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 100,
    cursor: Annotated[
        str | None, Query(max_length=512, description="next_cursor of the last page")
    ] = None,
) -> Alerts:
    """Alerts within your scope, newest first (by the time they opened). Filters
    narrow the scope, never widen it: another tenant's enterprise or device gives
    an empty list."""
    _moment("since", since)
    _moment("until", until)
    if since is not None and until is not None and until <= since:
        raise bad_input("query.until", "must be after since")
    filters = AlertFilters(
        status=status, severity=severity, rule_id=rule, enterprise=enterprise,
        device=device, outlet=outlet, since=since, until=until,
    )  # fmt: skip
    rows = await who.storage.alerts.find(
        who.scope, filters, limit=limit + 1, after=decode_cursor(cursor)
    )
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = (
        encode_cursor((rows[-1].opened_at, rows[-1].alert_id)) if more else None
    )
    return Alerts(items=[_alert(r) for r in rows], next_cursor=next_cursor)


@router.get(
    "/v1/alerts/{alert_id}",
    response_model=AlertDetail,
    summary="One alert with its events and evidence",
    responses=_example({**_ALERT_EXAMPLE, "events": []}),
)
async def get_alert(who: Reader, alert_id: AlertId) -> AlertDetail:
    """The alert, and every event of its life in the order stored: the rule
    version, window, values and limit the rule recorded, acknowledgements and
    resolutions by hand with who and why."""
    row = await who.storage.alerts.get(who.scope, alert_id)
    if row is None:
        raise not_found("alert")
    events = await who.storage.alerts.history(who.scope, alert_id)
    return AlertDetail(**_alert(row).model_dump(), events=[_event(e) for e in events])


@router.post(
    "/v1/alerts/{alert_id}/acknowledge",
    response_model=AlertDetail,
    summary="Acknowledge an open alert",
    responses=_example({**_ALERT_EXAMPLE, "status": "acknowledged", "events": []}),
)
async def acknowledge(
    who: Writer, alert_id: AlertId, body: Acknowledge | None = None
) -> AlertDetail:
    """Acknowledge an open alert, with an optional comment. It stays until the rule
    (or a person) resolves it; webhook subscribers receive ``alert.acknowledged``.
    An alert already acknowledged or resolved is a 409."""
    comment = body.comment if body is not None else ""
    before = await who.storage.alerts.get(who.scope, alert_id)
    if before is None:
        raise not_found("alert")
    if before.status != "open":
        raise Problem(409, f"alert is already {before.status}")
    status = await who.storage.alerts.acknowledge_within(
        who.scope, alert_id, by=_actor(who.key.id, who.key.name),
        comment=comment or None,
    )  # fmt: skip
    if status is None:
        raise not_found("alert")
    await who.audit("alert.acknowledge", alert_id, detail={"comment": comment})
    return await get_alert(who, alert_id)


@router.post(
    "/v1/alerts/{alert_id}/resolve",
    response_model=AlertDetail,
    summary="Resolve an alert by hand",
    responses=_example({**_ALERT_EXAMPLE, "status": "resolved", "events": []}),
)
async def resolve(who: Writer, alert_id: AlertId, body: Resolve) -> AlertDetail:
    """Resolve an open or acknowledged alert by hand, with a reason. The
    resolution is an event of its own (evidence ``resolution: "manual"``, who,
    why), not the rule's; webhook subscribers receive ``alert.resolved`` with that
    evidence. An alert already resolved is a 409."""
    before = await who.storage.alerts.get(who.scope, alert_id)
    if before is None:
        raise not_found("alert")
    if before.status == "resolved":
        raise Problem(409, "alert is already resolved")
    status = await who.storage.alerts.resolve_by_hand(
        who.scope, alert_id, by=_actor(who.key.id, who.key.name),
        reason=body.reason,
    )  # fmt: skip
    if status is None:
        raise not_found("alert")
    await who.audit("alert.resolve", alert_id, detail={"reason": body.reason})
    return await get_alert(who, alert_id)


def _actor(key_id: str, name: str) -> str:
    """Who acted, as the alert records it: the key's name and id."""
    return f"{name} (key {key_id})"
