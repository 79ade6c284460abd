"""The values the rule core works with: observations in, findings and alert events out.

Everything here is plain data, JSON-able, and free of I/O and clocks. Time is
event time in UTC milliseconds, as on the wire.

- :class:`Obs` is one reading as the rules see it (a :class:`smartpark.wire.Reading`
  with the park, enterprise and device it belongs to).
- A rule kind turns observations into :class:`Finding` values: a verdict about one
  :class:`Scope` at one point of event time (an instant, or a closed window).
- The engine turns findings into :class:`AlertEvent` values: the alert lifecycle
  (opened, resolved), revisions of closed windows, and "insufficient data".

Identifiers are deterministic: the same rule version, scope and event time give the
same ``alert_id`` and ``event_id`` live, after a restart and in a replay, so a
consumer can de-duplicate by them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple

JSON = dict[str, Any]


class Obs(NamedTuple):
    """One reading: where it comes from, what it measures, when (event time)."""

    ts_ms: int
    park: str
    enterprise: str
    device: str
    metric: str
    value: float
    quality: str = "N"
    seq: int = 0
    reset: str | None = None  # a counter discontinuity (smartpark.wire.Reset)
    data_type: str = "realtime"  # the series (smartpark.wire.DataType, "dt")
    stat: str = "value"  # which value of an interval (smartpark.wire.Stat)

    def to_json(self) -> JSON:
        out: JSON = {
            "ts_ms": self.ts_ms,
            "park": self.park,
            "enterprise": self.enterprise,
            "device": self.device,
            "metric": self.metric,
            "value": self.value,
            "q": self.quality,
            "seq": self.seq,
        }
        if self.reset is not None:
            out["reset"] = self.reset
        if self.data_type != "realtime":
            out["dt"] = self.data_type
        if self.stat != "value":
            out["stat"] = self.stat
        return out


@dataclass(frozen=True, slots=True, order=True)
class Scope:
    """What a finding or an alert is about; ``None`` parts are "all of them"
    (an enterprise-wide quota has no device, a device-offline rule no metric)."""

    park: str
    enterprise: str | None = None
    device: str | None = None
    metric: str | None = None

    @property
    def key(self) -> str:
        return "/".join(
            p or "*" for p in (self.park, self.enterprise, self.device, self.metric)
        )

    def to_json(self) -> JSON:
        return {
            "park": self.park,
            "enterprise": self.enterprise,
            "device": self.device,
            "metric": self.metric,
        }


@dataclass(frozen=True, slots=True, order=True)
class Window:
    """``[start_ms, end_ms)`` in event time."""

    start_ms: int
    end_ms: int

    def to_json(self) -> JSON:
        return {"start_ms": self.start_ms, "end_ms": self.end_ms}


class Verdict(StrEnum):
    BREACH = "breach"
    OK = "ok"
    INSUFFICIENT = "insufficient_data"  # too little valid data to judge: not "ok"


@dataclass(frozen=True, slots=True)
class Finding:
    """A rule kind's verdict about ``scope`` at event time ``at_ms``.

    ``at_ms`` is the reading's time for instant kinds and the window's end for
    windowed ones. ``revision`` marks a closed window judged again because a late
    reading changed its verdict or value. ``evidence`` is JSON-able: the values
    used, corrected values, the limit, the coefficient set...
    """

    scope: Scope
    at_ms: int
    verdict: Verdict
    value: float | None = None
    window: Window | None = None
    evidence: JSON = field(default_factory=dict)
    revision: bool = False


class EventKind(StrEnum):
    OPENED = "opened"
    RESOLVED = "resolved"
    REVISED = "revised"
    INSUFFICIENT_DATA = "insufficient_data"


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One event of an alert's life, as stored and produced to the alerts topic."""

    event_id: str
    alert_id: str
    kind: EventKind
    rule_id: str
    rule_version: str
    severity: str
    scope: Scope
    at_ms: int
    value: float | None
    window: Window | None
    evidence: JSON

    def to_json(self) -> JSON:
        return {
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "kind": self.kind.value,
            "rule_id": self.rule_id,
            "rule_version": self.rule_version,
            "severity": self.severity,
            "scope": self.scope.to_json(),
            "at_ms": self.at_ms,
            "value": self.value,
            "window": None if self.window is None else self.window.to_json(),
            "evidence": self.evidence,
        }

    def to_line(self) -> str:
        """One JSON line, keys sorted: byte-identical for equal events."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))


def stable_id(*parts: object) -> str:
    """A short, deterministic id of ``parts`` (24 hex digits of SHA-256)."""
    text = "\x1f".join("" if p is None else str(p) for p in parts)
    return hashlib.sha256(text.encode()).hexdigest()[:24]
