"""The regulator's KPIs, pure: coefficient sets, conversions, verdicts (no I/O but
reading the shipped coefficient files).

Every number a KPI depends on is data in ``smartpark/coefficients/*.yaml``, named
and versioned, and every response that used a set names it (:class:`Coefficients`):

- ``tce-gbt2589``: energy to standard coal equivalent, GB/T 2589 reference
  coefficients, per metric (kgce per the unit the standard states); its
  ``equal_value`` part replaces the electricity coefficient for the second basis
  (equal value, tied to the generation coal rate of a year and region);
- ``grid-co2-mee``: grid CO2 emission factors by year and region;
- ``gb21346-2013``: unit-product energy levels (limit / access / advanced).

Definitions (written once here, returned in the API docs):

- **tce** of a source = consumption (catalogue unit, converted to the coefficient's
  ``per`` unit by unit definitions only) x coefficient (kgce per unit) x 0.001;
  total tce = the sum over sources, on each basis.
- **CO2** (t) = purchased electricity (kWh) x the grid factor (kgCO2/kWh) of the
  period's year and the park's region x 0.001. A year without a published factor
  uses the latest earlier year's; a region without a factor that year uses the
  national one; both are said in the response.
- **unit-product energy** (kWh/t) = electricity ÷ product; verdict lower is better:
  ``meets_advanced`` ≤ advanced < ``meets_access`` ≤ access < ``meets_limit`` ≤
  limit < ``exceeds_limit``.
- **reuse ratio** = reused ÷ (reused + fresh intake).
- **emission mass** of an hour, from flow x concentration (:func:`hour_mass_kg`).
- **an hour's compliance** (:func:`classify_hour`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Annotated, Literal
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smartpark.catalogue import METRICS, UNIT_CONVERSIONS
from smartpark.yamlfile import load_model

COEFFICIENTS_DIR = Path(__file__).parent / "coefficients"
PeriodKind = Literal["day", "month", "year"]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# -- the coefficient files --------------------------------------------------------


class Coefficient(_Strict):
    per: str
    value: Positive
    note: str = ""


def _check_metric_coefficients(coefficients: Mapping[str, Coefficient]) -> None:
    for name, c in coefficients.items():
        m = METRICS.get(name)
        if m is None:
            raise ValueError(f"{name}: not a catalogue metric")
        if c.per != m.unit and UNIT_CONVERSIONS.get(c.per, ("", 0.0))[0] != m.unit:
            raise ValueError(f"{name}: per {c.per!r} cannot be converted from {m.unit}")


class EqualValue(_Strict):
    name: str
    version: str
    source: str
    coefficients: dict[str, Coefficient]

    @model_validator(mode="after")
    def _metrics(self) -> EqualValue:
        _check_metric_coefficients(self.coefficients)
        return self


class TceSet(_Strict):
    name: str
    version: str
    source: str
    unit: Literal["kgce"]
    kgce_kj: Positive
    coefficients: dict[str, Coefficient]
    not_convertible: dict[str, str] = {}
    equal_value: EqualValue

    @model_validator(mode="after")
    def _metrics(self) -> TceSet:
        _check_metric_coefficients(self.coefficients)
        extra = set(self.equal_value.coefficients) - set(self.coefficients)
        if extra:
            raise ValueError(f"equal_value: {sorted(extra)} not in coefficients")
        return self


class GridFactors(_Strict):
    name: str
    version: str
    source: str
    unit: Literal["kgCO2/kWh"]
    default_region: str
    years: dict[int, dict[str, Positive]]

    @property
    def regions(self) -> frozenset[str]:
        return frozenset(r for y in self.years.values() for r in y)


class Levels(_Strict):
    description: str
    unit: Literal["kWh/t"]
    limit: Positive
    access: Positive
    advanced: Positive

    @model_validator(mode="after")
    def _order(self) -> Levels:
        if not self.advanced <= self.access <= self.limit:
            raise ValueError("levels must be advanced <= access <= limit")
        return self


class ProductNorm(_Strict):
    name: str
    version: str
    source: str
    superseded_by: str | None = None
    indicators: dict[str, Levels]


@dataclass(frozen=True, slots=True)
class Coefficients:
    tce: TceSet
    grid: GridFactors
    norm: ProductNorm


def load_coefficients(directory: Path = COEFFICIENTS_DIR) -> Coefficients:
    """The three sets from ``directory``; ConfigError naming file, line, field."""
    return Coefficients(
        tce=load_model(directory / "tce-gbt2589.yaml", TceSet),
        grid=load_model(directory / "grid-co2.yaml", GridFactors),
        norm=load_model(directory / "gb21346-2013.yaml", ProductNorm),
    )


@cache
def shipped() -> Coefficients:
    """The sets shipped with the platform (read once)."""
    return load_coefficients()


# -- energy -------------------------------------------------------------------------

ENERGY_METRICS = ("active_energy", "coal_mass", "natural_gas_volume", "steam_heat")


def _in_per(metric: str, amount: float, per: str) -> float:
    unit = METRICS[metric].unit
    if per == unit:
        return amount
    conv = UNIT_CONVERSIONS[per]  # per -> unit: value_unit = value_per * factor
    return amount / conv[1]


@dataclass(frozen=True, slots=True)
class SourceTce:
    metric: str
    amount: float
    unit: str
    equivalent_tce: float
    equal_value_tce: float


@dataclass(frozen=True, slots=True)
class Tce:
    sources: tuple[SourceTce, ...]
    equivalent_tce: float
    equal_value_tce: float


def tce(tce_set: TceSet, amounts: Mapping[str, float]) -> Tce:
    """Each source in tce on both bases, and the totals; ValueError for a metric
    without a coefficient (its reason if the set says it is not convertible)."""
    out = []
    for metric, amount in amounts.items():
        c = tce_set.coefficients.get(metric)
        if c is None:
            reason = tce_set.not_convertible.get(metric, "no coefficient in the set")
            raise ValueError(f"{metric}: {reason}")
        equal = tce_set.equal_value.coefficients.get(metric, c)
        kg_eq = _in_per(metric, amount, c.per) * c.value
        kg_ev = _in_per(metric, amount, equal.per) * equal.value
        out.append(
            SourceTce(metric, amount, METRICS[metric].unit, kg_eq / 1000, kg_ev / 1000)
        )
    return Tce(
        tuple(out),
        sum(s.equivalent_tce for s in out),
        sum(s.equal_value_tce for s in out),
    )


# -- CO2 ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FactorUsed:
    year: int  # the year whose factor was used
    region: str
    value: float
    note: str | None


def grid_factor(grid: GridFactors, year: int, region: str | None) -> FactorUsed | None:
    """The factor in force for ``year`` in ``region`` (None: the default region):
    that year's, else the latest earlier year's; the region's, else the default
    region's of that year. None if no year at or before ``year`` has a factor."""
    wanted = region or grid.default_region
    years = sorted((y for y in grid.years if y <= year), reverse=True)
    if not years:
        return None
    used = years[0]
    notes = []
    if used != year:
        notes.append(
            f"no factor published for {year}: the latest earlier one ({used}) is used"
        )
    factors = grid.years[used]
    if wanted in factors:
        return FactorUsed(used, wanted, factors[wanted], "; ".join(notes) or None)
    fallback = grid.default_region
    if fallback not in factors:
        return None
    notes.append(f"no {wanted} factor for {used}: the {fallback} factor is used")
    return FactorUsed(used, fallback, factors[fallback], "; ".join(notes))


