"""Shared fixtures: endpoints of the local services and per-test isolation.

The services are started by ``deploy/local/services up`` (the README's test command
does it). A test that needs a service which does not answer **fails** with the
command to start it; it never skips, so CI cannot pass without the real services.
Each test owns its data: a fresh PostgreSQL schema, a fresh Kafka topic prefix and
a fresh park id (hence MQTT topics).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from smartpark.settings import Settings
from tests.support.mosquitto import TestBroker
from tests.support.settings import platform_settings

# The suite shares two cores with Kafka and PostgreSQL: timing-based health checks
# would fail on load, not on bugs.
settings.register_profile(
    "smartpark", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("smartpark")

SERVICES_HINT = "start them with: deploy/local/services up"


def _endpoint(var: str, default: str) -> tuple[str, int]:
    host, _, port = os.environ.get(var, default).rpartition(":")
    return host, int(port)


def _require(name: str, host: str, port: int) -> None:
    try:
        with socket.create_connection((host, port), timeout=2):
            return
    except OSError as exc:
        pytest.fail(
            f"{name} is not answering on {host}:{port} ({exc}); {SERVICES_HINT}"
        )


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    dsn = os.environ.get(
        "SMARTPARK_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:54329/smartpark"
    )
    _require("PostgreSQL", "127.0.0.1", int(dsn.rsplit(":", 1)[1].split("/")[0]))
    return dsn


@pytest.fixture(scope="session")
def timescale_dsn() -> str:
    dsn = os.environ.get(
        "SMARTPARK_TEST_TIMESCALE_DSN",
        "postgresql://postgres:postgres@127.0.0.1:54330/postgres",
    )
    _require(
        "PGlite TimescaleDB (services up --with-timescale)",
        "127.0.0.1",
        int(dsn.rsplit(":", 1)[1].split("/")[0]),
    )
    return dsn


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    host, port = _endpoint("SMARTPARK_TEST_KAFKA", "127.0.0.1:19092")
    _require("Kafka", host, port)
    return f"{host}:{port}"


@pytest.fixture(scope="session")
def mqtt_addr() -> tuple[str, int]:
    host, port = _endpoint("SMARTPARK_TEST_MQTT", "127.0.0.1:18830")
    _require("Mosquitto", host, port)
    return host, port


@pytest.fixture
def uid() -> str:
    """A short id unique to this test, for schemas, topics, parks and groups."""
    return uuid.uuid4().hex[:10]


@pytest.fixture
def topic_prefix(uid: str) -> Iterator[str]:
    """This test's Kafka topic prefix; its topics on the local broker are deleted
    afterwards, as ``db_schema`` drops its schema."""
    prefix = f"t{uid}."
    yield prefix
    _delete_topics(prefix)


def _delete_topics(prefix: str) -> None:
    """Delete the local broker's topics named ``prefix``*. Kept, every test's four
    topics (16 partitions) piled up: with thousands of partitions a broker killed
    by a drill took more than the services script's two minutes to load them
    again. Nothing to do when the broker is not answering (a test that used no
    Kafka, or the cluster's own tests)."""
    import asyncio
    import threading

    from aiokafka.admin import AIOKafkaAdminClient

    host, port = _endpoint("SMARTPARK_TEST_KAFKA", "127.0.0.1:19092")
    try:
        socket.create_connection((host, port), timeout=2).close()
    except OSError:
        return

    async def delete() -> None:
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{host}:{port}", request_timeout_ms=30_000
        )
        await admin.start()
        try:
            ours = [t for t in await admin.list_topics() if t.startswith(prefix)]
            if ours:
                await admin.delete_topics(ours)
        finally:
            await admin.close()

    failed: list[BaseException] = []

    def run() -> None:  # a loop of its own: the test's may still be open
        try:
            asyncio.run(delete())
        except BaseException as exc:  # raised below, in the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run, name="delete-test-topics")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]


@pytest.fixture
def park_id(uid: str) -> str:
    return f"park{uid}"


@pytest.fixture
def db_schema(pg_dsn: str, uid: str) -> Iterator[str]:
    """A fresh schema in the test database, dropped afterwards."""
    import psycopg
    from psycopg import sql

    name = f"t_{uid}"
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
    yield name
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)))


@pytest.fixture
async def kafka_admin(kafka_bootstrap: str) -> AsyncIterator[object]:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        yield admin
    finally:
        await admin.close()


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[TestBroker]:
    """A Mosquitto of this test's own, with persistence: stop it, freeze it."""
    with TestBroker(tmp_path / "broker", persistence=True) as broker:
        yield broker


@pytest.fixture
def platform(
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    pg_dsn: str,
    db_schema: str,
    topic_prefix: str,
    park_id: str,
) -> Settings:
    """Settings for the platform services on the local services, isolated to this
    test: its own topics, consumer groups, MQTT subscription and schema."""
    return platform_settings(
        mqtt_addr,
        kafka_bootstrap,
        topic_prefix,
        park_id,
        pg_dsn=pg_dsn,
        db_schema=db_schema,
    )
