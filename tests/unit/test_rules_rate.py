"""``kind: rate_of_change`` end to end: pack (parse_pack) → Engine → alert events.

Process temperature rising or falling faster than 20 degC/min (clear 15). Each
expected rate is worked out by hand beside its case.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from rules.engine import Engine
from rules.model import AlertEvent, Obs
from rules.pack import Pack, parse_pack
from smartpark.errors import ConfigError

S = 1000
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1000


def rule(**fields: Any) -> dict[str, Any]:
    base = {"id": "kiln-rise", "kind": "rate_of_change", "metric": "temperature"}
    spec = {**base, "limit": 20, "per": "1min", "clear": 15, **fields}
    return {k: v for k, v in spec.items() if v is not None}


def make_pack(**fields: Any) -> Pack:
    return parse_pack({"pack": "t", "version": "1", "rules": [rule(**fields)]})


Reading = tuple[int, float] | tuple[int, float, str] | tuple[int, float, str, str]


def obs(reading: Reading, metric: str = "temperature", dev: str = "kiln-1") -> Obs:
    second, value, *rest = reading
    q = str(rest[0]) if rest else "N"
    reset = str(rest[1]) if len(rest) > 1 else None
    return Obs(T0 + second * S, "park", "ent", dev, metric, value, q, reset=reset)


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [event for o in stream for event in engine.feed(o)]


CASES: list[tuple[dict[str, Any], list[Reading], list[tuple[str, int, float]]]] = [
    # +30 degC in 60 s = 30/min > 20
    ({}, [(0, 100), (60, 130)], [("opened", 60, 30.0)]),
    # +15 in 30 s = 30/min: the rate is per minute whatever the interval
    ({}, [(0, 100), (30, 115)], [("opened", 30, 30.0)]),
    # +19 in 60 s = 19/min: within
    ({}, [(0, 100), (60, 119)], []),
    # -30 in 60 s: |rate| = 30 with change either ...
    ({}, [(0, 100), (60, 70)], [("opened", 60, 30.0)]),
    # ... not a rise ...
    ({"change": "rise"}, [(0, 100), (60, 70)], []),
    # ... but a fall of 30/min
    ({"change": "fall"}, [(0, 100), (60, 70)], [("opened", 60, 30.0)]),
    # hysteresis: 30/min opens, +18/min (between 15 and 20) stays, +10/min resolves
    (
        {},
        [(0, 100), (60, 130), (120, 148), (180, 158)],
        [("opened", 60, 30.0), ("resolved", 180, 10.0)],
    ),
    # no clear: +18/min is back within 20
    (
        {"clear": None},
        [(0, 100), (60, 130), (120, 148)],
        [("opened", 60, 30.0), ("resolved", 120, 18.0)],
    ),
    # a D reading is skipped: 100 -> 110 over 60 s = 10/min (100 -> 200 in 30 s
    # would be 200/min)
    ({}, [(0, 100), (30, 200, "D"), (60, 110)], []),
    # max_gap 2min: 300 s apart are not differenced (+100 in 5 min = 20/min, but
    # +100 after an outage is not a rate)
    ({"max_gap": "2min", "limit": 10, "clear": None}, [(0, 100), (300, 200)], []),
    # per 1h: +0.5 degC in 60 s = 30 degC/h > 20
    ({"per": "1h"}, [(0, 100), (60, 100.5)], [("opened", 60, 30.0)]),
]


@pytest.mark.parametrize(("fields", "readings", "expected"), CASES)
def test_rate_of_change(
    fields: dict[str, Any], readings: list[Reading], expected: list[Any]
) -> None:
    events = run(Engine(make_pack(**fields)), [obs(r) for r in readings])
    assert [(e.kind.value, (e.at_ms - T0) // S, e.value) for e in events] == expected


# An energy counter (kWh), limit 1000 kWh/h. 5000 -> 5500 over 1 h = 500/h. At 2 h the
# register rolled over to 10 (reset set): not differenced (5500 -> 10 would be
# -5490/h). 10 -> 600 over 1 h = 590/h. No alert.
@pytest.mark.parametrize(
    ("reset_flag", "expected"),
    [
        ("N", []),
        # a reset flagged C leaves no base: 600 is not differenced either
        ("C", []),
    ],
)
def test_counter_reset_is_not_differenced(reset_flag: str, expected: list[Any]) -> None:
    pack = make_pack(metric="active_energy", per="1h", limit=1000, clear=None)
    stream = [
        obs((0, 5000), "active_energy"),
        obs((3600, 5500), "active_energy"),
        obs((7200, 10, reset_flag, "rollover"), "active_energy"),
        obs((10800, 600), "active_energy"),
    ]
    assert run(Engine(pack), stream) == expected


def test_without_the_reset_the_jump_is_a_rate() -> None:
    # the same counter without the reset flag: |10 - 5500| / 1 h = 5490/h > 1000
    pack = make_pack(metric="active_energy", per="1h", limit=1000, clear=None)
    stream = [obs((s, v), "active_energy") for s, v in ((0, 5000), (3600, 5500))]
    events = run(Engine(pack), [*stream, obs((7200, 10), "active_energy")])
    assert [(e.kind.value, e.value) for e in events] == [("opened", 5490.0)]
    assert events[0].evidence["rate"] == -5490.0


def test_out_of_order_readings_are_dropped_and_counted() -> None:
    engine = Engine(make_pack())
    # 30 s is older than 60 s: dropped and counted; it would have made 100 -> 200 a
    # 200/min rise. The repeat of 60 s is a duplicate: ignored, not counted.
    stream = [obs((0, 100)), obs((60, 110)), obs((30, 200)), obs((60, 500))]
    events = run(engine, [*stream, obs((120, 120))])  # +10/min
    assert events == []
    assert engine.stats.dropped_late == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"limit": 0, "clear": None},
            "rules[0].limit: a rate limit must be positive, got 0"
            " (choose the sign with change: rise | fall)",
        ),
        ({"limit": None}, "rules[0].limit: missing required field"),
        ({"per": "0s"}, "rules[0].per: a duration must be positive, got '0s'"),
        (
            {"change": "up"},
            "rules[0].change: unknown value 'up' (expected one of 'rise', 'fall'"
            " or 'either')",
        ),
        (
            {"unit": "degC/min"},
            "rules[0].unit: unit 'degC/min' is not temperature's unit 'degC'"
            " (limits are in the catalogue unit)",
        ),
        ({"metric": "temp"}, "rules[0].metric: unknown metric 'temp'"),
    ],
)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        make_pack(**fields)
    assert str(info.value) == f"<pack>: {message}"


def test_snapshot_restore_continues_exactly() -> None:
    pack = make_pack()
    stream = [obs((0, 100), dev="a"), obs((0, 50), dev="b"), obs((60, 130), dev="a")]
    stream += [obs((30, 0), dev="a"), obs((90, 50, "D"), dev="b")]  # late; skipped
    stream += [obs((120, 148), dev="a"), obs((120, 90), dev="b")]
    stream += [obs((180, 158), dev="a"), obs((180, 91, "N", "replacement"), dev="b")]
    stream += [obs((240, 92), dev="b")]
    whole = Engine(pack)
    expected = [e.to_line() for e in run(whole, stream)]
    # a: +30/min opens at 60, +18 stays, +10 resolves at 180; b: 50 -> 90 over 120 s
    # = 20/min, not above 20; 91 is a new base, +1/min
    assert [json.loads(x)["kind"] for x in expected] == ["opened", "resolved"]
    for cut in range(len(stream) + 1):
        first = Engine(pack)
        head = run(first, stream[:cut])
        second = Engine.restore(pack, json.loads(json.dumps(first.snapshot())))
        assert [e.to_line() for e in head + run(second, stream[cut:])] == expected
        if cut < len(stream):  # the engine sums its rules' counters on each feed
            assert second.stats.dropped_late == whole.stats.dropped_late == 1
