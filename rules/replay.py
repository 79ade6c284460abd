"""Replay: the rule core over stored telemetry, a diff against what ran live, and
the digests that let a third party check what was replayed. Pure: no clock, no I/O.

The caller (:mod:`api.replay.service`) reads the rows and marks from storage and
feeds them here; the same functions serve the API's jobs and ``smartpark replay``.

Contracts:

- **Range.** A replay covers ``[start_ms, end_ms)`` with one pack. Events are
  *reported* when their key time is in the range: the window's start for an event
  with a window (a windowed rule, a quota or ratio period), the event's time
  otherwise. :func:`plan` says what to read so those events come out as live
  raised them: from :func:`lead_in_ms` (the start of the window or period holding
  ``start_ms``, or earlier where a rule needs history: one window before it for the
  windowed kind's hysteresis, ``for`` + gap for ``duration``, ``per`` + gap for
  ``rate_of_change``, ``max_silence`` for ``missing_data``, the period's start and
  one more day for ``quota`` and ``ratio`` counters' baselines) until the windows
  that start in the range are closed: :func:`close_ms` is the end of the last
  window or period holding ``end_ms - 1`` plus the pack's ``watermark_delay``;
  the replay takes every row up to and including the time of the first row at or
  after it (the reading that closed them live), and stops there. Storage is read
  at most :data:`READ_SLACK_MS` beyond it: a scope silent for longer leaves those
  windows open, as they still are live until a reading comes. An alert already
  open before the lead-in is not known to the replay: it would open it again (a
  ``new`` in the diff); a longer ``warmup_ms`` reads further back.
- **Order.** Rows are fed in event-time order (the order storage reads them). The
  watermark then never passes a reading, so nothing is late: a replay gives each
  window the verdict of all its stored data, where live may have revised it.
- **Marks.** The marks in force *now* over the read span are applied before the
  first reading (:meth:`rules.engine.Engine.apply_marks` with no watermark only
  records them): windows are judged with them when they close.
- **Silence.** At the end, :meth:`Replayer.finish` judges silent devices as of
  the silence time the caller gives (the end of what was read, not after the
  caller's clock: live could not have judged later), as ``rules check`` does at
  the end of its input.
- **Digests.** :func:`row_line` and :func:`mark_line` are the canonical
  serialisations: one line per row or mark, fields separated by a tab, ended by a
  newline, UTF-8; the digest is the SHA-256 of the lines in the order read
  (rows by time, enterprise, device, metric, data type, stat; marks by id).
  Floats are written as Python's ``repr`` (the shortest text that reads back to
  the same double), absent values as the empty string.
- **Diff** (:func:`diff`): see its docstring.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal
from zoneinfo import ZoneInfo

from rules.engine import Engine
from rules.kinds.consumption import Periods
from rules.kinds.duration import DurationSpec
from rules.kinds.missing import MissingDataSpec
from rules.kinds.quota import QuotaSpec
from rules.kinds.rate import RateSpec
from rules.kinds.ratio import RatioSpec
from rules.kinds.window import WindowSpec
from rules.kinds.windowing import DAY_MS, window_of
from rules.marks import Mark, MarkUpdate
from rules.model import JSON, AlertEvent, Obs
from rules.pack import Pack

# The engine's events that carry a verdict of the rule (acknowledgements and
# resolutions by hand are a person's acts, not the rules').
JUDGED_KINDS = frozenset({"opened", "resolved", "revised", "insufficient_data"})


def lead_in_ms(pack: Pack, start_ms: int, *, warmup_ms: int = 0) -> int:
    """Where to start reading for a replay from ``start_ms`` (module contract)."""
    tz = ZoneInfo(pack.timezone)
    earliest = start_ms
    for rule in pack.rules:
        if isinstance(rule, WindowSpec):
            first = window_of(start_ms, rule.window, tz)[0]
            at = window_of(first - 1, rule.window, tz)[0]
        elif isinstance(rule, QuotaSpec | RatioSpec):
            at = Periods(rule.period, tz).of(start_ms)[0] - DAY_MS
        elif isinstance(rule, DurationSpec):
            at = start_ms - rule.for_ms - rule.gap_ms
        elif isinstance(rule, RateSpec):
            at = start_ms - rule.per - (rule.max_gap or rule.per)
        elif isinstance(rule, MissingDataSpec):
            at = start_ms - rule.max_silence
        else:
            at = start_ms
        earliest = min(earliest, at)
    return earliest - warmup_ms


READ_SLACK_MS = 7 * DAY_MS


def close_ms(pack: Pack, end_ms: int) -> int:
    """The time a row must reach to close every window starting before ``end_ms``
    (module contract)."""
    tz = ZoneInfo(pack.timezone)
    latest = end_ms
    for rule in pack.rules:
        if isinstance(rule, WindowSpec):
            latest = max(latest, window_of(end_ms - 1, rule.window, tz)[1])
        elif isinstance(rule, QuotaSpec | RatioSpec):
            latest = max(latest, Periods(rule.period, tz).of(end_ms - 1)[1])
    return latest + pack.watermark_delay


@dataclass(frozen=True, slots=True)
class Plan:
    """What one pack's replay reports (``[start_ms, end_ms)``), where it reads
    from, when its windows are closed and the most it reads
    (``[read_from_ms, read_until_ms)``)."""

    pack: Pack
    start_ms: int
    end_ms: int
    read_from_ms: int
    close_ms: int
    read_until_ms: int


def plan(pack: Pack, start_ms: int, end_ms: int, *, warmup_ms: int = 0) -> Plan:
    if end_ms <= start_ms:
        raise ValueError("the end must be after the start")
    closed = close_ms(pack, end_ms)
    return Plan(
        pack, start_ms, end_ms, lead_in_ms(pack, start_ms, warmup_ms=warmup_ms),
        closed, closed + READ_SLACK_MS,
    )  # fmt: skip


def _text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def row_line(obs: Obs) -> bytes:
    """A row's canonical line: ts_ms, park, enterprise, device, metric, data type,
    stat, value, quality, seq, reset."""
    fields = (
        obs.ts_ms, obs.park, obs.enterprise, obs.device, obs.metric, obs.data_type,
        obs.stat, obs.value, obs.quality, obs.seq, obs.reset,
    )  # fmt: skip
    return ("\t".join(_text(f) for f in fields) + "\n").encode()


def mark_line(mark: Mark) -> bytes:
    """A mark's canonical line: id, park, enterprise, device, metric, start_ms,
    end_ms, kind."""
    fields = (
        mark.id, mark.park, mark.enterprise, mark.device, mark.metric,
        mark.start_ms, mark.end_ms, mark.kind,
    )  # fmt: skip
    return ("\t".join(_text(f) for f in fields) + "\n").encode()


def marks_digest(marks: Iterable[Mark]) -> str:
    """SHA-256 (hex) of the marks' canonical lines, in the order given."""
    h = hashlib.sha256()
    for mark in marks:
        h.update(mark_line(mark))
    return h.hexdigest()


