"""What every rule kind shares: the spec's common fields, the evaluator protocol,
durations, scope patterns and hysteresis.

A rule kind is a pair registered in :data:`rules.kinds.KINDS`: a pydantic spec class
(the rule as written in a pack, validated) and an evaluator class built from the spec
and the pack's :class:`PackContext`. The engine feeds an evaluator, in stream order,
every observation its rule selects (:meth:`RuleSpec.selects`), and tells it whenever
the watermark moves; the evaluator answers with :class:`~rules.model.Finding` values.

Contract of an evaluator (pure, deterministic):

- ``feed(obs, watermark_ms)`` and ``advance(watermark_ms)`` return findings in a
  deterministic order; they read no clock and do no I/O.
- The watermark never moves backwards. An observation older than the watermark is
  late: kinds with windows take it while the window is within the pack's
  ``allowed_lateness`` (and report a revision if the verdict or value changes), and
  count it in ``dropped_late`` otherwise.
- ``snapshot()`` returns JSON-able state; ``restore(state)`` on a fresh evaluator of
  the same spec continues exactly as the snapshotted one would have.
"""

from __future__ import annotations

import fnmatch
import re
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from rules.marks import MarkBook, MarkChange
from rules.model import JSON, Finding, Obs, Scope
from smartpark.catalogue import METRICS
from smartpark.yamlfile import located

Severity = Literal["info", "minor", "major", "critical"]
SeriesName = Literal["realtime", "minute", "hour", "day"]
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|min|h|d)\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
# Quality flags a rule takes by default: only normal data (HJ 212 flag N).
DEFAULT_VALID_FLAGS = ("N",)


def parse_duration(text: str | int | float) -> int:
    """``"90s"``, ``"15min"``, ``"1h"``, ``"1d"`` (or a number of seconds) → ms."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        ms = round(float(text) * 1000)
    else:
        match = _DURATION.match(str(text))
        if match is None:
            raise ValueError(
                f"not a duration: {text!r} (e.g. '90s', '15min', '1h', '1d')"
            )
        ms = round(float(match[1]) * _UNIT_MS[match[2]])
    if ms <= 0:
        raise ValueError(f"a duration must be positive, got {text!r}")
    return ms


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ScopeSpec(StrictModel):
    """Which observations a rule looks at: shell patterns (``stack-*``), ``*`` = all."""

    park: str = "*"
    enterprise: str = "*"
    device: str = "*"

    def matches(self, obs: Obs) -> bool:
        return (
            _match(self.park, obs.park)
            and _match(self.enterprise, obs.enterprise)
            and _match(self.device, obs.device)
        )


def _match(pattern: str, value: str) -> bool:
    return pattern in ("*", value) or fnmatch.fnmatchcase(value, pattern)


class RuleSpec(StrictModel):
    """The fields every rule has; each kind adds its own (see ``rules.kinds``)."""

    kind_name: ClassVar[str] = ""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
    kind: str
    severity: Severity = "major"
    description: str = ""
    scope: ScopeSpec = ScopeSpec()
    valid_flags: tuple[str, ...] = DEFAULT_VALID_FLAGS
    # The series the rule judges (smartpark.wire.DataType): "realtime" (meters and
    # HJ 212 real-time data, from which windows compute their own means) or a
    # logger's own interval values ("minute", "hour", "day"). Only the interval's
    # value (its mean) is judged; a rule never mixes two series.
    series: SeriesName = "realtime"

    @field_validator("valid_flags")
    @classmethod
    def _flags(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(value) - set("NFMSDCTB")
        if unknown or not value:
            raise ValueError(
                f"flags must be among N F M S D C T B, got {sorted(unknown) or value}"
            )
        return value

    @abstractmethod
    def metrics(self) -> frozenset[str]:
        """The metrics this rule reads; the engine feeds it only those."""

    def selects(self, obs: Obs) -> bool:
        return (
            obs.metric in self.metrics()
            and obs.data_type == self.series
            and obs.stat == "value"
            and self.scope.matches(obs)
        )

    def coefficient_refs(self) -> list[CoefficientUse]:
        """The pack coefficients this rule refers to, for the pack to check (a spec
        cannot see the pack's ``coefficients``)."""
        return []


@dataclass(frozen=True, slots=True)
class CoefficientUse:
    """A rule's reference to a coefficient of one of its pack's versioned sets.

    ``at`` is where the reference is written, below the rule (for the error path);
    ``unit`` is the unit the rule needs the set's coefficients to yield, or one
    convertible to it (``None``: any).
    """

    at: tuple[str | int, ...]
    set: str
    key: str
    unit: str | None = None


@dataclass(frozen=True, slots=True)
class PackContext:
    """What a pack gives all its rules: time zone, lateness, coefficient sets."""

    pack_id: str
    version: str
    tz: ZoneInfo
    allowed_lateness_ms: int
    coefficients: dict[str, JSON]


class Evaluator(Protocol):
    dropped_late: int

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]: ...

    def advance(self, watermark_ms: int) -> list[Finding]: ...

    def snapshot(self) -> JSON: ...

    def restore(self, state: JSON) -> None: ...


