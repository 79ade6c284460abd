"""A seeded, deterministic, open-loop telemetry load on the MQTT topics.

The workload is shaped like the public IoT benchmark workloads (TSBS's "devops" and
"iot" use cases): a number of devices, metrics per device, a sampling step, a share
of out-of-order readings and a batch size. Every device polls all its metrics once a
step, at a phase drawn from the seed; a poll is one wire batch
(:mod:`smartpark.wire`, the JSON the edge agent publishes) on
``sp/v1/{park}/{enterprise}/{device}/telemetry``, published with paho at QoS 1.
``batch_polls`` > 1 holds that many consecutive polls of a device in one message
(as an agent does when it batches), sent at the time of the newest. ``gateway``
sends as an edge agent with ``publish.gateway`` does: all devices of an enterprise
poll at the enterprise's phase, and each step's polls go out as one gateway message
(wire schema version 2) on ``sp/v1/{park}/{enterprise}/agent.{enterprise}/telemetry``;
a poll held back (out of order) goes later in a gateway message of its own.

Out of order: a seeded share of the polls is held back ``ooo_delay_ms`` and sent
after newer polls of the same device, with its original device time (``ts_ms``).

**Open loop.** Each message has an intended send time fixed by the schedule, not by
acknowledgements; a publisher that falls behind sends late, and every latency the
bench reports is measured from the intended time, so falling behind shows up as
latency (no coordinated omission). The run's *achieved* rate is the readings the
broker acknowledged over the time from the start of the schedule to the last
acknowledgement (at least the schedule's length); a run whose achieved rate is more
than :data:`TOLERANCE` below the offered rate, or with a reading left
unacknowledged, is **invalid** (:func:`verdict`). One publisher process cannot offer
much beyond ~10 000 messages/s of Python; ``publishers`` > 1 splits the devices
between processes (:func:`publish_all`).

Determinism: for a seed the schedule (devices, intended offsets, seq, values, which
polls are out of order) is the same on every run; only the wall-clock origin
``t0_ms`` moves it.
"""

from __future__ import annotations

import functools
import heapq
import multiprocessing
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import orjson

from smartpark.wire import (
    GatewayBatch,
    Reading,
    TelemetryBatch,
    encode_batch,
    telemetry_topic,
)

TOLERANCE = 0.02  # achieved below offered by more than this: the run is invalid

# Five metrics of a metered device (the sizing assumption), gauges and counters.
METRICS: tuple[tuple[str, str], ...] = (
    ("active_energy", "kWh"),
    ("active_power", "kW"),
    ("reactive_energy", "kvarh"),
    ("power_factor", "1"),
    ("water_volume", "m3"),
)
_COUNTERS = frozenset({"active_energy", "reactive_energy", "water_volume"})


@dataclass(frozen=True)
class Workload:
    """The shape of a load; ``rate`` (readings/s) follows from it."""

    enterprises: int
    devices_per_enterprise: int
    metrics_per_device: int = 5
    step_ms: int = 10_000
    out_of_order: float = 0.01  # share of polls sent late
    ooo_delay_ms: int = 5_000
    batch_polls: int = 1  # consecutive polls of a device per message
    seed: int = 16
    gateway: bool = False  # one message an enterprise and step (wire version 2)

    def __post_init__(self) -> None:
        if self.gateway and self.batch_polls != 1:
            raise ValueError("gateway messages take one poll of each device")

    @property
    def devices(self) -> int:
        return self.enterprises * self.devices_per_enterprise

    @property
    def rate(self) -> float:
        """Offered readings per second."""
        return self.devices * self.metrics_per_device * 1000 / self.step_ms

    def scaled(self, factor: float) -> Workload:
        """The same shape at ``factor`` times the rate (more or fewer devices per
        enterprise, so the park's structure and the per-device step stay)."""
        per = max(1, round(self.devices_per_enterprise * factor))
        return replace(self, devices_per_enterprise=per)


# ../shared/reference/sizing.md: 40 devices per enterprise, 5 metrics, every 10 s.
PRESETS: dict[str, Workload] = {
    "pilot": Workload(enterprises=30, devices_per_enterprise=40),
    "city": Workload(enterprises=280, devices_per_enterprise=40),
    "province": Workload(enterprises=2800, devices_per_enterprise=40),
}


