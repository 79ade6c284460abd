"""Webhook notifier tests: settings, real alert events, a notifier in this process."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import orjson
from aiokafka import AIOKafkaProducer

from notifier import events, signing
from notifier.service import Notifier
from rules.engine import Engine
from rules.model import Obs
from smartpark.settings import NotifierSettings, Settings
from storage import Storage, Subscription
from storage.secretbox import SecretBox
from stream.kafka import ensure_topics
from tests.support.webhooks import Received

T0 = 1_704_067_200_000
FAST_SCHEDULE = [0, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300, 300]


def notifier_settings(platform: Settings, **overrides: Any) -> Settings:
    """The test's own notifier group; the loopback receivers allow-listed; a
    schedule of seconds instead of days."""
    cfg = NotifierSettings(
        group_id=f"notifier-{platform.rules.group_id}",
        allow=["127.0.0.1/32"],
        schedule_ms=FAST_SCHEDULE,
        poll_ms=100,
        timeout_s=3.0,
        connect_timeout_s=1.0,
    ).model_copy(update=overrides)
    return platform.model_copy(update={"notifier": cfg})


def keys(settings: Settings) -> SecretBox:
    """What the test's storage encrypts webhook secrets with (as the notifier)."""
    return SecretBox.from_settings(settings.webhooks)


def notifier_env(settings: Settings) -> dict[str, str]:
    n = settings.notifier
    return {
        "SMARTPARK_NOTIFIER__GROUP_ID": n.group_id,
        "SMARTPARK_NOTIFIER__ALLOW": json.dumps(n.allow),
        "SMARTPARK_NOTIFIER__SCHEDULE_MS": json.dumps(n.schedule_ms),
        "SMARTPARK_NOTIFIER__POLL_MS": str(n.poll_ms),
        "SMARTPARK_NOTIFIER__TIMEOUT_S": str(n.timeout_s),
        "SMARTPARK_NOTIFIER__CONNECT_TIMEOUT_S": str(n.connect_timeout_s),
    }


def alert_events(
    park: str, enterprises: Sequence[str], alerts: int
) -> list[dict[str, Any]]:
    """Real events of the rule core: ``alerts`` threshold alerts per enterprise,
    each opened then resolved, interleaved across enterprises."""
    from rules.pack import parse_pack

    pack = parse_pack(
        {"pack": "hooks", "version": "1",
         "rules": [{"id": "nh3", "kind": "threshold", "metric": "nh3", "limit": 8}]}
    )  # fmt: skip
    engine = Engine(pack)
    out: list[dict[str, Any]] = []
    for i in range(alerts * 2):
        for ent in enterprises:
            value = 9.0 if i % 2 == 0 else 5.0
            obs = Obs(T0 + i * 1000, park, ent, f"{ent}.stack", "nh3", value)
            out += [e.to_json() for e in engine.feed(obs)]
    return out


async def produce_events(settings: Settings, evts: Sequence[dict[str, Any]]) -> None:
    """Onto the alerts topic, keyed by enterprise as the runner does."""
    await ensure_topics(settings.kafka)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for e in evts:
            await producer.send_and_wait(
                settings.kafka.alerts_topic,
                orjson.dumps(e),
                key=str(e["scope"]["enterprise"]).encode(),
            )
    finally:
        await producer.stop()


async def subscribe(
    storage: Storage,
    sid: str,
    park: str,
    enterprise: str | None,
    url: str,
    types: Sequence[str] = events.EVENT_TYPES,
) -> str:
    """A subscription stored directly (the CLI's SSRF check is tested apart); its
    secret."""
    secret = signing.generate_secret()
    await storage.webhooks.create_subscription(
        Subscription(sid, park, enterprise, url, tuple(types)), secret
    )
    return secret


@contextlib.asynccontextmanager
async def running_notifier(settings: Settings) -> AsyncIterator[Notifier]:
    async with Notifier(settings) as notifier:
        task = asyncio.create_task(notifier.run())
        try:
            yield notifier
        finally:
            notifier.stop()
            await task


async def until(
    check: Callable[[], Awaitable[object]], *, what: str, timeout_s: float = 30.0
) -> None:
    """Poll ``check`` until it returns something true."""
    deadline = time.monotonic() + timeout_s
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        await asyncio.sleep(0.1)


def at_least(n: int) -> Callable[[list[Received]], bool]:
    """A :meth:`Receiver.wait_for` predicate: ``n`` requests or more."""
    return lambda received: len(received) >= n


def ids(received: Sequence[Received]) -> list[str]:
    return [r.headers["webhook-id"] for r in received]


def body_of(r: Received) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(r.body)
    return doc
