"""The agent's local status endpoint: Prometheus metrics and a health check.

:func:`render_metrics` is pure: an :class:`~edge_agent.agent.AgentStats` snapshot in,
Prometheus text exposition format 0.0.4 out. Every metric is named
``smartpark_edge_*`` (counters end in ``_total``) and every sample carries the label
``agent`` (the agent's status device id, ``agent.{client_id}``), so series from
several agents on one gateway, or federated, stay apart without relabelling.
Per-device series carry ``device``. A sample whose value is unknown (no reading yet,
broker connected) is left out rather than given a made-up value. Label values are
escaped (backslash, double quote, line feed); a device's last error is cut to
:data:`MAX_LABEL_CHARS` characters, other control characters become spaces.

:class:`StatusServer` serves, on stdlib asyncio, HTTP/1.1 with one request per
connection (``Connection: close``):

- ``GET /metrics`` → 200, ``text/plain; version=0.0.4; charset=utf-8``.
- ``GET /healthz`` → 200 ``ok`` while the broker is connected or has been
  unreachable for less than ``unhealthy_after_s`` (default 300 s: longer than a
  broker restart plus paho's reconnect backoff, whose ceiling defaults to 60 s);
  then 503 with how long and why. Readings keep going into the outbox meanwhile, so
  503 means "data is not leaving this gateway", not "restart the agent" — that
  would not bring the broker back. Device failures do not make it unhealthy: they
  are per-device metrics. A clock the agent refuses to stamp readings with
  (:mod:`edge_agent.clockcheck`) makes it 503 at once, with the reason, and so does
  a topic the broker refuses (an MQTT 5 PUBACK failure, see
  :mod:`edge_agent.publisher`), until the broker accepts a message on it again.
- ``HEAD`` as ``GET`` without a body; another method on those paths → 405 (with
  ``Allow``); any other path → 404; a malformed request line → 400; a request head
  over :data:`MAX_REQUEST_HEAD` bytes → 431; a head not complete within
  ``read_timeout_s`` → 408. Each of these closes the connection.
- Every connection runs in its own task under a read and a write timeout, and at
  most ``max_connections`` are open at once (more are closed at once), so a slow or
  silent client holds one slot for ``read_timeout_s`` at most and never blocks
  another client's request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

from edge_agent.sample import Clock, to_ms, utc_now
from edge_agent.stats import AgentStats, DeviceStats
from smartpark.errors import SmartparkError

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_REQUEST_HEAD = 8192
MAX_LABEL_CHARS = 200
PREFIX = "smartpark_edge_"

Value = int | float | bool
Labels = Mapping[str, str]
Kind = Literal["counter", "gauge"]


@dataclass(frozen=True, slots=True)
class _Family:
    name: str  # without the prefix
    kind: Kind
    help: str
    samples: list[tuple[Labels, Value]]


# (name, type, help, value of a device's stats or None when unknown)
_DEVICE: list[tuple[str, Kind, str, Callable[[DeviceStats], Value | None]]] = [
    ("device_polls_ok_total", "counter", "Successful polls.", lambda d: d.polls_ok),
    ("device_poll_errors_total", "counter", "Failed polls.", lambda d: d.errors),
    (
        "device_consecutive_failures",
        "gauge",
        "Failed polls in a row; 0 while the device answers.",
        lambda d: d.consecutive_failures,
    ),
    (
        "device_backoff_seconds",
        "gauge",
        "Extra wait before the next attempt after failures; 0 when healthy.",
        lambda d: d.backoff_s,
    ),
    (
        "device_last_reading_timestamp_seconds",
        "gauge",
        "Event time of the last stored reading (absent before the first).",
        lambda d: None if d.last_reading_ms is None else d.last_reading_ms / 1000,
    ),
    (
        "device_last_seq",
        "gauge",
        "Sequence number of the last stored poll or packet.",
        lambda d: d.last_seq,
    ),
    (
        "device_readings_total",
        "counter",
        "Readings stored in the outbox.",
        lambda d: d.samples,
    ),
    (
        "device_counter_rollovers_total",
        "counter",
        "Counter readings that wrapped past the register's range.",
        lambda d: d.rollovers,
    ),
    (
        "device_counter_replacements_total",
        "counter",
        "Counter readings that went backwards without a wrap (meter replaced).",
        lambda d: d.replacements,
    ),
    (
        "device_invalid_values_total",
        "counter",
        "Register values left out because they decoded to NaN or infinity.",
        lambda d: d.invalid_values,
    ),
    (
        "device_clock_refused_polls_total",
        "counter",
        "Polls read but refused: the agent's clock was unset or off.",
        lambda d: d.clock_refused,
    ),
]


def render_metrics(stats: AgentStats, *, agent_id: str) -> str:
    """The snapshot as Prometheus text format 0.0.4 (see the module contract)."""
    return "".join(_render(f, agent_id) for f in _families(stats))


def _families(stats: AgentStats) -> list[_Family]:
    devs = stats.devices
    out = [
        _Family(
            name,
            kind,
            help_,
            [
                ({"device": d}, v)
                for d, s in devs.items()
                if (v := value(s)) is not None
            ],
        )
        for name, kind, help_, value in _DEVICE
    ]
    out.append(
        _Family(
            "device_last_error_info",
            "gauge",
            "The device's last error (cut to 200 characters), 1 while it has one.",
            [
                ({"device": d, "error": _cut(s.last_error)}, 1)
                for d, s in devs.items()
                if s.last_error
            ],
        )
    )
    ob = stats.outbox
    out += [
        _gauge("outbox_rows", "Rows (readings) waiting in the outbox.", ob.rows),
        _gauge("outbox_max_rows", "Capacity of the outbox in rows.", ob.max_rows),
        _gauge(
            "outbox_oldest_age_seconds",
            "Age of the oldest waiting row; 0 when the outbox is empty.",
            0.0 if ob.oldest_age_s is None else ob.oldest_age_s,
        ),
        _counter(
            "outbox_dropped_rows_total",
            "Oldest rows dropped because the outbox was full (drop_oldest).",
            ob.dropped_rows,
        ),
        _counter(
            "outbox_expired_rows_total",
            "Rows dropped because they were older than max_age_s.",
            ob.expired_rows,
        ),
        _counter(
            "outbox_refused_polls_total",
            "Polls refused because the outbox was full (refuse_new).",
            ob.refused_polls,
        ),
        _counter(
            "outbox_refused_rows_total",
            "Rows refused because the outbox was full (refuse_new).",
            ob.refused_rows,
        ),
        _gauge(
            "outbox_acked_rows",
            "Rows the broker acknowledged, kept for publish.resend_window_s.",
            ob.acked_rows,
        ),
        _counter(
            "outbox_requeue_skipped_rows_total",
            "Acknowledged rows not sent again after a lost connection: outbox full.",
            ob.requeue_skipped_rows,
        ),
    ]
    pub = stats.publisher
    since = pub.disconnected_since_ms
    out += [
        _gauge("broker_connected", "1 while connected to the broker.", pub.connected),
        _counter("broker_connects_total", "Accepted connections.", pub.connects),
        _counter(
            "broker_disconnects_total",
            "Connections lost (a graceful stop is not counted).",
            pub.disconnects,
        ),
        _counter(
            "broker_connect_failures_total",
            "Connection attempts that failed (network, TLS, refused).",
            pub.connect_failures,
        ),
        _Family(
            "broker_disconnected_since_timestamp_seconds",
            "gauge",
            "When the broker became unreachable (absent while connected).",
            [] if since is None else [({}, since / 1000)],
        ),
        _Family(
            "broker_last_connect_error_info",
            "gauge",
            "Why the last connection attempt failed, 1 until a connection succeeds.",
            [({"reason": _cut(pub.last_connect_error)}, 1)]
            if pub.last_connect_error
            else [],
        ),
        _counter(
            "published_messages_total",
            "Telemetry messages handed to the broker.",
            pub.published_messages,
        ),
        _counter(
            "acked_messages_total",
            "Telemetry messages acknowledged by the broker.",
            pub.acked_messages,
        ),
        _counter(
            "published_readings_total",
            "Readings in telemetry messages handed to the broker.",
            pub.published_readings,
        ),
        _counter(
            "acked_readings_total",
            "Readings acknowledged by the broker (and deleted from the outbox).",
            pub.acked_readings,
        ),
        _gauge(
            "in_flight_messages",
            "Messages sent and not yet acknowledged.",
            pub.in_flight,
        ),
        _counter(
            "broker_resends_total",
            "Lost connections (and starts) after which acknowledged readings were"
            " sent again.",
            pub.resends,
        ),
        _counter(
            "resent_readings_total",
            "Readings acknowledged within publish.resend_window_s before a lost"
            " connection, sent again (the broker may have lost them).",
            pub.resent_readings,
        ),
        _Family(
            "broker_refused_messages_total",
            "counter",
            "Messages the broker refused (MQTT 5 PUBACK failure), by reason; their"
            " readings stay in the outbox and are retried.",
            [({"reason": r}, n) for r, n in sorted(pub.refused_messages.items())],
        ),
        _counter(
            "broker_refused_readings_total",
            "Readings in refused messages (each refusal counts them again).",
            pub.refused_readings,
        ),
        _gauge(
            "broker_refused_topics",
            "Topics the broker refuses right now (0 when it takes everything).",
            len(pub.refusing),
        ),
        _Family(
            "broker_refused_topic_info",
            "gauge",
            "A topic the broker refuses and why, 1 until it accepts a message on it.",
            [({"topic": r.topic, "reason": _cut(r.reason)}, 1) for r in pub.refusing],
        ),
        _counter(
            "broker_no_subscribers_messages_total",
            "Messages the broker accepted with No matching subscribers (0x10):"
            " nobody received them.",
            pub.no_subscribers,
        ),
        _Family(
            "clock_offset_seconds",
            "gauge",
            "The platform's clock minus the agent's at the last beacon (absent"
            " before the first).",
            [] if pub.clock_offset_ms is None else [({}, pub.clock_offset_ms / 1000)],
        ),
        _gauge(
            "clock_ok",
            "1 while the agent's clock may stamp readings; 0 while polls are refused.",
            not stats.clock_problem,
        ),
        _Family(
            "clock_problem_info",
            "gauge",
            "Why the agent's clock may not stamp readings, 1 while it is so.",
            [({"reason": _cut(stats.clock_problem)}, 1)] if stats.clock_problem else [],
        ),
    ]
    if stats.hj212 is not None:
        out += _hj212_families(stats)
    return out


def _hj212_families(stats: AgentStats) -> list[_Family]:
    h = stats.hj212
    assert h is not None
    return [
        _counter("hj212_frames_ok_total", "Accepted HJ 212 packets.", h.frames_ok),
        _Family(
            "hj212_frames_rejected_total",
            "counter",
            "Rejected HJ 212 frames, by kind.",
            [({"kind": k}, n) for k, n in sorted(h.frames_rejected.items())],
        ),
        _Family(
            "hj212_frames_other_total",
            "counter",
            "Accepted HJ 212 packets that carry no data (commands, replies, state),"
            " by CN.",
            [({"cn": k}, n) for k, n in sorted(h.frames_other.items())],
        ),
        _Family(
            "hj212_tolerated_total",
            "counter",
            "Deviations lenient mode tolerated in accepted packets, by kind.",
            [({"kind": k}, n) for k, n in sorted(h.tolerated.items())],
        ),
        _counter(
            "hj212_unmapped_codes_total",
            "Pollutant codes dropped from accepted packets: not in the mapping.",
            h.unmapped_codes,
        ),
        _counter(
            "hj212_unknown_flags_total",
            "Pollutant values dropped from accepted packets: unknown flag.",
            h.unknown_flags,
        ),
        _counter(
            "hj212_samples_total", "Readings taken from HJ 212 packets.", h.samples
        ),
        _counter("hj212_replies_sent_total", "Data replies sent.", h.replies_sent),
        _gauge(
            "hj212_connections_open",
            "Open data logger connections.",
            h.connections_open,
        ),
        _counter(
            "hj212_connections_total",
            "Data logger connections accepted.",
            h.connections_total,
        ),
        _counter(
            "hj212_connections_refused_total",
            "Connections closed at once: max_connections reached.",
            h.connections_refused,
        ),
        _counter(
            "hj212_idle_closed_total",
            "Connections closed after idle_timeout_s without data.",
            h.idle_closed,
        ),
    ]


def _gauge(name: str, help_: str, value: Value) -> _Family:
    return _Family(name, "gauge", help_, [({}, value)])


def _counter(name: str, help_: str, value: Value) -> _Family:
    return _Family(name, "counter", help_, [({}, value)])


def _render(family: _Family, agent_id: str) -> str:
    name = PREFIX + family.name
    help_ = family.help.replace("\\", "\\\\").replace("\n", "\\n")
    lines = [f"# HELP {name} {help_}\n", f"# TYPE {name} {family.kind}\n"]
    for labels, value in family.samples:
        pairs = ",".join(
            f'{k}="{_escape(v)}"' for k, v in {"agent": agent_id, **labels}.items()
        )
        lines.append(f"{name}{{{pairs}}} {_number(value)}\n")
    return "".join(lines)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _cut(text: str) -> str:
    """At most MAX_LABEL_CHARS characters, control characters other than line
    feed and tab turned into spaces (a label is one line of a log, not a dump)."""
    if len(text) > MAX_LABEL_CHARS:
        text = text[: MAX_LABEL_CHARS - 1] + "…"
    return "".join(c if c in "\n\t" or c.isprintable() else " " for c in text)


def _number(value: Value) -> str:
    if isinstance(value, bool | int):
        return str(int(value))
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


def health(
    stats: AgentStats, *, now_ms: int, unhealthy_after_s: float
) -> tuple[bool, str]:
    """``(healthy, one line)`` by the module's ``/healthz`` rule."""
    pub = stats.publisher
    if stats.clock_problem:
        return False, f"polls refused: {stats.clock_problem}"
    if pub.refusing:
        first = pub.refusing[0]
        more = f" and {len(pub.refusing) - 1} more" if len(pub.refusing) > 1 else ""
        return False, f"the broker refuses {first.topic}: {first.reason}{more}"
    if pub.connected:
        return True, "ok"
    if pub.disconnected_since_ms is None:  # not started
        return False, "broker not connected"
    away_s = max(0.0, (now_ms - pub.disconnected_since_ms) / 1000)
    why = pub.last_connect_error or pub.last_disconnect or "not connected yet"
    if away_s < unhealthy_after_s:
        return True, f"ok (broker unreachable for {away_s:.0f} s: {why})"
    return False, f"broker unreachable for {away_s:.0f} s: {why}"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: str
    content_type: str = "text/plain; charset=utf-8"
    allow: str | None = None


