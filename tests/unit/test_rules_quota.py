"""``kind: quota`` — cumulative consumption per local day/month/year, hand-computed:
crossings at the reading, the local month boundary, tce through coefficients."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.engine import Engine
from rules.model import AlertEvent, EventKind, Obs, Window
from rules.pack import Pack, load_pack, parse_pack
from smartpark.errors import ConfigError

PACKS = Path(__file__).parents[2] / "rules" / "packs"
SHANGHAI = ZoneInfo("Asia/Shanghai")
FEB_START = 1_706_716_800_000  # 2024-02-01T00:00+08:00 = 2024-01-31T16:00Z
JAN = Window(1_704_038_400_000, FEB_START)  # from 2023-12-31T16:00Z
DAY1_END = 1_709_308_800_000  # 2024-03-02T00:00+08:00
DAY1 = Window(1_709_222_400_000, DAY1_END)  # local 2024-03-01
TCE = {
    "version": "GB/T 2589 test",
    "unit": "kgce",
    "electricity_kwh": 0.1229,
    "raw_coal_kg": 0.7143,
}
CO2 = {"version": "2023", "unit": "kgCO2", "electricity_kwh": 0.5306}


def utc(text: str) -> int:
    wall = datetime.fromisoformat(f"2024-{text}").replace(tzinfo=UTC)
    return int(wall.timestamp() * 1000)


def at(local: str) -> int:
    wall = datetime.fromisoformat(f"2024-{local}").replace(tzinfo=SHANGHAI)
    return int(wall.timestamp() * 1000)


def water(ts_ms: int, value: float, device: str = "w-1", **kw: Any) -> Obs:
    return Obs(ts_ms, "p1", "ent-1", device, "water_volume", value, **kw)


def quota_pack(*, delay: int | str = 0, **fields: Any) -> Pack:
    rule = {
        "id": "water",
        "kind": "quota",
        "period": "day",
        "inputs": [{"metric": "water_volume"}],
        "limit": 50,
        **fields,
    }
    return parse_pack(
        {
            "pack": "quota",
            "version": "1",
            "timezone": "Asia/Shanghai",
            "watermark_delay": delay,
            "allowed_lateness": "1h",
            "coefficients": {"tce-gbt2589": TCE, "co2-grid": CO2},
            "rules": [rule],
        }
    )


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [e for o in stream for e in engine.feed(o)]


def summary(events: list[AlertEvent]) -> list[tuple[Any, ...]]:
    return [(e.kind, e.scope.key, e.at_ms, e.value, e.window) for e in events]


@pytest.mark.parametrize(
    ("last_jan", "expected"),
    [
        # 15:59Z is 23:59 on 31 January in Shanghai: 1090 - 1000 = 90 <= 100.
        # 16:01Z is 00:01 on 1 February: its 30 m3 start February (UTC would
        # still say January, and 120 > 100).
        (1090, []),
        # 1101 - 1000 = 101 > 100 at 15:59Z; February's first step resolves it
        # at the local month boundary.
        (
            1101,
            [
                (EventKind.OPENED, "p1/ent-1/*/*", utc("01-31T15:59"), 101.0, JAN),
                (EventKind.RESOLVED, "p1/ent-1/*/*", FEB_START, 101.0, JAN),
            ],
        ),
    ],
)
def test_monthly_quota_at_the_local_month_boundary(
    last_jan: float, expected: list[tuple[Any, ...]]
) -> None:
    stream = [
        water(utc("01-20T00:00"), 1000),
        water(utc("01-31T15:59"), last_jan),
        water(utc("01-31T16:01"), last_jan + 30),
    ]
    events = run(Engine(quota_pack(period="month", limit=100)), stream)
    assert summary(events) == expected


def test_the_watermark_resolves_at_the_boundary_without_new_data() -> None:
    stream = [
        water(utc("01-20T00:00"), 1000),
        water(utc("01-25T00:00"), 1101),  # 101 > 100
        # another enterprise moves event time to 1 February, exactly
        Obs(utc("01-31T16:00"), "p1", "ent-2", "w-9", "water_volume", 50),
    ]
    events = run(Engine(quota_pack(period="month", limit=100)), stream)
    assert [(e.kind, e.at_ms) for e in events] == [
        (EventKind.OPENED, utc("01-25T00:00")),
        (EventKind.RESOLVED, FEB_START),
    ]
    assert events[1].evidence["period_ended"] is True


DAY = [
    water(at("03-01 08:00"), 100, "w-1"),
    water(at("03-01 08:00"), 200, "w-2"),
    water(at("03-01 10:00"), 120, "w-1"),  # +20 -> 20
    water(at("03-01 12:00"), 225, "w-2"),  # +25 -> 45
    water(at("03-01 14:00"), 130, "w-1"),  # +10 -> 55 > 50
    water(at("03-01 16:00"), 240, "w-2"),  # +15 -> 70
    water(at("03-02 00:10"), 131, "w-1"),  # 03-02 starts from 0
]


@pytest.mark.parametrize(
    ("per", "limit", "expected"),
    [
        (
            "enterprise",
            50,
            [
                (EventKind.OPENED, "p1/ent-1/*/*", at("03-01 14:00"), 55.0, DAY1),
                (EventKind.RESOLVED, "p1/ent-1/*/*", DAY1_END, 70.0, DAY1),
            ],
        ),
        (
            # w-1: 20 + 10 = 30 > 25 at 14:00; w-2: 25 is not above 25 at 12:00,
            # 25 + 15 = 40 is at 16:00. w-1's 03-02 step resolves w-1 only; w-2
            # resolves when the watermark reaches 03-02 (the same reading).
            "device",
            25,
            [
                (EventKind.OPENED, "p1/ent-1/w-1/*", at("03-01 14:00"), 30.0, DAY1),
                (EventKind.OPENED, "p1/ent-1/w-2/*", at("03-01 16:00"), 40.0, DAY1),
                (EventKind.RESOLVED, "p1/ent-1/w-1/*", DAY1_END, 30.0, DAY1),
                (EventKind.RESOLVED, "p1/ent-1/w-2/*", DAY1_END, 40.0, DAY1),
            ],
        ),
    ],
)
def test_a_crossing_is_raised_at_the_reading(
    per: str, limit: float, expected: list[tuple[Any, ...]]
) -> None:
    events = run(Engine(quota_pack(per=per, limit=limit)), DAY)
    assert summary(events) == expected


def test_energy_in_tce_through_versioned_coefficients() -> None:
    inputs = [
        {
            "metric": "active_energy",
            "coefficient": {"set": "tce-gbt2589", "key": "electricity_kwh"},
        },
        {
            "metric": "coal_mass",
            "coefficient": {"set": "tce-gbt2589", "key": "raw_coal_kg", "per": "kg"},
        },
    ]
    pack = quota_pack(period="month", unit="tce", limit=1.5, inputs=inputs)

    def o(local: str, device: str, metric: str, value: float) -> Obs:
        return Obs(at(local), "p1", "ent-1", device, metric, value)

    stream = [
        o("03-01 00:10", "e-1", "active_energy", 5000),
        o("03-01 00:10", "boiler-1", "coal_mass", 50),
        o("03-05 00:00", "e-1", "active_energy", 6000),  # 1000 kWh: 0.1229 tce
        o("03-10 00:00", "boiler-1", "coal_mass", 51),  # 1 t: 0.7143 -> 0.8372
        o("03-20 00:00", "boiler-1", "coal_mass", 52),  # 1 t more -> 1.5515 > 1.5
    ]
    (event,) = run(Engine(pack), stream)
    assert (event.kind, event.at_ms) == (EventKind.OPENED, at("03-20 00:00"))
    # 1000 kWh * 0.1229 kgce/kWh + 2000 kg * 0.7143 kgce/kg = 1551.5 kgce
    assert event.value == pytest.approx(1.5515)
    electricity, coal = event.evidence["inputs"]
    assert electricity["amount"] == pytest.approx(0.1229)
    assert coal["amount"] == pytest.approx(1.4286)
    assert coal["coefficient"] == {
        "set": "tce-gbt2589",
        "version": "GB/T 2589 test",
        "key": "raw_coal_kg",
        "value": 0.7143,
        "unit": "kgce/kg",
    }
    assert (event.evidence["unit"], event.evidence["limit"]) == ("tce", 1.5)


def test_a_meter_replacement_counts_nothing_and_marks_a_lower_bound() -> None:
    stream = [
        water(at("03-01 08:00"), 100),
        water(at("03-01 09:00"), 150),  # +50
        water(at("03-01 10:00"), 0, reset="replacement"),  # unknown: +0
        water(at("03-01 11:00"), 30),  # +30 -> 80 > 60
    ]
    (event,) = run(Engine(quota_pack(limit=60)), stream)
    assert (event.kind, event.at_ms, event.value) == (
        EventKind.OPENED,
        at("03-01 11:00"),
        80.0,
    )
    assert event.evidence["inputs"][0]["discontinuities"] == 1
    assert event.evidence["lower_bound"] is True


LATE_DAY = [
    water(at("03-01 08:00"), 100, "w-1"),
    water(at("03-01 08:00"), 200, "w-2"),
    water(at("03-01 12:00"), 140, "w-1"),  # 40
    water(at("03-02 00:00"), 145, "w-1"),  # for 03-02
    water(at("03-01 23:50"), 215, "w-2"),  # w-2 lags: 40 + 15 = 55 > 50 on 03-01
]


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        # watermark exactly 03-02 00:00: 03-01 is closed, the crossing revises it
        (0, [(EventKind.REVISED, DAY1_END)]),
        # watermark 23:40: 03-01 is still open, read as it would have been in order
        (
            "30min",
            [(EventKind.OPENED, at("03-01 23:50")), (EventKind.RESOLVED, DAY1_END)],
        ),
    ],
)
def test_a_lagging_device_crossing_an_earlier_day(
    delay: int | str, expected: list[tuple[Any, ...]]
) -> None:
    events = run(Engine(quota_pack(delay=delay)), LATE_DAY)
    assert [(e.kind, e.at_ms) for e in events] == expected
    assert all((e.value, e.window) == (55.0, DAY1) for e in events)


def test_a_new_period_resolves_before_the_watermark_reaches_it() -> None:
    # watermark_delay 30 min: w-1's 00:10 step opens 03-02 while event time is
    # still on 03-01 (23:40); it resolves 03-01's alert first, so that its own
    # crossing (60 > 50 at once) opens a new one.
    stream = [*DAY[:5], water(at("03-02 00:10"), 190, "w-1")]
    events = run(Engine(quota_pack(delay="30min")), stream)
    day2 = Window(DAY1_END, 1_709_395_200_000)
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/*/*", at("03-01 14:00"), 55.0, DAY1),
        (EventKind.RESOLVED, "p1/ent-1/*/*", DAY1_END, 55.0, DAY1),
        (EventKind.OPENED, "p1/ent-1/*/*", at("03-02 00:10"), 60.0, day2),
    ]


def test_a_revision_says_what_changed() -> None:
    (event,) = run(Engine(quota_pack()), LATE_DAY)
    assert event.evidence["verdict"] == "breach"
    assert event.evidence["previous"] == {"verdict": "ok", "value": 40.0}
    assert event.evidence["late_reading"]["value"] == 215


def test_readings_beyond_the_lateness_are_dropped_and_counted() -> None:
    engine = Engine(quota_pack())
    stream = [*LATE_DAY[:3], water(at("03-02 01:00"), 145, "w-1")]
    stream.append(water(at("03-01 23:50"), 999, "w-2"))  # 03-01 + 1 h has passed
    assert run(engine, stream) == []
    assert engine.stats.dropped_late == 1


@pytest.mark.parametrize(
    ("period", "end"),
    [
        ("day", 1_709_308_800_000),  # 2024-03-02T00:00+08:00 = 03-01T16:00Z
        ("month", 1_711_900_800_000),  # 2024-04-01T00:00+08:00 = 03-31T16:00Z
        ("year", 1_735_660_800_000),  # 2025-01-01T00:00+08:00 = 2024-12-31T16:00Z
    ],
)
def test_periods_end_at_local_midnight(period: str, end: int) -> None:
    stream = [water(at("03-01 08:00"), 0), water(at("03-01 09:00"), 60)]
    events = run(Engine(quota_pack(period=period)), stream)
    (opened,) = events
    assert opened.window is not None
    assert opened.window.end_ms == end


def test_the_shipped_quota_pack_loads() -> None:
    pack = load_pack(PACKS / "energy-water-quota.yaml")
    assert {r.id: r.limit for r in pack.rules if hasattr(r, "limit")} == {
        "energy-monthly-tce": 5000,
        "energy-daily-tce": 170,
        "energy-monthly-tce-equal-value": 12000,
        "water-daily": 1200,
        "water-monthly": 30000,
    }
    assert pack.coefficients["tce-gbt2589"]["electricity_kwh"] == 0.1229
    assert pack.coefficients["tce-electricity-equal-value"]["electricity_kwh"] == 0.404


COAL_REF = {"set": "tce-gbt2589", "key": "raw_coal_kg"}
COAL = {"metric": "coal_mass", "coefficient": COAL_REF}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"inputs": [{"metric": "water_flow"}]},
            "rules[0].inputs[0].metric: water_flow is a gauge;"
            " consumption needs a counter",
        ),
        (
            {"inputs": [COAL]},
            "rules[0].unit: a quota with coefficients needs its unit (e.g. tce)",
        ),
        (
            {"inputs": [{"metric": "water_volume"}, {"metric": "active_energy"}]},
            "rules[0].inputs[1].metric: active_energy is in 'kWh', which does not"
            " convert to the quota's 'm3' (a coefficient would)",
        ),
        (
            {
                "unit": "tce",
                "inputs": [{**COAL, "coefficient": {"set": "x", "key": "k"}}],
            },
            "rules[0].inputs[0].coefficient.set: unknown coefficient set 'x'"
            " (pack has: co2-grid, tce-gbt2589)",
        ),
        (
            {
                "unit": "tce",
                "inputs": [
                    {**COAL, "coefficient": {"set": "tce-gbt2589", "key": "unit"}}
                ],
            },
            "rules[0].inputs[0].coefficient.key: coefficient set 'tce-gbt2589' has no"
            " coefficient 'unit' (it has: electricity_kwh, raw_coal_kg)",
        ),
        (
            {
                "unit": "tce",
                "inputs": [
                    {
                        "metric": "active_energy",
                        "coefficient": {"set": "co2-grid", "key": "electricity_kwh"},
                    }
                ],
            },
            "rules[0].inputs[0].coefficient.set: coefficient set 'co2-grid' yields"
            " 'kgCO2', the rule needs 'tce'",
        ),
        (
            {
                "unit": "tce",
                "inputs": [
                    {**COAL, "coefficient": {**COAL_REF, "per": "L"}},
                ],
            },
            "rules[0].inputs[0].coefficient.per: a coefficient per 'L' does not apply"
            " to coal_mass, which is in 't'",
        ),
        (
            {"period": "week"},
            "rules[0].period: unknown value 'week'"
            " (expected one of 'day', 'month' or 'year')",
        ),
        (
            {"per": "park"},
            "rules[0].per: unknown value 'park'"
            " (expected one of 'enterprise' or 'device')",
        ),
        ({"limit": 0}, "rules[0].limit: Input should be greater than 0 (got 0)"),
        (
            {"inputs": []},
            "rules[0].inputs: Tuple should have at least 1 item after validation,"
            " not 0 (got [])",
        ),
    ],
)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        quota_pack(**fields)
    assert str(err.value) == f"<pack>: {message}"


def test_a_coefficient_set_must_say_its_unit() -> None:
    data = {
        "pack": "q",
        "version": "1",
        "coefficients": {"tce": {"version": "1", "raw_coal_kg": 0.7143}},
        "rules": [
            {
                "id": "coal",
                "kind": "quota",
                "period": "month",
                "unit": "tce",
                "limit": 1,
                "inputs": [
                    {
                        "metric": "coal_mass",
                        "coefficient": {"set": "tce", "key": "raw_coal_kg"},
                    }
                ],
            }
        ],
    }
    with pytest.raises(ConfigError) as err:
        parse_pack(data)
    assert str(err.value) == (
        "<pack>: rules[0].inputs[0].coefficient.set: coefficient set 'tce' does not"
        " say its unit (unit: the unit its coefficients yield, e.g. kgce)"
    )


# Across a local month boundary: devices, a crossing, a replacement, a lagging
# device adding to a closed month, a reading older than its series — split anywhere.
SPLIT_STREAM = [
    water(utc("01-30T00:00"), 1000, "w-1"),
    water(utc("01-30T00:00"), 500, "w-2"),
    water(utc("01-30T12:00"), 1040, "w-1"),  # Jan 40
    water(utc("01-31T00:00"), 0, "w-2", reset="replacement"),  # Jan 40
    water(utc("01-31T15:00"), 1070, "w-1"),  # Jan 70 > 60: opened
    water(utc("01-31T16:30"), 1075, "w-1"),  # Feb 5: resolves January
    water(utc("01-31T15:30"), 70, "w-2"),  # Jan 140: already over
    water(utc("02-01T00:00"), 1100, "w-1"),  # Feb 30
    water(utc("02-01T01:00"), 100, "w-2"),  # Feb 60: not above 60
    water(utc("02-01T02:00"), 101, "w-2"),  # Feb 61: opened
    water(utc("02-01T03:00"), 50, "w-3"),
    water(utc("01-31T15:59"), 60, "w-3"),  # older than w-3's last: dropped
]


@pytest.mark.parametrize("split", range(len(SPLIT_STREAM) + 1))
def test_a_restored_snapshot_continues_exactly(split: int) -> None:
    pack = quota_pack(period="month", limit=60)
    whole = run(Engine(pack), SPLIT_STREAM)
    first = Engine(pack)
    head = run(first, SPLIT_STREAM[:split])
    state = json.loads(json.dumps(first.snapshot()))
    tail = run(Engine.restore(pack, state), SPLIT_STREAM[split:])
    assert [e.to_line() for e in head + tail] == [e.to_line() for e in whole]


def test_the_split_stream_is_not_trivial() -> None:
    engine = Engine(quota_pack(period="month", limit=60))
    events = run(engine, SPLIT_STREAM)
    assert [(e.kind, e.at_ms, e.value) for e in events] == [
        (EventKind.OPENED, utc("01-31T15:00"), 70.0),
        (EventKind.RESOLVED, FEB_START, 70.0),
        (EventKind.OPENED, utc("02-01T02:00"), 61.0),
    ]
    assert engine.stats.dropped_late == 1
