"""Data marks as the rule core sees them: periods of a device's data that are not
used to judge an exceedance.

A *mark* (``storage/migrations/common/0010_marks.sql``) says that the data of one
device — one metric, or all its metrics — in ``[start_ms, end_ms)`` was taken
during a start-up, a shutdown, maintenance, a calibration... An *invalid* mark *in
force* (entered, not superseded, not withdrawn, not rejected by a regulator)
excludes that data from exceedance judgement; the rule kinds that judge readings
treat a reading covered by one as not valid, like a reading whose quality flag is
not among the rule's ``valid_flags``.

The core is told about marks through :class:`MarkUpdate` values, in the order the
runner reads them: "mark N now counts" (``active``) or "mark N no longer counts"
(withdrawn, superseded, rejected, or not an invalid mark). :class:`MarkBook` keeps
the marks that count, and :meth:`MarkBook.apply` answers what an update changed:
applying the same update twice changes nothing, so a runner may re-read a range of
marks after a restart or for safety without any effect beyond the first.

Pure: no clock, no I/O. Times are event time in UTC milliseconds; a mark covers
``start_ms <= ts < end_ms`` (half-open, like windows: a start-up mark 08:00-09:00
covers the 08:00 reading, not the 09:00 one).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from rules.model import JSON


@dataclass(frozen=True, slots=True, order=True)
class Mark:
    """One mark's period and subject (``metric`` ``None``: all of the device's)."""

    id: int
    park: str
    enterprise: str
    device: str
    metric: str | None
    start_ms: int
    end_ms: int
    kind: str = "other"

    def covers(
        self, park: str, enterprise: str, device: str, metric: str, ts_ms: int
    ) -> bool:
        return (
            self.start_ms <= ts_ms < self.end_ms
            and (self.metric is None or self.metric == metric)
            and (self.device, self.enterprise, self.park) == (device, enterprise, park)
        )

    def overlaps(self, start_ms: int, end_ms: int) -> bool:
        """Whether the mark covers part of ``[start_ms, end_ms)``."""
        return self.start_ms < end_ms and start_ms < self.end_ms

    def to_json(self) -> JSON:
        return {
            "id": self.id,
            "park": self.park,
            "enterprise": self.enterprise,
            "device": self.device,
            "metric": self.metric,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: JSON) -> Mark:
        return cls(
            id=data["id"],
            park=data["park"],
            enterprise=data["enterprise"],
            device=data["device"],
            metric=data["metric"],
            start_ms=data["start_ms"],
            end_ms=data["end_ms"],
            kind=data["kind"],
        )


@dataclass(frozen=True, slots=True)
class MarkUpdate:
    """What mark ``mark.id`` means now: ``active`` when it is in force and invalid
    (its data is not judged), not active when withdrawn, superseded, rejected or a
    mark that does not invalidate data."""

    mark: Mark
    active: bool


@dataclass(frozen=True, slots=True)
class MarkChange:
    """An update that changed what counts: the mark now ``applied`` or ``lifted``."""

    mark: Mark
    change: Literal["applied", "lifted"]

    def to_json(self) -> JSON:
        return {"change": self.change, **self.mark.to_json()}


class MarkBook:
    """The marks that count now, by device; snapshot-able with the engine."""

    def __init__(self) -> None:
        self._marks: dict[int, Mark] = {}
        self._by_device: dict[tuple[str, str, str], list[Mark]] = {}

    def __len__(self) -> int:
        return len(self._marks)

    def apply(self, update: MarkUpdate) -> MarkChange | None:
        """Take ``update``; what it changed (``None``: nothing, e.g. a repeat)."""
        mark = update.mark
        known = self._marks.get(mark.id)
        if update.active:
            if known == mark:
                return None
            if known is not None:  # marks never change in place: keep it coherent
                self._remove(known)
            self._add(mark)
            return MarkChange(mark, "applied")
        if known is None:
            return None
        self._remove(known)
        return MarkChange(known, "lifted")

    def covering(
        self, park: str, enterprise: str, device: str, metric: str, ts_ms: int
    ) -> Mark | None:
        """The mark (lowest id) that makes this reading not count, if any."""
        for mark in self._by_device.get((park, enterprise, device), ()):
            if mark.covers(park, enterprise, device, metric, ts_ms):
                return mark
        return None

    @classmethod
    def of(cls, marks: Iterable[Mark]) -> MarkBook:
        """A book holding ``marks`` (all counting)."""
        book = cls()
        for mark in marks:
            book.apply(MarkUpdate(mark, active=True))
        return book

    def forget(self, before_ms: int) -> None:
        """Drop the marks that end at or before ``before_ms`` (no reading they
        cover can still be judged)."""
        for mark in [m for m in self._marks.values() if m.end_ms <= before_ms]:
            self._remove(mark)

    def _add(self, mark: Mark) -> None:
        self._marks[mark.id] = mark
        marks = self._by_device.setdefault(
            (mark.park, mark.enterprise, mark.device), []
        )
        marks.append(mark)
        marks.sort()

    def _remove(self, mark: Mark) -> None:
        del self._marks[mark.id]
        key = (mark.park, mark.enterprise, mark.device)
        marks = self._by_device[key]
        marks.remove(mark)
        if not marks:
            del self._by_device[key]

    def snapshot(self) -> list[JSON]:
        return [m.to_json() for _, m in sorted(self._marks.items())]

    def restore(self, state: list[JSON]) -> None:
        self._marks, self._by_device = {}, {}
        for data in state:
            self._add(Mark.from_json(data))
