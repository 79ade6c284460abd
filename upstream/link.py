"""One regulator platform: a TCP connection, the outbox sent in order, requests.

:class:`Link` (``await link.run()`` until :meth:`Link.stop`). Contracts:

- One connection per upstream, (re)opened with backoff (``backoff_s``; counted in
  ``connect_failures``, ``reconnects``). TLS when the upstream says so.
- Sending: the upstream's pending outbox rows go out one at a time in ``id``
  order (so in order per outlet, and across outlets as they were queued). Each
  row gets a fresh QN and Flag with bit A (a reply is wanted); the row's attempt
  is recorded *before* its frame is written. The row is marked acknowledged only
  when a 9014 (or 9013) with that QN arrives within ``overtime_s``; without one
  the same frame is sent again, up to ``recount`` more times (``retried``,
  ``timeouts``); then the row stays pending with ``last_error``, the connection
  is closed, and after the backoff a new connection sends it again with a new
  QN. A row is never dropped: a platform that never answers holds its upstream's
  backlog, which ``smartpark upstream status`` shows with its age.
- Delivery is at least once: a reply lost in the network, or a crash between the
  reply and its record, sends the row again (the platform keys data by MN, CN and
  DataTime).
- Requests from the platform (any packet that is not a reply) are answered as
  :mod:`upstream.packets` documents: history requests (CN 2051 minute, 2061
  hourly, 2031 daily, with ``BeginTime`` and ``EndTime`` in the outlet's zone,
  both included) with 9011 ``QnRtn=1``, one data packet per DataTime read from
  the stored minute/hour/day series of the outlet's devices, then 9012
  ``ExeRtn=1`` (``100`` when there is none, ``3`` when the times are missing or
  bad, ``6`` when storage fails). An unknown MN gets ``QnRtn=4``, a wrong PW
  ``QnRtn=3``, any other command of the generation ``QnRtn=2`` (refused: the
  platform is not a data logger, it cannot set times or calibrate), a CN the
  generation does not define ``QnRtn=8``; each counted in ``refused`` by reason.
- Frames that do not decode are counted (``bad_frames``) and skipped; replies
  whose QN is not awaited are counted (``stray_replies``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import ssl
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Protocol

from edge_agent.hj212.codec import encode, parse_time
from edge_agent.hj212.dictionary import GENERATIONS, REPLY_CNS
from edge_agent.hj212.model import Hj212Error, Packet
from edge_agent.hj212.stream import FrameBuffer
from smartpark.clock import MsClock, system_ms
from smartpark.errors import StorageError
from storage.upstream import OutboxRow, UpstreamStore
from upstream import packets as pk
from upstream.config import OutletConfig, UpstreamConfig

log = logging.getLogger(__name__)

_READ_SIZE = 65536
# How often the backlog figures are read while packets are being sent.
_BACKLOG_MS = 5000


class History(Protocol):
    """Stored readings of an outlet's devices, for history requests."""

    def values(
        self, outlet: OutletConfig, data_type: str, start: datetime, end: datetime
    ) -> AsyncIterator[Sequence[pk.Value]]:
        """The readings of ``data_type`` (every stat) in ``[start, end)``, in
        time order, a chunk at a time; :class:`StorageError` if they cannot be
        read."""
        ...


@dataclass
class LinkStats:
    connected: bool = False
    sent: int = 0  # frames, resends included
    acked: int = 0
    retried: int = 0
    timeouts: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    stray_replies: int = 0
    bad_frames: int = 0
    requests: dict[str, int] = field(default_factory=dict)  # by CN
    refused: dict[str, int] = field(default_factory=dict)  # by reason
    history_packets: int = 0
    backlog: int = 0
    backlog_age_s: float = 0.0


class _NoReply(Exception):
    """A row was sent ``recount + 1`` times without a reply."""


