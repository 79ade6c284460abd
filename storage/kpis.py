"""The regulator's KPIs per enterprise and park, per local day, month or year,
within the caller's :class:`~smartpark.tenancy.Scope` (applied in SQL by the
registry, :mod:`storage.queries` and :mod:`storage.marks`).

Contract of :class:`KpiStore`: every method takes the scope; an enterprise or park
outside it is None, exactly as one that does not exist. A park's KPIs are for
operators and regulators: an enterprise key gets None (its park's totals would
show the other enterprises). The definitions of every figure are in
:mod:`smartpark.kpi`; the numbers (coefficients, factors, levels) come from the
:class:`~smartpark.kpi.Coefficients` given, and every period names the sets used.

What the figures read:

- **consumption** of a counter (energy, water, product) is
  :meth:`TelemetryQueries.aggregates`' ``consumption`` of its ``realtime`` series
  (across ``reset``, never negative). A source's meters are the enterprise's
  devices registered with the metric or reporting it in the range (electricity:
  the registry's ``electricity_meters`` patterns, else all; product: the
  product's ``devices`` patterns, else all). A meter with no reading in the
  period makes the source ``insufficient_data`` with the reason, never a number.
- **emission totals** per outlet and pollutant (catalogue metrics with a mass
  total, kg), per closed local hour: the loggers' hourly ``Cou`` (stat ``cou``,
  data type ``hour``) where present, otherwise the hour's mean flow x mean
  concentration of valid readings (:func:`smartpark.kpi.hour_mass_kg`); a period
  without any hourly ``Cou`` but with daily ones uses the daily ``Cou``. An hour
  with neither leaves the total ``insufficient_data`` (``known_kg`` is the sum of
  the hours that had data).
- **compliant hours** per outlet and limit (the ``_corrected`` metric where the
  outlet has a reference O2): each closed local hour classified by
  :func:`smartpark.kpi.classify_hour` from the readings of the outlet's devices
  registered with the metric: valid = quality N and outside the invalid-marked
  periods (:meth:`MarkStore.invalid_periods`); expected per hour = 3600 /
  interval_s for real-time data, 60 for minute data, 1 for hourly data (the
  finest data type the device sent in the range).

Hours are "closed" when they end at or before now (the database clock): a period
in progress is counted up to now, and says ``complete: false``.
"""

from __future__ import annotations

import fnmatch
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from psycopg import sql

from smartpark import kpi
from smartpark.catalogue import METRICS
from smartpark.tenancy import Scope
from storage.archive.reader import check_not_evicted
from storage.base import Database, storage_errors, table
from storage.marks import InvalidPeriod, MarkStore
from storage.queries import Filters, TelemetryQueries
from storage.registry import (
    DEVICES,
    ENTERPRISES,
    OUTLETS,
    PARKS,
    DeviceRow,
    EnterpriseRow,
    ListFilters,
    OutletRow,
    ParkRow,
    RegistryStore,
)

OK = "ok"
INSUFFICIENT = "insufficient_data"
NOT_CONFIGURED = "not_configured"
WATER_METRICS = ("water_volume", "reused_water_volume", "wastewater_volume")
_FINEST = ("realtime", "minute", "hour")
_MAX_ROWS = 10_000_000


# -- what a period reports --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SetUsed:
    name: str
    version: str
    source: str


@dataclass(frozen=True, slots=True)
class PeriodOut:
    kind: str
    label: str
    start: datetime
    end: datetime
    complete: bool


@dataclass(frozen=True, slots=True)
class Consumption:
    metric: str
    unit: str
    amount: float | None
    status: str
    reason: str | None
    meters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class EnergySource:
    metric: str
    unit: str
    amount: float | None
    status: str
    reason: str | None
    meters: tuple[str, ...]
    tce_equivalent: float | None
    tce_equal_value: float | None


@dataclass(frozen=True, slots=True)
class Energy:
    status: str
    reasons: tuple[str, ...]
    sources: tuple[EnergySource, ...]
    total_tce_equivalent: float | None
    total_tce_equal_value: float | None


@dataclass(frozen=True, slots=True)
class FactorOut:
    set: str
    version: str
    year: int
    region: str
    value: float
    unit: str
    note: str | None


