"""Coverage, computed never declared: expected counts, rates, gaps and the
definitions the API returns with every figure (pure, no I/O).

What is expected comes from the registry only: a device reports each of its
registered metrics in each HJ 212 data type it is registered for
(:func:`reported_types`), at that data type's interval, from when it was
registered until it was retired (or until now). What was received and what was
valid come from the stored readings (``storage.coverage`` counts them in SQL);
this module turns the counts into figures and says what each figure means.

The figures (written once, in :data:`DEFINITIONS`, returned by the API):

- **expected** per series (device, metric, data type) and period: the period's
  length, clipped to the device's registration (registered .. retired, and now
  for the current period), divided by the data type's interval, rounded down;
  daily data: one per local midnight in the clipped period.
- **received**: distinct stored readings of the series in the clipped period
  (the ``value`` stat only: an interval's Min/Max/Cou are one reading, not
  three), capped at expected, so a rate never exceeds 100 %.
- **valid**: received readings flagged N and outside every invalid-marked period
  (in force, not rejected), capped at the capped received.
- **transmission rate** = received / expected; **validity rate** = valid /
  received; **coverage rate** = transmission x validity = valid / expected.
  Sums over series weigh every expected reading alike.
- **park coverage %**: the mean over the park's registered enterprises (active
  in the period) of each enterprise's coverage rate; an enterprise with no
  device, or whose devices expected nothing in the period, counts 0: a park is
  not 100 % covered while one registered enterprise sends nothing.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Literal
from zoneinfo import ZoneInfo

PeriodUnit = Literal["day", "month"]
DATA_TYPES = ("realtime", "minute", "hour", "day")
DAY_S = 86_400
HOUR_S = 3_600
# A gap is a run of missing readings longer than this many intervals; a device
# is "reporting now" with a reading within this many intervals of now.
GAP_INTERVALS = 2
REPORTING_INTERVALS = 2

DEFINITIONS: dict[str, str] = {
    "expected": (
        "per series (device, registered metric, registered HJ 212 data type) and"
        " period: the period's length clipped to the device's registration"
        " (registered until retired, and until now) divided by the data type's"
        " reporting interval, rounded down; daily data: one per local midnight in"
        " the clipped period"
    ),
    "received": (
        "distinct readings stored for the series in the clipped period (stat"
        " 'value' only, so an interval's Min/Max/Cou count once), capped at"
        " expected so that no rate exceeds 100 %"
    ),
    "valid": (
        "received readings with HJ 212 flag N that lie outside every"
        " invalid-marked period (marks in force: not superseded, not rejected)"
    ),
    "transmission_rate": "received / expected (null when nothing was expected)",
    "validity_rate": "valid / received (null when nothing was received)",
    "coverage_rate": (
        "transmission_rate x validity_rate = valid / expected, the regulator's"
        " form; sums over series and data types weigh every expected reading alike"
    ),
    "coverage_percent": (
        "park level: 100 x the mean over the park's registered enterprises (not"
        " retired before the period, registered before its end) of each"
        " enterprise's coverage_rate (sum of valid / sum of expected over its"
        " registered devices and metrics); an enterprise without devices, or"
        " whose devices expected nothing in the period, counts 0. Enterprise"
        " level: 100 x coverage_rate, 0 for one that expected nothing; outlet and"
        " device level: 100 x coverage_rate"
    ),
    "reporting_now": (
        "a registered, unretired device with a stored reading within"
        f" {REPORTING_INTERVALS} x its shortest reporting interval of as_of"
    ),
    "gap": (
        f"a run of missing readings of a series longer than {GAP_INTERVALS} x its"
        " interval: [from, to) from the first missing slot (or the start of the"
        " clipped range) to the next reading (or the end); missed = round((to -"
        " from) / interval). Cause: marked:<kind> when it overlaps an"
        " invalid-marked period, gateway_offline when every other registered"
        " device of the enterprise (at least one) is silent over it too,"
        " device_offline otherwise"
    ),
    "sequence": (
        "per device and edge outbox epoch: the polls stored (distinct sequence"
        " numbers; every reading of one poll shares its number), the first and"
        " last number seen in the range, and the numbers missing between them"
        " (missing = last - first + 1 - polls), each run of missing numbers with"
        " the polls around it. The edge numbers every poll it reads, in its"
        " outbox, before anything is sent; a poll refused by a full outbox keeps"
        " its number. A missing number is a poll the gateway read that the"
        " platform never stored: lost at the edge (counted there as refused or"
        " dropped) or on the way (a dead letter). A device silent because it was"
        " not read leaves a time gap, not a missing number. A poll belongs to the"
        " latest epoch first stored at or before its time; numbers before the"
        " range's first poll are not judged"
    ),
}


# -- the registry's expectations -----------------------------------------------------


def reported_types(interval_s: int, data_types: Mapping[str, int]) -> dict[str, int]:
    """HJ 212 data type -> interval (s) a device reports: its registered
    ``data_types``, or real-time every ``interval_s`` when it lists none."""
    if not data_types:
        return {"realtime": interval_s}
    return {k: int(v) for k, v in data_types.items()}


def check_data_types(value: Mapping[str, int]) -> dict[str, int]:
    """``value`` if it is a valid registry ``data_types``, else ValueError naming
    the entry: real-time 1..86400 s, minute data a divisor of an hour (60..3600),
    hourly data 3600, daily data 86400."""
    out: dict[str, int] = {}
    for kind, seconds in value.items():
        if kind not in DATA_TYPES:
            raise ValueError(f"{kind!r}: not an HJ 212 data type {DATA_TYPES}")
        ok = {
            "realtime": 1 <= seconds <= DAY_S,
            "minute": 60 <= seconds <= HOUR_S and HOUR_S % seconds == 0,
            "hour": seconds == HOUR_S,
            "day": seconds == DAY_S,
        }[kind]
        if not ok:
            rule = {
                "realtime": "1 to 86400 seconds",
                "minute": "a divisor of 3600 between 60 and 3600 seconds",
                "hour": "3600 seconds",
                "day": "86400 seconds",
            }[kind]
            raise ValueError(f"{kind}: interval must be {rule}, not {seconds}")
        out[kind] = seconds
    return out


# -- local periods ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalPeriod:
    """A local day or month: ``label`` its first local date; ``start``/``end``
    its bounds in UTC (local midnights)."""

    label: date
    start: datetime
    end: datetime


def local_midnight(day: date, tz: ZoneInfo) -> datetime:
    """The UTC instant of ``day``'s local midnight in ``tz``."""
    return datetime.combine(day, time(), tzinfo=tz).astimezone(UTC)