def co2_t(kwh: float, factor: FactorUsed) -> float:
    """Tonnes of CO2 of ``kwh`` purchased electricity (kgCO2/kWh x kWh / 1000)."""
    return kwh * factor.value / 1000


# -- unit-product energy ------------------------------------------------------------


class Verdict(StrEnum):
    MEETS_ADVANCED = "meets_advanced"
    MEETS_ACCESS = "meets_access"
    MEETS_LIMIT = "meets_limit"
    EXCEEDS_LIMIT = "exceeds_limit"


def verdict(levels: Levels, value: float) -> Verdict:
    """Lower is better; a value equal to a level meets it."""
    if value <= levels.advanced:
        return Verdict.MEETS_ADVANCED
    if value <= levels.access:
        return Verdict.MEETS_ACCESS
    if value <= levels.limit:
        return Verdict.MEETS_LIMIT
    return Verdict.EXCEEDS_LIMIT


def reuse_ratio(reused: float, intake: float) -> float | None:
    """reused ÷ (reused + fresh intake); None when both are zero."""
    total = reused + intake
    return None if total <= 0 else reused / total


# -- emissions ----------------------------------------------------------------------

# Unit definitions, not regulatory numbers: the mass (kg) of one hour at a mean flow
# of 1 m3/h and a mean concentration of 1 (concentration unit).
#   mg/m3 x m3/h x 1 h = mg;  1 mg = 1e-6 kg
#   mg/L  x m3/h x 1 h = (g/m3) x m3 = g;  (1 mg/L = 1 g/m3)  1 g = 1e-3 kg
KG_PER_FLOW_HOUR: dict[str, float] = {"mg/m3": 1e-6, "mg/L": 1e-3}
FLOW_METRIC: dict[str, str] = {"mg/m3": "flue_gas_flow", "mg/L": "wastewater_flow"}


def pollutants() -> tuple[str, ...]:
    """Catalogue metrics with a mass total (kg): the pollutants totals are kept for."""
    return tuple(
        n
        for n, m in METRICS.items()
        if m.total_unit == "kg" and m.unit in KG_PER_FLOW_HOUR
    )


