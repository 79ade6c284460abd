"""Webhook delivery: what an attempt's outcome means and when the next one is due.

Pure functions over explicit inputs (status, transport error kind, ``now_ms``, an
injected random source): the notifier stores what they return with the delivery.

Outcomes (:func:`classify`), following Standard Webhooks "Delivery success and
failure":

- ``2xx`` → DELIVERED.
- ``410 Gone`` → DISABLE_ENDPOINT: the receiver asked not to be sent webhooks again.
- ``429`` / ``503`` with a usable ``Retry-After`` → RETRY_AFTER: retry on the
  schedule, but not before the time the receiver asked for (capped at
  :data:`MAX_RETRY_AFTER_S`, so a receiver cannot park a delivery for weeks).
- every other status (``1xx``, ``3xx`` — redirects are not followed — and every
  other ``4xx`` and ``5xx``) and the transport errors timeout, connect, DNS, TLS and
  protocol → RETRY. Other 4xx are retried on purpose, as Standard Webhooks and Svix
  do: a 401/403/404 is usually a receiver being deployed or a secret being rotated,
  and an emissions alert is worth three days of trying; an endpoint that never
  recovers is for the operator (and a later auto-disable rule) to handle.
- the transport error UNSAFE_DESTINATION (the SSRF policy refused the address) →
  FAILED_PERMANENTLY: retrying a refused destination cannot succeed and repeats a
  suspicious connection attempt; the notifier reports it to the operator.

Schedule (:data:`DEFAULT_SCHEDULE`, delays in ms before each attempt): the example
schedule of the Standard Webhooks spec ("Deliverability and reliability"):
immediately, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h — ten attempts
over 75 h 35 min 5 s, about three days (Svix stops after 10 h, 10 h, ≈ 28 h; issue 5
asks for about three days). Each delay gets ±10 % jitter from the injected ``rng``
so retries after a receiver outage do not arrive as one burst.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Protocol

SECOND_MS = 1000
MINUTE_MS = 60 * SECOND_MS
HOUR_MS = 60 * MINUTE_MS

DEFAULT_SCHEDULE: tuple[int, ...] = (
    0,
    5 * SECOND_MS,
    5 * MINUTE_MS,
    30 * MINUTE_MS,
    2 * HOUR_MS,
    5 * HOUR_MS,
    10 * HOUR_MS,
    14 * HOUR_MS,
    20 * HOUR_MS,
    24 * HOUR_MS,
)
JITTER = 0.10
MAX_RETRY_AFTER_S = 86_400.0
RETRY_AFTER_STATUSES = frozenset({429, 503})

# Longer delay-seconds values are absurd; they are read as "forever" (then capped).
_MAX_DELAY_DIGITS = 12


class Outcome(StrEnum):
    """What one delivery attempt means for the delivery and for the endpoint."""

    DELIVERED = "delivered"
    RETRY = "retry"
    RETRY_AFTER = "retry_after"
    DISABLE_ENDPOINT = "disable_endpoint"
    FAILED_PERMANENTLY = "failed_permanently"

    @property
    def final(self) -> bool:
        """No further attempt of this delivery follows."""
        return self not in (Outcome.RETRY, Outcome.RETRY_AFTER)


class TransportError(StrEnum):
    """Why an attempt got no HTTP response. The notifier maps exception *types*."""

    TIMEOUT = "timeout"  # connect, write or read timeout
    CONNECT = "connect"  # refused, reset before a response, unreachable
    DNS = "dns"  # the host did not resolve
    TLS = "tls"  # handshake or certificate verification failed
    PROTOCOL = "protocol"  # malformed HTTP response, connection closed mid-response
    UNSAFE_DESTINATION = "unsafe_destination"  # notifier.ssrf refused it


class UniformRandom(Protocol):
    """The part of :class:`random.Random` the schedule needs."""

    def uniform(self, a: float, b: float) -> float: ...


def classify(
    status: int | None, error: str | None, *, retry_after_s: float | None = None
) -> Outcome:
    """The outcome of an attempt that got ``status`` or failed with ``error``.

    Exactly one of ``status`` and ``error`` is given; ``error`` is a
    :class:`TransportError` value. ``retry_after_s`` is the parsed ``Retry-After``
    (:func:`parse_retry_after`); it matters for 429 and 503 only.
    """
    if (status is None) == (error is None):
        raise ValueError("give exactly one of status and error")
    if error is not None:
        kind = TransportError(error)  # ValueError for an unknown kind
        if kind is TransportError.UNSAFE_DESTINATION:
            return Outcome.FAILED_PERMANENTLY
        return Outcome.RETRY
    assert status is not None
    if not 100 <= status <= 599:
        raise ValueError(f"not an HTTP status: {status}")
    if 200 <= status <= 299:
        return Outcome.DELIVERED
    if status == 410:
        return Outcome.DISABLE_ENDPOINT
    if status in RETRY_AFTER_STATUSES and retry_after_s is not None:
        return Outcome.RETRY_AFTER
    return Outcome.RETRY


def next_attempt(
    attempt: int,
    *,
    now_ms: int,
    rng: UniformRandom,
    schedule: Sequence[int] = DEFAULT_SCHEDULE,
    retry_after_s: float | None = None,
    max_retry_after_s: float = MAX_RETRY_AFTER_S,
) -> int | None:
    """When (ms) attempt number ``attempt + 1`` is due, or ``None`` if none is left.

    ``attempt`` is how many attempts were made (0 before the first). The delay is
    ``schedule[attempt]`` with ±:data:`JITTER` drawn from ``rng`` (the same draws give
    the same times); ``retry_after_s`` (pass it only for RETRY_AFTER) is a lower
    bound, capped at ``max_retry_after_s``: the receiver decides "not before", the
    schedule still decides how many attempts there are.
    """
    if attempt < 0:
        raise ValueError(f"attempt must not be negative: {attempt}")
    if attempt >= len(schedule):
        return None
    delay_ms = round(schedule[attempt] * (1 + rng.uniform(-JITTER, JITTER)))
    if retry_after_s is not None:
        wait_s = min(max(retry_after_s, 0.0), max_retry_after_s)
        delay_ms = max(delay_ms, math.ceil(wait_s * SECOND_MS))
    return now_ms + delay_ms


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: delay-seconds or an HTTP-date.

    ``None`` for an absent or unreadable value (then the schedule alone applies). A
    date in the past gives ``0.0``. RFC 9110 section 10.2.3.
    """
    if value is None or not value.strip():
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(int(text)) if len(text) <= _MAX_DELAY_DIGITS else math.inf
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # asctime form: HTTP dates are always GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now_s)
