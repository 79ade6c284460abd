"""``kind: rate_of_change`` — how fast a metric moves between consecutive readings.

```yaml
- id: kiln-temp-rise
  kind: rate_of_change
  metric: temperature
  limit: 20          # metric units per `per`: here 20 degC/min
  per: 1min
  change: rise       # rise | fall | either (default: either, |Δvalue/Δt|)
  clear: 15          # optional hysteresis: back to normal at or below this
  max_gap: 10min     # optional: readings farther apart are not differenced
  unit: degC         # optional; the metric's catalogue unit (not "degC/min")
```

Contract, per device (see also :mod:`rules.kinds.base`):

- The rate is ``(v2 - v1) / (t2 - t1) * per`` between a valid reading and the valid
  reading before it; the value compared with ``limit`` is ``|rate|`` (``either``),
  ``rate`` (``rise``) or ``-rate`` (``fall``). A finding when the breach state
  changes, at the reading's time, like ``threshold``; ``direction: below`` (a rate
  under the limit, e.g. a frozen analyser) mirrors it. ``limit`` must be positive.
- A reading whose flag is not in ``valid_flags``, or that an invalid data mark in
  force covers when it arrives (:class:`~rules.kinds.base.InstantMarks`), is
  skipped: the next valid reading is
  differenced with the last valid one. A gap longer than ``max_gap`` is not
  differenced; the later reading becomes the new base.
- Counters are allowed. A reading with ``reset`` set (rollover, meter replacement)
  is never differenced with the reading before it: it becomes the new base (or, if
  its flag is not valid, leaves no base), so a register jump is not a rate.
- Order: a reading older than the newest one seen for the device is dropped and
  counted in ``dropped_late``; one at the same time is a duplicate and ignored (the
  first one wins). The watermark is not used.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from pydantic import field_validator, model_validator

from rules.kinds.base import (
    InstantMarks,
    LimitFields,
    PackContext,
    RuleSpec,
    check_unit,
    device_scope,
    parse_duration,
)
from rules.model import JSON, Finding, Obs, Verdict
from smartpark.catalogue import check_metric
from smartpark.yamlfile import located


class RateSpec(RuleSpec, LimitFields):
    kind: Literal["rate_of_change"]
    metric: str
    unit: str | None = None
    per: int = 60_000
    change: Literal["rise", "fall", "either"] = "either"
    max_gap: int | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("per", "max_gap", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _consistent(self) -> RateSpec:
        check_unit(self.metric, self.unit)
        if self.limit <= 0:
            raise located(
                f"a rate limit must be positive, got {self.limit:g}"
                " (choose the sign with change: rise | fall)",
                "limit",
            )
        return self

    def metrics(self) -> frozenset[str]:
        return frozenset({self.metric})


@dataclass(slots=True)
class _Device:
    newest: int | None = None
    base_ts: int | None = None  # the last valid reading, None: nothing to difference
    base_value: float = 0.0
    breaching: bool = False


class RateEvaluator(InstantMarks):
    def __init__(self, spec: RateSpec, ctx: PackContext) -> None:
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
        valid = obs.quality in spec.valid_flags and not self.marked(obs)
        if obs.reset is not None:
            dev.base_ts = obs.ts_ms if valid else None
            dev.base_value = obs.value
            return []
        if not valid:
            return []
        base_ts, base_value = dev.base_ts, dev.base_value
        dev.base_ts, dev.base_value = obs.ts_ms, obs.value
        gap = None if base_ts is None else obs.ts_ms - base_ts
        if gap is None or (spec.max_gap is not None and gap > spec.max_gap):
            return []
        rate = (obs.value - base_value) / gap * spec.per
        compared = abs(rate) if spec.change == "either" else rate
        if spec.change == "fall":
            compared = -rate
        limits = spec.limits_for(scope)
        now = limits.next_state(dev.breaching, compared)
        if now == dev.breaching:
            return []
        dev.breaching = now
        evidence = {
            "reading": obs.to_json(),
            "previous": {"ts_ms": base_ts, "value": base_value},
            "dt_ms": gap,
            "rate": rate,
            "per_ms": spec.per,
            "change": spec.change,
            **limits.evidence(),
        }
        verdict = Verdict.BREACH if now else Verdict.OK
        return [Finding(scope, obs.ts_ms, verdict, compared, evidence=evidence)]

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