class OrderError(ValueError):
    """Rows fed out of event-time order (a storage read that is not sorted)."""


@dataclass(slots=True)
class Replayer:
    """One pack's replay: feed batches of rows in order until :attr:`done`, then
    :meth:`finish`.

    ``keep`` decides which events belong to the caller's scope (e.g. a device
    replay drops enterprise-wide quotas, which need the other devices' data); the
    events returned are those kept whose key time is in the plan's range."""

    plan: Plan
    marks: Sequence[Mark] = ()
    keep: Any = None  # Callable[[AlertEvent], bool] | None
    rows: int = 0
    _engine: Engine = field(init=False)
    _digest: Any = field(init=False)
    _last_ms: int | None = field(init=False, default=None)
    _stop_ms: int | None = field(init=False, default=None)
    done: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._engine = Engine(self.plan.pack)
        self._engine.apply_marks([MarkUpdate(m, active=True) for m in self.marks])
        self._digest = hashlib.sha256()

    @property
    def engine(self) -> Engine:
        return self._engine

    def feed(self, rows: Sequence[Obs]) -> list[AlertEvent]:
        """Feed rows in event-time order (:class:`OrderError` otherwise); the
        reported events they cause. Rows after the closing time's (module
        contract) are not taken: :attr:`done` is then set."""
        out: list[AlertEvent] = []
        digest, engine = self._digest, self._engine
        last, stop, close = self._last_ms, self._stop_ms, self.plan.close_ms
        taken = 0
        for obs in rows:
            if last is not None and obs.ts_ms < last:
                raise OrderError(f"row at {obs.ts_ms} ms after one at {last} ms")
            if stop is not None and obs.ts_ms > stop:
                self.done = True
                break
            if stop is None and obs.ts_ms >= close:
                stop = obs.ts_ms
            last = obs.ts_ms
            digest.update(row_line(obs))
            out += engine.feed(obs)
            taken += 1
        self._last_ms, self._stop_ms = last, stop
        self.rows += taken
        return self._reported(out)

    @property
    def read_until_ms(self) -> int:
        """The end (exclusive) of the rows taken: just after the closing row's
        time, or the plan's limit when the rows ran out before it."""
        if self._stop_ms is None:
            return self.plan.read_until_ms
        return self._stop_ms + 1

    def finish(self, silence_ms: int) -> list[AlertEvent]:
        """Judge silences as of ``silence_ms`` (module contract)."""
        return self._reported(self._engine.idle(silence_ms))

    @property
    def rows_digest(self) -> str:
        """SHA-256 (hex) of the canonical lines of the rows fed so far."""
        return str(self._digest.hexdigest())

    def _reported(self, events: list[AlertEvent]) -> list[AlertEvent]:
        p = self.plan
        return [
            e
            for e in events
            if p.start_ms <= key_ms(e.to_json()) < p.end_ms
            and (self.keep is None or self.keep(e))
        ]


