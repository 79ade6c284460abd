"""What the notifier and the API agree on about webhooks (pure, no I/O).

The event types a subscription may choose, their validation, the ``whsec_``
signing-secret format and the body of a ``webhook.ping``. :mod:`notifier.events`
and :mod:`notifier.signing` re-export these; the API (which may not import the
notifier) validates and creates subscriptions with the same functions.
"""

from __future__ import annotations

import base64
import json
import secrets as _secrets
from collections.abc import Iterable
from datetime import UTC, datetime

ALERT_OPENED = "alert.opened"
ALERT_ACKNOWLEDGED = "alert.acknowledged"
ALERT_RESOLVED = "alert.resolved"
ALERT_REVISED = "alert.revised"
ALERT_INSUFFICIENT_DATA = "alert.insufficient_data"
DEVICE_OFFLINE = "device.offline"
DEVICE_BACK = "device.back"
PING = "webhook.ping"

EVENT_TYPES: tuple[str, ...] = (
    ALERT_OPENED,
    ALERT_ACKNOWLEDGED,
    ALERT_RESOLVED,
    ALERT_REVISED,
    ALERT_INSUFFICIENT_DATA,
    DEVICE_OFFLINE,
    DEVICE_BACK,
)

SECRET_PREFIX = "whsec_"  # noqa: S105  (a format prefix, not a password)
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


def check_event_types(types: Iterable[str]) -> tuple[str, ...]:
    """``types`` de-duplicated in order; ValueError naming an unknown one."""
    out = tuple(dict.fromkeys(t.strip() for t in types if t.strip()))
    unknown = [t for t in out if t not in EVENT_TYPES]
    if unknown:
        expected = ", ".join(EVENT_TYPES)
        raise ValueError(
            f"unknown event type {unknown[0]!r}; expected some of {expected}"
        )
    if not out:
        raise ValueError("no event types given")
    return out


def generate_secret(n_bytes: int = 32) -> str:
    """A new ``whsec_`` secret of ``n_bytes`` random bytes (24 to 64)."""
    if not MIN_KEY_BYTES <= n_bytes <= MAX_KEY_BYTES:
        raise ValueError(f"n_bytes must be {MIN_KEY_BYTES}..{MAX_KEY_BYTES}")
    key = _secrets.token_bytes(n_bytes)
    return SECRET_PREFIX + base64.b64encode(key).decode("ascii")


def ping_body(subscription_id: str, now_ms: int) -> str:
    return dumps(
        {
            "type": PING,
            "timestamp": iso(now_ms),
            "data": {"subscription_id": subscription_id},
        }
    )


def iso(ms: int) -> str:
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dumps(doc: object) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