def _next_month(day: date) -> date:
    return date(day.year + day.month // 12, day.month % 12 + 1, 1)


def period_labels(first: date, last: date, unit: PeriodUnit) -> list[date]:
    """The first local date of each day, or each month, from ``first`` to
    ``last`` inclusive (months: those containing them)."""
    if unit == "day":
        return [first + timedelta(days=i) for i in range((last - first).days + 1)]
    out = []
    day = first.replace(day=1)
    while day <= last:
        out.append(day)
        day = _next_month(day)
    return out


def local_periods(
    first: date, last: date, unit: PeriodUnit, tz: ZoneInfo
) -> list[LocalPeriod]:
    """The local days (or months) ``first`` .. ``last`` inclusive in ``tz``: a
    day lasts 23 or 25 hours where the zone changes its offset."""
    out = []
    for label in period_labels(first, last, unit):
        after = label + timedelta(days=1) if unit == "day" else _next_month(label)
        out.append(
            LocalPeriod(label, local_midnight(label, tz), local_midnight(after, tz))
        )
    return out


def clip(
    start: datetime, end: datetime, registered: datetime,
    retired: datetime | None, now: datetime,
) -> tuple[datetime, datetime] | None:  # fmt: skip
    """``[start, end)`` within ``[registered, retired or now)``, or None if empty."""
    lo = max(start, registered)
    hi = min(end, now, retired or end)
    return (lo, hi) if hi > lo else None


def midnights(lo: datetime, hi: datetime, tz: ZoneInfo) -> int:
    """How many local midnights of ``tz`` fall in ``[lo, hi)``."""
    first = lo.astimezone(tz).date()
    if local_midnight(first, tz) < lo:
        first += timedelta(days=1)
    n = 0
    while local_midnight(first + timedelta(days=n), tz) < hi:
        n += 1
    return n


def expected_count(
    lo: datetime, hi: datetime, data_type: str, interval_s: int, tz: ZoneInfo
) -> int:
    """Readings of one series expected in the clipped period ``[lo, hi)``."""
    if hi <= lo:
        return 0
    if data_type == "day":
        return midnights(lo, hi, tz)
    return int((hi - lo).total_seconds() // interval_s)


# -- counts and rates ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Counts:
    """Expected, received and valid readings (received and valid capped)."""

    expected: int = 0
    received: int = 0
    valid: int = 0

    def __add__(self, other: Counts) -> Counts:
        return Counts(
            self.expected + other.expected,
            self.received + other.received,
            self.valid + other.valid,
        )

    @property
    def transmission_rate(self) -> float | None:
        return self.received / self.expected if self.expected else None

    @property
    def validity_rate(self) -> float | None:
        return self.valid / self.received if self.received else None

    @property
    def coverage_rate(self) -> float | None:
        return self.valid / self.expected if self.expected else None


def series_counts(expected: int, received: int, valid: int) -> Counts:
    """One series' counts with the caps of :data:`DEFINITIONS`."""
    r = min(received, expected)
    return Counts(expected, r, min(valid, r))


def total(counts: Iterable[Counts]) -> Counts:
    out = Counts()
    for c in counts:
        out = out + c
    return out


def park_coverage(enterprises: Sequence[Counts]) -> float | None:
    """The park coverage rate (0..1) over its registered enterprises' counts; an
    enterprise that expected nothing counts 0; None with no enterprise at all."""
    if not enterprises:
        return None
    return sum(c.coverage_rate or 0.0 for c in enterprises) / len(enterprises)


# -- gaps ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GapSpan:
    start: datetime
    end: datetime
    missed: int


def gap_span(
    previous: datetime, previous_is_edge: bool, following: datetime, interval_s: int
) -> GapSpan:
    """The missing span between a reading (or the clipped range's start,
    ``previous_is_edge``) and the next reading (or the range's end): from the
    first missing slot to ``following``; ``missed`` its slots, rounded."""
    step = timedelta(seconds=interval_s)
    start = previous if previous_is_edge else previous + step
    missed = max(0, round((following - start) / step))
    return GapSpan(start, following, missed)


def is_gap(previous: datetime, following: datetime, interval_s: int) -> bool:
    """Whether two consecutive points are further apart than a gap's threshold."""
    return following - previous > timedelta(seconds=GAP_INTERVALS * interval_s)


def gap_cause(mark_kind: str | None, others_silent: bool) -> str:
    """``marked:<kind>`` over ``gateway_offline`` over ``device_offline``."""
    if mark_kind is not None:
        return f"marked:{mark_kind}"
    return "gateway_offline" if others_silent else "device_offline"


# -- figures per level ---------------------------------------------------------------

Level = Literal["park", "enterprise", "outlet", "device"]
LEVELS: tuple[Level, ...] = ("park", "enterprise", "outlet", "device")


@dataclass(frozen=True, slots=True)
class DeviceSpec:
    """A registered device as coverage sees it."""

    id: str
    enterprise: str
    outlet: str | None
    interval_s: int
    metrics: tuple[str, ...]
    data_types: Mapping[str, int]
    registered: datetime
    retired: datetime | None

    @property
    def types(self) -> dict[str, int]:
        return reported_types(self.interval_s, self.data_types)


@dataclass(frozen=True, slots=True)
class EntitySpec:
    """A registered enterprise or outlet (``enterprise``: its own id for one)."""

    id: str
    enterprise: str
    registered: datetime
    retired: datetime | None

    def active(self, period: LocalPeriod) -> bool:
        return self.registered < period.end and (
            self.retired is None or self.retired > period.start
        )


@dataclass(frozen=True, slots=True)
class Figure:
    """One level's figures for one local period."""

    period: date
    level: Level
    id: str
    enterprise: str | None
    outlet: str | None
    counts: Counts
    by_type: dict[str, Counts]
    devices: int  # registered devices with something expected in the period
    coverage_percent: float | None


ReceivedKey = tuple[str, str, date]
"""(device, data type, period label)"""
Received = Mapping[ReceivedKey, Mapping[str, tuple[int, int]]]
"""(received, valid) per metric of each (device, data type, period label)"""


def device_counts(
    dev: DeviceSpec, period: LocalPeriod, now: datetime, tz: ZoneInfo,
    received: Received,
) -> dict[str, Counts]:  # fmt: skip
    """Counts per data type of one device in one period (a metric absent from
    ``received``: nothing received). Empty if it expected nothing."""
    window = clip(period.start, period.end, dev.registered, dev.retired, now)
    if window is None:
        return {}
    out: dict[str, Counts] = {}
    for data_type, interval_s in dev.types.items():
        expected = expected_count(*window, data_type, interval_s, tz)
        if not expected:
            continue
        got = received.get((dev.id, data_type, period.label), {})
        out[data_type] = total(
            series_counts(expected, *got.get(metric, (0, 0))) for metric in dev.metrics
        )
    return out


def _merge(parts: Iterable[dict[str, Counts]]) -> dict[str, Counts]:
    out: dict[str, Counts] = {}
    for part in parts:
        for k, c in part.items():
            out[k] = out.get(k, Counts()) + c
    return {k: out[k] for k in DATA_TYPES if k in out}


def _percent(rate: float | None) -> float | None:
    return None if rate is None else 100 * rate


def _figure(
    period: date, level: Level, id_: str, parts: Sequence[dict[str, Counts]], *,
    enterprise: str | None = None, outlet: str | None = None,
    percent: float | None = None, empty: float | None = None,
) -> Figure:  # fmt: skip
    types = _merge(parts)
    counts = total(types.values())
    devices = sum(1 for p in parts if p)
    if percent is None:
        percent = _percent(counts.coverage_rate) if devices else empty
    return Figure(
        period=period, level=level, id=id_, enterprise=enterprise, outlet=outlet,
        counts=counts, by_type=types, devices=devices, coverage_percent=percent,
    )  # fmt: skip


def figures(
    park: str, periods: Sequence[LocalPeriod], *, devices: Sequence[DeviceSpec],
    enterprises: Sequence[EntitySpec], outlets: Sequence[EntitySpec],
    received: Received, now: datetime, tz: ZoneInfo, detail: Level = "device",
    park_level: bool = True,
) -> list[Figure]:  # fmt: skip
    """Every level's figures for each period, down to ``detail``; the park's only
    with ``park_level`` (a selection of the whole park). An enterprise active in
    the period that expected nothing has coverage 0 (see :data:`DEFINITIONS`)."""
    depth = LEVELS.index(detail)
    of_ent: dict[str, list[DeviceSpec]] = {}
    of_outlet: dict[str, list[DeviceSpec]] = {}
    for d in devices:
        of_ent.setdefault(d.enterprise, []).append(d)
        if d.outlet is not None:
            of_outlet.setdefault(d.outlet, []).append(d)
    out: list[Figure] = []
    for p in periods:
        per_dev = {d.id: device_counts(d, p, now, tz, received) for d in devices}
        ent_figures = [
            _figure(
                p.label,
                "enterprise",
                e.id,
                [per_dev[d.id] for d in of_ent.get(e.id, [])],
                enterprise=e.id,
                empty=0.0,
            )
            for e in enterprises
            if e.active(p)
        ]
        if park_level:
            rate = park_coverage([f.counts for f in ent_figures])
            mine = [per_dev[d.id] for f in ent_figures for d in of_ent.get(f.id, [])]
            out.append(_figure(p.label, "park", park, mine, percent=_percent(rate)))
        if depth >= 1:
            out += ent_figures
        if depth >= 2:
            out += [
                _figure(
                    p.label,
                    "outlet",
                    o.id,
                    [per_dev[d.id] for d in of_outlet.get(o.id, [])],
                    enterprise=o.enterprise,
                    outlet=o.id,
                )
                for o in outlets
                if o.active(p)
            ]
        if depth >= 3:
            out += [
                _figure(
                    p.label,
                    "device",
                    d.id,
                    [per_dev[d.id]],
                    enterprise=d.enterprise,
                    outlet=d.outlet,
                )
                for d in devices
                if per_dev[d.id]
            ]
    return out


# -- now: registered against reporting -----------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceNow:
    """A registered, unretired device and its newest stored reading."""

    id: str
    enterprise: str
    outlet: str | None
    interval_s: int  # its shortest reporting interval
    last_reading: datetime | None

    def reporting(self, now: datetime) -> bool:
        """A reading within :data:`REPORTING_INTERVALS` intervals of ``now``."""
        if self.last_reading is None:
            return False
        limit = timedelta(seconds=REPORTING_INTERVALS * self.interval_s)
        return now - self.last_reading <= limit


@dataclass(frozen=True, slots=True)
class Status:
    """Registered against reporting now, for one level of the selection."""

    level: Level
    id: str
    enterprise: str | None
    outlet: str | None
    devices_registered: int
    devices_reporting: int
    devices_never_reported: tuple[str, ...]
    enterprises_registered: int | None = None
    enterprises_without_devices: tuple[str, ...] = ()
    enterprises_never_reported: tuple[str, ...] = ()
    last_reading: datetime | None = None  # device level only


def _status(
    level: Level, id_: str, devices: Sequence[DeviceNow], now: datetime, *,
    enterprise: str | None = None, outlet: str | None = None,
) -> Status:  # fmt: skip
    return Status(
        level=level, id=id_, enterprise=enterprise, outlet=outlet,
        devices_registered=len(devices),
        devices_reporting=sum(1 for d in devices if d.reporting(now)),
        devices_never_reported=tuple(d.id for d in devices if d.last_reading is None),
        last_reading=devices[0].last_reading if level == "device" else None,
    )  # fmt: skip


def statuses(
    park: str, devices: Sequence[DeviceNow], *, enterprises: Sequence[str],
    outlets: Sequence[tuple[str, str]], now: datetime, detail: Level = "device",
    park_level: bool = True,
) -> list[Status]:  # fmt: skip
    """Registered devices against devices reporting now, per level down to
    ``detail``; the park's (only with ``park_level``) also lists its registered
    enterprises without a device and those none of whose devices ever reported.
    ``outlets``: (outlet, enterprise)."""
    depth = LEVELS.index(detail)
    of_ent: dict[str, list[DeviceNow]] = {}
    for d in devices:
        of_ent.setdefault(d.enterprise, []).append(d)
    out: list[Status] = []
    if park_level:
        silent = tuple(
            e
            for e in enterprises
            if e in of_ent and all(d.last_reading is None for d in of_ent[e])
        )
        out.append(
            replace(
                _status("park", park, devices, now),
                enterprises_registered=len(enterprises),
                enterprises_without_devices=tuple(
                    e for e in enterprises if e not in of_ent
                ),
                enterprises_never_reported=silent,
            )
        )
    if depth >= 1:
        out += [
            _status("enterprise", e, of_ent.get(e, []), now, enterprise=e)
            for e in enterprises
        ]
    if depth >= 2:
        out += [
            _status(
                "outlet",
                o,
                [d for d in devices if d.outlet == o],
                now,
                enterprise=e,
                outlet=o,
            )
            for o, e in outlets
        ]
    if depth >= 3:
        out += [
            _status("device", d.id, [d], now, enterprise=d.enterprise, outlet=d.outlet)
            for d in devices
        ]
    return out


# -- sequence numbers --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SequenceRun:
    """Missing numbers ``after_seq + 1 .. before_seq - 1`` between two stored polls."""

    after_seq: int
    before_seq: int
    after: datetime
    before: datetime

    @property
    def missing(self) -> int:
        return self.before_seq - self.after_seq - 1


@dataclass(frozen=True, slots=True)
class EpochSequence:
    epoch: str | None  # None: polls stored before the device's first recorded epoch
    first_seq: int
    last_seq: int
    first: datetime
    last: datetime
    polls: int
    runs: tuple[SequenceRun, ...]

    @property
    def missing(self) -> int:
        return self.last_seq - self.first_seq + 1 - self.polls


def sequences(
    polls: Iterable[tuple[datetime, int]], epochs: Sequence[tuple[str, datetime]]
) -> list[EpochSequence]:
    """Per epoch (``epochs``: (epoch, first stored time), any order), the stored
    polls' numbers and the runs missing between them (see DEFINITIONS
    ``sequence``). ``polls`` are (time, seq) of stored readings, any order and
    repeated per reading; a poll's time is its earliest reading's."""
    starts = sorted(epochs, key=lambda e: e[1])
    times = [t for _, t in starts]
    first_at: dict[tuple[int, int], datetime] = {}
    for at, seq in polls:
        i = bisect_right(times, at) - 1  # -1: before every recorded epoch
        key = (i, seq)
        seen = first_at.get(key)
        if seen is None or at < seen:
            first_at[key] = at
    by_epoch: dict[int, list[tuple[int, datetime]]] = {}
    for (i, seq), at in first_at.items():
        by_epoch.setdefault(i, []).append((seq, at))
    out = []
    for i in sorted(by_epoch):
        numbered = sorted(by_epoch[i])
        runs = tuple(
            SequenceRun(a, b, at_a, at_b)
            for (a, at_a), (b, at_b) in pairwise(numbered)
            if b > a + 1
        )
        out.append(
            EpochSequence(
                epoch=starts[i][0] if i >= 0 else None,
                first_seq=numbered[0][0], last_seq=numbered[-1][0],
                first=min(at for _, at in numbered),
                last=max(at for _, at in numbered),
                polls=len(numbered), runs=runs,
            )
        )  # fmt: skip
    return out
