"""Coverage over HTTP against the real PostgreSQL, every figure computed by hand:
a planned gap of a 10-s meter, a marked maintenance period, C-flagged readings,
analyser data types counted apart, a silent registered enterprise (the park is not
100 % until it reports), local-day boundaries in Asia/Shanghai and a 23-hour day in
Europe/Berlin, tenancy (another enterprise's device is the 404 of a missing one)
and bad input as 422s naming the field."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from psycopg import sql

from smartpark.tenancy import Role, Scope
from storage import TelemetryRow
from storage.registry import ENTERPRISES
from tests.support.api import Api, running_api

pytestmark = pytest.mark.integration

OPERATOR = Scope(Role.OPERATOR)
REGISTERED = datetime(2026, 2, 1, tzinfo=UTC)
# 2026-03-02 in Asia/Shanghai (UTC+8): 2026-03-01T16:00Z .. 2026-03-02T16:00Z
D0 = datetime(2026, 3, 1, 16, tzinfo=UTC)
DAY = "2026-03-02"


def local(h: int, m: int = 0, s: int = 0) -> datetime:
    """``h:m:s`` local time of the day DAY in Shanghai, as UTC."""
    return D0 + timedelta(hours=h, minutes=m, seconds=s)


@dataclass
class Clock:
    ms: int

    def __call__(self) -> int:
        return self.ms

    def set(self, t: datetime) -> None:
        self.ms = int(t.timestamp() * 1000)


def row(t: datetime, park: str, ent: str, dev: str, metric: str, *,
        quality: str = "N", data_type: str = "realtime",
        stat: str = "value") -> TelemetryRow:  # fmt: skip
    return TelemetryRow(t, park, ent, dev, metric, 1.0, quality,
                        int(t.timestamp()), None, data_type, stat)  # fmt: skip


def meter_day() -> list[TelemetryRow]:
    """m1, every 10 s of DAY except 10:00-11:00 (360) and 20:30-21:00 (180);
    14:00:00-14:00:50 flagged C (6)."""
    out = []
    for i in range(8640):
        t = local(0) + timedelta(seconds=10 * i)
        if local(10) <= t < local(11) or local(20, 30) <= t < local(21):
            continue
        c = local(14) <= t < local(14, 1)
        out.append(row(t, "p1", "e1", "m1", "active_power", quality="C" if c else "N"))
    return out


def analyser_day() -> list[TelemetryRow]:
    """c1: minute data every 10 min (so2, nox, each with Min and Max too), hourly
    data every hour but so2's of 12:00."""
    out = []
    for i in range(144):
        t = local(0) + timedelta(minutes=10 * i)
        for metric in ("so2", "nox"):
            out += [row(t, "p1", "e1", "c1", metric, data_type="minute", stat=s)
                    for s in ("value", "min", "max")]  # fmt: skip
    for h in range(24):
        for metric in ("so2", "nox"):
            if (metric, h) != ("so2", 12):
                out.append(row(local(h), "p1", "e1", "c1", metric, data_type="hour"))
    return out


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[tuple[Api, Clock]]:
    """p1 (Asia/Shanghai): e1 with meter m1 and analyser c1 (outlet o1; minute
    and hourly data), e2 with two devices that never report, e3 with none; p2
    (Asia/Shanghai): f1 with b1; p3 (Europe/Berlin): g1 with g1m."""
    clock = Clock(0)
    clock.set(REGISTERED)
    async with running_api(pg_dsn, db_schema, clock=clock, max_points=1000) as api:
        reg = api.storage.registry
        for park, tz in (("p1", "Asia/Shanghai"), ("p2", "Asia/Shanghai"),
                         ("p3", "Europe/Berlin")):  # fmt: skip
            await reg.create_park(OPERATOR, {"id": park, "name": park, "timezone": tz})
        for ent, park in (("e1", "p1"), ("e2", "p1"), ("e3", "p1"), ("f1", "p2"),
                          ("g1", "p3")):  # fmt: skip
            await reg.create_enterprise(OPERATOR, {"id": ent, "park": park,
                                                   "name": ent})  # fmt: skip
        stack = {"id": "o1", "enterprise": "e1", "kind": "stack", "name": "o1"}
        await reg.create_outlet(OPERATOR, stack)
        for dev, ent, protocol, interval, metrics, types, outlet in (
            ("m1", "e1", "modbus_tcp", 10, ["active_power"], {}, None),
            ("c1", "e1", "hj212", 60, ["so2", "nox"],
             {"minute": 600, "hour": 3600}, "o1"),
            ("s1", "e2", "modbus_tcp", 10, ["water_flow"], {}, None),
            ("s2", "e2", "modbus_tcp", 10, ["water_flow"], {}, None),
            ("b1", "f1", "modbus_tcp", 10, ["water_flow"], {}, None),
            ("g1m", "g1", "modbus_tcp", 600, ["water_flow"], {}, None),
        ):  # fmt: skip
            await reg.create_device(OPERATOR, {
                "id": dev, "enterprise": ent, "protocol": protocol,
                "interval_s": interval, "metrics": metrics, "data_types": types,
                "outlet": outlet,
            })  # fmt: skip
        await api.storage.telemetry.write(meter_day() + analyser_day())
        async with api.storage.connection() as conn:
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (park, enterprise, device, metric, start_at,"
                    " end_at, kind, invalid, reason, origin, created_by)"
                    " VALUES ('p1', 'e1', 'm1', NULL, %s, %s, 'maintenance', true,"
                    " 'analyser service', 'operator', 'test')"
                ).format(sql.Identifier(api.storage.schema, "marks")),
                (local(20), local(21)),
            )
        # just after the end of DAY: m1's last reading (23:59:50) is 15 s old,
        # c1's last minute data (23:50) 10 min 15 s (2 x 600 s allowed)
        clock.set(local(24, 0, 5))
        yield api, clock


