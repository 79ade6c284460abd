"""Coefficients from a pack's versioned sets, and the unit conversions rules may do.

A coefficient set is data in the pack (never a constant in code), with a version
that every finding using it records, and the unit its coefficients yield::

```yaml
coefficients:
  tce-gbt2589:
    version: "GB/T 2589-2020"
    unit: kgce                 # what each coefficient of the set yields
    electricity_kwh: 0.1229    # kgce per kWh (equivalent value)
    raw_coal_kg: 0.7143        # kgce per kg
```

A rule refers to one coefficient of a set::

```yaml
coefficient: {set: tce-gbt2589, key: raw_coal_kg, per: kg}
```

``per`` is the unit of the input the coefficient is per; it defaults to the metric's
catalogue unit and must be convertible from it (``coal_mass`` is in t, the
coefficient per kg: the input is multiplied by 1000 first). The result, in the set's
``unit``, is then converted to the unit the rule works in (kgce → tce: times 0.001).
Conversions are unit definitions only (the catalogue's :data:`UNIT_CONVERSIONS`
plus coal- and CO2-equivalent masses), never regulatory numbers.

A spec cannot see its pack, so the pack asks every rule for its
:meth:`~rules.kinds.base.RuleSpec.coefficient_refs` and checks them with
:func:`coefficient_problem`: the set exists, has a ``unit`` convertible to what the
rule needs, and the key is a number.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rules.kinds.base import CoefficientUse, StrictModel
from rules.model import JSON
from smartpark.catalogue import METRICS, UNIT_CONVERSIONS
from smartpark.yamlfile import located

# Equivalent masses: unit definitions, as (unit, factor) like UNIT_CONVERSIONS.
_EQUIVALENT_MASS: dict[str, tuple[str, float]] = {
    "kgce": ("tce", 1e-3),
    "kgCO2": ("tCO2", 1e-3),
}
_RESERVED = ("version", "unit")


def unit_factor(src: str, dst: str) -> float | None:
    """The factor taking an amount in ``src`` to ``dst`` (``None``: not convertible).

    Only direct definitions are used (kg → t, t → kg, kgce → tce), no chains.
    """
    if src == dst:
        return 1.0
    for table in (UNIT_CONVERSIONS, _EQUIVALENT_MASS):
        forward = table.get(src)
        if forward is not None and forward[0] == dst:
            return forward[1]
        backward = table.get(dst)
        if backward is not None and backward[0] == src:
            return 1.0 / backward[1]
    return None


class CoefficientRef(StrictModel):
    """``{set, key, per}``: one coefficient of one of the pack's sets."""

    set: str
    key: str
    per: str | None = None  # the input unit the coefficient is per; default: metric's

    def check_per(self, metric: str) -> None:
        """Refuse a ``per`` the metric's catalogue unit cannot be converted to."""
        unit = METRICS[metric].unit
        if self.per is not None and unit_factor(unit, self.per) is None:
            raise located(
                f"a coefficient per {self.per!r} does not apply to {metric},"
                f" which is in {unit!r}",
                "coefficient",
                "per",
            )


def coefficient_problem(
    use: CoefficientUse, coefficients: dict[str, dict[str, Any]]
) -> tuple[tuple[str, ...], str] | None:
    """What is wrong with ``use`` in a pack with these ``coefficients``, as
    (path below the reference, reason), or ``None``."""
    entry = coefficients.get(use.set)
    if entry is None:
        have = ", ".join(sorted(coefficients)) or "none"
        return ("set",), f"unknown coefficient set {use.set!r} (pack has: {have})"
    unit = entry.get("unit")
    if not isinstance(unit, str):
        return ("set",), (
            f"coefficient set {use.set!r} does not say its unit"
            " (unit: the unit its coefficients yield, e.g. kgce)"
        )
    if use.unit is not None and unit_factor(unit, use.unit) is None:
        return ("set",), (
            f"coefficient set {use.set!r} yields {unit!r}, the rule needs {use.unit!r}"
        )
    if use.key in _RESERVED or not _is_number(entry.get(use.key)):
        keys = ", ".join(sorted(k for k in entry if k not in _RESERVED)) or "none"
        return ("key",), (
            f"coefficient set {use.set!r} has no coefficient {use.key!r}"
            f" (it has: {keys})"
        )
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True, slots=True)
class Conversion:
    """How an input in its catalogue unit becomes an amount in ``unit``:
    ``amount = value * factor``. ``coefficient`` is the evidence of the set used."""

    factor: float
    unit: str
    coefficient: JSON | None = None


def conversion(
    metric: str,
    ref: CoefficientRef | None,
    target: str | None,
    coefficients: dict[str, dict[str, Any]],
) -> Conversion:
    """The conversion of ``metric`` through ``ref`` (if any) to ``target`` (``None``:
    the natural unit). Raises ``ValueError`` for what a validated pack excludes."""
    unit = METRICS[metric].unit
    factor = 1.0
    evidence: JSON | None = None
    if ref is not None:
        entry = coefficients[ref.set]
        per = ref.per or unit
        per_factor = unit_factor(unit, per)
        if per_factor is None:
            raise ValueError(f"cannot convert {unit!r} to {per!r}")
        value = float(entry[ref.key])
        factor = per_factor * value
        unit = str(entry["unit"])
        evidence = {
            "set": ref.set,
            "version": str(entry["version"]),
            "key": ref.key,
            "value": value,
            "unit": f"{unit}/{per}",
        }
    if target is not None and target != unit:
        to_target = unit_factor(unit, target)
        if to_target is None:
            raise ValueError(f"cannot convert {unit!r} to {target!r}")
        factor *= to_target
        unit = target
    return Conversion(factor, unit, evidence)
