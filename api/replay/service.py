"""A replay from storage: which pack versions, what to read, the diff, the evidence.

:func:`run_replay` is what the API's jobs and ``smartpark replay run`` both call.
It stands on the pure :mod:`rules.replay` (the rule core, the diff, the digests)
and reads through :mod:`storage.history` and :mod:`storage.rule_packs`.

Contracts:

- **Pack.** A proposed pack (YAML text) runs over the whole range; its evidence
  hash is the SHA-256 of its UTF-8 bytes. A named version runs over the whole
  range as recorded in ``rule_packs`` (its hash is the recorded one). Otherwise
  the range is split where the version in force changed
  (:meth:`storage.rule_packs.RulePackStore.in_force`) and each part is replayed
  with its own version, each reading its own lead-in; a part of the range with no
  version in force is a :class:`~smartpark.errors.NotFound` naming it. The pack's
  name: given, else the only pack recorded (several: name one).
- **Scope.** Park, enterprise, outlet (its registered devices, retired ones too)
  or device. The replay reads the scope's rows only, so for an outlet or a device
  it reports (and compares with live) only events about those devices: an
  enterprise-wide quota or ratio would be judged on part of its data.
- **Live side of the diff.** The live events of the pack's name, in the scope,
  whose key time falls in the part of the range each version covers.
- **Evidence** (:class:`Evidence`): per part the pack name, version and SHA-256,
  time zone, the range reported and the span read, the row count and the
  SHA-256 of the rows and of the marks (:mod:`rules.replay` documents the
  serialisation); the scope, the platform version and the start and end times.
- Progress is reported through ``await progress(rows_read)`` after each batch;
  cancelling the task that runs it stops the read (the cursor's transaction ends).
  :func:`estimate_rows` counts the rows of the range itself (not the lead-in).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml

from rules.marks import Mark
from rules.model import JSON, AlertEvent, Obs
from rules.pack import Pack, parse_pack
from rules.replay import DiffEntry, Plan, Replayer, diff, marks_digest, plan
from smartpark.clock import MsClock, system_ms
from smartpark.errors import ConfigError, NotFound, UsageError
from storage import Storage
from storage.history import HistoryScope, HistoryStore
from storage.rule_packs import PackVersionRow, RulePackStore

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ms(at: datetime) -> int:
    return (at - _EPOCH) // timedelta(milliseconds=1)


def at(ms_: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms_)


@dataclass(frozen=True, slots=True)
class ReplayScope:
    """Exactly one of the narrower parts may be set, within ``park``."""

    park: str
    enterprise: str | None = None
    outlet: str | None = None
    device: str | None = None

    def to_json(self) -> JSON:
        return {
            "park": self.park, "enterprise": self.enterprise, "outlet": self.outlet,
            "device": self.device,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class ReplayRequest:
    scope: ReplayScope
    start: datetime
    end: datetime
    pack_name: str | None = None
    pack_version: str | None = None
    proposed: str | None = None  # a pack's YAML text
    warmup_ms: int = 0

    def to_json(self) -> JSON:
        return {
            "scope": self.scope.to_json(),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "pack_name": self.pack_name,
            "pack_version": self.pack_version,
            "proposed": self.proposed,
            "warmup_ms": self.warmup_ms,
        }

    @classmethod
    def from_json(cls, data: JSON) -> ReplayRequest:
        return cls(
            ReplayScope(**data["scope"]),
            datetime.fromisoformat(data["start"]),
            datetime.fromisoformat(data["end"]),
            data.get("pack_name"),
            data.get("pack_version"),
            data.get("proposed"),
            int(data.get("warmup_ms", 0)),
        )


@dataclass(frozen=True, slots=True)
class PartEvidence:
    pack: str
    version: str
    sha256: str
    source: str  # "recorded" (rule_packs) or "proposed"
    timezone: str
    start: datetime
    end: datetime
    read_from: datetime
    read_until: datetime
    rows: int
    rows_sha256: str
    marks: int
    marks_sha256: str

    def to_json(self) -> JSON:
        return {
            "pack": self.pack, "version": self.version, "sha256": self.sha256,
            "source": self.source, "timezone": self.timezone,
            "start": self.start.isoformat(), "end": self.end.isoformat(),
            "read_from": self.read_from.isoformat(),
            "read_until": self.read_until.isoformat(), "rows": self.rows,
            "rows_sha256": self.rows_sha256, "marks": self.marks,
            "marks_sha256": self.marks_sha256,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Evidence:
    scope: ReplayScope
    start: datetime
    end: datetime
    parts: tuple[PartEvidence, ...]
    platform_version: str
    started_at: datetime
    finished_at: datetime

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.parts)

    def to_json(self) -> JSON:
        return {
            "scope": self.scope.to_json(),
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "rows": self.rows,
            "parts": [p.to_json() for p in self.parts],
            "platform_version": self.platform_version,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
        }


@dataclass(frozen=True, slots=True)
class ReplayResult:
    events: list[AlertEvent]
    live: list[JSON]
    diff: list[DiffEntry]
    evidence: Evidence

    def summary(self) -> JSON:
        counts = dict.fromkeys(("new", "vanished", "changed"), 0)
        for entry in self.diff:
            counts[entry.status] += 1
        return {
            "events": len(self.events),
            "live_events": len(self.live),
            **counts,
            "rows": self.evidence.rows,
            "evidence": self.evidence.to_json(),
        }


@dataclass(frozen=True, slots=True)
class _Part:
    pack: Pack
    sha256: str
    source: str
    start: datetime
    end: datetime


def platform_version() -> str:
    try:
        return importlib.metadata.version("smartpark")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def parse_proposed(text: str, *, source: str = "proposed pack") -> tuple[Pack, str]:
    """A proposed pack from its YAML text, and the SHA-256 of its UTF-8 bytes;
    :class:`ConfigError` naming the problem otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    pack = parse_pack(data, source=source)
    return pack, hashlib.sha256(text.encode()).hexdigest()