@dataclass(frozen=True, slots=True)
class Co2:
    status: str
    reason: str | None
    electricity_kwh: float | None
    t: float | None
    factor: FactorOut | None


@dataclass(frozen=True, slots=True)
class LevelsOut:
    norm: str
    indicator: str
    description: str
    unit: str
    limit: float
    access: float
    advanced: float
    note: str | None


@dataclass(frozen=True, slots=True)
class UnitProductEnergy:
    status: str
    reason: str | None
    product: str | None
    output_t: float | None
    electricity_kwh: float | None
    kwh_per_t: float | None
    levels: LevelsOut | None
    verdict: str | None


@dataclass(frozen=True, slots=True)
class Water:
    status: str
    reasons: tuple[str, ...]
    intake_m3: float | None
    reused_m3: float | None
    wastewater_m3: float | None
    intake_per_output_m3_per_t: float | None
    reuse_ratio: float | None


@dataclass(frozen=True, slots=True)
class QuotaUse:
    what: str
    unit: str
    quota: float
    used: float | None
    ratio: float | None


@dataclass(frozen=True, slots=True)
class EmissionTotal:
    outlet: str
    pollutant: str
    status: str
    reason: str | None
    kg: float | None
    known_kg: float
    method: str | None  # cou | cou_daily | flow_x_concentration | mixed
    hours_cou: int
    hours_flow_x_concentration: int
    hours_missing: int


@dataclass(frozen=True, slots=True)
class HourCounts:
    outlet: str
    pollutant: str
    metric_judged: str
    limit: float
    compliant: int
    breached: int
    invalid: int
    insufficient: int
    compliant_ratio: float | None  # compliant / (compliant + breached)


@dataclass(frozen=True, slots=True)
class EnterprisePeriod:
    period: PeriodOut
    status: str
    reasons: tuple[str, ...]
    energy: Energy
    co2: Co2
    unit_product_energy: UnitProductEnergy
    water: Water
    quotas: tuple[QuotaUse, ...]
    emissions: tuple[EmissionTotal, ...]
    compliance: tuple[HourCounts, ...]


@dataclass(frozen=True, slots=True)
class EnterpriseKpis:
    enterprise: str
    park: str
    timezone: str
    coefficient_sets: tuple[SetUsed, ...]
    min_valid_ratio: float
    periods: tuple[EnterprisePeriod, ...]


@dataclass(frozen=True, slots=True)
class ParkPeriod:
    period: PeriodOut
    status: str
    reasons: tuple[str, ...]
    total_tce_equivalent: float | None
    total_tce_equal_value: float | None
    co2_t: float | None
    water_intake_m3: float | None
    wastewater_m3: float | None


@dataclass(frozen=True, slots=True)
class ParkKpis:
    park: str
    timezone: str
    enterprises: tuple[str, ...]
    coefficient_sets: tuple[SetUsed, ...]
    min_valid_ratio: float
    periods: tuple[ParkPeriod, ...]
    by_enterprise: tuple[EnterpriseKpis, ...]


# -- helpers ------------------------------------------------------------------------


def sets_used(c: kpi.Coefficients) -> tuple[SetUsed, ...]:
    eq = c.tce.equal_value
    return (
        SetUsed(c.tce.name, c.tce.version, c.tce.source),
        SetUsed(eq.name, eq.version, eq.source),
        SetUsed(c.grid.name, c.grid.version, c.grid.source),
        SetUsed(c.norm.name, c.norm.version, c.norm.source),
    )


def _matches(device: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(device, p) for p in patterns)


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


@dataclass
class _HourAgg:
    n: int = 0
    valid: int = 0
    sum_valid: float = 0.0
    sum_all: float = 0.0


# (device, metric, data_type, stat) -> hour -> aggregate
_Hourly = dict[tuple[str, str, str, str], dict[datetime, _HourAgg]]


