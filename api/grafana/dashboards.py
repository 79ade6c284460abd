"""The platform's Grafana dashboards, generated from the registry with
``grafana-foundation-sdk`` (no dashboard is drawn by hand, so none drifts from
the registry).

Dashboards (one JSON serves every organisation: the data source uid is the same
in each, and its database role keeps the rows to the organisation's scope):

- **park overview** (one per park, ``sp-park-<park>``): coverage % (readings
  received / expected from the registry's interval and metrics), devices silent
  now (no reading for 3 intervals before the range's end), open alerts by
  severity, energy today against the daily quota in tce (the KPI's sources:
  purchased electricity by ``electricity_meters``, coal, natural gas, steam heat,
  GB/T 2589 equivalent; unlike the KPI, a source with a silent meter shows what
  it has rather than "insufficient data"), each outlet's hourly means against
  its limits, alert annotations;
- **enterprise view** (one per enterprise, ``sp-ent-<enterprise>``): each
  outlet's limited pollutants as hourly means with the limit as a threshold line,
  daily purchased electricity (kWh, tce) and unit-product energy (kWh/t,
  the product's meters) against the GB 21346 levels of its indicator, daily
  water;
- **devices** (one per enterprise, ``sp-dev-<enterprise>``): hourly mean, min,
  max of the selected devices' metrics and their latest values.

Every query reads the ``grafana_*`` views (migration 0018) with the data
source's role, whose search path is the platform's schema. Days are the park's
**local** days: ``date_trunc('day', t, <park time zone>)`` over raw readings, or
over ``telemetry_1h`` buckets (whole UTC hours: right for zones whose offset is
whole hours, which every registered park zone of today's catalogue is), never
Grafana's ``$__timeGroup(..., '1d')``, which is a UTC day. Counters'
consumption is computed as the API computes it (:mod:`storage.queries`): the
steps between consecutive readings, the first from the last reading before the
range, a reset restarting from zero, a decrease counting zero; so a day's total
equals ``GET /v1/aggregates?interval=1d``'s consumption.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from grafana_foundation_sdk.builders import barchart, dashboard, stat, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as dashboard_models

from api.grafana.macros import Variable
from api.grafana.query import Sql, datasource
from smartpark import kpi
from smartpark.catalogue import METRICS
from smartpark.kpi import judged_metric, shipped
from smartpark.tenancy import Role, Scope
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

TAG = "smartpark"
REALTIME = "data_type = 'realtime' AND stat = 'value'"


def _realtime(alias: str) -> str:
    return f"{alias}.data_type = 'realtime' AND {alias}.stat = 'value'"


@dataclass(frozen=True, slots=True)
class Registry:
    """The active registry rows dashboards are made from."""

    parks: Sequence[ParkRow]
    enterprises: Sequence[EnterpriseRow]
    outlets: Sequence[OutletRow]
    devices: Sequence[DeviceRow]


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of a generated dashboard: where it is, its SQL, the columns it
    returns. ``kind`` is ``panel``, ``variable`` or ``annotation``."""

    dashboard: str
    title: str
    kind: str
    sql: str
    columns: tuple[str, ...]


@dataclass(slots=True)
class Built:
    """A generated dashboard: the SDK model, every query it holds, and the
    variables' default values (what Grafana selects when it opens)."""

    uid: str
    title: str
    model: dashboard_models.Dashboard
    queries: list[PanelQuery] = field(default_factory=list)
    defaults: dict[str, Variable] = field(default_factory=dict)


