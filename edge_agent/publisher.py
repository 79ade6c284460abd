"""MQTT publishing of the outbox: QoS 1, persistent session, delete on PUBACK.

Contracts:

- Rows leave the outbox only in the PUBACK handler of the message that carried
  them (at least once). A crash before the PUBACK re-sends them after restart:
  duplicates, never loss.
- Per device, messages are published in outbox order and never overtake each other.
  Devices are served round-robin (one message per device per round), so a device
  with a large backlog does not starve the others.
- At most ``publish.max_in_flight`` unacknowledged messages.
- Reconnects are paho's (``loop_start``, backoff from ``broker.reconnect_min_s`` to
  ``reconnect_max_s``). The session is persistent (fixed client id,
  ``clean_session=False``) and paho keeps unacknowledged messages in memory and
  re-sends them itself after a reconnect, under their original message ids. Paho
  calls ``on_connect`` *before* it re-sends them, so a message published at that
  moment would overtake older ones: after a reconnect nothing new is published
  until every message from before the outage is acknowledged ("draining"). That
  costs one round trip after an outage and keeps the per-device order.
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
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from edge_agent.config import AgentConfig
from edge_agent.outbox import Outbox, Row
from edge_agent.sample import Clock, to_ms
from smartpark import wire
from smartpark.errors import PayloadError

log = logging.getLogger(__name__)
_QUEUED = (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)


@dataclass(slots=True)
class _InFlight:
    row_ids: list[int]  # empty for a status message
    readings: int


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
        self._acks: list[int] = []  # PUBACKed message ids not yet processed
        self._cursor: dict[str, int] = {}  # highest row id handed to paho, per device
        self._statuses: dict[str, wire.DeviceStatus] = {}
        self._connects = self._disconnects = 0
        self._last_disconnect = ""
        self._published = self._acked = 0
        self._published_readings = self._acked_readings = 0
        self._connect_failures = 0
        self._last_connect_error = ""
        self._refused = False  # a CONNACK refusal was counted; its disconnect is not
        self._paho_error = ""  # paho's last error-level log line (network thread)
        self._disconnected_since_ms: int | None = None
        self._clock_offset_ms: int | None = None
        self._clock_heard_ms: int | None = None
        self._bad_beacons = 0

    @property
    def agent_status_topic(self) -> str:
        site = self._cfg.site
        return wire.status_topic(site.park, site.enterprise, self._cfg.agent_id)

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._disconnected_since_ms = to_ms(self._clock())
        broker = self._cfg.broker
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
        )

    async def stop(self, flush_timeout_s: float = 5.0) -> None:
        """Publish what the broker takes within the timeout, say offline, disconnect."""
        client = self._client
        if client is None:
            return
        self._stopping = True
        deadline = asyncio.get_running_loop().time() + flush_timeout_s
        self._wake.set()
        await self._wait_until(
            lambda: (
                not self._connected
                or (not self._in_flight and self._outbox.stats().rows == 0)
            ),
            deadline,
        )
        if self._connected and not self._draining:
            for device in self._statuses:
                self.set_device_status(device, online=False, reason="agent stopped")
            now = to_ms(self._clock())
            bye = wire.DeviceStatus(False, now, "agent stopped")
            self._publish(self.agent_status_topic, bye.encode(), rows=[], retain=True)
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
        self._loop.call_soon_threadsafe(self._on_ack, mid)

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
            self._refused = True
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
            if self._refused:  # the refusal was counted; this is its aftermath
                self._refused = False
            else:
                why = error or reason
                self._on_connect_failed(
                    f"the broker closed the connection before accepting it ({why})"
                )
            return
        if self._connected:
            self._disconnected_since_ms = to_ms(self._clock())
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

    def _on_beacon(self, payload: bytes, heard_ms: int) -> None:
        try:
            platform_ms = wire.decode_clock(payload)
        except PayloadError as exc:
            self._bad_beacons += 1
            log.warning("clock beacon ignored: %s", exc)
            return
        self._clock_offset_ms = platform_ms - heard_ms
        self._clock_heard_ms = heard_ms

    def _on_ack(self, mid: int) -> None:
        # Deleting rows happens in the publishing task, so a storage failure
        # fails that task (and the agent) instead of vanishing in a callback.
        self._acks.append(mid)
        self._wake.set()

    def _process_acks(self) -> None:
        acks, self._acks = self._acks, []
        for mid in acks:
            entry = self._in_flight.pop(mid, None)
            if entry is None:
                continue
            if entry.row_ids:
                self._outbox.delete(entry.row_ids)
                self._acked += 1
                self._acked_readings += entry.readings
        if acks:
            self._changed.set()
        if self._draining and not self._in_flight:
            self._draining = False
            log.info("messages from before the reconnect acknowledged; resuming")
            self._announce()

    def _announce(self) -> None:
        online = wire.DeviceStatus(True, to_ms(self._clock()))
        self._publish(self.agent_status_topic, online.encode(), rows=[], retain=True)
        for device, status in self._statuses.items():
            self._publish_status(device, status)

    def _publish_status(self, device: str, status: wire.DeviceStatus) -> None:
        site = self._cfg.site
        topic = wire.status_topic(site.park, site.enterprise, device)
        self._publish(topic, status.encode(), rows=[], retain=True)

    def _publish(
        self, topic: str, payload: bytes, *, rows: list[Row], retain: bool = False
    ) -> bool:
        """Hand one message to paho; False if paho would not take it now."""
        assert self._client is not None
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        if info.rc not in _QUEUED:
            log.error(
                "paho refused a message for %s: %s", topic, mqtt.error_string(info.rc)
            )
            return False
        # NO_CONN: the connection dropped just now; paho keeps the message and
        # sends it after the reconnect, so it is in flight all the same.
        self._in_flight[info.mid] = _InFlight([r.id for r in rows], len(rows))
        return True

    async def _run(self) -> None:
        while True:
            # The timeout is a safety net; every event that matters wakes us.
            # (asyncio.timeout, not wait_for: on 3.11 wait_for swallows a
            # cancellation that coincides with the event being set.)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._wake.wait()
            self._wake.clear()
            self._process_acks()
            self._fill()

    def _fill(self) -> None:
        """Publish pending rows, one message per device per round, up to the window."""
        if not self._connected or self._draining:
            return
        window = self._cfg.publish.max_in_flight
        size = self._cfg.publish.max_readings_per_message
        site = self._cfg.site
        devices = self._outbox.devices()
        progress = True
        while progress and len(self._in_flight) < window:
            progress = False
            for device in devices:
                if len(self._in_flight) >= window:
                    return
                after = self._cursor.get(device, 0)
                rows = self._outbox.pending(size, device=device, after_id=after)
                if not rows:
                    continue
                batch = wire.TelemetryBatch(
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
                topic = wire.telemetry_topic(site.park, site.enterprise, device)
                if not self._publish(topic, wire.encode_batch(batch), rows=rows):
                    return
                self._cursor[device] = rows[-1].id
                self._published += 1
                self._published_readings += len(rows)
                progress = True
