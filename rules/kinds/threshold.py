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
when they arrive (:class:`~rules.kinds.base.InstantMarks`), are skipped.

Each device's readings are judged in time order, as in the ``duration`` and
``rate`` kinds: a reading not newer than the newest one seen for its device and
metric is not judged. One at the same time is a duplicate and ignored (the first
one wins); an older one is dropped and counted in ``dropped_late``. That count
includes readings an edge agent sends again after a lost connection (what the
broker acknowledged within ``publish.resend_window_s``: a broker killed before
its autosave loses it), which are older than the newest reading whenever newer
ones got through: judging such an old breach again would open its alert a second
time. A breach in a genuinely late reading is still judged by the windowed kinds,
which take late readings within ``allowed_lateness``.
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
        self._newest: dict[str, int] = {}  # scope key -> newest reading time seen

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        scope = device_scope(obs, metric=obs.metric)
        newest = self._newest.get(scope.key)
        if newest is not None and obs.ts_ms <= newest:
            if obs.ts_ms < newest:
                self.dropped_late += 1
            return []
        self._newest[scope.key] = obs.ts_ms
        if obs.quality not in self.spec.valid_flags or self.marked(obs):
            return []
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
        return {
            "breaching": dict(sorted(self._breaching.items())),
            "newest": dict(sorted(self._newest.items())),
            "dropped_late": self.dropped_late,
        }

    def restore(self, state: JSON) -> None:
        self._breaching = dict(state["breaching"])
        # Absent in snapshots taken before readings were judged in time order.
        self._newest = dict(state.get("newest", {}))
        self.dropped_late = state.get("dropped_late", 0)