class KpiStore:
    """See the module doc."""

    def __init__(self, db: Database, queries: TelemetryQueries) -> None:
        self._db = db
        self._queries = queries
        self._marks = MarkStore(db)

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC)

    # -- public ---------------------------------------------------------------------

    async def enterprise(
        self, scope: Scope, enterprise: str, *, kind: kpi.PeriodKind,
        periods: Sequence[kpi.Period], tz: ZoneInfo, coefficients: kpi.Coefficients,
        min_valid: float = kpi.DEFAULT_MIN_VALID,
    ) -> EnterpriseKpis | None:  # fmt: skip
        """The KPIs of ``enterprise`` per period; None if not within ``scope``."""
        registry = _Registry(self._db)
        ent = await registry.enterprise(scope, enterprise)
        if ent is None:
            return None
        if periods:
            await check_not_evicted(
                self._db, "KPIs", park=ent.park, enterprise=ent.id,
                start=periods[0].start, end=periods[-1].end,
            )  # fmt: skip
        park = await registry.park(scope, ent.park)
        devices = await registry.devices(scope, ent)
        outlets = await registry.outlets(scope, ent)
        return await self._enterprise(
            scope, ent, park, devices, outlets, kind=kind, periods=periods, tz=tz,
            c=coefficients, min_valid=min_valid,
        )  # fmt: skip

    async def park(
        self, scope: Scope, park: str, *, kind: kpi.PeriodKind,
        periods: Sequence[kpi.Period], tz: ZoneInfo, coefficients: kpi.Coefficients,
        min_valid: float = kpi.DEFAULT_MIN_VALID,
    ) -> ParkKpis | None:  # fmt: skip
        """The park's totals (sums of its active enterprises') and each
        enterprise's KPIs; None if not within ``scope`` or for an enterprise key."""
        if scope.enterprise is not None:
            return None
        registry = _Registry(self._db)
        row = await registry.park(scope, park)
        if row is None:
            return None
        if periods:
            await check_not_evicted(
                self._db, "KPIs", park=park, enterprise=None,
                start=periods[0].start, end=periods[-1].end,
            )  # fmt: skip
        by_ent = []
        for ent in await registry.enterprises(scope, park):
            devices = await registry.devices(scope, ent)
            outlets = await registry.outlets(scope, ent)
            by_ent.append(
                await self._enterprise(
                    scope,
                    ent,
                    row,
                    devices,
                    outlets,
                    kind=kind,
                    periods=periods,
                    tz=tz,
                    c=coefficients,
                    min_valid=min_valid,
                )
            )
        totals = []
        for i, p in enumerate(periods):
            per = [e.periods[i] for e in by_ent]
            reasons = tuple(
                f"{e.enterprise}: {r}" for e, ep in zip(by_ent, per, strict=True)
                for r in ep.energy.reasons + ep.water.reasons
                + ((ep.co2.reason,) if ep.co2.reason else ())
            )  # fmt: skip

            totals.append(
                ParkPeriod(
                    period=per[0].period if per else _period_out(p, self._now()),
                    status=INSUFFICIENT if reasons else OK,
                    reasons=reasons,
                    total_tce_equivalent=_total(
                        (x.energy.total_tce_equivalent, x.energy.status) for x in per
                    ),
                    total_tce_equal_value=_total(
                        (x.energy.total_tce_equal_value, x.energy.status) for x in per
                    ),
                    co2_t=_total((x.co2.t, x.co2.status) for x in per),
                    water_intake_m3=_total(
                        (x.water.intake_m3, x.water.status) for x in per
                    ),
                    wastewater_m3=_total(
                        (x.water.wastewater_m3, x.water.status) for x in per
                    ),
                )
            )
        return ParkKpis(
            park=row.id, timezone=tz.key,
            enterprises=tuple(e.enterprise for e in by_ent),
            coefficient_sets=sets_used(coefficients), min_valid_ratio=min_valid,
            periods=tuple(totals), by_enterprise=tuple(by_ent),
        )  # fmt: skip

    # -- one enterprise -------------------------------------------------------------

    async def _enterprise(
        self, scope: Scope, ent: EnterpriseRow, park: ParkRow | None,
        devices: list[DeviceRow], outlets: list[OutletRow], *, kind: kpi.PeriodKind,
        periods: Sequence[kpi.Period], tz: ZoneInfo, c: kpi.Coefficients,
        min_valid: float,
    ) -> EnterpriseKpis:  # fmt: skip
        now = self._now()
        start, end = periods[0].start, periods[-1].end
        product = ent.product or {}
        product_metric = str(product.get("metric", "production_mass"))
        metrics = {*kpi.ENERGY_METRICS, "steam_mass", *WATER_METRICS}
        if product:
            metrics.add(product_metric)
        consumed = await self._consumption(
            scope, ent, sorted(metrics), start=start, end=end, kind=kind, tz=tz
        )
        hourly, marks = await self._hourly(
            scope, ent, outlets=outlets, devices=devices, start=start, end=end, tz=tz
        )
        out = []
        for p in periods:
            label = p.label
            pout = _period_out(p, now)
            # a meter retired before the period is not expected to report in it
            here = [
                d for d in devices if d.retired_at is None or d.retired_at > p.start
            ]

            def source(
                metric: str, patterns: Sequence[str] | None = None
            ) -> Consumption:
                return _consumption_of(
                    metric,
                    here,  # noqa: B023 - called within the iteration
                    consumed.get(metric, {}),
                    label,  # noqa: B023
                    patterns,
                )

            electricity = source("active_energy", ent.electricity_meters)
            energy = _energy(c.tce, [electricity] + [
                source(m) for m in ("coal_mass", "natural_gas_volume", "steam_heat",
                                    "steam_mass")
            ])  # fmt: skip
            co2 = _co2(c.grid, electricity, p, park)
            output = source(product_metric, product.get("devices")) if product else None
            upe = _unit_product(c.norm, product, output, electricity)
            water = _water([source(m) for m in WATER_METRICS], output)
            quotas = _quotas(ent, p, energy, water)
            closed_end = min(p.end, _floor_hour(now, p.start))
            emissions = tuple(
                e for o in outlets
                for e in _emissions(o, here, hourly, p.start, closed_end)
            )  # fmt: skip
            compliance = tuple(
                h for o in outlets
                for h in _compliance(
                    o, here, hourly, marks=marks, start=p.start, end=closed_end,
                    min_valid=min_valid,
                )
            )  # fmt: skip
            reasons = (
                energy.reasons + water.reasons
                + ((co2.reason,) if co2.status == INSUFFICIENT and co2.reason else ())
                + ((upe.reason,) if upe.status == INSUFFICIENT and upe.reason else ())
                + tuple(f"{e.outlet} {e.pollutant}: {e.reason}" for e in emissions
                        if e.status == INSUFFICIENT)
            )  # fmt: skip
            out.append(
                EnterprisePeriod(
                    period=pout,
                    status=INSUFFICIENT if reasons else OK,
                    reasons=tuple(dict.fromkeys(reasons)),
                    energy=energy,
                    co2=co2,
                    unit_product_energy=upe,
                    water=water,
                    quotas=quotas,
                    emissions=emissions,
                    compliance=compliance,
                )
            )
        return EnterpriseKpis(
            enterprise=ent.id, park=ent.park, timezone=tz.key,
            coefficient_sets=sets_used(c), min_valid_ratio=min_valid,
            periods=tuple(out),
        )  # fmt: skip

    async def _consumption(
        self, scope: Scope, ent: EnterpriseRow, metrics: Sequence[str], *,
        start: datetime, end: datetime, kind: kpi.PeriodKind, tz: ZoneInfo,
    ) -> dict[str, dict[str, dict[str, float]]]:  # fmt: skip
        """metric -> device -> period label -> consumption (a device absent from a
        period had no reading in it)."""
        interval = "1d" if kind == "day" else "1mo"
        out: dict[str, dict[str, dict[str, float]]] = {}
        for metric in metrics:
            rows, _ = await self._queries.aggregates(
                scope,
                Filters(park=ent.park, enterprise=ent.id, metric=metric),
                start=start, end=end, interval=interval, tz=tz, source="raw",
                limit=_MAX_ROWS,
            )  # fmt: skip
            by_device: dict[str, dict[str, float]] = defaultdict(dict)
            for b in rows:
                local = b.bucket.astimezone(tz).date()
                label = (
                    local.isoformat() if kind == "day"
                    else local.strftime("%Y-%m") if kind == "month"
                    else str(local.year)
                )  # fmt: skip
                per = by_device[b.device]
                per[label] = per.get(label, 0.0) + (b.consumption or 0.0)
            out[metric] = dict(by_device)
        return out

    async def _hourly(
        self, scope: Scope, ent: EnterpriseRow, *, outlets: Sequence[OutletRow],
        devices: Sequence[DeviceRow], start: datetime, end: datetime, tz: ZoneInfo,
    ) -> tuple[_Hourly, list[InvalidPeriod]]:  # fmt: skip
        """Per outlet device, metric, data type, stat and local hour: readings,
        valid readings (quality N, not in an invalid-marked period) and sums."""
        ids = [d.id for d in devices if d.outlet in {o.id for o in outlets}]
        if not ids:
            return {}, []
        marks = await self._marks.invalid_periods(
            scope, park=ent.park, enterprise=ent.id, devices=ids, start=start, end=end
        )
        conds: list[sql.Composable] = [sql.SQL("s.park = %s"),
                                       sql.SQL("s.enterprise = %s")]  # fmt: skip
        params: list[Any] = [ent.park, ent.id]
        for column, value in (("park", scope.park), ("enterprise", scope.enterprise)):
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier("s", column)))
                params.append(value)
        query = sql.SQL(
            "WITH marked AS (SELECT * FROM unnest(%s::text[], %s::text[],"
            " %s::timestamptz[], %s::timestamptz[]) AS m(device, metric, s, e))"
            " SELECT s.device, s.metric, s.data_type, s.stat,"
            "  date_trunc('hour', t.time, %s) AS hour, count(*)::int,"
            "  count(*) FILTER (WHERE v.ok)::int,"
            "  coalesce(sum(t.value) FILTER (WHERE v.ok), 0), sum(t.value)"
            " FROM {raw} t JOIN {series} s ON s.id = t.series_id"
            " CROSS JOIN LATERAL (SELECT t.quality::text = 'N' AND NOT EXISTS ("
            "  SELECT 1 FROM marked m WHERE m.device = s.device"
            "  AND (m.metric IS NULL OR m.metric = s.metric)"
            "  AND t.time >= m.s AND t.time < m.e) AS ok) v"
            " WHERE {conds} AND s.device = ANY(%s)"
            " AND t.time >= %s AND t.time < %s"
            " GROUP BY 1, 2, 3, 4, 5"
        ).format(
            raw=self._t("telemetry"), series=self._t("series"),
            conds=sql.SQL(" AND ").join(conds),
        )  # fmt: skip
        all_params = [
            [m.device for m in marks], [m.metric for m in marks],
            [m.start for m in marks], [m.end for m in marks], tz.key,
            *params, ids, start, end,
        ]  # fmt: skip
        hourly: _Hourly = defaultdict(dict)
        with storage_errors("read hourly emissions"):
            async with self._db.connection() as conn:
                cur = await conn.execute(query, all_params)
                for (
                    device,
                    metric,
                    dtype,
                    stat,
                    hour,
                    n,
                    nv,
                    sv,
                    sa,
                ) in await cur.fetchall():
                    hourly[(device, metric, dtype, stat)][hour] = _HourAgg(
                        n, nv, float(sv), float(sa)
                    )
        return dict(hourly), marks