class StatusServer:
    """``/metrics`` and ``/healthz`` over HTTP (see the module contract).

    Construct cheaply; the socket is bound in :meth:`start` (or ``async with``);
    ``port`` is the bound port, also when 0 was asked for. ``get_stats`` is called
    on the event loop for each request and must not block.
    """

    def __init__(
        self,
        get_stats: Callable[[], AgentStats],
        *,
        host: str,
        port: int,
        agent_id: str,
        unhealthy_after_s: float = 300.0,
        read_timeout_s: float = 5.0,
        max_connections: int = 32,
        clock: Clock = utc_now,
    ) -> None:
        self._get_stats = get_stats
        self.host = host
        self._port = port
        self.agent_id = agent_id
        self._unhealthy_after_s = unhealthy_after_s
        self._read_timeout_s = read_timeout_s
        self._max_connections = max_connections
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (after :meth:`start`)."""
        assert self._server is not None, "StatusServer is not started"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> None:
        # limit: readuntil() gives up on a request head longer than this.
        self._server = await asyncio.start_server(
            self._serve, self.host, self._port, limit=MAX_REQUEST_HEAD
        )
        log.info("status endpoint on http://%s:%d/metrics", self.host, self.port)

    async def close(self) -> None:
        """Stop listening and end every open connection."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await server.wait_closed()

    async def __aenter__(self) -> StatusServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            if len(self._handlers) > self._max_connections:
                writer.transport.abort()
                return
            response, method = await self._read_request(reader)
            if response is not None:
                await self._write(writer, response, head_only=method == "HEAD")
                # Read (and drop) what the client may still be sending, briefly:
                # closing with unread input resets the connection, and the client
                # could lose the response (e.g. the 431) before reading it.
                with contextlib.suppress(OSError, TimeoutError):
                    async with asyncio.timeout(1.0):
                        while await reader.read(MAX_REQUEST_HEAD):
                            pass
        except (OSError, TimeoutError):
            writer.transport.abort()  # the client went away or stopped reading
        finally:
            self._handlers.discard(task)
            writer.close()

    async def _read_request(
        self, reader: asyncio.StreamReader
    ) -> tuple[_Response | None, str]:
        try:
            async with asyncio.timeout(self._read_timeout_s):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _Response(431, "request head too large\n"), ""
        except asyncio.IncompleteReadError:
            return None, ""  # closed before a complete request: nobody to answer
        except TimeoutError:
            return _Response(408, "request not complete in time\n"), ""
        request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _Response(400, "malformed request line\n"), ""
        method, target, _ = parts
        return self._route(method, target.split("?", 1)[0]), method

    def _route(self, method: str, path: str) -> _Response:
        if path not in ("/metrics", "/healthz"):
            return _Response(404, "not found: try /metrics or /healthz\n")
        if method not in ("GET", "HEAD"):
            return _Response(405, "only GET and HEAD\n", allow="GET, HEAD")
        try:
            stats = self._get_stats()
        except SmartparkError as exc:  # e.g. the outbox cannot be read
            log.warning("status endpoint: no stats: %s", exc)
            return _Response(500, f"stats unavailable: {exc}\n")
        if path == "/metrics":
            body = render_metrics(stats, agent_id=self.agent_id)
            return _Response(200, body, content_type=CONTENT_TYPE)
        ok, line = health(
            stats,
            now_ms=to_ms(self._clock()),
            unhealthy_after_s=self._unhealthy_after_s,
        )
        return _Response(200 if ok else 503, line + "\n")

    async def _write(
        self, writer: asyncio.StreamWriter, response: _Response, *, head_only: bool
    ) -> None:
        body = response.body.encode("utf-8", "replace")
        headers = [
            f"HTTP/1.1 {response.status} {_REASONS[response.status]}",
            f"Content-Type: {response.content_type}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
        ]
        if response.allow is not None:
            headers.append(f"Allow: {response.allow}")
        head = ("\r\n".join(headers) + "\r\n\r\n").encode("latin-1")
        writer.write(head if head_only else head + body)
        async with asyncio.timeout(self._read_timeout_s):
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
