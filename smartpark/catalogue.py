"""The metric catalogue: every series the platform stores, with its unit and domain.

A reading on the wire must name a catalogue metric and carry exactly the metric's
canonical unit; edge agents convert from the device's unit with :func:`to_canonical`
before a reading leaves the site, so the platform never guesses a unit.

``kind`` tells the rules and the rollups how to treat a series: a ``counter`` is a
cumulative meter register (energy, volume, production) whose consumption is the
difference of two readings; a ``gauge`` is an instantaneous value (power, flow,
concentration).

Regulatory numbers (limits, tce coefficients, grid factors) are not here: they are
versioned configuration in the rule packs.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from enum import StrEnum

from smartpark.errors import PayloadError


class Domain(StrEnum):
    ENERGY = "energy"
    EMISSIONS = "emissions"
    WATER = "water"
    PRODUCTION = "production"
    PROCESS = "process"


class Kind(StrEnum):
    COUNTER = "counter"
    GAUGE = "gauge"


@dataclass(frozen=True, slots=True)
class Metric:
    name: str
    unit: str
    domain: Domain
    kind: Kind
    description: str
    # The unit of an HJ 212 interval's total (``-Cou``) of this metric, when it has
    # one: the mass emitted for a concentration, the volume for a flow.
    total_unit: str | None = None


def _m(  # noqa: PLR0917 - one line per metric in the table below
    name: str,
    unit: str,
    domain: Domain,
    kind: Kind,
    description: str,
    total: str | None = None,
) -> Metric:
    return Metric(name, unit, domain, kind, description, total)


_E, _A, _W, _P, _X = (
    Domain.ENERGY,
    Domain.EMISSIONS,
    Domain.WATER,
    Domain.PRODUCTION,
    Domain.PROCESS,
)
_C, _G = Kind.COUNTER, Kind.GAUGE

METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        # energy
        _m("active_energy", "kWh", _E, _C, "cumulative active energy import"),
        _m("active_power", "kW", _E, _G, "total active power"),
        _m("reactive_energy", "kvarh", _E, _C, "cumulative reactive energy"),
        _m("power_factor", "1", _E, _G, "total power factor"),
        _m("steam_mass", "t", _E, _C, "cumulative steam mass"),
        _m("steam_flow", "t/h", _E, _G, "steam mass flow", total="t"),
        _m("steam_heat", "GJ", _E, _C, "cumulative steam heat"),
        _m("natural_gas_volume", "m3", _E, _C, "cumulative natural gas volume (std)"),
        _m("natural_gas_flow", "m3/h", _E, _G, "natural gas flow (std)", total="m3"),
        _m("coal_mass", "t", _E, _C, "cumulative raw coal fed"),
        # water
        _m("water_volume", "m3", _W, _C, "cumulative fresh water intake"),
        _m("water_flow", "m3/h", _W, _G, "fresh water flow", total="m3"),
        _m("reused_water_volume", "m3", _W, _C, "cumulative reused water"),
        _m("wastewater_volume", "m3", _W, _C, "cumulative wastewater discharge"),
        _m("wastewater_flow", "m3/h", _W, _G, "wastewater discharge flow", total="m3"),
        _m("cod", "mg/L", _W, _G, "chemical oxygen demand (HJ 212 w01018)", total="kg"),
        _m(
            "ammonia_nitrogen", "mg/L", _W, _G, "ammonia nitrogen (HJ 212 w21003)", "kg"
        ),
        _m(
            "total_nitrogen",
            "mg/L",
            _W,
            _G,
            "total nitrogen (HJ 212 w21001)",
            total="kg",
        ),
        _m(
            "total_phosphorus", "mg/L", _W, _G, "total phosphorus (HJ 212 w21011)", "kg"
        ),
        _m(
            "suspended_solids", "mg/L", _W, _G, "suspended solids (HJ 212 w01012)", "kg"
        ),
        _m("ph", "pH", _W, _G, "pH (HJ 212 w01001)"),
        # production
        _m("production_mass", "t", _P, _C, "cumulative product output"),
        _m("production_rate", "t/h", _P, _G, "product output rate"),
        # emissions, measured (raw) and corrected to the reference O2 (HJ 212 Zs*)
        _m("so2", "mg/m3", _A, _G, "SO2, measured (HJ 212 a21026)", total="kg"),
        _m("so2_corrected", "mg/m3", _A, _G, "SO2 at reference O2 (a21026 Zs)"),
        _m("nox", "mg/m3", _A, _G, "NOx, measured (HJ 212 a21002)", total="kg"),
        _m("nox_corrected", "mg/m3", _A, _G, "NOx at reference O2 (a21002 Zs)"),
        _m(
            "particulate", "mg/m3", _A, _G, "particulate, measured (a34013)", total="kg"
        ),
        _m("particulate_corrected", "mg/m3", _A, _G, "particulate at ref O2 (Zs)"),
        _m("co", "mg/m3", _A, _G, "CO (HJ 212 a21005)", total="kg"),
        _m("nh3", "mg/m3", _A, _G, "NH3 slip (HJ 212 a21001)", total="kg"),
        _m(
            "fluoride", "mg/m3", _A, _G, "fluoride (aluminium electrolysis)", total="kg"
        ),
        _m("o2", "%", _A, _G, "flue-gas O2 (HJ 212 a19001)"),
        _m("flue_temperature", "degC", _A, _G, "flue temperature (a01012)"),
        _m("flue_velocity", "m/s", _A, _G, "flue velocity (a01011)"),
        _m("flue_pressure", "kPa", _A, _G, "flue pressure (a01013)"),
        _m("flue_humidity", "%", _A, _G, "flue humidity (a01014)"),
        _m("flue_gas_flow", "m3/h", _A, _G, "flue-gas flow (a00000)", total="m3"),
        # process
        _m("temperature", "degC", _X, _G, "process temperature"),
        _m("pressure", "kPa", _X, _G, "process pressure"),
    )
}

# Device units an edge agent may convert from, as (canonical unit, factor): the
# canonical value is ``value * factor``.
UNIT_CONVERSIONS: dict[str, tuple[str, float]] = {
    "Wh": ("kWh", 1e-3),
    "MWh": ("kWh", 1e3),
    "W": ("kW", 1e-3),
    "MW": ("kW", 1e3),
    "varh": ("kvarh", 1e-3),
    "Mvarh": ("kvarh", 1e3),
    "kg": ("t", 1e-3),
    "kg/h": ("t/h", 1e-3),
    "L": ("m3", 1e-3),
    "L/h": ("m3/h", 1e-3),
    "L/s": ("m3/h", 3.6),
    "m3/s": ("m3/h", 3600.0),
    "MJ": ("GJ", 1e-3),
    "ug/m3": ("mg/m3", 1e-3),
    "Pa": ("kPa", 1e-3),
    "MPa": ("kPa", 1e3),
}


def metric(name: str) -> Metric:
    """The catalogue entry for ``name``; :class:`PayloadError` if unknown."""
    try:
        return METRICS[name]
    except KeyError:
        raise PayloadError("metric", f"unknown metric {name!r}") from None


def series_unit(name: str, stat: str) -> str:
    """The unit of a series of ``name`` holding ``stat`` (smartpark.wire.Stat):
    the metric's total unit for an interval total (``cou``), else its unit.
    :class:`PayloadError` if the metric is unknown or has no total."""
    m = metric(name)
    if stat != "cou":
        return m.unit
    if m.total_unit is None:
        raise PayloadError("stat", f"{name} has no interval total")
    return m.total_unit


def check_metric(name: str) -> str:
    """``name`` if it is a catalogue metric, else ValueError naming a near one."""
    if name not in METRICS:
        near = difflib.get_close_matches(name, METRICS, n=1)
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        raise ValueError(f"unknown metric {name!r}{hint}")
    return name


def to_canonical(metric_name: str, value: float, unit: str) -> float:
    """Convert ``value`` in ``unit`` to the metric's canonical unit.

    Raises :class:`PayloadError` if the metric is unknown or the unit cannot be
    converted to the metric's unit.
    """
    m = metric(metric_name)
    if unit == m.unit:
        return value
    conv = UNIT_CONVERSIONS.get(unit)
    if conv is None or conv[0] != m.unit:
        raise PayloadError(
            "unit", f"unit {unit!r} cannot be converted to {m.unit!r} for {m.name}"
        )
    return value * conv[1]
