"""Telemetry over HTTP against the real PostgreSQL: pages, local days, rollups
equal to raw rows, counter consumption, caps, exports — and no other tenant's row
by any route, filter or cursor."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from smartpark.tenancy import Role
from storage import TelemetryRow
from tests.support.api import Api, running_api

# 2026-03-01 15:00 UTC = 23:00 in Asia/Shanghai: the readings cross local midnight
T0 = datetime(2026, 3, 1, 15, 0, tzinfo=UTC)
DAY = {"start": "2026-03-01T00:00:00+08:00", "end": "2026-03-03T00:00:00+08:00"}


def rows(park: str, ent: str, device: str, n: int = 24, step_s: int = 300,
         metric: str = "active_power") -> list[TelemetryRow]:  # fmt: skip
    """``n`` readings every ``step_s`` from T0; quarter values (exact sums)."""
    return [
        TelemetryRow(T0 + timedelta(seconds=i * step_s), park, ent, device, metric,
                     i / 4 + len(device), "N", i)
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture
async def api(pg_dsn: str, db_schema: str) -> AsyncIterator[Api]:
    async with running_api(pg_dsn, db_schema, max_points=5000) as api:
        await api.storage.telemetry.write(
            rows("p1", "e1", "a1") + rows("p1", "e1", "a2") + rows("p1", "e2", "b1")
            + rows("p2", "e3", "c1")
        )  # fmt: skip
        await api.storage.telemetry.refresh_rollups()
        yield api


async def get(api: Api, path: str, key: dict[str, str], **params: Any) -> Any:
    r = await api.client.get(path, headers=key, params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_pages_chain_without_gaps_or_repeats(api: Api) -> None:
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    seen: list[tuple[str, str]] = []
    cursor = None
    pages = 0
    while True:
        params = {**DAY, "limit": 7, **({"cursor": cursor} if cursor else {})}
        page = await get(api, "/v1/readings", key, **params)
        seen += [(i["time"], i["device"]) for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 7  # 48 readings of e1, 7 a page
    assert len(seen) == len(set(seen)) == 48
    assert seen == sorted(seen)
    assert {d for _, d in seen} == {"a1", "a2"}


@pytest.mark.parametrize(
    ("role", "park", "enterprise", "devices"),
    [
        (Role.ENTERPRISE, "p1", "e1", {"a1", "a2"}),
        (Role.ENTERPRISE, "p1", "e2", {"b1"}),
        (Role.OPERATOR, "p1", None, {"a1", "a2", "b1"}),
        (Role.OPERATOR, "p2", None, {"c1"}),
        (Role.OPERATOR, None, None, {"a1", "a2", "b1", "c1"}),
        (Role.REGULATOR, None, None, {"a1", "a2", "b1", "c1"}),
    ],
)
async def test_each_role_sees_its_scope(
    api: Api, role: Role, park: str | None, enterprise: str | None, devices: set[str]
) -> None:
    key = await api.key(role, park, enterprise)
    page = await get(api, "/v1/readings", key, **DAY, limit=1000)
    assert {i["device"] for i in page["items"]} == devices
    latest = await get(api, "/v1/latest", key)
    assert {i["device"] for i in latest["items"]} == devices
    agg = await get(api, "/v1/aggregates", key, **DAY, interval="1d")
    assert {i["device"] for i in agg["items"]} == devices


async def test_another_tenants_data_is_invisible_by_every_door(api: Api) -> None:
    """Enterprise e1 asks for e2's device b1 (and a metric b1 really has) by every
    filter, by a cursor crafted from b1's rows, and through every route: the
    answer is exactly the answer for a device that does not exist."""
    mine = await api.key(Role.ENTERPRISE, "p1", "e1")
    theirs = await api.key(Role.ENTERPRISE, "p1", "e2")
    for params in (
        {"device": "b1"},
        {"device": "b1", "metric": "active_power"},
        {"enterprise": "e2"},
        {"park": "p2"},
        {"device": "nope"},
    ):
        routes: tuple[tuple[str, dict[str, str]], ...] = (
            ("/v1/readings", DAY),
            ("/v1/aggregates", {**DAY, "interval": "1h"}),
            ("/v1/latest", {}),
        )
        for path, extra in routes:
            r = await api.client.get(path, headers=mine, params={**extra, **params})
            assert r.status_code == 200, (path, params)
            assert r.json()["items"] == [], (path, params)
        r = await api.client.get(
            "/v1/exports/readings", headers=mine, params={**DAY, **params}
        )
        assert r.text.splitlines()[1:] == [], params
    # a cursor crafted from b1's own first page positions the scan, nothing more
    their_page = await get(api, "/v1/readings", theirs, **DAY, limit=3)
    crafted = their_page["next_cursor"]
    page = await get(api, "/v1/readings", mine, **DAY, cursor=crafted, limit=1000)
    assert page["items"]
    assert {i["enterprise"] for i in page["items"]} == {"e1"}


async def test_local_days_start_at_local_midnight(api: Api) -> None:
    """T0 is 23:00 in Shanghai: the readings of a1 before 00:00 local (12 of them,
    23:00..23:55) are one day, the rest the next; in UTC they are one day."""
    key = await api.key(Role.REGULATOR)
    got = await get(api, "/v1/aggregates", key, **DAY, interval="1d", device="a1",
                    tz="Asia/Shanghai")  # fmt: skip
    assert [(i["bucket"], i["count"]) for i in got["items"]] == [
        ("2026-03-01T00:00:00+08:00", 12),
        ("2026-03-02T00:00:00+08:00", 12),
    ]
    utc = await get(api, "/v1/aggregates", key, **DAY, interval="1d", device="a1",
                    tz="UTC")  # fmt: skip
    assert [(i["bucket"], i["count"]) for i in utc["items"]] == [
        ("2026-03-01T00:00:00Z", 24)
    ]


@pytest.mark.parametrize("interval", ["15min", "1h", "1d", "1w", "1mo"])
@pytest.mark.parametrize("tz", ["Asia/Shanghai", "Asia/Kolkata", "UTC"])
async def test_rollups_and_raw_rows_give_the_same_numbers(
    api: Api, interval: str, tz: str
) -> None:
    key = await api.key(Role.REGULATOR)
    params = {**DAY, "interval": interval, "tz": tz}
    raw = await get(api, "/v1/aggregates", key, **params, source="raw")
    rolled = await get(api, "/v1/aggregates", key, **params, source="rollup")
    auto = await get(api, "/v1/aggregates", key, **params)
    assert raw["source"] == "raw"
    assert rolled["source"] == auto["source"] == "rollup"
    assert raw["items"] == rolled["items"] == auto["items"]
    assert sum(i["count"] for i in raw["items"]) == 96


async def test_auto_reads_raw_rows_while_the_rollups_lag(api: Api) -> None:
    key = await api.key(Role.REGULATOR)
    await api.storage.telemetry.write(rows("p1", "e1", "a9", n=3))  # not refreshed
    got = await get(api, "/v1/aggregates", key, **DAY, interval="1h", device="a9")
    assert got["source"] == "raw"
    assert sum(i["count"] for i in got["items"]) == 3


async def test_counter_consumption_never_steps_backwards(api: Api) -> None:
    values = [(100.0, None), (110.0, None), (120.0, None), (5.0, "replacement"),
              (15.0, None), (12.0, None), (20.0, None)]  # fmt: skip
    meter = [
        TelemetryRow(T0 + timedelta(minutes=10 * i), "p1", "e1", "m1", "active_energy",
                     v, "N", i, reset)
        for i, (v, reset) in enumerate(values)
    ]  # fmt: skip
    await api.storage.telemetry.write(meter)
    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    got = await get(api, "/v1/aggregates", key, **DAY, interval="1d", device="m1",
                    tz="UTC")  # fmt: skip
    [day] = got["items"]
    # 10 + 10 + 5 (a new meter starts from 0) + 10 + 0 (12 < 15, no reset) + 8
    assert (day["consumption"], day["negative_steps"]) == (43.0, 1)
    # a range that starts mid-series counts the step into its first reading
    later = await get(api, "/v1/aggregates", key, interval="1d", device="m1",
                      tz="UTC", start=(T0 + timedelta(minutes=15)).isoformat(),
                      end=DAY["end"])  # fmt: skip
    assert later["items"][0]["consumption"] == 43.0 - 10
    gauge = await get(api, "/v1/aggregates", key, **DAY, interval="1d", device="a1")
    assert {i["consumption"] for i in gauge["items"]} == {None}


async def test_too_many_buckets_is_a_422_that_says_how_to_narrow(api: Api) -> None:
    key = await api.key(Role.REGULATOR)
    r = await api.client.get("/v1/aggregates", headers=key, params={
        "start": "2026-01-01T00:00:00Z", "end": "2026-03-01T00:00:00Z",
        "interval": "1min"})  # fmt: skip
    assert r.status_code == 422
    assert r.headers["content-type"] == "application/problem+json"
    assert "narrow it" in r.json()["detail"]
    assert r.json()["errors"][0]["field"] == "query.interval"


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"start": "2026-03-01T00:00:00", "end": DAY["end"]}, "query.start"),
        ({"start": DAY["end"], "end": DAY["start"]}, "query.end"),
        ({**DAY, "cursor": "garbage!"}, "query.cursor"),
        ({**DAY, "cursor": "WyJ4Il0"}, "query.cursor"),
        ({**DAY, "limit": 0}, "query.limit"),
        ({**DAY, "limit": 10_001}, "query.limit"),
        ({**DAY, "series": "weekly"}, "query.series"),
        ({"start": "yesterday", "end": DAY["end"]}, "query.start"),
    ],
)
async def test_bad_input_names_the_field(
    api: Api, params: dict[str, Any], field: str
) -> None:
    key = await api.key(Role.REGULATOR)
    r = await api.client.get("/v1/readings", headers=key, params=params)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert field in [e["field"] for e in r.json()["errors"]]


@pytest.mark.parametrize("tz", ["Mars/Olympus", "Asia", "../../etc/passwd"])
async def test_an_unknown_time_zone_is_bad_input(api: Api, tz: str) -> None:
    key = await api.key(Role.REGULATOR)
    params = {**DAY, "interval": "1d", "tz": tz}
    r = await api.client.get("/v1/aggregates", headers=key, params=params)
    assert (r.status_code, r.json()["errors"][0]["field"]) == (422, "query.tz")


async def test_exports_stream_the_scope_and_are_audited(api: Api) -> None:
    import pyarrow.parquet as pq

    key = await api.key(Role.ENTERPRISE, "p1", "e1")
    r = await api.client.get("/v1/exports/readings", headers=key, params=DAY)
    assert r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0].startswith("time,park,enterprise,device")
    assert len(lines) == 1 + 48
    r = await api.client.get("/v1/exports/readings", headers=key,
                             params={**DAY, "format": "parquet"})  # fmt: skip
    table = pq.read_table(io.BytesIO(r.content))
    assert table.num_rows == 48
    assert set(table.column("enterprise").to_pylist()) == {"e1"}
    log = await api.storage.keys.audit_log()
    assert [(e.action, e.detail["format"]) for e in log[:2]] == [
        ("export", "parquet"), ("export", "csv"),
    ]  # fmt: skip


async def test_the_timescale_dialect_answers_the_same(
    timescale_dsn: str, uid: str
) -> None:
    """The same queries on TimescaleDB (PGlite: one connection at a time): scope,
    local days, consumption; ``auto`` reads the raw rows there (continuous
    aggregates do not show late rows before their refresh)."""
    import psycopg
    from psycopg import sql

    schema = f"t_{uid}"
    try:
        async with running_api(
            timescale_dsn, schema, pool_size=1, bulk_method="insert"
        ) as api:
            await api.storage.telemetry.write(
                rows("p1", "e1", "a1") + rows("p1", "e2", "b1")
            )
            key = await api.key(Role.ENTERPRISE, "p1", "e1")
            got = await get(api, "/v1/aggregates", key, **DAY, interval="1d",
                            tz="Asia/Shanghai")  # fmt: skip
            assert got["source"] == "raw"
            assert [(i["device"], i["bucket"], i["count"]) for i in got["items"]] == [
                ("a1", "2026-03-01T00:00:00+08:00", 12),
                ("a1", "2026-03-02T00:00:00+08:00", 12),
            ]
            page = await get(api, "/v1/readings", key, **DAY, limit=5)
            assert {i["device"] for i in page["items"]} == {"a1"}
            assert page["next_cursor"] is not None
            latest = await get(api, "/v1/latest", key)
            assert {i["device"] for i in latest["items"]} == {"a1"}
    finally:
        with psycopg.connect(timescale_dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(
                    sql.Identifier(schema)
                )
            )


async def _register(api: Api) -> None:
    """A registry written as the registry API would: parks, enterprises, an
    outlet, devices (a9 registered but never heard from)."""
    from psycopg import sql

    s = api.storage.schema
    async with api.storage.connection() as conn:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {p} (id, name, timezone) VALUES ('p1', 'Park 1',"
                " 'Asia/Shanghai'), ('p2', 'Park 2', 'UTC');"
                "INSERT INTO {e} (id, park, name) VALUES ('e1', 'p1', 'E1'),"
                " ('e2', 'p1', 'E2'), ('e3', 'p2', 'E3');"
                "INSERT INTO {o} (id, park, enterprise, kind, name, reference_o2)"
                " VALUES ('o1', 'p1', 'e1', 'stack', 'Stack 1', 6);"
                "INSERT INTO {d} (id, park, enterprise, outlet, protocol, interval_s)"
                " VALUES ('a1', 'p1', 'e1', 'o1', 'hj212', 300),"
                " ('a2', 'p1', 'e1', NULL, 'modbus_tcp', 300),"
                " ('a9', 'p1', 'e1', NULL, 'modbus_tcp', 300),"
                " ('b1', 'p1', 'e2', NULL, 'modbus_tcp', 300),"
                " ('c1', 'p2', 'e3', NULL, 'modbus_tcp', 300)"
            ).format(
                p=sql.Identifier(s, "parks"),
                e=sql.Identifier(s, "enterprises"),
                o=sql.Identifier(s, "outlets"),
                d=sql.Identifier(s, "devices"),
            )
        )


async def test_silent_devices_outlets_and_the_parks_time_zone(
    pg_dsn: str, db_schema: str
) -> None:
    now = T0 + timedelta(hours=2)  # a1, a2: last reading 5 min ago
    async with running_api(
        pg_dsn, db_schema, clock=lambda: int(now.timestamp() * 1000)
    ) as api:
        await api.storage.telemetry.write(
            rows("p1", "e1", "a1") + rows("p1", "e1", "a2") + rows("p1", "e2", "b1")
            + rows("p2", "e3", "c1")
        )  # fmt: skip
        await _register(api)
        e1 = await api.key(Role.ENTERPRISE, "p1", "e1")
        e2 = await api.key(Role.ENTERPRISE, "p1", "e2")
        got = await get(api, "/v1/silent", e1)
        assert [(i["device"], i["last_reading"]) for i in got["items"]] == [
            ("a9", None)
        ]
        got = await get(api, "/v1/silent", e1, periods=0.5)  # silent > 150 s
        assert [i["device"] for i in got["items"]] == ["a9", "a1", "a2"]
        assert got["items"][1]["silent_s"] == 300.0
        op = await api.key(Role.OPERATOR, "p1")
        got = await get(api, "/v1/silent", op, periods=0.5)
        assert {i["device"] for i in got["items"]} == {"a9", "a1", "a2", "b1"}
        # an outlet's devices only; another tenant's outlet is like none
        page = await get(api, "/v1/readings", e1, **DAY, outlet="o1")
        assert {i["device"] for i in page["items"]} == {"a1"}
        for key, outlet in ((e2, "o1"), (e1, "nope")):
            page = await get(api, "/v1/readings", key, **DAY, outlet=outlet)
            assert page["items"] == []
            silent = await get(api, "/v1/silent", key, outlet=outlet, periods=0.5)
            assert silent["items"] == []
        # without tz, days are the park's: p2 is registered in UTC
        e3 = await api.key(Role.ENTERPRISE, "p2", "e3")
        got = await get(api, "/v1/aggregates", e3, **DAY, interval="1d")
        assert got["timezone"] == "UTC"
        got = await get(api, "/v1/aggregates", e1, **DAY, interval="1d")
        assert got["timezone"] == "Asia/Shanghai"


async def test_a_misspelt_filter_is_refused_not_ignored(api: Api) -> None:
    key = await api.key(Role.OPERATOR, "p1")
    r = await api.client.get(
        "/v1/readings", headers=key, params={**DAY, "devcie": "a1"}
    )
    assert r.status_code == 422
    assert r.json()["errors"] == [
        {"field": "query.devcie", "reason": "unknown parameter"}
    ]
