"""The SQLite outbox: nothing lost or duplicated, order kept, bounds counted.

The Hypothesis state machine drives a real outbox file with random appends,
acknowledgements (kept for a resend window or deleted), re-queues after a lost
connection, purges, clock jumps and reopenings, and checks it against a plain list
after every step.
"""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from edge_agent.outbox import SCHEMA_VERSION, Outbox
from edge_agent.sample import Sample
from smartpark.errors import StorageError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def samples(n: int, value: float = 1.0, ts_ms: int = 1_767_225_600_000) -> list[Sample]:
    return [Sample(f"m{i}", value + i, "kWh", ts_ms) for i in range(n)]


def make(path: Path, clock: FakeClock, **kw: object) -> Outbox:
    args: dict[str, object] = {
        "max_rows": 1000,
        "max_age_s": 3600.0,
        "overflow": "drop_oldest",
    }
    args.update(kw)
    box = Outbox(path, clock=clock, **args)  # type: ignore[arg-type]
    box.open()
    return box


def test_seq_continues_across_restarts(tmp_path: Path) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock)
    assert [box.append("a", samples(2)).seq for _ in range(3)] == [1, 2, 3]
    assert box.append("b", samples(1)).seq == 1
    box.close()
    box = make(tmp_path / "o.db", clock)
    assert box.last_seq("a") == 3
    assert box.append("a", samples(2)).seq == 4
    rows = box.pending(100, device="a")
    assert [r.seq for r in rows] == [1, 1, 2, 2, 3, 3, 4, 4]
    assert {r.metric for r in rows if r.seq == 4} == {"m0", "m1"}
    box.close()


def test_an_outbox_keeps_its_epoch_and_a_new_file_gets_a_new_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.db"
    first = Outbox(path, max_rows=10, max_age_s=3600, overflow="drop_oldest",
                   clock=lambda: datetime(2026, 1, 1, tzinfo=UTC))  # fmt: skip
    with first:
        epoch = first.epoch
    assert len(epoch) == 16
    with first:  # reopened: the same file, the same epoch
        assert first.epoch == epoch
    path.unlink()  # the outbox is deleted: seq starts again at 1, a new epoch
    with first:
        assert first.epoch not in ("", epoch)


def test_file_is_in_wal_mode(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock())
    box.append("a", samples(1))
    # WAL is a property of the file, visible to any reader
    with sqlite3.connect(tmp_path / "o.db") as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert other.execute("SELECT COUNT(*) FROM readings").fetchone()[0] == 1
    box.close()


def test_drop_oldest_drops_and_counts(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock(), max_rows=5)
    for _ in range(3):
        box.append("a", samples(2))
    stats = box.stats()
    assert stats.rows == 5
    assert stats.dropped_rows == 1
    assert (box.pending(10)[0].seq, box.pending(10)[0].metric) == (1, "m1")
    box.close()


def test_refuse_new_refuses_whole_polls_but_consumes_seq(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock(), max_rows=5, overflow="refuse_new")
    results = [box.append("a", samples(2)) for _ in range(3)]
    assert [(r.seq, r.stored) for r in results] == [(1, True), (2, True), (3, False)]
    stats = box.stats()
    assert (stats.rows, stats.refused_polls, stats.refused_rows) == (4, 1, 2)
    # the refused seq is a visible gap downstream, never reused
    assert box.append("a", samples(1)).seq == 4
    box.close()


def test_old_rows_expire_and_are_counted(tmp_path: Path) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock, max_age_s=60)
    box.append("a", samples(3))
    clock.advance(30)
    assert box.stats().oldest_age_s == 30.0
    box.append("a", samples(1))
    clock.advance(45)  # the first poll is now 75 s old
    box.append("b", samples(1))
    stats = box.stats()
    assert (stats.rows, stats.expired_rows) == (2, 3)
    box.close()


def test_counters_survive_reopen(tmp_path: Path) -> None:
    clock = FakeClock()
    box = make(tmp_path / "o.db", clock, max_rows=2)
    box.append("a", samples(2))
    box.append("a", samples(2))
    box.close()
    box = make(tmp_path / "o.db", clock, max_rows=2)
    assert box.stats().dropped_rows == 2
    box.close()


def test_delete_ignores_unknown_ids_and_pending_pages(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock())
    for _ in range(4):
        box.append("a", samples(1))
    first = box.pending(2)
    assert [r.seq for r in box.pending(2, after_id=first[-1].id)] == [3, 4]
    assert box.delete([first[0].id, 999_999]) == 1
    assert box.stats().rows == 3
    box.close()


