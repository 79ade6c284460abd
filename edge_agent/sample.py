"""What a poll produces, and the clock the agent reads time from.

A :class:`Sample` is one canonical reading before the outbox gives it a sequence
number: the metric's catalogue unit, a finite value, the event time in UTC ms, and
for a counter that does not continue from its previous reading the reason
(``reset``, set by :class:`edge_agent.counters.CounterGuard`). ``data_type`` and
``stat`` name the series (``dt`` and ``stat`` in :mod:`smartpark.wire`): a meter's
reading and an HJ 212 real-time value are ``realtime``/``value``; a logger's
interval data says which interval and which of its values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from smartpark.wire import DataType, Quality, Stat

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC ``datetime``; injected for tests."""


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_ms(moment: datetime) -> int:
    """Integer UTC milliseconds, as on the wire."""
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, slots=True)
class Sample:
    metric: str
    value: float
    unit: str
    ts_ms: int
    quality: str = Quality.NORMAL.value
    reset: str | None = None  # a smartpark.wire.Reset value, counters only
    data_type: str = DataType.REALTIME.value
    stat: str = Stat.VALUE.value
