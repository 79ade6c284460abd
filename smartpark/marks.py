"""Data marks: the kinds of marked period and what each means (pure, no I/O).

A mark says that a device's data over a period (every metric, or one) was taken
while the plant or the analyser was not in its normal state: start-up, shutdown,
maintenance, calibration, a fault. Data in a period marked ``invalid`` is not used
to judge an exceedance, to count compliant hours or in coverage's validity rate.

- **Manual** marks are entered by the enterprise or an operator (the ``marks``
  table, migration 0010), append-only, and reviewed by a regulator.
- **Automatic** marks are the data's own HJ 212 flags: a run of readings of one
  series carrying the same non-N flag is one marked period (derived from stored
  telemetry when asked, never stored). Every automatic mark is invalid: the
  platform counts only N readings as valid.

This module holds the vocabulary both share: the kinds, which kinds are invalid
unless the person says otherwise, and which kind each HJ 212 flag is.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum

from smartpark.wire import Quality


class MarkKind(StrEnum):
    """The kinds of marked period (the ``marks.kind`` CHECK of migration 0010)."""

    STARTUP = "startup"
    SHUTDOWN = "shutdown"
    PLANNED_MAINTENANCE = "planned_maintenance"
    MAINTENANCE = "maintenance"
    CALIBRATION = "calibration"
    FAULT = "fault"
    OUT_OF_RANGE = "out_of_range"
    COMMS_FAULT = "comms_fault"
    STOPPED = "stopped"
    OTHER = "other"


class Origin(StrEnum):
    """Who made a mark: a person of the enterprise or of the park's operation
    centre (stored), or the data's own flags (derived)."""

    ENTERPRISE = "enterprise"
    OPERATOR = "operator"
    AUTOMATIC = "automatic"


# Whether data in a period of each kind is invalid when the person entering the
# mark does not say; ``other`` has no default: whoever enters it must say.
INVALID_BY_DEFAULT: dict[MarkKind, bool | None] = {
    kind: (None if kind is MarkKind.OTHER else True) for kind in MarkKind
}

# The mark kind of each HJ 212 data flag other than N. ``S`` (a value set by
# hand, not measured) has no kind of its own: ``other``, with the flag kept.
FLAG_KINDS: dict[Quality, MarkKind] = {
    Quality.STOPPED: MarkKind.STOPPED,
    Quality.MAINTENANCE: MarkKind.MAINTENANCE,
    Quality.MANUAL: MarkKind.OTHER,
    Quality.FAULT: MarkKind.FAULT,
    Quality.CALIBRATION: MarkKind.CALIBRATION,
    Quality.OVER_RANGE: MarkKind.OUT_OF_RANGE,
    Quality.COMMS_FAULT: MarkKind.COMMS_FAULT,
}


def flags_of(kind: MarkKind) -> tuple[str, ...]:
    """The HJ 212 flags whose runs are automatic marks of ``kind`` (none for
    start-up, shutdown and planned maintenance, which only people mark)."""
    return tuple(sorted(q.value for q, k in FLAG_KINDS.items() if k is kind))


def kind_of_flag(flag: str) -> MarkKind:
    """The mark kind of a non-N HJ 212 flag; ValueError for N or an unknown flag."""
    quality = Quality(flag)
    if quality is Quality.NORMAL:
        raise ValueError("N (normal) data is not marked")
    return FLAG_KINDS[quality]


def resolve_invalid(kind: MarkKind, invalid: bool | None) -> bool:
    """Whether a new manual mark's data is invalid: as the person said, else the
    kind's default. ValueError when the kind has no default and nothing was said."""
    if invalid is not None:
        return invalid
    default = INVALID_BY_DEFAULT[kind]
    if default is None:
        raise ValueError(
            f"kind {kind.value!r} has no default: say whether the data is invalid"
        )
    return default


def period_problem(start: datetime, end: datetime, longest: timedelta) -> str | None:
    """Why ``[start, end)`` cannot be a mark's period, or None if it can: both
    ends aware, ``end`` after ``start``, at most ``longest`` long."""
    for name, t in (("start", start), ("end", end)):
        if t.tzinfo is None or t.utcoffset() is None:
            return f"{name}: needs a UTC offset (e.g. +08:00 or Z)"
    if end <= start:
        return "end: must be after start"
    if end - start > longest:
        days = longest / timedelta(days=1)
        return (
            f"end: a mark may span at most {days:g} days (this one spans"
            f" {(end - start) / timedelta(days=1):.1f}); split a longer period"
            " into several marks, each with its reason"
        )
    return None


def clip(
    start: datetime, end: datetime, lo: datetime, hi: datetime
) -> tuple[datetime, datetime] | None:
    """``[start, end)`` clipped to ``[lo, hi)``; None if they do not overlap."""
    a, b = max(start, lo), min(end, hi)
    return (a, b) if a < b else None