@dataclass(frozen=True, order=True)
class Message:
    """One scheduled MQTT message: sent at ``send_ms`` after the run's origin."""

    send_ms: int
    device_index: int
    first_seq: int
    polls: int
    late: bool  # held back (out of order)
    # A gateway message: the devices whose poll ``first_seq`` it carries.
    devices: tuple[int, ...] = ()

    def readings(self, w: Workload) -> int:
        return self.polls * w.metrics_per_device * (len(self.devices) or 1)


def device_ids(w: Workload, index: int) -> tuple[str, str]:
    """(enterprise, device) of device ``index``."""
    e, d = divmod(index, w.devices_per_enterprise)
    return f"e{e:04d}", f"e{e:04d}-d{d:03d}"


def _device_rng(w: Workload, index: int) -> random.Random:
    return random.Random(f"{w.seed}:{index}")


def _phase(w: Workload, index: int, rng: random.Random) -> int:
    """Device ``index``'s poll phase: its own (drawn from ``rng``, its generator),
    or with gateway messages its enterprise's."""
    if w.gateway:
        e = index // w.devices_per_enterprise
        return random.Random(f"{w.seed}:e{e}").randrange(w.step_ms)
    return rng.randrange(w.step_ms)


def device_messages(w: Workload, index: int, duration_ms: int) -> list[Message]:
    """The messages of one device whose send time falls in ``[0, duration_ms)``
    (with gateway messages: its polls, as if each were a message of its own)."""
    rng = _device_rng(w, index)
    phase = _phase(w, index, rng)
    out: list[Message] = []
    pending: list[int] = []  # seqs of on-time polls not sent yet (batching)
    seq = 0
    while True:
        seq += 1
        poll_ms = phase + (seq - 1) * w.step_ms
        if poll_ms >= duration_ms:
            break
        if rng.random() < w.out_of_order:
            late_ms = poll_ms + w.ooo_delay_ms
            if late_ms < duration_ms:
                out.append(Message(late_ms, index, seq, 1, True))
            continue
        pending.append(seq)
        if len(pending) == w.batch_polls:
            out.append(Message(poll_ms, index, pending[0], len(pending), False))
            pending = []
    return sorted(out)  # a late poll goes after the newer ones sent before it


def poll_time_ms(w: Workload, index: int, seq: int) -> int:
    """The device time of poll ``seq`` of device ``index`` (from the run's origin)."""
    return _phase_of(w, index) + (seq - 1) * w.step_ms


@functools.lru_cache(maxsize=1 << 20)
def _phase_of(w: Workload, index: int) -> int:
    # Seeding a generator costs more than encoding the poll: once a device.
    return _phase(w, index, _device_rng(w, index))


def enterprise_messages(w: Workload, e: int, duration_ms: int) -> list[Message]:
    """The gateway messages of enterprise ``e``: each step's on-time polls of all
    its devices in one, each held-back poll in one of its own."""
    first = e * w.devices_per_enterprise
    on_time: dict[tuple[int, int], list[int]] = {}  # (send_ms, seq) -> devices
    late: list[Message] = []
    for i in range(first, first + w.devices_per_enterprise):
        for m in device_messages(w, i, duration_ms):
            if m.late:
                late.append(replace(m, devices=(i,)))
            else:
                on_time.setdefault((m.send_ms, m.first_seq), []).append(i)
    out = [
        Message(send_ms, devices[0], seq, 1, False, tuple(devices))
        for (send_ms, seq), devices in on_time.items()
    ]
    return sorted(out + late)


def schedule(
    w: Workload, duration_ms: int, *, part: int = 0, parts: int = 1
) -> list[Message]:
    """Every message of the devices of ``part`` (devices ``i % parts == part``;
    with gateway messages enterprises ``e % parts == part``) in intended send
    order."""
    if w.gateway:
        per_enterprise = (
            enterprise_messages(w, e, duration_ms)
            for e in range(part, w.enterprises, parts)
        )
        return list(heapq.merge(*per_enterprise))
    per_device = (
        device_messages(w, i, duration_ms) for i in range(part, w.devices, parts)
    )
    return list(heapq.merge(*per_device))


