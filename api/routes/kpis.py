"""The regulator's KPIs over HTTP, per enterprise and per park, per local day,
month or year (:mod:`storage.kpis` computes them within the caller's scope; the
definitions are :mod:`smartpark.kpi`'s, repeated in each route's description).

``GET /v1/enterprises/{id}/kpis`` and ``GET /v1/parks/{id}/kpis`` take
``period`` (day | month | year), ``start`` (the local date the first period
starts: a day, the 1st of a month, January 1st) and ``end`` (exclusive, aligned
the same way; default: one period). Periods start at local midnight in ``tz``
(default: the park's time zone). Another tenant's enterprise or park is the same
404 as one that does not exist; park KPIs are for operators and regulators.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query

from api.auth import Caller, Reader
from api.problems import bad_input, not_found
from smartpark import kpi, wire
from smartpark.clock import zone
from storage.kpis import EnterpriseKpis, KpiStore, ParkKpis
from storage.registry import ENTERPRISES, PARKS

router = APIRouter(prefix="/v1", tags=["kpis"])
DEFAULT_TZ = "Asia/Shanghai"
MAX_PERIODS = {"day": 366, "month": 120, "year": 20}
FIRST_YEAR, LAST_YEAR = 1970, 2199

DEFINITIONS = (
    "Definitions. Energy per source is the consumption of its meters (counters,"
    " across resets, never negative) in the catalogue unit; electricity is the"
    " purchased electricity (the enterprise's electricity_meters, else every"
    " active_energy meter). tce = amount x the GB/T 2589 coefficient of the set"
    " named in coefficient_sets, on two bases: equivalent value (electricity by"
    " its calorific content) and equal value (electricity at the generation coal"
    " rate, configuration). Steam mass alone is not converted (its"
    " enthalpy is unknown): meter steam_heat. CO2 (t) = purchased electricity x"
    " the grid factor of the period's year and the park's grid_region (a year"
    " without a factor uses the latest earlier one, a region without one the"
    " national one; the note says so). Unit-product energy = electricity (kWh) /"
    " product output (t), judged against the GB 21346 levels: meets_advanced,"
    " meets_access, meets_limit or exceeds_limit (lower is better, equal meets)."
    " Water: intake (water_volume), reused, wastewater (m3); intake per output"
    " (m3/t); reuse ratio = reused / (reused + intake). Emission totals (kg) per"
    " outlet and pollutant: hourly Cou where present, else hourly mean flow x mean"
    " concentration of valid readings (flue gas mg/m3 x m3/h x 1 h x 1e-6;"
    " wastewater mg/L x m3/h x 1 h x 1e-3), daily Cou when a period has no hourly"
    " one; method says which. Hours per outlet and limit (the _corrected metric"
    " where the outlet has a reference O2): a closed local hour is judged on the"
    " mean of its valid readings (quality N, not in an invalid-marked period) when"
    " at least min_valid_ratio of its expected readings (3600 / interval_s of the"
    " outlet's devices registered with the metric) are valid (the default is the"
    " platform's; HJ 75's exact rule was not retrieved): compliant (mean <= limit)"
    " or breached; otherwise invalid (the data arrived but was flagged or marked,"
    " or the hour is marked) or insufficient. compliant_ratio = compliant /"
    " (compliant + breached). A figure that lacks data (a meter with no reading in"
    " the period) has status"
    " insufficient_data and its reason, never a number."
)

_FACTOR_EX = {
    "set": "grid-co2-mee", "version": "MEE/NBS grid emission factors ...",
    "year": 2023, "region": "north", "value": 0.6361, "unit": "kgCO2/kWh",
    "note": None,
}  # fmt: skip
_PERIOD_EX = {
    "period": {"kind": "month", "label": "2023-03",
               "start": "2023-02-28T16:00:00Z", "end": "2023-03-31T16:00:00Z",
               "complete": True},
    "status": "ok", "reasons": [],
    "energy": {"status": "ok", "reasons": [], "sources": [
        {"metric": "active_energy", "unit": "kWh", "amount": 13000000.0,
         "status": "ok", "reason": None, "meters": ["pot-line-1"],
         "tce_equivalent": 1597.7, "tce_equal_value": 5252.0}],
        "total_tce_equivalent": 1597.7, "total_tce_equal_value": 5252.0},
    "co2": {"status": "ok", "reason": None, "electricity_kwh": 13000000.0,
            "t": 8269.3, "factor": _FACTOR_EX},
    "unit_product_energy": {
        "status": "ok", "reason": None, "product": "aluminium liquid",
        "output_t": 1000.0, "electricity_kwh": 13000000.0, "kwh_per_t": 13000.0,
        "levels": {"norm": "gb21346-2013", "indicator": "aluminium_liquid_ac_power",
                   "description": "aluminium liquid AC power consumption",
                   "unit": "kWh/t", "limit": 13700.0, "access": 12750.0,
                   "advanced": 12650.0, "note": "GB 21346-2022 ..."},
        "verdict": "meets_limit"},
    "water": {"status": "ok", "reasons": [], "intake_m3": 3000.0, "reused_m3": 1000.0,
              "wastewater_m3": 500.0, "intake_per_output_m3_per_t": 3.0,
              "reuse_ratio": 0.25},
    "quotas": [{"what": "energy_equivalent", "unit": "tce", "quota": 2000.0,
                "used": 1597.7, "ratio": 0.79885}],
    "emissions": [{"outlet": "stack-1", "pollutant": "fluoride", "status": "ok",
                   "reason": None, "kg": 12.5, "known_kg": 12.5, "method": "cou",
                   "hours_cou": 744, "hours_flow_x_concentration": 0,
                   "hours_missing": 0}],
    "compliance": [{"outlet": "stack-1", "pollutant": "fluoride",
                    "metric_judged": "fluoride", "limit": 3.0, "compliant": 740,
                    "breached": 1, "invalid": 3, "insufficient": 0,
                    "compliant_ratio": 0.99865}],
}  # fmt: skip
_SETS_EX = [
    {"name": "tce-gbt2589", "version": "GB/T 2589 ...", "source": "GB/T 2589 ..."},
    {"name": "electricity-equal-value", "version": "example 0.404 ...",
     "source": "..."},
    {"name": "grid-co2-mee", "version": "...", "source": "MEE and NBS ..."},
    {"name": "gb21346-2013", "version": "GB 21346-2013", "source": "..."},
]  # fmt: skip
ENTERPRISE_EX = {
    "enterprise": "al-smelter", "park": "park-1", "timezone": "Asia/Shanghai",
    "coefficient_sets": _SETS_EX, "min_valid_ratio": 0.75, "periods": [_PERIOD_EX],
}  # fmt: skip
PARK_EX = {
    "park": "park-1", "timezone": "Asia/Shanghai", "enterprises": ["al-smelter"],
    "coefficient_sets": _SETS_EX, "min_valid_ratio": 0.75,
    "periods": [{"period": _PERIOD_EX["period"], "status": "ok", "reasons": [],
                 "total_tce_equivalent": 1597.7, "total_tce_equal_value": 5252.0,
                 "co2_t": 8269.3, "water_intake_m3": 3000.0,
                 "wastewater_m3": 500.0}],
    "by_enterprise": [ENTERPRISE_EX],
}  # fmt: skip


def _example(value: Any) -> dict[int | str, dict[str, Any]]:
    return {200: {"content": {"application/json": {"example": value}}}}


PathId = Annotated[str, "the id in the path"]
PeriodQ = Annotated[
    Literal["day", "month", "year"], Query(description="local day, month or year")
]
StartQ = Annotated[
    date, Query(description="local date the first period starts (aligned)")
]
EndQ = Annotated[
    date | None,
    Query(description="local date after the last period (exclusive, aligned);"
          " default: one period"),
]  # fmt: skip
TzQ = Annotated[
    str | None,
    Query(max_length=64, description="IANA zone (default: the park's)"),
]
MinValidQ = Annotated[
    float,
    Query(gt=0, le=1, description="share of an hour's expected readings that must"
          " be valid for the hour to be judged (platform default 0.75)"),
]  # fmt: skip


def _path_id(value: str) -> str:
    if not wire.valid_id(value):
        raise bad_input("path.id", "invalid id: 1-64 characters of A-Z a-z 0-9 _ . : -")
    return value


async def _periods(
    who: Caller, park: str, period: kpi.PeriodKind, *, start: date,
    end: date | None, tz: str | None,
) -> tuple[ZoneInfo, list[kpi.Period]]:  # fmt: skip
    for name, d in (("start", start), ("end", end)):
        if d is None:
            continue
        if not FIRST_YEAR <= d.year <= LAST_YEAR:
            raise bad_input(f"query.{name}", f"a year from {FIRST_YEAR} to {LAST_YEAR}")
        try:
            kpi.check_aligned(period, d)
        except ValueError as exc:
            raise bad_input(f"query.{name}", str(exc)) from None
    try:
        tzinfo = zone(tz or await who.park_timezone(park) or DEFAULT_TZ)
    except ValueError as exc:
        raise bad_input("query.tz", str(exc)) from None
    if end is None:
        end = kpi.next_start(period, start)
    if end <= start:
        raise bad_input("query.end", "must be after start")
    n = kpi.count_periods(period, start, end)
    if n > MAX_PERIODS[period]:
        raise bad_input(
            "query.end", f"at most {MAX_PERIODS[period]} {period}s per request"
        )
    return tzinfo, kpi.periods(period, start, end, tzinfo)


@router.get(
    "/enterprises/{id}/kpis", response_model=EnterpriseKpis,
    summary="An enterprise's KPIs per local day, month or year",
    description="Energy by source and in tce on both bases, CO2 from purchased"
    " electricity, unit-product energy against GB 21346, water, quotas, emission"
    " totals and compliant hours per outlet, per period. " + DEFINITIONS,
    responses=_example(ENTERPRISE_EX),
)  # fmt: skip
async def enterprise_kpis(
    id: PathId, who: Reader, *, period: PeriodQ, start: StartQ, end: EndQ = None,
    tz: TzQ = None, min_valid: MinValidQ = kpi.DEFAULT_MIN_VALID,
) -> EnterpriseKpis:  # fmt: skip
    ent = await who.storage.registry.get(ENTERPRISES, who.scope, _path_id(id))
    if ent is None:
        raise not_found("enterprise")
    tzinfo, periods = await _periods(who, ent.park, period, start=start, end=end, tz=tz)
    store = KpiStore(who.storage, who.storage.queries)
    out = await store.enterprise(
        who.scope, ent.id, kind=period, periods=periods, tz=tzinfo,
        coefficients=kpi.shipped(), min_valid=min_valid,
    )  # fmt: skip
    if out is None:
        raise not_found("enterprise")
    return out


@router.get(
    "/parks/{id}/kpis", response_model=ParkKpis,
    summary="A park's KPIs per local day, month or year",
    description="Totals over the park's active enterprises (tce on both bases, CO2,"
    " water intake, wastewater; insufficient_data when one enterprise's figure is)"
    " and each enterprise's KPIs. Operators and regulators only (an enterprise key"
    " gets 404). " + DEFINITIONS,
    responses=_example(PARK_EX),
)  # fmt: skip
async def park_kpis(
    id: PathId, who: Reader, *, period: PeriodQ, start: StartQ, end: EndQ = None,
    tz: TzQ = None, min_valid: MinValidQ = kpi.DEFAULT_MIN_VALID,
) -> ParkKpis:  # fmt: skip
    if who.scope.enterprise is not None:
        raise not_found("park")
    park = await who.storage.registry.get(PARKS, who.scope, _path_id(id))
    if park is None:
        raise not_found("park")
    tzinfo, periods = await _periods(who, park.id, period, start=start, end=end, tz=tz)
    store = KpiStore(who.storage, who.storage.queries)
    out = await store.park(
        who.scope, park.id, kind=period, periods=periods, tz=tzinfo,
        coefficients=kpi.shipped(), min_valid=min_valid,
    )  # fmt: skip
    if out is None:
        raise not_found("park")
    return out
