"""Alert webhooks end to end on the real services, with real local HTTP receivers.

rules runner → alerts topic → notifier (queue in PostgreSQL) → signed HTTP POST →
a receiver that verifies what it gets the way an enterprise would.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from notifier import events, signing
from notifier.signing import WebhookVerificationError
from rules.engine import Engine
from rules.pack import parse_pack
from rules.runner import RulesRunner
from smartpark import wire
from smartpark.settings import Settings
from storage import DeliveryRow, Storage
from tests.support.notifier import (
    T0,
    alert_events,
    at_least,
    body_of,
    ids,
    keys,
    notifier_env,
    notifier_settings,
    produce_events,
    running_notifier,
    subscribe,
    until,
)
from tests.support.procs import ServiceProcess, services_script
from tests.support.rules import batch_obs
from tests.support.settings import settings_env
from tests.support.webhooks import Received, Receiver, Reply, silent_server

pytestmark = [pytest.mark.integration]

PACK = """\
pack: hooks
version: "1"
watermark_delay: 0
rules:
  - {id: nh3-slip, kind: threshold, metric: nh3, limit: 8, clear: 6}
  - {id: silent, kind: missing_data, metrics: [nh3], expected_interval: 10s,
     max_silence: 1min}
"""


def telemetry(park: str) -> list[wire.TelemetryBatch]:
    """Two enterprises; e1's stack breaches, goes silent for 2 minutes, and
    breaches again at the end (an alert left open)."""
    out = []
    seq: Counter[str] = Counter()
    for i in range(40):
        t = T0 + i * 10_000
        for ent in ("e1", "e2"):
            device = f"{ent}.stack"
            if ent == "e1" and 20 <= i < 32:
                continue  # silent
            value = 9.5 if ent == "e1" and i in (3, 4, 38, 39) else 5.0
            seq[device] += 1
            reading = wire.Reading(seq[device], "nh3", value, "mg/m3", t)
            out.append(wire.TelemetryBatch(park, ent, device, (reading,)))
    return out


def offline_core(pack_text: str, batches: list[wire.TelemetryBatch]) -> list[Any]:
    engine = Engine(parse_pack(yaml.safe_load(pack_text)))
    return [e.to_json() for b in batches for o in batch_obs(b) for e in engine.feed(o)]


async def test_alerts_from_the_runner_arrive_signed_and_verifiable(
    platform: Settings, park_id: str, tmp_path: Path
) -> None:
    from tests.integration.test_rules_runner import produce

    settings = notifier_settings(platform)
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK)
    batches = telemetry(park_id)
    expected = offline_core(PACK, batches)
    with Receiver() as enterprise, Receiver() as operators:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            e1_secret = await subscribe(
                storage, "sub-e1", park_id, "e1", enterprise.url
            )
            ops_secret = await subscribe(
                storage, "sub-ops", park_id, None, operators.url,
                ["device.offline", "device.back"],
            )  # fmt: skip
            async with RulesRunner(settings, pack_path) as runner:
                runner_task = asyncio.create_task(runner.run())
                async with running_notifier(settings):
                    await produce(settings, batches)
                    e1_events = [
                        e for e in expected if e["scope"]["enterprise"] == "e1"
                    ]
                    got = await asyncio.to_thread(
                        enterprise.wait_for, lambda r: len(r) >= len(e1_events), 60
                    )
                    # a person acknowledges the open alert: that is an event too
                    opened = next(
                        e for e in e1_events
                        if e["kind"] == "opened" and e["rule_id"] == "nh3-slip"
                        and e["alert_id"] not in {
                            x["alert_id"] for x in e1_events if x["kind"] == "resolved"
                        }
                    )  # fmt: skip
                    await storage.alerts.acknowledge(opened["alert_id"], by="duty-1")
                    got = await asyncio.to_thread(
                        enterprise.wait_for, lambda r: len(r) > len(e1_events), 30
                    )
                    offline = await asyncio.to_thread(
                        operators.wait_for, lambda r: len(r) >= 2, 30
                    )
                runner.stop()
                await runner_task

    # the enterprise got exactly its own events, in order, then the acknowledgement
    assert [body_of(r)["data"] for r in got[: len(e1_events)]] == e1_events
    ack = body_of(got[-1])
    assert (ack["type"], ack["data"]["alert_id"]) == (
        "alert.acknowledged",
        opened["alert_id"],
    )
    assert ack["data"]["evidence"]["acknowledged_by"] == "duty-1"
    assert [body_of(r)["type"] for r in got[: len(e1_events)]] == [
        events.event_type(e) for e in e1_events
    ]
    assert {"alert.opened", "alert.resolved", "device.offline", "device.back"} <= {
        body_of(r)["type"] for r in got
    }
    # the operators' park-wide subscription: only the device types it chose
    assert [body_of(r)["type"] for r in offline] == ["device.offline", "device.back"]

    for r, secret in [
        *((r, e1_secret) for r in got),
        *((r, ops_secret) for r in offline),
    ]:
        assert r.headers["content-type"] == "application/json"
        assert r.headers["webhook-id"] == body_of(r)["data"]["event_id"]
        signing.verify(secret, r.headers, r.body)  # what the README tells receivers
    sample = got[0]
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        signing.verify(e1_secret, sample.headers, sample.body.replace(b"9.5", b"1.5"))
    with pytest.raises(WebhookVerificationError, match="no matching v1 signature"):
        signing.verify(ops_secret, sample.headers, sample.body)  # another's secret
    stamp = int(sample.headers["webhook-timestamp"])
    with pytest.raises(WebhookVerificationError, match="too old"):
        signing.verify(e1_secret, sample.headers, sample.body, now_s=stamp + 301)
    assert abs(stamp - sample.wall_s) < 5


async def test_a_killed_notifier_and_a_failing_receiver_lose_nothing(
    platform: Settings, park_id: str, tmp_path: Path
) -> None:
    """The receiver answers 500 at first, then 200 slowly; the notifier is
    SIGKILLed twice while a request is in flight. Every event arrives at least
    once, de-duplicated by webhook-id exactly once, and one alert's resolve never
    before its open."""
    settings = notifier_settings(platform)
    evts = alert_events(park_id, ["e1", "e2", "e3"], alerts=8)  # 48 events
    in_flight = threading.Event()
    answered: dict[int, int] = {}

    def respond(r: Received) -> Reply:
        status = 500 if r.index < 12 else 200
        answered[r.index] = status
        if status == 200:
            in_flight.set()
            return Reply(200, delay_s=0.15)
        return Reply(500, body=b"database is down")

    log = tmp_path / "notifier.log"
    proc = ServiceProcess(
        ["notifier", "--stats-every", "1"],
        settings_env(settings) | notifier_env(settings),
        log,
    )
    with Receiver(respond) as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            secret = await subscribe(storage, "sub-1", park_id, None, receiver.url)
            await produce_events(settings, evts)
            proc.start()
            try:
                for kill in (20, 32):
                    await asyncio.to_thread(receiver.wait_for, at_least(kill), 60)
                    in_flight.clear()
                    assert await asyncio.to_thread(in_flight.wait, 10)
                    proc.kill()  # a request is being answered: not recorded as sent
                    proc.start()

                def all_ok(rs: list[Received]) -> bool:
                    ok = {
                        r.headers["webhook-id"]
                        for r in rs
                        if answered.get(r.index) == 200
                    }
                    return len(ok) == len(evts)

                got = await asyncio.to_thread(receiver.wait_for, all_ok, 90)
                store = storage.webhooks

                async def recorded() -> bool:
                    pending = await store.deliveries(status="pending")
                    return not pending

                await until(recorded, what="every delivery recorded as delivered")
            finally:
                rc = proc.stop()
            rows = await store.deliveries(subscription_id="sub-1")
            first = await store.attempts(rows[0].delivery_id)
    assert rc == 0, log.read_text()

    expected = [e["event_id"] for e in evts]
    assert set(ids(got)) == set(expected)  # every event at least once
    assert sorted(set(ids(got))) == sorted(expected)  # de-duplicated: exactly once
    repeats = [i for i, n in Counter(ids(got)).items() if n > 1]
    assert repeats, "the kills mid-request must cause resends of the same id"
    for r in got:
        signing.verify(secret, r.headers, r.body)
    # one alert's events: the resolve is first sent after the open was delivered
    first_ok: dict[str, int] = {}
    first_seen: dict[str, int] = {}
    for r in got:
        first_seen.setdefault(r.headers["webhook-id"], r.index)
        if answered[r.index] == 200:
            first_ok.setdefault(r.headers["webhook-id"], r.index)
    for e in evts:
        if e["kind"] == "resolved":
            opened = next(
                x
                for x in evts
                if x["alert_id"] == e["alert_id"] and x["kind"] == "opened"
            )
            assert first_ok[opened["event_id"]] < first_seen[e["event_id"]]
    assert {row.status for row in rows} == {"delivered"}
    assert len(rows) == len(evts)  # queued once each, across restarts
    assert first[0].status_code == 500
    assert first[0].outcome == "retry"
    assert "database is down" in (first[0].error or "")


async def test_a_dead_endpoint_does_not_delay_a_healthy_one(
    platform: Settings, park_id: str
) -> None:
    settings = notifier_settings(platform, timeout_s=2.0)
    with Receiver() as live, silent_server() as dead_url:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            await subscribe(storage, "sub-live", park_id, "live", live.url)
            await subscribe(storage, "sub-dead", park_id, "dead", dead_url)
            store = storage.webhooks

            async def dead_attempts_now() -> list[Any]:
                rows = await store.deliveries(subscription_id="sub-dead")
                return [
                    a for row in rows for a in await store.attempts(row.delivery_id)
                ]

            async with running_notifier(settings):
                baseline = await _latencies(settings, live, park_id, "base", dead=False)
                loaded = await _latencies(settings, live, park_id, "load", dead=True)
                # the dead endpoint is still being tried (each attempt hangs 2 s);
                # the live one was measured while its first attempts hung
                for _ in range(75):  # 15 s
                    if len(await dead_attempts_now()) >= 2:
                        break
                    await asyncio.sleep(0.2)
            dead_attempts = await dead_attempts_now()
    print(f"healthy endpoint latency: alone max {max(baseline):.3f} s, "
          f"beside a dead endpoint max {max(loaded):.3f} s")  # fmt: skip
    assert dead_attempts
    assert {a.outcome for a in dead_attempts} == {"retry"}
    assert all((a.error or "").startswith("timeout") for a in dead_attempts)
    assert len(dead_attempts) >= 2  # the dead endpoint was being tried meanwhile
    assert max(loaded) < max(baseline) + 0.5
    assert max(loaded) < 1.5  # the dead endpoint's timeout is 2 s


async def _latencies(
    settings: Settings, live: Receiver, park: str, tag: str, *, dead: bool
) -> list[float]:
    """Produce 8 events for the live endpoint (and, with ``dead``, one for the
    dead endpoint before each); seconds from produce to receipt of each."""
    out = []
    for i in range(8):
        ents = ["dead", "live"] if dead else ["live"]
        batch = [
            {**e, "event_id": f"{tag}{i}{ent}", "alert_id": f"{tag}{i}{ent}"}
            for e in alert_events(park, ents, 1)
            if e["kind"] == "opened" and (ent := e["scope"]["enterprise"])
        ]
        before = len(live.received)
        sent = time.time()
        await produce_events(settings, batch)
        got = await asyncio.to_thread(live.wait_for, at_least(before + 1), 10)
        [r] = got[before:]
        out.append(r.wall_s - sent)
        await asyncio.sleep(0.2)
    return out


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "smartpark.cli", "webhooks", *args],
        env=os.environ | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8080/hook", "loopback"),
        ("http://localhost/hook", "loopback"),
        ("http://[::1]/hook", "loopback"),
        ("http://10.1.2.3/hook", "private"),
        ("http://192.168.0.10/hook", "private"),
        ("http://169.254.169.254/latest/meta-data", "metadata"),
        ("http://[fe80::1]/hook", "link-local"),
        ("file:///etc/passwd", "scheme 'file' is not allowed"),
    ],
)
async def test_subscriptions_to_internal_addresses_are_refused(
    platform: Settings, url: str, reason: str
) -> None:
    async with Storage(platform.database, webhook_keys=keys(platform)) as storage:
        await storage.migrate()
    env = settings_env(platform)
    done = await asyncio.to_thread(
        _cli, "add", "--park", "p", "--enterprise", "e", "--url", url, env=env
    )
    assert done.returncode == 2, done.stdout
    assert "--url refused" in done.stderr, done.stderr
    assert reason in done.stderr, done.stderr
    assert done.stdout == ""


async def test_subscription_lifecycle_with_the_real_commands(
    platform: Settings, park_id: str
) -> None:
    """add (allow-listed) → ping → rotate (both secrets sign) → redeliver by id and
    by time range → disable; 410 disables; the last attempt fails visibly."""
    settings = notifier_settings(platform, schedule_ms=[0, 100, 100])
    env = settings_env(settings) | notifier_env(settings)
    with Receiver() as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            done = await asyncio.to_thread(
                _cli, "add", "--park", park_id, "--enterprise", "e1", "--url",
                receiver.url, "--events", "alert.opened,alert.resolved", env=env,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            sub = json.loads(done.stdout)
            sid, old_secret = sub["subscription_id"], sub["secret"]
            assert old_secret.startswith("whsec_")
            assert "shown only now" in done.stderr
            listed = await asyncio.to_thread(_cli, "list", "--park", park_id, env=env)
            assert "whsec_" not in listed.stdout
            assert sid in listed.stdout

            ping = await asyncio.to_thread(_cli, "ping", sid, env=env)
            assert ping.returncode == 0, ping.stderr
            assert json.loads(ping.stdout.splitlines()[-1])["status_code"] == 200
            [pinged] = receiver.received
            assert body_of(pinged)["type"] == "webhook.ping"
            signing.verify(old_secret, pinged.headers, pinged.body)

            rotated = await asyncio.to_thread(_cli, "rotate", sid, env=env)
            new_secret = json.loads(rotated.stdout)["secret"]
            evts = alert_events(park_id, ["e1"], 2)
            async with running_notifier(settings):
                await produce_events(settings, evts)
                got = await asyncio.to_thread(
                    receiver.wait_for, lambda r: len(r) >= 1 + len(evts), 30
                )
                for r in got[1:]:  # signed with both during the overlap
                    assert len(r.headers["webhook-signature"].split()) == 2
                    signing.verify(new_secret, r.headers, r.body)
                    signing.verify(old_secret, r.headers, r.body)

                store = storage.webhooks
                rows = await store.deliveries(subscription_id=sid)
                one = next(r for r in rows if r.event_type == "alert.opened")
                again = await asyncio.to_thread(
                    _cli, "redeliver", str(one.delivery_id), env=env
                )
                assert again.returncode == 0, again.stderr
                got = await asyncio.to_thread(
                    receiver.wait_for, lambda r: len(r) >= 2 + len(evts), 30
                )
                assert got[-1].headers["webhook-id"] == one.event_id
                since = one.created_at.isoformat()
                ranged = await asyncio.to_thread(
                    _cli, "redeliver", "--subscription", sid, "--since", since, env=env
                )
                assert ranged.returncode == 0, ranged.stderr
                assert ranged.stderr.startswith(f"{len(evts)} deliveries queued")
                got = await asyncio.to_thread(
                    receiver.wait_for, lambda r: len(r) >= 2 + 2 * len(evts), 30
                )

                # a receiver that always fails: three attempts, then failed
                receiver.set_respond(lambda r: Reply(502, body=b"bad gateway"))
                more = alert_events(park_id, ["e1"], 3)[-1:]
                more = [{**more[0], "event_id": "late-1", "alert_id": "late-1"}]
                await produce_events(settings, more)

                async def failed() -> list[DeliveryRow]:
                    return await store.deliveries(subscription_id=sid, status="failed")

                await until(failed, what="the failed delivery")
                [bad] = await failed()
                tried = await store.attempts(bad.delivery_id)
                assert [a.status_code for a in tried] == [502, 502, 502]
                assert [a.outcome for a in tried] == ["retry"] * 3
                shown = await asyncio.to_thread(
                    _cli, "deliveries", "--status", "failed", env=env
                )
                assert json.loads(shown.stdout)["event_id"] == "late-1"

                # 410 Gone: the endpoint is disabled, the event stays queued
                receiver.set_respond(lambda r: Reply(410))
                gone = [{**more[0], "event_id": "late-2", "alert_id": "late-2"}]
                await produce_events(settings, gone)

                async def disabled() -> bool:
                    sub_now = await store.subscription(sid)
                    return sub_now is not None and not sub_now.enabled

                await until(disabled, what="the endpoint disabled")
                current = await store.subscription(sid)
                assert current is not None
                assert current.disabled_reason == "the receiver answered 410 Gone"
                listed = await asyncio.to_thread(_cli, "list", env=env)
                [shown_sub] = [json.loads(line) for line in listed.stdout.splitlines()]
                assert shown_sub["enabled"] is False
                assert shown_sub["disabled_reason"] == "the receiver answered 410 Gone"
                assert shown_sub["deliveries"] == {
                    "pending": 1,
                    "delivered": len(evts) + 1,
                    "failed": 1,
                }
                [queued] = await store.deliveries(subscription_id=sid, status="pending")
                assert queued.event_id == "late-2"
                receiver.set_respond(lambda r: Reply(204))
                enabled = await asyncio.to_thread(_cli, "enable", sid, env=env)
                assert enabled.returncode == 0
                got = await asyncio.to_thread(
                    receiver.wait_for,
                    lambda r: (
                        r[-1].headers["webhook-id"] == "late-2"
                        and len([x for x in r if x.headers["webhook-id"] == "late-2"])
                        == 2
                    ),
                    30,
                )


async def test_one_notifier_delivers_and_a_second_takes_over(
    platform: Settings, park_id: str
) -> None:
    """Two notifiers share the alerts topic; with one slot only its holder sends.
    When it stops, the other takes over and nothing is missed or sent twice."""
    settings = notifier_settings(platform, slots=1)
    before = alert_events(park_id, ["e1", "e2"], 3)
    after = [
        {**e, "event_id": f"x{e['event_id'][1:]}", "alert_id": f"x{e['alert_id'][1:]}"}
        for e in before
    ]
    with Receiver() as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            secret = await subscribe(storage, "sub-1", park_id, None, receiver.url)
            async with contextlib.AsyncExitStack() as stack:
                first = await stack.enter_async_context(running_notifier(settings))

                async def leads() -> bool:
                    return first.stats.leader

                await until(leads, what="the first notifier to take the lock")
                async with running_notifier(settings) as second:
                    await produce_events(settings, before)
                    await asyncio.to_thread(
                        receiver.wait_for, at_least(len(before)), 30
                    )
                    assert (second.stats.leader, second.stats.attempts) == (False, 0)
                    await stack.aclose()  # the first stops; the second goes on alone

                    async def took_over() -> bool:
                        return second.stats.leader

                    await until(took_over, what="the second notifier to take over")
                    await produce_events(settings, after)
                    got = await asyncio.to_thread(
                        receiver.wait_for, at_least(len(before) + len(after)), 30
                    )
    assert first.stats.attempts == len(before)
    assert second.stats.attempts == len(after)
    assert sorted(ids(got)) == sorted(e["event_id"] for e in before + after)
    for r in got:
        signing.verify(secret, r.headers, r.body)


async def test_a_new_subscription_does_not_receive_the_topics_history(
    platform: Settings, park_id: str
) -> None:
    settings = notifier_settings(platform)
    old = alert_events(park_id, ["e1"], 2)
    new = [{**e, "event_id": f"n{e['event_id'][1:]}"} for e in old]
    with Receiver() as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            await produce_events(settings, old)
            await asyncio.sleep(0.1)
            await subscribe(storage, "sub-1", park_id, "e1", receiver.url)
            async with running_notifier(settings) as notifier:
                await produce_events(settings, new)
                got = await asyncio.to_thread(receiver.wait_for, at_least(len(new)), 30)

                async def read_all() -> bool:
                    return notifier.stats.records == len(old) + len(new)

                await until(read_all, what="the notifier to read the whole topic")
    assert ids(got) == [e["event_id"] for e in new]


@pytest.mark.parametrize("status", [429, 503])
async def test_retry_after_is_honoured(
    platform: Settings, park_id: str, status: int
) -> None:
    """The schedule says 100 ms; the receiver asks for 2 s: the retry waits 2 s."""
    settings = notifier_settings(platform, schedule_ms=[0, 100, 100])

    def respond(r: Received) -> Reply:
        if r.index == 0:
            return Reply(status, headers={"Retry-After": "2"})
        return Reply(200)

    [event] = alert_events(park_id, ["e1"], 1)[:1]
    with Receiver(respond) as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            await subscribe(storage, "sub-1", park_id, "e1", receiver.url)
            async with running_notifier(settings):
                await produce_events(settings, [event])
                first, second = await asyncio.to_thread(
                    receiver.wait_for, at_least(2), 30
                )
            [delivery] = await storage.webhooks.deliveries()
            tried = await storage.webhooks.attempts(delivery.delivery_id)
    assert 2.0 <= second.at_s - first.at_s < 3.0
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert [(a.status_code, a.outcome) for a in tried] == [
        (status, "retry_after"),
        (200, "delivered"),
    ]


async def test_deliveries_go_on_after_the_database_restarts(
    platform: Settings, park_id: str
) -> None:
    """PostgreSQL restarts mid-run (the queue, the log and the delivery lock's
    connection go away): the notifier reconnects, takes the lock again and
    delivers every event, each recorded as delivered."""
    settings = notifier_settings(platform)
    evts = alert_events(park_id, ["e1", "e2"], 8)  # 32 events
    with Receiver(lambda r: Reply(200, delay_s=0.1)) as receiver:
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            await subscribe(storage, "sub-1", park_id, None, receiver.url)
        async with running_notifier(settings) as notifier:
            await produce_events(settings, evts)
            await asyncio.to_thread(receiver.wait_for, at_least(8), 30)
            await asyncio.to_thread(services_script, "restart", "postgres")
            expected = {e["event_id"] for e in evts}
            got = await asyncio.to_thread(
                receiver.wait_for, lambda rs: set(ids(rs)) >= expected, 90
            )

            async def all_delivered() -> bool:
                return notifier.stats.delivered >= len(evts)

            await until(all_delivered, what="every delivery recorded", timeout_s=60)
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            rows = await storage.webhooks.deliveries()
    assert sorted(set(ids(got))) == sorted(expected)
    assert len(rows) == len(evts)
    assert {r.status for r in rows} == {"delivered"}


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["add", "--park", "p", "--url", "https://hooks.example/x",
             "--events", "alert.opened,alert.exploded"],
            2,
            "--events: unknown event type 'alert.exploded'",
        ),
        (["redeliver"], 2, "give delivery ids, or filters"),
        (["redeliver", "7", "--status", "failed"], 2, "give delivery ids, or filters"),
        (["deliveries", "--since", "2026-11-28T02:00"], 2, "needs a zone"),
        (["ping", "sub_nope"], 1, "no subscription sub_nope"),
        (["rotate", "sub_nope"], 1, "no subscription sub_nope"),
        (["enable", "sub_nope"], 1, "no subscription sub_nope"),
        (["attempts", "12345"], 1, "no delivery 12345"),
    ],
)  # fmt: skip
async def test_the_webhooks_command_names_what_is_wrong(
    platform: Settings, args: list[str], code: int, message: str
) -> None:
    async with Storage(platform.database, webhook_keys=keys(platform)) as storage:
        await storage.migrate()
    done = await asyncio.to_thread(_cli, *args, env=settings_env(platform))
    assert done.returncode == code, done.stdout + done.stderr
    assert message in done.stderr, done.stderr