class _Board:
    """Collects a dashboard's panels and their queries as they are added."""

    def __init__(self, uid: str, title: str, tags: list[str]) -> None:
        self.uid = uid
        self.title = title
        self.builder = (
            dashboard.Dashboard(title).uid(uid).tags([TAG, *tags])
            .time("now-2d", "now").timezone("browser").refresh("5m")
        )  # fmt: skip
        self.queries: list[PanelQuery] = []
        self.defaults: dict[str, Variable] = {}

    def panel(self, builder: cogbuilder.Builder[dashboard_models.Panel],
              title: str, sql: Sql) -> None:  # fmt: skip
        self.queries.append(PanelQuery(self.uid, title, "panel",
                                       sql.build().raw_sql, sql.columns))  # fmt: skip
        self.builder.with_panel(builder)

    def variable(self, name: str, label: str, sql: Sql, default: Variable) -> None:
        raw = sql.build().raw_sql
        var = (
            dashboard.QueryVariable(name).label(label).datasource(datasource())
            .query(raw).definition(raw).multi(default.multi)
            .include_all(default.include_all)
            .refresh(dashboard_models.VariableRefresh.ON_DASHBOARD_LOAD)
            .allow_custom_value(False).current(_current(default))
        )  # fmt: skip
        self.builder.with_variable(var)
        self.queries.append(PanelQuery(self.uid, name, "variable", raw, sql.columns))
        self.defaults[name] = default

    def annotation(self, title: str, sql: Sql) -> None:
        raw = sql.build().raw_sql
        self.builder.annotation(
            dashboard.AnnotationQuery().name(title).datasource(datasource())
            .enable(True).icon_color("red").target(sql)
        )  # fmt: skip
        self.queries.append(PanelQuery(self.uid, title, "annotation", raw,
                                       sql.columns))  # fmt: skip

    def build(self) -> Built:
        return Built(self.uid, self.title, self.builder.build(), self.queries,
                     self.defaults)  # fmt: skip


def _current(default: Variable) -> dashboard_models.VariableOption:
    if default.include_all and not default.value:
        return dashboard_models.VariableOption(selected=True, text="All",
                                               value="$__all")  # fmt: skip
    value = default.value if isinstance(default.value, str) else list(default.value)
    return dashboard_models.VariableOption(selected=True, text=value, value=value)


def _tz(park_sql: str) -> str:
    return f"(SELECT timezone FROM grafana_parks WHERE id = {park_sql})"


def _consumption(where: str, tz: str, group: str) -> str:
    """Local-day consumption of the counters selected by ``where`` (over
    grafana_series' columns), grouped by ``day`` and ``group`` columns; the
    steps exactly as storage.queries computes them."""
    return f"""
WITH sel AS (
  SELECT id FROM grafana_series WHERE {where} AND {REALTIME}
), x AS (
  SELECT t.series_id, t.enterprise, t.device, t.metric, t.time, t.value, t.reset
  FROM grafana_telemetry t
  WHERE t.series_id IN (SELECT id FROM sel)
    AND t.time >= $__timeFrom() AND t.time < $__timeTo()
  UNION ALL
  SELECT p.series_id, p.enterprise, p.device, p.metric, p.time, p.value, NULL
  FROM sel CROSS JOIN LATERAL (
    SELECT series_id, enterprise, device, metric, time, value
    FROM grafana_telemetry
    WHERE series_id = sel.id AND time < $__timeFrom()
    ORDER BY time DESC LIMIT 1) p
), steps AS (
  SELECT series_id, enterprise, device, metric, time,
         CASE WHEN reset IS NOT NULL THEN value
              ELSE value - lag(value) OVER (PARTITION BY series_id ORDER BY time)
         END AS step
  FROM x
)
SELECT date_trunc('day', time, {tz}) AS "time", {group},
       sum(greatest(step, 0)) AS consumption
FROM steps
WHERE time >= $__timeFrom() AND step IS NOT NULL
GROUP BY 1, {group}
ORDER BY 1, {group}"""


def _kgce_per_kwh() -> float:
    return shipped().tce.coefficients["active_energy"].value


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def meters(ent: EnterpriseRow, devices: Sequence[DeviceRow], metric: str,
           patterns: Sequence[str] | None) -> str:  # fmt: skip
    """A condition over ``device`` keeping the enterprise's meters of ``metric``
    that the registry's patterns name (device ids or fnmatch patterns, as
    storage.kpis reads them); ``true`` when there are no patterns. Resolved when
    the dashboard is generated: provision again after registering a meter."""
    if patterns is None:
        return "true"
    ids = sorted(
        d.id for d in devices
        if d.enterprise == ent.id and metric in d.metrics
        and any(fnmatch.fnmatchcase(d.id, p) for p in patterns)
    )  # fmt: skip
    return f"device IN ({', '.join(map(_literal, ids))})" if ids else "false"