# -- the diff -------------------------------------------------------------------------


def key_ms(event: JSON) -> int:
    """An event's key time: its window's start, else its time."""
    window = event.get("window")
    if isinstance(window, dict):
        return int(window["start_ms"])
    return int(event["at_ms"])


def scope_key(event: JSON) -> str:
    s = event["scope"]
    parts = (s.get("park"), s.get("enterprise"), s.get("device"), s.get("metric"))
    return "/".join(p or "*" for p in parts)


DiffKey = tuple[str, str, int]  # rule id, scope key, key time (ms)


@dataclass(frozen=True, slots=True)
class Judgement:
    """The last judged event of a key on one side: what the rule said there."""

    kind: str
    verdict: str
    value: float | None
    rule_version: str
    event_id: str

    @classmethod
    def of(cls, event: JSON) -> Judgement:
        value = event.get("value")
        return cls(
            event["kind"], str(event["evidence"]["verdict"]),
            None if value is None else float(value), str(event["rule_version"]),
            str(event["event_id"]),
        )  # fmt: skip

    def to_json(self) -> JSON:
        return {
            "kind": self.kind, "verdict": self.verdict, "value": self.value,
            "rule_version": self.rule_version, "event_id": self.event_id,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class DiffEntry:
    status: Literal["new", "vanished", "changed"]
    rule_id: str
    scope: str
    key_ms: int
    live: Judgement | None
    replay: Judgement | None

    def to_json(self) -> JSON:
        return {
            "status": self.status, "rule_id": self.rule_id, "scope": self.scope,
            "key_ms": self.key_ms,
            "live": None if self.live is None else self.live.to_json(),
            "replay": None if self.replay is None else self.replay.to_json(),
        }  # fmt: skip


def judgements(events: Iterable[JSON]) -> dict[DiffKey, Judgement]:
    """Per (rule, scope, key time), the last judged event in the order given."""
    out: dict[DiffKey, Judgement] = {}
    for e in events:
        evidence = e.get("evidence") or {}
        if e.get("kind") not in JUDGED_KINDS or "verdict" not in evidence:
            continue
        out[(str(e["rule_id"]), scope_key(e), key_ms(e))] = Judgement.of(e)
    return out


def diff(live: Iterable[JSON], replay: Iterable[JSON]) -> list[DiffEntry]:
    """What the replay says differently from live, keyed by (rule, scope, key time).

    Both sides are alert events as JSON (``AlertEvent.to_json``, which is the body
    stored live). Compared per key is the *last judged event*: the last of
    ``opened``, ``revised``, ``insufficient_data`` and ``resolved`` whose evidence
    holds the engine's verdict, in the order stored (live) or raised (replay). The
    last one, because a late reading or a mark revises a window after its first
    verdict and the revision is what live finally said; ``resolved`` too, because a
    replay may judge ok where live raised a breach; acknowledgements and
    resolutions by hand are people's acts and not compared.

    - ``changed``: both sides judged the key and the verdict or the value differ
      (values compared exactly: the core is deterministic, equal data give equal
      doubles);
    - ``new``: only the replay judged a breach or insufficient data there;
    - ``vanished``: only live did.

    A key judged ``ok`` on one side and not judged on the other is no difference:
    the core raises nothing for a window within the limit while no alert is open,
    so the absence of an event there means the same verdict. Sorted by key time,
    rule, scope.
    """
    a, b = judgements(live), judgements(replay)
    out: list[DiffEntry] = []
    for key in sorted(set(a) | set(b), key=lambda k: (k[2], k[0], k[1])):
        was, now = a.get(key), b.get(key)
        entry: DiffEntry | None = None
        if was is not None and now is not None:
            if (was.verdict, was.value) != (now.verdict, now.value):
                entry = DiffEntry("changed", *key, was, now)
        elif now is not None and now.verdict != "ok":
            entry = DiffEntry("new", *key, None, now)
        elif was is not None and was.verdict != "ok":
            entry = DiffEntry("vanished", *key, was, None)
        if entry is not None:
            out.append(entry)
    return out
