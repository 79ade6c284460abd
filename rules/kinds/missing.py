"""``kind: missing_data`` — a device that stops reporting is offline.

```yaml
- id: meter-offline
  kind: missing_data
  scope: {device: "meter-*"}
  metrics: [active_energy, active_power]   # a reading of any of them is "heard from"
  expected_interval: 10s                   # the device's polling period
  max_silence: 5min                        # offline after this long without a reading
  valid_flags: [N]                         # optional; default: every flag counts
```

Per device (scope ``park/enterprise/device``, no metric): when the watermark passes
the time the device was last heard from plus ``max_silence``, a BREACH finding at
that instant (``at_ms = heard + max_silence``; value: the silence in seconds;
evidence: the last reading's time, the silence, the expected interval). The device's
next reading is an OK finding ("back") with the gap and the readings missed in it.

Decisions:

- Data marks (:mod:`rules.marks`) do not apply: a mark says data is not valid for
  judging an exceedance, not that the device is silent; "heard from" is any reading.

- "Heard from" is ``max(reading time, watermark)`` when a reading arrives. A reading
  behind the watermark (a site replaying its outbox after an outage) shows the device
  talks again; judging it by its old time would flag it offline again at every
  watermark move while the replay catches up.
- Any flag counts by default (a CEMS in calibration still reports); narrow
  ``valid_flags`` for "no valid data" instead of "no data".
- Only devices heard from at least once are known: a registered device that never
  reported needs the device registry, which is not part of the pure core.
- The watermark moves only with readings. If every device of the stream falls
  silent, nothing advances it: the engine's ``idle(watermark)`` (a silence
  watermark from the live runner's clock, or the end of a file) advances this kind
  alone, so offline is reported while the devices are still silent. The finding
  is the one a later reading would have produced: same time, same evidence.
- The boundary: offline once silent for *more* than ``max_silence`` (a device last
  heard at T is offline when the watermark passes T + max_silence, at_ms = T +
  max_silence); silent for exactly ``max_silence`` is still online.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from rules.kinds.base import (
    PackContext,
    RuleSpec,
    device_scope,
    parse_duration,
    scope_from_key,
)
from rules.model import JSON, Finding, Obs, Verdict
from smartpark.catalogue import check_metric
from smartpark.yamlfile import located

ALL_FLAGS = ("N", "F", "M", "S", "D", "C", "T", "B")


class MissingDataSpec(RuleSpec):
    kind: Literal["missing_data"]
    # "metrics" in the pack; RuleSpec.metrics() is the engine's selection method.
    heard_metrics: tuple[str, ...] = Field(alias="metrics", min_length=1)
    expected_interval: int
    max_silence: int
    valid_flags: tuple[str, ...] = ALL_FLAGS

    @field_validator("heard_metrics")
    @classmethod
    def _metrics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for i, name in enumerate(value):
            try:
                check_metric(name)
            except ValueError as exc:
                raise located(str(exc), i) from None
        return value

    @field_validator("expected_interval", "max_silence", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> int:
        return parse_duration(value)

    @model_validator(mode="after")
    def _silence(self) -> MissingDataSpec:
        if self.max_silence < self.expected_interval:
            raise located(
                f"max_silence ({self.max_silence / 1000:g}s) must be at least"
                f" expected_interval ({self.expected_interval / 1000:g}s)",
                "max_silence",
            )
        return self

    def metrics(self) -> frozenset[str]:
        return frozenset(self.heard_metrics)

    def selects(self, obs: Obs) -> bool:
        # Any series is the device speaking: a logger that sends only hourly data
        # is not offline between its hours (set max_silence accordingly).
        return obs.metric in self.heard_metrics and self.scope.matches(obs)


@dataclass(slots=True)
class _Device:
    last_ms: int  # the newest reading's time
    heard_ms: int  # max(reading time, watermark) when last heard from
    offline_ms: int | None = None  # offline since (heard + max_silence)


class MissingDataEvaluator:
    def __init__(self, spec: MissingDataSpec, ctx: PackContext) -> None:
        self.spec = spec
        self.dropped_late = 0
        self._devices: dict[str, _Device] = {}  # scope key -> device
        # (deadline, key): at most one per online device, possibly stale (the
        # device was heard since); checked against _devices when it falls due.
        self._due: list[tuple[int, str]] = []

    def feed(self, obs: Obs, watermark_ms: int) -> list[Finding]:
        if obs.quality not in self.spec.valid_flags:
            return []
        key = device_scope(obs).key
        heard = max(obs.ts_ms, watermark_ms)
        dev = self._devices.get(key)
        if dev is None:
            self._devices[key] = _Device(obs.ts_ms, heard)
            heapq.heappush(self._due, (heard + self.spec.max_silence, key))
            return []
        last, before, offline = dev.last_ms, dev.heard_ms, dev.offline_ms
        dev.last_ms = max(last, obs.ts_ms)
        dev.heard_ms = max(before, heard)
        found: list[Finding] = []
        if offline is None:
            if dev.heard_ms <= before + self.spec.max_silence:
                return []
            # A silence nothing could see (the whole stream was silent), ended by
            # this reading: record it as it would have been seen.
            offline = before + self.spec.max_silence
            found.append(self._offline(key, last, before, offline))
        else:
            heapq.heappush(self._due, (dev.heard_ms + self.spec.max_silence, key))
        dev.offline_ms = None
        gap = obs.ts_ms - last
        return [
            *found,
            Finding(
                scope_from_key(key),
                dev.heard_ms,
                Verdict.OK,
                (dev.heard_ms - before) / 1000,
                evidence={
                    "back": True,
                    "offline_since_ms": offline,
                    "last_reading_ms": last,
                    "reading": obs.to_json(),
                    "silence_ms": dev.heard_ms - before,
                    "gap_ms": gap,
                    "missed_readings": max(0, gap // self.spec.expected_interval - 1),
                    "delivered_late": obs.ts_ms < watermark_ms,
                },
            ),
        ]

    def advance(self, watermark_ms: int) -> list[Finding]:
        found: list[Finding] = []
        while self._due and self._due[0][0] < watermark_ms:
            _, key = heapq.heappop(self._due)
            dev = self._devices[key]
            if dev.offline_ms is not None:
                continue
            deadline = dev.heard_ms + self.spec.max_silence
            if deadline >= watermark_ms:  # heard from since: wait again
                heapq.heappush(self._due, (deadline, key))
                continue
            dev.offline_ms = deadline
            found.append(self._offline(key, dev.last_ms, dev.heard_ms, deadline))
        # Stale heap entries pop in an order a restored heap would not have.
        return sorted(found, key=lambda f: (f.at_ms, f.scope.key))

    def _offline(self, key: str, last: int, heard: int, at_ms: int) -> Finding:
        return Finding(
            scope_from_key(key),
            at_ms,
            Verdict.BREACH,
            self.spec.max_silence / 1000,
            evidence={
                "last_reading_ms": last,
                "heard_ms": heard,
                "silence_ms": self.spec.max_silence,
                "max_silence_ms": self.spec.max_silence,
                "expected_interval_ms": self.spec.expected_interval,
            },
        )

    def snapshot(self) -> JSON:
        return {
            "devices": {
                key: [d.last_ms, d.heard_ms, d.offline_ms]
                for key, d in sorted(self._devices.items())
            }
        }

    def restore(self, state: JSON) -> None:
        self._devices = {k: _Device(*v) for k, v in state["devices"].items()}
        self._due = [
            (d.heard_ms + self.spec.max_silence, key)
            for key, d in sorted(self._devices.items())
            if d.offline_ms is None
        ]
        heapq.heapify(self._due)