# -- registry reads --------------------------------------------------------------------


class _Registry:
    def __init__(self, db: Database) -> None:
        self._store = RegistryStore(db)

    async def enterprise(self, scope: Scope, id_: str) -> EnterpriseRow | None:
        return await self._store.get(ENTERPRISES, scope, id_)

    async def park(self, scope: Scope, id_: str) -> ParkRow | None:
        return await self._store.get(PARKS, scope, id_)

    async def enterprises(self, scope: Scope, park: str) -> list[EnterpriseRow]:
        return await self._all(ENTERPRISES, scope, ListFilters(park=park))

    async def devices(self, scope: Scope, ent: EnterpriseRow) -> list[DeviceRow]:
        f = ListFilters(enterprise=ent.id)
        return await self._all(DEVICES, scope, f) + await self._all(
            DEVICES, scope, ListFilters(enterprise=ent.id, retired=True)
        )

    async def outlets(self, scope: Scope, ent: EnterpriseRow) -> list[OutletRow]:
        return await self._all(OUTLETS, scope, ListFilters(enterprise=ent.id))

    async def _all(self, entity: Any, scope: Scope, f: ListFilters) -> list[Any]:
        rows: list[Any] = []
        after = None
        while True:
            page = await self._store.find(entity, scope, f, after=after, limit=1000)
            rows += page
            if len(page) < 1000:
                return rows
            after = page[-1].id


