"""From an alert event (as on the alerts topic) to the webhooks it causes.

Pure functions. An event's webhook type is ``alert.<kind>`` (opened, acknowledged,
resolved, revised, insufficient_data), except for ``missing_data`` rules, whose
opening and resolution are ``device.offline`` and ``device.back``. A subscription
of an enterprise receives the events scoped to that enterprise; a park's (no
enterprise) receives every event of the park.

The body follows the Standard Webhooks payload shape: ``{"type", "timestamp",
"data"}``, where ``data`` is the event as stored (alert and event ids, rule and
version, severity, scope, value, window, evidence) plus ``links`` when the
platform's public URL is configured. It is serialised once, when the delivery is
queued, and the same bytes are signed and sent on every attempt.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, TypeVar

from smartpark.webhooks import (
    ALERT_ACKNOWLEDGED,
    ALERT_INSUFFICIENT_DATA,
    ALERT_OPENED,
    ALERT_RESOLVED,
    ALERT_REVISED,
    DEVICE_BACK,
    DEVICE_OFFLINE,
    EVENT_TYPES,
    PING,
    check_event_types,
    ping_body,
)
from smartpark.webhooks import dumps as _dumps
from smartpark.webhooks import iso as _iso

__all__ = [
    "ALERT_ACKNOWLEDGED", "ALERT_INSUFFICIENT_DATA", "ALERT_OPENED", "ALERT_RESOLVED",
    "ALERT_REVISED", "DEVICE_BACK", "DEVICE_OFFLINE", "EVENT_TYPES", "PING",
    "BadEvent", "Subscriber", "body", "check_event", "check_event_types",
    "event_type", "matching", "ping_body",
]  # fmt: skip

_DEVICE_TYPES = {"opened": DEVICE_OFFLINE, "resolved": DEVICE_BACK}


class BadEvent(ValueError):
    """An alerts-topic record that is not an alert event this module understands."""


class Subscriber(Protocol):
    @property
    def park(self) -> str: ...
    @property
    def enterprise(self) -> str | None: ...
    @property
    def event_types(self) -> tuple[str, ...]: ...


S = TypeVar("S", bound=Subscriber)


def event_type(event: Mapping[str, Any]) -> str:
    kind = event.get("kind")
    evidence = event.get("evidence")
    rule_kind = evidence.get("rule_kind") if isinstance(evidence, Mapping) else None
    if rule_kind == "missing_data" and kind in _DEVICE_TYPES:
        return _DEVICE_TYPES[str(kind)]
    etype = f"alert.{kind}"
    if etype not in EVENT_TYPES:
        raise BadEvent(f"kind: unknown event kind {kind!r}")
    return etype


def check_event(event: object) -> dict[str, Any]:
    """The event if it has what a delivery needs; :class:`BadEvent` naming the field."""
    if not isinstance(event, dict):
        raise BadEvent(f"expected a JSON object, got {type(event).__name__}")
    for key in ("event_id", "alert_id"):
        value = event.get(key)
        if not isinstance(value, str) or not value or "." in value:
            raise BadEvent(f"{key}: expected a non-empty id without '.', got {value!r}")
    at = event.get("at_ms")
    if not isinstance(at, int) or isinstance(at, bool):
        raise BadEvent(f"at_ms: expected integer milliseconds, got {at!r}")
    scope = event.get("scope")
    if not isinstance(scope, dict) or not isinstance(scope.get("park"), str):
        raise BadEvent("scope.park: missing")
    event_type(event)
    return event


def matching(
    subscriptions: Sequence[S], event: Mapping[str, Any], etype: str
) -> list[S]:
    """The subscriptions that receive ``event``."""
    scope = event["scope"]
    return [
        s
        for s in subscriptions
        if s.park == scope.get("park")
        and (s.enterprise is None or s.enterprise == scope.get("enterprise"))
        and etype in s.event_types
    ]


def body(event: Mapping[str, Any], etype: str, *, public_url: str | None = None) -> str:
    """The webhook body of ``event``: compact JSON, keys sorted."""
    data = dict(event)
    if public_url:
        base = public_url.rstrip("/")
        data["links"] = {"alert": f"{base}/v1/alerts/{event['alert_id']}"}
    return _dumps({"type": etype, "timestamp": _iso(int(event["at_ms"])), "data": data})
