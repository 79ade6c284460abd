"""Consumption from cumulative counters over local calendar periods (ratio, quota).

An input of a consumption rule is written::

```yaml
metric: active_energy
device: "pot-line-*"
coefficient: {set: tce-gbt2589, key: electricity_kwh}
```

``metric`` must be a catalogue *counter* (a meter register); ``device`` is a shell
pattern (default ``*``); ``coefficient`` (optional, see
:mod:`rules.kinds.coefficients`) converts the amount, e.g. kWh to kgce.

Contract — the consumption of a series (one device's metric) over a period is the sum
of the differences of its consecutive valid readings:

- Consecutive means in stream order within the series. A reading not newer than the
  series' last one is ignored: an equal time is a duplicate (the edge outbox
  delivers at least once), an older one is counted in ``dropped_late`` — its
  neighbours are gone, so it cannot be placed. A device's readings reach the rules
  in time order (one device, one partition, the edge outbox keeps order), so a
  *late* reading in the engine's sense (behind the watermark) is still in order in
  its series.
- A step is attributed to the period of its later reading, also when it spans a
  boundary (simple and deterministic; a step across local midnight counts for the
  new day). The first reading of a series is a baseline and contributes nothing.
- A step onto a reading flagged ``reset`` (rollover or replacement), or a step
  backwards without a flag (defensive), contributes nothing: the consumption of
  that step is unknown. Such steps are counted as ``discontinuities`` in the
  evidence; a period with any is a lower bound.
- Only readings whose flag is in ``valid_flags`` count. A reset flag on an invalid
  reading (a meter swapped during maintenance, flag M) still breaks the series: the
  next valid step is a discontinuity.
- Periods (``day``, ``month``, ``year``) start at local midnight, on the local first
  of the month and of the year, in the pack's time zone.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal, NamedTuple
from zoneinfo import ZoneInfo

from pydantic import field_validator, model_validator

from rules.kinds.base import StrictModel
from rules.kinds.coefficients import CoefficientRef
from rules.model import JSON, Obs
from smartpark.catalogue import METRICS, Kind, check_metric

PeriodName = Literal["day", "month", "year"]


class Periods:
    """Local calendar periods as ``[start_ms, end_ms)`` in UTC milliseconds."""

    def __init__(self, name: PeriodName, tz: ZoneInfo) -> None:
        self.name = name
        self.tz = tz
        self._last = (0, 0)  # a cache: readings mostly fall in the same period

    def of(self, ts_ms: int) -> tuple[int, int]:
        start, end = self._last
        if start <= ts_ms < end:
            return self._last
        local = datetime.fromtimestamp(ts_ms // 1000, self.tz)
        first = local.replace(hour=0, minute=0, second=0, microsecond=0)
        if self.name != "day":
            first = first.replace(day=1)
        if self.name == "year":
            first = first.replace(month=1)
        start = round(first.timestamp() * 1000)
        self._last = (start, self.end(start))
        return self._last

    def end(self, start_ms: int) -> int:
        """The end of the period starting at ``start_ms`` (the next one's start)."""
        first = datetime.fromtimestamp(start_ms // 1000, self.tz)
        if self.name == "day":
            date = first.date() + timedelta(days=1)
            nxt = datetime(date.year, date.month, date.day, tzinfo=self.tz)
        elif self.name == "month":
            year, month = divmod(first.year * 12 + first.month, 12)
            nxt = datetime(year, month + 1, 1, tzinfo=self.tz)
        else:
            nxt = datetime(first.year + 1, 1, 1, tzinfo=self.tz)
        return round(nxt.timestamp() * 1000)


def check_counter(name: str) -> str:
    check_metric(name)
    if METRICS[name].kind is not Kind.COUNTER:
        raise ValueError(f"{name} is a gauge; consumption needs a counter")
    return name


class CounterInput(StrictModel):
    """One input of a consumption rule: a counter metric of matching devices."""

    metric: str
    device: str = "*"
    coefficient: CoefficientRef | None = None

    @field_validator("metric")
    @classmethod
    def _counter(cls, value: str) -> str:
        return check_counter(value)

    @model_validator(mode="after")
    def _per(self) -> CounterInput:
        if self.coefficient is not None:
            self.coefficient.check_per(self.metric)
        return self

    def matches(self, obs: Obs) -> bool:
        return obs.metric == self.metric and (
            self.device == "*" or fnmatch.fnmatchcase(obs.device, self.device)
        )


class StepStatus(StrEnum):
    SKIP = "skip"  # invalid flag or a duplicate: nothing happened
    OLDER = "older"  # older than the series' last reading: ignored, counted
    FIRST = "first"  # the series' first reading: a baseline
    DELTA = "delta"  # a step with a known consumption
    BREAK = "break"  # a step across a discontinuity: consumption unknown


class Step(NamedTuple):
    status: StepStatus
    delta: float = 0.0


class Counters:
    """The last valid reading of every counter series, in stream order."""

    def __init__(self, valid_flags: tuple[str, ...]) -> None:
        self.valid_flags = valid_flags
        # series key -> [ts_ms, value, broken by a reset on an invalid reading]
        self._last: dict[str, list[float | int | bool]] = {}

    def step(self, obs: Obs) -> Step:
        """The step ``obs`` makes in its series (and remember it)."""
        key = f"{obs.park}/{obs.enterprise}/{obs.device}/{obs.metric}"
        last = self._last.get(key)
        if last is not None and obs.ts_ms <= last[0]:
            return Step(StepStatus.OLDER if obs.ts_ms < last[0] else StepStatus.SKIP)
        if obs.quality not in self.valid_flags:
            if last is not None and obs.reset is not None:
                last[2] = True
            return Step(StepStatus.SKIP)
        self._last[key] = [obs.ts_ms, obs.value, False]
        if last is None:
            return Step(StepStatus.FIRST)
        if last[2] or obs.reset is not None or obs.value < last[1]:
            return Step(StepStatus.BREAK)
        return Step(StepStatus.DELTA, obs.value - float(last[1]))

    def snapshot(self) -> JSON:
        return dict(sorted(self._last.items()))

    def restore(self, state: JSON) -> None:
        self._last = {k: list(v) for k, v in state.items()}


@dataclass(slots=True)
class Tally:
    """The consumption of one input (or side) over one period and scope, in the
    rule's unit, with the steps behind it."""

    amount: float = 0.0
    steps: int = 0
    discontinuities: int = 0
    by_device: dict[str, float] = field(default_factory=dict)

    def add(self, device: str, step: Step, factor: float) -> float:
        """Count ``step`` of ``device``; the amount it adds."""
        self.steps += 1
        added = step.delta * factor if step.status is StepStatus.DELTA else 0.0
        if step.status is StepStatus.BREAK:
            self.discontinuities += 1
        self.amount += added
        self.by_device[device] = self.by_device.get(device, 0.0) + added
        return added

    def to_json(self) -> JSON:
        return {
            "amount": self.amount,
            "steps": self.steps,
            "discontinuities": self.discontinuities,
            "by_device": dict(sorted(self.by_device.items())),
        }

    @classmethod
    def from_json(cls, state: JSON) -> Tally:
        return cls(
            state["amount"],
            state["steps"],
            state["discontinuities"],
            dict(state["by_device"]),
        )