# -- per period (pure) ---------------------------------------------------------------


def _total(figures: Iterable[tuple[float | None, str]]) -> float | None:
    """The park's sum of its enterprises' figures: None if one is insufficient;
    an enterprise without the figure (nothing metered) adds nothing."""
    out = 0.0
    for value, status in figures:
        if status == INSUFFICIENT:
            return None
        out += value or 0.0
    return out


def _period_out(p: kpi.Period, now: datetime) -> PeriodOut:
    return PeriodOut(p.kind, p.label, p.start, p.end, complete=p.end <= now)


def _floor_hour(now: datetime, start: datetime) -> datetime:
    """The end of the last closed hour at ``now`` (hours counted from ``start``)."""
    if now <= start:
        return start
    return start + timedelta(hours=int((now - start) / timedelta(hours=1)))


def _consumption_of(
    metric: str, devices: Sequence[DeviceRow],
    by_device: Mapping[str, Mapping[str, float]], label: str,
    patterns: Sequence[str] | None,
) -> Consumption:  # fmt: skip
    unit = METRICS[metric].unit
    registered = {d.id for d in devices if metric in d.metrics}
    meters = sorted(d for d in registered | set(by_device) if _matches(d, patterns))
    if not meters:
        return Consumption(metric, unit, None, NOT_CONFIGURED, "no meter", ())
    silent = [m for m in meters if label not in by_device.get(m, {})]
    if silent:
        reason = f"{metric}: meter(s) {', '.join(silent)} with no reading in {label}"
        return Consumption(metric, unit, None, INSUFFICIENT, reason, tuple(meters))
    amount = sum(by_device[m][label] for m in meters)
    return Consumption(metric, unit, amount, OK, None, tuple(meters))


