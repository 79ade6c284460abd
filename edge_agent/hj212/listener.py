"""An asyncio TCP server that HJ 212 data loggers connect to (the logger is the client).

:class:`Hj212Listener` cuts each connection's byte stream with its own
:class:`~edge_agent.hj212.stream.FrameBuffer`, turns every accepted packet into
:class:`~edge_agent.sample.Sample` values and hands them to ``on_samples(device_id,
samples)``. Contracts:

- No input crashes a connection handler: bad frames, garbage, unknown MNs, unmapped
  codes and sink failures are counted in :attr:`Hj212Listener.stats` by reason,
  logged with the peer address, and the frames around them are still delivered.
  The last :data:`REJECTED_KEPT` rejections are kept in :attr:`Hj212Listener.rejected`
  with ``raw``: the bytes the stream decoder consumed in the read that produced the
  rejection (the rejected frame, plus any neighbours cut from the same read; at most
  ``MAX_DATA_LENGTH + OVERHEAD`` bytes, so memory stays bounded).
- A connection that sends nothing for ``idle_timeout_s`` is closed; beyond
  ``max_connections`` open connections, a new one is closed at once and counted.
- ``on_samples`` is a plain callable run on the event loop. It reports failure by
  raising :class:`~smartpark.errors.SmartparkError` (e.g. the outbox's
  ``StorageError``) or :class:`OSError`: the packet is then counted as
  ``sink_error`` and logged at error level, since the logger already sent it and it
  is lost unless the logger retransmits. A reply is only sent for a delivered
  packet, which gives such a logger the chance to. Any other exception is a bug: it
  propagates and closes that connection only.

Mapping choices (where the standard leaves the platform free):

- Real-time data (CN 2011): ``code-Rtd`` becomes a reading of the code's metric and
  ``code-ZsRtd`` (corrected to the reference O2) a reading of its *corrected* metric;
  a value is never corrected twice, the logger's Zs value is taken as is.
- Interval data (CN 2051 minute, 2061 hourly, 2031 daily) is a series of its own:
  it is taken only for the CNs the logger's :class:`LoggerMapping` lists in
  ``intervals``, and every reading of it carries its data type (``minute``,
  ``hour``, ``day``; :class:`smartpark.wire.DataType`), so a logger's hourly mean
  never mixes with, or is mistaken for, a real-time value of the same metric, in
  a window or in storage. ``-Avg``/``-ZsAvg`` are the interval's value (``stat``
  ``value``), ``-Min``/``-Max`` (and ``-ZsMin``/``-ZsMax``) its extremes (``min``,
  ``max``), ``-Cou`` its total (``cou``: mass or volume, read in the metric's
  catalogue ``total_unit``, e.g. kg; the unit loggers send is unverified). All are
  timestamped with DataTime (the interval start, as commonly sent; unverified).
  Each interval CN goes to the device id ``intervals`` names: the logger's own
  device (the data type keeps the series apart) or, as configured before data
  types existed, a device of its own (e.g. ``stack-1.hour``).
- When the mapping has a ``password``, a packet whose PW differs is rejected (kind
  ``password``): any host that can reach the port could otherwise write data for a
  monitoring point.
- Every packet is first checked against the logger's generation of the standard
  (:attr:`LoggerMapping.version`, default HJ 212-2017) with
  :func:`~edge_agent.hj212.dictionary.check`: strict mode rejects what that
  generation does not define (counted by the check's kind: ``command``,
  ``header``, ``version``, ``field``, …); lenient mode counts each tolerated
  deviation, the decoder's and the check's, in ``tolerated`` by kind.
- Packets of the generation's other commands (running state, run time, boot time,
  replies, heartbeat, …) are accepted but carry no samples: they are counted in
  ``frames_other`` by CN (after the password check) and answered as
  :func:`~edge_agent.hj212.dictionary.required_reply` says when Flag asks for a
  reply. Interval CNs the mapping does not list are rejected with kind ``cn``.
- ``code-Flag`` becomes the reading's quality; a missing flag means N. An unknown
  flag rejects the packet (kind ``flag``) in strict mode — the codec itself already
  refuses it then (kind ``field``); in lenient mode only that code's values are
  dropped and counted in ``unknown_flags``.
- DataTime is the logger's local time in the mapping's ``tz`` (default
  Asia/Shanghai), converted to UTC. A packet without DataTime is rejected.
- Values are read in the mapping's per-code unit (default: the metric's catalogue
  unit) and converted with :func:`smartpark.catalogue.to_canonical`.
- When Flag has bit A (reply required), a delivered packet is answered with a data
  reply: ``QN`` (same), ``ST=91``, ``CN=9014``, same ``PW``/``MN``, ``Flag`` with
  bits A and D cleared (version bits kept), ``CP=&&&&``. domain.md names only the
  CN; this layout is the standard's usual form and is unverified against a real
  logger.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from types import TracebackType
from zoneinfo import ZoneInfo

from edge_agent.hj212.codec import encode, parse_time
from edge_agent.hj212.dictionary import check, required_reply
from edge_agent.hj212.model import (
    FLAG_REPLY,
    FLAG_SPLIT,
    MAX_DATA_LENGTH,
    OVERHEAD,
    Decoded,
    Hj212Error,
    Hj212Version,
    Packet,
    Pollutant,
)
from edge_agent.hj212.stream import FrameBuffer
from edge_agent.sample import Clock, Sample, to_ms, utc_now
from smartpark.catalogue import metric as catalogue_metric
from smartpark.catalogue import to_canonical
from smartpark.errors import SmartparkError
from smartpark.wire import DataType, Quality, Stat

log = logging.getLogger(__name__)

REAL_TIME = "2011"
INTERVAL_CNS = frozenset({"2051", "2061", "2031"})
DATA_TYPES = {
    REAL_TIME: DataType.REALTIME.value,
    "2051": DataType.MINUTE.value,
    "2061": DataType.HOUR.value,
    "2031": DataType.DAY.value,
}
# Interval values: (Pollutant attribute of the measured value, of the corrected
# value, stat) in the order they are emitted.
_INTERVAL_VALUES = (
    ("avg", "zs_avg", Stat.VALUE.value),
    ("min", "zs_min", Stat.MIN.value),
    ("max", "zs_max", Stat.MAX.value),
    ("cou", None, Stat.TOTAL.value),
)
REJECTED_KEPT = 100
_QUALITIES = frozenset(q.value for q in Quality)
_READ_SIZE = 65536

OnSamples = Callable[[str, list[Sample]], object]
"""``on_samples(device_id, samples)``; its return value is ignored."""


@dataclass(frozen=True, slots=True)
class LoggerMapping:
    """How one logger (one MN) maps onto the platform; validated on construction.

    ``device_id``: the platform device of the real-time data (CN 2011);
    ``intervals``: CN among 2051/2061/2031 → the device of that interval series
    (CNs not listed are rejected); ``metrics``: pollutant code → metric for
    Rtd/Avg; ``corrected``: code → metric for ZsRtd/ZsAvg; ``units``: code → unit the
    logger sends (default: catalogue unit); ``password``: the PW packets must carry
    (None: not checked); ``tz``: the zone of DataTime; ``version``: the generation
    of the standard the logger speaks.
    """

    device_id: str
    metrics: Mapping[str, str]
    corrected: Mapping[str, str] = field(default_factory=dict)
    units: Mapping[str, str] = field(default_factory=dict)
    intervals: Mapping[str, str] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)
    tz: tzinfo = field(default_factory=lambda: ZoneInfo("Asia/Shanghai"))
    version: Hj212Version = Hj212Version.V2017

    def __post_init__(self) -> None:
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        unknown = set(self.intervals) - INTERVAL_CNS
        if unknown:
            raise ValueError(f"intervals must be among 2051/2061/2031: {unknown}")
        if not all(self.intervals.values()):
            raise ValueError(f"an interval without a device id: {self.intervals}")
        for table in (self.metrics, self.corrected):
            for code, name in table.items():
                catalogue_metric(name)  # PayloadError if unknown
                to_canonical(
                    name, 0.0, self.units.get(code, catalogue_metric(name).unit)
                )
        stray = set(self.units) - set(self.metrics) - set(self.corrected)
        if stray:
            raise ValueError(f"units given for unmapped codes: {sorted(stray)}")

    def series_device(self, cn: str) -> str:
        """The platform device id of the series CN ``cn`` feeds."""
        return self.device_id if cn == REAL_TIME else self.intervals[cn]


@dataclass(slots=True)
class ListenerStats:
    """Counters. ``frames_rejected`` is by kind: the codec's kinds, ``unknown_mn``,
    ``cn``, ``password``, ``flag``, ``datatime``, ``number``, ``sink_error``.
    ``unmapped_codes`` and ``unknown_flags`` count pollutants dropped from accepted
    packets. ``frames_other``: accepted packets without data, by CN; ``tolerated``:
    deviations lenient mode tolerated in accepted packets, by kind."""

    frames_ok: int = 0
    frames_rejected: Counter[str] = field(default_factory=Counter)
    frames_other: Counter[str] = field(default_factory=Counter)
    tolerated: Counter[str] = field(default_factory=Counter)
    unmapped_codes: int = 0
    unknown_flags: int = 0
    samples: int = 0
    replies_sent: int = 0
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    idle_closed: int = 0

    @property
    def unknown_mn(self) -> int:
        return self.frames_rejected["unknown_mn"]


@dataclass(frozen=True, slots=True)
class Rejected:
    """One rejection kept for inspection (see the module doc for ``raw``)."""

    at: datetime
    peer: str
    kind: str
    reason: str
    raw: bytes


class _Reject(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        self.kind = kind
        self.reason = reason
        super().__init__(f"{kind}: {reason}")


def packet_samples(
    packet: Packet, mapping: LoggerMapping, *, strict: bool
) -> list[Sample]:
    """The samples of an accepted packet (pure); raises :class:`_Reject` otherwise."""
    if mapping.password is not None and packet.pw != mapping.password:
        raise _Reject("password", "PW does not match the configured password")
    if packet.cn != REAL_TIME and packet.cn not in mapping.intervals:
        raise _Reject("cn", f"CN={packet.cn} not accepted for MN={packet.mn}")
    if packet.data_time is None:
        raise _Reject("datatime", "packet has no DataTime")
    ts_ms = to_ms(parse_time(packet.data_time, mapping.tz).astimezone(UTC))
    data_type = DATA_TYPES[packet.cn]
    out: list[Sample] = []
    for p in packet.pollutants:
        quality = p.flag or Quality.NORMAL.value
        # HJ/T 212-2005 loggers flag the corrected value in a group of its own.
        zs_quality = p.zs_flag or quality
        if quality not in _QUALITIES or zs_quality not in _QUALITIES:
            if strict:
                bad = quality if quality not in _QUALITIES else zs_quality
                raise _Reject("flag", f"{p.code}-Flag={bad!r} is not a data flag")
            continue
        if packet.cn == REAL_TIME:
            values = [(p.rtd, p.zs_rtd, Stat.VALUE.value)]
        else:
            values = [
                (getattr(p, raw), None if zs is None else getattr(p, zs), stat)
                for raw, zs, stat in _INTERVAL_VALUES
            ]
        for measured, corrected, stat in values:
            for value, table, flag in (
                (measured, mapping.metrics, quality),
                (corrected, mapping.corrected, zs_quality),
            ):
                name = table.get(p.code)
                if value is None or name is None:
                    continue
                out.append(
                    _sample(
                        name,
                        value,
                        p,
                        mapping,
                        ts_ms=ts_ms,
                        quality=flag,
                        data_type=data_type,
                        stat=stat,
                    )
                )
    return out


def _sample(
    name: str,
    value: Decimal,
    p: Pollutant,
    mapping: LoggerMapping,
    *,
    ts_ms: int,
    quality: str,
    data_type: str,
    stat: str,
) -> Sample:
    m = catalogue_metric(name)
    if stat == Stat.TOTAL.value:
        if m.total_unit is None:
            raise _Reject("number", f"{p.code}-Cou: {name} has no interval total")
        unit, number = m.total_unit, float(value)
    else:
        unit = m.unit
        number = to_canonical(name, float(value), mapping.units.get(p.code, unit))
    if not math.isfinite(number):
        raise _Reject("number", f"{p.code}: {value} is out of float range")
    return Sample(name, number, unit, ts_ms, quality, data_type=data_type, stat=stat)


def _unmapped(p: Pollutant, mapping: LoggerMapping) -> bool:
    return p.code not in mapping.metrics and p.code not in mapping.corrected


def reply_for(packet: Packet) -> bytes:
    """The CN=9014 data reply to ``packet`` (layout unverified, see module doc)."""
    flag = None if packet.flag is None else packet.flag & ~(FLAG_REPLY | FLAG_SPLIT)
    return encode(
        Packet(st="91", cn="9014", mn=packet.mn, pw=packet.pw, qn=packet.qn, flag=flag)
    )


class Hj212Listener:
    """TCP server for HJ 212 loggers; an async context manager (see module doc)."""

    def __init__(
        self,
        mapping: Mapping[str, LoggerMapping],
        on_samples: OnSamples,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        idle_timeout_s: float = 300.0,
        max_connections: int = 1000,
        strict: bool = True,
        clock: Clock = utc_now,
    ) -> None:
        if idle_timeout_s <= 0 or max_connections < 1:
            raise ValueError("idle_timeout_s must be > 0 and max_connections >= 1")
        self.mapping = dict(mapping)
        self.on_samples = on_samples
        self.host = host
        self.idle_timeout_s = idle_timeout_s
        self.max_connections = max_connections
        self.strict = strict
        self.clock = clock
        self.stats = ListenerStats()
        self.rejected: deque[Rejected] = deque(maxlen=REJECTED_KEPT)
        self._port = port
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._warned: set[tuple[str, str]] = set()
        self._closing = False

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0)."""
        return self._port

    async def __aenter__(self) -> Hj212Listener:
        self._server = await asyncio.start_server(self._serve, self.host, self._port)
        self._port = self._server.sockets[0].getsockname()[1]
        log.info("hj212: listening on %s:%d", self.host, self._port)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        if self._server is not None:
            self._server.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        peer = _peer(writer)
        if self.stats.connections_open >= self.max_connections:
            self.stats.connections_refused += 1
            log.warning(
                "hj212 %s: refused, %d connections open", peer, self.max_connections
            )
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.stats.connections_open += 1
        self.stats.connections_total += 1
        try:
            await self._read_loop(reader, writer, peer)
        except asyncio.CancelledError:
            # Our own shutdown: end normally, because on Python 3.11 asyncio's
            # stream callback calls task.exception() on a cancelled handler task,
            # which raises and is logged as an error for every open connection.
            if not self._closing:
                raise
        except ConnectionError as exc:
            log.info("hj212 %s: connection lost: %s", peer, exc)
        finally:
            self.stats.connections_open -= 1
            self._tasks.discard(task)
            writer.close()

    async def _read_loop(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str
    ) -> None:
        frames = FrameBuffer(strict=self.strict)
        pending = bytearray()  # a mirror of what the FrameBuffer holds
        while True:
            try:
                async with asyncio.timeout(self.idle_timeout_s):
                    data = await reader.read(_READ_SIZE)
            except TimeoutError:
                self.stats.idle_closed += 1
                log.info("hj212 %s: idle for %ss, closing", peer, self.idle_timeout_s)
                data = b""
                events = frames.flush()
            else:
                events = frames.feed(data) if data else frames.flush()
            pending += data
            consumed = len(pending) - frames.buffered
            raw = bytes(pending[:consumed][-(MAX_DATA_LENGTH + OVERHEAD) :])
            del pending[:consumed]
            for event in events:
                if isinstance(event, Hj212Error):
                    self._reject(peer, event.kind, str(event), raw)
                else:
                    await self._accept(event, peer, raw, writer)
            if not data:
                return

    async def _accept(
        self, decoded: Decoded, peer: str, raw: bytes, writer: asyncio.StreamWriter
    ) -> None:
        packet = decoded.packet
        mapping = self.mapping.get(packet.mn)
        if mapping is None:
            self._reject(peer, "unknown_mn", f"unknown MN={packet.mn!r}", raw)
            return
        try:
            tolerated = check(packet, mapping.version, strict=self.strict)
        except Hj212Error as err:
            self._reject(peer, err.kind, f"MN={packet.mn}: {err}", raw)
            return
        kinds = [i.kind for i in (*decoded.issues, *tolerated)]
        if packet.cn != REAL_TIME and packet.cn not in INTERVAL_CNS:
            if mapping.password is not None and packet.pw != mapping.password:
                reason = f"MN={packet.mn}: PW does not match the configured password"
                self._reject(peer, "password", reason, raw)
                return
            self.stats.tolerated.update(kinds)
            self.stats.frames_other[packet.cn] += 1
            answer = required_reply(packet)
            if answer is not None:
                writer.write(encode(answer))
                await writer.drain()
                self.stats.replies_sent += 1
            return
        try:
            samples = packet_samples(packet, mapping, strict=self.strict)
        except _Reject as rej:
            self._reject(peer, rej.kind, f"MN={packet.mn}: {rej.reason}", raw)
            return
        self._count_dropped(packet, mapping, peer)
        if samples:
            try:
                self.on_samples(mapping.series_device(packet.cn), samples)
            except (SmartparkError, OSError) as exc:
                log.exception(
                    "hj212 %s: MN=%s QN=%s: %d samples LOST, on_samples raised",
                    peer,
                    packet.mn,
                    packet.qn,
                    len(samples),
                )
                self._reject(peer, "sink_error", f"on_samples raised {exc!r}", raw)
                return
        self.stats.tolerated.update(kinds)
        self.stats.frames_ok += 1
        self.stats.samples += len(samples)
        if packet.reply_required:
            writer.write(reply_for(packet))
            await writer.drain()
            self.stats.replies_sent += 1

    def _count_dropped(self, packet: Packet, mapping: LoggerMapping, peer: str) -> None:
        for p in packet.pollutants:
            if p.flag is not None and p.flag not in _QUALITIES:
                self.stats.unknown_flags += 1
                log.warning(
                    "hj212 %s: MN=%s %s-Flag=%r dropped",
                    peer,
                    packet.mn,
                    p.code,
                    p.flag,
                )
            elif _unmapped(p, mapping):
                self.stats.unmapped_codes += 1
                # Loggers repeat the same codes every few seconds: warn once per code.
                if (packet.mn, p.code) not in self._warned:
                    self._warned.add((packet.mn, p.code))
                    log.warning(
                        "hj212 %s: MN=%s code %s is not mapped, values dropped",
                        peer,
                        packet.mn,
                        p.code,
                    )

    def _reject(self, peer: str, kind: str, reason: str, raw: bytes) -> None:
        self.stats.frames_rejected[kind] += 1
        self.rejected.append(Rejected(self.clock(), peer, kind, reason, raw))
        log.warning("hj212 %s: frame rejected (%s): %s", peer, kind, reason)


def _peer(writer: asyncio.StreamWriter) -> str:
    info: object = writer.get_extra_info("peername")
    if isinstance(info, Sequence) and len(info) >= 2:
        return f"{info[0]}:{info[1]}"
    return str(info)
