"""``kind: window`` end to end: pack (parse_pack) → Engine → alert events.

Every expected number is computed by hand in a comment beside it. Times are UTC;
the watermark delay is 0 unless a test says otherwise, so a reading at a window's
end closes it. A ``tick`` is a reading of a metric no rule reads, from another
device: it only moves the watermark.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from rules.engine import Engine
from rules.model import AlertEvent, Obs
from rules.pack import Pack, load_pack, parse_pack
from smartpark.errors import ConfigError

MIN = 60_000
H = 3_600_000
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1000  # a Friday, 00:00 UTC
PACKS = Path(__file__).parents[2] / "rules" / "packs"


def so2_rule(**fields: Any) -> dict[str, Any]:
    rule = {"id": "so2-hourly", "kind": "window", "metric": "so2", "window": "1h"}
    return {**rule, "limit": 35, **fields}


def make_pack(*rules: dict[str, Any], lateness: str | int = "1h") -> Pack:
    data = {"pack": "test", "version": "1", "allowed_lateness": lateness}
    return parse_pack({**data, "watermark_delay": 0, "rules": list(rules)})


def obs(
    ts: int, value: float, metric: str = "so2", q: str = "N", dev: str = "s1"
) -> Obs:
    return Obs(ts, "park", "ent", dev, metric, value, q)


def tick(ts: int) -> Obs:
    return Obs(ts, "park", "ent", "clock", "flue_temperature", 0.0)


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [event for o in stream for event in engine.feed(o)]


def brief(events: list[AlertEvent]) -> list[tuple[str, int, float | None]]:
    return [(e.kind.value, e.at_ms, e.value) for e in events]


# (so2 readings, o2 readings at the same times (None: no O2 sent, or (value, flag)),
#  expected events, expected counts); readings at 00:10 and 00:20, limit 35 at 6 % O2
O2_CASES = [
    # 30 * (21-6)/(21-9) = 30 * 15/12 = 37.5 both; mean 37.5 > 35
    ([30, 30], [9, 9], [("opened", 37.5)], {"valid": 2}),
    # 37.5 and 20 * 15/15 = 20; mean (37.5+20)/2 = 28.75 <= 35
    ([30, 20], [9, 6], [], {"valid": 2}),
    # 28 * 15/10 = 42 both
    ([28, 28], [11, 11], [("opened", 42.0)], {"valid": 2}),
    # 40 * 15/18 = 33.33... (O2 below the reference lowers the value)
    ([40], [3], [], {"valid": 1}),
    # O2 21 % makes 100 invalid; mean of 37.5 alone
    ([30, 100], [9, 21], [("opened", 37.5)], {"valid": 1, "o2_out_of_range": 1}),
    # no O2 partner for 100: invalid
    ([30, 100], [9, None], [("opened", 37.5)], {"valid": 1, "no_o2": 1}),
    # an O2 flagged D (fault) does not correct anything: 100 invalid
    ([30, 100], [9, (5, "D")], [("opened", 37.5)], {"valid": 1, "o2_excluded_flag": 1}),
    # the O2 partner must be at the same time: 100's O2 is a minute off
    ([30, 100], [9, "off"], [("opened", 37.5)], {"valid": 1, "no_o2": 1}),
]


@pytest.mark.parametrize(("so2", "o2", "expected", "counts"), O2_CASES)
def test_o2_corrected_hourly_mean(
    so2: list[float], o2: list[Any], expected: list[Any], counts: dict[str, int]
) -> None:
    engine = Engine(make_pack(so2_rule(o2_correction={"reference": 6})))
    stream = []
    for i, (value, partner) in enumerate(zip(so2, o2, strict=True)):
        ts = T0 + (i + 1) * 10 * MIN
        if isinstance(partner, tuple):
            stream.append(obs(ts, partner[0], "o2", q=partner[1]))
        elif partner == "off":
            stream.append(obs(ts + MIN, 9, "o2"))
        elif partner is not None:
            stream.append(obs(ts, partner, "o2"))
        stream.append(obs(ts, value))  # O2 first or second: the pairing is by time
    events = run(engine, [*stream, tick(T0 + H)])
    assert [(e.kind.value, e.value) for e in events] == expected
    for e in events:
        assert e.window is not None
        assert (e.at_ms, e.window.start_ms, e.window.end_ms) == (T0 + H, T0, T0 + H)
        assert e.evidence["counts"].items() >= counts.items()
        assert e.evidence["o2_correction"] == {"reference": 6.0, "o2_metric": "o2"}


# hour 2's six readings (every 10 min, all 10 mg/m3) and the events hours 1-3 give;
# 10min interval * 0.5 of 6 expected = 3 valid readings needed. Hour 1: six valid 40
# (mean 40 > 35 opens), hour 3: three valid 10 (mean 10 resolves, if still open).
@pytest.mark.parametrize(
    ("hour2_flags", "expected"),
    [
        # N C D C D N: 2 valid < 3 -> insufficient, the alert stays open until hour 3
        ("NCDCDN", ["opened@1", "insufficient_data@2", "resolved@3"]),
        # N C N C D N: 3 valid, mean 10 -> resolved at hour 2; hour 3 adds nothing
        ("NCNCDN", ["opened@1", "resolved@2"]),
        # all C (calibration): 0 valid
        ("CCCCCC", ["opened@1", "insufficient_data@2", "resolved@3"]),
    ],
)
def test_insufficient_valid_data_is_not_ok(
    hour2_flags: str, expected: list[str]
) -> None:
    rule = so2_rule(expected_interval="10min", min_valid_fraction=0.5)
    engine = Engine(make_pack(rule))
    stream = [obs(T0 + i * 10 * MIN, 40) for i in range(6)]
    stream += [obs(T0 + H + i * 10 * MIN, 10, q=f) for i, f in enumerate(hour2_flags)]
    stream += [obs(T0 + 2 * H + i * 10 * MIN, 10, q="NNNCCC"[i]) for i in range(6)]
    events = run(engine, [*stream, tick(T0 + 3 * H)])
    assert [f"{e.kind.value}@{(e.at_ms - T0) // H}" for e in events] == expected
    insufficient = [e for e in events if e.kind.value == "insufficient_data"]
    for e in insufficient:
        assert e.value is None
        assert e.evidence["required_valid"] == 3
        assert e.evidence["counts"]["valid"] == hour2_flags.count("N")
        assert e.evidence["counts"]["excluded_flag"] == 6 - hour2_flags.count("N")


# Hour 00:00-01:00 has 30 (00:10) and 34 (00:20): mean 32, ok, no event. At 01:10 a
# late reading at 00:50 arrives (lateness 30 min: the window takes readings until
# the watermark reaches 01:30).
@pytest.mark.parametrize(
    ("late", "expected"),
    [
        # (30+34+44)/3 = 108/3 = 36 > 35: the verdict changes ok -> breach
        (44, [("revised", "breach", 36.0, "ok", 32.0)]),
        # (30+34+35)/3 = 99/3 = 33: still ok, but the value changed
        (35, [("revised", "ok", 33.0, "ok", 32.0)]),
        # (30+34+32)/3 = 96/3 = 32: nothing changed, nothing to say
        (32, []),
    ],
)
def test_late_reading_revises_closed_hour(late: float, expected: list[Any]) -> None:
    engine = Engine(make_pack(so2_rule(), lateness="30min"))
    head = [obs(T0 + 10 * MIN, 30), obs(T0 + 20 * MIN, 34), tick(T0 + H)]
    assert run(engine, head) == []
    events = run(engine, [tick(T0 + H + 10 * MIN), obs(T0 + 50 * MIN, late)])
    got = [
        (
            e.kind.value,
            e.evidence["verdict"],
            e.value,
            e.evidence["previous"]["verdict"],
            e.evidence["previous"]["value"],
        )
        for e in events
    ]
    assert got == expected
    assert all(e.at_ms == T0 + H and e.evidence["counts"]["valid"] == 3 for e in events)
    # a revision does not open an alert: the next breaching hour still opens one
    later = run(engine, [obs(T0 + H + 20 * MIN, 50), tick(T0 + 2 * H)])
    assert brief(later) == [("opened", T0 + 2 * H, 50.0)]


# The 00:00-01:00 window with lateness 30 min takes late readings while the
# watermark is before 01:30; from 01:30 on it is forgotten and they are dropped.
@pytest.mark.parametrize(
    ("watermark", "kinds", "dropped"),
    [
        (T0 + H + 30 * MIN - 1, ["revised"], 0),
        (T0 + H + 30 * MIN, [], 1),
        (T0 + 5 * H, [], 1),
    ],
)
def test_reading_beyond_allowed_lateness_is_dropped_and_counted(
    watermark: int, kinds: list[str], dropped: int
) -> None:
    engine = Engine(make_pack(so2_rule(), lateness="30min"))
    run(engine, [obs(T0 + 10 * MIN, 30), tick(watermark)])
    # 30 and 50: mean 40 > 35 (a revision of an ok hour)
    events = run(engine, [obs(T0 + 40 * MIN, 50)])
    assert [e.kind.value for e in events] == kinds
    assert engine.stats.dropped_late == dropped


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, s: int = 0
) -> int:
    return (
        int(datetime(year, month, day, hour, minute, s, tzinfo=UTC).timestamp()) * 1000
    )


# Readings of 50 at 2024-03-01 15:59:59Z and 20 at 16:00:00Z; daily max, limit 35.
# In Asia/Shanghai (UTC+8) they fall on two local days, Mar 1 and Mar 2, whose
# windows run 16:00Z-16:00Z; in UTC both fall on Mar 1 (00:00Z-00:00Z).
@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        (
            "Asia/Shanghai",
            [
                ("opened", utc(2024, 2, 29, 16), utc(2024, 3, 1, 16), 50.0),
                ("resolved", utc(2024, 3, 1, 16), utc(2024, 3, 2, 16), 20.0),
            ],
        ),
        ("UTC", [("opened", utc(2024, 3, 1), utc(2024, 3, 2), 50.0)]),
    ],
)
def test_daily_window_starts_at_local_midnight(tz: str, expected: list[Any]) -> None:
    rule = so2_rule(window="1d", aggregate="max")
    pack = parse_pack(
        {"pack": "t", "version": "1", "timezone": tz, "watermark_delay": 0}
        | {"rules": [rule]}
    )
    engine = Engine(pack)
    stream = [obs(utc(2024, 3, 1, 15, 59, 59), 50), obs(utc(2024, 3, 1, 16), 20)]
    events = run(engine, [*stream, tick(utc(2024, 3, 3))])
    got = [
        (e.kind.value, e.window.start_ms, e.window.end_ms, e.value)
        for e in events
        if e.window is not None
    ]
    assert got == expected
    assert all(e.window is not None and e.at_ms == e.window.end_ms for e in events)


# One reading per hour, so each hourly mean is that reading; limit 35.
@pytest.mark.parametrize(
    ("clear", "means", "expected"),
    [
        # clear 30: 33 and 31 stay in breach, 29 resolves, 34 stays ok, 36 reopens
        (30, [36, 33, 31, 29, 34, 36], ["opened@1", "resolved@4", "opened@6"]),
        # no clear: every crossing of 35 flips the state
        (None, [36, 33, 31, 29, 34, 36], ["opened@1", "resolved@2", "opened@6"]),
        # clear 30, hovering around the limit: one alert, no flapping
        (30, [36, 34, 36, 34, 36], ["opened@1"]),
    ],
)
def test_hysteresis_across_hours(
    clear: float | None, means: list[float], expected: list[str]
) -> None:
    engine = Engine(make_pack(so2_rule(clear=clear)))
    stream = [obs(T0 + i * H + 30 * MIN, m) for i, m in enumerate(means)]
    events = run(engine, [*stream, tick(T0 + len(means) * H)])
    assert [f"{e.kind.value}@{(e.at_ms - T0) // H}" for e in events] == expected


# readings 30 (00:10), 40 (00:20), 20 (00:30); limit 15, so every aggregate breaches
@pytest.mark.parametrize(
    ("aggregate", "value"),
    [("mean", 30.0), ("min", 20.0), ("max", 40.0), ("sum", 90.0)],
)
def test_aggregates(aggregate: str, value: float) -> None:
    engine = Engine(make_pack(so2_rule(aggregate=aggregate, limit=15)))
    stream = [obs(T0 + 10 * MIN, 30), obs(T0 + 20 * MIN, 40), obs(T0 + 30 * MIN, 20)]
    events = run(engine, [*stream, tick(T0 + H)])
    assert brief(events) == [("opened", T0 + H, value)]


# A reading repeated at the same time counts once, the first one wins: 40 (00:10),
# its repeat, and 34 (00:20).
@pytest.mark.parametrize(
    ("first", "repeat", "expected"),
    [
        ((40, "N"), (10, "N"), [37.0]),  # (40+34)/2 = 37; keeping 10 would give 22
        ((10, "N"), (40, "N"), []),  # (10+34)/2 = 22
        ((40, "C"), (40, "N"), []),  # the flagged first wins: 34 alone
    ],
)
def test_duplicates_count_once(
    first: tuple[float, str], repeat: tuple[float, str], expected: list[float]
) -> None:
    engine = Engine(make_pack(so2_rule()))
    stream = [obs(T0 + 10 * MIN, first[0], q=first[1])]
    stream += [obs(T0 + 10 * MIN, repeat[0], q=repeat[1]), obs(T0 + 20 * MIN, 34)]
    events = run(engine, [*stream, tick(T0 + H)])
    assert [e.value for e in events] == expected
    assert all(e.evidence["counts"]["duplicates"] == 1 for e in events)


# Readings all 40 (limit 35), the first `valid` flagged N and the rest C; the window
# needs ceil(fraction * window / interval) valid ones. Days start at local midnight
# (Asia/Shanghai), 16:00 UTC.
@pytest.mark.parametrize(
    ("window", "interval", "fraction", "valid", "expected"),
    [
        ("1h", "10min", 0.75, 4, "insufficient_data"),  # 0.75 * 6 = 4.5 -> 5 needed
        ("1h", "10min", 0.75, 5, "opened"),
        ("1h", "10min", 1, 5, "insufficient_data"),  # all 6 needed
        ("1h", "1min", 0.95, 57, "opened"),  # 0.95 * 60 = 57
        ("1h", "1min", 0.95, 56, "insufficient_data"),
        ("1d", "1min", 0.55, 792, "opened"),  # 0.55 * 1440 = 792 exactly, not 793
        ("1d", "1min", 0.55, 791, "insufficient_data"),
    ],
)
def test_required_valid_readings(
    window: str, interval: str, fraction: float, valid: int, expected: str
) -> None:
    rule = so2_rule(window=window, expected_interval=interval)
    engine = Engine(make_pack({**rule, "min_valid_fraction": fraction}))
    size, step = (H, 10 * MIN) if window == "1h" else (24 * H, MIN)
    step = MIN if interval == "1min" else step
    start = T0 if window == "1h" else T0 + 16 * H
    flags = ["N"] * valid + ["C"] * (size // step - valid)
    stream = [obs(start + i * step, 40, q=f) for i, f in enumerate(flags)]
    events = run(engine, [*stream, tick(start + size)])
    assert [e.kind.value for e in events] == [expected]


RULE_ERRORS = [
    (
        {"metric": "so2_corrected", "o2_correction": {"reference": 6}},
        "rules[0].o2_correction: so2_corrected is already corrected to the reference"
        " O2; never correct twice (drop o2_correction, or use the raw 'so2')",
    ),
    (
        {"metric": "temperature", "o2_correction": {"reference": 6}},
        "rules[0].o2_correction: an O2 correction applies to concentrations in mg/m3,"
        " not to temperature (degC)",
    ),
    (
        {"o2_correction": {"reference": 21}},
        "rules[0].o2_correction.reference: the reference O2 must be in [0, 21) %,"
        " got 21",
    ),
    (
        {"o2_correction": {"reference": -1}},
        "rules[0].o2_correction.reference: the reference O2 must be in [0, 21) %,"
        " got -1",
    ),
    (
        {"o2_correction": {"reference": 6, "o2_metric": "nox"}},
        "rules[0].o2_correction.o2_metric: 'nox' is not an O2 reading in %"
        " (its unit is mg/m3)",
    ),
    ({"metric": "so3"}, "rules[0].metric: unknown metric 'so3' (did you mean 'so2'?)"),
    (
        {"unit": "ug/m3"},
        "rules[0].unit: unit 'ug/m3' is not so2's unit 'mg/m3'"
        " (limits are in the catalogue unit)",
    ),
    ({"window": "0min"}, "rules[0].window: a duration must be positive, got '0min'"),
    (
        {"window": "7min"},
        "rules[0].window: a window must divide a day evenly (e.g. 15min, 1h, 1d),"
        " got '7min'",
    ),
    (
        {"window": "2d"},
        "rules[0].window: a window longer than 1d is not supported, got '2d'"
        " (monthly and yearly totals are the quota kind's)",
    ),
    ({"limit": None}, "rules[0].limit: missing required field"),
    (
        {"aggregate": "median"},
        "rules[0].aggregate: unknown value 'median'"
        " (expected one of 'mean', 'min', 'max' or 'sum')",
    ),
    (
        {"min_valid_fraction": 0, "expected_interval": "1min"},
        "rules[0].min_valid_fraction: min_valid_fraction must be in (0, 1], got 0",
    ),
    (
        {"min_valid_fraction": 1.5, "expected_interval": "1min"},
        "rules[0].min_valid_fraction: min_valid_fraction must be in (0, 1], got 1.5",
    ),
    (
        {"min_valid_fraction": 0.75},
        "rules[0].min_valid_fraction: min_valid_fraction needs expected_interval"
        " (how often readings come)",
    ),
    (
        {"expected_interval": "2h"},
        "rules[0].expected_interval: expected_interval 2h is longer than the window 1h",
    ),
    (
        {"expected_interval": "1min", "min_valid": 61},
        "rules[0].min_valid: min_valid 61 can never be met: a 1h window expects"
        " 60 readings",
    ),
    ({"clear": 40}, "rules[0].clear: clear must be at or below the limit 35"),
]


@pytest.mark.parametrize(("fields", "message"), RULE_ERRORS)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    rule = {k: v for k, v in so2_rule(**fields).items() if v is not None}
    with pytest.raises(ConfigError) as info:
        make_pack(rule)
    assert str(info.value) == f"<pack>: {message}"


def test_double_correction_refused_at_its_line(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(
        "pack: p\nversion: '1'\nrules:\n"
        "  - id: so2-corrected-hourly\n"
        "    kind: window\n"
        "    metric: so2_corrected\n"
        "    window: 1h\n"
        "    limit: 35\n"
        "    o2_correction: {reference: 6}\n"
    )
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert str(info.value).startswith("pack.yaml:9: rules[0].o2_correction: ")


# One packet with SO2 30 at O2 9 %, and the analyser's own corrected value 37.5
# (30 * 15/12): both rule sets of the shipped pack see 37.5 > 35.
def test_shipped_coal_pack_judges_raw_and_corrected_alike() -> None:
    pack = load_pack(PACKS / "coal-power-ultra-low.yaml")
    engine = Engine(pack)
    stream = []
    for minute in range(60):  # one packet a minute, as the pack expects
        ts = T0 + minute * MIN
        stream += [obs(ts, 30), obs(ts, 9, "o2"), obs(ts, 37.5, "so2_corrected")]
    # watermark_delay 2 min: the hour closes when event time reaches 01:02
    events = run(engine, [*stream, tick(T0 + H + 2 * MIN)])
    assert [(e.rule_id, e.kind.value, e.value) for e in events] == [
        ("so2-hourly", "opened", 37.5),
        ("so2-corrected-hourly", "opened", 37.5),
    ]


@pytest.mark.parametrize("name", ["coal-power-ultra-low", "steel-sinter-ultra-low"])
def test_shipped_packs_load(name: str) -> None:
    pack = load_pack(PACKS / f"{name}.yaml")
    limits = {r.id: r.limit for r in pack.rules if hasattr(r, "limit")}
    # particulate 10, SO2 35, NOx 50 for both sectors (domain reference, section 2)
    assert limits == {
        "so2-hourly": 35,
        "nox-hourly": 50,
        "particulate-hourly": 10,
        "so2-corrected-hourly": 35,
        "nox-corrected-hourly": 50,
        "particulate-corrected-hourly": 10,
    }


def split_stream() -> list[Obs]:
    """Two devices over four hours: O2 pairs, a breach, an insufficient hour, a
    duplicate, a revision, a dropped reading, hysteresis and a resolution."""
    s: list[Obs] = []
    for dev, so2 in (("s1", 30.0), ("s2", 20.0)):
        s += [obs(T0 + 5 * MIN, so2, dev=dev), obs(T0 + 5 * MIN, 9, "o2", dev=dev)]
        s += [obs(T0 + 5 * MIN, 99, dev=dev)]  # duplicate
    s += [obs(T0 + H + 5 * MIN, 10, q="C"), obs(T0 + H + 5 * MIN, 9, "o2")]
    s += [obs(T0 + H + 5 * MIN, 35, dev="s2"), obs(T0 + H + 5 * MIN, 6, "o2", dev="s2")]
    s += [tick(T0 + H + 10 * MIN), obs(T0 + 50 * MIN, 42, dev="s2")]  # late, revises
    s += [obs(T0 + 50 * MIN, 6, "o2", dev="s2"), tick(T0 + 2 * H + 5 * MIN)]
    s += [obs(T0 + 55 * MIN, 1), obs(T0 + 2 * H + 9 * MIN, 32)]  # dropped (lateness)
    s += [obs(T0 + 2 * H + 9 * MIN, 6, "o2")]  # 32: above clear 30, stays in breach
    s += [obs(T0 + 3 * H, 10), obs(T0 + 3 * H, 6, "o2"), tick(T0 + 5 * H)]  # resolves
    return s


def test_snapshot_restore_continues_exactly() -> None:
    pack = make_pack(so2_rule(o2_correction={"reference": 6}, clear=30), lateness="1h")
    stream = split_stream()
    whole = Engine(pack)
    expected = [e.to_line() for e in run(whole, stream)]
    kinds = {json.loads(line)["kind"] for line in expected}
    assert kinds == {"opened", "insufficient_data", "revised", "resolved"}
    resolved = [json.loads(x)["at_ms"] for x in expected if '"resolved"' in x]
    assert resolved == [T0 + 4 * H]  # hour 3 (10) resolves, not hour 2 (32)
    assert whole.stats.dropped_late == 1
    for cut in range(len(stream) + 1):
        first = Engine(pack)
        head = run(first, stream[:cut])
        state = json.loads(json.dumps(first.snapshot()))
        second = Engine.restore(pack, state)
        tail = run(second, stream[cut:])
        assert [e.to_line() for e in head + tail] == expected, f"cut at {cut}"
        if cut < len(stream):  # the engine sums its rules' counters on each feed
            assert second.stats.dropped_late == 1


def _hovering(hours: int, means: list[float], dev: str = "s1") -> list[Obs]:
    """One analyser-corrected SO2 reading a minute, each hour at ``means[h]``."""
    return [
        obs(T0 + h * H + m * MIN, means[h], "so2_corrected", dev=dev)
        for h in range(hours)
        for m in range(60)
    ]


def test_a_stack_hovering_at_its_limit_raises_one_alert_all_day() -> None:
    # 35.01, 34.99, 35.01 ... for 24 hours: one alert, open all day; it resolves in
    # the first hour clearly back (31.0 <= clear 31.5), not at the first 34.99.
    pack = load_pack(PACKS / "coal-power-ultra-low.yaml")
    means = [35.01 if h % 2 == 0 else 34.99 for h in range(24)] + [31.0]
    events = [
        e
        for e in run(Engine(pack), [*_hovering(25, means), tick(T0 + 26 * H)])
        if e.rule_id == "so2-corrected-hourly"
    ]
    assert [(e.kind.value, e.at_ms) for e in events] == [
        ("opened", T0 + H),
        ("resolved", T0 + 25 * H),
    ]
    assert events[1].evidence["clear"] == 31.5


@pytest.mark.parametrize("name", ["coal-power-ultra-low", "steel-sinter-ultra-low"])
def test_every_limit_rule_of_the_emission_packs_has_a_clear_band(name: str) -> None:
    pack = load_pack(PACKS / f"{name}.yaml")
    for rule in pack.rules:
        limit, clear = getattr(rule, "limit", None), getattr(rule, "clear", None)
        assert limit is not None, rule.id
        assert clear is not None, rule.id
        assert clear == pytest.approx(0.9 * limit), rule.id


def test_an_outlet_permit_sets_its_own_limit_and_band() -> None:
    # stack-2's permit: 30, clear 27. A mean of 32 breaches there, not on stack-1
    # (limit 35); 28 keeps stack-2's alert open (above 27), 26 resolves it.
    outlets = [{"device": "stack-2", "limit": 30, "clear": 27, "source": "permit X"}]
    pack = make_pack(
        so2_rule(
            metric="so2_corrected",
            clear=31.5,
            outlets=outlets,
            expected_interval="1min",
        )
    )
    stream = _hovering(3, [32, 28, 26], dev="stack-1")
    stream += _hovering(3, [32, 28, 26], dev="stack-2")
    stream.sort(key=lambda o: o.ts_ms)
    events = run(Engine(pack), [*stream, tick(T0 + 3 * H)])
    got = [(e.scope.device, e.kind.value, e.at_ms) for e in events]
    assert got == [("stack-2", "opened", T0 + H), ("stack-2", "resolved", T0 + 3 * H)]
    assert events[0].evidence["limit"] == 30
    assert events[0].evidence["limit_override"] == "permit X"


def test_an_outlet_band_on_the_wrong_side_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(
        "pack: p\nversion: '1'\nrules:\n"
        "  - id: so2\n"
        "    kind: window\n"
        "    metric: so2_corrected\n"
        "    window: 1h\n"
        "    limit: 35\n"
        "    outlets: [{device: stack-2, limit: 30, clear: 33}]\n"
    )
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert "outlets[0].clear: clear must be at or below the limit 30" in str(info.value)


def test_the_valid_hour_rule_is_a_versioned_pack_setting_recorded_in_alerts() -> None:
    pack = load_pack(PACKS / "coal-power-ultra-low.yaml")
    assert pack.validity is not None
    assert pack.validity.verified is False  # the HJ 75-2017 number is unconfirmed
    # 0.75 of 60 expected readings: 45 valid minutes make a valid hour
    for minutes, kind in ((44, "insufficient_data"), (45, "opened")):
        engine = Engine(pack)
        stream = [obs(T0 + m * MIN, 40.0, "so2_corrected") for m in range(minutes)]
        events = [
            e
            for e in run(engine, [*stream, tick(T0 + H + 2 * MIN)])
            if e.rule_id == "so2-corrected-hourly"
        ]
        assert [e.kind.value for e in events] == [kind]
        assert events[0].evidence["required_valid"] == 45
        assert events[0].evidence["validity"] == {
            "version": "placeholder-1",
            "source": pack.validity.source,
            "verified": False,
        }


def test_a_pack_validity_needs_the_rules_expected_interval() -> None:
    with pytest.raises(ConfigError, match="expected_interval"):
        parse_pack(
            {"pack": "p", "version": "1",
             "validity": {"version": "1", "source": "s", "valid_hour_fraction": 0.75},
             "rules": [so2_rule()]}
        )  # fmt: skip


def test_a_stack_whose_o2_is_not_mapped_gets_one_configuration_warning() -> None:
    # SO2 every minute for 4 hours, no O2 at all: one warning, not 4 verdicts.
    pack = make_pack(so2_rule(o2_correction={"reference": 6}))
    stream = [obs(T0 + m * MIN, 30.0) for m in range(4 * 60)]
    events = run(Engine(pack), [*stream, tick(T0 + 4 * H)])
    assert [e.kind.value for e in events] == ["insufficient_data"]
    assert events[0].evidence["config_warning"] is True
    assert "no o2 reading has ever arrived" in events[0].evidence["reason"]
    # once O2 arrives, hours are judged again: 30 at 9 % O2 is 37.5 > 35
    engine = Engine(pack)
    run(engine, [*stream, tick(T0 + 4 * H)])
    later = [
        o
        for m in range(60)
        for o in (obs(T0 + 4 * H + m * MIN, 30.0), obs(T0 + 4 * H + m * MIN, 9, "o2"))
    ]
    judged = run(engine, [*later, tick(T0 + 5 * H)])
    assert [(e.kind.value, e.value) for e in judged] == [("opened", 37.5)]


def test_o2_that_goes_missing_after_it_was_seen_is_still_reported_each_hour() -> None:
    pack = make_pack(so2_rule(o2_correction={"reference": 6}))
    first = [
        o
        for m in range(60)
        for o in (obs(T0 + m * MIN, 20.0), obs(T0 + m * MIN, 9, "o2"))
    ]
    rest = [obs(T0 + H + m * MIN, 30.0) for m in range(2 * 60)]
    events = run(Engine(pack), [*first, *rest, tick(T0 + 3 * H)])
    kinds = [e.kind.value for e in events]
    assert kinds == ["insufficient_data", "insufficient_data"]
    assert all("config_warning" not in e.evidence for e in events)


def test_a_window_never_mixes_two_series() -> None:
    """A logger sends real-time values and its own hourly means (and min/max) of
    the same metric. The real-time rule's mean is of real-time values only; a rule
    with ``series: hour`` judges the logger's hourly mean and nothing else."""
    engine = Engine(
        make_pack(
            so2_rule(),
            so2_rule(id="so2-logger-hourly", series="hour"),
        )
    )

    def hourly(value: float, stat: str = "value") -> Obs:
        return Obs(T0, "park", "ent", "s1", "so2", value, data_type="hour", stat=stat)

    events = run(
        engine,
        [
            obs(T0 + 10 * MIN, 20.0),
            hourly(50.0),  # the logger's own mean of the hour: above the limit
            hourly(80.0, "max"),  # its maximum: never judged as a mean
            obs(T0 + 20 * MIN, 30.0),
            tick(T0 + H),
        ],
    )
    got = {(e.rule_id, e.kind.value, e.value) for e in events}
    # real-time mean (20 + 30) / 2 = 25 <= 35: no alert; hourly 50 > 35: opened
    assert got == {("so2-logger-hourly", "opened", 50.0)}


def test_an_unknown_series_is_refused_at_load() -> None:
    with pytest.raises(ConfigError, match="series"):
        make_pack(so2_rule(series="weekly"))
