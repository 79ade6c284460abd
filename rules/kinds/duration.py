"""``kind: duration`` — a metric beyond its limit continuously for a while.

```yaml
- id: flue-temp-high
  kind: duration
  metric: flue_temperature
  limit: 180
  clear: 170         # optional hysteresis: back to normal at or below this
  direction: above   # or below
  for: 30min         # how long, in event time
  max_gap: 5min      # optional; default: the `for` duration
```

Contract, per device (see also :mod:`rules.kinds.base`):

- A *run* starts at a valid reading beyond ``limit`` and goes on while the following
  readings are valid, beyond ``limit`` and no more than ``max_gap`` apart. The reading
  that makes the run last ``for`` (its time - the run's first reading's time ≥
  ``for``) gives a BREACH finding at its own time. Once in breach, a valid reading
  back within ``clear`` (default: the limit) gives an OK finding.
- A reading whose flag is not in ``valid_flags`` or that an invalid data mark in
  force covers when it arrives (:class:`~rules.kinds.base.InstantMarks`: a
  start-up is not a breach lasting ``for``), a reading within the limit, or a
  gap longer than ``max_gap`` ends the run (the reading after a gap may start a new
  one). None of these resolves a breach: only a valid reading within ``clear`` shows
  the condition ended.
- Order: readings are judged as they arrive. A reading older than the newest one
  seen for the device is dropped and counted in ``dropped_late``; one at the same
  time is a duplicate and ignored (the first one wins). Per-device disorder is rare
  (a logger sends in order) and a run over reordered readings would be guesswork.
  The watermark is not used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rules.kinds.base import (
    InstantMarks,
    LimitFields,
    Limits,
    PackContext,
    RuleSpec,
    check_unit,
    device_scope,
    parse_duration,
)
from rules.model import JSON, Finding, Obs, Verdict
from smartpark.catalogue import check_metric


class DurationSpec(RuleSpec, LimitFields):
    kind: Literal["duration"]
    metric: str
    unit: str | None = None
    for_ms: int = Field(alias="for")
    max_gap: int | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("for_ms", mode="before")
    @classmethod
    def _for(cls, value: Any) -> int:
        return parse_duration(value)

    @field_validator("max_gap", mode="before")
    @classmethod
    def _gap(cls, value: Any) -> int | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _unit(self) -> DurationSpec:
        check_unit(self.metric, self.unit)
        return self

    @property
    def gap_ms(self) -> int:
        return self.for_ms if self.max_gap is None else self.max_gap

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})


@dataclass(slots=True)
class _Device:
    """One device's state: the newest time seen, the breach and the current run."""

    newest: int | None = None
    breaching: bool = False
    run_start: int | None = None  # None: no run
    run_last: int = 0
    run_n: int = 0
    run_peak: float = 0.0

    def start_run(self, ts_ms: int, value: float) -> None:
        self.run_start, self.run_last, self.run_n, self.run_peak = (
            ts_ms,
            ts_ms,
            0,
            value,
        )


class DurationEvaluator(InstantMarks):
    def __init__(self, spec: DurationSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._devices: dict[str, _Device] = {}  # scope key -> state

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        spec = self.spec
        scope = device_scope(obs, metric=obs.metric)
        dev = self._devices.setdefault(scope.key, _Device())
        if dev.newest is not None and obs.ts_ms <= dev.newest:
            if obs.ts_ms < dev.newest:
                self.dropped_late += 1
            return []
        dev.newest = obs.ts_ms
        if obs.quality not in spec.valid_flags or self.marked(obs):
            dev.run_start = None
            return []
        limits = spec.limits_for(scope)
        if dev.breaching:
            if limits.next_state(True, obs.value):
                return []
            dev.breaching, dev.run_start = False, None
            evidence = {"reading": obs.to_json(), **self._limit(limits)}
            return [Finding(scope, obs.ts_ms, Verdict.OK, obs.value, evidence=evidence)]
        if not limits.next_state(False, obs.value):
            dev.run_start = None
            return []
        if dev.run_start is None or obs.ts_ms - dev.run_last > spec.gap_ms:
            dev.start_run(obs.ts_ms, obs.value)
        assert dev.run_start is not None
        worse = max if spec.direction == "above" else min
        dev.run_last, dev.run_n = obs.ts_ms, dev.run_n + 1
        dev.run_peak = worse(dev.run_peak, obs.value)
        if obs.ts_ms - dev.run_start < spec.for_ms:
            return []
        evidence = {
            "reading": obs.to_json(),
            "run": {
                "start_ms": dev.run_start,
                "duration_ms": obs.ts_ms - dev.run_start,
                "readings": dev.run_n,
                "peak": dev.run_peak,
            },
            **self._limit(limits),
        }
        dev.breaching, dev.run_start = True, None
        return [Finding(scope, obs.ts_ms, Verdict.BREACH, obs.value, evidence=evidence)]

    def _limit(self, limits: Limits) -> JSON:
        return {
            **limits.evidence(),
            "for_ms": self.spec.for_ms,
            "max_gap_ms": self.spec.gap_ms,
        }

    def advance(self, watermark_ms: int) -> list[Finding]:
        return []

    def snapshot(self) -> JSON:
        return {
            "dropped_late": self.dropped_late,
            "devices": {k: asdict(v) for k, v in sorted(self._devices.items())},
        }

    def restore(self, state: JSON) -> None:
        self.dropped_late = state["dropped_late"]
        self._devices = {k: _Device(**v) for k, v in state["devices"].items()}
