"""Sequence numbers per edge outbox epoch (smartpark.coverage.sequences): polls the
gateway read and the platform never stored show as missing numbers; a new outbox
starting again at 1 is a new epoch, never a gap or a replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from smartpark.coverage import sequences

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def at(i: int) -> datetime:
    return T0 + timedelta(seconds=10 * i)


def test_missing_numbers_are_counted_in_runs_and_readings_of_one_poll_count_once() -> (
    None
):
    polls = [(at(i), i + 1) for i in range(100) if not 40 <= i < 43 and i != 70]
    polls += [
        (at(i) + timedelta(milliseconds=5), i + 1)
        for i in range(100)
        if not 40 <= i < 43 and i != 70
    ]  # fmt: skip  (a second metric)
    (e,) = sequences(polls, [("aa", T0)])
    assert (e.epoch, e.first_seq, e.last_seq, e.polls) == ("aa", 1, 100, 96)
    assert e.missing == 4
    assert [(r.after_seq, r.before_seq, r.missing) for r in e.runs] == [
        (40, 44, 3), (70, 72, 1),
    ]  # fmt: skip
    assert (e.runs[0].after, e.runs[0].before) == (at(39), at(43))


def test_a_new_outbox_starting_at_one_is_a_new_epoch_not_a_gap() -> None:
    polls = [(at(i), 500 + i) for i in range(10)]  # old outbox, seq 500..509
    polls += [(at(20 + i), 1 + i) for i in range(10)]  # new outbox from 1
    found = sequences(polls, [("new", at(20)), ("old", T0 - timedelta(days=3))])
    assert [(e.epoch, e.first_seq, e.last_seq, e.missing) for e in found] == [
        ("old", 500, 509, 0), ("new", 1, 10, 0),
    ]  # fmt: skip


def test_polls_before_any_recorded_epoch_are_kept_apart() -> None:
    polls = [(at(0), 7), (at(1), 9), (at(5), 1)]
    found = sequences(polls, [("e1", at(5))])
    assert [(e.epoch, e.polls, e.missing) for e in found] == [
        (None, 2, 1),
        ("e1", 1, 0),
    ]


def test_nothing_stored_is_nothing_reported() -> None:
    assert sequences([], [("e1", T0)]) == []
