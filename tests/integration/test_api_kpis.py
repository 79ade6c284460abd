"""KPIs over HTTP against the real PostgreSQL, hand-computed with the shipped
coefficient sets named by version: tce-gbt2589 (electricity 0.1229 kgce/kWh
equivalent, raw coal 0.7143 kgce/kg, natural gas 1.2143 kgce/m3, heat 0.0341
kgce/MJ), electricity-equal-value (0.404 kgce/kWh), grid-co2-mee (2023 north
0.6361, 2022 national 0.5366 kgCO2/kWh) and gb21346-2013 (aluminium liquid AC
power: limit 13 700, access 12 750, advanced 12 650 kWh/t).

The world: park p1 (Asia/Shanghai, grid region north), enterprise e1 (an
aluminium smelter: purchased electricity ``pot-line-*``, product
``production_mass`` of ``cast-*``) with a stack (reference O2 6 %, SO2 limit 35)
and a wastewater outfall (COD limit 50), enterprise e2 with one meter. The day
judged is local 2023-03-01 = [2023-02-28 16:00, 2023-03-01 16:00) UTC.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from smartpark.tenancy import Role
from storage import TelemetryRow
from tests.support.api import Api, running_api

pytestmark = pytest.mark.integration

DAY0 = datetime(2023, 2, 28, 16, tzinfo=UTC)  # local 2023-03-01 00:00
BEFORE = datetime(2023, 2, 28, 15, tzinfo=UTC)  # local 2023-02-28 23:00
INSIDE = datetime(2023, 3, 1, 12, tzinfo=UTC)  # local 2023-03-01 20:00
H = dict[str, str]


def meter(
    device: str, metric: str, *points: tuple[datetime, float, str | None],
    ent: str = "e1",
) -> list[TelemetryRow]:  # fmt: skip
    return [
        TelemetryRow(t, "p1", ent, device, metric, v, "N", i, reset)
        for i, (t, v, reset) in enumerate(points)
    ]


def two(device: str, metric: str, before: float, inside: float) -> list[TelemetryRow]:
    return meter(device, metric, (BEFORE, before, None), (INSIDE, inside, None))


def stack_rows() -> list[TelemetryRow]:
    """cems-1 every 600 s (6 a hour) over the local day: so2 20 mg/m3 and flow
    100 000 m3/h every hour; so2_corrected 30 (hours 0-19), 40 (hour 20), 30
    flagged C (hour 21), 50 (hour 22, marked below), two readings (hour 23);
    hourly Cou of so2 1.5 kg for hours 0-11."""
    out = []
    seq = 0

    def add(t: datetime, metric: str, value: float, quality: str = "N",
            data_type: str = "realtime", stat: str = "value") -> None:  # fmt: skip
        nonlocal seq
        seq += 1
        out.append(TelemetryRow(t, "p1", "e1", "cems-1", metric, value, quality, seq,
                                None, data_type, stat))  # fmt: skip

    for hour in range(24):
        h = DAY0 + timedelta(hours=hour)
        for k in range(6):
            t = h + timedelta(minutes=10 * k)
            add(t, "so2", 20.0)
            add(t, "flue_gas_flow", 100_000.0)
            if hour < 20:
                add(t, "so2_corrected", 30.0)
            elif hour == 20:
                add(t, "so2_corrected", 40.0)
            elif hour == 21:
                add(t, "so2_corrected", 30.0, "C")
            elif hour == 22:
                add(t, "so2_corrected", 50.0)
            elif k < 2:
                add(t, "so2_corrected", 30.0)
        if hour < 12:
            add(h, "so2", 1.5, data_type="hour", stat="cou")
    return out


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[Api]:
    async with running_api(pg_dsn, db_schema) as api:
        op = await api.key(Role.OPERATOR)

        async def post(url: str, body: dict[str, Any]) -> None:
            r = await api.client.post(url, headers=op, json=body)
            assert r.status_code == 201, r.text

        await post("/v1/parks", {"id": "p1", "name": "P", "timezone": "Asia/Shanghai"})
        r = await api.client.patch("/v1/parks/p1", headers=op,
                                   json={"grid_region": "north"})  # fmt: skip
        assert r.status_code == 200, r.text
        assert r.json()["grid_region"] == "north"
        await post("/v1/enterprises", {
            "id": "e1", "park": "p1", "name": "Smelter",
            "energy_quota_tce": {"day": 5.0}, "electricity_meters": ["pot-line-*"],
            "product": {"name": "aluminium liquid", "devices": ["cast-*"],
                        "indicator": "aluminium_liquid_ac_power"},
        })  # fmt: skip
        await post("/v1/enterprises", {"id": "e2", "park": "p1", "name": "Other"})
        await post("/v1/outlets", {"id": "stack-1", "enterprise": "e1", "kind": "stack",
                                   "name": "S", "reference_o2": 6.0,
                                   "limits": {"so2": 35.0}})  # fmt: skip
        await post("/v1/outlets", {"id": "outfall-1", "enterprise": "e1",
                                   "kind": "wastewater_outfall", "name": "W",
                                   "limits": {"cod": 50.0}})  # fmt: skip
        for dev, ent, metrics, outlet, interval in (
            ("pot-line-1", "e1", ["active_energy"], None, 60),
            ("aux-1", "e1", ["active_energy"], None, 60),
            ("cast-1", "e1", ["production_mass"], None, 60),
            ("coal-1", "e1", ["coal_mass"], None, 60),
            ("gas-1", "e1", ["natural_gas_volume"], None, 60),
            ("steam-1", "e1", ["steam_heat"], None, 60),
            ("water-1", "e1", ["water_volume"], None, 60),
            ("reuse-1", "e1", ["reused_water_volume"], None, 60),
            ("ww-1", "e1", ["wastewater_volume"], None, 60),
            ("cems-1", "e1", ["so2", "so2_corrected", "flue_gas_flow"], "stack-1",
             600),
            ("ww-cems", "e1", ["cod"], "outfall-1", 600),
            ("e2-meter", "e2", ["active_energy"], None, 60),
        ):  # fmt: skip
            body = {"id": dev, "enterprise": ent, "protocol": "modbus_tcp",
                    "interval_s": interval, "metrics": metrics}  # fmt: skip
            if outlet:
                body["outlet"] = outlet
            await post("/v1/devices", body)
        rows = [
            # 1000 before the day; +5000; a new meter from 0 (+500); +8000; the
            # last reading is local 2023-03-02 01:00: not in the local day
            *meter("pot-line-1", "active_energy",
                   (BEFORE, 1000.0, None),
                   (datetime(2023, 3, 1, 2, tzinfo=UTC), 6000.0, None),
                   (datetime(2023, 3, 1, 10, tzinfo=UTC), 500.0, "replacement"),
                   (datetime(2023, 3, 1, 15, 30, tzinfo=UTC), 8500.0, None),
                   (datetime(2023, 3, 1, 17, tzinfo=UTC), 9000.0, None)),
            *two("aux-1", "active_energy", 100.0, 300.0),  # not purchased
            *two("cast-1", "production_mass", 50.0, 51.0),  # 1 t
            *two("coal-1", "coal_mass", 10.0, 12.0),  # 2 t
            *two("gas-1", "natural_gas_volume", 0.0, 500.0),  # 500 m3
            *two("steam-1", "steam_heat", 100.0, 103.0),  # 3 GJ
            *two("water-1", "water_volume", 1000.0, 1300.0),  # 300 m3
            *two("reuse-1", "reused_water_volume", 0.0, 100.0),  # 100 m3
            *two("ww-1", "wastewater_volume", 0.0, 150.0),  # 150 m3
            *meter("e2-meter", "active_energy", (BEFORE, 0.0, None),
                   (INSIDE, 1000.0, None), ent="e2"),
            *stack_rows(),
            # the outfall's logger sends a daily COD Cou only
            TelemetryRow(DAY0, "p1", "e1", "ww-cems", "cod", 7.5, "N", 1, None,
                         "day", "cou"),
        ]  # fmt: skip
        await api.storage.telemetry.write(rows)
        # hour 22 of so2_corrected marked invalid (start-up), by hand
        async with api.storage.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (park, enterprise, device, metric, start_at,"
                    " end_at, kind, invalid, reason, origin, created_by)"
                    " VALUES ('p1', 'e1', 'cems-1', 'so2_corrected', %s, %s,"
                    " 'startup', true, 'unit 1 start-up', 'enterprise', 'k1')"
                ).format(sql.Identifier(api.storage.schema, "marks")),
                (DAY0 + timedelta(hours=22), DAY0 + timedelta(hours=23)),
            )
        yield api


async def kpis(api: Api, key: H, url: str, **params: Any) -> Any:
    r = await api.client.get(url, headers=key, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def day(api: Api, key: H, **params: Any) -> Any:
    got = await kpis(api, key, "/v1/enterprises/e1/kpis", period="day",
                     start="2023-03-01", **params)  # fmt: skip
    [period] = got["periods"]
    return got, period


async def test_energy_in_tce_on_both_bases_and_co2_with_the_2023_factor(
    api: Api,
) -> None:
    got, p = await day(api, await api.key(Role.ENTERPRISE, "p1", "e1"))
    assert [s["name"] for s in got["coefficient_sets"]] == [
        "tce-gbt2589", "electricity-equal-value", "grid-co2-mee", "gb21346-2013",
    ]  # fmt: skip
    assert p["period"]["label"] == "2023-03-01"
    assert p["period"]["start"] == "2023-02-28T16:00:00Z"
    src = {s["metric"]: s for s in p["energy"]["sources"]}
    # purchased electricity: pot-line-1 only; 5000 + 500 (reset) + 8000
    assert src["active_energy"]["meters"] == ["pot-line-1"]
    assert src["active_energy"]["amount"] == pytest.approx(13_500.0)
    assert src["active_energy"]["tce_equivalent"] == pytest.approx(1.65915)
    assert src["active_energy"]["tce_equal_value"] == pytest.approx(5.454)
    assert src["coal_mass"]["tce_equivalent"] == pytest.approx(1.4286)
    assert src["natural_gas_volume"]["tce_equivalent"] == pytest.approx(0.60715)
    assert src["steam_heat"]["tce_equivalent"] == pytest.approx(0.1023)
    assert p["energy"]["status"] == "ok"
    assert p["energy"]["total_tce_equivalent"] == pytest.approx(
        1.65915 + 1.4286 + 0.60715 + 0.1023
    )
    assert p["energy"]["total_tce_equal_value"] == pytest.approx(
        5.454 + 1.4286 + 0.60715 + 0.1023
    )
    # CO2: 13 500 kWh x 0.6361 kgCO2/kWh (2023, north)
    co2 = p["co2"]
    assert co2["t"] == pytest.approx(8.58735)
    assert (co2["factor"]["year"], co2["factor"]["region"]) == (2023, "north")
    assert co2["factor"]["value"] == 0.6361
    # the daily quota of 5 tce
    quotas = {q["what"]: q for q in p["quotas"]}
    assert quotas["energy_equivalent"]["ratio"] == pytest.approx(3.7972 / 5)
    assert quotas["energy_equal_value"]["ratio"] == pytest.approx(7.59205 / 5)


async def test_unit_product_energy_water_and_their_verdict(api: Api) -> None:
    _, p = await day(api, await api.key(Role.REGULATOR))
    upe = p["unit_product_energy"]
    # 13 500 kWh / 1 t: above access (12 750), within the limit (13 700)
    assert (upe["output_t"], upe["kwh_per_t"]) == (1.0, 13_500.0)
    assert upe["verdict"] == "meets_limit"
    assert upe["levels"]["limit"] == 13_700
    water = p["water"]
    assert (water["intake_m3"], water["reused_m3"], water["wastewater_m3"]) == (
        300.0, 100.0, 150.0,
    )  # fmt: skip
    assert water["intake_per_output_m3_per_t"] == pytest.approx(300.0)
    assert water["reuse_ratio"] == pytest.approx(100 / (100 + 300))


async def test_local_days_and_a_utc_day_differ(api: Api) -> None:
    """In UTC the day 2023-03-01 also holds the step to 9000 at 17:00 UTC."""
    _, p = await day(api, await api.key(Role.REGULATOR), tz="UTC")
    src = {s["metric"]: s for s in p["energy"]["sources"]}
    assert src["active_energy"]["amount"] == pytest.approx(14_000.0)


async def test_emission_totals_from_cou_and_from_flow_times_concentration(
    api: Api,
) -> None:
    _, p = await day(api, await api.key(Role.REGULATOR))
    em = {(e["outlet"], e["pollutant"]): e for e in p["emissions"]}
    so2 = em[("stack-1", "so2")]
    # hours 0-11: Cou 1.5 kg; hours 12-23: 20 mg/m3 x 100 000 m3/h x 1 h = 2 kg
    assert so2["kg"] == pytest.approx(12 * 1.5 + 12 * 2.0)
    assert (so2["method"], so2["hours_cou"], so2["hours_flow_x_concentration"]) == (
        "mixed", 12, 12,
    )  # fmt: skip
    cod = em[("outfall-1", "cod")]
    assert (cod["kg"], cod["method"]) == (7.5, "cou_daily")


async def test_compliant_hours_with_an_invalid_and_a_marked_hour(api: Api) -> None:
    _, p = await day(api, await api.key(Role.REGULATOR))
    hours = {(h["outlet"], h["pollutant"]): h for h in p["compliance"]}
    so2 = hours[("stack-1", "so2")]
    assert (so2["metric_judged"], so2["limit"]) == ("so2_corrected", 35.0)
    # 20 compliant, hour 20 breached, hour 21 flagged C and hour 22 marked:
    # invalid, hour 23 two readings of six: insufficient
    assert (so2["compliant"], so2["breached"], so2["invalid"],
            so2["insufficient"]) == (20, 1, 2, 1)  # fmt: skip
    assert so2["compliant_ratio"] == pytest.approx(20 / 21)
    cod = hours[("outfall-1", "cod")]
    assert (cod["compliant"], cod["insufficient"]) == (0, 24)


async def test_the_2022_factor_for_a_2022_period(api: Api) -> None:
    await api.storage.telemetry.write([
        TelemetryRow(datetime(2022, 5, 31, 15, tzinfo=UTC), "p1", "e2", "e2-meter",
                     "active_energy", 0.0, "N", 100),
        TelemetryRow(datetime(2022, 6, 1, 3, tzinfo=UTC), "p1", "e2", "e2-meter",
                     "active_energy", 2000.0, "N", 101),
    ])  # fmt: skip
    e2 = await api.key(Role.ENTERPRISE, "p1", "e2")
    got = await kpis(
        api, e2, "/v1/enterprises/e2/kpis", period="day", start="2022-06-01"
    )
    co2 = got["periods"][0]["co2"]
    # no north factor for 2022: the national 0.5366, said so
    assert (co2["factor"]["year"], co2["factor"]["region"]) == (2022, "national")
    assert co2["factor"]["note"]
    assert co2["t"] == pytest.approx(2000 * 0.5366 / 1000)


async def test_a_meter_without_readings_is_insufficient_data(api: Api) -> None:
    got = await kpis(api, await api.key(Role.REGULATOR), "/v1/enterprises/e1/kpis",
                     period="day", start="2023-03-01", end="2023-03-03")  # fmt: skip
    first, second = got["periods"]
    assert first["energy"]["status"] == "ok"
    energy = second["energy"]
    assert energy["status"] == second["status"] == "insufficient_data"
    assert energy["total_tce_equivalent"] is None
    assert any("coal-1" in r and "2023-03-02" in r for r in energy["reasons"])
    assert second["co2"]["t"] == pytest.approx(500 * 0.6361 / 1000)  # 8500 -> 9000
    assert second["unit_product_energy"]["status"] == "insufficient_data"
    assert second["unit_product_energy"]["kwh_per_t"] is None


async def test_enterprise_scope(api: Api) -> None:
    """e2 never sees e1: the same 404 as an enterprise that does not exist; an
    enterprise key has no park KPIs; e1's figures never include e2's meter."""
    e2 = await api.key(Role.ENTERPRISE, "p1", "e2")
    params = {"period": "day", "start": "2023-03-01"}
    theirs = await api.client.get("/v1/enterprises/e1/kpis", headers=e2, params=params)
    missing = await api.client.get("/v1/enterprises/zz/kpis", headers=e2,
                                   params=params)  # fmt: skip
    assert theirs.status_code == missing.status_code == 404
    assert theirs.json() == missing.json()
    park = await api.client.get("/v1/parks/p1/kpis", headers=e2, params=params)
    assert park.status_code == 404
    _, mine = await day(api, await api.key(Role.ENTERPRISE, "p1", "e1"))
    meters = {m for s in mine["energy"]["sources"] for m in s["meters"]}
    assert "e2-meter" not in meters


async def test_park_totals_sum_its_enterprises(api: Api) -> None:
    got = await kpis(api, await api.key(Role.OPERATOR, "p1"), "/v1/parks/p1/kpis",
                     period="day", start="2023-03-01")  # fmt: skip
    assert got["enterprises"] == ["e1", "e2"]
    [p] = got["periods"]
    # e1 3.7972 tce + e2 1000 kWh x 0.1229 kgce/kWh
    assert p["total_tce_equivalent"] == pytest.approx(3.7972 + 0.1229)
    assert p["co2_t"] == pytest.approx((13_500 + 1000) * 0.6361 / 1000)
    assert p["water_intake_m3"] == pytest.approx(300.0)  # e2 meters no water
    op_p2 = await api.key(Role.OPERATOR, "p2")
    other = await api.client.get(
        "/v1/parks/p1/kpis", headers=op_p2,
        params={"period": "day", "start": "2023-03-01"},
    )  # fmt: skip
    assert other.status_code == 404


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"period": "month", "start": "2023-03-02"}, "query.start"),
        ({"period": "day", "start": "2023-03-02", "end": "2023-03-01"}, "query.end"),
        ({"period": "day", "start": "2023-01-01", "end": "2024-03-01"}, "query.end"),
        ({"period": "day", "start": "2023-03-01", "tz": "Mars/Base"}, "query.tz"),
        ({"period": "day", "start": "0001-01-01"}, "query.start"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    api: Api, params: dict[str, str], field: str
) -> None:
    reg = await api.key(Role.REGULATOR)
    r = await api.client.get("/v1/enterprises/e1/kpis", headers=reg, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["errors"][0]["field"] == field


async def test_registry_refuses_an_unknown_grid_region_or_indicator(api: Api) -> None:
    op = await api.key(Role.OPERATOR)
    r = await api.client.patch("/v1/parks/p1", headers=op,
                               json={"grid_region": "atlantis"})  # fmt: skip
    assert r.status_code == 422
    assert "grid_region" in r.json()["errors"][0]["field"]
    r = await api.client.patch("/v1/enterprises/e1", headers=op, json={
        "product": {"name": "x", "indicator": "nope"}})  # fmt: skip
    assert r.status_code == 422
    assert "indicator" in r.json()["errors"][0]["field"]
    r = await api.client.get("/v1/enterprises/e1", headers=op)
    assert r.json()["product"]["indicator"] == "aluminium_liquid_ac_power"
    assert r.json()["electricity_meters"] == ["pot-line-*"]


async def test_a_year_sums_its_months_and_counts_every_hour(api: Api) -> None:
    got = await kpis(api, await api.key(Role.REGULATOR), "/v1/enterprises/e1/kpis",
                     period="year", start="2023-01-01")  # fmt: skip
    [p] = got["periods"]
    assert (p["period"]["label"], p["period"]["complete"]) == ("2023", True)
    src = {s["metric"]: s for s in p["energy"]["sources"]}
    # the first reading of the year starts the meter: +5000 +500 +8000 +500
    assert src["active_energy"]["amount"] == pytest.approx(14_000.0)
    hours = {(h["outlet"], h["pollutant"]): h for h in p["compliance"]}
    so2 = hours[("stack-1", "so2")]
    # 2023 has 8 760 hours: all but the 23 judged or marked are insufficient
    assert (so2["compliant"], so2["breached"], so2["invalid"],
            so2["insufficient"]) == (20, 1, 2, 8760 - 23)  # fmt: skip


@pytest.mark.parametrize(
    "params",
    [
        {"period": "day", "start": "2023-03-01", "tz": "Pacific/Chatham"},
        {"period": "month", "start": "2023-04-01", "tz": "America/Santiago"},
        {"period": "month", "start": "2199-12-01", "min_valid": "1"},
        {"period": "day", "start": "1970-01-01", "end": "1970-01-03"},
        {"period": "year", "start": "2023-01-01", "tz": "Asia/Kolkata"},
    ],
)
async def test_odd_zones_and_empty_periods_never_fail(
    api: Api, params: dict[str, str]
) -> None:
    key = await api.key(Role.OPERATOR)
    for url in ("/v1/enterprises/e1/kpis", "/v1/parks/p1/kpis"):
        r = await api.client.get(url, headers=key, params=params)
        assert r.status_code == 200, (url, r.text)
    # a period in the future has no closed hour and says it is not complete
    future = await kpis(api, key, "/v1/enterprises/e1/kpis", period="month",
                        start="2199-12-01")  # fmt: skip
    [p] = future["periods"]
    assert p["period"]["complete"] is False
    assert p["status"] == "insufficient_data"
