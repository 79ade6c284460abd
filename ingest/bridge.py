"""MQTT → Kafka bridge.

Subscribes to the device telemetry and status topics with a persistent MQTT session
(QoS 1), validates every message with :mod:`smartpark.wire` and produces it to Kafka
keyed by enterprise with ``acks=all``. **The MQTT message is acknowledged only after
Kafka acknowledged the record** (paho's manual acknowledgement), so a crash at any
point leaves the message with the broker, which redelivers it: at least once.
Invalid messages are produced to the dead-letter topic with their original bytes and
the reason, then acknowledged: they never block the stream. A message larger than
``bridge.max_payload_bytes`` is invalid too, and a record Kafka refuses for good (too
large, corrupt) becomes a dead letter instead of being retried: only errors a retry
can cure are retried in order, so one bad message never holds up the others. A dead
letter keeps at most the first 64 KiB of the original, with its size and SHA-256.

Threads: paho runs its network loop in its own thread; everything else runs on the
asyncio loop. Paho's thread appends each message to a queue and wakes the loop only
when no wake-up is already pending; the loop then takes everything queued at once
(one thread handoff per batch, not per message). Each message is stamped in paho's
thread with the number of the MQTT connection it came on, so a message of an old
connection is never acknowledged on a new one (message ids are per connection; the
broker delivers the old connection's unacknowledged messages again). Acknowledgements
go out in the order the messages arrived, as MQTT 3.1.1 asks. Backpressure comes from
the broker:
Mosquitto sends at most ``max_inflight_messages`` unacknowledged QoS 1 messages per
client, so the bridge's memory is bounded by that window, not by the backlog. (amqtt,
used by the embedded demo, has no such window and drops a QoS 1 message that is not
acknowledged within 5 s: the demo's broker shows the flow; it is not durable.)

Several bridges: with ``mqtt.share_group`` set, the telemetry subscription is an
MQTT shared subscription, ``$share/<group>/<subscription>``: the broker gives each
message to one member of the group. Mosquitto 2 accepts it from MQTT 3.1.1 and 5
clients and hands messages out round robin; EMQX documents the same
``$share/<group>/`` prefix (and ``$queue/``, deprecated, for one unnamed group) with
a choice of strategies (``hash_topic`` or ``hash_clientid`` keep a device on one
bridge)
(https://docs.emqx.com/en/emqx/latest/messaging/mqtt-shared-subscription.html). Each
member keeps a persistent session under its own stable ``client_id``: the messages
the broker gave a member that then died (unacknowledged in flight, and, on
Mosquitto, those still handed to its session while it is down) stay in that session
until a bridge with the same ``client_id`` connects again; they are not given to the
other members. So a dead member must be restarted, not replaced by a new id. (EMQX
suggests clean sessions for shared subscriptions, so that the session of a member
gone for long does not overflow; what EMQX then does with the messages in flight to
a member that dies is its own, to check before relying on it.) The status
subscription stays unshared: every bridge forwards every status message, each in the
device's order, so the newest status record in Kafka is the device's newest status
once the bridges are caught up, and every bridge receives the retained statuses
(MQTT 5 sends none on a shared subscription); status records are few and idempotent,
so their copies cost little. A bridge that joins a share group drops the unshared
subscription its session may hold from before (the other way round, the old
group's name is unknown: give the bridge a new ``client_id``). With shared
telemetry, records of one device reach Kafka in arrival order only within one
bridge: the sink does not depend on order (a
row is unique on series and time); the rule core judges in stream order (windows
take a late reading within ``allowed_lateness``), so where that matters a strategy
that keeps a device on one bridge (EMQX's ``hash_topic``) keeps Kafka in arrival
order.

Ordering: records of one device reach Kafka in the order this bridge received them.
If the producer gives up on a record (after a Kafka restart the idempotent producer
can be left with sequence numbers the broker rejects), the bridge replaces the
producer and sends every record not yet acknowledged again, in order; some then
reach Kafka twice, which is harmless downstream (the sink de-duplicates by device,
metric and time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from aiokafka.structs import RecordMetadata
from paho.mqtt.enums import CallbackAPIVersion

from smartpark import wire_fast
from smartpark.clock import MsClock, system_ms
from smartpark.errors import PayloadError
from smartpark.settings import Settings
from smartpark.wire import (
    CLOCK_TOPIC,
    SCHEMA_VERSION,
    decode_status,
    encode_clock,
    parse_topic,
)
from stream.kafka import DeadLetter, ensure_topics, make_producer, refused_for_good

log = logging.getLogger(__name__)

_RETRY_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


@dataclass
class BridgeStats:
    received: int = 0
    produced: int = 0
    acked: int = 0
    dead_letters: int = 0
    produce_retries: int = 0
    redelivery_expected: int = 0
    connected: bool = False
    # The broker holds our subscription: from now on it queues messages for the
    # bridge's session even while the bridge is down.
    subscribed: bool = False
    dead_letter_reasons: dict[str, int] = field(default_factory=dict)
    # Records Kafka refused for good (too large, corrupt), sent as dead letters.
    refused_by_kafka: int = 0
    # Dead letters Kafka refused too: acknowledged, logged with size and SHA-256.
    dropped: int = 0
    clock_beacons: int = 0  # the platform's clock published for the edge agents
    # Times the loop was woken to take messages from paho's thread; received /
    # handoffs is the mean batch a wake-up took.
    handoffs: int = 0


@dataclass(slots=True)
class _Inbound:
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_ms: int
    session: int  # the MQTT connection it came on (Bridge._session, paho's thread)


_Record = tuple[str, bytes, bytes | None, list[tuple[str, bytes]] | None]


@dataclass(slots=True)
class _Pending:
    msg: _Inbound
    record: _Record
    delivery: asyncio.Future[RecordMetadata | None]


class Bridge:
    """Moves device messages from the MQTT broker into Kafka.

    ``async with Bridge(settings) as bridge: await bridge.run()``; ``stop()`` makes
    ``run()`` return after acknowledging what Kafka already has.
    """

    def __init__(self, settings: Settings, *, clock: MsClock = system_ms) -> None:
        self._settings = settings
        self._clock = clock
        self.stats = BridgeStats()
        # Paho's thread appends, the loop pops (deque appends and pops are atomic).
        self._arrivals: deque[_Inbound] = deque()
        # True from the moment paho's thread asks for a wake-up until the loop
        # starts taking the arrivals; see run() for why the order matters.
        self._doorbell_rung = False
        # Set by a doorbell and by stop(): run() has work, or is to stop.
        self._work_or_stop = asyncio.Event()
        self._pending: deque[_Pending] = deque()
        self._pending_changed = asyncio.Event()
        self._stopping = asyncio.Event()
        # The MQTT connection's number, counted up in paho's thread on every
        # disconnect; held under the lock while it changes and while acknowledging,
        # so an acknowledgement never reaches a newer connection than its message's.
        self._session = 0
        self._session_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: mqtt.Client | None = None
        self._producer: AIOKafkaProducer | None = None
        # Held while sending and while the producer is replaced, so records keep
        # their order across a replacement.
        self._producer_lock = asyncio.Lock()

    async def __aenter__(self) -> Bridge:
        self._loop = asyncio.get_running_loop()
        await ensure_topics(self._settings.kafka)
        self._producer = self._new_producer()
        await self._producer.start()
        try:
            self._client = self._connect_mqtt()
        except BaseException:
            await self._producer.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
        if self._producer is not None:
            await self._producer.stop()

    def stop(self) -> None:
        self._stopping.set()
        self._work_or_stop.set()

    @property
    def telemetry_filter(self) -> str:
        """The telemetry subscription, shared when ``mqtt.share_group`` is set."""
        s = self._settings.mqtt
        if s.share_group:
            return f"$share/{s.share_group}/{s.subscription}"
        return s.subscription

    # -- MQTT side (paho's thread) ------------------------------------------------

    def _connect_mqtt(self) -> mqtt.Client:
        s = self._settings.mqtt
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if s.username is not None:
            password = s.password.get_secret_value() if s.password else None
            client.username_pw_set(s.username, password)
        if s.tls_ca is not None:
            client.tls_set(ca_certs=s.tls_ca)
        client.reconnect_delay_set(min_delay=1, max_delay=10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.connect_async(s.host, s.port, keepalive=s.keepalive_s)
        client.loop_start()
        return client

    def _on_connect(
        self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any
    ) -> None:
        if reason.is_failure:
            log.error(
                "MQTT connect to %s refused: %s", self._settings.mqtt.host, reason
            )
            return
        status_sub = self._settings.mqtt.subscription.rsplit("/", 1)[0] + "/status"
        client.subscribe([(self.telemetry_filter, 1), (status_sub, 1)])
        if self._settings.mqtt.share_group:
            # A bridge that ran unshared under this client_id left that
            # subscription in its persistent session: Mosquitto would go on giving
            # it every message while the group gives the other members their
            # share too (duplicates, stored once: measured 30 records for 20
            # messages with two bridges). Unsubscribing what is absent is harmless.
            client.unsubscribe(self._settings.mqtt.subscription)
        self.stats.connected = True
        log.info("MQTT connected to %s:%d", client.host, client.port)

    def _on_subscribe(
        self, _c: mqtt.Client, _u: Any, _mid: int, reasons: list[Any], _p: Any
    ) -> None:
        failed = [r for r in reasons if r.is_failure]
        if failed:
            log.error("MQTT subscription refused: %s", failed)
            return
        self.stats.subscribed = True
        log.info("MQTT subscribed to %s", self.telemetry_filter)

    def _on_disconnect(
        self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any
    ) -> None:
        # Message ids are per connection: unacknowledged messages of the old one are
        # redelivered by the broker, and must not be acknowledged on the new one.
        # Counted here, in the thread that stamps the messages, so every message of
        # the old connection has the old number; paho reconnects (and drops the
        # acknowledgements it had not yet written) only after this returns.
        with self._session_lock:
            self._session += 1
        self.stats.connected = False
        if self._stopping.is_set():
            log.info("MQTT disconnected: %s", reason)
        else:
            log.warning("MQTT disconnected: %s", reason)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        assert self._loop is not None
        self._arrivals.append(
            _Inbound(
                msg.mid,
                msg.qos,
                msg.topic,
                bytes(msg.payload),
                self._clock(),
                self._session,
            )
        )
        # Appended before the doorbell is looked at: see run().
        if not self._doorbell_rung:
            self._doorbell_rung = True
            self._loop.call_soon_threadsafe(self._work_or_stop.set)

    # -- asyncio side -------------------------------------------------------------

    def _new_producer(self) -> AIOKafkaProducer:
        return make_producer(self._settings.kafka, client_id="smartpark-bridge")

    async def run(self) -> None:
        """Bridge until :meth:`stop`; acknowledge all Kafka has before returning."""
        acker = asyncio.create_task(self._ack_in_order())
        beacon = asyncio.create_task(self._clock_beacon(), name="clock beacon")
        try:
            while not self._stopping.is_set():
                await self._work_or_stop.wait()
                self._work_or_stop.clear()
                # The doorbell is cleared *before* the arrivals are taken. Paho's
                # thread appends first and looks at the doorbell second, so either
                # it sees the doorbell cleared and rings again (at worst a wake-up
                # that finds nothing), or it sees it still rung, which means the
                # clearing below comes after its append and the loop below takes
                # that message. Cleared after taking, a message appended between
                # the last look at the queue and the clearing would find the
                # doorbell rung, ring nothing, and wait for the next message's
                # wake-up: for the last message of a burst, for ever.
                self._doorbell_rung = False
                if self._arrivals:
                    self.stats.handoffs += 1
                while self._arrivals and not self._stopping.is_set():
                    await self._forward(self._arrivals.popleft())
            await self._drain()
        finally:
            acker.cancel()
            beacon.cancel()

    async def _clock_beacon(self) -> None:
        """Publish the platform's clock for the edge agents (QoS 0, not retained:
        a stale beacon must never reach an agent)."""
        every_s = self._settings.bridge.clock_beacon_s
        while True:
            if self.stats.connected and self._client is not None:
                self._client.publish(
                    CLOCK_TOPIC, encode_clock(self._clock()), qos=0, retain=False
                )
                self.stats.clock_beacons += 1
            await asyncio.sleep(every_s)

    async def _drain(self) -> None:
        """Wait, within the drain timeout, for Kafka to acknowledge what is pending.

        What is still pending afterwards stays unacknowledged on MQTT, so the broker
        delivers it again to the next bridge: nothing is lost by giving up here.
        """
        timeout = self._settings.bridge.drain_timeout_s
        try:
            async with asyncio.timeout(timeout):
                while self._pending:
                    self._pending_changed.clear()
                    await self._pending_changed.wait()
        except TimeoutError:
            log.warning(
                "stopping with %d messages not yet in Kafka after %.0f s; the broker "
                "will deliver them again",
                len(self._pending),
                timeout,
            )

    def _to_record(self, msg: _Inbound) -> _Record:
        """The Kafka record for ``msg``: its validated value, or a dead letter."""
        try:
            return self._validated(msg)
        except PayloadError as exc:
            kind = type(exc).__name__ + ":" + exc.path.split("[")[0]
            return self._dead_letter(msg, str(exc), kind)

    def _dead_letter(self, msg: _Inbound, reason: str, kind: str) -> _Record:
        self.stats.dead_letters += 1
        reasons = self.stats.dead_letter_reasons
        reasons[kind] = reasons.get(kind, 0) + 1
        log.warning("dead letter from %s: %s", msg.topic, reason)
        letter = DeadLetter(msg.payload, reason, f"mqtt:{msg.topic}", msg.received_ms)
        topic = self._settings.kafka.deadletter_topic
        return topic, letter.value, _enterprise_key(msg.topic), letter.headers()

    def _refused(
        self, msg: _Inbound, record: _Record, exc: Exception
    ) -> _Record | None:
        """What to send instead of a record Kafka refused for good: its dead letter;
        None if it was the dead letter that was refused (then it is dropped, counted
        and logged with the original's size and SHA-256)."""
        if record[0] == self._settings.kafka.deadletter_topic:
            self.stats.dropped += 1
            log.error(
                "dead letter from %s refused by Kafka (%s); dropped: %d bytes,"
                " sha256 %s",
                msg.topic, exc, len(msg.payload),
                hashlib.sha256(msg.payload).hexdigest(),
            )  # fmt: skip
            return None
        self.stats.refused_by_kafka += 1
        return self._dead_letter(
            msg, f"Kafka refused the record: {exc}", f"Kafka:{type(exc).__name__}"
        )

    def _validated(self, msg: _Inbound) -> _Record:
        kafka = self._settings.kafka
        limit = self._settings.bridge.max_payload_bytes
        if len(msg.payload) > limit:
            raise PayloadError(
                "payload",
                f"{len(msg.payload)} bytes, more than the {limit} a device message"
                " may have (bridge.max_payload_bytes)",
            )
        park, enterprise, device, channel = parse_topic(msg.topic)
        if channel == "telemetry":
            # A device's batch, or a gateway's (the topic then names the gateway).
            decoded = wire_fast.decode(
                msg.payload,
                now_ms=msg.received_ms,
                max_future_ms=self._settings.bridge.max_future_ms,
                loads=orjson.loads,
            )
            if (decoded.park, decoded.enterprise, decoded.sender) != (
                park,
                enterprise,
                device,
            ):
                field = "device" if decoded.version == SCHEMA_VERSION else "gateway"
                raise PayloadError(
                    field,
                    f"payload is from {decoded.park}/{decoded.enterprise}/"
                    f"{decoded.sender} but was published on {msg.topic}",
                )
            return kafka.telemetry_topic, msg.payload, enterprise.encode(), None
        if channel == "status":
            status = decode_status(msg.payload)
            value = json.dumps(
                {"park": park, "enterprise": enterprise, "device": device}
                | status.to_json(),
                separators=(",", ":"),
            ).encode()
            return kafka.status_topic, value, enterprise.encode(), None
        raise PayloadError("topic", f"unknown channel {channel!r} in {msg.topic}")

    async def _forward(self, msg: _Inbound) -> None:
        self.stats.received += 1
        record: _Record | None = self._to_record(msg)
        attempt = 0
        while record is not None:
            topic, value, key, headers = record
            try:
                async with self._producer_lock:
                    assert self._producer is not None
                    delivery = await self._producer.send(
                        topic, value, key=key, headers=headers
                    )
                    # Appended under the lock: a producer replacement re-sends the
                    # whole queue, in order, and must see this record in it.
                    self._pending.append(_Pending(msg, record, delivery))
            except KafkaError as exc:
                if refused_for_good(exc):
                    record = self._refused(msg, record, exc)
                    continue
                attempt = await self._backoff(attempt, exc)
            else:
                break
        if record is None:  # dropped: acknowledged in its turn
            self._pending.append(_Pending(msg, ("", b"", None, None), _done()))
        self._pending_changed.set()

    async def _replace_producer(self, exc: KafkaError) -> None:
        """Start a new producer and send everything not yet acknowledged again.

        A delivery the producer gave up on can leave it unusable: after a broker
        restart the idempotent producer's sequence numbers no longer match
        (OutOfOrderSequenceNumber) and every retry fails the same way. A new
        producer gets a new producer id. Records are re-sent in arrival order; those
        Kafka already had become duplicates, which the sink ignores.
        """
        attempt = await self._backoff(0, exc)
        async with self._producer_lock:
            old, self._producer = self._producer, None
            if old is not None:
                with contextlib.suppress(KafkaError, TimeoutError):
                    async with asyncio.timeout(5):
                        await old.stop()
            while self._producer is None:
                producer = self._new_producer()
                try:
                    await producer.start()
                except KafkaError as start_exc:
                    with contextlib.suppress(KafkaError):
                        await producer.stop()
                    attempt = await self._backoff(attempt, start_exc)
                else:
                    self._producer = producer
            for pending in self._pending:
                topic, value, key, headers = pending.record
                if not topic:  # dropped, nothing to send
                    continue
                pending.delivery = await self._producer.send(
                    topic, value, key=key, headers=headers
                )
        log.info("Kafka producer replaced; %d records sent again", len(self._pending))

    async def _backoff(self, attempt: int, exc: KafkaError) -> int:
        self.stats.produce_retries += 1
        delay = _RETRY_BACKOFF_S[min(attempt, len(_RETRY_BACKOFF_S) - 1)]
        log.warning("Kafka produce failed (%s); retrying in %.1f s", exc, delay)
        await asyncio.sleep(delay)
        return attempt + 1

    async def _ack_in_order(self) -> None:
        assert self._client is not None
        while True:
            if not self._pending:
                self._pending_changed.clear()
                await self._pending_changed.wait()
                continue
            head = self._pending[0]
            try:
                await head.delivery
            except KafkaError as exc:
                if refused_for_good(exc):
                    await self._resend_refused(head, exc)
                else:
                    await self._replace_producer(exc)
                continue
            self._ack_settled()
            self._pending_changed.set()

    def _ack_settled(self) -> None:
        """Acknowledge, in arrival order, the messages at the head of the queue
        whose records Kafka has; one whose connection is gone is left to the
        broker, which delivers it again on the new one.

        Kafka settles a whole produce batch at once, so this usually takes many
        messages; the connection's number cannot change while it runs.
        """
        assert self._client is not None
        with self._session_lock:
            while self._pending:
                head = self._pending[0]
                delivery = head.delivery
                if not delivery.done() or delivery.cancelled() or delivery.exception():
                    break
                self._pending.popleft()
                if head.record[0]:
                    self.stats.produced += 1
                if head.msg.session == self._session:
                    self._client.ack(head.msg.mid, head.msg.qos)
                    self.stats.acked += 1
                else:
                    self.stats.redelivery_expected += 1

    async def _resend_refused(self, head: _Pending, exc: KafkaError) -> None:
        """Kafka refused ``head``'s record for good after accepting it for sending
        (the broker's own size limit): send its dead letter in its place."""
        record = self._refused(head.msg, head.record, exc)
        while record is not None:
            head.record = record
            topic, value, key, headers = record
            try:
                async with self._producer_lock:
                    assert self._producer is not None
                    head.delivery = await self._producer.send(
                        topic, value, key=key, headers=headers
                    )
            except KafkaError as send_exc:
                if not refused_for_good(send_exc):
                    await self._replace_producer(send_exc)
                    return
                record = self._refused(head.msg, record, send_exc)
            else:
                return
        head.record = ("", b"", None, None)
        head.delivery = _done()


def _done() -> asyncio.Future[RecordMetadata | None]:
    """A delivery already settled: a dropped message waits for nothing."""
    future: asyncio.Future[RecordMetadata | None] = (
        asyncio.get_running_loop().create_future()
    )
    future.set_result(None)
    return future


def _enterprise_key(topic: str) -> bytes | None:
    """Dead letters keep the enterprise key when the topic names one, so an
    enterprise's rejects stay in order next to each other."""
    parts = topic.split("/")
    return parts[3].encode() if len(parts) == 6 else None
