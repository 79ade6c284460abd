"""``kind: duration`` end to end: pack (parse_pack) → Engine → alert events.

Flue temperature above 180 degC for 30 min (clear 170); readings every 5 min unless
a case says otherwise. Expected events are worked out by hand beside each case.
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

MIN = 60_000
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1000


def rule(**fields: Any) -> dict[str, Any]:
    base = {"id": "flue-hot", "kind": "duration", "metric": "flue_temperature"}
    spec = {**base, "limit": 180, "clear": 170, "for": "30min", **fields}
    return {k: v for k, v in spec.items() if v is not None}  # None: leave it out


def make_pack(**fields: Any) -> Pack:
    return parse_pack({"pack": "t", "version": "1", "rules": [rule(**fields)]})


def obs(minute: float, value: float, q: str = "N", dev: str = "stack-1") -> Obs:
    ts = T0 + round(minute * MIN)
    return Obs(ts, "park", "ent", dev, "flue_temperature", value, q)


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [event for o in stream for event in engine.feed(o)]


def hot(first: int, last: int, step: int = 5) -> list[tuple[int, float, str]]:
    return [(m, 190.0, "N") for m in range(first, last + 1, step)]


CASES = [
    # 190 from 0 to 30: the 30-min reading completes 30 - 0 = 30 min -> breach at 30
    ({}, hot(0, 30), ["opened@30"]),
    # 190 from 0 to 25, 175 at 30 (within the limit): the run ends 5 min short
    ({}, [*hot(0, 25), (30, 175.0, "N")], []),
    # a D (fault) reading at 30 breaks the run; a new one from 35 completes at 65
    ({}, [*hot(0, 25), (30, 190.0, "D"), *hot(35, 60)], []),
    ({}, [*hot(0, 25), (30, 190.0, "D"), *hot(35, 65)], ["opened@65"]),
    # max_gap 5min: 10 -> 20 is a 10-min gap, the run restarts at 20, done at 50
    ({"max_gap": "5min"}, [*hot(0, 10), *hot(20, 45)], []),
    ({"max_gap": "5min"}, [*hot(0, 10), *hot(20, 50)], ["opened@50"]),
    # default max_gap = for (30 min): a 25-min gap keeps the run (0 -> 25 -> 30)
    ({}, [(0, 190.0, "N"), (25, 190.0, "N"), (30, 190.0, "N")], ["opened@30"]),
    # a 31-min gap breaks it: the run restarts at 31 and is done at 61
    ({}, [(0, 190.0, "N"), (31, 190.0, "N"), (61, 190.0, "N")], ["opened@61"]),
    # hysteresis: 175 (between clear 170 and limit 180) stays, 165 resolves
    (
        {},
        [*hot(0, 30), (35, 175.0, "N"), (40, 165.0, "N")],
        ["opened@30", "resolved@40"],
    ),
    # without clear, 175 is back within the limit
    ({"clear": None}, [*hot(0, 30), (35, 175.0, "N")], ["opened@30", "resolved@35"]),
    # in breach, a gap or a flagged reading proves nothing: still open
    ({}, [*hot(0, 30), (35, 100.0, "C"), (300, 190.0, "N")], ["opened@30"]),
    # after resolving, a fresh 30-min run is needed to reopen: 45 -> 75
    (
        {},
        [*hot(0, 30), (40, 165.0, "N"), *hot(45, 75)],
        ["opened@30", "resolved@40", "opened@75"],
    ),
    # direction below (e.g. too cold): below 100 for 30 min, back at or above 110
    (
        {"limit": 100, "clear": 110, "direction": "below"},
        [(m, 90.0, "N") for m in range(0, 31, 10)]
        + [(40, 105.0, "N"), (45, 111.0, "N")],
        ["opened@30", "resolved@45"],
    ),
]


@pytest.mark.parametrize(("fields", "readings", "expected"), CASES)
def test_duration(
    fields: dict[str, Any], readings: list[tuple[int, float, str]], expected: list[str]
) -> None:
    engine = Engine(make_pack(**fields))
    events = run(engine, [obs(m, v, q) for m, v, q in readings])
    assert [f"{e.kind.value}@{(e.at_ms - T0) // MIN}" for e in events] == expected


def test_breach_evidence_describes_the_run() -> None:
    # 180+m at minutes 0, 5, ..., 30: 180 is not above 180, so the run starts at 5
    # and is only 25 min long at 30: nothing
    events = run(Engine(make_pack()), [obs(m, 180 + m, "N") for m in range(0, 31, 5)])
    assert events == []
    events = run(Engine(make_pack()), [obs(m, 181 + m, "N") for m in range(0, 31, 5)])
    # 181 at 0 ... 211 at 30: 7 readings, peak 211, 30 min
    assert len(events) == 1
    assert events[0].value == 211
    assert events[0].evidence["run"] == {
        "start_ms": T0,
        "duration_ms": 30 * MIN,
        "readings": 7,
        "peak": 211,
    }


def test_out_of_order_readings_are_dropped_and_counted() -> None:
    engine = Engine(make_pack())
    # 100 at minute 12 is older than the newest (20): dropped, it does not break
    # the run; a repeat of minute 20 is a duplicate: ignored, not counted
    stream = [*(obs(m, 190) for m in (0, 5, 10, 15, 20)), obs(12, 100), obs(20, 100)]
    events = run(engine, [*stream, obs(25, 190), obs(30, 190)])
    assert [(e.kind.value, (e.at_ms - T0) // MIN) for e in events] == [("opened", 30)]
    assert engine.stats.dropped_late == 1


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"for": "0min"}, "rules[0].for: a duration must be positive, got '0min'"),
        (
            {"for": "half an hour"},
            "rules[0].for: not a duration: 'half an hour' (e.g. '90s', '15min', '1h',"
            " '1d')",
        ),
        ({"for": None}, "rules[0].for: missing required field"),
        (
            {"max_gap": "-5min"},
            "rules[0].max_gap: not a duration: '-5min'"
            " (e.g. '90s', '15min', '1h', '1d')",
        ),
        ({"limit": None}, "rules[0].limit: missing required field"),
        (
            {"metric": "flue_temp"},
            "rules[0].metric: unknown metric 'flue_temp'"
            " (did you mean 'flue_temperature'?)",
        ),
        (
            {"unit": "K"},
            "rules[0].unit: unit 'K' is not flue_temperature's unit 'degC'"
            " (limits are in the catalogue unit)",
        ),
        ({"fore": "30min"}, "rules[0].fore: unknown field (a typo?)"),
    ],
)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_pack({"pack": "t", "version": "1", "rules": [rule(**fields)]})
    assert str(info.value) == f"<pack>: {message}"


def test_snapshot_restore_continues_exactly() -> None:
    pack = make_pack(max_gap="10min")
    stream = [obs(m, 190, dev="a") for m in range(0, 31, 5)]  # opens a at 30
    stream += [obs(m, 190, dev="b") for m in range(0, 16, 5)]
    stream += [obs(12, 150, dev="a"), obs(35, 190, "D", dev="b")]  # late; breaks b
    stream += [obs(40, 160, dev="a"), *(obs(m, 190, dev="b") for m in range(40, 71, 5))]
    whole = Engine(pack)
    expected = [e.to_line() for e in run(whole, stream)]
    # a opens at 30 and resolves at 40; b's second run (40 -> 70) opens at 70
    assert [json.loads(x)["kind"] for x in expected] == ["opened", "resolved", "opened"]
    for cut in range(len(stream) + 1):
        first = Engine(pack)
        head = run(first, stream[:cut])
        second = Engine.restore(pack, json.loads(json.dumps(first.snapshot())))
        assert [e.to_line() for e in head + run(second, stream[cut:])] == expected
        if cut < len(stream):  # the engine sums its rules' counters on each feed
            assert second.stats.dropped_late == whole.stats.dropped_late == 1