def _energy(tce_set: kpi.TceSet, sources: Sequence[Consumption]) -> Energy:
    out = []
    reasons = []
    for s in sources:
        if s.status == NOT_CONFIGURED:
            continue
        if s.metric in tce_set.not_convertible:
            reason = f"{s.metric}: {tce_set.not_convertible[s.metric]}"
            out.append(EnergySource(s.metric, s.unit, s.amount, NOT_CONFIGURED,
                                    reason, s.meters, None, None))  # fmt: skip
            continue
        if s.amount is None:
            reasons.append(s.reason or f"{s.metric}: insufficient data")
            out.append(EnergySource(s.metric, s.unit, None, s.status, s.reason,
                                    s.meters, None, None))  # fmt: skip
            continue
        t = kpi.tce(tce_set, {s.metric: s.amount}).sources[0]
        out.append(EnergySource(s.metric, s.unit, s.amount, OK, None, s.meters,
                                t.equivalent_tce, t.equal_value_tce))  # fmt: skip
    if reasons:
        return Energy(INSUFFICIENT, tuple(reasons), tuple(out), None, None)
    used = [e for e in out if e.tce_equivalent is not None]
    return Energy(
        OK, (), tuple(out),
        sum(e.tce_equivalent or 0.0 for e in used),
        sum(e.tce_equal_value or 0.0 for e in used),
    )  # fmt: skip


def _co2(
    grid: kpi.GridFactors, electricity: Consumption, p: kpi.Period,
    park: ParkRow | None,
) -> Co2:  # fmt: skip
    region = None if park is None else park.grid_region
    factor = kpi.grid_factor(grid, p.first_day.year, region)
    fout = None
    if factor is not None:
        fout = FactorOut(grid.name, grid.version, factor.year, factor.region,
                         factor.value, grid.unit, factor.note)  # fmt: skip
    if electricity.status == NOT_CONFIGURED:
        return Co2(NOT_CONFIGURED, "no electricity meter", None, None, fout)
    if factor is None:
        reason = f"no grid factor for {p.first_day.year} or an earlier year"
        return Co2(INSUFFICIENT, reason, electricity.amount, None, None)
    if electricity.amount is None:
        return Co2(INSUFFICIENT, electricity.reason, None, None, fout)
    t = kpi.co2_t(electricity.amount, factor)
    return Co2(OK, None, electricity.amount, t, fout)