def _corrected() -> str:
    """The limit metrics judged on their ``_corrected`` metric where the outlet
    has a reference O2 (smartpark.kpi.judged_metric), as SQL literals."""
    return ", ".join(_literal(m) for m in sorted(METRICS) if judged_metric(m, 6.0) != m)


def _tce_per_unit() -> str:
    """``CASE metric ...``: tce (equivalent) per catalogue unit of each energy
    source (smartpark.kpi.tce of one unit)."""
    tce_set = shipped().tce
    whens = " ".join(
        f"WHEN {_literal(m)} THEN {kpi.tce(tce_set, {m: 1.0}).equivalent_tce!r}"
        for m in kpi.ENERGY_METRICS
    )
    return f"CASE metric {whens} END"


def _thresholds(steps: list[tuple[float | None, str]]) -> dashboard.ThresholdsConfig:
    return (
        dashboard.ThresholdsConfig()
        .mode(dashboard_models.ThresholdsMode.ABSOLUTE)
        .steps([dashboard_models.Threshold(value=v, color=c) for v, c in steps])
    )


def _line() -> common_builders.GraphThresholdsStyleConfig:
    return common_builders.GraphThresholdsStyleConfig().mode(
        common_models.GraphThresholdsStyleMode.LINE
    )


def _alerts_annotation(board: _Board, where: str) -> None:
    board.annotation("Alerts", Sql(f"""
SELECT opened_at AS "time", coalesce(resolved_at, opened_at) AS timeend,
       severity || ' ' || rule_id || coalesce(' ' || device, '') AS text,
       severity AS tags
FROM grafana_alerts
WHERE {where} AND $__timeFilter(opened_at)
ORDER BY 1""", ("time", "timeend", "text", "tags")))  # fmt: skip


