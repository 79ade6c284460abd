"""The rule core: pack validation, the engine's lifecycle and ids, snapshots, and
``smartpark rules check`` — with the threshold kind, hand-computed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rules import cli
from rules.engine import Engine
from rules.model import AlertEvent, EventKind, Obs
from rules.pack import Pack, load_pack, parse_pack
from smartpark.errors import ConfigError

T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def nh3_pack(version: str = "1") -> Pack:
    return parse_pack(
        {
            "pack": "test",
            "version": version,
            "rules": [
                {
                    "id": "nh3-slip",
                    "kind": "threshold",
                    "metric": "nh3",
                    "limit": 8,
                    "clear": 6,
                    "severity": "minor",
                    "scope": {"device": "stack-*"},
                }
            ],
        }
    )


def obs(i: int, value: float, *, device: str = "stack-1", q: str = "N") -> Obs:
    return Obs(T0 + i * 60_000, "p1", "coal-1", device, "nh3", value, q, i)


def run(engine: Engine, stream: list[Obs]) -> list[AlertEvent]:
    return [e for o in stream for e in engine.feed(o)]


STREAM = [
    obs(0, 5.0),
    obs(1, 9.0),  # 9 > 8: opened
    obs(2, 7.0),  # 7 > clear 6: still in breach, nothing new
    obs(3, 12.0, q="C"),  # calibration: not a valid reading, ignored
    obs(4, 8.5),
    obs(5, 5.9),  # 5.9 <= 6: resolved
    obs(6, 7.5),  # 7.5 <= 8: not in breach again
    obs(7, 9.0),  # opened again: a new alert
    obs(8, 20.0, device="other-1"),  # not in the rule's scope
]


def test_threshold_with_hysteresis_opens_and_resolves_once() -> None:
    events = run(Engine(nh3_pack()), STREAM)
    got = [(e.kind, e.at_ms, e.value) for e in events]
    assert got == [
        (EventKind.OPENED, T0 + 60_000, 9.0),
        (EventKind.RESOLVED, T0 + 5 * 60_000, 5.9),
        (EventKind.OPENED, T0 + 7 * 60_000, 9.0),
    ]
    first, resolved, second = events
    assert first.alert_id == resolved.alert_id != second.alert_id
    assert len({e.event_id for e in events}) == 3
    assert first.scope.key == "p1/coal-1/stack-1/nh3"
    assert (first.rule_id, first.rule_version, first.severity) == (
        "nh3-slip",
        "1",
        "minor",
    )
    assert first.evidence["limit"] == 8
    assert first.evidence["reading"]["value"] == 9.0


def test_ids_are_deterministic_and_change_with_the_rule_version() -> None:
    a = [e.to_line() for e in run(Engine(nh3_pack()), STREAM)]
    b = [e.to_line() for e in run(Engine(nh3_pack()), STREAM)]
    c = run(Engine(nh3_pack("2")), STREAM)
    assert a == b
    assert {e.alert_id for e in c}.isdisjoint(json.loads(x)["alert_id"] for x in a)


@pytest.mark.parametrize("split", range(len(STREAM) + 1))
def test_a_restored_snapshot_continues_exactly(split: int) -> None:
    pack = nh3_pack()
    whole = run(Engine(pack), STREAM)
    first = Engine(pack)
    head = run(first, STREAM[:split])
    state = json.loads(json.dumps(first.snapshot()))
    tail = run(Engine.restore(pack, state), STREAM[split:])
    assert [e.to_line() for e in head + tail] == [e.to_line() for e in whole]


def test_readings_sent_again_after_a_lost_connection_open_nothing_again() -> None:
    # An edge agent re-sends what the broker acknowledged within its resend window
    # before a lost connection: the breach at 1 and the resolution at 5 come again.
    resent = STREAM[1:6]
    engine = Engine(nh3_pack())
    events = run(engine, STREAM[:7] + resent + STREAM[7:])
    assert [(e.kind, e.at_ms) for e in events] == [
        (EventKind.OPENED, T0 + 60_000),
        (EventKind.RESOLVED, T0 + 5 * 60_000),
        (EventKind.OPENED, T0 + 7 * 60_000),
    ]
    # older than the newest reading judged (6): not judged, counted as late
    assert engine.stats.dropped_late == len(resent)


def test_a_reading_older_than_its_devices_newest_is_dropped_and_counted() -> None:
    engine = Engine(nh3_pack())
    late = Obs(T0 + 90_000, "p1", "coal-1", "stack-1", "nh3", 30.0, "N", 99)
    events = run(engine, [obs(0, 5.0), obs(2, 5.0), late, obs(3, 5.0)])
    assert events == []
    assert engine.stats.dropped_late == 1
    # another device's older reading is its own newest: judged
    other = Obs(T0 + 90_000, "p1", "coal-1", "stack-2", "nh3", 30.0, "N", 1)
    assert [e.kind for e in engine.feed(other)] == [EventKind.OPENED]


def test_a_snapshot_remembers_the_newest_reading_judged() -> None:
    pack = nh3_pack()
    engine = Engine(pack)
    run(engine, STREAM[:3])
    restored = Engine.restore(pack, json.loads(json.dumps(engine.snapshot())))
    assert run(restored, STREAM[:3]) == []  # sent again after the restart


def test_a_snapshot_without_newest_times_still_restores() -> None:
    pack = nh3_pack()
    engine = Engine(pack)
    run(engine, STREAM[:2])
    state = json.loads(json.dumps(engine.snapshot()))
    del state["rules"]["nh3-slip"]["newest"], state["rules"]["nh3-slip"]["dropped_late"]
    restored = Engine.restore(pack, state)
    assert [e.kind for e in run(restored, STREAM[5:6])] == [EventKind.RESOLVED]


def test_a_snapshot_of_another_pack_version_is_refused() -> None:
    state = Engine(nh3_pack("1")).snapshot()
    with pytest.raises(ValueError, match="snapshot of test 1, pack is test 2"):
        Engine.restore(nh3_pack("2"), state)


# --- packs: every mistake names the file, the line and the field ----------------

GOOD = """\
pack: coal-power
version: "2024.1"
timezone: Asia/Shanghai
allowed_lateness: 1h
coefficients:
  tce: {version: "2020", electricity_kwh: 0.1229}
