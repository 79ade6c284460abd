"""Rule packs: versioned YAML files of rules, validated before anything runs.

```yaml
pack: coal-power-ultra-low        # the pack's id
version: "2024.1"                 # recorded in every alert the pack raises
timezone: Asia/Shanghai           # days, months and years of quotas are local
allowed_lateness: 1h              # how long a closed window still takes late readings
watermark_delay: 2min             # how far event time trails the newest reading
coefficients:                     # versioned data the rules refer to (tce, CO2 ...)
  tce-gbt2589: {version: "2020", unit: kgce, electricity_kwh: 0.1229}
validity:                         # what makes a valid hour (HJ 75), versioned
  version: "placeholder-1"
  source: "HJ 75-2017: the rule was not retrieved"
  verified: false                 # say so until the number is checked
  valid_hour_fraction: 0.75       # hourly windows without their own fraction
rules:
  - {id: so2-hourly, kind: window, ...}
```

Contract of :func:`load_pack`: it returns a :class:`Pack` or raises
:class:`~smartpark.errors.ConfigError` as ``file:line: rules[3].limit: reason`` — for
YAML mistakes, unknown keys, an unknown rule kind, an unknown metric, a unit that is
not the metric's, an impossible window, a missing limit, duplicate rule ids, a rule
referring to a coefficient set the pack does not have. Limits live in the pack,
never in code.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import Field, field_validator, model_validator

from rules.kinds import KINDS, AnyRule
from rules.kinds.base import PackContext, RuleSpec, StrictModel, parse_duration
from rules.kinds.coefficients import coefficient_problem
from rules.kinds.window import WindowSpec
from smartpark.clock import check_timezone
from smartpark.yamlfile import Loc, load_model, located, validate_model

HOUR_MS = 3_600_000


class Validity(StrictModel):
    """When an hour of monitoring data counts as valid (HJ 75-2017), as data.

    Every alert of an hourly ``window`` rule records the version, the source and
    whether the number was verified against it."""

    version: str = Field(min_length=1)
    source: str = Field(min_length=1)
    verified: bool = False
    valid_hour_fraction: float = Field(gt=0, le=1)

    def evidence(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source": self.source,
            "verified": self.verified,
        }


class Pack(StrictModel):
    pack: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    version: str = Field(min_length=1, max_length=64)
    timezone: str = "Asia/Shanghai"
    allowed_lateness: int = Field(default=3_600_000, ge=0)
    watermark_delay: int = Field(default=120_000, ge=0)
    coefficients: dict[str, dict[str, Any]] = Field(default_factory=dict)
    validity: Validity | None = None
    rules: tuple[AnyRule, ...] = Field(min_length=1)

    @field_validator("allowed_lateness", "watermark_delay", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        if value == 0:
            return 0
        return parse_duration(value)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        return check_timezone(value)

    @field_validator("coefficients")
    @classmethod
    def _versioned(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, entry in value.items():
            if not isinstance(entry.get("version"), str | int):
                raise located("every coefficient set needs a version", name)
        return value

    @field_validator("rules")
    @classmethod
    def _unique(cls, value: tuple[RuleSpec, ...]) -> tuple[RuleSpec, ...]:
        seen: dict[str, int] = {}
        for i, rule in enumerate(value):
            if rule.id in seen:
                raise located(
                    f"rule id {rule.id!r} is already rules[{seen[rule.id]}]", i, "id"
                )
            seen[rule.id] = i
        return value

    @model_validator(mode="after")
    def _coefficients_known(self) -> Pack:
        # A spec cannot see the pack: check every rule's coefficient references here.
        for i, rule in enumerate(self.rules):
            for use in rule.coefficient_refs():
                problem = coefficient_problem(use, self.coefficients)
                if problem is not None:
                    raise located(problem[1], "rules", i, *use.at, *problem[0])
        return self

    @model_validator(mode="after")
    def _validity_applies(self) -> Pack:
        # Hourly windows without their own fraction take the pack's valid-hour rule.
        if self.validity is None:
            return self
        rules = list(self.rules)
        for i, rule in enumerate(rules):
            if (
                isinstance(rule, WindowSpec)
                and rule.window == HOUR_MS
                and rule.min_valid_fraction is None
            ):
                if rule.expected_interval is None:
                    raise located(
                        "the pack's validity.valid_hour_fraction needs the rule's"
                        " expected_interval (how often readings come)",
                        "rules", i, "expected_interval",
                    )  # fmt: skip
                rules[i] = rule.model_copy(
                    update={
                        "min_valid_fraction": self.validity.valid_hour_fraction,
                        "validity": self.validity.evidence(),
                    }
                )
        object.__setattr__(self, "rules", tuple(rules))
        return self

    @cached_property
    def context(self) -> PackContext:
        return PackContext(
            pack_id=self.pack,
            version=self.version,
            tz=ZoneInfo(self.timezone),
            allowed_lateness_ms=self.allowed_lateness,
            coefficients=self.coefficients,
        )


def _drop_union_tag(loc: Loc) -> Loc:
    # A discriminated union puts the kind into the location: rules.3.window.limit
    if len(loc) > 2 and loc[0] == "rules" and loc[2] in KINDS:
        return loc[:2] + loc[3:]
    return loc


def load_pack(path: str | Path) -> Pack:
    """Read and validate the pack at ``path`` (see the module contract)."""
    return load_model(path, Pack, fix_loc=_drop_union_tag)


def parse_pack(data: Any, *, source: str = "<pack>") -> Pack:
    """Validate an already-loaded pack (no line numbers in errors)."""
    return validate_model(data, Pack, source=source, fix_loc=_drop_union_tag)
