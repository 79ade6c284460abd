"""Data marks in the rule core: marked readings are not judged, a late mark revises.

Times are UTC; the watermark delay is 0, so a reading at a window's end closes it.
A ``tick`` is a reading of a metric no rule reads, from another device: it only
moves the watermark. Every expected number is computed by hand beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.engine import Engine, ForgottenWindow
from rules.marks import Mark, MarkBook, MarkChange, MarkUpdate
from rules.model import AlertEvent, Obs, Window
from rules.pack import Pack, parse_pack

MIN = 60_000
H = 3_600_000
T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp()) * 1000  # 00:00 UTC
SO2 = {"id": "so2-hourly", "kind": "window", "metric": "so2", "window": "1h"}
SO2_KEY = "park/ent/s1/so2"


def make_pack(*rules: dict[str, Any], lateness: str = "1h") -> Pack:
    data = {"pack": "test", "version": "1", "allowed_lateness": lateness}
    return parse_pack({**data, "watermark_delay": 0, "rules": list(rules)})


def so2_pack(lateness: str = "1h") -> Pack:
    return make_pack({**SO2, "limit": 35}, lateness=lateness)


def obs(ts: int, value: float, metric: str = "so2", dev: str = "s1") -> Obs:
    return Obs(ts, "park", "ent", dev, metric, value, "N")


def tick(ts: int) -> Obs:
    return Obs(ts, "park", "ent", "clock", "flue_temperature", 0.0)


def mark(
    start: int, end: int, *, id: int = 7, metric: str | None = None, dev: str = "s1"
) -> Mark:
    return Mark(id, "park", "ent", dev, metric, start, end, "startup")


def on(m: Mark) -> MarkUpdate:
    return MarkUpdate(m, active=True)


def off(m: Mark) -> MarkUpdate:
    return MarkUpdate(m, active=False)


Stream = list[Obs | MarkUpdate]


def run(engine: Engine, stream: Sequence[Obs | MarkUpdate]) -> list[AlertEvent]:
    out: list[AlertEvent] = []
    for item in stream:
        if isinstance(item, MarkUpdate):
            out += engine.apply_marks([item])
        else:
            out += engine.feed(item)
    return out


def brief(events: list[AlertEvent]) -> list[tuple[str, int, float | None]]:
    return [(e.kind.value, e.at_ms, e.value) for e in events]


# A breach hour: 00:10, 00:20, 00:30 at 50 mg/m3, mean 50 > 35.
BREACH_HOUR = [obs(T0 + 10 * MIN, 50), obs(T0 + 20 * MIN, 50), obs(T0 + 30 * MIN, 50)]
STARTUP = mark(T0, T0 + H)  # the whole hour, every metric of s1


def test_breach_hour_unmarked_is_an_exceedance() -> None:
    events = run(Engine(so2_pack()), [*BREACH_HOUR, tick(T0 + H)])
    assert brief(events) == [("opened", T0 + H, 50.0)]


def test_breach_hour_under_a_startup_mark_is_not_an_exceedance() -> None:
    events = run(Engine(so2_pack()), [on(STARTUP), *BREACH_HOUR, tick(T0 + H)])
    # 3 readings, all marked: 0 valid < min_valid 1 -> insufficient, no alert
    assert brief(events) == [("insufficient_data", T0 + H, None)]
    counts = events[0].evidence["counts"]
    assert (counts["valid"], counts["excluded_mark"]) == (0, 3)
    assert events[0].evidence["marks"] == [7]


def test_a_mark_arriving_while_the_window_is_open_simply_applies() -> None:
    stream: Stream = [*BREACH_HOUR[:2], on(STARTUP), BREACH_HOUR[2], tick(T0 + H)]
    events = run(Engine(so2_pack()), stream)
    assert brief(events) == [("insufficient_data", T0 + H, None)]


# 00:10 = 60, 00:20 = 60, 00:30 = 20; unmarked mean 140 / 3 = 46.666... > 35
MIXED_HOUR = [obs(T0 + 10 * MIN, 60), obs(T0 + 20 * MIN, 60), obs(T0 + 30 * MIN, 20)]


@pytest.mark.parametrize(
    ("the_mark", "expected"),
    [
        # 00:00-00:25 covers 00:10 and 00:20: mean of 20 = 20 -> ok, no alert
        (mark(T0, T0 + 25 * MIN), []),
        # half-open: 00:20-00:30 covers 00:20, not 00:30: (60 + 20) / 2 = 40 > 35
        (mark(T0 + 20 * MIN, T0 + 30 * MIN), [("opened", T0 + H, 40.0)]),
        # another metric of the device: nothing excluded, 140 / 3
        (mark(T0, T0 + H, metric="nox"), [("opened", T0 + H, 140 / 3)]),
        # the rule's metric named: all excluded
        (mark(T0, T0 + H, metric="so2"), [("insufficient_data", T0 + H, None)]),
        # another device: nothing excluded
        (mark(T0, T0 + H, dev="s2"), [("opened", T0 + H, 140 / 3)]),
        # the previous hour only: ends where this one starts
        (mark(T0 - H, T0), [("opened", T0 + H, 140 / 3)]),
    ],
)
def test_what_a_mark_covers(the_mark: Mark, expected: list[Any]) -> None:
    events = run(Engine(so2_pack()), [on(the_mark), *MIXED_HOUR, tick(T0 + H)])
    assert brief(events) == expected  # 140 / 3: the same float as fsum / 3


def test_a_mark_after_the_window_closed_gives_revised() -> None:
    engine = Engine(so2_pack())  # lateness 1h: the hour is held until 02:00
    assert brief(run(engine, [*BREACH_HOUR, tick(T0 + H)])) == [
        ("opened", T0 + H, 50.0)
    ]
    events = engine.apply_marks([on(STARTUP)])
    assert brief(events) == [("revised", T0 + H, None)]
    (revised,) = events
    assert revised.evidence["verdict"] == "insufficient_data"
    assert revised.evidence["previous"] == {"verdict": "breach", "value": 50.0}
    assert revised.evidence["mark"]["id"] == 7
    assert revised.evidence["mark"]["change"] == "applied"
    assert revised.window == Window(T0, T0 + H)
    # a repeat of the same update changes nothing
    assert engine.apply_marks([on(STARTUP)]) == []


def test_a_withdrawn_mark_gives_revised_back() -> None:
    engine = Engine(so2_pack())
    run(engine, [*BREACH_HOUR, tick(T0 + H)])
    (applied,) = engine.apply_marks([on(STARTUP)])
    (lifted,) = engine.apply_marks([off(STARTUP)])
    assert (lifted.kind.value, lifted.value) == ("revised", 50.0)
    assert lifted.evidence["verdict"] == "breach"
    assert lifted.evidence["previous"] == {
        "verdict": "insufficient_data",
        "value": None,
    }
    assert lifted.evidence["mark"]["change"] == "lifted"
    assert lifted.event_id != applied.event_id
    assert engine.apply_marks([off(STARTUP)]) == []  # already lifted


def test_a_withdrawn_mark_before_close_leaves_the_breach() -> None:
    stream: Stream = [on(STARTUP), *BREACH_HOUR, off(STARTUP), tick(T0 + H)]
    assert brief(run(Engine(so2_pack()), stream)) == [("opened", T0 + H, 50.0)]


def test_revision_ids_are_stable_across_a_restart() -> None:
    pack = so2_pack()
    live = Engine(pack)
    run(live, [*BREACH_HOUR, tick(T0 + H)])
    restarted = Engine.restore(pack, live.snapshot())
    first = live.apply_marks([on(STARTUP)], cursor=[7, 0])
    again = restarted.apply_marks([on(STARTUP)], cursor=[7, 0])
    assert [e.event_id for e in first] == [e.event_id for e in again]
    assert len(first) == 1


def test_marks_and_cursor_survive_a_snapshot() -> None:
    pack = so2_pack()
    engine = Engine(pack)
    engine.apply_marks([on(STARTUP)], cursor=[7, 3])
    restored = Engine.restore(pack, engine.snapshot())
    assert restored.mark_cursor == [7, 3]
    events = run(restored, [*BREACH_HOUR, tick(T0 + H)])
    assert brief(events) == [("insufficient_data", T0 + H, None)]


def test_beyond_lateness_the_core_names_the_window_and_rejudges_it() -> None:
    engine = Engine(so2_pack())  # lateness 1h
    run(engine, [*BREACH_HOUR, tick(T0 + H), tick(T0 + 2 * H)])  # 00-01 forgotten
    assert engine.apply_marks([on(STARTUP)]) == []
    (forgotten,) = engine.forgotten_windows(STARTUP)
    assert forgotten == ForgottenWindow(
        "so2-hourly", Window(T0, T0 + H), frozenset({"so2"}), "realtime"
    )
    change = MarkChange(STARTUP, "applied")
    (revised,) = engine.rejudge(change, forgotten, BREACH_HOUR, [STARTUP])
    assert (revised.kind.value, revised.at_ms, revised.value) == (
        "revised", T0 + H, None,
    )  # fmt: skip
    assert revised.evidence["previous"] == {"verdict": "breach", "value": 50.0}
    assert revised.evidence["rejudged"] == "stored_telemetry"
    # the same stored data and mark: the same event, after any restart
    other = Engine.restore(engine.pack, engine.snapshot())
    assert other.rejudge(change, forgotten, BREACH_HOUR, [STARTUP]) == [revised]
    # lifting it again revises back to the breach
    lift = MarkChange(STARTUP, "lifted")
    (back,) = engine.rejudge(lift, forgotten, BREACH_HOUR, [])
    assert (back.value, back.evidence["verdict"]) == (50.0, "breach")


def test_rejudge_keeps_other_marks_in_force() -> None:
    engine = Engine(so2_pack())
    run(engine, [*MIXED_HOUR, tick(T0 + 3 * H)])
    other = mark(T0, T0 + 25 * MIN, id=5)  # excludes 00:10 and 00:20 already
    late = mark(T0 + 25 * MIN, T0 + H, id=9)  # excludes 00:30
    (window,) = engine.forgotten_windows(late)
    change = MarkChange(late, "applied")
    # before: 20 alone, ok; after: nothing valid -> insufficient
    (revised,) = engine.rejudge(change, window, MIXED_HOUR, [other, late])
    assert revised.evidence["previous"] == {"verdict": "ok", "value": 20.0}
    assert revised.evidence["verdict"] == "insufficient_data"
    # a mark that changes nothing gives nothing: 00:10 was excluded by mark 5
    within = mark(T0 + 5 * MIN, T0 + 15 * MIN, id=11)
    (window,) = engine.forgotten_windows(within)
    assert (
        engine.rejudge(
            MarkChange(within, "applied"), window, MIXED_HOUR, [other, within]
        )
        == []
    )


def test_threshold_skips_marked_readings() -> None:
    rule = {"id": "so2-max", "kind": "threshold", "metric": "so2", "limit": 35}
    marked = run(Engine(make_pack(rule)), [on(STARTUP), obs(T0 + MIN, 50)])
    assert marked == []
    unmarked = run(Engine(make_pack(rule)), [obs(T0 + MIN, 50)])
    assert brief(unmarked) == [("opened", T0 + MIN, 50.0)]


def test_duration_run_is_broken_by_a_marked_reading() -> None:
    rule = {
        "id": "temp", "kind": "duration", "metric": "flue_temperature",
        "limit": 180, "for": "20min",
    }  # fmt: skip
    temps = [Obs(T0 + i * 10 * MIN, "park", "ent", "s1", "flue_temperature", 200.0)
             for i in range(3)]  # fmt: skip
    # unmarked: 00:00 .. 00:20 above 180 for 20 min -> breach at 00:20
    assert brief(run(Engine(make_pack(rule)), temps)) == [
        ("opened", T0 + 20 * MIN, 200.0)
    ]
    # 00:10 marked: the run restarts at 00:20, 0 min long -> nothing
    gap = mark(T0 + 5 * MIN, T0 + 15 * MIN)
    assert run(Engine(make_pack(rule)), [on(gap), *temps]) == []


def test_a_quota_keeps_marked_consumption() -> None:
    rule = {
        "id": "water", "kind": "quota", "period": "day", "limit": 10,
        "inputs": [{"metric": "water_volume"}],
    }  # fmt: skip
    meter = [Obs(T0 + i * H, "park", "ent", "s1", "water_volume", v)
             for i, v in enumerate([100.0, 106.0, 112.0])]  # fmt: skip
    # 6 + 6 = 12 m3 > 10 at 02:00, marked or not (consumption is consumption)
    for prefix in ([], [on(mark(T0, T0 + 3 * H))]):
        events = run(Engine(make_pack(rule)), [*prefix, *meter])
        assert brief(events) == [("opened", T0 + 2 * H, 12.0)]


def test_mark_book_applies_each_update_once() -> None:
    book = MarkBook()
    assert book.apply(on(STARTUP)) == MarkChange(STARTUP, "applied")
    assert book.apply(on(STARTUP)) is None
    assert book.covering("park", "ent", "s1", "so2", T0) == STARTUP
    assert book.covering("park", "ent", "s1", "so2", T0 + H) is None  # half-open
    assert book.apply(off(STARTUP)) == MarkChange(STARTUP, "lifted")
    assert book.apply(off(STARTUP)) is None
    assert len(book) == 0


# -- determinism: every interleaving gives the same final verdicts ------------------


def final_verdicts(engine: Engine) -> dict[int, tuple[str | None, float | None]]:
    """Each held so2 window's latest verdict, from the engine's snapshot."""
    buckets = engine.snapshot()["rules"]["so2-hourly"]["buckets"].get(SO2_KEY, [])
    return {b["start"]: (b["verdict"], b["value"]) for b in buckets}


# Three hours of readings every 20 min; a 6h lateness keeps every hour held.
HOURS = [
    obs(T0 + i * 20 * MIN, v)
    for i, v in enumerate([50, 40, 30, 20, 60, 10, 36, 34, 80])
]
STREAM_END = tick(T0 + 3 * H)


@pytest.mark.parametrize("position", range(len(HOURS) + 2))
def test_a_mark_anywhere_in_the_stream_gives_the_same_verdicts(position: int) -> None:
    the_mark = mark(T0 + 30 * MIN, T0 + 70 * MIN)  # covers 00:40 and 01:00
    stream: Stream = [*HOURS, STREAM_END]
    stream.insert(position, on(the_mark))
    engine = Engine(so2_pack("6h"))
    run(engine, stream)
    # hour 0: 50, 40 (00:40 marked) -> 45 breach; hour 1: 01:20 60, 01:40 10
    # (01:00 marked) -> 35, not above 35 -> ok; hour 2: 36, 34, 80 -> 50 breach
    assert final_verdicts(engine) == {
        T0: ("breach", 45.0),
        T0 + H: ("ok", 35.0),
        T0 + 2 * H: ("breach", 50.0),
    }


marks_st = st.lists(
    st.tuples(
        st.integers(0, 17).map(lambda i: T0 + i * 10 * MIN),
        st.integers(1, 9).map(lambda n: n * 10 * MIN),
        st.sampled_from([None, "so2", "nox"]),
        st.booleans(),  # lifted later in the stream
    ),
    max_size=4,
)


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.integers(0, 100), min_size=9, max_size=9),
    marks=marks_st,
    positions=st.lists(st.integers(0, 10), min_size=8, max_size=8),
)
def test_any_interleaving_gives_the_verdicts_of_marks_known_first(
    values: list[int], marks: list[tuple[int, int, str | None, bool]],
    positions: list[int],
) -> None:  # fmt: skip
    readings = [obs(T0 + i * 20 * MIN, v) for i, v in enumerate(values)]
    the_marks = [
        mark(start, start + length, id=n + 1, metric=metric)
        for n, (start, length, metric, _) in enumerate(marks)
    ]
    lifted = [m for m, spec in zip(the_marks, marks, strict=True) if spec[3]]
    # reference: the marks that count in the end, known before any reading
    final = [on(m) for m in the_marks if m not in lifted]
    reference = Engine(so2_pack("6h"))
    run(reference, [*final, *readings, STREAM_END])
    # live: each update at some point of the stream, a lift after its apply
    stream: Stream = [*readings, STREAM_END]
    updates = [on(m) for m in the_marks] + [off(m) for m in lifted]
    slots = iter(positions)
    for update in updates:
        at = min(next(slots, len(stream)), len(stream))
        if not update.active:  # after its own apply
            at = max(at, stream.index(on(update.mark)) + 1)
        stream.insert(at, update)
    live = Engine(so2_pack("6h"))
    run(live, stream)
    assert final_verdicts(live) == final_verdicts(reference)


def test_a_marked_o2_partner_leaves_its_reading_uncorrectable() -> None:
    rule = {**SO2, "limit": 35, "o2_correction": {"reference": 6, "o2_metric": "o2"}}
    stream: Stream = [
        obs(T0 + 10 * MIN, 30), obs(T0 + 10 * MIN, 9, metric="o2"),
        obs(T0 + 20 * MIN, 30), obs(T0 + 20 * MIN, 9, metric="o2"),
        tick(T0 + H),
    ]  # fmt: skip
    # unmarked: 30 * (21 - 6) / (21 - 9) = 37.5 both -> mean 37.5 > 35
    assert brief(run(Engine(make_pack(rule)), stream)) == [("opened", T0 + H, 37.5)]
    # the O2 analyser marked at 00:10: that reading cannot be corrected; 37.5 alone
    o2_mark = mark(T0 + 5 * MIN, T0 + 15 * MIN, metric="o2")
    events = run(Engine(make_pack(rule)), [on(o2_mark), *stream])
    assert brief(events) == [("opened", T0 + H, 37.5)]
    assert events[0].evidence["counts"]["o2_excluded_mark"] == 1
    assert events[0].evidence["counts"]["valid"] == 1


def test_rate_of_change_skips_a_marked_reading() -> None:
    rule = {
        "id": "rise", "kind": "rate_of_change", "metric": "flue_temperature",
        "limit": 5, "per": "1min", "change": "rise",
    }  # fmt: skip
    temps = [Obs(T0 + i * MIN, "park", "ent", "s1", "flue_temperature", v)
             for i, v in enumerate([100.0, 120.0, 124.0])]  # fmt: skip
    # unmarked: (120 - 100) / 1 min = 20 > 5 at 00:01, then (124 - 120) = 4 <= 5
    assert brief(run(Engine(make_pack(rule)), temps)) == [
        ("opened", T0 + MIN, 20.0),
        ("resolved", T0 + 2 * MIN, 4.0),
    ]
    # 00:01 marked: 00:02 is differenced with 00:00: (124 - 100) / 2 = 12 > 5
    gap = mark(T0 + MIN, T0 + 2 * MIN)
    assert brief(run(Engine(make_pack(rule)), [on(gap), *temps])) == [
        ("opened", T0 + 2 * MIN, 12.0)
    ]


@pytest.mark.parametrize(
    ("the_mark", "expected"),
    [
        # 00:30-02:10 covers the hours 00, 01, 02; at 04:00 with 1h lateness the
        # hours ending by 03:00 are forgotten: 00, 01 and 02
        (mark(T0 + 30 * MIN, T0 + 130 * MIN), [T0, T0 + H, T0 + 2 * H]),
        # the hour 03:00-04:00 is still held (ends + 1h > 04:00): not named
        (mark(T0 + 3 * H, T0 + 4 * H), []),
        # a metric the rule does not read
        (mark(T0, T0 + H, metric="nox"), []),
        # a device outside the rule's scope
        (mark(T0, T0 + H, dev="t1"), []),
    ],
)
def test_forgotten_windows(the_mark: Mark, expected: list[int]) -> None:
    pack = make_pack({**SO2, "limit": 35, "scope": {"device": "s*"}})
    engine = Engine(pack)
    run(engine, [tick(T0 + 4 * H)])
    got = [w.window.start_ms for w in engine.forgotten_windows(the_mark)]
    assert got == expected