class Link:
    """See the module contract."""

    def __init__(
        self,
        cfg: UpstreamConfig,
        store: UpstreamStore,
        history: History,
        *,
        poll_s: float = 1.0,
        connect_timeout_s: float = 10.0,
        backoff_s: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0),
        clock: MsClock = system_ms,
    ) -> None:
        self.cfg = cfg
        self._store = store
        self._history = history
        self._poll_s = poll_s
        self._connect_timeout_s = connect_timeout_s
        self._backoff = tuple(backoff_s) or (1.0,)
        self._clock = clock
        self._by_mn = cfg.by_mn
        self._qns = pk.QnClock(cfg.outlets[0].tz)
        self._order = {o.mn: tuple(o.pollutants) for o in cfg.outlets}
        self._waiting: dict[str, asyncio.Future[None]] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._requests: set[asyncio.Task[None]] = set()
        self._request_lock = asyncio.Lock()
        self._commands = GENERATIONS[cfg.version].commands
        self.stats = LinkStats()
        self._backlog_at_ms = 0

    @property
    def name(self) -> str:
        return self.cfg.name

    def wake(self) -> None:
        """Something was queued for this upstream."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Connect, send and answer until :meth:`stop` (see the module doc)."""
        failures = 0
        connected_before = False
        while not self._stopping.is_set():
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(
                        self.cfg.host, self.cfg.port, ssl=self._ssl()
                    ),
                    self._connect_timeout_s,
                )
            except (OSError, TimeoutError) as exc:
                self.stats.connect_failures += 1
                log.warning(
                    "upstream %s: cannot connect to %s:%d: %s",
                    self.name, self.cfg.host, self.cfg.port, exc or "timeout",
                )  # fmt: skip
                await self._pause(failures)
                failures += 1
                continue
            if connected_before:
                self.stats.reconnects += 1
            connected_before = True
            log.info(
                "upstream %s: connected to %s:%d",
                self.name, self.cfg.host, self.cfg.port,
            )  # fmt: skip
            acked = self.stats.acked
            try:
                await self._session(reader, writer)
            finally:
                self.stats.connected = False
                writer.close()
                with contextlib.suppress(OSError, ssl.SSLError):
                    await writer.wait_closed()
            failures = 0 if self.stats.acked > acked else failures
            if not self._stopping.is_set():
                await self._pause(failures)
                failures += 1

    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls:
            return None
        ca = None if self.cfg.ca_file is None else str(self.cfg.ca_file)
        return ssl.create_default_context(cafile=ca)

    async def _pause(self, failures: int) -> None:
        delay = self._backoff[min(failures, len(self._backoff) - 1)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), delay)

    async def _session(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.stats.connected = True
        read = asyncio.create_task(self._read(reader, writer), name="upstream read")
        send = asyncio.create_task(self._send(writer), name="upstream send")
        try:
            await asyncio.wait({read, send}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (read, send, *self._requests):
                task.cancel()
            results = await asyncio.gather(
                read, send, *self._requests, return_exceptions=True
            )
            self._requests.clear()
            for fut in self._waiting.values():
                fut.cancel()
            self._waiting.clear()
        for result in results:
            if isinstance(result, _NoReply):
                log.warning("upstream %s: %s; reconnecting", self.name, result)
            elif isinstance(result, (OSError, StorageError)):
                log.warning("upstream %s: session ended: %s", self.name, result)
            elif isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                raise result
        if read.done() and not read.cancelled() and read.exception() is None:
            log.warning("upstream %s: the platform closed the connection", self.name)

    # -- sending --------------------------------------------------------------------

    async def _send(self, writer: asyncio.StreamWriter) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            row_id = await self._store.next_pending(self.name, list(self._by_mn))
            if row_id is None or self._clock() - self._backlog_at_ms >= _BACKLOG_MS:
                await self._refresh_backlog()
            if row_id is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._poll_s)
                continue
            await self._deliver(row_id, writer)

    async def _refresh_backlog(self) -> None:
        self._backlog_at_ms = self._clock()
        (b,) = await self._store.backlog([self.name])
        self.stats.backlog = b.pending
        self.stats.backlog_age_s = (
            0.0
            if b.oldest_pending is None
            else max(0.0, self._clock() / 1000 - b.oldest_pending.timestamp())
        )

    async def _deliver(self, row_id: int, writer: asyncio.StreamWriter) -> None:
        """Send one outbox row until the platform acknowledges every part of it
        (a row too large for one frame goes as several, split by pollutant)."""
        parts: list[pk.Fields] | None = None
        part = 0
        while parts is None or part < len(parts):
            qn = self._qns.next(self._clock())
            for attempt in range(self.cfg.recount + 1):
                row = await self._store.mark_sent(row_id, qn)
                if row is None:
                    return  # no longer pending
                try:
                    if parts is None:
                        parts = pk.fitting(
                            row.fields, functools.partial(self._probe, row)
                        )
                    frame = encode(self._packet(row, parts[part], qn))
                except Hj212Error as exc:
                    await self._store.note_error(row_id, f"cannot encode: {exc}")
                    raise _NoReply(f"row {row_id} cannot be encoded: {exc}") from exc
                if attempt:
                    self.stats.retried += 1
                if await self._exchange(qn, frame, writer):
                    break
            else:
                error = (
                    f"no reply to QN={qn} (row {row_id}) after"
                    f" {self.cfg.recount + 1} frames of {self.cfg.overtime_s} s"
                )
                await self._store.note_error(row_id, error)
                raise _NoReply(error)
            part += 1
        await self._store.ack(row_id)
        self.stats.acked += 1

    async def _exchange(
        self, qn: str, frame: bytes, writer: asyncio.StreamWriter
    ) -> bool:
        """Write ``frame``; True if its reply came within OverTime."""
        reply: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[qn] = reply
        try:
            writer.write(frame)
            await writer.drain()
            self.stats.sent += 1
            await asyncio.wait_for(reply, self.cfg.overtime_s)
        except TimeoutError:
            self.stats.timeouts += 1
            return False
        finally:
            self._waiting.pop(qn, None)
        return True

    def _probe(self, row: OutboxRow, fields: pk.Fields) -> Packet:
        """The packet of ``fields`` with a placeholder QN of the real length."""
        return self._packet(row, fields, "20000101000000000")

    def _packet(self, row: OutboxRow, fields: pk.Fields, qn: str) -> Packet:
        outlet = self._by_mn.get(row.mn)
        if outlet is None:
            raise Hj212Error(
                "data.MN", f"MN={row.mn} is no longer configured", kind="header"
            )
        return pk.data_packet(
            fields, cn=row.cn, data_time_text=row.data_time, mn=row.mn,
            st=outlet.st, pw=outlet.password.get_secret_value(), qn=qn,
            flag=pk.flag_bits(self.cfg.version, reply=True),
            order=self._order.get(row.mn, ()),
        )  # fmt: skip

    # -- receiving ------------------------------------------------------------------

    async def _read(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        frames = FrameBuffer(strict=False)
        while True:
            data = await reader.read(_READ_SIZE)
            for event in frames.feed(data) if data else frames.flush():
                if isinstance(event, Hj212Error):
                    self.stats.bad_frames += 1
                    log.warning("upstream %s: bad frame: %s", self.name, event)
                else:
                    self._on_packet(event.packet, writer)
            if not data:
                return

    def _on_packet(self, packet: Packet, writer: asyncio.StreamWriter) -> None:
        if packet.cn in (pk.DATA_REPLY, pk.NOTIFY_REPLY):
            waiter = self._waiting.get(packet.qn or "")
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            else:
                self.stats.stray_replies += 1
            return
        if packet.cn in REPLY_CNS:
            self.stats.stray_replies += 1
            return
        task = asyncio.create_task(self._answer(packet, writer))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _answer(self, request: Packet, writer: asyncio.StreamWriter) -> None:
        async with self._request_lock:
            _count(self.stats.requests, request.cn)
            try:
                await self._dispatch(request, writer)
            except Hj212Error as exc:  # a value that cannot be sent back
                _count(self.stats.refused, "cannot encode the answer")
                log.warning(
                    "upstream %s: request CN=%s QN=%s not answered: %s",
                    self.name, request.cn, request.qn, exc,
                )  # fmt: skip

    async def _dispatch(self, request: Packet, writer: asyncio.StreamWriter) -> None:
        outlet = self._by_mn.get(request.mn)
        if request.qn is None:
            await self._refuse(request, writer, pk.QN_BAD_QN, "no QN")
        elif outlet is None:
            await self._refuse(request, writer, pk.QN_BAD_MN, "unknown MN")
        elif not hmac.compare_digest(
            (request.pw or "").encode(), outlet.password.get_secret_value().encode()
        ):
            await self._refuse(request, writer, pk.QN_BAD_PW, "wrong PW")
        elif request.cn in pk.HISTORY_CNS:
            await self._history_answer(request, outlet, writer)
        elif request.cn in self._commands:
            await self._refuse(request, writer, pk.QN_REFUSED, "unsupported CN")
        else:
            await self._refuse(request, writer, pk.QN_BAD_CN, "unknown CN")

    async def _write(self, writer: asyncio.StreamWriter, packet: Packet) -> None:
        writer.write(encode(packet))
        await writer.drain()

    async def _refuse(
        self, request: Packet, writer: asyncio.StreamWriter, code: int, why: str
    ) -> None:
        _count(self.stats.refused, why)
        log.warning(
            "upstream %s: refused CN=%s MN=%s QN=%s: %s (QnRtn=%d)",
            self.name, request.cn, request.mn, request.qn, why, code,
        )  # fmt: skip
        flag = pk.flag_bits(self.cfg.version, reply=False)
        await self._write(
            writer, pk.reply(request, pk.REQUEST_REPLY, "QnRtn", code, flag)
        )

    async def _history_answer(
        self, request: Packet, outlet: OutletConfig, writer: asyncio.StreamWriter
    ) -> None:
        flag = pk.flag_bits(self.cfg.version, reply=False)
        await self._write(
            writer, pk.reply(request, pk.REQUEST_REPLY, "QnRtn", pk.QN_READY, flag)
        )
        params = dict(request.params)
        try:
            start = parse_time(params["BeginTime"], outlet.tz)
            end = parse_time(params["EndTime"], outlet.tz) + timedelta(seconds=1)
        except (KeyError, ValueError) as exc:
            _count(self.stats.refused, "bad BeginTime/EndTime")
            log.warning(
                "upstream %s: history request QN=%s: bad times (%s)",
                self.name, request.qn, exc,
            )  # fmt: skip
            code = pk.EXE_BAD_CONDITIONS
        else:
            code = await self._send_history(request, outlet, start, end, writer)
        await self._write(
            writer, pk.reply(request, pk.EXECUTION_RESULT, "ExeRtn", code, flag)
        )

    async def _send_history(
        self,
        request: Packet,
        outlet: OutletConfig,
        start: datetime,
        end: datetime,
        writer: asyncio.StreamWriter,
    ) -> int:
        data_type = pk.SERIES_OF_CN[request.cn]
        mapping = _mapping(outlet, data_type)
        flag = pk.flag_bits(self.cfg.version, reply=False)
        sent = 0
        current: tuple[str, str] | None = None
        fields: pk.Fields = {}

        async def flush() -> None:
            nonlocal sent
            if current is None or not fields:
                return
            await self._write(
                writer,
                pk.data_packet(
                    fields, cn=current[0], data_time_text=current[1], mn=outlet.mn,
                    st=outlet.st, pw=outlet.password.get_secret_value(),
                    qn=request.qn or "", flag=flag, order=tuple(outlet.pollutants),
                ),
            )  # fmt: skip
            sent += 1
            self.stats.history_packets += 1

        try:
            async for chunk in self._history.values(outlet, data_type, start, end):
                for key, more in pk.collect(chunk, mapping).packets.items():
                    if key != current:
                        await flush()
                        current, fields = key, {}
                    fields = pk.merge(fields, more)
            await flush()
        except StorageError as exc:
            log.warning("upstream %s: history read failed: %s", self.name, exc)
            return pk.EXE_SYSTEM_FAULT
        return pk.EXE_DONE if sent else pk.EXE_NO_DATA


def _count(counts: dict[str, int], key: str) -> None:
    counts[key] = counts.get(key, 0) + 1


def mapping_of(outlet: OutletConfig) -> pk.Mapping212:
    """The outlet as :func:`upstream.packets.collect` reads it (forwarded series)."""
    return pk.Mapping212(
        devices=frozenset(outlet.devices),
        series=frozenset(outlet.series),
        by_metric=outlet.by_metric,
        tz=outlet.tz,
    )


def _mapping(outlet: OutletConfig, data_type: str) -> pk.Mapping212:
    """The outlet's mapping for one stored series, forwarded or not."""
    return pk.Mapping212(
        devices=frozenset(outlet.devices),
        series=frozenset({data_type}),
        by_metric=outlet.by_metric,
        tz=outlet.tz,
    )