def park_overview(
    park: ParkRow, enterprises: Sequence[EnterpriseRow],
    outlets: Sequence[OutletRow], devices: Sequence[DeviceRow],
) -> Built:  # fmt: skip
    """The operation centre's view of one park (its variable offers this park
    only: the meters counted are resolved for its enterprises)."""
    board = _Board(f"sp-park-{park.id}", f"{park.name}: park overview", ["park"])
    board.variable("park", "Park", Sql(
        "SELECT id AS __value, name AS __text FROM grafana_parks"
        f" WHERE id = {_literal(park.id)}", ("__value", "__text"),
    ), Variable(park.id))  # fmt: skip
    tz = _tz("'$park'")
    board.panel(
        table.Panel().title("Coverage").datasource(datasource()).unit("percent")
        .height(8).span(12).with_target(cov := Sql(f"""
SELECT d.enterprise, d.id AS device,
       round((100 * least(1, coalesce(r.n, 0)::numeric / greatest(1,
         cardinality(d.metrics) * floor(extract(epoch FROM
           $__timeTo()::timestamptz - $__timeFrom()::timestamptz) / d.interval_s))
       ))::numeric, 1) AS coverage_pct
FROM grafana_devices d
LEFT JOIN (
  SELECT device, sum(n) AS n FROM grafana_telemetry_1m
  WHERE park = '$park' AND {REALTIME}
    AND bucket >= $__timeFrom() AND bucket < $__timeTo()
  GROUP BY device) r ON r.device = d.id
WHERE d.park = '$park' AND d.retired_at IS NULL
ORDER BY coverage_pct, d.enterprise, d.id""",
            ("enterprise", "device", "coverage_pct"))),
        "Coverage", cov,
    )  # fmt: skip
    board.panel(
        table.Panel().title("Devices silent now").datasource(datasource())
        .height(8).span(12).with_target(silent := Sql("""
SELECT d.enterprise, d.id AS device, d.interval_s, last.time AS last_seen
FROM grafana_devices d
LEFT JOIN LATERAL (
  SELECT max(time) AS time FROM grafana_telemetry
  WHERE device = d.id AND time <= $__timeTo()) last ON true
WHERE d.park = '$park' AND d.retired_at IS NULL
  AND (last.time IS NULL
       OR last.time < $__timeTo()::timestamptz - 3 * d.interval_s * interval '1 second')
ORDER BY d.enterprise, d.id""", ("enterprise", "device", "interval_s", "last_seen"))),
        "Devices silent now", silent,
    )  # fmt: skip
    board.panel(
        stat.Panel().title("Open alerts by severity").datasource(datasource())
        .height(6).span(8).with_target(alerts := Sql("""
SELECT severity, count(*) AS open
FROM grafana_alerts
WHERE park = '$park' AND status <> 'resolved'
GROUP BY severity ORDER BY severity""", ("severity", "open"))),
        "Open alerts by severity", alerts,
    )  # fmt: skip
    # only enterprises with electricity_meters patterns are named, so another
    # enterprise joining the park leaves this dashboard as it is
    patterned = [e for e in enterprises if e.electricity_meters is not None]
    purchased = " OR ".join([
        f"enterprise NOT IN ({', '.join(_literal(e.id) for e in patterned)})",
        *(f"(enterprise = {_literal(e.id)} AND "
          f"{meters(e, devices, 'active_energy', e.electricity_meters)})"
          for e in patterned),
    ]) if patterned else "true"  # fmt: skip
    others = ", ".join(_literal(m) for m in kpi.ENERGY_METRICS if m != "active_energy")
    sources = (
        f"park = '$park' AND (metric IN ({others})"
        f" OR (metric = 'active_energy' AND ({purchased})))"
    )
    board.panel(
        barchart.Panel().title("Energy today against quota (tce)")
        .datasource(datasource()).unit("tce").height(6).span(16)
        .with_target(energy := Sql(f"""
WITH day AS (
  SELECT d.consumption * {_tce_per_unit()} AS tce, d.enterprise
  FROM ({_consumption(sources, tz, "enterprise, metric")}) d
  WHERE d.time = date_trunc(
    'day', $__timeTo()::timestamptz - interval '1 microsecond', {tz})
)
SELECT e.id AS enterprise,
       coalesce(sum(day.tce), 0) AS tce_today,
       (e.energy_quota_tce ->> 'day')::double precision AS quota_tce
FROM grafana_enterprises e LEFT JOIN day ON day.enterprise = e.id
WHERE e.park = '$park' AND e.retired_at IS NULL
GROUP BY e.id, e.energy_quota_tce ORDER BY e.id""",
            ("enterprise", "tce_today", "quota_tce"))),
        "Energy today against quota (tce)", energy,
    )  # fmt: skip
    limited = sorted({m for o in outlets for m in o.limits})
    if limited:
        board.panel(
            table.Panel().title("Emissions against limits (hourly means)")
            .datasource(datasource()).height(8).span(24)
            .with_target(emis := Sql(f"""
WITH judged AS (
  SELECT o.enterprise, o.id AS outlet,
         CASE WHEN o.reference_o2 IS NOT NULL AND lim.key IN ({_corrected()})
              THEN lim.key || '_corrected' ELSE lim.key END AS metric,
         lim.value::double precision AS limit_value
  FROM grafana_outlets o CROSS JOIN LATERAL jsonb_each_text(o.limits) lim
  WHERE o.park = '$park' AND o.retired_at IS NULL
)
SELECT j.enterprise, j.outlet, j.metric, j.limit_value,
       max(h.sum / h.n) AS max_hourly_mean,
       count(*) FILTER (WHERE h.sum / h.n > j.limit_value) AS hours_over
FROM judged j
JOIN grafana_devices d ON d.outlet = j.outlet
JOIN grafana_telemetry_1h h ON h.device = d.id AND h.metric = j.metric
WHERE {_realtime("h")}
  AND h.bucket >= $__timeFrom() AND h.bucket < $__timeTo()
GROUP BY j.enterprise, j.outlet, j.metric, j.limit_value
ORDER BY j.enterprise, j.outlet, j.metric""",
                ("enterprise", "outlet", "metric", "limit_value", "max_hourly_mean",
                 "hours_over"))),
            "Emissions against limits (hourly means)", emis,
        )  # fmt: skip
    _alerts_annotation(board, "park = '$park'")
    return board.build()


