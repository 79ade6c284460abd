"""The outbox's resend window: acknowledged rows kept, queued again, purged.

A broker may acknowledge a message from memory and lose it in a crash, so a row
acknowledged within ``publish.resend_window_s`` must still be in the file, ready to
be published again in its original order; older ones must go (the window bounds
the file), and none of it may disturb the bounds of the pending rows.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

from edge_agent.outbox import SCHEMA_VERSION, OutboxStats, Row
from edge_agent.status import render_metrics
from tests.unit.test_edge_outbox import FakeClock, as_version_3, make, samples
from tests.unit.test_edge_status import AGENT, make_stats, parse, value


def ids(rows: list[Row]) -> list[int]:
    return [r.id for r in rows]


def seqs(rows: list[Row]) -> list[tuple[str, int]]:
    return [(r.device, r.seq) for r in rows]


def test_an_acknowledged_row_is_kept_for_the_window_and_no_longer_pending(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock)
    for _ in range(3):
        box.append("a", samples(2))
    first, second, third = (box.pending(2, after_id=i) for i in (0, 2, 4))
    assert box.acknowledge(ids(first), keep_s=60) == 2
    assert box.acknowledge(ids(first), keep_s=60) == 0  # acknowledged already
    assert seqs(box.pending(10)) == [("a", 2), ("a", 2), ("a", 3), ("a", 3)]
    stats = box.stats()
    assert (stats.rows, stats.acked_rows) == (4, 2)
    clock.advance(30)
    box.acknowledge(ids(second), keep_s=60)
    assert box.stats().acked_rows == 4
    clock.advance(31)  # the first poll was acknowledged 61 s ago: purged
    assert box.acknowledge(ids(third), keep_s=60) == 2
    stats = box.stats()
    assert (stats.rows, stats.acked_rows) == (0, 4)
    clock.advance(30)  # the second 61 s ago, the third 30 s
    assert box.purge_acknowledged(60) == 2
    assert box.stats().acked_rows == 2
    box.close()


def test_a_window_of_zero_deletes_at_the_acknowledgement(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock())
    box.append("a", samples(3))
    assert box.acknowledge(ids(box.pending(10)), keep_s=0) == 3
    assert (box.stats().rows, box.stats().acked_rows) == (0, 0)
    assert box.requeue(0).rows == 0
    with sqlite3.connect(tmp_path / "o.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 0
    conn.close()
    box.close()


def test_requeue_returns_the_rows_acknowledged_since_in_their_original_order(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock)
    for _ in range(3):
        box.append("a", samples(1))
        box.append("b", samples(1))
    rows = box.pending(10)  # a1 b1 a2 b2 a3 b3
    box.acknowledge(ids(rows[:2]), keep_s=120)  # a1 b1, long before the loss
    clock.advance(90)
    box.acknowledge(ids(rows[2:5]), keep_s=120)  # a2 b2 a3, just before the loss
    box.append("a", samples(1))  # a4: stored after them
    lost_at_ms = int(clock().timestamp() * 1000)
    assert box.requeue(lost_at_ms - 60_000).rows == 3
    # b3 never left, a2 b2 a3 come back where they were, a1 b1 stay acknowledged
    assert seqs(box.pending(10)) == [("a", 2), ("b", 2), ("a", 3), ("b", 3), ("a", 4)]
    assert seqs(box.pending(10, device="a")) == [("a", 2), ("a", 3), ("a", 4)]
    assert ids(box.pending(10))[:3] == ids(rows[2:5])  # the same rows, not copies
    stats = box.stats()
    assert (stats.rows, stats.acked_rows, stats.requeued_rows) == (5, 2, 3)
    # acknowledged again (the re-send's PUBACK): kept again for the window
    assert box.acknowledge(ids(rows[2:5]), keep_s=120) == 3
    assert box.stats().acked_rows == 5
    box.close()
    box = make(tmp_path / "o.db", clock)  # the marks and the counter are on disk
    assert (box.stats().rows, box.stats().acked_rows) == (2, 5)
    assert box.stats().requeued_rows == 3
    box.close()


def test_requeue_stays_within_max_rows_taking_the_newest_first(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock, max_rows=4, overflow="refuse_new")
    for _ in range(4):
        box.append("a", samples(1))
    box.acknowledge(ids(box.pending(10)), keep_s=60)
    box.append("a", samples(1))
    box.append("a", samples(1))  # seq 5 and 6 pending: room for 2 more
    result = box.requeue(0)
    assert (result.rows, result.skipped) == (2, 2)
    # the newest acknowledged (likelier lost) came back, in their original order
    assert [r.seq for r in box.pending(10)] == [3, 4, 5, 6]
    stats = box.stats()
    assert (stats.rows, stats.acked_rows, stats.requeue_skipped_rows) == (4, 2, 2)
    box.close()


def test_the_bounds_of_pending_rows_ignore_acknowledged_rows(tmp_path: Path) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock, max_rows=3, max_age_s=10)
    box.append("a", samples(3))
    box.acknowledge(ids(box.pending(10)), keep_s=3600)
    # full by count of all rows, yet nothing pending is dropped to make room ...
    box.append("a", samples(3))
    assert box.stats().dropped_rows == 0
    # ... and the acknowledged rows never expire as if they were lost
    clock.advance(11)
    box.append("b", samples(1))
    stats = box.stats()
    assert (stats.expired_rows, stats.dropped_rows) == (3, 0)  # the 3 pending ones
    assert (stats.rows, stats.acked_rows) == (1, 3)
    assert stats.oldest_age_s == 0.0  # of the pending row, not the acknowledged
    box.close()


def test_a_version_3_file_is_upgraded_and_its_rows_are_pending(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    clock = FakeClock()
    box = make(path, clock)
    box.append("a", samples(2))
    box.append("a", samples(2))
    box.close()
    with sqlite3.connect(path) as conn:
        as_version_3(conn)
        columns = {r[1] for r in conn.execute("PRAGMA table_info(readings)")}
    conn.close()
    assert "acked_ms" not in columns
    box = make(path, clock)
    assert [r.seq for r in box.pending(10)] == [1, 1, 2, 2]
    assert box.stats().rows == 4
    box.acknowledge(ids(box.pending(2)), keep_s=60)
    assert box.requeue(0).rows == 2
    assert box.append("a", samples(1)).seq == 3
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    conn.close()


def test_the_resend_window_shows_in_the_status_metrics() -> None:
    stats = dataclasses.replace(
        make_stats(resends=2, resent_readings=35),
        outbox=OutboxStats(
            12, 3.5, 1000, 5, 6, 7, 8, acked_rows=40, requeue_skipped_rows=3
        ),
    )
    samples, types = parse(render_metrics(stats, agent_id=AGENT))
    assert value(samples, "outbox_acked_rows") == 40
    assert value(samples, "outbox_requeue_skipped_rows_total") == 3
    assert value(samples, "broker_resends_total") == 2
    assert value(samples, "resent_readings_total") == 35
    assert types["smartpark_edge_resent_readings"] == "counter"
