"""``kind: ratio`` — consumption per unit of product within an enterprise and period.

```yaml
- id: al-liquid-ac-limit
  kind: ratio
  period: day                      # or month (local calendar, the pack's time zone)
  numerator: {metric: active_energy, device: "pot-line-*"}
  denominator: {metric: production_mass, device: "*cast*"}
  limit: 13700                     # e.g. a GB 21346-2013 level, written in the pack
  direction: above                 # LimitFields: also `clear` for hysteresis
  unit: kWh/t                      # optional; checked, see below
```

Per enterprise (scope ``park/enterprise``): the numerator is the consumption
(:mod:`rules.kinds.consumption`) of the matching counters summed over the
enterprise's matching devices, the denominator likewise (a reading matching both
sides counts for both); the ratio is their quotient. Either side may take a
``coefficient`` (``numerator: {metric: active_energy, coefficient: {set:
tce-gbt2589, key: electricity_kwh}}`` turns kWh into kgce; the evidence records the
set, its version and the value used).

Units: the natural unit is ``<numerator unit>/<denominator unit>`` — the catalogue
units, or the coefficient set's unit for a side with a coefficient (kWh/t,
kgce/t). ``unit`` may say another one only where a unit definition converts to it
(``tce/t``); anything else is refused at load.

Data marks (:mod:`rules.marks`) are not applied, for the reason given in
:mod:`rules.kinds.quota`: both sides are consumption (energy used, product made),
and a marked period's consumption is still consumption; dropping it would bias the
ratio either way.

Contract:

- A period closes when the watermark reaches its end: a finding at the period's
  end with the ratio, BREACH or OK (hysteresis across consecutive periods), or
  INSUFFICIENT when a side has no step in the period or the denominator is 0.
  From its first reading on, an enterprise gets a finding for every period, with
  one exception: while one side has never had a reading at all (its meters are not
  mapped: the rule's device patterns match none of the enterprise's devices), the
  first period is one INSUFFICIENT finding with ``config_warning: true`` and the
  reason, and the periods after it give nothing until that side reports: one
  configuration warning, not a verdict per period.
- Evidence: both sides' amounts, steps, discontinuities and per-device amounts;
  the limit; the coefficients. A side with discontinuities is a lower bound, so
  the ratio is then uncertain either way: ``discontinuities`` counts them all.
- A late reading (behind the watermark) for a closed period still within
  ``allowed_lateness`` re-judges it; a change of verdict or value is a
  ``revision=True`` finding at the period's end with the previous verdict, judged
  with the hysteresis state the first verdict had, changing nothing else. A period
  the enterprise had no finding for (it was first seen later) is reported as a
  revision with previous verdict ``None``. Readings for periods beyond
  ``allowed_lateness`` are dropped and counted in ``dropped_late``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import model_validator

from rules.kinds.base import CoefficientUse, LimitFields, PackContext, RuleSpec
from rules.kinds.coefficients import conversion, unit_factor
from rules.kinds.consumption import (
    CounterInput,
    Counters,
    Periods,
    StepStatus,
    Tally,
)
from rules.model import JSON, Finding, Obs, Scope, Verdict, Window
from smartpark.catalogue import METRICS
from smartpark.yamlfile import located


class RatioSpec(RuleSpec, LimitFields):
    kind: Literal["ratio"]
    period: Literal["day", "month"]
    numerator: CounterInput
    denominator: CounterInput
    unit: str | None = None

    @model_validator(mode="after")
    def _unit(self) -> RatioSpec:
        if self.unit is None:
            return self
        parts = self.unit.split("/")
        if len(parts) != 2 or not all(parts):
            raise located(f"unit {self.unit!r} is not '<unit>/<unit>'", "unit")
        for side, want in zip((self.numerator, self.denominator), parts, strict=True):
            have = METRICS[side.metric].unit
            if side.coefficient is None and unit_factor(have, want) is None:
                raise located(
                    f"unit {self.unit!r}: {side.metric} is in {have!r},"
                    f" which does not convert to {want!r}",
                    "unit",
                )
        return self

    def metrics(self) -> frozenset[str]:
        return frozenset({self.numerator.metric, self.denominator.metric})

    def selects(self, obs: Obs) -> bool:
        return super().selects(obs) and (
            self.numerator.matches(obs) or self.denominator.matches(obs)
        )

    def coefficient_refs(self) -> list[CoefficientUse]:
        wants = self.unit.split("/") if self.unit else [None, None]
        return [
            CoefficientUse((name, "coefficient"), ref.set, ref.key, want)
            for name, side, want in zip(
                ("numerator", "denominator"),
                (self.numerator, self.denominator),
                wants,
                strict=True,
            )
            if (ref := side.coefficient) is not None
        ]


@dataclass(slots=True)
class _Period:
    end_ms: int
    num: Tally = field(default_factory=Tally)
    den: Tally = field(default_factory=Tally)
    # once judged: [verdict, value, hysteresis state before the verdict]
    judged: list[str | float | bool | None] | None = None

    def to_json(self) -> JSON:
        return {
            "end_ms": self.end_ms,
            "num": self.num.to_json(),
            "den": self.den.to_json(),
            "judged": self.judged,
        }

    @classmethod
    def from_json(cls, state: JSON) -> _Period:
        return cls(
            state["end_ms"],
            Tally.from_json(state["num"]),
            Tally.from_json(state["den"]),
            state["judged"],
        )


@dataclass(slots=True)
class _Enterprise:
    next_ms: int  # the next period to judge
    next_end_ms: int
    breaching: bool = False
    periods: dict[int, _Period] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # sides ever read: num, den
    warned: bool = False  # the configuration warning was given


class RatioEvaluator:
    def __init__(self, spec: RatioSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._lateness = ctx.allowed_lateness_ms
        self._periods = Periods(spec.period, ctx.tz)
        num_unit, den_unit = spec.unit.split("/") if spec.unit else (None, None)
        self._num = conversion(
            spec.numerator.metric,
            spec.numerator.coefficient,
            num_unit,
            ctx.coefficients,
        )
        self._den = conversion(
            spec.denominator.metric,
            spec.denominator.coefficient,
            den_unit,
            ctx.coefficients,
        )
        self._unit = f"{self._num.unit}/{self._den.unit}"
        self._counters = Counters(spec.valid_flags)
        self._scopes: dict[str, _Enterprise] = {}

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        step = self._counters.step(obs)
        if step.status is StepStatus.SKIP:
            return []
        start, end = self._periods.of(obs.ts_ms)
        if step.status is StepStatus.OLDER or watermark_ms >= end + self._lateness:
            self.dropped_late += 1
            return []
        key = Scope(obs.park, obs.enterprise).key
        ent = self._scopes.get(key)
        if ent is None:
            ent = self._scopes[key] = _Enterprise(start, end)
        period = ent.periods.setdefault(start, _Period(end))
        if self.spec.numerator.matches(obs):
            ent.seen.add("num")
        if self.spec.denominator.matches(obs):
            ent.seen.add("den")
        if step.status is not StepStatus.FIRST:
            if self.spec.numerator.matches(obs):
                period.num.add(obs.device, step, self._num.factor)
            if self.spec.denominator.matches(obs):
                period.den.add(obs.device, step, self._den.factor)
        found = self._revise(key, start, period, obs) if start < ent.next_ms else []
        return found + self._close(key, ent, watermark_ms)

    def advance(self, watermark_ms: int) -> list[Finding]:
        found: list[Finding] = []
        for key, ent in sorted(self._scopes.items()):
            found += self._close(key, ent, watermark_ms)
            for start in [s for s, p in ent.periods.items() if p.judged is not None]:
                if watermark_ms >= ent.periods[start].end_ms + self._lateness:
                    del ent.periods[start]
        return found

    def _close(self, key: str, ent: _Enterprise, watermark_ms: int) -> list[Finding]:
        found: list[Finding] = []
        while ent.next_end_ms <= watermark_ms:
            start, end = ent.next_ms, ent.next_end_ms
            period = ent.periods.setdefault(start, _Period(end))
            finding = self._judge(key, start, period, ent.breaching)
            period.judged = [finding.verdict.value, finding.value, ent.breaching]
            if finding.verdict is not Verdict.INSUFFICIENT:
                ent.breaching = finding.verdict is Verdict.BREACH
            ent.next_ms, ent.next_end_ms = end, self._periods.end(end)
            unmapped = [s for s in ("num", "den") if s not in ent.seen]
            if unmapped:
                if not ent.warned:
                    ent.warned = True
                    found.append(self._config_warning(finding, unmapped))
                continue
            found.append(finding)
        return found

    def _config_warning(self, finding: Finding, unmapped: list[str]) -> Finding:
        sides = {"num": self.spec.numerator, "den": self.spec.denominator}
        missing = [
            f"{'numerator' if s == 'num' else 'denominator'} ({sides[s].metric},"
            f" device {sides[s].device!r})"
            for s in unmapped
        ]
        reason = (
            f"no reading of the {' or the '.join(missing)} has been seen for this"
            " enterprise: check the rule's device patterns against its meters."
            " Reported once; the periods after this one are judged once it reports"
        )
        evidence = {**finding.evidence, "reason": reason, "config_warning": True}
        return Finding(
            finding.scope,
            finding.at_ms,
            Verdict.INSUFFICIENT,
            None,
            finding.window,
            evidence,
        )

    def _revise(self, key: str, start: int, period: _Period, obs: Obs) -> list[Finding]:
        previous = period.judged
        prior = bool(previous[2]) if previous is not None else False
        new = self._judge(key, start, period, prior)
        if previous is not None and [new.verdict.value, new.value] == previous[:2]:
            return []
        period.judged = [new.verdict.value, new.value, prior]
        was = (
            None if previous is None else {"verdict": previous[0], "value": previous[1]}
        )
        evidence = {**new.evidence, "previous": was, "late_reading": obs.to_json()}
        return [
            Finding(
                new.scope,
                new.at_ms,
                new.verdict,
                new.value,
                new.window,
                evidence,
                revision=True,
            )
        ]

    def _judge(self, key: str, start: int, period: _Period, prior: bool) -> Finding:
        num, den = period.num, period.den
        park, enterprise = key.split("/")[:2]
        scope = Scope(park, enterprise)
        limits = self.spec.limits_for(scope)
        value: float | None = None
        reason = None
        if num.steps == 0:
            reason = "no numerator readings in the period"
        elif den.steps == 0:
            reason = "no denominator readings in the period"
        elif den.amount <= 0:
            reason = "the denominator is 0 in the period"
        if reason is None:
            value = num.amount / den.amount
            breach = limits.next_state(prior, value)
            verdict = Verdict.BREACH if breach else Verdict.OK
        else:
            verdict = Verdict.INSUFFICIENT
        evidence: JSON = {
            "period": self.spec.period,
            "unit": self._unit,
            "numerator": {
                "metric": self.spec.numerator.metric,
                **num.to_json(),
                "coefficient": self._num.coefficient,
            },
            "denominator": {
                "metric": self.spec.denominator.metric,
                **den.to_json(),
                "coefficient": self._den.coefficient,
            },
            "discontinuities": num.discontinuities + den.discontinuities,
            **limits.evidence(),
        }
        if reason is not None:
            evidence["reason"] = reason
        window = Window(start, period.end_ms)
        return Finding(scope, period.end_ms, verdict, value, window, evidence)

    def snapshot(self) -> JSON:
        return {
            "dropped_late": self.dropped_late,
            "series": self._counters.snapshot(),
            "scopes": {
                key: {
                    "next": [ent.next_ms, ent.next_end_ms],
                    "breaching": ent.breaching,
                    "seen": sorted(ent.seen),
                    "warned": ent.warned,
                    "periods": {
                        str(s): p.to_json() for s, p in sorted(ent.periods.items())
                    },
                }
                for key, ent in sorted(self._scopes.items())
            },
        }

    def restore(self, state: JSON) -> None:
        self.dropped_late = state["dropped_late"]
        self._counters.restore(state["series"])
        self._scopes = {
            key: _Enterprise(
                s["next"][0],
                s["next"][1],
                s["breaching"],
                {int(k): _Period.from_json(p) for k, p in s["periods"].items()},
                # absent in older snapshots: both sides count as seen
                set(s.get("seen", ["num", "den"])),
                s.get("warned", False),
            )
            for key, s in state["scopes"].items()
        }
