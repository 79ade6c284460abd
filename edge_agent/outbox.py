"""The durable outbox: every poll is stored here before anything is published.

Storage is one SQLite file in WAL mode with ``synchronous=FULL``. FULL fsyncs the
WAL on every commit; NORMAL would keep WAL commits safe against a crash of the
agent but may roll back the last commits on power loss. The row that could roll
back may already have been published and stored by the platform, and its
sequence number would then be handed out again for a *different* poll, which the
platform's de-duplication would silently drop. A plant gateway loses power, so
durability wins; the cost is one fsync per poll and one per acknowledged batch.

Contracts:

- :meth:`Outbox.append` stores one poll's samples atomically with the device's
  next sequence number (``last + 1``, starting at 1, persisted, so it continues
  across restarts). All samples of the poll share it.
- Bounds: before storing, rows older than ``max_age_s`` are deleted (counted as
  ``expired_rows``). If the new poll would exceed ``max_rows``: ``drop_oldest``
  deletes the oldest rows to make room (``dropped_rows``); ``refuse_new`` stores
  nothing (``refused_polls``, ``refused_rows``). A poll larger than ``max_rows``
  is refused under both policies. A refused poll still consumes its sequence
  number, so the loss shows downstream as a gap. Counters are persisted in the
  same transaction.
- :meth:`pending` returns rows in insertion order (``id`` grows monotonically and
  is never reused); :meth:`delete` removes rows by id (unknown ids are ignored,
  since a row may have been dropped while its message was in flight).
- Resend window: :meth:`acknowledge` (the PUBACK) with ``keep_s > 0`` does not
  delete a row but marks it acknowledged at the clock's time: it is no longer
  pending (not in :meth:`pending`, :attr:`OutboxStats.rows`, the bounds or their
  counters) and is kept for ``keep_s``, since the broker may have acknowledged it
  from memory and lose it in a crash. :meth:`requeue` makes the rows acknowledged
  since a given time pending again, under their ids, so they are published again in
  their original order; it never makes the pending rows exceed ``max_rows``: the
  newest acknowledged rows (the likeliest to be lost) are taken first, the others
  stay acknowledged and are counted (``requeue_skipped_rows``). Acknowledged rows
  older than ``keep_s`` are deleted by every :meth:`acknowledge` and by
  :meth:`purge_acknowledged`, so at most the window's worth of acknowledged rows is
  kept. ``keep_s == 0`` deletes at the acknowledgement.
- Counter state: ``append(..., last_counters=...)`` stores the last value of each
  counter series of the device (:class:`edge_agent.counters.CounterGuard`'s state)
  in the same transaction as the poll, and only if the poll is stored; a refused or
  failed poll leaves it as it was. :meth:`counter_values` reads it back.
- Epoch: a new outbox file gets a random :attr:`Outbox.epoch`, kept in the file.
  Sequence numbers count within an epoch: an outbox deleted or replaced starts
  again at 1 under a new epoch, which travels with every batch, so the platform
  never reads a restart at 1 as a replay of old readings or a gap.
- Schema version 4 (``PRAGMA user_version``): an older file is upgraded in place,
  in one transaction, by :meth:`open` (version 1 lacks the ``reset`` column and the
  ``counter_values`` table, version 2 the series columns ``data_type`` and
  ``stat``, which read as real-time values, version 3 the ``acked_ms`` column, so
  its rows are all pending); a file newer than this agent is refused.

Threading: every public method takes one internal lock, so an :class:`Outbox` may
be shared by the asyncio thread and paho's network thread. The agent nevertheless
calls it only from the asyncio thread (acks are handed over to the loop), which
keeps the publisher's bookkeeping single-threaded.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from edge_agent.config import OutboxConfig
from edge_agent.sample import Clock, Sample, to_ms
from smartpark.errors import StorageError

SCHEMA_VERSION = 4
_COUNTERS = (
    "dropped_rows",
    "expired_rows",
    "refused_polls",
    "refused_rows",
    "requeued_rows",
    "requeue_skipped_rows",
)
_COUNTER_VALUES = """
CREATE TABLE IF NOT EXISTS counter_values (
    device TEXT NOT NULL,
    metric TEXT NOT NULL,
    value  REAL NOT NULL,  -- the series' last stored value (CounterGuard state)
    PRIMARY KEY (device, metric)
)"""
_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS readings (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids never reused
    device    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    metric    TEXT    NOT NULL,
    value     REAL    NOT NULL,
    unit      TEXT    NOT NULL,
    ts_ms     INTEGER NOT NULL,
    quality   TEXT    NOT NULL,
    stored_ms INTEGER NOT NULL,
    reset     TEXT,               -- smartpark.wire.Reset value; NULL: continues
    data_type TEXT    NOT NULL DEFAULT 'realtime',  -- smartpark.wire.DataType
    stat      TEXT    NOT NULL DEFAULT 'value',     -- smartpark.wire.Stat
    acked_ms  INTEGER             -- PUBACK time (resend window); NULL: pending
);
CREATE INDEX IF NOT EXISTS readings_device ON readings (device, id);
CREATE INDEX IF NOT EXISTS readings_stored ON readings (stored_ms);
CREATE INDEX IF NOT EXISTS readings_acked ON readings (acked_ms);
CREATE TABLE IF NOT EXISTS sequences (
    device   TEXT PRIMARY KEY,
    last_seq INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""
    + _COUNTER_VALUES
    + ";\n"
)
# Upgrades by version, each run in one transaction by open().
_SERIES_COLUMNS = (
    "ALTER TABLE readings ADD COLUMN data_type TEXT NOT NULL DEFAULT 'realtime'",
    "ALTER TABLE readings ADD COLUMN stat TEXT NOT NULL DEFAULT 'value'",
)
_ACKED_COLUMN = "ALTER TABLE readings ADD COLUMN acked_ms INTEGER"
_UPGRADES = {
    1: (
        "ALTER TABLE readings ADD COLUMN reset TEXT",
        _COUNTER_VALUES,
        *_SERIES_COLUMNS,
        _ACKED_COLUMN,
    ),
    2: (*_SERIES_COLUMNS, _ACKED_COLUMN),
    3: (_ACKED_COLUMN,),
}
_PENDING = "acked_ms IS NULL"


@dataclass(frozen=True, slots=True)
class Row:
    id: int
    device: str
    seq: int
    metric: str
    value: float
    unit: str
    ts_ms: int
    quality: str
    reset: str | None = None
    data_type: str = "realtime"
    stat: str = "value"


@dataclass(frozen=True, slots=True)
class Appended:
    """Outcome of one :meth:`Outbox.append`."""

    seq: int
    stored: bool  # False: refused by the refuse_new policy or too large
    evicted: int  # rows deleted to make room or because they were too old


@dataclass(frozen=True, slots=True)
class Requeued:
    """Outcome of one :meth:`Outbox.requeue`."""

    rows: int  # acknowledged rows made pending again, to be published again
    skipped: int  # acknowledged rows within the window left out: max_rows reached


@dataclass(frozen=True, slots=True)
class OutboxStats:
    rows: int  # pending: not acknowledged by the broker
    oldest_age_s: float | None
    max_rows: int
    dropped_rows: int
    expired_rows: int
    refused_polls: int
    refused_rows: int
    acked_rows: int = 0  # acknowledged, kept for the resend window
    requeued_rows: int = 0  # acknowledged rows made pending again after a lost link
    requeue_skipped_rows: int = 0  # ... that did not fit under max_rows


class Outbox:
    """SQLite outbox at ``path`` (see the module contract). Open before use."""

    def __init__(
        self,
        path: Path,
        *,
        max_rows: int,
        max_age_s: float,
        overflow: Literal["drop_oldest", "refuse_new"],
        clock: Clock,
    ) -> None:
        self.path = path
        self.max_rows = max_rows
        self.max_age_ms = int(max_age_s * 1000)
        self.overflow = overflow
        self._clock = clock
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._rows = 0
        self._counters = dict.fromkeys(_COUNTERS, 0)
        self._epoch = ""

    @classmethod
    def from_config(cls, config: OutboxConfig, *, clock: Clock) -> Outbox:
        return cls(
            config.path,
            max_rows=config.max_rows,
            max_age_s=config.max_age_s,
            overflow=config.overflow,
            clock=clock,
        )

    def open(self) -> None:
        """Create or open the file; raises :class:`StorageError` if unusable."""
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(
                    self.path, isolation_level=None, check_same_thread=False
                )
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version not in (0, *_UPGRADES, SCHEMA_VERSION):
                    conn.close()
                    raise StorageError(
                        f"{self.path}: outbox schema {version}, "
                        f"this agent reads {SCHEMA_VERSION}"
                    )
                if version in _UPGRADES:
                    self._upgrade(conn, _UPGRADES[version])
                conn.executescript(_SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                self._rows = conn.execute(
                    f"SELECT COUNT(*) FROM readings WHERE {_PENDING}"
                ).fetchone()[0]
                for name, value in conn.execute("SELECT name, value FROM counters"):
                    self._counters[name] = value
                conn.execute(
                    "INSERT OR IGNORE INTO meta (key, value) VALUES ('epoch', ?)",
                    (secrets.token_hex(8),),
                )
                self._epoch = conn.execute(
                    "SELECT value FROM meta WHERE key = 'epoch'"
                ).fetchone()[0]
            except (OSError, sqlite3.Error) as exc:
                raise StorageError(f"{self.path}: cannot open outbox: {exc}") from exc
            self._conn = conn

    @staticmethod
    def _upgrade(conn: sqlite3.Connection, statements: tuple[str, ...]) -> None:
        # DDL and user_version are transactional in SQLite: a crash mid-upgrade
        # leaves the old version's file, upgraded again at the next open.
        # (execute, not executescript: that would COMMIT before running.)
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in statements:
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def epoch(self) -> str:
        """This outbox file's epoch (16 hex digits); "" before :meth:`open`."""
        return self._epoch

    @property
    def is_open(self) -> bool:
        return self._conn is not None

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Outbox:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StorageError(f"{self.path}: outbox is not open")
        return self._conn

    def append(
        self,
        device: str,
        samples: Sequence[Sample],
        *,
        last_counters: Mapping[str, float] | None = None,
    ) -> Appended:
        """Store one poll under the device's next seq (see the module contract).

        ``last_counters`` (metric → value) is stored as the device's counter state in
        the same transaction, if and only if the poll is stored.
        """
        if not samples:
            raise ValueError("a poll without samples has nothing to store")
        now_ms = to_ms(self._clock())
        with self._lock:
            db = self._db()
            with self._transaction(db, "append", reload=True):
                result = self._append(db, device, samples, now_ms)
                if result.stored and last_counters:
                    db.executemany(
                        "INSERT INTO counter_values (device, metric, value)"
                        " VALUES (?, ?, ?) ON CONFLICT (device, metric)"
                        " DO UPDATE SET value = excluded.value",
                        [(device, m, v) for m, v in last_counters.items()],
                    )
            return result

    def _append(
        self,
        db: sqlite3.Connection,
        device: str,
        samples: Sequence[Sample],
        now_ms: int,
    ) -> Appended:
        row = db.execute(
            "SELECT last_seq FROM sequences WHERE device = ?", (device,)
        ).fetchone()
        seq = (row[0] if row else 0) + 1
        db.execute(
            "INSERT INTO sequences (device, last_seq) VALUES (?, ?) "
            "ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq",
            (device, seq),
        )
        expired = db.execute(
            # "+": the range on readings_stored is short, the pending rows are not.
            "DELETE FROM readings WHERE stored_ms < ? AND +acked_ms IS NULL",
            (now_ms - self.max_age_ms,),
        ).rowcount
        self._rows -= expired
        self._count(db, "expired_rows", expired)
        n = len(samples)
        excess = self._rows + n - self.max_rows
        if n > self.max_rows or (excess > 0 and self.overflow == "refuse_new"):
            self._count(db, "refused_polls", 1)
            self._count(db, "refused_rows", n)
            return Appended(seq, stored=False, evicted=expired)
        dropped = 0
        if excess > 0:
            dropped = db.execute(
                "DELETE FROM readings WHERE id IN "
                f"(SELECT id FROM readings WHERE {_PENDING} ORDER BY id LIMIT ?)",
                (excess,),
            ).rowcount
            self._rows -= dropped
            self._count(db, "dropped_rows", dropped)
        db.executemany(
            "INSERT INTO readings (device, seq, metric, value, unit, ts_ms, quality,"
            " stored_ms, reset, data_type, stat)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    device,
                    seq,
                    s.metric,
                    s.value,
                    s.unit,
                    s.ts_ms,
                    s.quality,
                    now_ms,
                    s.reset,
                    s.data_type,
                    s.stat,
                )
                for s in samples
            ],
        )
        self._rows += n
        return Appended(seq, stored=True, evicted=expired + dropped)

    def _count(self, db: sqlite3.Connection, name: str, amount: int) -> None:
        if amount:
            self._counters[name] += amount
            db.execute(
                "INSERT INTO counters (name, value) VALUES (?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value",
                (name, self._counters[name]),
            )

    def _reload(self, db: sqlite3.Connection) -> None:
        self._rows = db.execute(
            f"SELECT COUNT(*) FROM readings WHERE {_PENDING}"
        ).fetchone()[0]
        self._counters = dict.fromkeys(_COUNTERS, 0)
        for name, value in db.execute("SELECT name, value FROM counters"):
            self._counters[name] = value

    def pending(
        self, limit: int, *, device: str | None = None, after_id: int = 0
    ) -> list[Row]:
        """Up to ``limit`` pending rows with ``id > after_id`` (of ``device``),
        oldest first."""
        sql = (
            "SELECT id, device, seq, metric, value, unit, ts_ms, quality, reset,"
            f" data_type, stat FROM readings WHERE id > ? AND {_PENDING}"
        )
        args: tuple[object, ...] = (after_id,)
        if device is not None:
            sql += " AND device = ?"
            args += (device,)
        with self._lock:
            cur = self._db().execute(sql + " ORDER BY id LIMIT ?", (*args, limit))
            return [Row(*r) for r in cur]

    def devices(self) -> list[str]:
        """Every device that ever appended here (with or without pending rows)."""
        with self._lock:
            cur = self._db().execute("SELECT device FROM sequences ORDER BY device")
            return [r[0] for r in cur]

    def counter_values(self) -> dict[tuple[str, str], float]:
        """The stored counter state: last value per (device, metric) series."""
        with self._lock:
            cur = self._db().execute("SELECT device, metric, value FROM counter_values")
            return {(d, m): float(v) for d, m, v in cur}

    def last_seq(self, device: str) -> int:
        """The device's last sequence number, 0 if it never polled."""
        with self._lock:
            row = (
                self._db()
                .execute("SELECT last_seq FROM sequences WHERE device = ?", (device,))
                .fetchone()
            )
            return int(row[0]) if row else 0

    def delete(self, ids: Iterable[int]) -> int:
        """Delete pending rows by id; returns how many existed. Acknowledged rows
        are left alone (they go by :meth:`acknowledge` or
        :meth:`purge_acknowledged`)."""
        return self._acknowledge(ids, keep_s=0, purge=False)

    def acknowledge(self, ids: Iterable[int], *, keep_s: float) -> int:
        """The broker acknowledged these rows (their PUBACK): keep them, marked
        acknowledged now, for ``keep_s`` (0: delete them at once), and delete the
        rows acknowledged longer ago than that. Returns how many of ``ids`` were
        pending (unknown or already acknowledged ids are ignored)."""
        return self._acknowledge(ids, keep_s=keep_s, purge=True)

    def _acknowledge(self, ids: Iterable[int], *, keep_s: float, purge: bool) -> int:
        batch = [(i,) for i in ids]
        now_ms = to_ms(self._clock())
        with self._lock:
            db = self._db()
            with self._transaction(db, "acknowledge", reload=False):
                before = db.total_changes
                if keep_s > 0:
                    db.executemany(
                        f"UPDATE readings SET acked_ms = ? WHERE id = ? AND {_PENDING}",
                        [(now_ms, i) for (i,) in batch],
                    )
                else:
                    db.executemany(
                        f"DELETE FROM readings WHERE id = ? AND {_PENDING}", batch
                    )
                done = db.total_changes - before
                if purge:
                    self._purge(db, now_ms - int(keep_s * 1000))
            self._rows -= done
            return done

    @contextlib.contextmanager
    def _transaction(
        self, db: sqlite3.Connection, what: str, *, reload: bool
    ) -> Iterator[None]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``; on any error ``ROLLBACK`` (and, with
        ``reload``, the in-memory mirrors of rows and counters, which the body may
        have moved ahead, read again); an SQLite error is a StorageError naming
        ``what``."""
        try:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                if reload:
                    self._reload(db)
                raise
        except sqlite3.Error as exc:
            raise StorageError(f"{self.path}: {what} failed: {exc}") from exc

    def purge_acknowledged(self, keep_s: float) -> int:
        """Delete the rows acknowledged more than ``keep_s`` ago; returns how many."""
        now_ms = to_ms(self._clock())
        with self._lock:
            db = self._db()
            try:
                return self._purge(db, now_ms - int(keep_s * 1000))
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: purge failed: {exc}") from exc

    @staticmethod
    def _purge(db: sqlite3.Connection, before_ms: int) -> int:
        # Rows acknowledged at or after before_ms are kept; NULL (pending) never
        # compares, so pending rows are never purged here.
        return int(
            db.execute("DELETE FROM readings WHERE acked_ms < ?", (before_ms,)).rowcount
        )

    def requeue(self, since_ms: int) -> Requeued:
        """Make the rows acknowledged at or after ``since_ms`` pending again (the
        connection was lost and the broker may have lost them; see the module
        contract). Pending rows stay within ``max_rows``: the newest acknowledged
        rows are taken first; the rest are counted as skipped."""
        with self._lock:
            db = self._db()
            with self._transaction(db, "requeue", reload=True):
                ids = [
                    r[0]
                    for r in db.execute(
                        # "+id": by readings_acked, not a scan in id order.
                        "SELECT id FROM readings WHERE acked_ms >= ? ORDER BY +id DESC",
                        (since_ms,),
                    )
                ]
                room = max(0, self.max_rows - self._rows)
                taken, skipped = ids[:room], ids[room:]
                db.executemany(
                    "UPDATE readings SET acked_ms = NULL WHERE id = ?",
                    [(i,) for i in taken],
                )
                self._count(db, "requeued_rows", len(taken))
                self._count(db, "requeue_skipped_rows", len(skipped))
            self._rows += len(taken)
            return Requeued(len(taken), len(skipped))

    def stats(self) -> OutboxStats:
        now_ms = to_ms(self._clock())
        with self._lock:
            db = self._db()
            row = db.execute(
                f"SELECT stored_ms FROM readings WHERE {_PENDING} ORDER BY id LIMIT 1"
            ).fetchone()
            age = None if row is None else max(0.0, (now_ms - row[0]) / 1000)
            acked = db.execute(
                "SELECT COUNT(*) FROM readings WHERE acked_ms IS NOT NULL"
            ).fetchone()[0]
            c = self._counters
            return OutboxStats(
                rows=self._rows,
                oldest_age_s=age,
                max_rows=self.max_rows,
                dropped_rows=c["dropped_rows"],
                expired_rows=c["expired_rows"],
                refused_polls=c["refused_polls"],
                refused_rows=c["refused_rows"],
                acked_rows=acked,
                requeued_rows=c["requeued_rows"],
                requeue_skipped_rows=c["requeue_skipped_rows"],
            )
