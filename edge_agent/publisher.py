"""MQTT publishing of the outbox: QoS 1, persistent session, a resend window.

Contracts:

- Rows leave the outbox only in the PUBACK handler of the message that carried
  them, and only if the PUBACK accepts it (at least once). A crash before the
  PUBACK re-sends them after restart: duplicates, never loss.
- A PUBACK is not the broker's disk: Mosquitto acknowledges from memory and saves
  every ``autosave_interval``, so a broker that is killed loses what it
  acknowledged since its last save. An accepted row is therefore kept in the
  outbox, marked acknowledged, for ``publish.resend_window_s``
  (:meth:`Outbox.acknowledge`; 0 deletes it at once). When the connection is lost
  (not on a graceful stop), the rows acknowledged within the window before the
  loss was noticed become pending again (:meth:`Outbox.requeue`), and so do, when
  the agent starts, the rows acknowledged within the window before the start (the
  agent cannot know what the broker did while it was away). They are published
  again after the reconnect, in their original per-device order and before any
  row stored later; a CONNACK with "session present: False" (a broker restarted
  without its persistence) is treated the same way, nothing more can be learnt
  from it. The only messages that may arrive before them are the ones in flight at
  the loss, which paho re-sends itself at the CONNACK (see "draining" below).
  Every re-sent row is a duplicate unless the broker lost it; the platform stores
  a reading once. Counted: :attr:`PublisherStats.resends` (lost connections and
  starts that queued rows again) and ``resent_readings``.
- Protocol: MQTT 5 by default (``broker.protocol``), so that a broker's refusal is
  visible. A PUBACK whose reason code is a failure (>= 0x80: 0x87 Not authorized,
  0x97 Quota exceeded, 0x99 Payload format invalid, ...) is not an
  acknowledgement: the message's rows stay in the outbox, the refusal is counted
  per reason (:attr:`PublisherStats.refused_messages`), and its topic is
  *refused* (:attr:`PublisherStats.refusing`, logged once per change of reason,
  with the topic) until a message on it is accepted. 0x10 No matching subscribers
  is a success (the rows are deleted), counted apart and logged once per topic:
  nobody was subscribed, so the broker dropped the message (e.g. the bridge's
  session is gone). With ``broker.protocol: "3.1.1"`` a PUBACK carries no reason
  code: a refused publish looks delivered and is lost on the broker.
- A refused topic is retried with one message at a time, after
  ``publish.refused_retry_min_s``, doubling up to ``refused_retry_max_s`` after each
  refused retry; never in a hot loop. Other topics (other devices) keep flowing
  meanwhile. Per device the retry starts again from the device's oldest row in the
  outbox, once none of its messages is in flight; messages of that device that were
  already in flight when the refusal came and were accepted are not retracted, so
  a refusal that hits one message of a device but not the next (a quota, a
  transient broker condition) lets the next overtake it. An ACL refusal hits every
  message of the topic alike, so the order is kept. A refused status (retained) is
  retried with the device's current status.
- Per device, messages are published in outbox order and never overtake each other
  (but for the refusal case above). Devices are served round-robin (one message
  per device per round), so a device with a large backlog does not starve the
  others.
- At most ``publish.max_in_flight`` unacknowledged messages.
- Gateway messages (``publish.gateway``, wire schema version 2): every telemetry
  message goes on the agent's own topic ``sp/v1/{park}/{enterprise}/agent.
  {client_id}/telemetry`` and carries the pending rows of as many devices as fit
  in ``max_readings_per_message`` readings (:func:`pack`): each device once per
  message, its rows a run in outbox order starting after its last row handed to
  paho (so one device's rows follow each other across messages as they do with
  one message per device); a device whose rows do not all fit takes what does
  and goes on in a later message. Each message starts with the device after the
  last one the previous message took, so devices share the messages round-robin.
  A message that is not full waits until ``publish.gateway_linger_s`` after the
  previous one (not on stop), so the polls in between share it. Everything above
  holds per message: its PUBACK acknowledges its rows of every device in it; a
  lost connection requeues as before; a refusal concerns the gateway topic, so
  all telemetry waits for the topic's retry (one message at a time), and every
  device of the refused message starts again from its oldest row once no message
  carrying its rows is in flight.
- Reconnects are paho's (``loop_start``, backoff from ``broker.reconnect_min_s`` to
  ``reconnect_max_s``). The session is persistent (fixed client id; 3.1.1:
  ``clean_session=False``; 5: ``clean_start=False`` on every connection and a
  Session Expiry Interval of ``broker.session_expiry_s``, default one day) and paho
  keeps unacknowledged messages in memory and re-sends them itself after a
  reconnect, under their original message ids. Paho calls ``on_connect`` *before*
  it re-sends them, so a message published at that moment would overtake older
  ones: after a reconnect nothing new is published until every message from before
  the outage is acknowledged ("draining"). That costs one round trip after an
  outage and keeps the per-device order.
- When the session expires (the agent away longer than ``session_expiry_s``; a
  3.1.1 session never expires unless the broker's ``persistent_client_expiration``
  says so) the broker discards it: its subscriptions and the messages queued *for*
  the agent. Neither matters: the agent subscribes again on every connection, and
  only at QoS 0. The agent's own unacknowledged messages are kept by paho and the
  outbox, not by the broker, and are re-sent on the new connection (CONNACK
  "session present: False"): nothing is lost.
- What this relies on (paho-mqtt 2.2 ``client.py``, Mosquitto 2.0 ``src/``):
  paho's ``_handle_pubackcomp`` hands every PUBACK's reason code to ``on_publish``
  and then drops the message from its own queue whatever the code, so paho never
  re-sends a refused message (the agent does); ``_handle_connack`` re-sends every
  unacknowledged QoS 1 message (DUP) after each CONNACK, session present or not;
  ``connect(clean_start=...)`` sets the flag of every CONNECT (paho's default
  would start clean on the first connection of each process); a 3.1.1-only broker
  answers an MQTT 5 CONNECT with return code 1, which paho reports as
  "Unsupported protocol version" (amqtt 0.12 misreads one with a will and never
  answers; the agent then says so after the keepalive). Mosquitto's
  ``handle__publish`` answers a QoS 1 publish its ACL denies with PUBACK 0x87 (to
  a 3.1.1 client the same PUBACK carries no code: success), one over the client's
  quota with 0x97, one nobody is subscribed to with 0x10 (MQTT 5 only), and logs a
  denied publish only at debug level; ``session_expiry__add`` keeps a 3.1.1
  persistent session forever and an MQTT 5 one for its Session Expiry Interval,
  capped by ``persistent_client_expiration``. Mosquitto answers QoS 1 at once, so its
  Receive Maximum (20 by default, sent in CONNACK; paho does not enforce it) never
  runs out; a broker that enforces it refuses with 0x93 or 0x97, retried as above.
- Status (retained, QoS 1): the agent's own status on
  ``sp/v1/{park}/{enterprise}/agent.{client_id}/status`` — online after connect,
  offline as the last will (``reason="connection lost"``, its ``ts_ms`` is the
  agent's start) or on a graceful stop — and each device's status on its own
  status topic, published when it changes and again after every reconnect.
- TLS: with ``broker.tls`` the connection uses the context the config built at load
  (``TlsConfig.ssl_context()``, broker certificate and hostname always verified).
- Clock: on every connection it subscribes (QoS 0) to the platform's clock beacon
  (``sp/v1/clock``) and keeps the last offset between the platform's clock and the
  agent's (:attr:`PublisherStats.clock_offset_ms`); the agent judges its clock by
  it (:mod:`edge_agent.clockcheck`). A malformed beacon is counted and ignored.
- A failed connection attempt (TCP or TLS error, CONNACK refusal, or the broker
  closing the connection before its CONNACK) is logged with its reason (never a
  credential) and counted in :class:`PublisherStats`: ``connect_failures`` and
  ``last_connect_error``, which is cleared once a connection is accepted.

Threading: paho calls back on its network thread; every callback only hands its
event to the asyncio loop (``call_soon_threadsafe``). All bookkeeping and every
outbox call happen on the loop thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox, Row
from edge_agent.sample import Clock, to_ms
from smartpark import wire
from smartpark.errors import PayloadError

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
_FAILURE = 0x80  # reason codes from here on are failures (MQTT 5, 2.4)
_NO_SUBSCRIBERS = 0x10
# A 3.1.1-only broker refuses an MQTT 5 CONNECT (return code 1) or misreads it and
# never answers (amqtt 0.12 with the agent's will: paho's keepalive gives up).
V311_HINT = '; a broker that speaks only MQTT 3.1.1 needs broker.protocol: "3.1.1"'


@dataclass(slots=True)
class _InFlight:
    topic: str
    device: str  # whose rows or status it carries (the agent's own status too)
    row_ids: list[int]  # empty for a status message
    readings: int
    devices: tuple[str, ...] = ()  # whose rows it carries (several: a gateway's)


@dataclass(slots=True)
class _Refused:
    """A topic the broker refuses, until a message on it is accepted."""

    device: str
    reason: str
    since_ms: int
    refusals: int  # refused messages on the topic since it was first refused
    attempts: int  # refused rounds (the first refusal, then each refused retry)
    retry_at: float  # loop time of the next retry
    retrying: bool = False  # the retry message is in flight


@dataclass(frozen=True, slots=True)
class Refusal:
    """A topic the broker refuses (MQTT 5 PUBACK failure) and why, since when."""

    topic: str
    reason: str  # e.g. "Not authorized (0x87)"
    since_ms: int
    refusals: int  # refused messages on it so far


@dataclass(frozen=True, slots=True)
class PublisherStats:
    connected: bool
    connects: int
    disconnects: int
    last_disconnect: str
    in_flight: int
    published_messages: int
    acked_messages: int
    published_readings: int
    acked_readings: int
    connect_failures: int = 0
    last_connect_error: str = ""  # why the last attempt failed; "" once connected
    disconnected_since_ms: int | None = None  # None while connected
    clock_offset_ms: int | None = None  # platform clock - ours, at the last beacon
    clock_heard_ms: int | None = None  # our clock when that beacon arrived
    bad_beacons: int = 0
    refused_messages: dict[str, int] = field(default_factory=dict)  # by reason
    refused_readings: int = 0  # readings in refused messages (kept, retried)
    refusing: tuple[Refusal, ...] = ()  # topics refused right now
    no_subscribers: int = 0  # accepted with 0x10: nobody subscribed, dropped
    resends: int = 0  # lost connections (and starts) that queued readings again
    resent_readings: int = 0  # acknowledged readings queued again to be re-sent


def reason_text(code: int, name: str) -> str:
    """How a reason code is shown: ``Not authorized (0x87)``."""
    return f"{name} (0x{code:02x})"


def pack(
    devices: Sequence[str],
    start: int,
    budget: int,
    take: Callable[[str, int], Sequence[Row]],
) -> tuple[list[tuple[str, Sequence[Row]]], int]:
    """The rows of one gateway message: as many devices as fit in ``budget`` rows.

    ``take(device, limit)`` gives up to ``limit`` of the device's next rows, in
    outbox order. The devices are asked in order from index ``start`` (wrapping
    around), each once, with what is left of the budget, so a device whose rows do
    not all fit takes what does. Returns (device, rows) in that order, and the
    index the next message starts at: the device after the last one taken.
    """
    chosen: list[tuple[str, Sequence[Row]]] = []
    n = len(devices)
    if n == 0:
        return chosen, 0
    start %= n
    next_start, left = start, budget
    for i in range(n):
        if left <= 0:
            break
        at = (start + i) % n
        rows = take(devices[at], left)
        if rows:
            chosen.append((devices[at], rows))
            left -= len(rows)
            next_start = (at + 1) % n
    return chosen, next_start


def connect_error(exc: OSError) -> str:
    """One line saying why opening the connection failed; TLS failures say so."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed: {exc.verify_message}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS: {exc.strerror or exc}"
    return exc.strerror or str(exc) or type(exc).__name__