def _unit_product(
    norm: kpi.ProductNorm, product: Mapping[str, Any], output: Consumption | None,
    electricity: Consumption,
) -> UnitProductEnergy:  # fmt: skip
    if output is None:
        return UnitProductEnergy(NOT_CONFIGURED, "no product in the registry",
                                 None, None, None, None, None, None)  # fmt: skip
    name = str(product.get("name"))
    levels_out = None
    indicator = product.get("indicator")
    levels = norm.indicators.get(str(indicator)) if indicator else None
    if levels is not None:
        levels_out = LevelsOut(
            norm.name, str(indicator), levels.description, levels.unit, levels.limit,
            levels.access, levels.advanced, norm.superseded_by,
        )  # fmt: skip
    for src in (output, electricity):
        if src.amount is None:
            return UnitProductEnergy(
                INSUFFICIENT if src.status == INSUFFICIENT else NOT_CONFIGURED,
                src.reason, name, output.amount, electricity.amount, None,
                levels_out, None,
            )  # fmt: skip
    assert output.amount is not None
    assert electricity.amount is not None
    if output.amount <= 0:
        return UnitProductEnergy(INSUFFICIENT, "no output in the period", name,
                                 output.amount, electricity.amount, None, levels_out,
                                 None)  # fmt: skip
    value = electricity.amount / output.amount
    verdict = None if levels is None else kpi.verdict(levels, value).value
    return UnitProductEnergy(OK, None, name, output.amount, electricity.amount, value,
                             levels_out, verdict)  # fmt: skip


def _water(sources: Sequence[Consumption], output: Consumption | None) -> Water:
    intake, reused, waste = sources
    reasons = tuple(s.reason for s in sources if s.status == INSUFFICIENT and s.reason)
    per_output = None
    if output is not None and output.amount is not None:
        per_output = _ratio(intake.amount, output.amount)
    ratio = None
    if intake.amount is not None and reused.amount is not None:
        ratio = kpi.reuse_ratio(reused.amount, intake.amount)
    return Water(
        INSUFFICIENT if reasons else OK, reasons, intake.amount, reused.amount,
        waste.amount, per_output, ratio,
    )  # fmt: skip


def _quotas(
    ent: EnterpriseRow, p: kpi.Period, energy: Energy, water: Water
) -> tuple[QuotaUse, ...]:
    out = []
    q = kpi.quota_for(ent.energy_quota_tce, ent.quotas_from, p)
    if q is not None:
        for what, used in (
            ("energy_equivalent", energy.total_tce_equivalent),
            ("energy_equal_value", energy.total_tce_equal_value),
        ):
            out.append(QuotaUse(what, "tce", q, used, _ratio(used, q)))
    q = kpi.quota_for(ent.water_quota_m3, ent.quotas_from, p)
    if q is not None:
        out.append(QuotaUse("water_intake", "m3", q, water.intake_m3,
                            _ratio(water.intake_m3, q)))  # fmt: skip
    return tuple(out)


def _emissions(
    o: OutletRow, devices: Sequence[DeviceRow], hourly: _Hourly, start: datetime,
    end: datetime,
) -> list[EmissionTotal]:  # fmt: skip
    """The outlet's mass totals per pollutant over the closed hours of
    ``[start, end)`` (see the module doc)."""
    wanted_unit = "mg/m3" if o.kind == "stack" else "mg/L"
    flow_metric = kpi.FLOW_METRIC[wanted_unit]
    mine = {d.id for d in devices if d.outlet == o.id}
    keys = [k for k in hourly if k[0] in mine]
    present = sorted({
        k[1] for k in keys
        if k[1] in kpi.pollutants() and METRICS[k[1]].unit == wanted_unit
    })  # fmt: skip
    hours = list(kpi.hours(start, end))
    out = []
    for pollutant in present:
        cou_h = _per_hour(hourly, keys, pollutant, "hour", "cou", valid_only=False)
        cou_d = _per_hour(hourly, keys, pollutant, "day", "cou", valid_only=False)
        conc = _means(hourly, keys, pollutant)
        flow = _means(hourly, keys, flow_metric)
        if not any(h in cou_h for h in hours) and any(start <= d < end for d in cou_d):
            kg = sum(v for d, v in cou_d.items() if start <= d < end)
            out.append(EmissionTotal(o.id, pollutant, OK, None, kg, kg, "cou_daily",
                                     0, 0, 0))  # fmt: skip
            continue
        known = 0.0
        n_cou = n_fc = missing = 0
        for h in hours:
            if h in cou_h:
                known += cou_h[h]
                n_cou += 1
            elif h in conc and h in flow:
                known += kpi.hour_mass_kg(flow[h], conc[h], wanted_unit)
                n_fc += 1
            else:
                missing += 1
        method = (
            None if not (n_cou or n_fc) else "cou" if not n_fc
            else "flow_x_concentration" if not n_cou else "mixed"
        )  # fmt: skip
        if missing or not hours:
            reason = (
                f"{missing} of {len(hours)} hours without Cou or valid flow and"
                " concentration"
            )
            out.append(EmissionTotal(o.id, pollutant, INSUFFICIENT, reason, None, known,
                                     method, n_cou, n_fc, missing))  # fmt: skip
        else:
            out.append(EmissionTotal(o.id, pollutant, OK, None, known, known, method,
                                     n_cou, n_fc, 0))  # fmt: skip
    return out


