"""``kind: window`` — an aggregate of one metric per device over tumbling event-time
windows, compared with a limit (with hysteresis across consecutive windows).

```yaml
- id: so2-hourly
  kind: window
  metric: so2               # the raw (measured) concentration
  window: 1h                # sub-day sizes dividing a day (15min, 1h ...) or 1d
  aggregate: mean           # mean | min | max | sum
  limit: 35                 # in the metric's catalogue unit
  unit: mg/m3               # optional; must be the catalogue unit
  clear: 32                 # optional hysteresis (LimitFields)
  valid_flags: [N]          # default: only normal data
  min_valid: 1              # default; valid readings a window needs
  expected_interval: 1min   # optional: how often readings come...
  min_valid_fraction: 0.75  # ...and the share of them a window needs
  o2_correction: {reference: 6, o2_metric: o2}  # optional, raw metrics only
```

Contract (see also :mod:`rules.kinds.base`):

- **Windows**: sub-day windows are aligned to the Unix epoch (UTC); ``1d`` windows
  to local midnight in the pack's time zone. A window longer than a day, or one that
  does not divide a day evenly, is refused at load (monthly and yearly totals are
  the quota kinds'). A window exists for a device once it has a reading of the rule's
  metric; a device silent for a whole window gets no finding here (that is the
  ``missing_data`` kind's job), nor does one that sends only O2 in it.
- **Validity**: readings whose flag is not in ``valid_flags`` are excluded. A window
  needs ``max(min_valid, ceil(min_valid_fraction * window / expected_interval))``
  valid readings; below that its verdict is INSUFFICIENT (value ``None``, the partial
  aggregate in the evidence), never OK, and it leaves the hysteresis state alone.
  HJ 75-2017's own rule (how many valid minutes make a valid hour) was not
  retrieved: packs must set it per permit.
- **O2 correction**: each raw reading is paired with the O2 reading of the same
  device at the same event time (HJ 212 sends both in one packet, one DataTime) and
  corrected as ``C * (21 - reference) / (21 - O2)``. A reading without a partner, with
  a partner whose flag is not valid, or with an O2 outside ``[0, 21)`` % is invalid
  (each counted in the evidence). A metric already corrected (``*_corrected``, HJ 212
  ``Zs*``) with ``o2_correction`` is refused at load: never correct twice.
  A device whose O2 never arrived at all (its O2 is not mapped) gets one
  INSUFFICIENT finding with ``config_warning: true`` and the reason, and no
  finding for its windows after that until an O2 reading comes: one configuration
  warning, not "insufficient data" every hour.
- **Closing**: a window closes when the watermark reaches its end; every closed
  window with readings gives a finding (BREACH, OK or INSUFFICIENT; the engine acts
  on changes only) with ``at_ms`` = the window's end. Findings of one watermark step
  come ordered by (window end, scope).
- **Lateness**: a reading for a closed window whose end + ``allowed_lateness`` is
  still after the watermark re-aggregates it; if the verdict or the value changes, a
  finding with ``revision=True`` carries the new verdict and the previous one. The
  revision is judged with the hysteresis state the first verdict had, and changes
  neither the device's hysteresis state nor later windows (the engine's alert
  lifecycle follows the stream). A window first seen through a late reading is
  reported as a revision too (previous verdict ``None``), judged against the limit
  alone. Older readings are dropped and counted in ``dropped_late``.
- **Marks** (:mod:`rules.marks`): a reading (or its O2 partner) covered by an
  invalid data mark in force when the window is judged is not valid (counted as
  ``excluded_mark``, the marks' ids in ``marks``): an hour covered by a start-up
  mark is INSUFFICIENT, never a breach. A mark that comes or goes while a window
  is open simply applies when it closes; one for a closed window still within
  ``allowed_lateness`` re-judges it like a late reading (a revision with the
  previous verdict and the mark, ``applied`` or ``lifted``, in ``mark``). Windows
  already forgotten are the runner's to re-judge from stored telemetry
  (:meth:`WindowEvaluator.rejudge`).
- **Duplicates**: a second reading of the same device, metric and event time is
  ignored (the first one wins, whatever its flag) and counted in the evidence.
- **Memory**: per device, the readings of its open windows and of closed windows
  still within ``allowed_lateness``; closed windows are forgotten after that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rules.kinds.base import (
    LimitFields,
    PackContext,
    RuleSpec,
    check_unit,
    device_scope,
    parse_duration,
    scope_from_key,
)
from rules.kinds.windowing import (
    DAY_MS,
    Bucket,
    Marked,
    O2Correction,
    fmt_ms,
    summarise,
    window_of,
)
from rules.marks import Mark, MarkBook, MarkChange
from rules.model import JSON, Finding, Obs, Scope, Verdict, Window
from smartpark.catalogue import METRICS, check_metric
from smartpark.yamlfile import located


class WindowSpec(RuleSpec, LimitFields):
    kind: Literal["window"]
    metric: str
    unit: str | None = None
    window: int
    aggregate: Literal["mean", "min", "max", "sum"] = "mean"
    min_valid: int = Field(default=1, ge=1)
    min_valid_fraction: float | None = None
    expected_interval: int | None = None
    o2_correction: O2Correction | None = None
    # Set by the pack from its `validity` (version, source, verified) when the
    # rule takes the pack's valid-hour fraction; recorded in the evidence.
    validity: dict[str, Any] | None = None

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        return check_metric(value)

    @field_validator("window", mode="before")
    @classmethod
    def _window(cls, value: Any) -> int:
        ms = parse_duration(value)
        if ms > DAY_MS:
            raise ValueError(
                f"a window longer than 1d is not supported, got {value!r}"
                " (monthly and yearly totals are the quota kind's)"
            )
        if DAY_MS % ms:
            raise ValueError(
                f"a window must divide a day evenly (e.g. 15min, 1h, 1d), got {value!r}"
            )
        return ms

    @field_validator("expected_interval", mode="before")
    @classmethod
    def _interval(cls, value: Any) -> int | None:
        return None if value is None else parse_duration(value)

    @field_validator("min_valid_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0 < value <= 1:
            raise ValueError(f"min_valid_fraction must be in (0, 1], got {value:g}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> WindowSpec:
        check_unit(self.metric, self.unit)
        if self.o2_correction is not None:
            if self.metric.endswith("_corrected"):
                raw = self.metric.removesuffix("_corrected")
                raise located(
                    f"{self.metric} is already corrected to the reference O2; never"
                    f" correct twice (drop o2_correction, or use the raw {raw!r})",
                    "o2_correction",
                )
            unit = METRICS[self.metric].unit
            if unit != "mg/m3":
                raise located(
                    f"an O2 correction applies to concentrations in mg/m3,"
                    f" not to {self.metric} ({unit})",
                    "o2_correction",
                )
            if self.o2_correction.o2_metric == self.metric:
                raise located("o2_metric is the rule's own metric", "o2_correction")
        interval = self.expected_interval
        if self.min_valid_fraction is not None and interval is None:
            raise located(
                "min_valid_fraction needs expected_interval (how often readings come)",
                "min_valid_fraction",
            )
        if interval is not None:
            if interval > self.window:
                raise located(
                    f"expected_interval {fmt_ms(interval)} is longer than the window"
                    f" {fmt_ms(self.window)}",
                    "expected_interval",
                )
            if self.min_valid > self.window // interval:
                raise located(
                    f"min_valid {self.min_valid} can never be met: a"
                    f" {fmt_ms(self.window)} window expects"
                    f" {self.window // interval} readings",
                    "min_valid",
                )
        return self

    def metrics(self) -> frozenset[str]:
        extra = {self.o2_correction.o2_metric} if self.o2_correction else set()
        return frozenset({self.metric, *extra})

    def required_valid(self, length_ms: int) -> int:
        """Valid readings a window of ``length_ms`` needs (see the module contract)."""
        if self.min_valid_fraction is None or self.expected_interval is None:
            return self.min_valid
        expected = length_ms // self.expected_interval
        # round() first: 0.55 * 1440 is 792.0000000000001 in binary floating point
        share = math.ceil(round(self.min_valid_fraction * expected, 9))
        return max(self.min_valid, share)


class WindowEvaluator:
    def __init__(self, spec: WindowSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._tz = ctx.tz
        self._lateness = ctx.allowed_lateness_ms
        self._buckets: dict[str, dict[int, Bucket]] = {}  # scope key -> start -> ...
        self._breaching: dict[str, bool] = {}  # scope key -> in breach
        self._next_due: int | None = None  # earliest watermark with work to do
        # O2 correction: scopes that ever had an O2 reading, and those warned that
        # they never had one.
        self._o2_seen: set[str] = set()
        self._o2_warned: set[str] = set()
        self._marks: MarkBook | None = None

    def use_marks(self, marks: MarkBook) -> None:
        self._marks = marks

    def marks_changed(
        self, changes: Sequence[MarkChange], watermark_ms: int
    ) -> list[Finding]:
        """Revisions of the closed windows (still within lateness) that the
        changed marks cover; open windows are judged with the marks when they
        close."""
        out: list[Finding] = []
        for change in changes:
            mark = change.mark
            if mark.metric is not None and mark.metric not in self.spec.metrics():
                continue
            key = Scope(mark.park, mark.enterprise, mark.device, self.spec.metric).key
            for _, bucket in sorted(self._buckets.get(key, {}).items()):
                if bucket.closed and mark.overlaps(bucket.start_ms, bucket.end_ms):
                    out += self._revise(key, bucket, {"mark": change.to_json()})
        return out

    def forgotten(self, mark: Mark, watermark_ms: int) -> list[Window]:
        """The windows ``mark`` covers that are closed and beyond
        ``allowed_lateness`` at ``watermark_ms``: no longer held here, for the
        caller to :meth:`rejudge` from stored readings. Oldest first."""
        if mark.metric is not None and mark.metric not in self.spec.metrics():
            return []
        probe = Obs(mark.start_ms, mark.park, mark.enterprise, mark.device,
                    self.spec.metric, 0.0, data_type=self.spec.series)  # fmt: skip
        if not self.spec.selects(probe):
            return []
        out: list[Window] = []
        start, end = window_of(mark.start_ms, self.spec.window, self._tz)
        while start < mark.end_ms and end + self._lateness <= watermark_ms:
            out.append(Window(start, end))
            start, end = window_of(end, self.spec.window, self._tz)
        return out

    def rejudge(
        self,
        change: MarkChange,
        window: Window,
        readings: Sequence[Obs],
        marks: Sequence[Mark],
    ) -> list[Finding]:
        """A window beyond ``allowed_lateness`` judged again because of ``change``,
        from its stored ``readings`` (the rule's metric and O2 of the mark's
        device) and the ``marks`` in force now that overlap it: a revision when the
        verdict or value with the marks differs from the one without the change.

        Pure and deterministic (the same stored readings and marks give the same
        finding after any restart). The hysteresis state of the time is not known
        any more: both verdicts are judged against the limit alone, and the
        evidence says ``rejudged: stored_telemetry``.
        """
        mark = change.mark
        key = Scope(mark.park, mark.enterprise, mark.device, self.spec.metric).key
        bucket = Bucket(window.start_ms, window.end_ms, closed=True)
        subject = (mark.park, mark.enterprise, mark.device)
        for obs in sorted(readings, key=lambda o: (o.ts_ms, o.metric)):
            if (
                (obs.park, obs.enterprise, obs.device) == subject
                and self.spec.selects(obs)
                and window.start_ms <= obs.ts_ms < window.end_ms
            ):
                bucket.add(obs, is_o2=obs.metric != self.spec.metric)
        if not bucket.readings:
            return []
        now = [m for m in marks if m.id != mark.id]
        if change.change == "applied":
            before_marks, after_marks = now, [*now, mark]
        else:
            before_marks, after_marks = [*now, mark], now
        before = self._judge(key, bucket, False, MarkBook.of(before_marks))
        after = self._judge(key, bucket, False, MarkBook.of(after_marks))
        if (before.verdict, before.value) == (after.verdict, after.value):
            return []
        previous = {"verdict": before.verdict.value, "value": before.value}
        evidence = {
            **after.evidence,
            "previous": previous,
            "mark": change.to_json(),
            "rejudged": "stored_telemetry",
        }
        return [
            Finding(
                after.scope, after.at_ms, after.verdict, after.value, after.window,
                evidence, revision=True,
            )
        ]  # fmt: skip

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        out = self._close(watermark_ms)
        start, end = window_of(obs.ts_ms, self.spec.window, self._tz)
        if end + self._lateness <= watermark_ms:
            self.dropped_late += 1
            return out
        key = device_scope(obs, metric=self.spec.metric).key
        if obs.metric != self.spec.metric:
            self._o2_seen.add(key)
        buckets = self._buckets.setdefault(key, {})
        bucket = buckets.get(start)
        if bucket is None:
            bucket = buckets[start] = Bucket(start, end, closed=end <= watermark_ms)
            self._due(end + self._lateness if bucket.closed else end)
        if bucket.add(obs, is_o2=obs.metric != self.spec.metric) and bucket.closed:
            out += self._revise(key, bucket, {"late_reading": obs.to_json()})
        return out

    def advance(self, watermark_ms: int) -> list[Finding]:
        return self._close(watermark_ms)

    def _due(self, at_ms: int) -> None:
        if self._next_due is None or at_ms < self._next_due:
            self._next_due = at_ms

    def _close(self, watermark_ms: int) -> list[Finding]:
        if self._next_due is None or watermark_ms < self._next_due:
            return []
        due = sorted(
            (b.end_ms, key, b.start_ms)
            for key, buckets in self._buckets.items()
            for b in buckets.values()
            if not b.closed and b.end_ms <= watermark_ms
        )
        out: list[Finding] = []
        for _, key, start in due:
            bucket = self._buckets[key][start]
            bucket.closed = True
            if not bucket.readings:  # O2 alone: the device does not report the metric
                continue
            prior = self._breaching.get(key, False)
            finding = self._judge(key, bucket, prior)
            bucket.prior = prior
            bucket.verdict, bucket.value = finding.verdict.value, finding.value
            if finding.verdict is not Verdict.INSUFFICIENT:
                self._breaching[key] = finding.verdict is Verdict.BREACH
            if self.spec.o2_correction is not None and key not in self._o2_seen:
                if key in self._o2_warned:
                    continue
                self._o2_warned.add(key)
                finding = self._no_o2_warning(finding)
            out.append(finding)
        self._forget(watermark_ms)
        return out

    def _forget(self, watermark_ms: int) -> None:
        """Drop closed windows past their lateness; recompute the next due time."""
        self._next_due = None
        for key in list(self._buckets):
            buckets = self._buckets[key]
            for start, b in list(buckets.items()):
                if b.closed and b.end_ms + self._lateness <= watermark_ms:
                    del buckets[start]
                else:
                    self._due(b.end_ms + self._lateness if b.closed else b.end_ms)
            if not buckets:
                del self._buckets[key]

    def _no_o2_warning(self, finding: Finding) -> Finding:
        assert self.spec.o2_correction is not None
        o2 = self.spec.o2_correction.o2_metric
        reason = (
            f"no {o2} reading has ever arrived for this device, so no"
            f" {self.spec.metric} reading can be corrected: map the analyser's O2"
            " (HJ 212 a19001) to this device. Reported once; its windows are judged"
            " again once O2 arrives"
        )
        evidence = {**finding.evidence, "reason": reason, "config_warning": True}
        return Finding(
            finding.scope, finding.at_ms, finding.verdict, finding.value,
            finding.window, evidence,
        )  # fmt: skip

    def _judge(
        self, key: str, bucket: Bucket, prior: bool, marks: MarkBook | None = None
    ) -> Finding:
        """The verdict of ``bucket`` with the engine's marks (or ``marks``)."""
        spec = self.spec
        marked = self._marked(key, self._marks if marks is None else marks)
        summary = summarise(bucket, spec.valid_flags, spec.o2_correction, marked)
        required = spec.required_valid(bucket.end_ms - bucket.start_ms)
        value = summary.aggregate(spec.aggregate)
        limits = spec.limits_for(scope_from_key(key))
        evidence: JSON = {
            "aggregate": spec.aggregate,
            "required_valid": required,
            **summary.evidence,
            **limits.evidence(),
        }
        if spec.o2_correction is not None:
            evidence["o2_correction"] = spec.o2_correction.model_dump()
        if spec.validity is not None:
            evidence["validity"] = spec.validity
        if value is None or summary.counts["valid"] < required:
            evidence["partial_value"] = value
            verdict, value = Verdict.INSUFFICIENT, None
        else:
            breaching = limits.next_state(prior, value)
            verdict = Verdict.BREACH if breaching else Verdict.OK
        return Finding(
            scope_from_key(key),
            bucket.end_ms,
            verdict,
            value,
            Window(bucket.start_ms, bucket.end_ms),
            evidence,
        )

    def _marked(self, key: str, marks: MarkBook | None) -> Marked | None:
        if marks is None or not len(marks):
            return None
        park, enterprise, device, _ = key.split("/")  # a device scope: no "*"
        o2 = self.spec.o2_correction
        o2_metric = o2.o2_metric if o2 is not None else self.spec.metric
        metric = self.spec.metric

        def marked(is_o2: bool, ts_ms: int) -> Mark | None:
            name = o2_metric if is_o2 else metric
            return marks.covering(park, enterprise, device, name, ts_ms)

        return marked

    def _revise(self, key: str, bucket: Bucket, cause: JSON) -> list[Finding]:
        """A revision of closed ``bucket`` if its verdict or value changed;
        ``cause`` (a late reading, a mark) goes into the evidence."""
        if not bucket.readings:
            return []
        new = self._judge(key, bucket, bucket.prior)
        if (new.verdict.value, new.value) == (bucket.verdict, bucket.value):
            return []
        previous = {"verdict": bucket.verdict, "value": bucket.value}
        bucket.verdict, bucket.value = new.verdict.value, new.value
        evidence = {**new.evidence, "previous": previous, **cause}
        return [
            Finding(
                new.scope,
                new.at_ms,
                new.verdict,
                new.value,
                new.window,
                evidence,
                revision=True,
            )
        ]

    def snapshot(self) -> JSON:
        return {
            "dropped_late": self.dropped_late,
            "breaching": dict(sorted(self._breaching.items())),
            "o2_seen": sorted(self._o2_seen),
            "o2_warned": sorted(self._o2_warned),
            "buckets": {
                key: [b.to_json() for _, b in sorted(buckets.items())]
                for key, buckets in sorted(self._buckets.items())
            },
        }

    def restore(self, state: JSON) -> None:
        self.dropped_late = state["dropped_late"]
        self._breaching = dict(state["breaching"])
        self._buckets = {
            key: {b["start"]: Bucket.from_json(b) for b in buckets}
            for key, buckets in state["buckets"].items()
        }
        # Older snapshots have no O2 record: count every known scope as seen.
        known = sorted(set(self._breaching) | set(self._buckets))
        self._o2_seen = set(state.get("o2_seen", known))
        self._o2_warned = set(state.get("o2_warned", []))
        self._next_due = None
        for buckets in self._buckets.values():
            for b in buckets.values():
                self._due(b.end_ms + self._lateness if b.closed else b.end_ms)