def enterprise_view(
    ent: EnterpriseRow, park: ParkRow, outlets: Sequence[OutletRow],
    devices: Sequence[DeviceRow],
) -> Built:  # fmt: skip
    """One enterprise: its outlets against their limits, energy, water."""
    board = _Board(f"sp-ent-{ent.id}", f"{ent.name}: enterprise", ["enterprise"])
    board.variable("enterprise", "Enterprise", Sql(
        "SELECT id AS __value, name AS __text FROM grafana_enterprises"
        f" WHERE id = {_literal(ent.id)}", ("__value", "__text"),
    ), Variable(ent.id))  # fmt: skip
    tz = _tz(_literal(park.id))
    for outlet in outlets:
        for limit_metric, limit in sorted(outlet.limits.items()):
            metric = judged_metric(limit_metric, outlet.reference_o2)
            title = f"{outlet.name}: {metric} hourly mean (limit {limit:g})"
            board.panel(
                timeseries.Panel().title(title).datasource(datasource())
                .height(8).span(12).min(0)
                .thresholds(_thresholds([(None, "green"), (limit, "red")]))
                .thresholds_style(_line())
                .with_target(q := Sql(f"""
SELECT bucket AS "time", sum(sum) / sum(n) AS "{metric}"
FROM grafana_telemetry_1h
WHERE enterprise = '$enterprise' AND metric = {_literal(metric)} AND {REALTIME}
  AND device IN (SELECT id FROM grafana_devices WHERE outlet = {_literal(outlet.id)})
  AND $__timeFilter(bucket)
GROUP BY 1 ORDER BY 1""", ("time", metric), fmt="time_series")),
                title, q,
            )  # fmt: skip
    kgce = _kgce_per_kwh()
    electricity = (
        "enterprise = '$enterprise' AND metric = 'active_energy' AND "
        + meters(ent, devices, "active_energy", ent.electricity_meters)
    )
    board.panel(
        barchart.Panel().title("Electricity per local day").datasource(datasource())
        .unit("kwatth").height(8).span(12)
        .with_target(energy := Sql(f"""
SELECT d.time, sum(d.consumption) AS kwh, sum(d.consumption) * {kgce} / 1000 AS tce
FROM ({_consumption(electricity, tz, "enterprise")}) d
GROUP BY 1 ORDER BY 1""", ("time", "kwh", "tce"), fmt="table")),
        "Electricity per local day", energy,
    )  # fmt: skip
    product = ent.product or {}
    levels = shipped().norm.indicators.get(str(product.get("indicator", "")))
    steps: list[tuple[float | None, str]] = [(None, "green")]
    if levels is not None:
        steps += [(levels.advanced, "blue"), (levels.access, "yellow"),
                  (levels.limit, "red")]  # fmt: skip
    product_metric = str(product.get("metric", "production_mass"))
    output = (
        f"enterprise = '$enterprise' AND metric = {_literal(product_metric)} AND "
        + meters(ent, devices, product_metric, product.get("devices"))
    )
    board.panel(
        barchart.Panel().title("Unit-product energy per local day (kWh/t)")
        .datasource(datasource()).unit("kWh/t").height(8).span(12)
        .thresholds(_thresholds(steps)).thresholds_style(_line())
        .with_target(unit := Sql(f"""
SELECT e.time, e.kwh / nullif(p.t, 0) AS kwh_per_t
FROM (SELECT d.time, sum(d.consumption) AS kwh
      FROM ({_consumption(electricity, tz, "enterprise")}) d GROUP BY 1) e
JOIN (SELECT d.time, sum(d.consumption) AS t
      FROM ({_consumption(output, tz, "enterprise")}) d GROUP BY 1) p USING (time)
ORDER BY 1""", ("time", "kwh_per_t"))),
        "Unit-product energy per local day (kWh/t)", unit,
    )  # fmt: skip
    board.panel(
        barchart.Panel().title("Water per local day (m3)").datasource(datasource())
        .unit("m3").height(8).span(12)
        .with_target(water := Sql(f"""
SELECT d.time, sum(d.consumption) AS water_m3
FROM ({_consumption(
    "enterprise = '$enterprise' AND metric = 'water_volume'", tz, "enterprise")}) d
GROUP BY 1 ORDER BY 1""", ("time", "water_m3"))),
        "Water per local day (m3)", water,
    )  # fmt: skip
    _alerts_annotation(board, "enterprise = '$enterprise'")
    return board.build()


