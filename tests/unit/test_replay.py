"""The replay core (rules.replay): plan, digests, the replayer and the diff."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from typing import Any

import pytest

from rules.engine import Engine
from rules.marks import Mark
from rules.model import Obs
from rules.pack import parse_pack
from rules.replay import (
    READ_SLACK_MS,
    OrderError,
    Replayer,
    diff,
    mark_line,
    marks_digest,
    plan,
    row_line,
)

HOUR = 3_600_000
T0 = int(datetime(2026, 11, 2, tzinfo=UTC).timestamp() * 1000)  # a UTC midnight


def pack(limit: float = 50, *, daily: bool = False) -> Any:
    rules: list[dict[str, Any]] = [
        {"id": "so2-hourly", "kind": "window", "metric": "so2", "window": "1h",
         "aggregate": "mean", "limit": limit},
    ]  # fmt: skip
    if daily:
        rules.append(
            {"id": "so2-daily", "kind": "window", "metric": "so2", "window": "1d",
             "aggregate": "mean", "limit": limit}
        )  # fmt: skip
    return parse_pack(
        {"pack": "p", "version": "1", "timezone": "Asia/Shanghai",
         "watermark_delay": "1min", "allowed_lateness": "10min", "rules": rules}
    )  # fmt: skip


def obs(ts: int, value: float, device: str = "d1", **kw: Any) -> Obs:
    return Obs(ts, "park", "e1", device, "so2", value, **kw)


def hours(values: list[float]) -> list[Obs]:
    """One reading every 10 minutes, six an hour, each hour at its value."""
    return [
        obs(T0 + h * HOUR + i * 600_000, v) for h, v in enumerate(values)
        for i in range(6)
    ]  # fmt: skip


# -- digests: the canonical serialisation is a contract (documented) --------------


def test_a_row_line_is_the_documented_canonical_serialisation() -> None:
    row = Obs(1_700_000_000_123, "p1", "e1", "d1", "so2", 35.1, "N", 7, None)
    assert (
        row_line(row)
        == b"1700000000123\tp1\te1\td1\tso2\trealtime\tvalue\t35.1\tN\t7\t\n"
    )
    reset = row._replace(value=0.1 + 0.2, reset="rollover", data_type="hour")
    assert row_line(reset).split(b"\t")[5:] == [
        b"hour",
        b"value",
        b"0.30000000000000004",
        b"N",
        b"7",
        b"rollover\n",
    ]


def test_the_rows_digest_is_sha256_of_the_lines_in_the_order_read() -> None:
    rows = hours([10, 20])
    r = Replayer(plan(pack(), T0, T0 + 2 * HOUR))
    r.feed(rows[:5])
    r.feed(rows[5:])
    expected = hashlib.sha256(b"".join(row_line(o) for o in rows)).hexdigest()
    assert r.rows_digest == expected
    assert r.rows == len(rows)
    other = Replayer(plan(pack(), T0, T0 + 2 * HOUR))
    other.feed([*rows[:-1], rows[-1]._replace(value=20.000001)])
    assert other.rows_digest != expected  # one value changed: another digest


def test_the_marks_digest_covers_every_field() -> None:
    mark = Mark(3, "p", "e", "d", None, 10, 20, "startup")
    assert mark_line(mark) == b"3\tp\te\td\t\t10\t20\tstartup\n"
    assert marks_digest([mark]) == hashlib.sha256(mark_line(mark)).hexdigest()
    other = Mark(3, "p", "e", "d", None, 10, 20, "maintenance")
    assert marks_digest([mark]) != marks_digest([other])
    assert marks_digest([]) == hashlib.sha256(b"").hexdigest()


# -- the plan: read early enough, late enough ---------------------------------


def test_the_lead_in_covers_the_window_before_and_the_tail_closes_the_last() -> None:
    p = plan(pack(), T0 + HOUR + 1_000, T0 + 3 * HOUR)
    assert p.read_from_ms == T0  # the window before the one holding the start
    assert p.close_ms == T0 + 3 * HOUR + 60_000  # + watermark delay
    assert p.read_until_ms == p.close_ms + READ_SLACK_MS


def test_a_daily_window_aligns_to_the_packs_local_midnight() -> None:
    # 2026-11-02 10:00 Asia/Shanghai is 02:00 UTC; the local day began 16:00 UTC
    start = T0 + 2 * HOUR
    p = plan(pack(daily=True), start, start + HOUR)
    local_midnight = T0 - 8 * HOUR
    assert p.read_from_ms == local_midnight - 24 * HOUR
    assert p.close_ms == local_midnight + 24 * HOUR + 60_000


def test_an_empty_range_is_refused() -> None:
    with pytest.raises(ValueError, match="after the start"):
        plan(pack(), T0, T0)


# -- the replayer ---------------------------------------------------------------


def test_the_replayer_gives_the_engines_events_within_the_range() -> None:
    rows = hours([10, 60, 10, 70, 10, 10])
    engine = Engine(pack())
    every = [e for o in rows for e in engine.feed(o)]
    r = Replayer(plan(pack(), T0 + 2 * HOUR, T0 + 5 * HOUR))
    got = r.feed(rows) + r.finish(rows[-1].ts_ms)
    assert [e.window.start_ms for e in every if e.window] == [
        T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR
    ]  # fmt: skip
    assert got == [
        e
        for e in every
        if e.window and T0 + 2 * HOUR <= e.window.start_ms < T0 + 5 * HOUR
    ]
    assert [e.kind.value for e in got] == ["resolved", "opened", "resolved"]


def test_rows_are_taken_up_to_the_first_time_that_closes_the_range() -> None:
    rows = hours([10, 60, 10])
    after = [obs(T0 + 3 * HOUR + 120_000, 10), obs(T0 + 3 * HOUR + 120_000, 11, "d2")]
    later = obs(T0 + 3 * HOUR + 180_000, 99)
    r = Replayer(plan(pack(), T0, T0 + 3 * HOUR))
    got = r.feed(rows + after)
    assert not r.done
    assert r.rows == len(rows) + 2
    assert [e.kind.value for e in got] == ["opened", "resolved"]
    assert r.feed([later]) == []
    assert r.done
    assert r.rows == len(rows) + 2
    assert r.read_until_ms == T0 + 3 * HOUR + 120_001
    assert (
        r.rows_digest
        == hashlib.sha256(b"".join(row_line(o) for o in rows + after)).hexdigest()
    )


def test_rows_out_of_event_time_order_are_refused() -> None:
    rows = hours([10])
    r = Replayer(plan(pack(), T0, T0 + HOUR))
    with pytest.raises(OrderError, match="after one at"):
        r.feed([rows[2], rows[1]])


def test_marks_in_force_exclude_their_data_from_the_windows() -> None:
    rows = hours([10, 60, 10, 10])  # the last hour's readings close the third
    p = plan(pack(), T0, T0 + 3 * HOUR)
    unmarked = Replayer(p)
    assert [e.kind.value for e in unmarked.feed(rows)] == ["opened", "resolved"]
    startup = Mark(1, "park", "e1", "d1", None, T0 + HOUR, T0 + 2 * HOUR, "startup")
    marked = Replayer(p, [startup])
    kinds = [(e.kind.value, e.evidence["verdict"]) for e in marked.feed(rows)]
    assert kinds == [("insufficient_data", "insufficient_data")]  # never a breach


# -- the diff -----------------------------------------------------------------


def event(
    kind: str, start: int, value: float | None, verdict: str, **kw: Any
) -> dict[str, Any]:
    return {
        "event_id": kw.get("event_id", f"{kind}{start}{value}"),
        "alert_id": "a", "kind": kind, "rule_id": kw.get("rule", "r1"),
        "rule_version": kw.get("version", "1"), "severity": "major",
        "scope": {"park": "p", "enterprise": "e", "device": "d", "metric": "so2"},
        "at_ms": start + HOUR, "value": value,
        "window": {"start_ms": start, "end_ms": start + HOUR},
        "evidence": {"pack": "x", "verdict": verdict} if verdict else {"pack": "x"},
    }  # fmt: skip


def test_equal_sides_make_an_empty_diff() -> None:
    live = [
        event("opened", T0, 60.0, "breach"),
        event("resolved", T0 + HOUR, 10.0, "ok"),
    ]
    assert diff(live, list(live)) == []


@pytest.mark.parametrize(
    ("live", "replay", "expected"),
    [
        ([], [("opened", 60.0, "breach")], "new"),
        ([], [("insufficient_data", None, "insufficient_data")], "new"),
        ([("opened", 60.0, "breach")], [], "vanished"),
        ([("opened", 60.0, "breach")], [("opened", 61.0, "breach")], "changed"),
        ([("opened", 60.0, "breach")], [("resolved", 40.0, "ok")], "changed"),
        # ok on one side, nothing on the other: the same verdict
        ([("resolved", 40.0, "ok")], [], None),
        ([], [("resolved", 40.0, "ok")], None),
        # the last judged event of a key counts: live revised its breach away
        ([("opened", 60.0, "breach"), ("revised", 40.0, "ok")], [], None),
        ([("opened", 60.0, "breach"), ("revised", 70.0, "breach")],
         [("opened", 70.0, "breach")], None),
        # a resolution by hand carries no verdict: not compared
        ([("opened", 60.0, "breach"), ("resolved", None, "")],
         [("opened", 60.0, "breach")], None),
    ],
)  # fmt: skip
def test_the_diff_per_key(
    live: list[tuple[str, float | None, str]],
    replay: list[tuple[str, float | None, str]],
    expected: str | None,
) -> None:
    found = diff(
        [event(k, T0, v, d) for k, v, d in live],
        [event(k, T0, v, d) for k, v, d in replay],
    )
    assert [e.status for e in found] == ([expected] if expected else [])
    if expected == "changed":
        assert found[0].live is not None
        assert found[0].replay is not None
        assert found[0].live.value != found[0].replay.value or (
            found[0].live.verdict != found[0].replay.verdict
        )


def test_the_diff_keys_are_rule_scope_and_window_start() -> None:
    live = [event("opened", T0, 60.0, "breach")]
    other_rule = [event("opened", T0, 60.0, "breach", rule="r2")]
    other_window = [event("opened", T0 + HOUR, 60.0, "breach")]
    assert [e.status for e in diff(live, other_rule)] == ["vanished", "new"]
    assert [(e.status, e.key_ms) for e in diff(live, other_window)] == [
        ("vanished", T0), ("new", T0 + HOUR)
    ]  # fmt: skip
