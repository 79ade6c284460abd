"""The frames a simulated HJ 212-2017 data logger sends, with their ground truth.

Pure and deterministic (no I/O, no clock): :meth:`PacketSource.tick` is given each
data time by the caller (:class:`SimClock` for simulated time) and returns the frames
the logger sends at that moment, each as a :class:`SentPacket` — what an integration
test compares the platform with. :mod:`simulators.hj212_logger` sends them over TCP;
:mod:`simulators.analysers` supplies the values. Contracts:

- Same station, seed, schedule and data times → byte-identical frames.
- A valid frame decodes with the strict codec to exactly its :class:`SentPacket`:
  QN, CN, DataTime, and per code :attr:`Expected.values` (wire suffix → value:
  ``Rtd``, ``ZsRtd``, ``Min``, ``Avg``, ``Max``, ``ZsAvg``, ``Cou``, ...) and the
  flag; ST, MN, PW and Flag are the :class:`~simulators.analysers.Station`'s.
- Every tick gives a real-time packet (CN 2011) with DataTime = the tick. A minute
  (2051) / hourly (2061) packet is sent on the first tick in a later minute / hour of
  the logger's local time, for the interval that closed (DataTime = its start,
  ``data_time_ms`` its UTC instant), aggregated over every value measured in it,
  sent or withheld by a dropout. Intervals still open when ticking stops are not sent.
- QN is the tick's local time plus *i* ms for the *i*-th frame of the tick.
- Scenarios (:data:`SCENARIOS`) are scheduled by data-time offset from the first
  tick; where phases overlap the later one wins; outside them: ``normal``.
  ``breach``/``calibration``/``fault`` change the values and flags (see
  :mod:`simulators.analysers`); ``dropout`` sends nothing (:attr:`Tick.close`: drop
  the TCP connection too); ``corrupt`` puts one frame of the phase's next corruption
  kind (cycling; :mod:`simulators.hj212_faults`) before the tick's valid frames.
- Concatenating the frames of all :class:`SentPacket` gives the byte stream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from edge_agent.hj212.codec import encode
from edge_agent.hj212.model import Packet, Pollutant
from simulators.analysers import Analysers, Measured, Station, aggregate, real_time
from simulators.hj212_faults import CORRUPTIONS, corrupt

SCENARIOS = ("normal", "breach", "calibration", "fault", "dropout", "corrupt")
REAL_TIME, MINUTE, HOUR = "2011", "2051", "2061"


@dataclass(frozen=True, slots=True)
class Phase:
    """``scenario`` from ``start_s`` for ``duration_s`` seconds of data time.

    ``codes``: what a calibration or fault hits (None: the station's main analyser);
    ``corruptions``: the kinds a corrupt phase cycles through; ``close``: a dropout
    also drops the TCP connection (the logger reconnects when it next sends).
    """

    scenario: str
    start_s: float = 0.0
    duration_s: float = math.inf
    codes: frozenset[str] | None = None
    corruptions: tuple[str, ...] = CORRUPTIONS
    close: bool = False

    def __post_init__(self) -> None:
        if self.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {self.scenario!r}: {SCENARIOS}")
        unknown = set(self.corruptions) - set(CORRUPTIONS)
        if unknown or not self.corruptions:
            raise ValueError(f"corruptions must be among {CORRUPTIONS}: {unknown}")
        if self.start_s < 0 or self.duration_s <= 0:
            raise ValueError("start_s must be >= 0 and duration_s > 0")

    def covers(self, offset_s: float) -> bool:
        return self.start_s <= offset_s < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class Expected:
    """The values one code was sent with (wire suffix → value) and its flag."""

    code: str
    values: dict[str, Decimal]
    flag: str


@dataclass(frozen=True, slots=True)
class SentPacket:
    """One frame; for ``corruption == "garbage"`` noise without QN, CN or readings.

    A corrupt frame's ``readings`` are what it carries: three times the valid
    real-time values of its tick, so one that slipped through shows as a second,
    different reading at a data time that also has a valid one.
    """

    frame: bytes
    valid: bool
    data_time_ms: int  # UTC instant of ``data_time``
    data_time: str  # DataTime as sent: yyyyMMddHHmmss, the logger's local time
    flag: int  # the header Flag
    qn: str | None = None
    cn: str | None = None
    readings: tuple[Expected, ...] = ()
    corruption: str | None = None

    @property
    def reply_required(self) -> bool:
        """A listener must answer this frame: it is valid and has Flag bit A."""
        return self.valid and bool(self.flag & 1)


@dataclass(frozen=True, slots=True)
class Tick:
    at: datetime
    scenario: str
    packets: tuple[SentPacket, ...]
    withheld: int = 0  # valid packets a dropout kept back
    close: bool = False  # a dropout that also drops the connection


class SimClock:
    """Simulated data time: successive calls return ``start``, ``start + step_s``…"""

    def __init__(self, start: datetime, step_s: int) -> None:
        if start.tzinfo is None or start.microsecond or step_s < 1:
            raise ValueError("start must be aware, in whole seconds; step_s >= 1")
        self._next, self._step = start.astimezone(UTC), timedelta(seconds=step_s)

    def __call__(self) -> datetime:
        at, self._next = self._next, self._next + self._step
        return at


_Due = tuple[str, datetime, tuple[Expected, ...]]  # CN, DataTime (local), readings


class PacketSource:
    """The frames of one station over time (see the module doc for the contract)."""

    def __init__(
        self, station: Station, *, seed: int, schedule: tuple[Phase, ...] = ()
    ) -> None:
        self.station = station
        self.schedule = schedule
        self.analysers = Analysers(station, seed)
        self._first: datetime | None = None
        self._prev: datetime | None = None
        self._open: dict[str, tuple[datetime, dict[str, list[Measured]]]] = {}
        self._corrupted = 0

    def phase(self, at: datetime) -> Phase:
        """The phase in force at data time ``at`` (offsets count from tick one)."""
        offset = 0.0 if self._first is None else (at - self._first).total_seconds()
        active = [p for p in self.schedule if p.covers(offset)]
        return active[-1] if active else Phase("normal")

    def tick(self, at: datetime) -> Tick:
        """The frames due at data time ``at`` (aware, whole seconds, increasing)."""
        if at.tzinfo is None or at.microsecond or (self._prev and at <= self._prev):
            raise ValueError(f"data time {at} is not aware, whole, after {self._prev}")
        self._first = self._first or at
        phase = self.phase(at)
        seconds = 0 if self._prev is None else int((at - self._prev).total_seconds())
        self._prev = at
        targets = self.station.analyser if phase.codes is None else phase.codes
        values = self.analysers.measure(phase.scenario, targets, seconds)
        local = at.astimezone(self.station.tz)
        due = self._closed_intervals(local, values)
        real = tuple(Expected(c, real_time(m), m.flag) for c, m in values.items())
        due.append((REAL_TIME, local, real))
        if phase.scenario == "dropout":
            return Tick(at, phase.scenario, (), withheld=len(due), close=phase.close)
        out: list[SentPacket] = []
        if phase.scenario == "corrupt":
            kind = phase.corruptions[self._corrupted % len(phase.corruptions)]
            self._corrupted += 1
            out.append(self._corrupt(kind, at, local, real))
        for cn, start, readings in due:
            packet = self._packet(cn, _qn(at, len(out), local), start, readings)
            out.append(self._sent(encode(packet), start, packet, readings))
        return Tick(at, phase.scenario, tuple(out))

    def _closed_intervals(
        self, local: datetime, values: dict[str, Measured]
    ) -> list[_Due]:
        """Close the intervals ``local`` is past, then add ``values`` to the open."""
        out: list[_Due] = []
        for cn, on, key in (
            (MINUTE, self.station.minute, local.replace(second=0)),
            (HOUR, self.station.hourly, local.replace(minute=0, second=0)),
        ):
            if not on:
                continue
            if cn in self._open and self._open[cn][0] != key:
                start, measured = self._open.pop(cn)
                readings = []
                for spec in self.station.codes:
                    fields, flag = aggregate(spec, measured[spec.code])
                    readings.append(Expected(spec.code, fields, flag))
                out.append((cn, start, tuple(readings)))
            columns = self._open.setdefault(cn, (key, {}))[1]
            for code, m in values.items():
                columns.setdefault(code, []).append(m)
        return out

    def _packet(
        self, cn: str, qn: str | None, start: datetime, readings: tuple[Expected, ...]
    ) -> Packet:
        s = self.station
        return Packet(
            st=s.st, cn=cn, mn=s.mn, pw=s.pw, qn=qn, flag=s.flag,
            data_time=start.strftime("%Y%m%d%H%M%S"),
            pollutants=tuple(_pollutant(e) for e in readings),
        )  # fmt: skip

    def _corrupt(
        self, kind: str, at: datetime, local: datetime, real: tuple[Expected, ...]
    ) -> SentPacket:
        readings = tuple(
            Expected(e.code, {k: v * 3 for k, v in e.values.items()}, e.flag)
            for e in real
        )
        packet = self._packet(REAL_TIME, _qn(at, 0, local), local, readings)
        frame = corrupt(kind, packet, self.analysers.rng)
        if kind == "garbage":
            return self._sent(frame, local, None, (), kind)
        return self._sent(frame, local, packet, readings, kind)

    def _sent(
        self,
        frame: bytes,
        start: datetime,
        packet: Packet | None,
        readings: tuple[Expected, ...],
        corruption: str | None = None,
    ) -> SentPacket:
        return SentPacket(
            frame=frame,
            valid=corruption is None,
            data_time_ms=int(start.timestamp()) * 1000,
            data_time=start.strftime("%Y%m%d%H%M%S"),
            flag=self.station.flag,
            qn=None if packet is None else packet.qn,
            cn=None if packet is None else packet.cn,
            readings=readings,
            corruption=corruption,
        )


def _pollutant(e: Expected) -> Pollutant:
    g = e.values.get
    return Pollutant(
        e.code, rtd=g("Rtd"), min=g("Min"), avg=g("Avg"), max=g("Max"), cou=g("Cou"),
        zs_rtd=g("ZsRtd"), zs_min=g("ZsMin"), zs_avg=g("ZsAvg"), zs_max=g("ZsMax"),
        flag=e.flag,
    )  # fmt: skip


def _qn(at: datetime, index: int, local: datetime) -> str:
    moment = (at + timedelta(milliseconds=index)).astimezone(local.tzinfo)
    return moment.strftime("%Y%m%d%H%M%S") + f"{moment.microsecond // 1000:03d}"
