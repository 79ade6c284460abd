"""``kind: ratio`` — energy per tonne of product per enterprise and local day/month,
hand-computed: counter resets, insufficient data, late revisions, coefficients."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from rules.engine import Engine
from rules.kinds.ratio import RatioSpec
from rules.model import AlertEvent, EventKind, Obs, Window
from rules.pack import Pack, load_pack, parse_pack
from smartpark.errors import ConfigError

PACKS = Path(__file__).parents[2] / "rules" / "packs"
SHANGHAI = ZoneInfo("Asia/Shanghai")
# Local day 2024-03-01 in Asia/Shanghai (UTC+8) is [02-29T16:00Z, 03-01T16:00Z).
DAY1 = Window(1_709_222_400_000, 1_709_308_800_000)
DAY2 = Window(1_709_308_800_000, 1_709_395_200_000)
TCE = {"version": "GB/T 2589 test", "unit": "kgce", "electricity_kwh": 0.1229}


def at(local: str) -> int:
    """Milliseconds of a wall-clock time in Asia/Shanghai (e.g. ``03-01 23:50``)."""
    wall = datetime.fromisoformat(f"2024-{local}").replace(tzinfo=SHANGHAI)
    return int(wall.timestamp() * 1000)


def kwh(local: str, device: str, value: float, **kw: Any) -> Obs:
    return Obs(at(local), "p1", "al-1", device, "active_energy", value, **kw)


def cast(local: str, value: float, **kw: Any) -> Obs:
    return Obs(at(local), "p1", "al-1", "cast-1", "production_mass", value, **kw)


def ratio_pack(*, delay: int | str = 0, **fields: Any) -> Pack:
    rule = {
        "id": "al-ac",
        "kind": "ratio",
        "period": "day",
        "numerator": {"metric": "active_energy", "device": "pot-line-*"},
        "denominator": {"metric": "production_mass", "device": "*cast*"},
        "limit": 1000,
        **fields,
    }
    return parse_pack(
        {
            "pack": "al",
            "version": "1",
            "timezone": "Asia/Shanghai",
            "watermark_delay": delay,
            "allowed_lateness": "1h",
            "coefficients": {"tce-gbt2589": TCE},
            "rules": [rule],
        }
    )


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [e for o in stream for e in engine.feed(o)]


# A day of two pot lines and a cast meter; the 03-02 00:10 reading closes it.
BASE = [
    kwh("03-01 00:10", "pot-line-1", 1000),
    kwh("03-01 00:10", "pot-line-2", 500),
    cast("03-01 00:10", 100),
]
CLOSE = [kwh("03-02 00:10", "pot-line-1", 99_999)]


@pytest.mark.parametrize(
    ("day", "num", "den", "ratio", "discontinuities"),
    [
        pytest.param(
            [
                kwh("03-01 12:00", "pot-line-1", 7000),
                kwh("03-01 23:50", "pot-line-1", 14000),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 23:50", 101.5),
            ],
            # (7000-1000) + (14000-7000) + (7500-500) = 20000 kWh; 101.5-100 = 1.5 t
            20000,
            1.5,
            20000 / 1.5,  # 13 333.3 kWh/t
            0,
            id="plain",
        ),
        pytest.param(
            [
                kwh("03-01 08:00", "pot-line-1", 5000),
                kwh("03-01 12:00", "pot-line-1", 20, reset="replacement"),
                kwh("03-01 23:50", "pot-line-1", 6020),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 23:50", 101.5),
            ],
            # (5000-1000) + nothing (new meter) + (6020-20) + (7500-500) = 17000 kWh
            17000,
            1.5,
            17000 / 1.5,  # 11 333.3 kWh/t
            1,
            id="meter-replaced",
        ),
        pytest.param(
            [
                kwh("03-01 08:00", "pot-line-1", 5000),
                kwh("03-01 12:00", "pot-line-1", 8000, reset="replacement"),
                kwh("03-01 23:50", "pot-line-1", 14000),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 23:50", 101.5),
            ],
            # the new meter starts above the old one: 5000 -> 8000 is not 3000 kWh;
            # (5000-1000) + nothing + (14000-8000) + (7500-500) = 17000 kWh
            17000,
            1.5,
            17000 / 1.5,
            1,
            id="meter-replaced-by-a-higher-one",
        ),
        pytest.param(
            [
                kwh("03-01 23:50", "pot-line-1", 14000),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 06:00", 100.5),
                cast("03-01 12:00", 0.25, reset="rollover"),
                cast("03-01 23:50", 1.25),
            ],
            # 13000 + 7000 = 20000 kWh; 0.5 + nothing (wrapped) + 1.0 = 1.5 t
            20000,
            1.5,
            20000 / 1.5,
            1,
            id="rollover",
        ),
        pytest.param(
            [
                kwh("03-01 12:00", "pot-line-2", 400),
                kwh("03-01 23:50", "pot-line-2", 7400),
                kwh("03-01 23:50", "pot-line-1", 14000),
                cast("03-01 23:50", 102),
            ],
            # pot-line-2 went back 500 -> 400 without a flag: that step counts
            # nothing; (7400-400) + (14000-1000) = 20000 kWh; 2 t
            20000,
            2,
            10000,
            1,
            id="backwards-unflagged",
        ),
        pytest.param(
            [
                kwh("03-01 12:00", "pot-line-1", 999_999, quality="D"),
                kwh("03-01 23:50", "pot-line-1", 14000),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 23:50", 102),
            ],
            # the faulty (D) reading is skipped: 13000 + 7000 = 20000 kWh; 2 t
            20000,
            2,
            10000,
            0,
            id="invalid-flag-skipped",
        ),
        pytest.param(
            [
                kwh("03-01 12:00", "pot-line-1", 10, quality="M", reset="replacement"),
                kwh("03-01 23:50", "pot-line-1", 6010),
                kwh("03-01 23:50", "pot-line-2", 7500),
                cast("03-01 23:50", 102),
            ],
            # swapped during maintenance (M): the next valid step is unknown;
            # 0 + 7000 = 7000 kWh; 2 t
            7000,
            2,
            3500,
            1,
            id="reset-on-invalid-reading",
        ),
    ],
)
def test_day_ratio(
    day: list[Obs], num: float, den: float, ratio: float, discontinuities: int
) -> None:
    (event,) = run(Engine(ratio_pack()), BASE + day + CLOSE)
    assert (event.kind, event.at_ms, event.window) == (
        EventKind.OPENED,
        DAY1.end_ms,
        DAY1,
    )
    assert event.scope.key == "p1/al-1/*/*"
    assert event.value == pytest.approx(ratio)
    ev = event.evidence
    assert ev["numerator"]["amount"] == pytest.approx(num)
    assert ev["denominator"]["amount"] == pytest.approx(den)
    assert ev["discontinuities"] == discontinuities
    assert (ev["unit"], ev["limit"]) == ("kWh/t", 1000)


def test_a_step_across_midnight_counts_for_the_later_day() -> None:
    stream = [
        kwh("03-01 12:00", "pot-line-1", 1000),
        cast("03-01 12:00", 10),
        cast("03-01 23:50", 11),
        kwh("03-02 00:10", "pot-line-1", 2000),  # 1000 kWh: all for 03-02
        cast("03-02 00:10", 11),
        cast("03-02 12:00", 12),  # 03-02: 1 t
        kwh("03-03 00:10", "pot-line-1", 2000),  # closes 03-02
    ]
    events = run(Engine(ratio_pack(limit=999)), stream)
    assert [(e.kind, e.window, e.value) for e in events] == [
        (EventKind.INSUFFICIENT_DATA, DAY1, None),  # no numerator step on 03-01
        (EventKind.OPENED, DAY2, 1000.0),  # 1000 kWh / 1 t > 999
    ]
    assert events[0].evidence["reason"] == "no numerator readings in the period"


def test_the_gb21346_levels_of_the_shipped_pack_judge_a_month() -> None:
    pack = load_pack(PACKS / "aluminium-gb21346-2013.yaml")
    stream = [
        kwh("03-01 00:10", "pot-line-1", 0),
        cast("03-01 00:10", 0),
        kwh("03-31 23:50", "pot-line-1", 1_300_000),
        cast("03-31 23:50", 100),
        # watermark_delay 2 min: March closes when event time reaches 04-01 00:02
        kwh("04-01 00:02", "pot-line-1", 1_300_001),
    ]
    monthly = [e for e in run(Engine(pack), stream) if not e.rule_id.endswith("-daily")]
    events = monthly
    # 1 300 000 kWh / 100 t = 13 000 kWh/t: within the limit value 13 700, above
    # the access value 12 750 and the advanced value 12 650.
    # The comprehensive rule's meters (ac-main-*) did not report: a configuration
    # warning.
    assert [(e.rule_id, e.kind, e.severity, e.value) for e in events] == [
        ("al-liquid-ac-access", EventKind.OPENED, "major", 13000.0),
        ("al-liquid-ac-advanced", EventKind.OPENED, "info", 13000.0),
        (
            "al-liquid-comprehensive-ac-limit",
            EventKind.INSUFFICIENT_DATA,
            "critical",
            None,
        ),
    ]
    # March local: [02-29T16:00Z, 03-31T16:00Z)
    assert events[0].window == Window(1_709_222_400_000, 1_711_900_800_000)
    assert events[2].evidence["config_warning"] is True


def test_the_shipped_aluminium_pack_judges_each_level_per_day_and_month() -> None:
    pack = load_pack(PACKS / "aluminium-gb21346-2013.yaml")
    periods: dict[str, set[str]] = {}
    for rule in pack.rules:
        assert isinstance(rule, RatioSpec)
        periods.setdefault(rule.id.removesuffix("-daily"), set()).add(rule.period)
    assert len(periods) == 4
    assert all(p == {"day", "month"} for p in periods.values()), periods


@pytest.mark.parametrize(
    ("day", "reason"),
    [
        ([kwh("03-01 23:50", "pot-line-1", 9000)], "no denominator readings"),
        ([cast("03-01 23:50", 102)], "no numerator readings"),
        (
            [kwh("03-01 23:50", "pot-line-1", 9000), cast("03-01 23:50", 100)],
            "the denominator is 0",
        ),
    ],
)
def test_insufficient_data_is_not_ok(day: list[Obs], reason: str) -> None:
    first = [kwh("03-01 00:10", "pot-line-1", 1000), cast("03-01 00:10", 100)]
    (event,) = run(Engine(ratio_pack()), first + day + CLOSE)
    assert (event.kind, event.value, event.window) == (
        EventKind.INSUFFICIENT_DATA,
        None,
        DAY1,
    )
    assert event.evidence["reason"] == f"{reason} in the period"


def test_a_day_without_readings_is_insufficient() -> None:
    stream = [
        *BASE,
        kwh("03-01 23:50", "pot-line-1", 3000),
        cast("03-01 23:50", 101),
        # Another enterprise moves event time to 03-03: 03-01 and 03-02 close.
        Obs(at("03-03 00:10"), "p1", "other", "pot-line-1", "active_energy", 1),
    ]
    events = run(Engine(ratio_pack()), stream)
    assert [(e.kind, e.window, e.value) for e in events] == [
        (EventKind.OPENED, DAY1, 2000.0),  # (3000-1000) kWh / 1 t
        (EventKind.INSUFFICIENT_DATA, DAY2, None),
    ]


def test_a_late_reading_revises_a_closed_day() -> None:
    engine = Engine(ratio_pack(limit=12000))
    stream = [
        kwh("03-01 00:10", "pot-line-1", 1000),
        cast("03-01 00:10", 100),
        kwh("03-01 23:50", "pot-line-1", 14000),
        cast("03-01 12:00", 101),
        kwh("03-02 00:10", "pot-line-1", 14100),  # closes 03-01: 13000 / 1 t
        cast("03-01 23:50", 101.25),  # late, within 1 h: 13000 / 1.25 t
        kwh("03-02 01:30", "pot-line-1", 14200),  # 03-01 + 1 h has passed
        cast("03-01 23:55", 101.5),  # too late: dropped
    ]
    events = run(engine, stream)
    assert [(e.kind, e.at_ms, e.value, e.evidence["verdict"]) for e in events] == [
        (EventKind.OPENED, DAY1.end_ms, 13000.0, "breach"),
        (EventKind.REVISED, DAY1.end_ms, 10400.0, "ok"),
    ]
    opened, revised = events
    assert revised.alert_id == opened.alert_id
    assert revised.evidence["previous"] == {"verdict": "breach", "value": 13000.0}
    assert revised.evidence["late_reading"]["value"] == 101.25
    assert engine.stats.dropped_late == 1


def test_hysteresis_across_days() -> None:
    stream = [kwh("03-01 00:10", "pot-line-1", 0), cast("03-01 00:10", 0)]
    # per day: 1 t and 13 500, 12 500, 11 000 kWh (limit 13 000, clear 12 000)
    for day, energy in ((1, 13500), (2, 26000), (3, 37000)):
        stream += [
            kwh(f"03-0{day} 23:50", "pot-line-1", energy),
            cast(f"03-0{day} 23:50", day),
        ]
    stream.append(kwh("03-04 00:10", "pot-line-1", 37000))
    events = run(Engine(ratio_pack(limit=13000, clear=12000)), stream)
    # Each day's steps are its 23:50 readings less the day before's.
    assert [(e.kind, e.value) for e in events] == [
        (EventKind.OPENED, 13500.0),
        (EventKind.RESOLVED, 11000.0),  # 12 500 > clear: still in breach on 03-02
    ]


@pytest.mark.parametrize(
    ("unit", "value", "expected_unit"),
    [
        (None, 1229.0, "kgce/t"),  # 10 000 kWh * 0.1229 kgce/kWh / 1 t
        ("kgce/t", 1229.0, "kgce/t"),
        ("tce/t", 1.229, "tce/t"),  # 1229 kgce = 1.229 tce
    ],
)
def test_numerator_through_a_coefficient(
    unit: str | None, value: float, expected_unit: str
) -> None:
    numerator = {
        "metric": "active_energy",
        "device": "pot-line-*",
        "coefficient": {"set": "tce-gbt2589", "key": "electricity_kwh"},
    }
    fields: dict[str, Any] = {"numerator": numerator, "limit": 1}
    if unit is not None:
        fields["unit"] = unit
    stream = [
        kwh("03-01 00:10", "pot-line-1", 1000),
        cast("03-01 00:10", 100),
        kwh("03-01 23:50", "pot-line-1", 11000),
        cast("03-01 23:50", 101),
        *CLOSE,
    ]
    (event,) = run(Engine(ratio_pack(**fields)), stream)
    assert event.value == pytest.approx(value)
    assert event.evidence["unit"] == expected_unit
    assert event.evidence["numerator"]["coefficient"] == {
        "set": "tce-gbt2589",
        "version": "GB/T 2589 test",
        "key": "electricity_kwh",
        "value": 0.1229,
        "unit": "kgce/kWh",
    }


def test_a_unit_the_catalogue_converts_to() -> None:
    stream = [*BASE, kwh("03-01 23:50", "pot-line-1", 14000)]
    stream += [cast("03-01 23:50", 102), *CLOSE]
    (event,) = run(Engine(ratio_pack(unit="MWh/kg", limit=0.001)), stream)
    # 13 000 kWh = 13 MWh; 2 t = 2000 kg: 0.0065 MWh/kg (6 500 kWh/t)
    assert event.value == pytest.approx(0.0065)
    assert event.evidence["unit"] == "MWh/kg"


COEF = {"set": "tce-gbt2589", "key": "electricity_kwh"}
NUM = {"metric": "active_energy"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"numerator": {"metric": "active_power"}},
            "rules[0].numerator.metric: active_power is a gauge;"
            " consumption needs a counter",
        ),
        (
            {"denominator": {"metric": "production_rate"}},
            "rules[0].denominator.metric: production_rate is a gauge;"
            " consumption needs a counter",
        ),
        (
            {"numerator": {"metric": "active_enrgy"}},
            "rules[0].numerator.metric: unknown metric 'active_enrgy'"
            " (did you mean 'active_energy'?)",
        ),
        (
            {"period": "year"},
            "rules[0].period: unknown value 'year' (expected one of 'day' or 'month')",
        ),
        (
            {"unit": "kgce/t"},  # kWh becomes kgce only through a coefficient
            "rules[0].unit: unit 'kgce/t': active_energy is in 'kWh',"
            " which does not convert to 'kgce'",
        ),
        (
            {"unit": "kWh/m3"},
            "rules[0].unit: unit 'kWh/m3': production_mass is in 't',"
            " which does not convert to 'm3'",
        ),
        ({"unit": "kWh"}, "rules[0].unit: unit 'kWh' is not '<unit>/<unit>'"),
        (
            {"numerator": {**NUM, "coefficient": {**COEF, "set": "tce-x"}}},
            "rules[0].numerator.coefficient.set: unknown coefficient set 'tce-x'"
            " (pack has: tce-gbt2589)",
        ),
        (
            {"numerator": {**NUM, "coefficient": {**COEF, "key": "coal"}}},
            "rules[0].numerator.coefficient.key: coefficient set 'tce-gbt2589'"
            " has no coefficient 'coal' (it has: electricity_kwh)",
        ),
        (
            {"numerator": {**NUM, "coefficient": COEF}, "unit": "kgCO2/t"},
            "rules[0].numerator.coefficient.set: coefficient set 'tce-gbt2589'"
            " yields 'kgce', the rule needs 'kgCO2'",
        ),
        (
            {"numerator": {**NUM, "coefficient": {**COEF, "per": "m3"}}},
            "rules[0].numerator.coefficient.per: a coefficient per 'm3' does not"
            " apply to active_energy, which is in 'kWh'",
        ),
        (
            {"numerator": {**NUM, "devices": "pot-*"}},
            "rules[0].numerator.devices: unknown field (a typo?)",
        ),
    ],
)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        ratio_pack(**fields)
    assert str(err.value) == f"<pack>: {message}"


def test_unknown_coefficient_set_is_reported_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "al.yaml"
    path.write_text(
        "pack: al\n"
        'version: "1"\n'
        "coefficients:\n"
        '  tce-gbt2589: {version: "1", unit: kgce, electricity_kwh: 0.1229}\n'
        "rules:\n"
        "  - id: al-ac\n"
        "    kind: ratio\n"
        "    period: month\n"
        "    numerator:\n"
        "      metric: active_energy\n"
        "      coefficient: {set: tce-2589, key: electricity_kwh}\n"
        "    denominator: {metric: production_mass}\n"
        "    limit: 1700\n"
    )
    with pytest.raises(ConfigError) as err:
        load_pack(path)
    assert str(err.value) == (
        "al.yaml:11: rules[0].numerator.coefficient.set: unknown coefficient set"
        " 'tce-2589' (pack has: tce-gbt2589)"
    )


# Three days of an enterprise: a replacement, a rollover, a late revision, a reading
# beyond the lateness, hysteresis, an insufficient day — split anywhere.
SPLIT_STREAM = [
    *BASE,
    kwh("03-01 08:00", "pot-line-1", 5000),
    kwh("03-01 12:00", "pot-line-1", 20, reset="replacement"),
    cast("03-01 12:00", 101),
    kwh("03-01 23:50", "pot-line-1", 6020),
    kwh("03-01 23:50", "pot-line-2", 7500),
    kwh("03-02 00:10", "pot-line-1", 6100),
    cast("03-01 23:50", 101.5),
    cast("03-02 00:20", 0.5, reset="rollover"),
    kwh("03-02 01:30", "pot-line-1", 6200),
    cast("03-01 23:55", 101.75),
    cast("03-02 12:00", 1.5),
    kwh("03-02 23:00", "pot-line-1", 17520),
    kwh("03-03 00:10", "pot-line-1", 17600),
    kwh("03-04 00:10", "pot-line-1", 17700),
]


@pytest.mark.parametrize("split", range(len(SPLIT_STREAM) + 1))
def test_a_restored_snapshot_continues_exactly(split: int) -> None:
    pack = ratio_pack(limit=12000, clear=11000)
    whole = run(Engine(pack), SPLIT_STREAM)
    first = Engine(pack)
    head = run(first, SPLIT_STREAM[:split])
    state = json.loads(json.dumps(first.snapshot()))
    restored = Engine.restore(pack, state)
    tail = run(restored, SPLIT_STREAM[split:])
    assert [e.to_line() for e in head + tail] == [e.to_line() for e in whole]
    if split < len(SPLIT_STREAM):
        assert restored.stats.dropped_late == 1  # the 03-01 23:55 cast reading


def test_the_split_stream_is_not_trivial() -> None:
    events = run(Engine(ratio_pack(limit=12000, clear=11000)), SPLIT_STREAM)
    # 03-01 at close: (5000-1000) + (6020-20) + (7500-500) = 17000 kWh / 1 t
    # revised by the 23:50 cast reading: 17000 / 1.5 t = 11 333.3 (ok); the
    # revision leaves the breach state alone.
    # 03-02: 17520 - 6020 = 11500 kWh; the cast meter rolled over (nothing), then
    # 1.5 - 0.5 = 1 t: 11 500 > clear 11 000, still in breach: no event.
    # 03-03: 17600 - 17520 = 80 kWh and no cast step: insufficient.
    assert [(e.kind, e.value) for e in events] == [
        (EventKind.OPENED, 17000.0),
        (EventKind.REVISED, pytest.approx(17000 / 1.5)),
        (EventKind.INSUFFICIENT_DATA, None),
    ]


def test_unmapped_meters_give_one_configuration_warning_not_a_verdict_a_day() -> None:
    # The plant's cast meter is "ingot-1", which the rule's "*cast*" does not
    # match. Five days of pot-line readings: one warning (the first day), not five
    # "insufficient data" verdicts.
    days = [f"03-0{d} 00:10" for d in range(1, 7)]
    stream = [kwh(day, "pot-line-1", 1000 * i) for i, day in enumerate(days)]
    stream += [Obs(at(d), "p1", "al-1", "ingot-1", "production_mass", 10.0 * i)
               for i, d in enumerate(days)]  # fmt: skip
    stream.sort(key=lambda o: o.ts_ms)
    events = run(Engine(ratio_pack()), stream)
    assert [(e.kind, e.window) for e in events] == [(EventKind.INSUFFICIENT_DATA, DAY1)]
    evidence = events[0].evidence
    assert evidence["config_warning"] is True
    assert "denominator (production_mass, device '*cast*')" in evidence["reason"]
    # once the meter is mapped (it reports under a matching name), days are judged
    engine = Engine(ratio_pack())
    run(engine, stream)
    later = [cast("03-07 00:10", 0), kwh("03-07 00:10", "pot-line-1", 6000)]
    later += [cast("03-07 12:00", 1), kwh("03-07 12:00", "pot-line-1", 7000)]
    later += [kwh("03-08 00:10", "pot-line-1", 8000)]
    judged = run(engine, later)
    # 03-06 (the meter was not mapped yet) is insufficient, reported; 03-07 is
    # judged: (6000 - 5000 + 7000 - 6000) kWh / 1 t = 2000 > 1000
    assert [(e.kind, e.value) for e in judged] == [
        (EventKind.INSUFFICIENT_DATA, None),
        (EventKind.OPENED, 2000.0),
    ]


def test_a_missing_period_of_mapped_meters_is_still_reported() -> None:
    # Both sides have reported before: a day without casting is insufficient data,
    # reported, not silenced as a configuration problem.
    stream = [*BASE, cast("03-01 12:00", 110), kwh("03-01 12:00", "pot-line-1", 2000)]
    stream += [kwh("03-02 12:00", "pot-line-1", 3000), *CLOSE]
    stream += [kwh("03-03 00:10", "pot-line-1", 100_000)]
    kinds = [e.kind for e in run(Engine(ratio_pack()), stream)]
    assert kinds.count(EventKind.INSUFFICIENT_DATA) == 1
