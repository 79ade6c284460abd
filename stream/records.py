"""Decoding a telemetry record as every consumer of the telemetry topic does.

The sink stores what this accepts and dead-letters what it refuses; the rules
runner evaluates what it accepts and counts what it refuses. Both must agree, so
both call :func:`decode_record`.
"""

from __future__ import annotations

import orjson

from smartpark import wire_fast
from smartpark.wire import Decoded

# The bridge already refused readings from the future with its own clock; this check
# only guards against a consumer's clock far behind (replays are in the past).
MAX_FUTURE_MS = 24 * 3600 * 1000


def decode_record(value: bytes, *, now_ms: int) -> Decoded:
    """Decode one telemetry record's value, one device's batch or a gateway's
    (:class:`PayloadError` if it is bad)."""
    return wire_fast.decode(
        value, now_ms=now_ms, max_future_ms=MAX_FUTURE_MS, loads=orjson.loads
    )