class Publisher:
    """Publishes the outbox to the broker (see the module contract).

    Construct cheaply; :meth:`start` connects in the background and returns at once;
    :meth:`stop` flushes for at most ``flush_timeout_s`` and disconnects.
    """

    def __init__(self, config: AgentConfig, outbox: Outbox, *, clock: Clock) -> None:
        self._cfg = config
        self._outbox = outbox
        self._clock = clock
        self._client: mqtt.Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # rows to publish, or room in the window
        self._changed = asyncio.Event()  # an ack or a connection change
        self._connected = False
        self._draining = False
        self._stopping = False
        self._in_flight: dict[int, _InFlight] = {}
        self._acks: list[tuple[int, int, str]] = []  # (mid, reason code, name)
        self._cursor: dict[str, int] = {}  # highest row id handed to paho, per device
        self._statuses: dict[str, wire.DeviceStatus] = {}
        self._connects = self._disconnects = 0
        self._last_disconnect = ""
        self._published = self._acked = 0
        self._published_readings = self._acked_readings = 0
        self._connect_failures = 0
        self._last_connect_error = ""
        self._connack_refused = False  # counted; its disconnect is not
        self._paho_error = ""  # paho's last error-level log line (network thread)
        self._disconnected_since_ms: int | None = None
        self._clock_offset_ms: int | None = None
        self._clock_heard_ms: int | None = None
        self._bad_beacons = 0
        self._topic_in_flight: Counter[str] = Counter()
        self._refused: dict[str, _Refused] = {}  # by topic
        self._rewind: set[str] = set()  # devices to publish again from their oldest
        self._refusals: Counter[str] = Counter()
        self._refused_readings = 0
        self._no_subscribers = 0
        self._unheard: set[str] = set()  # topics last acknowledged with 0x10
        # Acknowledged rows from this time on are to be queued again (the task does
        # it: a storage failure must fail the task, not vanish in a callback).
        self._requeue_since_ms: int | None = None
        self._resends = 0
        self._resent_readings = 0
        # Gateway messages: messages in flight carrying each device's rows, where
        # the next message starts (pack), and until when a partial one waits.
        self._device_in_flight: Counter[str] = Counter()
        self._gateway_next = 0
        self._linger_until: float | None = None

    @property
    def agent_status_topic(self) -> str:
        site = self._cfg.site
        return wire.status_topic(site.park, site.enterprise, self._cfg.agent_id)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._disconnected_since_ms = to_ms(self._clock())
        self._lost_link(self._disconnected_since_ms)
        broker = self._cfg.broker
        v5 = broker.protocol == "5"
        if v5:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=broker.client_id,
                protocol=mqtt.MQTTv5,
            )
        else:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2,
                client_id=broker.client_id,
                clean_session=False,
                protocol=mqtt.MQTTv311,
            )
        # Room for our telemetry window plus one status per device and the agent's,
        # so paho never holds a message back in its own queue.
        client.max_inflight_messages_set(
            self._cfg.publish.max_in_flight + len(self._cfg.devices) + 2
        )
        client.reconnect_delay_set(broker.reconnect_min_s, broker.reconnect_max_s)
        if broker.tls is not None:
            client.tls_set_context(broker.tls.ssl_context())
        if broker.username is not None:
            password = broker.password
            client.username_pw_set(
                broker.username,
                None if password is None else password.get_secret_value(),
            )
        will = wire.DeviceStatus(False, to_ms(self._clock()), "connection lost")
        client.will_set(self.agent_status_topic, will.encode(), qos=1, retain=True)
        client.on_connect = self._cb_connect
        client.on_disconnect = self._cb_disconnect
        client.on_publish = self._cb_publish
        client.on_connect_fail = self._cb_connect_fail
        client.on_log = self._cb_log
        client.on_message = self._cb_message
        if v5:
            session = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            session.SessionExpiryInterval = broker.session_expiry_s
            client.connect_async(
                broker.host,
                broker.port,
                keepalive=broker.keepalive_s,
                clean_start=False,
                properties=session,
            )
        else:
            client.connect_async(broker.host, broker.port, keepalive=broker.keepalive_s)
        self._client = client
        client.loop_start()
        self._task = asyncio.create_task(self._run(), name="publisher")

    def notify(self) -> None:
        """New rows are in the outbox."""
        self._wake.set()

    def set_device_status(self, device: str, *, online: bool, reason: str = "") -> None:
        """Record a device's status; published (retained) now if connected."""
        old = self._statuses.get(device)
        if old is not None and (old.online, old.reason) == (online, reason):
            return
        status = wire.DeviceStatus(online, to_ms(self._clock()), reason)
        self._statuses[device] = status
        if self._connected and not self._draining:
            self._publish_status(device, status)

    def stats(self) -> PublisherStats:
        since = None if self._connected else self._disconnected_since_ms
        return PublisherStats(
            connected=self._connected,
            connects=self._connects,
            disconnects=self._disconnects,
            last_disconnect=self._last_disconnect,
            in_flight=len(self._in_flight),
            published_messages=self._published,
            acked_messages=self._acked,
            published_readings=self._published_readings,
            acked_readings=self._acked_readings,
            connect_failures=self._connect_failures,
            last_connect_error=self._last_connect_error,
            disconnected_since_ms=since,
            clock_offset_ms=self._clock_offset_ms,
            clock_heard_ms=self._clock_heard_ms,
            bad_beacons=self._bad_beacons,
            refused_messages=dict(self._refusals),
            refused_readings=self._refused_readings,
            refusing=tuple(
                Refusal(topic, r.reason, r.since_ms, r.refusals)
                for topic, r in self._refused.items()
            ),
            no_subscribers=self._no_subscribers,
            resends=self._resends,
            resent_readings=self._resent_readings,
        )

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what the broker takes within the timeout, say offline, disconnect."""
        client = self._client
        if client is None:
            return
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + flush_timeout_s
        self._wake.set()
        await self._wait_until(lambda: not self._connected or self._flushed(), deadline)
        if self._connected and not self._draining:
            for device in self._statuses:
                self.set_device_status(device, online=False, reason="agent stopped")
            now = to_ms(self._clock())
            bye = wire.DeviceStatus(False, now, "agent stopped")
            self._publish_status(self._cfg.agent_id, bye)
            await self._wait_until(
                lambda: not self._connected or not self._in_flight, deadline + 1.0
            )
        task, self._task = self._task, None
        try:
            if task is not None:
                task.cancel()
                await asyncio.wait([task])
                if not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            client.disconnect()
            # In a thread: the network thread may be inside a connect attempt.
            await asyncio.to_thread(client.loop_stop)
            self._client = None
            self._connected = False

    def _flushed(self) -> bool:
        """Nothing in flight, and no rows left but those of refused topics."""
        if self._in_flight:
            return False
        if self._cfg.publish.gateway:
            return self.gateway_topic in self._refused or not self._outbox.pending(1)
        site = self._cfg.site
        return all(
            wire.telemetry_topic(site.park, site.enterprise, device) in self._refused
            or not self._outbox.pending(1, device=device, after_id=0)
            for device in self._outbox.devices()
        )

    async def _wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        while not done():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._changed.wait()
        return True

    def check(self) -> None:
        """Raise what made the publishing task fail, if it did."""
        task = self._task
        if task is not None and task.done() and not task.cancelled():
            exc = task.exception()
            if exc is not None:
                raise exc

    # --- paho network thread: hand every event to the loop -------------------

    def _cb_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        assert self._loop is not None
        self._paho_error = ""
        self._loop.call_soon_threadsafe(
            self._on_connect, reason.is_failure, str(reason), flags.session_present
        )

    def _cb_disconnect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: mqtt.DisconnectFlags,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        assert self._loop is not None
        error, self._paho_error = self._paho_error, ""
        self._loop.call_soon_threadsafe(self._on_disconnect, str(reason), error)

    def _cb_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: object,
    ) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_ack, mid, reason.value, str(reason))

    def _cb_connect_fail(self, client: mqtt.Client, userdata: object) -> None:
        # paho calls this inside its `except OSError:` around the attempt (and
        # passes no exception), so the exception being handled is the reason.
        exc = sys.exception()
        reason = connect_error(exc) if isinstance(exc, OSError) else "unknown reason"
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_connect_failed, reason)

    def _cb_message(
        self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage
    ) -> None:
        heard_ms = to_ms(self._clock())  # as close to the arrival as we get
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._on_beacon, bytes(msg.payload), heard_ms)

    def _cb_log(
        self, client: mqtt.Client, userdata: object, level: int, buf: str
    ) -> None:
        # The only place paho tells why a read failed (e.g. a TLS alert, or EOF
        # from a broker that wants a client certificate). paho never puts the
        # password into a log line.
        if level == mqtt.MQTT_LOG_ERR:
            self._paho_error = buf

    # --- loop thread ----------------------------------------------------------

    def _on_connect(self, failed: bool, reason: str, session_present: bool) -> None:
        self._changed.set()
        b = self._cfg.broker
        if failed:
            self._connack_refused = True
            if reason == "Unsupported protocol version" and b.protocol == "5":
                reason += V311_HINT
            # Bad credentials or a banned client id: retrying will not fix it.
            self._on_connect_failed(f"refused: {reason}", level=logging.ERROR)
            return
        self._connected = True
        self._connects += 1
        self._last_connect_error = ""
        self._disconnected_since_ms = None
        self._draining = bool(self._in_flight)
        assert self._client is not None
        self._client.subscribe(wire.CLOCK_TOPIC, qos=0)
        log.info(
            "connected to broker %s:%d (session present: %s, %d messages to resend)",
            b.host,
            b.port,
            session_present,
            len(self._in_flight),
        )
        if not self._draining:
            self._announce()
        self._wake.set()

    def _on_connect_failed(self, reason: str, *, level: int = logging.WARNING) -> None:
        self._connect_failures += 1
        self._last_connect_error = reason
        b = self._cfg.broker
        log.log(level, "broker %s:%d: cannot connect: %s", b.host, b.port, reason)

    def _on_disconnect(self, reason: str, error: str = "") -> None:
        self._changed.set()
        if not self._connected and not self._stopping:
            if self._connack_refused:  # counted already; this is its aftermath
                self._connack_refused = False
            else:
                why = error or reason
                self._on_connect_failed(
                    f"the broker closed the connection before accepting it ({why})"
                    + V311_HINT * (self._cfg.broker.protocol == "5")
                )
            return
        if self._connected:
            self._disconnected_since_ms = to_ms(self._clock())
            if not self._stopping:
                self._lost_link(self._disconnected_since_ms)
        if self._stopping:
            log.info("disconnected from broker (%s)", reason)
        elif self._connected:
            self._disconnects += 1
            self._last_disconnect = reason
            log.warning(
                "disconnected from broker (%s); %d messages unacknowledged, polling "
                "continues into the outbox",
                reason,
                len(self._in_flight),
            )
        self._connected = False

    def _lost_link(self, at_ms: int) -> None:
        """Queue again (in the task) what was acknowledged within the window."""
        window_ms = int(self._cfg.publish.resend_window_s * 1000)
        if window_ms > 0:
            since = at_ms - window_ms
            if self._requeue_since_ms is not None:
                since = min(since, self._requeue_since_ms)
            self._requeue_since_ms = since
            self._wake.set()

    def _requeue(self) -> None:
        """Make the rows acknowledged since the lost link pending again.

        Publishing then starts again from each device's oldest pending row. That is
        safe here: nothing new goes out before every message in flight at the loss is
        acknowledged (draining), so no row is ever in flight twice."""
        since, self._requeue_since_ms = self._requeue_since_ms, None
        if since is None:
            return
        window = self._cfg.publish.resend_window_s
        self._outbox.purge_acknowledged(window)
        requeued = self._outbox.requeue(since)
        if requeued.skipped:
            log.error(
                "%d acknowledged readings not queued again: the outbox is full (%d "
                "rows); lost if the broker lost them",
                requeued.skipped,
                self._outbox.max_rows,
            )
        if not requeued.rows:
            return
        self._resends += 1
        self._resent_readings += requeued.rows
        self._cursor.clear()
        log.info(
            "%d readings acknowledged in the last %.0f s are sent again after the "
            "reconnect (the broker may have lost what it had not saved yet)",
            requeued.rows,
            window,
        )

    def _on_beacon(self, payload: bytes, heard_ms: int) -> None:
        try:
            platform_ms = wire.decode_clock(payload)
        except PayloadError as exc:
            self._bad_beacons += 1
            log.warning("clock beacon ignored: %s", exc)
            return
        self._clock_offset_ms = platform_ms - heard_ms
        self._clock_heard_ms = heard_ms

    def _on_ack(self, mid: int, code: int, name: str) -> None:
        # Deleting rows happens in the publishing task, so a storage failure
        # fails that task (and the agent) instead of vanishing in a callback.
        self._acks.append((mid, code, name))
        self._wake.set()

    def _process_acks(self) -> None:
        acks, self._acks = self._acks, []
        for mid, code, name in acks:
            entry = self._in_flight.pop(mid, None)
            if entry is None:
                continue
            self._topic_in_flight[entry.topic] -= 1
            self._device_in_flight.subtract(entry.devices)
            if code >= _FAILURE:
                self._on_refused(entry, reason_text(code, name))
                continue
            self._on_accepted(entry.topic, no_subscribers=code == _NO_SUBSCRIBERS)
            if entry.row_ids:
                self._outbox.acknowledge(
                    entry.row_ids, keep_s=self._cfg.publish.resend_window_s
                )
                self._acked += 1
                self._acked_readings += entry.readings
        if acks:
            self._changed.set()
        if self._draining and not self._in_flight:
            self._draining = False
            log.info("messages from before the reconnect acknowledged; resuming")
            self._announce()

    def _on_refused(self, entry: _InFlight, reason: str) -> None:
        """The broker refused a message: keep its rows, count, block its topic."""
        self._refusals[reason] += 1
        self._refused_readings += entry.readings
        self._rewind.update(entry.devices)
        topic, now = entry.topic, asyncio.get_running_loop().time()
        refused = self._refused.get(topic)
        if refused is None:
            refused = _Refused(entry.device, reason, to_ms(self._clock()), 0, 0, now)
            self._refused[topic] = refused
        elif refused.reason != reason:
            log.error("the broker now refuses %s: %s", topic, reason)
            refused.reason = reason
        refused.refusals += 1
        # Messages sent before the first refusal come back refused together: one
        # round. Only the first refusal and each refused retry lengthen the wait.
        if refused.attempts == 0 or refused.retrying:
            refused.attempts += 1
            refused.retrying = False
            pub = self._cfg.publish
            wait = min(
                pub.refused_retry_max_s,
                pub.refused_retry_min_s * 2 ** min(refused.attempts - 1, 30),
            )
            refused.retry_at = now + wait
            if refused.attempts == 1:
                log.error(
                    "the broker refuses %s: %s; its readings stay in the outbox, "
                    "retrying in %.1f s",
                    topic,
                    reason,
                    wait,
                )

    def _on_accepted(self, topic: str, *, no_subscribers: bool) -> None:
        refused = self._refused.pop(topic, None)
        if refused is not None:
            log.warning(
                "the broker accepts %s again, after %d refused messages (%s)",
                topic,
                refused.refusals,
                refused.reason,
            )
        if not no_subscribers:
            self._unheard.discard(topic)
            return
        self._no_subscribers += 1
        if topic not in self._unheard:
            self._unheard.add(topic)
            log.warning(
                "the broker accepted a message on %s but nobody is subscribed to it "
                "(No matching subscribers): it was dropped; is the bridge's session "
                "there?",
                topic,
            )

    def _retry_due(self, topic: str, now: float) -> bool | None:
        """None: the topic is not refused; else whether one retry may go now."""
        refused = self._refused.get(topic)
        if refused is None:
            return None
        return (
            not refused.retrying
            and refused.retry_at <= now
            and not self._topic_in_flight[topic]
        )

    def _next_retry_in(self) -> float:
        """Seconds until the next retry of a refused topic falls due, or a gateway
        message's linger ends (1.0 at most).

        Retries already due were tried in the last pass; one that could not go
        (messages of its topic in flight, no rows, not connected) waits for an
        event or the next tick rather than spinning."""
        now = asyncio.get_running_loop().time()
        waits = [
            r.retry_at - now
            for r in self._refused.values()
            if not r.retrying and r.retry_at > now
        ]
        if self._linger_until is not None and self._linger_until > now:
            waits.append(self._linger_until - now)
        return min([1.0, *waits])

    def _announce(self) -> None:
        self._publish_status(self._cfg.agent_id, self._agent_online())
        for device, status in self._statuses.items():
            self._publish_status(device, status)

    def _agent_online(self) -> wire.DeviceStatus:
        return wire.DeviceStatus(True, to_ms(self._clock()))

    def _publish_status(self, device: str, status: wire.DeviceStatus) -> None:
        site = self._cfg.site
        topic = wire.status_topic(site.park, site.enterprise, device)
        self._publish(topic, device, status.encode(), rows=[], retain=True)

    def _retry_statuses(self) -> None:
        """Publish the current status again on each refused status topic due."""
        now = asyncio.get_running_loop().time()
        site = self._cfg.site
        for topic, refused in list(self._refused.items()):
            device = refused.device
            if wire.status_topic(site.park, site.enterprise, device) != topic:
                continue
            if not self._retry_due(topic, now):
                continue
            if device == self._cfg.agent_id:
                status = self._agent_online()
            elif device in self._statuses:
                status = self._statuses[device]
            else:
                continue
            refused.retrying = True
            self._publish_status(device, status)

    def _publish(
        self,
        topic: str,
        device: str,
        payload: bytes,
        *,
        rows: Sequence[Row],
        retain: bool = False,
        devices: tuple[str, ...] | None = None,
    ) -> bool:
        """Hand one message to paho; False if paho would not take it now.

        ``devices``: whose rows it carries (default: ``device``'s, if any)."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in _QUEUED:
            log.error(
                "paho refused a message for %s: %s", topic, mqtt.error_string(info.rc)
            )
            return False
        # NO_CONN: the connection dropped just now; paho keeps the message and
        # sends it after the reconnect, so it is in flight all the same.
        if devices is None:
            devices = (device,) if rows else ()
        self._in_flight[info.mid] = _InFlight(
            topic, device, [r.id for r in rows], len(rows), devices
        )
        self._topic_in_flight[topic] += 1
        self._device_in_flight.update(devices)
        return True

    async def _run(self) -> None:
        while True:
            # The timeout is a safety net; every event that matters wakes us.
            # (asyncio.timeout, not wait_for: on 3.11 wait_for swallows a
            # cancellation that coincides with the event being set.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._next_retry_in()):
                    await self._wake.wait()
            self._wake.clear()
            self._process_acks()
            # After the acks: a PUBACK that came just before the loss is in the window.
            self._requeue()
            if self._connected and not self._draining and not self._stopping:
                self._retry_statuses()
            self._fill()

    def _fill(self) -> None:
        """Publish pending rows, one message per device per round, up to the window."""
        if not self._connected or self._draining:
            return
        if self._cfg.publish.gateway:
            self._fill_gateway()
            return
        window = self._cfg.publish.max_in_flight
        size = self._cfg.publish.max_readings_per_message
        site = self._cfg.site
        devices = self._outbox.devices()
        now = asyncio.get_running_loop().time()
        progress = True
        while progress and len(self._in_flight) < window:
            progress = False
            for device in devices:
                if len(self._in_flight) >= window:
                    return
                topic = wire.telemetry_topic(site.park, site.enterprise, device)
                retry = self._retry_due(topic, now)
                if retry is False:
                    continue
                if device in self._rewind:
                    if self._topic_in_flight[topic]:
                        continue
                    # Its refused rows are still in the outbox: from the oldest.
                    self._rewind.discard(device)
                    self._cursor[device] = 0
                after = self._cursor.get(device, 0)
                rows = self._outbox.pending(size, device=device, after_id=after)
                if not rows:
                    continue
                payload = wire.encode_batch(self._batch(device, rows))
                if not self._publish(topic, device, payload, rows=rows):
                    return
                if retry:
                    self._refused[topic].retrying = True
                self._cursor[device] = rows[-1].id
                self._published += 1
                self._published_readings += len(rows)
                progress = True

    def _batch(self, device: str, rows: Sequence[Row]) -> wire.TelemetryBatch:
        site = self._cfg.site
        return wire.TelemetryBatch(
            site.park,
            site.enterprise,
            device,
            tuple(
                wire.Reading(
                    r.seq,
                    r.metric,
                    r.value,
                    r.unit,
                    r.ts_ms,
                    r.quality,
                    r.reset,
                    r.data_type,
                    r.stat,
                )
                for r in rows
            ),
            epoch=self._outbox.epoch,
        )

    @property
    def gateway_topic(self) -> str:
        """Where gateway messages go: the agent's own telemetry topic."""
        site = self._cfg.site
        return wire.telemetry_topic(site.park, site.enterprise, self._cfg.agent_id)

    def _take(self, device: str, limit: int) -> list[Row]:
        """The device's next rows for a gateway message (none while it waits to
        start again from its oldest row)."""
        if device in self._rewind:
            return []
        after = self._cursor.get(device, 0)
        return self._outbox.pending(limit, device=device, after_id=after)

    def _fill_gateway(self) -> None:
        """Publish pending rows as gateway messages (:func:`pack`), up to the window."""
        pub = self._cfg.publish
        now = asyncio.get_running_loop().time()
        if not self._stopping and self._linger_until is not None:
            if now < self._linger_until:
                return
            self._linger_until = None
        topic, gateway = self.gateway_topic, self._cfg.agent_id
        site = self._cfg.site
        devices = self._outbox.devices()
        while len(self._in_flight) < pub.max_in_flight:
            retry = self._retry_due(topic, now)
            if retry is False:
                return
            for device in [d for d in self._rewind if not self._device_in_flight[d]]:
                # Its refused rows are still in the outbox: from the oldest.
                self._rewind.discard(device)
                self._cursor[device] = 0
            chosen, next_start = pack(
                devices, self._gateway_next, pub.max_readings_per_message, self._take
            )
            if not chosen:
                return
            message = wire.GatewayBatch(
                site.park,
                site.enterprise,
                gateway,
                tuple(self._batch(device, rows) for device, rows in chosen),
            )
            rows = [r for _, device_rows in chosen for r in device_rows]
            payload = wire.encode_gateway(message)
            carried = tuple(device for device, _ in chosen)
            if not self._publish(topic, gateway, payload, rows=rows, devices=carried):
                return
            if retry:
                self._refused[topic].retrying = True
            for device, device_rows in chosen:
                self._cursor[device] = device_rows[-1].id
            self._gateway_next = next_start
            self._published += 1
            self._published_readings += len(rows)
            if len(rows) < pub.max_readings_per_message and pub.gateway_linger_s > 0:
                # What was pending went out; what comes next waits to share one.
                self._linger_until = now + pub.gateway_linger_s
                return