async def get(api: Api, key: dict[str, str], path: str = "/v1/coverage",
              **params: Any) -> Any:  # fmt: skip
    r = await api.client.get(path, headers=key, params=params)
    assert r.status_code == 200, r.text
    return r.json()


def by(items: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(i["level"], i["id"]): i for i in items}


def rates(item: dict[str, Any]) -> tuple[int, int, int]:
    return item["expected"], item["received"], item["valid"]


async def test_planned_gap_marks_flags_and_data_types(
    api: tuple[Api, Clock],
) -> None:
    a, _ = api
    key = await a.key(Role.REGULATOR)
    body = await get(a, key, park="p1", **{"from": DAY, "to": DAY})
    assert body["parks"] == [{"id": "p1", "timezone": "Asia/Shanghai"}]
    items = by(body["items"])
    m1 = items["device", "m1"]
    # 8 640 expected; 360 + 180 missing; 6 flagged C + 180 in the marked period
    assert rates(m1) == (8640, 8100, 7914)
    assert m1["transmission_rate"] == 8100 / 8640
    assert m1["validity_rate"] == 7914 / 8100
    assert m1["coverage_rate"] == 7914 / 8640
    c1 = items["device", "c1"]
    types = {t["data_type"]: rates(t) for t in c1["by_data_type"]}
    # minute: 144 x 2 metrics (Min/Max not counted); hourly: 24 x 2, so2's 12:00
    # missing
    assert types == {"minute": (288, 288, 288), "hour": (48, 47, 47)}
    assert rates(c1) == (336, 335, 335)
    assert rates(items["outlet", "o1"]) == (336, 335, 335)
    e1 = items["enterprise", "e1"]
    assert rates(e1) == (8976, 8435, 8249)
    assert rates(items["enterprise", "e2"]) == (17280, 0, 0)
    assert items["enterprise", "e2"]["coverage_percent"] == 0.0
    assert items["enterprise", "e3"]["coverage_percent"] == 0.0
    assert items["enterprise", "e3"]["devices"] == 0
    park = items["park", "p1"]
    assert rates(park) == (8976 + 17280, 8435, 8249)
    # the mean over e1, e2 (silent) and e3 (no device)
    assert park["coverage_percent"] == pytest.approx(100 * (8249 / 8976) / 3)
    assert "an enterprise without devices" in body["definitions"]["coverage_percent"]
    now = by(body["now"])
    assert now["park", "p1"] | {"level": None} == {
        "level": None, "id": "p1", "park": "p1", "enterprise": None,
        "outlet": None, "devices_registered": 4, "devices_reporting": 2,
        "devices_never_reported": ["s1", "s2"], "enterprises_registered": 3,
        "enterprises_without_devices": ["e3"],
        "enterprises_never_reported": ["e2"], "last_reading": None,
    }  # fmt: skip