@runtime_checkable
class MarkAware(Protocol):
    """An evaluator that honours data marks (:mod:`rules.marks`).

    ``use_marks(book)`` is called once, before anything is fed: the engine's book,
    which the engine alone updates. ``marks_changed(changes, watermark_ms)`` is
    called after the book changed; it returns the findings the change causes (for
    windowed kinds: revisions of closed windows still within ``allowed_lateness``),
    in a deterministic order, and must not move the watermark.
    """

    def use_marks(self, marks: MarkBook) -> None: ...

    def marks_changed(
        self, changes: Sequence[MarkChange], watermark_ms: int
    ) -> list[Finding]: ...


class InstantMarks:
    """Marks for the kinds that judge each reading as it arrives (threshold,
    duration, rate of change): a reading covered by a mark in force when it is
    judged counts as not valid. A verdict is an instant, not a window: a mark that
    arrives after the reading was judged changes nothing already said (there is no
    window to revise), only the readings judged after it."""

    _marks: MarkBook | None = None

    def use_marks(self, marks: MarkBook) -> None:
        self._marks = marks

    def marked(self, obs: Obs) -> bool:
        return self._marks is not None and (
            self._marks.covering(
                obs.park, obs.enterprise, obs.device, obs.metric, obs.ts_ms
            )
            is not None
        )

    def marks_changed(
        self, changes: Sequence[MarkChange], watermark_ms: int
    ) -> list[Finding]:
        return []


def check_unit(metric: str, unit: str | None, at: str = "unit") -> None:
    """Limits are written in the metric's catalogue unit; a pack that says another
    unit is refused rather than silently off by a factor."""
    if unit is not None and unit != METRICS[metric].unit:
        raise located(
            f"unit {unit!r} is not {metric}'s unit {METRICS[metric].unit!r}"
            " (limits are in the catalogue unit)",
            at,
        )


def device_scope(obs: Obs, *, metric: str | None = None) -> Scope:
    return Scope(obs.park, obs.enterprise, obs.device, metric)


def scope_from_key(key: str) -> Scope:
    park, enterprise, device, metric = (None if p == "*" else p for p in key.split("/"))
    assert park is not None
    return Scope(park, enterprise, device, metric)


class LimitOverride(StrictModel):
    """A stricter (or other) limit for some outlets: an enterprise's stack or
    outfall, as its permit says. Shell patterns; the first that matches wins."""

    enterprise: str = "*"
    device: str = "*"
    limit: float
    clear: float | None = None
    source: str = ""  # e.g. the permit number the value comes from

    def matches(self, scope: Scope) -> bool:
        return _match_part(self.enterprise, scope.enterprise) and _match_part(
            self.device, scope.device
        )


def _match_part(pattern: str, value: str | None) -> bool:
    return pattern == "*" or (value is not None and _match(pattern, value))


@dataclass(frozen=True, slots=True)
class Limits:
    """The limit in force for one scope, with its hysteresis.

    ``direction: above`` breaches when ``value > limit`` and, once in breach, clears
    only when ``value <= clear`` (default: the limit itself); ``below`` mirrors it.
    """

    limit: float
    direction: Literal["above", "below"]
    clear: float | None
    override: str | None = None  # the override's source, when one applies

    def next_state(self, breaching: bool, value: float) -> bool:
        """Whether the scope is in breach after ``value``, given it was or not."""
        level = self.limit if not breaching or self.clear is None else self.clear
        return value > level if self.direction == "above" else value < level

    def evidence(self) -> JSON:
        out: JSON = {
            "limit": self.limit, "direction": self.direction, "clear": self.clear,
        }  # fmt: skip
        if self.override is not None:
            out["limit_override"] = self.override
        return out


def _check_clear(
    limit: float, clear: float | None, direction: str, at: tuple[str | int, ...]
) -> None:
    if clear is not None:
        above = direction == "above"
        if (clear > limit) if above else (clear < limit):
            side = "at or below" if above else "at or above"
            raise located(f"clear must be {side} the limit {limit:g}", *at)


class LimitFields(StrictModel):
    """A limit with hysteresis, for the kinds that compare a value with one.

    ``clear`` is the level a breach must come back to before it resolves: a value
    hovering around the limit therefore opens one alert, not one per window.
    ``outlets`` sets other limits for some scopes (the permit of one stack).
    """

    limit: float
    direction: Literal["above", "below"] = "above"
    clear: float | None = None
    outlets: tuple[LimitOverride, ...] = ()

    @model_validator(mode="after")
    def _clear_side(self) -> LimitFields:
        _check_clear(self.limit, self.clear, self.direction, ("clear",))
        for i, o in enumerate(self.outlets):
            _check_clear(o.limit, o.clear, self.direction, ("outlets", i, "clear"))
        return self

    def limits_for(self, scope: Scope) -> Limits:
        """The limits in force for ``scope``: the first matching outlet's, else the
        rule's."""
        for o in self.outlets:
            if o.matches(scope):
                return Limits(o.limit, self.direction, o.clear, o.source or "outlet")
        return Limits(self.limit, self.direction, self.clear)


def jsonable(value: Any) -> Any:
    """``value`` with tuples as lists, for evidence compared after a JSON round trip."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return value