rules:
  - id: nh3-slip
    kind: threshold
    metric: nh3
    unit: mg/m3
    limit: 8
"""


def test_good_pack_loads(tmp_path: Path) -> None:
    path = tmp_path / "pack.yaml"
    path.write_text(GOOD)
    pack = load_pack(path)
    assert (pack.pack, pack.version, pack.allowed_lateness) == (
        "coal-power",
        "2024.1",
        3_600_000,
    )
    assert pack.watermark_delay == 120_000  # the default, 2 min
    assert pack.context.tz.key == "Asia/Shanghai"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "kind: threshold",
            "kind: treshold",
            "pack.yaml:9: rules[0].kind: unknown value 'treshold' (expected one of",
        ),
        (
            "metric: nh3",
            "metric: nh4",
            "pack.yaml:10: rules[0].metric: unknown metric 'nh4' (did you mean 'nh3'?)",
        ),
        (
            "unit: mg/m3",
            "unit: ug/m3",
            "pack.yaml:11: rules[0].unit: unit 'ug/m3' is not nh3's unit 'mg/m3'",
        ),
        ("    limit: 8\n", "", "pack.yaml:8: rules[0].limit: missing required field"),
        ("limit: 8", "limit: 8\n    clear: 9", "pack.yaml:13: rules[0].clear: clear"),
        ("allowed_lateness: 1h", "allowed_lateness: 1 hour", "pack.yaml:4:"),
        ("timezone: Asia/Shanghai", "timezone: Asia/Beijing", "pack.yaml:3: timezone:"),
        (
            '{version: "2020", electricity_kwh: 0.1229}',
            "{electricity_kwh: 0.1229}",
            "pack.yaml:6: coefficients.tce: every coefficient set needs a version",
        ),
        (
            "    limit: 8\n",
            "    limit: 8\n"
            "  - {id: nh3-slip, kind: threshold, metric: nh3, limit: 9}\n",
            "pack.yaml:13: rules[1].id: rule id 'nh3-slip' is already rules[0]",
        ),
        (
            "    limit: 8\n",
            "    limit: 8\n    lmit: 9\n",
            "pack.yaml:13: rules[0].lmit:",
        ),
    ],
)
def test_pack_mistakes_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert GOOD.count(old) == 1, old
    path = tmp_path / "pack.yaml"
    path.write_text(GOOD.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_pack(path)
    assert str(info.value).startswith(expected), str(info.value)


# --- smartpark rules check ------------------------------------------------------


def test_rules_check_prints_what_the_engine_raises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(GOOD)
    lines = [json.dumps(o.to_json()) for o in STREAM[:3]]
    # a wire batch (as on the telemetry topic) and two bad lines among the good
    batch = {
        "v": 1, "park": "p1", "enterprise": "coal-1", "device": "stack-1",
        "readings": [{"seq": 9, "metric": "nh3", "value": 5.0, "unit": "mg/m3",
                      "ts_ms": T0 + 9 * 60_000, "q": "N"}],
    }  # fmt: skip
    lines[1:1] = ["{not json", '{"ts_ms": "soon", "park": "p1"}']
    lines.append(json.dumps(batch))
    readings = tmp_path / "readings.jsonl"
    readings.write_text("\n".join(lines) + "\n")

    code = cli.main(["check", "--pack", str(pack), "--readings", str(readings)])
    out, err = capsys.readouterr()
    assert code == 1  # bad lines are reported, the rest is evaluated
    printed = [json.loads(line) for line in out.splitlines()]
    expected_engine = Engine(load_pack(pack))
    expected = run(expected_engine, [*STREAM[:3], obs(9, 5.0)])
    assert printed == [e.to_json() for e in expected]
    assert [p["kind"] for p in printed] == ["opened", "resolved"]
    assert "readings.jsonl:2: not JSON" in err
    assert "readings.jsonl:3: ts_ms: expected integer milliseconds, got 'soon'" in err
    assert "4 readings, 2 bad lines, 2 alert events" in err


def test_rules_check_reads_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(GOOD)
    readings = tmp_path / "readings.csv"
    readings.write_text(
        "time,park,enterprise,device,metric,value,quality\n"
        "2024-01-01T08:00:00+08:00,p1,coal-1,stack-1,nh3,9.5,N\n"
        "2024-01-01T08:01:00,p1,coal-1,stack-1,nh3,5,N\n"  # no zone: refused
        "2024-01-01T00:02:00Z,p1,coal-1,stack-1,nh3,5,N\n"
    )
    code = cli.main(["check", "--pack", str(pack), "--readings", str(readings)])
    out, err = capsys.readouterr()
    assert code == 1
    kinds = [(json.loads(x)["kind"], json.loads(x)["at_ms"]) for x in out.splitlines()]
    assert kinds == [("opened", T0), ("resolved", T0 + 120_000)]
    assert "readings.csv:3: time: needs a zone" in err


def test_rules_check_bad_pack_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pack = tmp_path / "pack.yaml"
    pack.write_text(GOOD.replace("metric: nh3", "metric: nh4"))
    code = cli.main(["check", "--pack", str(pack), "--readings", "-"])
    assert code == 2
    assert (
        "pack.yaml:10: rules[0].metric: unknown metric 'nh4'" in capsys.readouterr().err
    )


def test_two_revisions_of_one_window_have_different_event_ids() -> None:
    # Hour 0 closes with mean 30 (ok); late readings move it to 32, then to 28:
    # both revisions keep the verdict "ok", and a consumer de-duplicating by
    # event_id must still see both.
    pack = parse_pack(
        {
            "pack": "test",
            "version": "1",
            "watermark_delay": 0,
            "rules": [
                {
                    "id": "so2-hourly",
                    "kind": "window",
                    "metric": "so2",
                    "window": "1h",
                    "aggregate": "mean",
                    "limit": 35,
                }
            ],
        }
    )
    hour = 3_600_000

    def so2(ts: int, value: float) -> Obs:
        return Obs(ts, "p1", "coal-1", "stack-1", "so2", value)

    engine = Engine(pack)
    stream = [
        so2(0, 30.0),
        so2(hour + 1000, 20.0),
        so2(60_000, 34.0),
        so2(120_000, 20.0),
    ]
    events = [e for o in stream for e in engine.feed(so2(T0 + o.ts_ms, o.value))]
    revised = [e for e in events if e.kind is EventKind.REVISED]
    assert [e.value for e in revised] == [32.0, 28.0]  # (30+34)/2, (30+34+20)/3
    assert revised[0].event_id != revised[1].event_id