def device_view(ent: EnterpriseRow) -> Built:
    """An enterprise's devices: hourly statistics and latest values."""
    board = _Board(f"sp-dev-{ent.id}", f"{ent.name}: devices", ["devices"])
    board.variable("enterprise", "Enterprise", Sql(
        "SELECT id AS __value, name AS __text FROM grafana_enterprises"
        f" WHERE id = {_literal(ent.id)}", ("__value", "__text"),
    ), Variable(ent.id))  # fmt: skip
    board.variable("device", "Device", Sql(
        "SELECT id AS __value FROM grafana_devices"
        " WHERE enterprise = '$enterprise' AND retired_at IS NULL ORDER BY id",
        ("__value",),
    ), Variable([], multi=True, include_all=True))  # fmt: skip
    board.panel(
        timeseries.Panel().title("Hourly mean").datasource(datasource())
        .height(10).span(24)
        .with_target(hourly := Sql(f"""
SELECT bucket AS "time", device || ' ' || metric AS metric, sum / n AS value
FROM grafana_telemetry_1h
WHERE enterprise = '$enterprise' AND device IN ($device) AND {REALTIME}
  AND $__timeFilter(bucket)
ORDER BY 1, 2""", ("time", "metric", "value"), fmt="time_series")),
        "Hourly mean", hourly,
    )  # fmt: skip
    board.panel(
        table.Panel().title("Latest values").datasource(datasource())
        .height(8).span(24)
        .with_target(latest := Sql(f"""
SELECT s.device, s.metric, s.unit, l.time, l.value
FROM grafana_series s
CROSS JOIN LATERAL (
  SELECT time, value FROM grafana_telemetry
  WHERE series_id = s.id AND time <= $__timeTo()
  ORDER BY time DESC LIMIT 1) l
WHERE s.enterprise = '$enterprise' AND s.device IN ($device) AND {_realtime("s")}
ORDER BY 1, 2""", ("device", "metric", "unit", "time", "value"))),
        "Latest values", latest,
    )  # fmt: skip
    _alerts_annotation(board, "enterprise = '$enterprise' AND device IN ($device)")
    return board.build()


def all_dashboards(reg: Registry) -> dict[str, Built]:
    """Every dashboard of the registry, by uid."""
    parks = {p.id: p for p in reg.parks}
    out: dict[str, Built] = {}
    for park in reg.parks:
        b = park_overview(
            park, [e for e in reg.enterprises if e.park == park.id],
            [o for o in reg.outlets if o.park == park.id], reg.devices,
        )  # fmt: skip
        out[b.uid] = b
    for ent in reg.enterprises:
        outlets = [o for o in reg.outlets if o.enterprise == ent.id]
        view = enterprise_view(ent, parks[ent.park], outlets, reg.devices)
        for b in (view, device_view(ent)):
            out[b.uid] = b
    return out


async def load_registry(registry: RegistryStore) -> Registry:
    """Every active park, enterprise, outlet and device, read page by page."""
    everything = Scope(Role.REGULATOR)

    async def rows(entity: Any) -> list[Any]:
        out: list[Any] = []
        after: str | None = None
        while page := await registry.find(entity, everything, ListFilters(),
                                          after=after, limit=500):  # fmt: skip
            out += page
            after = page[-1].id
        return out

    return Registry(
        parks=await rows(PARKS), enterprises=await rows(ENTERPRISES),
        outlets=await rows(OUTLETS), devices=await rows(DEVICES),
    )  # fmt: skip