async def test_gaps_with_their_causes(api: tuple[Api, Clock]) -> None:
    a, _ = api
    key = await a.key(Role.OPERATOR, "p1")
    body = await get(a, key, "/v1/coverage/gaps", **{"from": DAY, "to": DAY})
    got = [
        (g["device"], g["data_type"], g["metrics"], g["start"], g["end"],
         g["missed"], g["cause"])
        for g in body["items"]
    ]  # fmt: skip
    assert got == [
        ("m1", "realtime", ["active_power"], "2026-03-02T10:00:00+08:00",
         "2026-03-02T11:00:00+08:00", 360, "device_offline"),
        ("m1", "realtime", ["active_power"], "2026-03-02T20:30:00+08:00",
         "2026-03-02T21:00:00+08:00", 180, "marked:maintenance"),
        # e2's only two devices silent together: the gateway
        ("s1", "realtime", ["water_flow"], "2026-03-02T00:00:00+08:00",
         "2026-03-03T00:00:00+08:00", 8640, "gateway_offline"),
        ("s2", "realtime", ["water_flow"], "2026-03-02T00:00:00+08:00",
         "2026-03-03T00:00:00+08:00", 8640, "gateway_offline"),
    ]  # fmt: skip
    # so2's missing hourly packet is a 2-hour step: not longer than 2 intervals


async def test_a_silent_enterprise_keeps_the_park_below_100(
    api: tuple[Api, Clock],
) -> None:
    a, clock = api
    key = await a.key(Role.OPERATOR, "p1")
    # only the day's first hour, for every device of p1 (m1 and c1 already have it)
    params = {"from": DAY, "to": DAY, "detail": "enterprise"}
    clock.set(local(1))
    first = by((await get(a, key, park="p1", **params))["items"])
    # m1: 360 of 360; c1: minute 6+6, hourly 1+1 (the 00:00 packets); e2: 0 of 720
    assert rates(first["enterprise", "e1"]) == (374, 374, 374)
    assert first["park", "p1"]["coverage_percent"] == pytest.approx(100 / 3)
    assert ("device", "m1") not in first  # detail=enterprise
    rows = [row(local(0) + timedelta(seconds=10 * i), "p1", "e2", dev, "water_flow")
            for i in range(360) for dev in ("s1", "s2")]  # fmt: skip
    await a.storage.telemetry.write(rows)
    second = by((await get(a, key, park="p1", **params))["items"])
    assert rates(second["enterprise", "e2"]) == (720, 720, 720)
    # e3 has no device: still 0, so the park is 2/3
    assert second["park", "p1"]["coverage_percent"] == pytest.approx(200 / 3)
    await a.storage.registry.retire(ENTERPRISES, OPERATOR, "e3")
    third = by((await get(a, key, park="p1", **params))["items"])
    # e3 retired at 01:00 local, during the day: it still counts for the day...
    assert third["park", "p1"]["coverage_percent"] == pytest.approx(200 / 3)
    # ...but not the next one
    nxt = "2026-03-03"
    clock.set(local(25))
    await a.storage.telemetry.write([
        row(local(24) + timedelta(seconds=10 * i), "p1", ent, dev, metric)
        for i in range(360)
        for ent, dev, metric in (("e1", "m1", "active_power"),
                                 ("e2", "s1", "water_flow"),
                                 ("e2", "s2", "water_flow"))
    ] + [
        row(local(24) + timedelta(minutes=10 * i), "p1", "e1", "c1", m,
            data_type="minute")
        for i in range(6) for m in ("so2", "nox")
    ] + [row(local(24), "p1", "e1", "c1", m, data_type="hour")
         for m in ("so2", "nox")])  # fmt: skip
    full = by((await get(a, key, park="p1", **{**params, "from": nxt, "to": nxt}))[
        "items"])  # fmt: skip
    assert full["park", "p1"]["coverage_percent"] == 100.0
    assert ("enterprise", "e3") not in full


