"""``kind: quota`` — cumulative consumption within a local calendar period.

```yaml
- id: water-daily
  kind: quota
  period: day                    # day | month | year (the pack's time zone)
  inputs: [{metric: water_volume, device: "*"}]
  limit: 1200                    # in `unit`
  unit: m3                       # optional without coefficients: the inputs' unit
  per: enterprise                # or device

- id: energy-monthly-tce
  kind: quota
  period: month
  unit: tce                      # required with coefficients
  limit: 5000
  inputs:
    - {metric: active_energy, coefficient: {set: tce-gbt2589, key: electricity_kwh}}
    - {metric: coal_mass, coefficient: {set: tce-gbt2589, key: raw_coal_kg, per: kg}}
```

Each input's consumption (:mod:`rules.kinds.consumption`) is converted to ``unit``
— through its coefficient (the set's unit, converted: kgce → tce) or, without one,
from its catalogue unit (which must convert to ``unit``) — and added to the running
total of the scope (``per: enterprise``: ``park/enterprise``; ``per: device``:
``park/enterprise/device``) for the period of the step. A reading matching several
inputs counts for the first only.

Data marks (:mod:`rules.marks`) are deliberately not applied here. A quota is
consumption, a difference of counter registers: energy and water drawn during a
start-up, a shutdown or a meter's maintenance were drawn all the same, and the
register read after the marked period carries them. Dropping marked steps would
under-count what the plant used and let a mark hide quota use; a marked reading
whose quality flag is not valid is already bridged by the counters (see
:mod:`rules.kinds.consumption`). What a mark excludes is *exceedance judgement of
measured values* (concentrations, temperatures...), the windowed and instant kinds'.

Contract:

- The reading whose step takes the total above ``limit`` is a BREACH finding at
  that reading's time (value: the total; window: the period), not only at the
  period's end. Equal to the limit is within it.
- A new period starts from 0. An open breach resolves at the boundary: an OK
  finding with ``at_ms`` = the new period's start, as soon as the scope has a step
  in a later period or the watermark reaches the boundary, whichever comes first.
- A crossing in an earlier period that is still open (another device of the
  enterprise lags) reads as it would have in order: BREACH at the reading, OK at
  the period's end. A crossing in a closed period still within
  ``allowed_lateness`` is a ``revision=True`` BREACH at the period's end (also an
  earlier open period while the scope is in breach for a later one); a late step
  that does not cross changes no verdict and gives no finding. Readings for periods
  beyond ``allowed_lateness`` are dropped and counted in ``dropped_late``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from rules.kinds.base import CoefficientUse, PackContext, RuleSpec
from rules.kinds.coefficients import conversion, unit_factor
from rules.kinds.consumption import (
    CounterInput,
    Counters,
    PeriodName,
    Periods,
    StepStatus,
    Tally,
)
from rules.model import JSON, Finding, Obs, Scope, Verdict, Window
from smartpark.catalogue import METRICS
from smartpark.yamlfile import located


class QuotaSpec(RuleSpec):
    kind: Literal["quota"]
    period: PeriodName
    inputs: tuple[CounterInput, ...] = Field(min_length=1)
    limit: float = Field(gt=0)
    unit: str | None = None
    per: Literal["enterprise", "device"] = "enterprise"

    @model_validator(mode="after")
    def _units(self) -> QuotaSpec:
        if self.unit is None and any(i.coefficient for i in self.inputs):
            raise located("a quota with coefficients needs its unit (e.g. tce)", "unit")
        target = self.target_unit
        for i, inp in enumerate(self.inputs):
            have = METRICS[inp.metric].unit
            if inp.coefficient is None and unit_factor(have, target) is None:
                raise located(
                    f"{inp.metric} is in {have!r}, which does not convert to the"
                    f" quota's {target!r} (a coefficient would)",
                    "inputs",
                    i,
                    "metric",
                )
        return self

    @property
    def target_unit(self) -> str:
        return self.unit or METRICS[self.inputs[0].metric].unit

    def metrics(self) -> frozenset[str]:
        return frozenset(i.metric for i in self.inputs)

    def selects(self, obs: Obs) -> bool:
        return super().selects(obs) and any(i.matches(obs) for i in self.inputs)

    def coefficient_refs(self) -> list[CoefficientUse]:
        return [
            CoefficientUse(("inputs", i, "coefficient"), ref.set, ref.key, self.unit)
            for i, inp in enumerate(self.inputs)
            if (ref := inp.coefficient) is not None
        ]


@dataclass(slots=True)
class _Period:
    end_ms: int
    inputs: list[Tally]
    total: float = 0.0
    over: bool = False

    def to_json(self) -> JSON:
        return {
            "end_ms": self.end_ms,
            "total": self.total,
            "over": self.over,
            "inputs": [t.to_json() for t in self.inputs],
        }

    @classmethod
    def from_json(cls, state: JSON) -> _Period:
        tallies = [Tally.from_json(t) for t in state["inputs"]]
        return cls(state["end_ms"], tallies, state["total"], state["over"])


@dataclass(slots=True)
class _Scope:
    latest: int  # the latest period with a reading
    open: int | None = None  # the period whose breach is open
    periods: dict[int, _Period] = field(default_factory=dict)


class QuotaEvaluator:
    def __init__(self, spec: QuotaSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._lateness = ctx.allowed_lateness_ms
        self._periods = Periods(spec.period, ctx.tz)
        self._unit = spec.target_unit
        self._conv = [
            conversion(i.metric, i.coefficient, self._unit, ctx.coefficients)
            for i in spec.inputs
        ]
        self._counters = Counters(spec.valid_flags)
        self._scopes: dict[str, _Scope] = {}
        self._open_ends: dict[str, int] = {}  # derived: scope key -> open period end

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        step = self._counters.step(obs)
        if step.status is StepStatus.SKIP:
            return []
        start, end = self._periods.of(obs.ts_ms)
        if step.status is StepStatus.OLDER or watermark_ms >= end + self._lateness:
            self.dropped_late += 1
            return []
        device = obs.device if self.spec.per == "device" else None
        key = Scope(obs.park, obs.enterprise, device).key
        sc = self._scopes.get(key)
        found: list[Finding] = []
        if sc is None:
            sc = self._scopes[key] = _Scope(start)
        elif start > sc.latest:
            found += self._resolve(key, sc)
            sc.latest = start
            for old in [s for s, p in sc.periods.items() if p.end_ms < start]:
                if watermark_ms >= sc.periods[old].end_ms + self._lateness:
                    del sc.periods[old]
        period = sc.periods.get(start)
        if period is None:
            period = sc.periods[start] = _Period(end, [Tally() for _ in self._conv])
        if step.status is StepStatus.FIRST:
            return found
        i = next(n for n, inp in enumerate(self.spec.inputs) if inp.matches(obs))
        added = period.inputs[i].add(obs.device, step, self._conv[i].factor)
        period.total += added
        if period.over or period.total <= self.spec.limit:
            return found
        period.over = True
        crossing = self._finding(key, start, period, obs.ts_ms, obs)
        if watermark_ms >= end or (start < sc.latest and sc.open is not None):
            before = period.total - added
            return [*found, self._revision(crossing, period, obs, before)]
        if start == sc.latest:
            sc.open = start
            self._open_ends[key] = end
            return [*found, crossing]
        # An earlier period still open: what an in-order stream would have given.
        return [*found, crossing, self._ok(key, start, period)]

    def advance(self, watermark_ms: int) -> list[Finding]:
        found: list[Finding] = []
        for key in sorted(k for k, e in self._open_ends.items() if e <= watermark_ms):
            found += self._resolve(key, self._scopes[key])
        return found

    def _resolve(self, key: str, sc: _Scope) -> list[Finding]:
        if sc.open is None:
            return []
        start, sc.open = sc.open, None
        del self._open_ends[key]
        return [self._ok(key, start, sc.periods[start])]

    def _ok(self, key: str, start: int, period: _Period) -> Finding:
        evidence = self._evidence(period)
        evidence["period_ended"] = True
        return Finding(
            _scope(key),
            period.end_ms,
            Verdict.OK,
            period.total,
            Window(start, period.end_ms),
            evidence,
        )

    def _finding(
        self, key: str, start: int, period: _Period, at_ms: int, obs: Obs
    ) -> Finding:
        evidence = {**self._evidence(period), "reading": obs.to_json()}
        window = Window(start, period.end_ms)
        return Finding(
            _scope(key), at_ms, Verdict.BREACH, period.total, window, evidence
        )

    def _revision(
        self, crossing: Finding, period: _Period, obs: Obs, before: float
    ) -> Finding:
        evidence = dict(crossing.evidence)
        del evidence["reading"]
        evidence["late_reading"] = obs.to_json()
        evidence["previous"] = {"verdict": Verdict.OK.value, "value": before}
        return Finding(
            crossing.scope,
            period.end_ms,
            Verdict.BREACH,
            crossing.value,
            crossing.window,
            evidence,
            revision=True,
        )

    def _evidence(self, period: _Period) -> JSON:
        inputs = [
            {
                "metric": inp.metric,
                "device": inp.device,
                **tally.to_json(),
                "coefficient": conv.coefficient,
            }
            for inp, tally, conv in zip(
                self.spec.inputs, period.inputs, self._conv, strict=True
            )
        ]
        return {
            "period": self.spec.period,
            "unit": self._unit,
            "total": period.total,
            "limit": self.spec.limit,
            "inputs": inputs,
            "lower_bound": any(t.discontinuities for t in period.inputs),
        }

    def snapshot(self) -> JSON:
        return {
            "dropped_late": self.dropped_late,
            "series": self._counters.snapshot(),
            "scopes": {
                key: {
                    "latest": sc.latest,
                    "open": sc.open,
                    "periods": {
                        str(s): p.to_json() for s, p in sorted(sc.periods.items())
                    },
                }
                for key, sc in sorted(self._scopes.items())
            },
        }

    def restore(self, state: JSON) -> None:
        self.dropped_late = state["dropped_late"]
        self._counters.restore(state["series"])
        self._scopes = {
            key: _Scope(
                s["latest"],
                s["open"],
                {int(k): _Period.from_json(p) for k, p in s["periods"].items()},
            )
            for key, s in state["scopes"].items()
        }
        self._open_ends = {
            key: sc.periods[sc.open].end_ms
            for key, sc in self._scopes.items()
            if sc.open is not None
        }


def _scope(key: str) -> Scope:
    park, enterprise, device, _ = key.split("/")
    return Scope(park, enterprise, None if device == "*" else device)
