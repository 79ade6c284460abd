"""``kind: missing_data`` — devices going offline and coming back, hand-computed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rules.engine import Engine
from rules.model import AlertEvent, EventKind, Obs
from rules.pack import Pack, load_pack, parse_pack
from smartpark.errors import ConfigError

PACKS = Path(__file__).parents[2] / "rules" / "packs"
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
S = 1000


def reading(
    s: float, device: str = "m-1", q: str = "N", metric: str = "active_power"
) -> Obs:
    return Obs(T0 + round(s * S), "p1", "ent-1", device, metric, 1.0, q)


def offline_pack(**fields: Any) -> Pack:
    rule = {
        "id": "meter-offline",
        "kind": "missing_data",
        "metrics": ["active_power", "active_energy"],
        "expected_interval": "10s",
        "max_silence": "5min",
        **fields,
    }
    return parse_pack(
        {"pack": "offline", "version": "1", "watermark_delay": 0, "rules": [rule]}
    )


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [e for o in stream for e in engine.feed(o)]


def summary(events: list[AlertEvent]) -> list[tuple[Any, ...]]:
    return [(e.kind, e.scope.key, e.at_ms, e.value) for e in events]


def m2_until(last_s: int, first_s: int = 0) -> list[Obs]:
    """m-2 every 10 s: it moves event time on while m-1 is silent."""
    return [reading(s, "m-2") for s in range(first_s, last_s + 1, 10)]


def interleave(*streams: list[Obs]) -> list[Obs]:
    return sorted((o for s in streams for o in s), key=lambda o: (o.ts_ms, o.device))


def test_offline_and_back() -> None:
    m1 = [reading(0), reading(10), reading(20), reading(400)]
    events = run(Engine(offline_pack()), interleave(m1, m2_until(330)))
    # m-1 last heard at 20 s; offline once the watermark passes 20 + 300 = 320 s
    # (m-2's reading at 330 s); back with its reading at 400 s, silent 380 s.
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-1/*", T0 + 400 * S, 380.0),
    ]
    opened, back = events
    assert opened.evidence["last_reading_ms"] == T0 + 20 * S
    assert opened.evidence["max_silence_ms"] == 300 * S
    # 380 s between readings at 10 s: 37 readings missed
    assert back.evidence["gap_ms"] == 380 * S
    assert back.evidence["missed_readings"] == 37
    assert back.evidence["delivered_late"] is False


@pytest.mark.parametrize(
    ("watermark_s", "offline"),
    [(320, False), (320.001, True)],  # deadline 20 + 300 s: it must be passed
)
def test_offline_when_the_watermark_passes_the_deadline(
    watermark_s: float, offline: bool
) -> None:
    stream = [reading(0, "m-2"), reading(20), reading(200, "m-2")]
    stream.append(reading(watermark_s, "m-2"))
    events = run(Engine(offline_pack()), stream)
    # m-2's readings are never more than 300 s apart
    assert summary(events) == (
        [(EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0)] if offline else []
    )


def test_a_replaying_site_is_back_and_does_not_flap() -> None:
    # m-1's site lost its uplink after 20 s; its outbox replays 30 s .. 200 s
    # while m-2 keeps event time moving (340 s, 350 s ...).
    live = m2_until(330)
    replay = [reading(s) for s in range(30, 210, 10)]
    m2_more = m2_until(510, first_s=340)
    stream = interleave([reading(0), reading(10), reading(20)], live)
    for i, old in enumerate(replay):
        stream += [old, m2_more[i]]
    events = run(Engine(offline_pack()), stream)
    # Back when the first replayed reading arrives, "heard" at the watermark
    # (330 s), not at its own 30 s; the replayed old readings keep it online.
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-1/*", T0 + 330 * S, 310.0),
    ]
    back = events[1].evidence
    assert (back["delivered_late"], back["gap_ms"], back["missed_readings"]) == (
        True,
        10 * S,
        0,
    )


def test_a_silence_of_the_whole_stream_shows_when_data_flows_again() -> None:
    stream = [reading(0), reading(0, "m-2"), reading(20), reading(20, "m-2")]
    engine = Engine(offline_pack())
    assert run(engine, stream) == []  # nothing moves event time: nothing to see
    events = run(engine, [reading(3600, "m-2")])
    # m-2's own reading ends its silence: opened and resolved together; m-1 is
    # found offline by the watermark m-2 brought.
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/m-2/*", T0 + 320 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-2/*", T0 + 3600 * S, 3580.0),
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0),
    ]


def test_offline_devices_come_in_event_time_order() -> None:
    # a is heard at 0 s and 100 s (offline at 400 s), b at 50 s (offline at 350 s);
    # c moves event time to 1000 s: both are found in one step, b first.
    stream = [reading(0, "a"), reading(50, "b"), reading(100, "a")]
    events = run(Engine(offline_pack()), [*stream, reading(1000, "c")])
    assert [(e.scope.device, e.at_ms) for e in events] == [
        ("b", T0 + 350 * S),
        ("a", T0 + 400 * S),
    ]


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        # by default any flag is "heard from": a meter in maintenance is online
        ({}, []),
        (
            {"valid_flags": ["N"]},
            [(EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0)],
        ),
    ],
)
def test_flags_that_count_as_heard(fields: dict[str, Any], expected: list[Any]) -> None:
    m1 = [reading(0), reading(20)] + [reading(s, q="M") for s in range(30, 340, 10)]
    events = run(Engine(offline_pack(**fields)), interleave(m1, m2_until(330)))
    assert summary(events) == expected


def test_only_the_rules_metrics_and_scope_count() -> None:
    pack = offline_pack(scope={"device": "m-*"})
    stream = [reading(0), reading(0, "x-1"), reading(20, metric="so2")]
    stream += [reading(s, "x-1") for s in range(10, 400, 10)]
    # m-1's so2 is not among the metrics: last heard at 0 s, offline after 300 s;
    # x-1 is outside the scope and is never known.
    assert summary(run(Engine(pack), stream)) == [
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 300 * S, 300.0),
    ]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"max_silence": "5s"},
            "rules[0].max_silence: max_silence (5s) must be at least"
            " expected_interval (10s)",
        ),
        (
            {"expected_interval": "ten"},
            "rules[0].expected_interval: not a duration: 'ten'"
            " (e.g. '90s', '15min', '1h', '1d')",
        ),
        (
            {"metrics": ["active_power", "so3"]},
            "rules[0].metrics[1]: unknown metric 'so3' (did you mean 'so2'?)",
        ),
        (
            {"metrics": []},
            "rules[0].metrics: Tuple should have at least 1 item after validation,"
            " not 0 (got [])",
        ),
        ({"max_silences": "5min"}, "rules[0].max_silences: unknown field (a typo?)"),
    ],
)
def test_spec_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        offline_pack(**fields)
    assert str(err.value) == f"<pack>: {message}"


def test_the_shipped_offline_pack() -> None:
    pack = load_pack(PACKS / "device-offline.yaml")
    # meters every 10 s, CEMS every 60 s (watermark_delay 2 min)
    stream = [
        Obs(T0, "p1", "ent-1", "meter-1", "active_energy", 1.0),
        Obs(T0, "p1", "ent-1", "cems-1", "so2", 1.0),
    ]
    stream += [
        Obs(T0 + s * S, "p1", "ent-1", "cems-1", "so2", 1.0) for s in range(60, 781, 60)
    ]
    events = run(Engine(pack), stream)
    # meter-1: 0 + 5 min is passed once event time is beyond 300 + 120 s (the
    # watermark delay): at the CEMS reading of 480 s
    assert [(e.rule_id, e.scope.device, e.at_ms) for e in events] == [
        ("meter-offline", "meter-1", T0 + 300 * S),
    ]


# Three devices, an outage, a replay, a flag, a whole-stream silence — split anywhere.
SPLIT_STREAM = [
    *interleave(
        [reading(0), reading(10), reading(20), reading(400)],
        m2_until(330),
        [reading(5, "m-3"), reading(15, "m-3", q="M")],
    ),
    reading(350, "m-3"),
    reading(30, "m-3"),
    reading(2000, "m-2"),
    reading(2010),
]


@pytest.mark.parametrize("split", range(len(SPLIT_STREAM) + 1))
def test_a_restored_snapshot_continues_exactly(split: int) -> None:
    pack = offline_pack()
    whole = run(Engine(pack), SPLIT_STREAM)
    first = Engine(pack)
    head = run(first, SPLIT_STREAM[:split])
    state = json.loads(json.dumps(first.snapshot()))
    tail = run(Engine.restore(pack, state), SPLIT_STREAM[split:])
    assert [e.to_line() for e in head + tail] == [e.to_line() for e in whole]


def test_the_split_stream_is_not_trivial() -> None:
    events = run(Engine(offline_pack()), SPLIT_STREAM)
    # m-3 heard at 15 s (flag M counts): offline at 315 s, seen at m-2's 320 s
    # reading; m-1 (20 s) at 320 s, seen at 330 s. m-1 back at 400 s (380 s
    # silent). m-3's 350 s reading arrives behind the watermark (400 s): heard at
    # 400 s (385 s silent); its 30 s reading is older still and changes nothing.
    # Event time jumps to 2000 s with m-2's own reading: its silence (330 s ->
    # 2000 s) is opened at 630 s and resolved; m-1 and m-3, heard at 400 s, are
    # offline at 700 s; m-1 is back at 2010 s (1610 s silent).
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/m-3/*", T0 + 315 * S, 300.0),
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-1/*", T0 + 400 * S, 380.0),
        (EventKind.RESOLVED, "p1/ent-1/m-3/*", T0 + 400 * S, 385.0),
        (EventKind.OPENED, "p1/ent-1/m-2/*", T0 + 630 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-2/*", T0 + 2000 * S, 1670.0),
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 700 * S, 300.0),
        (EventKind.OPENED, "p1/ent-1/m-3/*", T0 + 700 * S, 300.0),
        (EventKind.RESOLVED, "p1/ent-1/m-1/*", T0 + 2010 * S, 1610.0),
    ]


# --- silence judged while it lasts (Engine.idle) --------------------------------


def test_offline_is_raised_while_the_whole_stream_is_silent() -> None:
    # m-1 and m-2 both stop at 20 s: no reading moves event time any more.
    engine = Engine(offline_pack())
    assert (
        run(engine, [reading(0), reading(0, "m-2"), reading(20), reading(20, "m-2")])
        == []
    )
    # Silent for exactly max_silence (5 min) is still online ...
    assert engine.idle(T0 + 320 * S) == []
    # ... one millisecond more is offline, dated when the silence passed 5 min.
    events = engine.idle(T0 + 320 * S + 1)
    assert summary(events) == [
        (EventKind.OPENED, "p1/ent-1/m-1/*", T0 + 320 * S, 300.0),
        (EventKind.OPENED, "p1/ent-1/m-2/*", T0 + 320 * S, 300.0),
    ]
    assert engine.idle(T0 + 900 * S) == []  # reported once
    back = run(engine, [reading(950)])  # resumption resolves it, once
    assert summary(back) == [
        (EventKind.RESOLVED, "p1/ent-1/m-1/*", T0 + 950 * S, 930.0)
    ]
    assert run(engine, [reading(960)]) == []


def test_events_raised_while_silent_are_those_a_later_reading_gives() -> None:
    # Live (the clock judges the silence) and replay (only readings) agree, ids too.
    stream = [reading(0), reading(20), reading(700)]
    replayed = run(Engine(offline_pack()), stream)
    live_engine = Engine(offline_pack())
    live = run(live_engine, stream[:2]) + live_engine.idle(T0 + 400 * S)
    live += run(live_engine, stream[2:])
    assert [e.to_line() for e in live] == [e.to_line() for e in replayed]
    assert [e.kind for e in live] == [EventKind.OPENED, EventKind.RESOLVED]


def test_the_silence_watermark_survives_a_snapshot() -> None:
    engine = Engine(offline_pack())
    run(engine, [reading(0)])
    assert len(engine.idle(T0 + 400 * S)) == 1
    restored = Engine.restore(engine.pack, json.loads(json.dumps(engine.snapshot())))
    assert restored.idle(T0 + 400 * S) == []  # not raised twice after a restart
    assert summary(run(restored, [reading(500)]))[0][0] is EventKind.RESOLVED


def test_idle_never_closes_a_window() -> None:
    pack = parse_pack(
        {"pack": "w", "version": "1", "watermark_delay": 0,
         "rules": [{"id": "so2", "kind": "window", "metric": "so2_corrected",
                    "window": "1h", "limit": 35}]}
    )  # fmt: skip
    engine = Engine(pack)
    engine.feed(Obs(T0, "p1", "e1", "s1", "so2_corrected", 50.0))
    assert engine.idle(T0 + 5 * 3_600_000) == []
    assert engine.watermark_ms == T0


def test_rules_check_reports_devices_still_silent_at_the_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rules import cli

    pack = tmp_path / "pack.yaml"
    pack.write_text(
        "pack: offline\nversion: '1'\nwatermark_delay: 0\nrules:\n"
        "  - {id: meter-offline, kind: missing_data, metrics: [active_power],"
        " expected_interval: 10s, max_silence: 5min}\n"
    )
    readings = tmp_path / "r.jsonl"
    lines = [
        {"ts_ms": T0 + s * S, "park": "p1", "enterprise": "e", "device": d,
         "metric": "active_power", "value": 1.0}
        for s, d in [(0, "m-1"), (0, "m-2"), *((s, "m-2") for s in range(10, 400, 10))]
    ]  # fmt: skip
    readings.write_text("".join(json.dumps(x) + "\n" for x in lines))
    args = ["check", "--pack", str(pack), "--readings", str(readings)]
    assert cli.main(args) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # m-1 went silent at 0 and m-2 carried event time past 5 min: reported in the
    # stream; nothing else was silent at the newest reading (390 s).
    assert [(e["kind"], e["scope"]["device"]) for e in out] == [("opened", "m-1")]
    assert cli.main([*args, "--until", "2024-01-01T00:12:00Z"]) == 0
    out = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    # judged at 12:00: m-2, silent since 390 s, is offline too (at 390 + 300 s)
    assert [(e["kind"], e["scope"]["device"], e["at_ms"]) for e in out] == [
        ("opened", "m-1", T0 + 300 * S),
        ("opened", "m-2", T0 + 690 * S),
    ]