def _recorded(row: PackVersionRow) -> Pack:
    pack, _ = parse_proposed(row.content, source=f"{row.pack} {row.version}")
    return pack


Progress = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class _Progress:
    report: Progress | None
    rows: int = 0

    async def add(self, n: int) -> None:
        self.rows += n
        if self.report is not None:
            await self.report(self.rows)


@dataclass(slots=True)
class _Scoped:
    history: HistoryScope
    devices: frozenset[str] | None = field(default=None)

    def keeps(self, event: JSON) -> bool:
        s = event["scope"]
        h = self.history
        if s.get("park") != h.park:
            return False
        if h.enterprise is not None and s.get("enterprise") != h.enterprise:
            return False
        return self.devices is None or s.get("device") in self.devices


async def _resolve_scope(storage: Storage, scope: ReplayScope) -> _Scoped:
    narrower = [x for x in (scope.enterprise, scope.outlet, scope.device) if x]
    if len(narrower) > 1:
        raise UsageError("give at most one of enterprise, outlet or device")
    history = HistoryStore(storage)
    if scope.outlet is not None:
        found = await history.outlet_devices(scope.outlet)
        if found is None or found.park != scope.park:
            raise NotFound(f"no outlet {scope.outlet!r} in park {scope.park!r}")
        hs = HistoryScope(scope.park, found.enterprise, found.devices)
        return _Scoped(hs, frozenset(found.devices))
    if scope.device is not None:
        owner = await history.device_owner(scope.device)
        if owner is None or owner[0] != scope.park:
            raise NotFound(
                f"no telemetry of device {scope.device!r} in park {scope.park!r}"
            )
        hs = HistoryScope(scope.park, owner[1], (scope.device,))
        return _Scoped(hs, frozenset({scope.device}))
    return _Scoped(HistoryScope(scope.park, scope.enterprise))


async def estimate_rows(storage: Storage, request: ReplayRequest) -> int:
    """The stored rows of the request's scope and range (module contract)."""
    scoped = await _resolve_scope(storage, request.scope)
    return await HistoryStore(storage).estimate(
        scoped.history, request.start, request.end
    )