def encode(w: Workload, park: str, m: Message, t0_ms: int) -> tuple[str, bytes]:
    """The topic and wire payload of ``m`` for a run starting at ``t0_ms``.

    Values are a function of (seed, device, seq, metric): counters grow, gauges vary.
    """
    if m.devices:
        return _encode_gateway(w, park, m, t0_ms)
    enterprise, device = device_ids(w, m.device_index)
    readings = []
    for seq in range(m.first_seq, m.first_seq + m.polls):
        ts = t0_ms + poll_time_ms(w, m.device_index, seq)
        for k in range(w.metrics_per_device):
            metric, unit = METRICS[k % len(METRICS)]
            readings.append(
                Reading(seq, metric, _value(w, m.device_index, seq, k), unit, ts)
            )
    batch = TelemetryBatch(park, enterprise, device, tuple(readings))
    return telemetry_topic(park, enterprise, device), encode_batch(batch)


def gateway_id(enterprise: str) -> str:
    """The bench's agent of ``enterprise`` (the topic's third id)."""
    return f"agent.{enterprise}"


def _encode_gateway(
    w: Workload, park: str, m: Message, t0_ms: int
) -> tuple[str, bytes]:
    enterprise = device_ids(w, m.device_index)[0]
    seq = m.first_seq
    batches = []
    for i in m.devices:
        ts = t0_ms + poll_time_ms(w, i, seq)
        readings = []
        for k in range(w.metrics_per_device):
            metric, unit = METRICS[k % len(METRICS)]
            readings.append(Reading(seq, metric, _value(w, i, seq, k), unit, ts))
        batches.append(
            TelemetryBatch(park, enterprise, device_ids(w, i)[1], tuple(readings))
        )
    gateway = gateway_id(enterprise)
    # orjson: the same JSON as encode_gateway, in a fifth of the time
    payload = orjson.dumps(
        GatewayBatch(park, enterprise, gateway, tuple(batches)).to_json()
    )
    return telemetry_topic(park, enterprise, gateway), payload


def _value(w: Workload, index: int, seq: int, k: int) -> float:
    metric = METRICS[k % len(METRICS)][0]
    base = (w.seed * 7919 + index * 104729 + k * 31) % 10_000
    if metric in _COUNTERS:
        return float(base + seq * (1 + (index + k) % 5)) + 0.5
    return float((base + seq * 37) % 1000) / 10 if metric != "power_factor" else 0.9


# -- open-loop publishing -------------------------------------------------------


@dataclass
class AckLog:
    """Acknowledged readings and when the last was acknowledged (thread-safe)."""

    readings: int = 0
    last_ack_s: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def ack(self, readings: int, at_s: float) -> None:
        with self._lock:
            self.readings += readings
            self.last_ack_s = max(self.last_ack_s, at_s)


@dataclass(frozen=True)
class PublisherResult:
    """What one publisher did; times in seconds on the wall clock."""

    offered_readings: int
    acked_readings: int
    messages: int
    t0_s: float
    duration_s: float
    last_ack_s: float
    max_send_lag_s: float  # how far behind the schedule a send was, at worst
    cpu_s: float = 0.0  # the publisher process's CPU, its schedule included


@dataclass(frozen=True)
class Verdict:
    offered_rate: float
    achieved_rate: float
    offered_readings: int
    acked_readings: int
    max_send_lag_s: float
    valid: bool
    reason: str

    def line(self) -> str:
        state = "VALID" if self.valid else f"INVALID ({self.reason})"
        return (
            f"offered {self.offered_rate:,.0f} readings/s, achieved "
            f"{self.achieved_rate:,.0f} readings/s "
            f"({self.acked_readings:,}/{self.offered_readings:,} acknowledged, "
            f"worst send lag {self.max_send_lag_s * 1000:.0f} ms): {state}"
        )


def verdict(results: list[PublisherResult], tolerance: float = TOLERANCE) -> Verdict:
    """Offered and achieved rates of the whole run (all publishers) and whether the
    run is valid (see the module doc)."""
    offered = sum(r.offered_readings for r in results)
    acked = sum(r.acked_readings for r in results)
    t0 = min(r.t0_s for r in results)
    duration = max(r.duration_s for r in results)
    span = max(duration, max(r.last_ack_s for r in results) - t0)
    offered_rate = offered / duration
    achieved_rate = acked / span
    lag = max(r.max_send_lag_s for r in results)
    reason = ""
    if acked < offered:
        reason = f"{offered - acked} readings not acknowledged"
    elif achieved_rate < offered_rate * (1 - tolerance):
        reason = (
            f"achieved rate {achieved_rate:,.0f}/s is more than {tolerance:.0%} "
            f"below the offered {offered_rate:,.0f}/s"
        )
    return Verdict(offered_rate, achieved_rate, offered, acked, lag, not reason, reason)


