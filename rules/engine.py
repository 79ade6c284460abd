"""The rule engine's core: a pure, deterministic function of (pack, observations).

Usage::

    engine = Engine(load_pack("coal-power.yaml"))
    for obs in observations:                  # in stream (Kafka partition) order
        for event in engine.feed(obs):
            print(event.to_line())

Contracts:

- No clock, no I/O: the same pack and the same observations in the same order give
  the same :class:`~rules.model.AlertEvent` values (ids included), live, after a
  restart from a snapshot, and in a replay a year later.
- Event time: the watermark is the newest observation time seen minus the pack's
  ``watermark_delay``; it never moves backwards. Windows close when the watermark
  passes their end; a later reading within ``allowed_lateness`` revises a closed
  window's verdict (a ``revised`` event), beyond it it is dropped and counted.
- Lifecycle: one open alert per (rule, scope). A breach opens it (``opened``), a
  verdict back within the limit (with the rule's hysteresis) resolves it
  (``resolved``); further breaches while open add nothing. "Not enough valid data" is
  an ``insufficient_data`` event of its own and never resolves or opens an alert.
  A revision is reported as ``revised`` with the window's new verdict and does not
  open or resolve alerts by itself: an alert's lifecycle follows the stream, and a
  regulator sees in the revision what a late reading changed.
- ``alert_id`` = hash(pack, rule id, rule version, scope, time of the opening
  breach); ``event_id`` = hash(alert id, event kind, event time, window, verdict,
  value, and for a revision its evidence: two revisions of one window differ).
  Acknowledging an alert is a person's act and lives with the stored alerts.
- Silence: the watermark moves only with readings, so a device that falls silent
  with everything else in its stream would never be reported. :meth:`idle` takes a
  *silence watermark* from the caller (the live runner: its clock minus
  ``watermark_delay`` once it has consumed everything there is; ``rules check``:
  the end of its input) and judges only the ``missing_data`` rules by it. The
  offline events are the ones a later reading would have produced (same time, same
  ids), only sooner; windows never close on it.
- Data marks (:mod:`rules.marks`): :meth:`apply_marks` takes updates of the marks
  in force, in the order the caller read them (the live runner: by polling the
  database), with the caller's position in that feed (``cursor``, kept in the
  snapshot so a restart neither misses nor repeats one; re-applying an update
  changes nothing). Each update that changes what counts is applied on its own,
  then the kinds that honour marks answer it: the windowed kind with ``revised``
  events for the closed windows still within ``allowed_lateness`` that it covers
  (evidence ``mark``: the mark and ``applied`` or ``lifted``), so a revision's id
  depends on the mark, not on how updates were batched; open windows are judged
  with the marks when they close. The instant kinds skip marked readings from then
  on. Consumption kinds (``quota``, ``ratio``) and ``missing_data`` do not drop
  marked data (see :mod:`rules.kinds.quota`). The same readings and updates in any
  interleaving give the same final verdict of every window that is still within
  ``allowed_lateness`` when both have arrived. Windows beyond it are no longer
  held: :meth:`forgotten_windows` names those a mark covers, and :meth:`rejudge`
  judges one again from readings the caller read back from storage (a
  ``revised`` event whose evidence says ``rejudged: stored_telemetry``; judged
  against the limit alone, the hysteresis of the time being gone).
- :meth:`snapshot` is JSON; ``Engine.restore(pack, snapshot)`` continues exactly
  where the snapshot was taken (the runner stores it with the consumed offsets).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from rules.kinds import make_evaluator
from rules.kinds.base import Evaluator, MarkAware, RuleSpec
from rules.kinds.missing import MissingDataEvaluator
from rules.kinds.window import WindowEvaluator
from rules.marks import Mark, MarkBook, MarkChange, MarkUpdate
from rules.model import (
    JSON,
    AlertEvent,
    EventKind,
    Finding,
    Obs,
    Verdict,
    Window,
    stable_id,
)
from rules.pack import Pack

SNAPSHOT_VERSION = 1
# Marks are kept until no window they cover can be judged again: the longest
# window (a local day, 25 h at most) plus the pack's allowed lateness.
_MARK_HORIZON_MS = 2 * 86_400_000


@dataclass(frozen=True, slots=True)
class ForgottenWindow:
    """A closed window beyond ``allowed_lateness`` that a mark covers: what to read
    back from storage (``metrics`` of the mark's device in ``series``, within
    ``window``) to :meth:`Engine.rejudge` it."""

    rule_id: str
    window: Window
    metrics: frozenset[str]
    series: str


@dataclass(slots=True)
class EngineStats:
    observations: int = 0
    events: int = 0
    dropped_late: int = 0  # summed over the rules, see Evaluator.dropped_late


class Engine:
    def __init__(self, pack: Pack) -> None:
        self.pack = pack
        ctx = pack.context
        self._rules: list[tuple[RuleSpec, Evaluator]] = [
            (rule, make_evaluator(rule, ctx)) for rule in pack.rules
        ]
        self._metrics = frozenset().union(*(r.metrics() for r, _ in self._rules))
        self._max_ts: int | None = None
        self._watermark: int | None = None
        self._open: dict[str, str] = {}  # rule id + scope key -> open alert id
        self._silence: int | None = None  # the newest silence watermark given
        self._marks = MarkBook()
        self._mark_cursor: list[int] | None = None  # the caller's, see apply_marks
        for _, evaluator in self._rules:
            if isinstance(evaluator, MarkAware):
                evaluator.use_marks(self._marks)
        self.stats = EngineStats()

    @property
    def watermark_ms(self) -> int | None:
        return self._watermark

    @property
    def newest_ms(self) -> int | None:
        """The newest observation time seen (None before the first)."""
        return self._max_ts

    def feed(self, obs: Obs) -> list[AlertEvent]:
        """Evaluate one observation; the alert events it causes, in order."""
        self.stats.observations += 1
        if self._max_ts is None or obs.ts_ms > self._max_ts:
            self._max_ts = obs.ts_ms
        candidate = self._max_ts - self.pack.watermark_delay
        moved = self._watermark is None or candidate > self._watermark
        if moved:
            self._watermark = candidate
        watermark = self._watermark
        assert watermark is not None
        events: list[AlertEvent] = []
        if obs.metric in self._metrics:
            for rule, evaluator in self._rules:
                if rule.selects(obs):
                    events += self._lifecycle(rule, evaluator.feed(obs, watermark))
        if moved:
            for rule, evaluator in self._rules:
                events += self._lifecycle(rule, evaluator.advance(watermark))
            if len(self._marks):
                self._marks.forget(self._mark_horizon(watermark))
        self.stats.events += len(events)
        self.stats.dropped_late = sum(e.dropped_late for _, e in self._rules)
        return events

    def idle(self, watermark_ms: int) -> list[AlertEvent]:
        """Judge silences as of ``watermark_ms`` (see the module contract): the
        ``device.offline`` events of devices silent for more than ``max_silence`` at
        that time, while they are still silent. Only ``missing_data`` rules move;
        a watermark not newer than the last one given does nothing."""
        if self._silence is not None and watermark_ms <= self._silence:
            return []
        self._silence = watermark_ms
        events: list[AlertEvent] = []
        for rule, evaluator in self._rules:
            if isinstance(evaluator, MissingDataEvaluator):
                events += self._lifecycle(rule, evaluator.advance(watermark_ms))
        self.stats.events += len(events)
        return events

    @property
    def mark_cursor(self) -> list[int] | None:
        """The position in the marks feed last given to :meth:`apply_marks`."""
        return None if self._mark_cursor is None else list(self._mark_cursor)

    @property
    def marks(self) -> MarkBook:
        """The marks in force the engine knows (read-only for callers)."""
        return self._marks

    def apply_marks(
        self, updates: Sequence[MarkUpdate], *, cursor: Sequence[int] | None = None
    ) -> list[AlertEvent]:
        """Take mark updates (see the module contract); the events they cause, in
        order. ``cursor`` is kept as given, for the caller to resume from."""
        events: list[AlertEvent] = []
        watermark = self._watermark
        horizon = None if watermark is None else self._mark_horizon(watermark)
        for update in updates:
            if horizon is not None and update.mark.end_ms <= horizon:
                continue  # nothing it covers can be judged again here
            change = self._marks.apply(update)
            if change is None or watermark is None:
                continue
            for rule, evaluator in self._rules:
                if isinstance(evaluator, MarkAware):
                    found = evaluator.marks_changed([change], watermark)
                    events += self._lifecycle(rule, found)
        if cursor is not None:
            self._mark_cursor = list(cursor)
        self.stats.events += len(events)
        return events

    def forgotten_windows(self, mark: Mark) -> list[ForgottenWindow]:
        """The windows ``mark`` covers that are no longer held (see the module
        contract), by rule in pack order, oldest first."""
        if self._watermark is None:
            return []
        return [
            ForgottenWindow(rule.id, window, rule.metrics(), rule.series)
            for rule, evaluator in self._rules
            if isinstance(evaluator, WindowEvaluator)
            for window in evaluator.forgotten(mark, self._watermark)
        ]

    def rejudge(
        self,
        change: MarkChange,
        window: ForgottenWindow,
        readings: Sequence[Obs],
        marks: Sequence[Mark],
    ) -> list[AlertEvent]:
        """A forgotten window judged again because of ``change`` from its stored
        ``readings`` and the ``marks`` in force now that overlap it (see
        :meth:`rules.kinds.window.WindowEvaluator.rejudge`). Changes no state: the
        alert id is the window's revision id, whatever is open now, so the event
        id depends only on the rule version, the window, the stored data and the
        mark."""
        events: list[AlertEvent] = []
        for rule, evaluator in self._rules:
            if rule.id != window.rule_id or not isinstance(evaluator, WindowEvaluator):
                continue
            for f in evaluator.rejudge(change, window.window, readings, marks):
                alert_id = self._alert_id(rule, f, "revision")
                events.append(self._event(rule, alert_id, EventKind.REVISED, f))
        self.stats.events += len(events)
        return events

    def _mark_horizon(self, watermark_ms: int) -> int:
        return watermark_ms - self.pack.allowed_lateness - _MARK_HORIZON_MS

    def _lifecycle(self, rule: RuleSpec, findings: list[Finding]) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        for f in findings:
            key = f"{rule.id}\x1f{f.scope.key}"
            open_id = self._open.get(key)
            if f.revision:
                alert_id = open_id or self._alert_id(rule, f, "revision")
                out.append(self._event(rule, alert_id, EventKind.REVISED, f))
            elif f.verdict is Verdict.INSUFFICIENT:
                alert_id = self._alert_id(rule, f, "insufficient")
                out.append(self._event(rule, alert_id, EventKind.INSUFFICIENT_DATA, f))
            elif f.verdict is Verdict.BREACH and open_id is None:
                alert_id = self._alert_id(rule, f, "breach")
                self._open[key] = alert_id
                out.append(self._event(rule, alert_id, EventKind.OPENED, f))
            elif f.verdict is Verdict.OK and open_id is not None:
                del self._open[key]
                out.append(self._event(rule, open_id, EventKind.RESOLVED, f))
        return out

    def _alert_id(self, rule: RuleSpec, f: Finding, what: str) -> str:
        window = None if f.window is None else (f.window.start_ms, f.window.end_ms)
        return stable_id(
            self.pack.pack,
            rule.id,
            self.pack.version,
            f.scope.key,
            what,
            f.at_ms,
            window,
        )

    def _event(
        self, rule: RuleSpec, alert_id: str, kind: EventKind, f: Finding
    ) -> AlertEvent:
        window = None if f.window is None else (f.window.start_ms, f.window.end_ms)
        return AlertEvent(
            event_id=stable_id(
                alert_id,
                kind.value,
                f.at_ms,
                window,
                f.verdict.value,
                f.value,
                # Two revisions of one window differ by what the late reading changed.
                json.dumps(f.evidence, sort_keys=True) if f.revision else None,
            ),
            alert_id=alert_id,
            kind=kind,
            rule_id=rule.id,
            rule_version=self.pack.version,
            severity=rule.severity,
            scope=f.scope,
            at_ms=f.at_ms,
            value=f.value,
            window=f.window,
            evidence={
                "pack": self.pack.pack,
                "rule_kind": rule.kind,
                "verdict": f.verdict.value,
                **f.evidence,
            },
        )

    def snapshot(self) -> JSON:
        return {
            "v": SNAPSHOT_VERSION,
            "pack": self.pack.pack,
            "version": self.pack.version,
            "max_ts": self._max_ts,
            "watermark": self._watermark,
            "open": dict(sorted(self._open.items())),
            "silence": self._silence,
            "marks": self._marks.snapshot(),
            "mark_cursor": self._mark_cursor,
            "rules": {rule.id: ev.snapshot() for rule, ev in self._rules},
        }

    @classmethod
    def restore(cls, pack: Pack, state: JSON) -> Engine:
        """An engine continuing from ``state`` (taken with the same pack version)."""
        if state.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown snapshot version {state.get('v')!r}")
        if (state["pack"], state["version"]) != (pack.pack, pack.version):
            raise ValueError(
                f"snapshot of {state['pack']} {state['version']}, "
                f"pack is {pack.pack} {pack.version}"
            )
        engine = cls(pack)
        engine._max_ts = state["max_ts"]
        engine._watermark = state["watermark"]
        engine._open = dict(state["open"])
        engine._silence = state.get("silence")  # absent in older snapshots
        engine._marks.restore(state.get("marks", []))
        engine._mark_cursor = state.get("mark_cursor")
        for rule, evaluator in engine._rules:
            evaluator.restore(state["rules"][rule.id])
        return engine
