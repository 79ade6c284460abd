"""Tumbling event-time windows for :mod:`rules.kinds.window`: alignment, one device's
readings in one window, the reference-O2 correction and the window's summary.

Pure helpers, no clock. A :class:`Bucket` holds the raw readings of one device in
one window (the rule's metric and, with an O2 correction, the O2 metric), keyed by
event time, so a late reading can re-aggregate it and a duplicate is recognised.
Aggregation always runs in event-time order, so a bucket rebuilt from a snapshot
gives bit-identical floats.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from pydantic import field_validator

from rules.kinds.base import StrictModel
from rules.marks import Mark
from rules.model import JSON, Obs
from smartpark.catalogue import METRICS, check_metric

DAY_MS = 86_400_000
SAMPLES = 3  # evidence keeps the first and last few readings used, not all of them


def window_of(ts_ms: int, size_ms: int, tz: ZoneInfo) -> tuple[int, int]:
    """``(start_ms, end_ms)`` of the window holding ``ts_ms``.

    Sub-day sizes (which divide a day evenly) are aligned to the Unix epoch, i.e. to
    UTC midnight; ``1d`` windows run from local midnight to local midnight in ``tz``
    (23 or 25 hours on a daylight-saving change).
    """
    if size_ms < DAY_MS:
        start = ts_ms - ts_ms % size_ms
        return start, start + size_ms
    day = datetime.fromtimestamp(ts_ms // 1000, tz).date()
    midnight = datetime.combine(day, time(), tzinfo=tz)
    next_midnight = datetime.combine(day + timedelta(days=1), time(), tzinfo=tz)
    return round(midnight.timestamp()) * 1000, round(next_midnight.timestamp()) * 1000


def fmt_ms(ms: int) -> str:
    """``3_600_000`` → ``"1h"``: a duration as a pack would write it."""
    for unit, size in (("d", DAY_MS), ("h", 3_600_000), ("min", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


class O2Correction(StrictModel):
    reference: float  # O2 % the limit is stated at
    o2_metric: str = "o2"

    @field_validator("reference")
    @classmethod
    def _reference(cls, value: float) -> float:
        if not 0 <= value < 21:
            raise ValueError(f"the reference O2 must be in [0, 21) %, got {value:g}")
        return value

    @field_validator("o2_metric")
    @classmethod
    def _o2_metric(cls, value: str) -> str:
        unit = METRICS[check_metric(value)].unit
        if unit != "%":
            raise ValueError(
                f"{value!r} is not an O2 reading in % (its unit is {unit})"
            )
        return value


def o2_correct(value: float, o2: float, reference: float) -> float:
    """``C * (21 - O2_ref) / (21 - O2_measured)`` (O2 in %)."""
    return value * (21 - reference) / (21 - o2)


Reading = tuple[float, str]  # (value, quality flag)


@dataclass(slots=True)
class Bucket:
    """One device's readings in one window, and how the window was last judged.

    ``prior`` is the device's breach state before the window was first judged, so a
    revision applies the same hysteresis the first verdict did.
    """

    start_ms: int
    end_ms: int
    readings: dict[int, Reading] = field(default_factory=dict)
    o2: dict[int, Reading] = field(default_factory=dict)
    duplicates: int = 0
    closed: bool = False
    verdict: str | None = None
    value: float | None = None
    prior: bool = False

    def add(self, obs: Obs, *, is_o2: bool) -> bool:
        """Keep ``obs`` unless a reading of its metric at its time is already here
        (the first one wins); whether it was kept."""
        target = self.o2 if is_o2 else self.readings
        if obs.ts_ms in target:
            self.duplicates += 1
            return False
        target[obs.ts_ms] = (obs.value, obs.quality)
        return True

    def to_json(self) -> JSON:
        return {
            "start": self.start_ms,
            "end": self.end_ms,
            "readings": [[t, v, q] for t, (v, q) in sorted(self.readings.items())],
            "o2": [[t, v, q] for t, (v, q) in sorted(self.o2.items())],
            "duplicates": self.duplicates,
            "closed": self.closed,
            "verdict": self.verdict,
            "value": self.value,
            "prior": self.prior,
        }

    @classmethod
    def from_json(cls, data: JSON) -> Bucket:
        return cls(
            start_ms=data["start"],
            end_ms=data["end"],
            readings={t: (v, q) for t, v, q in data["readings"]},
            o2={t: (v, q) for t, v, q in data["o2"]},
            duplicates=data["duplicates"],
            closed=data["closed"],
            verdict=data["verdict"],
            value=data["value"],
            prior=data["prior"],
        )


@dataclass(slots=True)
class Summary:
    """The valid values of a bucket (corrected when asked) and why others were not."""

    values: list[float]
    counts: dict[str, int]
    evidence: JSON

    def aggregate(self, how: str) -> float | None:
        if not self.values:
            return None
        if how == "mean":
            return math.fsum(self.values) / len(self.values)
        if how == "sum":
            return math.fsum(self.values)
        return min(self.values) if how == "min" else max(self.values)


# (is the O2 reading, event time) -> the invalid mark covering that reading, if any
Marked = Callable[[bool, int], Mark | None]


def summarise(
    bucket: Bucket,
    valid_flags: tuple[str, ...],
    correction: O2Correction | None,
    marked: Marked | None = None,
) -> Summary:
    """Valid values of ``bucket`` in event-time order, with counts of the readings
    left out: by their flag, by an invalid data mark (``excluded_mark``, and the
    marks' ids in ``marks``; both only when a mark excluded something), for want of
    an O2 partner at the same event time, for an O2 partner whose flag is not valid
    or that a mark covers, or an O2 outside ``[0, 21)`` %."""
    counts = {"readings": len(bucket.readings), "excluded_flag": 0}
    if correction is not None:
        counts |= {"no_o2": 0, "o2_excluded_flag": 0, "o2_out_of_range": 0}
    counts["duplicates"] = bucket.duplicates
    used: list[tuple[int, float, float | None, float]] = []  # ts, raw, o2, value
    marks: set[int] = set()

    def is_marked(is_o2: bool, ts: int) -> bool:
        mark = None if marked is None else marked(is_o2, ts)
        if mark is None:
            return False
        marks.add(mark.id)
        name = "o2_excluded_mark" if is_o2 else "excluded_mark"
        counts[name] = counts.get(name, 0) + 1
        return True

    for ts, (raw, flag) in sorted(bucket.readings.items()):
        if flag not in valid_flags:
            counts["excluded_flag"] += 1
            continue
        if is_marked(False, ts):
            continue
        if correction is None:
            used.append((ts, raw, None, raw))
            continue
        partner = bucket.o2.get(ts)
        if partner is None:
            counts["no_o2"] += 1
        elif partner[1] not in valid_flags:
            counts["o2_excluded_flag"] += 1
        elif is_marked(True, ts):
            pass
        elif not 0 <= partner[0] < 21:
            counts["o2_out_of_range"] += 1
        else:
            o2 = partner[0]
            used.append((ts, raw, o2, o2_correct(raw, o2, correction.reference)))
    counts["valid"] = len(used)
    counts["invalid"] = counts["readings"] - len(used)
    evidence: JSON = {"counts": counts}
    if marks:
        evidence["marks"] = sorted(marks)
    if used:
        raws = [u[1] for u in used]
        evidence["raw"] = {"min": min(raws), "max": max(raws)}
        picked = used if len(used) <= 2 * SAMPLES else used[:SAMPLES] + used[-SAMPLES:]
        if correction is None:
            evidence["samples"] = [
                {"ts_ms": ts, "raw": raw} for ts, raw, _, _ in picked
            ]
        else:
            values = [u[3] for u in used]
            o2s = [u[2] for u in used if u[2] is not None]
            evidence["corrected"] = {"min": min(values), "max": max(values)}
            evidence["o2"] = {"min": min(o2s), "max": max(o2s)}
            evidence["samples"] = [
                {"ts_ms": ts, "raw": raw, "o2": o2, "corrected": c}
                for ts, raw, o2, c in picked
            ]
    return Summary([u[3] for u in used], counts, evidence)