def hour_mass_kg(mean_flow_m3h: float, mean_concentration: float, unit: str) -> float:
    """The mass (kg) emitted in one hour from the hour's mean flow (m3/h) and
    mean concentration in ``unit``:

    - flue gas: C [mg/m3] x Q [m3/h] x 1 h x 1e-6 kg/mg;
    - wastewater: C [mg/L = g/m3] x Q [m3/h] x 1 h x 1e-3 kg/g.
    """
    return mean_flow_m3h * mean_concentration * KG_PER_FLOW_HOUR[unit]


def judged_metric(limit_metric: str, reference_o2: float | None) -> str:
    """The metric an outlet's limit is judged on: the ``_corrected`` one where the
    outlet has a reference O2 and the catalogue has it, else the limit's own."""
    if reference_o2 is None or limit_metric.endswith("_corrected"):
        return limit_metric
    corrected = f"{limit_metric}_corrected"
    return corrected if corrected in METRICS else limit_metric


class HourClass(StrEnum):
    COMPLIANT = "compliant"
    BREACHED = "breached"
    INVALID = "invalid"
    INSUFFICIENT = "insufficient"


DEFAULT_MIN_VALID = 0.75
"""The platform's default share of an hour's expected readings that must be valid
for the hour to be judged (HJ 75-2017's exact rule was not retrieved)."""


def classify_hour(
    *, expected: int, received: int, valid: int, mean: float | None, limit: float,
    marked: bool, min_valid: float = DEFAULT_MIN_VALID,
) -> HourClass:  # fmt: skip
    """An hour of one pollutant at one outlet.

    ``valid``: readings of quality N outside invalid-marked periods; ``mean`` their
    mean. Judged (compliant ≤ limit < breached) when ``valid ≥ min_valid x
    expected``; else ``invalid`` when the data arrived (``received ≥ min_valid x
    expected``) or the hour overlaps an invalid-marked period, ``insufficient``
    when it did not.
    """
    need = min_valid * expected
    if expected > 0 and valid >= need and mean is not None:
        return HourClass.COMPLIANT if mean <= limit else HourClass.BREACHED
    if marked or (expected > 0 and received >= need):
        return HourClass.INVALID
    return HourClass.INSUFFICIENT


# -- periods ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Period:
    kind: PeriodKind
    first_day: date  # local
    start: datetime  # UTC, inclusive (local midnight)
    end: datetime  # UTC, exclusive

    @property
    def label(self) -> str:
        if self.kind == "day":
            return self.first_day.isoformat()
        if self.kind == "month":
            return self.first_day.strftime("%Y-%m")
        return str(self.first_day.year)


def next_start(kind: PeriodKind, d: date) -> date:
    if kind == "day":
        return d + timedelta(days=1)
    if kind == "month":
        return date(d.year + d.month // 12, d.month % 12 + 1, 1)
    return date(d.year + 1, 1, 1)


def check_aligned(kind: PeriodKind, d: date) -> None:
    """ValueError unless ``d`` starts a ``kind`` period."""
    if kind == "month" and d.day != 1:
        raise ValueError("a month starts on day 1")
    if kind == "year" and (d.month, d.day) != (1, 1):
        raise ValueError("a year starts on January 1")


def local_midnight(d: date, tz: ZoneInfo) -> datetime:
    return datetime(d.year, d.month, d.day, tzinfo=tz).astimezone(UTC)


def periods(kind: PeriodKind, first: date, end: date, tz: ZoneInfo) -> list[Period]:
    """The ``kind`` periods from local date ``first`` (aligned) up to ``end``
    (exclusive), each from local midnight to local midnight in ``tz``."""
    check_aligned(kind, first)
    out = []
    d = first
    while d < end:
        nxt = next_start(kind, d)
        out.append(Period(kind, d, local_midnight(d, tz), local_midnight(nxt, tz)))
        d = nxt
    return out


def count_periods(kind: PeriodKind, first: date, end: date) -> int:
    if kind == "day":
        return max(0, (end - first).days)
    if kind == "month":
        return max(0, (end.year - first.year) * 12 + end.month - first.month)
    return max(0, end.year - first.year)


def hours(start: datetime, end: datetime) -> Iterator[datetime]:
    """UTC hour starts in ``[start, end)`` (whole-hour zones: local hours too)."""
    t = start
    while t < end:
        yield t
        t += timedelta(hours=1)


def quota_for(
    quotas: Mapping[str, float], quotas_from: date | None, period: Period
) -> float | None:
    """The registry quota of the period's kind, if in force on its first day."""
    if quotas_from is not None and period.first_day < quotas_from:
        return None
    return quotas.get(period.kind)