Send = Callable[[str, bytes, int], None]  # topic, payload, readings (acks to AckLog)


def run_open_loop(
    w: Workload,
    park: str,
    messages: list[Message],
    *,
    t0_s: float,
    duration_s: float,
    send: Send,
    acks: AckLog,
    ack_timeout_s: float = 10.0,
    clock: Callable[[], float] = time.time,
) -> PublisherResult:
    """Send ``messages`` at their intended times from ``t0_s`` (wall clock), never
    waiting for acknowledgements; then wait up to ``ack_timeout_s`` for the last."""
    t0_ms = round(t0_s * 1000)
    offered = sum(m.readings(w) for m in messages)
    max_lag = 0.0
    for m in messages:
        topic, payload = encode(w, park, m, t0_ms)
        due = t0_s + m.send_ms / 1000
        now = clock()
        if due > now:
            time.sleep(due - now)
        else:
            max_lag = max(max_lag, now - due)
        send(topic, payload, m.readings(w))
    deadline = clock() + ack_timeout_s
    while acks.readings < offered and clock() < deadline:
        time.sleep(0.01)
    return PublisherResult(
        offered,
        acks.readings,
        len(messages),
        t0_s,
        duration_s,
        acks.last_ack_s,
        max_lag,
        time.process_time(),
    )


@dataclass(frozen=True)
class PublishJob:
    """What one publisher process is given (picklable)."""

    workload: Workload
    park: str
    host: str
    port: int
    part: int
    parts: int
    t0_s: float
    duration_s: float


def publish_part(job: PublishJob) -> PublisherResult:
    """Publish the devices of ``job.part`` with paho at QoS 1 (one process)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    w = job.workload
    messages = schedule(w, round(job.duration_s * 1000), part=job.part, parts=job.parts)
    acks = AckLog()
    readings_of: dict[int, int] = {}  # sent, not acknowledged yet
    early: dict[int, float] = {}  # acknowledged before send() recorded it
    lock = threading.Lock()  # never held while calling paho (its own locks)

    def on_publish(_c: Any, _u: Any, mid: int, _r: Any, _p: Any) -> None:
        now = time.time()
        with lock:
            n = readings_of.pop(mid, None)
            if n is None:
                early[mid] = now
        if n is not None:
            acks.ack(n, now)

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-load-{job.park}-{job.part}",
        clean_session=True,
        protocol=mqtt.MQTTv311,
    )
    client.max_inflight_messages_set(10_000)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(job.host, job.port, keepalive=30)
    client.loop_start()

    def send(topic: str, payload: bytes, readings: int) -> None:
        mid = client.publish(topic, payload, qos=1).mid
        with lock:
            at = early.pop(mid, None)
            if at is None:
                readings_of[mid] = readings
        if at is not None:
            acks.ack(readings, at)

    try:
        return run_open_loop(
            w,
            job.park,
            messages,
            t0_s=job.t0_s,
            duration_s=job.duration_s,
            send=send,
            acks=acks,
        )
    finally:
        client.disconnect()
        client.loop_stop()


def publish_all(
    w: Workload,
    park: str,
    host: str,
    port: int,
    *,
    t0_s: float,
    duration_s: float,
    publishers: int,
    stop: threading.Event | None = None,
) -> list[PublisherResult]:
    """Run ``publishers`` processes over one schedule starting at ``t0_s`` (leave a
    second or two for the processes to start and connect); their results.

    ``stop`` set: the processes are terminated and :class:`Stopped` is raised (a
    run interrupted need not wait for the rest of its schedule)."""
    jobs = [
        PublishJob(w, park, host, port, k, publishers, t0_s, duration_s)
        for k in range(publishers)
    ]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(publishers) as pool:  # leaving it terminates the processes
        pending = pool.map_async(publish_part, jobs)
        while not pending.ready():
            if stop is not None and stop.wait(0.2):
                raise Stopped("the publishers were stopped")
            pending.wait(0.2)
        return pending.get()


class Stopped(Exception):
    """The publishers were told to stop before their schedule ended."""
