"""Simulated park → EdgeAgent → real Mosquitto → a real paho subscriber.

Every (device, seq) the agent produced must arrive, complete, in order per device:
with faulty devices beside live ones, through a broker outage of ~10 s (a private
Mosquitto this test stops and starts), and across an agent restart with a backlog.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from simulators.device import Fault
from simulators.park import SimulatedPark
from smartpark import wire

pytestmark = pytest.mark.integration

POLL_S = 0.2


class Recorder:
    """A real MQTT subscriber that records every message it receives, in order.

    ``persistent`` uses a persistent session, so the broker queues messages for it
    while it reconnects after an outage.
    """

    def __init__(self, host: str, port: int, topic: str, *, persistent: bool) -> None:
        self.topic = topic
        self._lock = threading.Lock()
        self._messages: list[tuple[str, bytes]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"recorder-{uuid.uuid4().hex[:8]}",
            clean_session=not persistent,
            protocol=mqtt.MQTTv311,
        )
        self._client.reconnect_delay_set(1, 1)
        self._client.on_connect = self._on_connect
        self._client.on_subscribe = self._on_subscribe
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def __enter__(self) -> Recorder:
        self._client.connect(self._host, self._port, keepalive=10)
        self._client.loop_start()
        assert self._subscribed.wait(5), "no SUBACK"
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self, c: mqtt.Client, u: object, f: object, rc: object, p: object
    ) -> None:
        c.subscribe(self.topic, qos=1)

    def _on_subscribe(
        self, c: mqtt.Client, u: object, mid: int, rc: object, p: object
    ) -> None:
        self._subscribed.set()

    def _on_message(self, c: mqtt.Client, u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self._messages.append((msg.topic, bytes(msg.payload)))

    def messages(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self._messages)

    def batches(self) -> list[wire.TelemetryBatch]:
        now_ms = int(time.time() * 1000)
        return [
            wire.decode_batch(payload, now_ms=now_ms)  # the platform's own validation
            for topic, payload in self.messages()
            if topic.endswith("/telemetry")
        ]

    def statuses(self, device: str) -> list[wire.DeviceStatus]:
        out = []
        for topic, payload in self.messages():
            if topic.endswith(f"/{device}/status"):
                doc = json.loads(payload)
                out.append(
                    wire.DeviceStatus(doc["online"], doc["ts_ms"], doc["reason"])
                )
        return out


async def until(predicate: Callable[[], bool], within_s: float, what: str) -> None:
    deadline = time.monotonic() + within_s
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within_s} s waiting for {what}")
        await asyncio.sleep(0.05)


def first_seen_seqs(batches: list[wire.TelemetryBatch]) -> dict[str, list[int]]:
    """Per device, each seq in the order it first arrived (re-deliveries ignored)."""
    seen: dict[str, list[int]] = defaultdict(list)
    done: set[tuple[str, int]] = set()
    for b in batches:
        for r in b.readings:
            if (b.device, r.seq) not in done:
                done.add((b.device, r.seq))
                seen[b.device].append(r.seq)
    return seen


def delivered_through(rec: Recorder, last: dict[str, int]) -> bool:
    seen = first_seen_seqs(rec.batches())
    return all(len(seen.get(d, [])) >= n for d, n in last.items())


def assert_complete_and_ordered(
    batches: list[wire.TelemetryBatch],
    last: dict[str, int],
    metrics: dict[str, set[str]],
) -> None:
    seen = first_seen_seqs(batches)
    for device, n in last.items():
        assert seen[device] == list(range(1, n + 1)), f"{device}: gap or reorder"
    per_poll: dict[tuple[str, int], set[str]] = defaultdict(set)
    for b in batches:
        for r in b.readings:
            per_poll[(b.device, r.seq)].add(r.metric)
    for (device, seq), got in per_poll.items():
        assert got == metrics[device], f"{device} seq {seq} is incomplete"


def metrics_of(cfg: AgentConfig) -> dict[str, set[str]]:
    return {d.id: {r.metric for r in d.registers} for d in cfg.devices}


async def test_every_poll_arrives_in_order_while_faulty_devices_fail(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    async with SimulatedPark(
        seed=11, park=park_id, enterprises=1, devices_per_enterprise=4, port_base=0
    ) as park:
        cfg = park.agent_configs(
            host, port, tmp_path, POLL_S, timeout_s=0.5, max_backoff_s=2.0
        )[0]
        live_a, dead, broken, live_b = (d.id for d in cfg.devices)
        park.set_fault(dead, Fault.timeout())
        park.set_fault(broken, Fault.exception(4))
        with Recorder(host, port, f"sp/v1/{park_id}/#", persistent=False) as rec:
            started = time.monotonic()
            async with EdgeAgent(cfg) as agent:
                await until(
                    lambda: (
                        min(agent.stats().devices[d].last_seq for d in (live_a, live_b))
                        >= 15
                    ),
                    10,
                    "15 polls of each live device",
                )
                elapsed = time.monotonic() - started
                stats = agent.stats()
            after_stop = agent.stats()
            last = {d: after_stop.devices[d].last_seq for d in (live_a, live_b)}
            await until(lambda: delivered_through(rec, last), 5, "delivery")
            await asyncio.sleep(0.3)  # anything late would show up as a duplicate
            batches = rec.batches()
        served = park.served_polls()

    # The dead device (0.5 s timeouts, retried a few times meanwhile) and the
    # broken one did not hold the live ones up: their polls kept the 0.2 s cadence
    # (one hiccup allowed for a loaded machine), 15 of them in about 3 s.
    assert elapsed < 15 * POLL_S * 2 + 1, elapsed
    for device in (live_a, live_b):
        stamps = sorted(
            {r.ts_ms for b in batches if b.device == device for r in b.readings}
        )
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        assert sum(gap >= 450 for gap in gaps) <= 1, gaps
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
    assert {b.device for b in batches} == {live_a, live_b}
    # normal operation: no duplicates at all
    assert sum(len(b.readings) for b in batches) == sum(
        n * len(metrics_of(cfg)[d]) for d, n in last.items()
    )
    # one successful Modbus read per seq (a read cut short by the stop may be extra)
    for device, n in last.items():
        assert 0 <= served[device] - n <= 1
    assert served[dead] == served[broken] == 0
    # failures counted, with reasons, and backing off
    dead_stats, broken_stats = stats.devices[dead], stats.devices[broken]
    assert dead_stats.errors >= 2
    assert dead_stats.last_error == "no answer within 0.5 s"
    assert broken_stats.errors >= 2
    assert broken_stats.last_error.startswith(
        "Modbus exception 4 (server device failure)"
    )
    assert broken_stats.backoff_s > 0
    assert (dead_stats.polls_ok, dead_stats.last_seq) == (0, 0)
    # everything flushed on stop, every message acknowledged
    assert after_stop.outbox.rows == 0
    assert (
        after_stop.publisher.acked_messages == after_stop.publisher.published_messages
    )
    # retained statuses: the dead device went offline with its reason, and on a
    # graceful stop the agent and every device say so
    assert "no answer within 0.5 s" in [
        s.reason for s in rec.statuses(dead) if not s.online
    ]
    agent_status = rec.statuses(cfg.agent_id)
    assert agent_status[0].online
    assert (agent_status[-1].online, agent_status[-1].reason) == (
        False,
        "agent stopped",
    )
    assert rec.statuses(live_a)[0].online
    assert rec.statuses(live_a)[-1].reason == "agent stopped"


# --- a private broker we can stop -------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Mosquitto:
    """A private mosquitto process with persistence, stoppable and restartable."""

    def __init__(self, workdir: Path, port: int, exe: str) -> None:
        self.port = port
        self.exe = exe
        workdir.mkdir()
        self.log = workdir / "mosquitto.log"
        self.conf = workdir / "mosquitto.conf"
        lines = [
            f"listener {port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {workdir}/",
            "log_dest stderr",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", which cannot write here.
            lines.append("user root")
        self.conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.exe, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"mosquitto did not start: {self.log.read_text()}")
                time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing is acknowledged."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its sessions
            self.proc.send_signal(signal.SIGCONT)  # in case it was paused
            self.proc.wait(10)
            self.proc = None


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail("mosquitto is not installed: apt-get install -y mosquitto")
    broker = Mosquitto(tmp_path / "broker", free_port(), exe)
    broker.start()
    yield broker
    broker.stop()


def fast_reconnect(cfg: AgentConfig) -> AgentConfig:
    broker = cfg.broker.model_copy(update={"reconnect_min_s": 1, "reconnect_max_s": 1})
    return cfg.model_copy(update={"broker": broker})


@pytest.mark.slow
async def test_broker_outage_loses_nothing_and_keeps_order(
    private_broker: Mosquitto, tmp_path: Path
) -> None:
    port = private_broker.port
    async with SimulatedPark(
        seed=5, park="outage", enterprises=1, devices_per_enterprise=3, port_base=0
    ) as park:
        cfg = fast_reconnect(park.agent_configs("127.0.0.1", port, tmp_path, POLL_S)[0])
        devices = [d.id for d in cfg.devices]
        with Recorder(
            "127.0.0.1", port, "sp/v1/outage/+/+/telemetry", persistent=True
        ) as rec:
            async with EdgeAgent(cfg) as agent:

                def seqs() -> dict[str, int]:
                    return {d: agent.stats().devices[d].last_seq for d in devices}

                await until(lambda: min(seqs().values()) >= 5, 5, "first polls")
                await until(lambda: delivered_through(rec, seqs()), 5, "first delivery")
                # Freeze the broker first so messages are in flight (sent, not
                # acknowledged) when it goes down: paho must re-send those.
                private_broker.pause()
                await until(
                    lambda: agent.stats().publisher.in_flight >= 5,
                    5,
                    "unacked messages",
                )
                private_broker.stop()
                await until(lambda: not agent.stats().broker_connected, 5, "disconnect")
                before = seqs()
                await asyncio.sleep(10)
                during = agent.stats()
                private_broker.start()
                await until(lambda: agent.stats().broker_connected, 10, "reconnect")
                await until(lambda: agent.stats().outbox.rows == 0, 15, "backlog")
            final = agent.stats()
            last = {d: final.devices[d].last_seq for d in devices}
            await until(lambda: delivered_through(rec, last), 10, "all delivered")
            batches = rec.batches()

    # polling went on into the outbox during the outage
    for d in devices:
        assert during.devices[d].last_seq >= before[d] + 30
    assert during.outbox.rows > 0
    assert during.publisher.in_flight >= 5
    # connected, lost once, reconnected (a graceful stop is not a lost connection)
    assert (final.publisher.connects, final.publisher.disconnects) == (2, 1)
    assert final.outbox.dropped_rows == final.outbox.refused_polls == 0
    assert_complete_and_ordered(batches, last, metrics_of(cfg))


@pytest.mark.slow
async def test_backlog_survives_an_agent_restart_and_seq_continues(
    private_broker: Mosquitto, tmp_path: Path
) -> None:
    port = private_broker.port
    async with SimulatedPark(
        seed=6, park="restart", enterprises=1, devices_per_enterprise=2, port_base=0
    ) as park:
        cfg = fast_reconnect(park.agent_configs("127.0.0.1", port, tmp_path, POLL_S)[0])
        devices = [d.id for d in cfg.devices]
        with Recorder(
            "127.0.0.1", port, "sp/v1/restart/+/+/telemetry", persistent=True
        ) as rec:
            private_broker.stop()  # the agent starts and stops while the broker is down
            async with EdgeAgent(cfg, flush_timeout_s=0.5) as agent:
                await until(
                    lambda: (
                        min(agent.stats().devices[d].last_seq for d in devices) >= 5
                    ),
                    5,
                    "polls into the outbox",
                )
            first_run = agent.stats()
            assert first_run.outbox.rows > 0  # stayed on disk
            private_broker.start()
            async with EdgeAgent(cfg) as agent:
                await until(lambda: agent.stats().outbox.rows == 0, 10, "backlog sent")
                await until(
                    lambda: all(
                        agent.stats().devices[d].last_seq
                        > first_run.devices[d].last_seq + 2
                        for d in devices
                    ),
                    5,
                    "new polls",
                )
            last = {d: agent.stats().devices[d].last_seq for d in devices}
            await until(lambda: delivered_through(rec, last), 10, "all delivered")
            batches = rec.batches()
    assert_complete_and_ordered(batches, last, metrics_of(cfg))
