"""The demo's embedded services start, answer their protocols and leave nothing behind.

They need no local services: each test starts its own from the ``demo`` extra's wheels.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from paho.mqtt.enums import CallbackAPIVersion

from demo.embedded import (
    EmbeddedKafka,
    EmbeddedMqttBroker,
    EmbeddedPostgres,
    EmbeddedServiceError,
    free_port,
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # An exited child of a dead parent stays a zombie until PID 1 reaps it, and a
    # container's PID 1 may never do that.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:  # reaped meanwhile
        return False
    except OSError:  # no /proc (macOS): trust kill(0)
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def pg_dir() -> Iterator[Path]:
    # Not tmp_path: as root the server runs as "nobody", who cannot enter pytest's
    # private base directory. A directory of our own in /tmp, searchable by others.
    base = Path(tempfile.mkdtemp(prefix="sp-demo-test-"))
    base.chmod(0o711)
    yield base / "pg"
    shutil.rmtree(base)


async def test_postgres_serves_a_fresh_database_and_stops(pg_dir: Path) -> None:
    pg = EmbeddedPostgres(pg_dir, database="demo_test")
    async with pg as dsn:
        assert dsn.endswith("/demo_test")
        async with await psycopg.AsyncConnection.connect(dsn) as conn:
            cur = await conn.execute("SELECT current_database(), version()")
            row = await cur.fetchone()
        assert row is not None
        assert row[0] == "demo_test"
        assert "PostgreSQL 18" in row[1]
        pid = pg.pid
        assert pid is not None
    assert not _alive(pid)
    # A kept data directory is reused: the database is still there.
    async with (
        EmbeddedPostgres(pg_dir, database="demo_test") as dsn,
        await psycopg.AsyncConnection.connect(dsn) as conn,
    ):
        await conn.execute("SELECT 1")


async def test_postgres_on_a_taken_fixed_port_fails_with_its_log(
    pg_dir: Path,
) -> None:
    port = free_port()
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", port)
    async with server:
        with pytest.raises(EmbeddedServiceError, match="postgres exited") as info:
            async with EmbeddedPostgres(pg_dir, port):
                pass
    assert "postgres.log" in str(info.value)


def _persistent_subscriber(
    port: int, received: list[bytes], got: threading.Event, want: int
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="demo-test-bridge",
        clean_session=False,
        protocol=mqtt.MQTTv311,
        manual_ack=True,
    )

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        received.append(bytes(msg.payload))
        c.ack(msg.mid, msg.qos)
        if len(received) >= want:
            got.set()

    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe("sp/v1/+/+/+/telemetry", qos=1)
    client.loop_start()
    return client


def _publish(port: int, payloads: list[bytes]) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id="demo-test-edge",
        clean_session=False,
        protocol=mqtt.MQTTv311,
    )
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for payload in payloads:
            client.publish("sp/v1/p/e/d/telemetry", payload, qos=1).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_mqtt_broker_queues_for_an_offline_persistent_session() -> None:
    async with EmbeddedMqttBroker() as (host, port):
        assert host == "127.0.0.1"
        received: list[bytes] = []
        got = threading.Event()
        sub = await asyncio.to_thread(_persistent_subscriber, port, received, got, 1)
        await asyncio.to_thread(_publish, port, [b"online"])
        assert await asyncio.to_thread(got.wait, 5)
        sub.disconnect()
        sub.loop_stop()
        # Longer than amqtt's 1 s session sweep, which drops anonymous sessions.
        await asyncio.to_thread(_publish, port, [b"q1", b"q2", b"q3"])
        await asyncio.sleep(1.5)
        got.clear()
        sub = await asyncio.to_thread(_persistent_subscriber, port, received, got, 4)
        try:
            assert await asyncio.to_thread(got.wait, 5), received
        finally:
            sub.disconnect()
            sub.loop_stop()
        assert received == [b"online", b"q1", b"q2", b"q3"]
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


async def test_kafka_produces_consumes_commits_and_seeks(tmp_path: Path) -> None:
    kafka = EmbeddedKafka(log_path=tmp_path / "tansu.log")
    async with kafka as bootstrap:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("t.demo", 2, 1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", enable_idempotence=False
        )
        await producer.start()
        try:
            sent = [
                await producer.send("t.demo", f"v{i}".encode(), key=b"ent", partition=0)
                for i in range(20)
            ]
            offsets = [(await f).offset for f in sent]
        finally:
            await producer.stop()
        assert offsets == list(range(20))
        tp = TopicPartition("t.demo", 0)
        consumer = AIOKafkaConsumer(
            "t.demo",
            bootstrap_servers=bootstrap,
            group_id="demo-test",
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
        await consumer.start()
        try:
            values: list[bytes] = []
            async with asyncio.timeout(30):
                while len(values) < 20:
                    batch = await consumer.getmany(timeout_ms=500)
                    values += [r.value for r in batch.get(tp, []) if r.value]
            await consumer.commit({tp: 20})
            assert await consumer.committed(tp) == 20
            consumer.seek(tp, 5)
            again = await consumer.getmany(tp, timeout_ms=5000, max_records=1)
            assert [r.value for r in again[tp]] == [b"v5"]
        finally:
            await consumer.stop()
        assert values == [f"v{i}".encode() for i in range(20)]
        pid = kafka.pid
        assert pid is not None
    assert not _alive(pid)


_HOLD_KAFKA = """
import asyncio, pathlib, sys
from demo.embedded import EmbeddedKafka

async def main():
    kafka = EmbeddedKafka(log_path=pathlib.Path(sys.argv[1]))
    async with kafka:
        print(kafka.pid, flush=True)
        await asyncio.sleep(60)

asyncio.run(main())
"""


def test_a_killed_owner_leaves_no_service_running(tmp_path: Path) -> None:
    owner = subprocess.Popen(
        [sys.executable, "-c", _HOLD_KAFKA, str(tmp_path / "tansu.log")],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert owner.stdout is not None
        pid = int(owner.stdout.readline())
        assert _alive(pid)
        owner.send_signal(signal.SIGKILL)
        owner.wait(5)
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait()
        if owner.stdout is not None:
            owner.stdout.close()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid)