async def test_local_days_in_shanghai_and_a_23_hour_day_in_berlin(
    api: tuple[Api, Clock],
) -> None:
    a, clock = api
    clock.set(datetime(2026, 4, 1, tzinfo=UTC))
    await a.storage.telemetry.write([
        row(local(23, 59, 59), "p2", "f1", "b1", "water_flow"),
        row(local(24), "p2", "f1", "b1", "water_flow"),
    ])  # fmt: skip
    key = await a.key(Role.REGULATOR)
    body = await get(a, key, device="b1", **{"from": DAY, "to": "2026-03-03"})
    assert [(i["period"], i["level"], rates(i)) for i in body["items"]] == [
        ("2026-03-02", "device", (8640, 1, 1)),
        ("2026-03-03", "device", (8640, 1, 1)),
    ]
    # in UTC both readings fall on 2026-03-01 16:00Z .. : one day
    utc = await get(a, key, device="b1", tz="UTC",
                    **{"from": "2026-03-02", "to": "2026-03-02"})  # fmt: skip
    assert [rates(i) for i in utc["items"]] == [(8640, 2, 2)]
    # 2026-03-29 in Berlin has 23 hours: 138 readings of 600 s expected
    berlin_start = datetime(2026, 3, 28, 23, tzinfo=UTC)
    await a.storage.telemetry.write([
        row(berlin_start + timedelta(seconds=600 * i), "p3", "g1", "g1m",
            "water_flow")
        for i in range(138)
    ])  # fmt: skip
    day = {"from": "2026-03-29", "to": "2026-03-29"}
    berlin = by((await get(a, key, park="p3", **day))["items"])
    assert rates(berlin["device", "g1m"]) == (138, 138, 138)
    assert berlin["park", "p3"]["coverage_percent"] == 100.0
    march = {"from": "2026-03-10", "to": "2026-03-10", "period": "month"}
    month = by((await get(a, key, park="p3", **march))["items"])
    # March in Berlin: 743 hours x 6
    assert rates(month["device", "g1m"]) == (4458, 138, 138)


async def test_an_enterprise_sees_only_its_own(api: tuple[Api, Clock]) -> None:
    a, _ = api
    mine = await a.key(Role.ENTERPRISE, "p1", "e1")
    body = await get(a, mine, **{"from": DAY, "to": DAY})
    assert {(i["level"], i["id"]) for i in body["items"]} == {
        ("enterprise", "e1"), ("outlet", "o1"), ("device", "m1"), ("device", "c1"),
    }  # fmt: skip
    for params in ({"device": "s1"}, {"enterprise": "e2"}, {"park": "p2"},
                   {"device": "b1"}, {"enterprise": "e1", "device": "s1"}):  # fmt: skip
        for path in ("/v1/coverage", "/v1/coverage/gaps"):
            theirs = await a.client.get(
                path, headers=mine, params={"from": DAY, "to": DAY, **params}
            )
            name = next(iter(params)) if len(params) == 1 else "device"
            missing = await a.client.get(
                path, headers=mine, params={"from": DAY, "to": DAY, name: "zz"}
            )
            assert theirs.status_code == missing.status_code == 404, params
            assert theirs.json() == missing.json()
            assert theirs.json()["detail"] == f"{name} not found"
    gaps = await get(a, mine, "/v1/coverage/gaps", **{"from": DAY, "to": DAY})
    assert {g["device"] for g in gaps["items"]} == {"m1"}


@pytest.mark.parametrize(
    ("params", "field", "reason"),
    [
        ({"from": "2026-03-02", "to": "2026-03-01"}, "query.to",
         "must not be before from"),
        ({"from": DAY, "to": DAY, "tz": "Mars/Olympus"}, "query.tz",
         "unknown time zone 'Mars/Olympus'"),
        ({"from": DAY, "to": DAY, "tz": "Asia"}, "query.tz",
         "unknown time zone 'Asia'"),
        # 2025-01-01 .. 2026-01-02: 365 + 2 days
        ({"from": "2025-01-01", "to": "2026-01-02"}, "query.to",
         "367 days, more than 366: ask for fewer days or use period=month"),
        ({"from": "2021-01-01", "to": "2026-01-01", "period": "month"}, "query.to",
         "61 months, more than 60"),
        ({"from": DAY, "to": DAY, "period": "week"}, "query.period", "'day'"),
        ({"from": "2026-02-30", "to": DAY}, "query.from", "date"),
        ({"from": DAY}, "query.to", "Field required"),
        ({"from": "0001-01-01", "to": DAY}, "query.from",
         "must be from 1970-01-01 to 9998-12-31"),
        ({"from": DAY, "to": "9999-12-31"}, "query.to",
         "must be from 1970-01-01 to 9998-12-31"),
        ({"from": DAY, "to": DAY, "devcie": "m1"}, "query.devcie",
         "unknown parameter"),
    ],
)  # fmt: skip
@pytest.mark.parametrize("path", ["/v1/coverage", "/v1/coverage/gaps"])
async def test_bad_input_is_a_422_naming_the_field(
    api: tuple[Api, Clock], path: str, params: dict[str, str], field: str,
    reason: str,
) -> None:  # fmt: skip
    a, _ = api
    if path.endswith("gaps") and "period" in params:
        field, reason = "query.period", "unknown parameter"  # gaps have no period
    key = await a.key(Role.REGULATOR)
    r = await a.client.get(path, headers=key, params=params)
    assert r.status_code == 422, r.text
    [error] = r.json()["errors"]
    assert error["field"] == field
    assert reason in error["reason"]