async def _parts(storage: Storage, request: ReplayRequest) -> list[_Part]:
    if request.proposed is not None:
        pack, digest = parse_proposed(request.proposed)
        return [_Part(pack, digest, "proposed", request.start, request.end)]
    packs = RulePackStore(storage)
    name = request.pack_name
    if name is None:
        names = sorted({r.pack for r in await packs.versions()})
        if len(names) != 1:
            raise UsageError(
                "name the pack to replay (recorded: "
                f"{', '.join(names) or 'none: no runner has run one yet'})"
            )
        name = names[0]
    if request.pack_version is not None:
        row = await packs.get(name, request.pack_version)
        if row is None:
            raise NotFound(f"no version {request.pack_version!r} of pack {name!r}")
        return [_Part(_recorded(row), row.sha256, "recorded", request.start,
                      request.end)]  # fmt: skip
    spans = await packs.in_force(name, request.start, request.end)
    covered = request.start
    for span in spans:
        if span.start > covered:
            break
        covered = span.end
    if covered < request.end:
        raise NotFound(
            f"no version of pack {name!r} was in force at {covered.isoformat()}"
            " (give --pack-version or a proposed pack)"
        )
    return [
        _Part(_recorded(s.version), s.version.sha256, "recorded", s.start, s.end)
        for s in spans
    ]


async def run_replay(
    storage: Storage,
    request: ReplayRequest,
    *,
    clock: MsClock = system_ms,
    progress: Progress | None = None,
    batch_rows: int = 5000,
) -> ReplayResult:
    """Replay ``request`` (see the module contract)."""
    if request.end <= request.start:
        raise UsageError("the end must be after the start")
    started = at(clock())
    scoped = await _resolve_scope(storage, request.scope)
    parts = await _parts(storage, request)
    counter = _Progress(progress)
    events: list[AlertEvent] = []
    live: list[JSON] = []
    evidence: list[PartEvidence] = []
    for part in parts:
        p = plan(part.pack, ms(part.start), ms(part.end), warmup_ms=request.warmup_ms)
        found, ev = await _replay_part(
            storage, part, p, scoped, counter, clock=clock, batch_rows=batch_rows
        )
        events += found
        evidence.append(ev)
        live += await HistoryStore(storage).live_events(
            scoped.history, pack=part.pack.pack, start=part.start, end=part.end
        )
    live = [e for e in live if scoped.keeps(e)]
    replayed = [e.to_json() for e in events]
    return ReplayResult(
        events,
        live,
        diff(live, replayed),
        Evidence(
            request.scope,
            request.start,
            request.end,
            tuple(evidence),
            platform_version(),
            started,
            at(clock()),
        ),
    )


async def _replay_part(
    storage: Storage,
    part: _Part,
    p: Plan,
    scoped: _Scoped,
    counter: _Progress,
    *,
    clock: MsClock,
    batch_rows: int,
) -> tuple[list[AlertEvent], PartEvidence]:
    history = HistoryStore(storage)
    read_from, read_until = at(p.read_from_ms), at(p.read_until_ms)
    mark_rows = await history.marks(scoped.history, read_from, read_until)
    marks = [
        Mark(
            r.id, r.park, r.enterprise, r.device, r.metric, ms(r.start_at),
            ms(r.end_at), r.kind,
        )
        for r in mark_rows
    ]  # fmt: skip
    replayer = Replayer(p, marks, keep=lambda e: scoped.keeps(e.to_json()))
    events: list[AlertEvent] = []
    # aclosing: leaving early ends the cursor's transaction now, not at collection
    reading = history.read(scoped.history, read_from, read_until, batch_rows=batch_rows)
    async with contextlib.aclosing(reading) as batches:
        async for batch in batches:
            events += replayer.feed(_as_obs(batch))
            await counter.add(len(batch))
            if replayer.done:
                break
    # Silence is judged at the end of what was taken, never after now: live could
    # not have judged a device silent before its silence happened.
    taken_until = replayer.read_until_ms
    silence = min(taken_until, clock()) - p.pack.watermark_delay
    events += replayer.finish(silence)
    return events, PartEvidence(
        part.pack.pack, part.pack.version, part.sha256, part.source,
        part.pack.timezone, part.start, part.end, read_from, at(taken_until),
        replayer.rows, replayer.rows_digest, len(marks), marks_digest(marks),
    )  # fmt: skip


def _as_obs(rows: Sequence[Any]) -> list[Obs]:
    # HistoryRow has Obs's fields in Obs's order.
    return [Obs._make(r) for r in rows]