def test_refuses_a_poll_larger_than_the_bound_and_empty_polls(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock(), max_rows=3)
    assert not box.append("a", samples(4)).stored
    with pytest.raises(ValueError, match="nothing to store"):
        box.append("a", [])
    box.close()


def test_unusable_file_is_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / "o.db").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StorageError, match="cannot open outbox"):
        make(tmp_path / "o.db", FakeClock())
    with pytest.raises(StorageError, match="not open"):
        Outbox(
            tmp_path / "x.db",
            max_rows=1,
            max_age_s=1,
            overflow="drop_oldest",
            clock=FakeClock(),
        ).pending(1)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    with pytest.raises(StorageError, match="outbox schema 99"):
        make(path, FakeClock())


# The schema of version 1 exactly as agents before the counter reset wrote it.
V1_SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused
    device    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    metric    TEXT    NOT NULL,
    value     REAL    NOT NULL,
    unit      TEXT    NOT NULL,
    ts_ms     INTEGER NOT NULL,
    quality   TEXT    NOT NULL,
    stored_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS readings_device ON readings (device, id);
CREATE INDEX IF NOT EXISTS readings_stored ON readings (stored_ms);
CREATE TABLE IF NOT EXISTS sequences (
    device   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
PRAGMA user_version=1;
"""


def v1_file(path: Path) -> None:
    """An outbox file as a version-1 agent leaves it: two pending rows, seq 5."""
    ts = 1_767_225_600_000
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_SCHEMA)
        conn.executemany(
            "INSERT INTO readings (device, seq, metric, value, unit, ts_ms, quality,"
            " stored_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [
                ("a", 5, "active_energy", 10.0, "kWh", ts, "N", ts),
                ("a", 5, "active_power", 2.0, "kW", ts, "N", ts),
            ],
        )
        conn.execute("INSERT INTO sequences VALUES ('a', 5)")
        conn.execute("INSERT INTO counters VALUES ('dropped_rows', 3)")
    conn.close()


def as_version_3(conn: sqlite3.Connection) -> None:
    """Turn a current outbox file back into version 3 (before the resend window)."""
    conn.execute("DROP INDEX readings_acked")
    conn.execute("ALTER TABLE readings DROP COLUMN acked_ms")
    conn.execute("PRAGMA user_version=3")


def test_a_version_1_file_is_upgraded_in_place(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    v1_file(path)
    box = make(path, FakeClock())
    # Nothing of the old file is lost: rows (reset NULL), sequences, counters.
    assert [(r.seq, r.metric, r.value, r.reset) for r in box.pending(10)] == [
        (5, "active_energy", 10.0, None),
        (5, "active_power", 2.0, None),
    ]
    assert box.last_seq("a") == 5
    assert box.stats().dropped_rows == 3
    assert box.counter_values() == {}
    # ... and the new schema works on it.
    reset = Sample("active_energy", 1.0, "kWh", 1_767_225_610_000, reset="rollover")
    assert box.append("a", [reset], last_counters={"active_energy": 1.0}).seq == 6
    assert box.pending(10)[-1].reset == "rollover"
    assert box.counter_values() == {("a", "active_energy"): 1.0}
    box.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    conn.close()
    # Opening the upgraded file again changes nothing.
    box = make(path, FakeClock())
    assert len(box.pending(10)) == 3
    assert box.counter_values() == {("a", "active_energy"): 1.0}
    box.close()


def test_a_version_2_file_keeps_its_rows_as_real_time_values(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    v1_file(path)
    make(path, FakeClock()).close()  # now the latest; make it look like version 2
    with sqlite3.connect(path) as conn:
        as_version_3(conn)
        conn.execute("ALTER TABLE readings DROP COLUMN data_type")
        conn.execute("ALTER TABLE readings DROP COLUMN stat")
        conn.execute("PRAGMA user_version=2")
    conn.close()
    box = make(path, FakeClock())
    assert {(r.data_type, r.stat) for r in box.pending(10)} == {("realtime", "value")}
    hourly = Sample("so2", 1.5, "kg", 1_767_225_600_000, data_type="hour", stat="cou")
    box.append("a", [hourly])
    assert (box.pending(10)[-1].data_type, box.pending(10)[-1].stat) == ("hour", "cou")
    box.close()


def test_reset_and_counter_state_round_trip(tmp_path: Path) -> None:
    box = make(tmp_path / "o.db", FakeClock())
    poll = [
        Sample("active_energy", 3.0, "kWh", 1_767_225_600_000, reset="replacement"),
        Sample("water_volume", 9.0, "m3", 1_767_225_600_000),
    ]
    box.append("a", poll, last_counters={"active_energy": 3.0, "water_volume": 9.0})
    box.append("b", samples(1), last_counters={"m0": 1.0})
    assert [(r.metric, r.reset) for r in box.pending(10, device="a")] == [
        ("active_energy", "replacement"),
        ("water_volume", None),
    ]
    box.append("a", samples(1), last_counters={"active_energy": 4.0})
    assert box.counter_values() == {
        ("a", "active_energy"): 4.0,
        ("a", "water_volume"): 9.0,
        ("b", "m0"): 1.0,
    }
    box.close()


# --- the model-based property test ------------------------------------------


@dataclass
class ModelRow:
    device: str
    seq: int
    metric: str
    value: float
    stored_ms: int
    reset: str | None = None
    acked_ms: int | None = None  # None: pending


class OutboxMachine(RuleBasedStateMachine):
    """A real outbox next to a list that does what the contract says."""

    def __init__(self) -> None:
        super().__init__()
        # RAM-backed when possible: the logic is under test here, not fsync speed.
        shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
        self.dir = Path(tempfile.mkdtemp(prefix="outbox-", dir=shm))
        self.clock = FakeClock()
        self.box: Outbox | None = None
        self.rows: list[ModelRow] = []
        self.seqs: dict[str, int] = {}
        self.counters = {
            "dropped": 0,
            "expired": 0,
            "refused_polls": 0,
            "refused_rows": 0,
            "requeued": 0,
            "requeue_skipped": 0,
        }
        self.value = 0.0
        self.counter_values: dict[tuple[str, str], float] = {}

    @initialize(
        max_rows=st.integers(1, 12),
        max_age_s=st.sampled_from([5.0, 30.0, 1e6]),
        overflow=st.sampled_from(["drop_oldest", "refuse_new"]),
        window_s=st.sampled_from([0.0, 4.0, 40.0]),
    )
    def setup(
        self, max_rows: int, max_age_s: float, overflow: str, window_s: float
    ) -> None:
        self.max_rows, self.max_age_s, self.overflow = max_rows, max_age_s, overflow
        self.window_s = window_s
        self.box = self.open()

    def pending(self) -> list[ModelRow]:
        return [r for r in self.rows if r.acked_ms is None]

    def model_purge(self, keep_s: float) -> None:
        before = self.now_ms() - int(keep_s * 1000)
        self.rows = [r for r in self.rows if r.acked_ms is None or r.acked_ms >= before]

    def open(self) -> Outbox:
        return make(
            self.dir / "o.db",
            self.clock,
            max_rows=self.max_rows,
            max_age_s=self.max_age_s,
            overflow=self.overflow,
        )

    def now_ms(self) -> int:
        return int(self.clock().timestamp() * 1000)

    @rule(
        device=st.sampled_from(["a", "b", "c"]),
        n=st.integers(1, 5),
        reset=st.sampled_from([None, "rollover", "replacement"]),
    )
    def append(self, device: str, n: int, reset: str | None) -> None:
        assert self.box is not None
        now = self.now_ms()
        max_rows = self.max_rows
        # only pending rows expire; acknowledged ones go with the resend window
        keep = [
            r
            for r in self.rows
            if r.acked_ms is not None or r.stored_ms >= now - self.max_age_s * 1000
        ]
        self.counters["expired"] += len(self.rows) - len(keep)
        self.rows = keep
        seq = self.seqs.get(device, 0) + 1
        self.seqs[device] = seq
        self.value += 10
        polled = samples(n, self.value)
        polled[0] = dataclasses.replace(polled[0], reset=reset)
        last = {s.metric: s.value for s in polled}
        result = self.box.append(device, polled, last_counters=last)
        assert result.seq == seq
        excess = len(self.pending()) + n - max_rows
        if n > max_rows or (excess > 0 and self.overflow == "refuse_new"):
            assert not result.stored
            self.counters["refused_polls"] += 1
            self.counters["refused_rows"] += n
            return
        assert result.stored
        self.counter_values.update(((device, m), v) for m, v in last.items())
        if excess > 0:
            self.counters["dropped"] += excess
            dropped = {id(r) for r in self.pending()[:excess]}
            self.rows = [r for r in self.rows if id(r) not in dropped]
        self.rows += [
            ModelRow(device, seq, s.metric, s.value, now, s.reset) for s in polled
        ]

    @precondition(lambda self: bool(self.pending()))
    @rule(data=st.data(), keep=st.booleans())
    def acknowledge(self, data: st.DataObject, keep: bool) -> None:
        """A PUBACK: kept for the window (or deleted, as ``delete`` always does)."""
        assert self.box is not None
        pending = self.box.pending(10_000)
        picked = data.draw(st.sets(st.integers(0, len(pending) - 1), min_size=1))
        ids = [pending[i].id for i in picked]
        model = self.pending()
        if keep:
            assert self.box.acknowledge(ids, keep_s=self.window_s) == len(picked)
            if self.window_s > 0:
                for i in picked:
                    model[i].acked_ms = self.now_ms()
            else:
                gone = {id(model[i]) for i in picked}
                self.rows = [r for r in self.rows if id(r) not in gone]
            self.model_purge(self.window_s)
        else:
            assert self.box.delete(ids) == len(picked)
            gone = {id(model[i]) for i in picked}
            self.rows = [r for r in self.rows if id(r) not in gone]

    @rule(lost_s_ago=st.sampled_from([0.0, 3.0, 30.0]))
    def requeue(self, lost_s_ago: float) -> None:
        """The connection was lost: the rows acknowledged since come back."""
        assert self.box is not None
        since = self.now_ms() - int(lost_s_ago * 1000)
        acked = [r for r in self.rows if r.acked_ms is not None and r.acked_ms >= since]
        room = max(0, self.max_rows - len(self.pending()))
        taken = acked[::-1][:room]  # the newest first
        result = self.box.requeue(since)
        assert (result.rows, result.skipped) == (len(taken), len(acked) - len(taken))
        for r in taken:
            r.acked_ms = None
        self.counters["requeued"] += len(taken)
        self.counters["requeue_skipped"] += len(acked) - len(taken)

    @rule()
    def purge_acknowledged(self) -> None:
        assert self.box is not None
        self.box.purge_acknowledged(self.window_s)
        self.model_purge(self.window_s)

    @rule(ids=st.lists(st.integers(-5, 10_000_000), max_size=3))
    def acknowledge_unknown(self, ids: list[int]) -> None:
        # Rows dropped while their message was in flight get acked later.
        assert self.box is not None
        known = {r.id for r in self.box.pending(10_000)}
        self.box.delete([i for i in ids if i not in known])

    @rule(seconds=st.sampled_from([0.5, 3.0, 20.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def reopen(self) -> None:
        assert self.box is not None
        self.box.close()
        self.box = self.open()

    @invariant()
    def same_rows_in_the_same_order(self) -> None:
        if self.box is None:
            return
        pending = self.box.pending(10_000)
        got = [(r.device, r.seq, r.metric, r.value, r.reset) for r in pending]
        want = [(r.device, r.seq, r.metric, r.value, r.reset) for r in self.pending()]
        assert got == want
        # Counter state changes with stored polls only (refused ones leave it).
        assert self.box.counter_values() == self.counter_values
        ids = [r.id for r in pending]
        assert ids == sorted(set(ids))
        for device in ("a", "b", "c"):
            mine = [r.id for r in self.box.pending(10_000, device=device)]
            assert mine == [r.id for r in pending if r.device == device]
            assert self.box.last_seq(device) == self.seqs.get(device, 0)

    @invariant()
    def bounded_and_counted(self) -> None:
        if self.box is None:
            return
        stats = self.box.stats()
        assert stats.rows == len(self.pending()) <= stats.max_rows
        assert stats.acked_rows == len(self.rows) - len(self.pending())
        assert stats.requeued_rows == self.counters["requeued"]
        assert stats.requeue_skipped_rows == self.counters["requeue_skipped"]
        assert stats.dropped_rows == self.counters["dropped"]
        assert stats.expired_rows == self.counters["expired"]
        assert stats.refused_polls == self.counters["refused_polls"]
        assert stats.refused_rows == self.counters["refused_rows"]

    def teardown(self) -> None:
        if self.box is not None:
            self.box.close()
        shutil.rmtree(self.dir, ignore_errors=True)


OutboxMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None
)
test_outbox_model = OutboxMachine.TestCase