async def test_too_many_rows_is_a_422_saying_how_to_narrow_it(
    api: tuple[Api, Clock],
) -> None:
    a, _ = api
    key = await a.key(Role.REGULATOR)
    # 2025-07-01 .. 2026-03-31: 274 days x (park + 3 enterprises + 1 outlet +
    # 4 devices) = 2 466 rows, more than the 1 000 of max_points
    params = {"from": "2025-07-01", "to": "2026-03-31", "park": "p1"}
    r = await a.client.get("/v1/coverage", headers=key, params=params)
    assert r.status_code == 422, r.text
    assert r.json()["errors"] == [{"field": "query.detail", "reason": "too many rows"}]
    assert r.json()["detail"].startswith(
        "the answer would have 2466 rows, more than the limit of 1000: narrow it"
    )
    # by month: 9 x 9 rows; by day, the park alone: 274 x 1
    for narrower in ({"period": "month"}, {"detail": "park"}):
        ok = await a.client.get(
            "/v1/coverage", headers=key, params={**params, **narrower}
        )
        assert ok.status_code == 200, (narrower, ok.text)


@pytest.mark.parametrize(
    ("body", "status", "field", "reason"),
    [
        ({"protocol": "hj212", "data_types": {"hour": 1800}}, 422,
         "body.data_types", "hour: interval must be 3600 seconds, not 1800"),
        ({"protocol": "modbus_tcp", "data_types": {"minute": 600}}, 422,
         "body.data_types", "minute, hour and day data only for protocol hj212"),
        ({"protocol": "hj212", "data_types": {"realtime": 30, "day": 86400}}, 201,
         None, None),
    ],
)  # fmt: skip
async def test_registered_data_types_are_checked(
    api: tuple[Api, Clock], body: dict[str, Any], status: int, field: str | None,
    reason: str | None,
) -> None:  # fmt: skip
    a, _ = api
    key = await a.key(Role.OPERATOR, "p1")
    r = await a.client.post("/v1/devices", headers=key, json={
        "id": "new1", "enterprise": "e3", "interval_s": 30, "metrics": ["so2"], **body,
    })  # fmt: skip
    assert r.status_code == status, r.text
    if field is None:
        assert r.json()["data_types"] == body["data_types"]
        got = await a.client.get("/v1/devices/new1", headers=key)
        assert got.json()["data_types"] == {"realtime": 30, "day": 86400}
        return
    [error] = r.json()["errors"]
    assert error["field"].startswith(field)
    assert reason is not None
    assert reason in error["reason"]


async def test_too_many_gaps_is_a_422_saying_how_to_narrow_it(
    api: tuple[Api, Clock],
) -> None:
    a, _ = api
    key = await a.key(Role.REGULATOR)
    params = {"from": DAY, "to": DAY, "park": "p1"}
    r = await a.client.get(
        "/v1/coverage/gaps", headers=key, params={**params, "limit": 3}
    )
    assert r.status_code == 422, r.text  # p1 has 4 series gaps that day
    assert r.json()["errors"] == [{"field": "query.limit", "reason": "too many gaps"}]
    assert "more than 3 gaps: narrow the request" in r.json()["detail"]
    ok = await get(a, key, "/v1/coverage/gaps", **params, limit=4)
    assert len(ok["items"]) == 4


async def test_detail_never_hides_the_selection_itself(api: tuple[Api, Clock]) -> None:
    a, _ = api
    day = {"from": DAY, "to": DAY, "detail": "park"}
    reg = await a.key(Role.REGULATOR)
    one = await get(a, reg, device="c1", **day)
    assert [(i["level"], i["id"], rates(i)) for i in one["items"]] == [
        ("device", "c1", (336, 335, 335))
    ]
    assert [(s["level"], s["id"]) for s in one["now"]] == [("device", "c1")]
    mine = await a.key(Role.ENTERPRISE, "p1", "e1")
    own = await get(a, mine, **day)
    assert [(i["level"], i["id"]) for i in own["items"]] == [("enterprise", "e1")]