def _per_hour(
    hourly: _Hourly, keys: Iterable[tuple[str, str, str, str]], metric: str,
    dtype: str, stat: str, *, valid_only: bool,
) -> dict[datetime, float]:  # fmt: skip
    out: dict[datetime, float] = defaultdict(float)
    for k in keys:
        if k[1:] != (metric, dtype, stat):
            continue
        for h, a in hourly[k].items():
            out[h] += a.sum_valid if valid_only else a.sum_all
    return dict(out)


def _finest(hourly: _Hourly, device: str, metric: str) -> str | None:
    for dtype in _FINEST:
        if (device, metric, dtype, "value") in hourly:
            return dtype
    return None


def _means(
    hourly: _Hourly, keys: Iterable[tuple[str, str, str, str]], metric: str
) -> dict[datetime, float]:
    """The hour's mean of valid readings of ``metric`` over the devices (each at
    its finest data type)."""
    sums: dict[datetime, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for device in sorted({k[0] for k in keys}):
        dtype = _finest(hourly, device, metric)
        if dtype is None:
            continue
        for h, a in hourly[(device, metric, dtype, "value")].items():
            if a.valid:
                sums[h][0] += a.sum_valid
                sums[h][1] += a.valid
    return {h: s / n for h, (s, n) in sums.items() if n}


def _compliance(
    o: OutletRow, devices: Sequence[DeviceRow], hourly: _Hourly, *,
    marks: Sequence[InvalidPeriod], start: datetime, end: datetime, min_valid: float,
) -> list[HourCounts]:  # fmt: skip
    out = []
    hours = list(kpi.hours(start, end))
    for limit_metric, limit in sorted(o.limits.items()):
        metric = kpi.judged_metric(limit_metric, o.reference_o2)
        devs = [d for d in devices if d.outlet == o.id and metric in d.metrics]
        counts = dict.fromkeys(kpi.HourClass, 0)
        for h in hours:
            h_end = h + timedelta(hours=1)
            expected = received = valid = 0
            total = 0.0
            for d in devs:
                dtype = _finest(hourly, d.id, metric)
                per = (
                    1
                    if dtype == "hour"
                    else 60
                    if dtype == "minute"
                    else max(1, 3600 // d.interval_s)
                )
                expected += per
                a = hourly.get((d.id, metric, dtype or "", "value"), {}).get(h)
                if a is not None:
                    received += a.n
                    valid += a.valid
                    total += a.sum_valid
            marked = any(
                m.device in {d.id for d in devs}
                and (m.metric is None or m.metric == metric)
                and m.start < h_end
                and m.end > h
                for m in marks
            )
            cls = kpi.classify_hour(
                expected=expected, received=received, valid=valid,
                mean=total / valid if valid else None, limit=limit, marked=marked,
                min_valid=min_valid,
            )  # fmt: skip
            counts[cls] += 1
        c, b = counts[kpi.HourClass.COMPLIANT], counts[kpi.HourClass.BREACHED]
        out.append(HourCounts(
            o.id, limit_metric.removesuffix("_corrected"), metric, limit, c, b,
            counts[kpi.HourClass.INVALID], counts[kpi.HourClass.INSUFFICIENT],
            None if c + b == 0 else c / (c + b),
        ))  # fmt: skip
    return out
