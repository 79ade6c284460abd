"""``kind: threshold`` — an instant limit on each valid reading, with hysteresis.

```yaml
- id: nh3-slip
  kind: threshold
  metric: nh3
  limit: 8
  unit: mg/m3         # optional; limits are always in the metric's catalogue unit
  clear: 6            # optional hysteresis: back to normal at or below this
  direction: above    # or below (e.g. a pH floor)
```

Per device: a finding when the breach state changes (a reading beyond the limit
while not in breach; a reading back within ``clear`` while in breach). Readings
whose flag is not in ``valid_flags``, or covered by an invalid data mark in force
when they arrive (:class:`~rules.kinds.base.InstantMarks`), are skipped. Late
readings do not exist for an instant rule: each reading is judged when it arrives,
in stream order.
"""

from __future__ import annotations

from typing import Literal

from pydantic import field_validator, model_validator

from rules.kinds.base import (
    InstantMarks,
    LimitFields,
    PackContext,
    RuleSpec,
    check_unit,
    device_scope,
)
from rules.model import JSON, Finding, Obs, Verdict
from smartpark.catalogue import check_metric


class ThresholdSpec(RuleSpec, LimitFields):
    kind: Literal["threshold"]
    metric: str
    unit: str | None = None  # optional: must be the metric's catalogue unit

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @model_validator(mode="after")
    def _unit(self) -> ThresholdSpec:
        check_unit(self.metric, self.unit)
        return self

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})


class ThresholdEvaluator(InstantMarks):
    def __init__(self, spec: ThresholdSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._breaching: dict[str, bool] = {}  # scope key -> in breach

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        if obs.quality not in self.spec.valid_flags or self.marked(obs):
            return []
        scope = device_scope(obs, metric=obs.metric)
        was = self._breaching.get(scope.key, False)
        limits = self.spec.limits_for(scope)
        now = limits.next_state(was, obs.value)
        if now == was:
            return []
        self._breaching[scope.key] = now
        return [
            Finding(
                scope,
                obs.ts_ms,
                Verdict.BREACH if now else Verdict.OK,
                obs.value,
                evidence={"reading": obs.to_json(), **limits.evidence()},
            )
        ]

    def advance(self, watermark_ms: int) -> list[Finding]:
        return []

    def snapshot(self) -> JSON:
        return {"breaching": dict(sorted(self._breaching.items()))}

    def restore(self, state: JSON) -> None:
        self._breaching = dict(state["breaching"])
