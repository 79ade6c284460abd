"""The monthly report of an enterprise or a park, assembled from the stores.

Every number comes from the same stores as the API's figures, with the caller's
scope: coverage (:class:`storage.coverage.CoverageStore`), KPIs
(:class:`storage.kpis.KpiStore`) and hourly means
(:class:`storage.queries.TelemetryQueries`). Nothing is computed here that the
API does not also serve; the report only lays the figures out:

- the summary: coverage of the month, energy in tce on both bases, CO2, water,
  unit-product energy with its GB 21346 verdict, emission totals and compliant
  hours per outlet and pollutant (an enterprise), or the park's totals and each
  enterprise's coverage (a park), each with its definition;
- coverage by local day;
- energy per local day in tce (equivalent value) against the daily quota;
- unit-product energy per local day against the GB 21346 levels (an enterprise);
- per outlet, the hourly means of every judged pollutant against its limit (an
  enterprise).

``None`` is returned when the enterprise or park is not within the scope (the
caller answers it as "not found", as for any other id).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from api.report.render import Item, Level, Page, Panel, Report, Series
from smartpark import coverage as cov
from smartpark import kpi
from smartpark.tenancy import Scope
from storage import Storage
from storage.coverage import CoverageStore, Selection
from storage.kpis import (
    EnterpriseKpis,
    EnterprisePeriod,
    KpiStore,
    ParkKpis,
    ParkPeriod,
    SetUsed,
)
from storage.queries import Filters

MAX_HOURLY = 10_000  # buckets of one outlet's pollutant in a month: 744


def month_bounds(month: date) -> tuple[date, date]:
    """The first day of ``month`` and the first day of the next month."""
    first = month.replace(day=1)
    nxt = (first + timedelta(days=32)).replace(day=1)
    return first, nxt


def _fmt(value: float | None, unit: str, digits: int = 3) -> str:
    if value is None:
        return "insufficient data"
    return f"{value:,.{digits}f} {unit}".replace(",", " ")


def _sets_note(sets: Sequence[SetUsed]) -> str:
    return "coefficient sets: " + ", ".join(f"{s.name} ({s.version})" for s in sets)


def _percent(rate: float | None) -> float | None:
    return None if rate is None else round(100 * rate, 2)


async def _coverage_pages(
    storage: Storage, scope: Scope, *, park: str, enterprise: str | None,
    first: date, nxt: date, tz: ZoneInfo,
) -> tuple[list[Item], Panel]:  # fmt: skip
    store = CoverageStore(storage)
    last = nxt - timedelta(days=1)
    sel = Selection(park, enterprise)
    level: cov.Level = "enterprise" if enterprise else "park"
    month = await store.figures(
        scope, sel, first=first, last=last, unit="month", tz=tz, detail="enterprise"
    )
    month = [f for f in month if f.level == level]
    daily = await store.daily(
        scope, park=park, enterprise=enterprise, start=first, end=last, tz=tz
    )
    daily = [f for f in daily if f.level == level]

    def value(f: cov.Figure) -> float | None:
        if level == "park":
            return f.coverage_percent
        return _percent(f.counts.coverage_rate)

    items: list[Item] = []
    if month:
        m = month[0]
        items.append(Item(
            "coverage", _fmt(value(m), "%", 2),
            cov.DEFINITIONS["coverage_percent" if level == "park" else "coverage_rate"],
        ))  # fmt: skip
        items.append(Item(
            "readings (expected / received / valid)",
            f"{m.counts.expected} / {m.counts.received} / {m.counts.valid}",
            cov.DEFINITIONS["valid"],
        ))  # fmt: skip
    points = [
        (datetime.combine(f.period, datetime.min.time(), tz), value(f))
        for f in sorted(daily, key=lambda f: f.period)
    ]
    panel = Panel(
        "coverage by local day", "%", [Series(level, points)],
        [Level("100 %", 100.0)], "bar", "valid / expected readings", tz,
    )  # fmt: skip
    return items, panel


def _energy_items(p: EnterprisePeriod) -> list[Item]:
    sets = "GB/T 2589 reference coefficients (see coefficient_sets)"
    items = [
        Item("energy, equivalent value", _fmt(p.energy.total_tce_equivalent, "tce"),
             f"sum of every source's consumption x its coefficient; {sets}"),
        Item("energy, equal value", _fmt(p.energy.total_tce_equal_value, "tce"),
             "as above, electricity at the equal-value (generation coal rate) basis"),
        Item("CO2 from purchased electricity", _fmt(p.co2.t, "t"),
             "purchased kWh x the grid factor of the period's year and region"
             + (f" ({p.co2.factor.version}, {p.co2.factor.year}, "
                f"{p.co2.factor.region}: {p.co2.factor.value} {p.co2.factor.unit})"
                + (f"; {p.co2.factor.note}" if p.co2.factor.note else "")
                if p.co2.factor else "")),
        Item("water intake", _fmt(p.water.intake_m3, "m3"),
             "consumption of the intake meters (water_volume)"),
        Item("water reuse ratio", _fmt(p.water.reuse_ratio, "", 3),
             "reused / (reused + intake)"),
        Item("wastewater discharged", _fmt(p.water.wastewater_m3, "m3"),
             "consumption of the wastewater meters"),
    ]  # fmt: skip
    u = p.unit_product_energy
    if u.levels is not None:
        items.append(Item(
            f"unit-product energy ({u.product or 'product'})",
            f"{_fmt(u.kwh_per_t, 'kWh/t', 1)}; {u.verdict or u.status}",
            f"{u.levels.norm} {u.levels.indicator}: limit {u.levels.limit:g},"
            f" access {u.levels.access:g}, advanced {u.levels.advanced:g}"
            f" {u.levels.unit}",
        ))  # fmt: skip
    items.extend(
        Item(
            f"emitted {e.pollutant}, {e.outlet}", _fmt(e.kg, "kg"),
            f"method: {e.method or '-'}; hours from Cou {e.hours_cou}, from flow x"
            f" concentration {e.hours_flow_x_concentration},"
            f" missing {e.hours_missing}",
        )
        for e in p.emissions
    )  # fmt: skip
    items.extend(
        Item(
            f"hours {h.pollutant}, {h.outlet}",
            f"{h.compliant} ok / {h.breached} breached / {h.invalid} invalid /"
            f" {h.insufficient} insufficient",
            f"hourly means of valid data of {h.metric_judged} against {h.limit:g}",
        )
        for h in p.compliance
    )  # fmt: skip
    return items


async def _enterprise_kpis(
    storage: Storage, scope: Scope, enterprise: str, *, kind: kpi.PeriodKind,
    first: date, nxt: date, tz: ZoneInfo,
) -> EnterpriseKpis | None:  # fmt: skip
    return await KpiStore(storage, storage.queries).enterprise(
        scope, enterprise, kind=kind, periods=kpi.periods(kind, first, nxt, tz),
        tz=tz, coefficients=kpi.shipped(),
    )  # fmt: skip


def _day(p: EnterprisePeriod | ParkPeriod, tz: ZoneInfo) -> datetime:
    return p.period.start.astimezone(tz)


async def _hourly_pages(
    storage: Storage, scope: Scope, monthly: EnterprisePeriod, *, first: date,
    nxt: date, tz: ZoneInfo,
) -> list[Page]:  # fmt: skip
    start = datetime.combine(first, datetime.min.time(), tz).astimezone(UTC)
    end = datetime.combine(nxt, datetime.min.time(), tz).astimezone(UTC)
    by_outlet: dict[str, list[Panel]] = {}
    for h in monthly.compliance:
        devices = await storage.queries.outlet_devices(scope, h.outlet)
        rows, _ = await storage.queries.aggregates(
            scope, Filters(metric=h.metric_judged, devices=devices),
            start=start, end=end, interval="1h", tz=tz, limit=MAX_HOURLY,
            consumption=False,
        )  # fmt: skip
        series: dict[str, list[tuple[datetime, float | None]]] = {}
        for b in rows:
            series.setdefault(b.device, []).append((b.bucket, b.mean))
        by_outlet.setdefault(h.outlet, []).append(Panel(
            f"{h.pollutant}: hourly means ({h.metric_judged})", rows[0].unit if rows
            else "", [Series(d, pts) for d, pts in sorted(series.items())],
            [Level("limit", h.limit)], "line",
            "all stored readings; the compliant-hour count judges valid data only",
            tz,
        ))  # fmt: skip
    return [
        Page(f"outlet {outlet}: hourly means against the permit limit", panels)
        for outlet, panels in sorted(by_outlet.items())
    ]


async def enterprise_report(
    storage: Storage, scope: Scope, enterprise: str, *, month: date, tz: ZoneInfo,
    generated_at: datetime,
) -> Report | None:  # fmt: skip
    """The monthly report of ``enterprise`` (None: not within ``scope``)."""
    first, nxt = month_bounds(month)
    monthly = await _enterprise_kpis(
        storage, scope, enterprise, kind="month", first=first, nxt=nxt, tz=tz
    )
    if monthly is None:
        return None
    daily = await _enterprise_kpis(
        storage, scope, enterprise, kind="day", first=first, nxt=nxt, tz=tz
    )
    assert daily is not None
    cov_items, cov_panel = await _coverage_pages(
        storage, scope, park=monthly.park, enterprise=enterprise, first=first,
        nxt=nxt, tz=tz,
    )  # fmt: skip
    m = monthly.periods[0]
    days = list(daily.periods)
    quota = next(
        (q.quota for q in days[0].quotas if q.what.startswith("energy")), None
    ) if days else None  # fmt: skip
    energy = Panel(
        "energy per local day", "tce",
        [Series("equivalent value", [(_day(p, tz), p.energy.total_tce_equivalent)
                                     for p in days]),
         Series("equal value", [(_day(p, tz), p.energy.total_tce_equal_value)
                                for p in days])],
        [Level("daily quota", quota)] if quota is not None else [], "line",
        "consumption of the meters across resets, never negative", tz,
    )  # fmt: skip
    pages = [Page("coverage and energy", [cov_panel, energy])]
    levels = m.unit_product_energy.levels
    if levels is not None:
        pages.append(Page("unit-product energy", [Panel(
            f"{levels.indicator} per local day", levels.unit,
            [Series("kWh/t", [(_day(p, tz), p.unit_product_energy.kwh_per_t)
                              for p in days])],
            [Level("limit", levels.limit), Level("access", levels.access),
             Level("advanced", levels.advanced)], "line",
            f"{levels.norm}; {levels.note or ''}", tz,
        )]))  # fmt: skip
    pages += await _hourly_pages(storage, scope, m, first=first, nxt=nxt, tz=tz)
    return Report(
        "Monthly report",
        f"enterprise {enterprise} (park {monthly.park}), {first:%Y-%m}, {tz.key}",
        generated_at,
        [*cov_items, *_energy_items(m)],
        pages,
        [_sets_note(monthly.coefficient_sets),
         f"period: {m.period.start.isoformat()} to {m.period.end.isoformat()}"
         f" ({'complete' if m.period.complete else 'not complete yet'})"],
    )  # fmt: skip


async def park_report(
    storage: Storage, scope: Scope, park: str, *, month: date, tz: ZoneInfo,
    generated_at: datetime,
) -> Report | None:  # fmt: skip
    """The monthly report of ``park`` (None: not within ``scope``, or an
    enterprise key: park totals would show the other enterprises)."""
    first, nxt = month_bounds(month)
    store = KpiStore(storage, storage.queries)

    async def kpis(kind: kpi.PeriodKind) -> ParkKpis | None:
        return await store.park(
            scope, park, kind=kind, periods=kpi.periods(kind, first, nxt, tz),
            tz=tz, coefficients=kpi.shipped(),
        )  # fmt: skip

    monthly = await kpis("month")
    if monthly is None:
        return None
    daily = await kpis("day")
    assert daily is not None
    cov_items, cov_panel = await _coverage_pages(
        storage, scope, park=park, enterprise=None, first=first, nxt=nxt, tz=tz
    )
    m = monthly.periods[0]
    items = [
        *cov_items,
        Item("energy, equivalent value", _fmt(m.total_tce_equivalent, "tce"),
             "sum over the park's enterprises"),
        Item("energy, equal value", _fmt(m.total_tce_equal_value, "tce"),
             "sum over the park's enterprises"),
        Item("CO2 from purchased electricity", _fmt(m.co2_t, "t"),
             "sum over the park's enterprises"),
        Item("water intake", _fmt(m.water_intake_m3, "m3"),
             "sum over the park's enterprises"),
        Item("wastewater discharged", _fmt(m.wastewater_m3, "m3"),
             "sum over the park's enterprises"),
    ]  # fmt: skip
    for e in monthly.by_enterprise:
        ep = e.periods[0]
        items.append(Item(
            f"energy {e.enterprise}", _fmt(ep.energy.total_tce_equivalent, "tce"),
            "equivalent value",
        ))  # fmt: skip
    energy = Panel(
        "park energy per local day", "tce",
        [Series("equivalent value", [(_day(p, tz), p.total_tce_equivalent)
                                     for p in daily.periods])],
        [], "bar", "a day with an enterprise's insufficient data is a gap", tz,
    )  # fmt: skip
    return Report(
        "Monthly report",
        f"park {park}, {first:%Y-%m}, {tz.key}",
        generated_at,
        items,
        [Page("coverage and energy", [cov_panel, energy])],
        [_sets_note(monthly.coefficient_sets)],
    )  # fmt: skip
