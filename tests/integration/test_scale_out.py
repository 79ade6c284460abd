"""Scale-out on the existing engines: several members of one service at once, one
killed mid-stream, and every effect still happens exactly once (or, for webhooks,
at least once and de-duplicable).

- Rules runners: two in one consumer group, the second joining mid-stream (the
  group rebalances), the first killed later (rebalanced again); the stored events
  are exactly the offline core's over the same records.
- Bridges: two processes in one MQTT shared subscription, one killed -9 while
  devices publish and restarted; every reading published is stored once.
- Notifiers: two processes sharing the endpoints by slots, one killed -9 while
  delivering; every delivery arrives, duplicates only as repeats of one
  ``webhook-id``, and each alert's events in order at every receiver; the slot
  shares they split the endpoints by, in process: never a slot held twice.
- Sinks: two processes in one consumer group, the second joining mid-stream, the
  first killed -9 mid-stream; every reading stored once, and the survivor never
  met a row already stored (the offsets moved with the rows).
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import random
import re
import time
from pathlib import Path
from typing import Any

import pytest

from ingest.sink import Sink
from notifier import signing
from smartpark import wire
from smartpark.clock import system_ms
from smartpark.errors import StorageError
from smartpark.settings import Settings
from storage import Storage
from storage.shares import SlotShares
from stream.kafka import ensure_topics
from tests.integration.test_rules_runner import PACK, produce, random_batches
from tests.integration.test_sink_kafka import produce as produce_records
from tests.integration.test_sink_kafka import telemetry
from tests.support.clients import consume_until, publish_all, wait_for
from tests.support.notifier import (
    alert_events,
    keys,
    notifier_env,
    notifier_settings,
    produce_events,
    subscribe,
)
from tests.support.pipeline import assert_exactly_once, stored_keys, wait_stored
from tests.support.procs import ServiceProcess
from tests.support.rules import (
    by_enterprise,
    consume_all,
    offline_events,
    wait_caught_up,
)
from tests.support.settings import settings_env
from tests.support.webhooks import Received, Receiver, Reply

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Enterprises whose keys fall on telemetry partitions 0, 1, 2 and 3 (murmur2 over
# the default four), so both runners of a group own records.
_SPREAD = ({"e0": "e3", "e1": "e1", "e2": "e7"}, {"e0": "e8", "e1": "e14", "e2": "e9"})


def spread_batches(park: str, n: int) -> list[wire.TelemetryBatch]:
    """Two of the rules tests' random streams, renamed onto six enterprises over
    every partition, interleaved."""
    streams = []
    for seed, names in zip((7, 11), _SPREAD, strict=True):
        streams.append(
            [
                dataclasses.replace(
                    b,
                    enterprise=names[b.enterprise],
                    device=names[b.enterprise] + b.device[len(b.enterprise) :],
                )
                for b in random_batches(seed, park, n // 2)
            ]
        )
    return [b for pair in zip(*streams, strict=True) for b in pair]


def stats_of(log: Path) -> list[dict[str, Any]]:
    """The ``stats {...}`` lines a service process logged, parsed."""
    return [
        ast.literal_eval(m[1])
        for m in re.finditer(r"stats (\{.*\})$", log.read_text(), re.MULTILINE)
    ]


async def test_two_runners_rebalancing_mid_stream_raise_what_the_core_raises(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    """Runner A alone, then B joins while records flow (A's partitions are split
    between them), then A is killed -9 between checkpoints (B takes them all over
    from A's checkpoints): the events stored, per enterprise and in order, are
    the offline core's, each once, and each reached the alerts topic."""
    settings = platform
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK.format(version="1"))
    batches = spread_batches(park_id, 800)
    env = settings_env(settings) | {
        "SMARTPARK_RULES__BATCH_MAX_RECORDS": "20",
        "SMARTPARK_RULES__CHECKPOINT_EVERY_MS": "1500",
    }
    command = ["rules", "run", "--pack", str(pack_path), "--stats-every", "0.2"]
    a = ServiceProcess(command, env, tmp_path / "rules-a.log")
    b = ServiceProcess(command, env, tmp_path / "rules-b.log")
    quarter = len(batches) // 4
    async with Storage(settings.database) as storage:
        await storage.migrate()
        await ensure_topics(settings.kafka)
        a.start()
        try:
            await wait_for(a.logged("positioned"), timeout_s=60, what="A assigned")
            await produce(settings, batches[:quarter])
            await wait_for(
                lambda: any(s["records"] for s in stats_of(a.log)),
                timeout_s=60,
                what="A evaluating",
            )
            b.start()
            # the second quarter flows while B joins and the group rebalances
            await produce(settings, batches[quarter : 2 * quarter])
            await wait_for(b.logged("positioned"), timeout_s=60, what="B assigned")
            # A is killed while the rest flows to both: whatever it evaluated
            # since its last checkpoint is evaluated again by B
            rest = asyncio.create_task(produce(settings, batches[2 * quarter :]))
            await wait_for(
                lambda: any(s["records"] for s in stats_of(b.log)),
                timeout_s=60,
                what="B evaluating",
            )
            await asyncio.sleep(random.Random(5).uniform(0.1, 0.4))
            a_records = max(s["records"] for s in stats_of(a.log))
            a.kill()
            await rest
            await wait_caught_up(storage, settings, len(batches))
            records = await consume_all(
                settings,
                settings.kafka.telemetry_topic,
                lambda got: len(got) >= len(batches),
            )
            got = [e.body for e in await storage.alerts.events(park=park_id)]
            alerts = await storage.alerts.list_alerts(park=park_id)
            assert b.stop() == 0
        finally:
            for proc in (a, b):
                if proc.running:
                    proc.kill()
    expected = offline_events(pack_path, records)
    b_records = max(s["records"] for s in stats_of(b.log))
    # both evaluated a share; B's log shows it owned a partition before A died
    assert min(a_records, b_records) > 0, (a_records, b_records)
    # the kill landed between checkpoints: B evaluated some of A's records again
    assert a_records + b_records > len(batches), (a_records, b_records)
    assert b.log.read_text().count("positioned") >= 2  # joined, then took over
    # every partition carries enterprises, and the stream raises every kind
    assert len({p for p, _ in records}) == settings.kafka.partitions
    assert {e["kind"] for e in expected} >= {"opened", "resolved", "revised"}
    assert by_enterprise(got) == by_enterprise(expected)
    assert sorted(json.dumps(e, sort_keys=True) for e in got) == sorted(
        json.dumps(e, sort_keys=True) for e in expected
    )
    opened = {e["alert_id"] for e in expected if e["kind"] == "opened"}
    assert {a.alert_id for a in alerts} == opened
    produced = await consume_all(
        settings,
        settings.kafka.alerts_topic,
        lambda r: (
            {json.loads(v)["event_id"] for _, v in r} >= {e["event_id"] for e in got}
        ),
    )
    assert {json.loads(v)["event_id"] for _, v in produced} == {
        e["event_id"] for e in got
    }


def device_messages(
    park: str, devices: int, per_device: int
) -> list[tuple[str, bytes]]:
    """One reading a message, devices of four enterprises taking turns."""
    t0 = system_ms() - per_device * 1000
    out = []
    for seq in range(1, per_device + 1):
        for d in range(devices):
            enterprise, device = f"ent{d % 4}", f"meter{d}"
            reading = wire.Reading(
                seq, "active_power", float(seq), "kW", t0 + seq * 1000
            )
            batch = wire.TelemetryBatch(park, enterprise, device, (reading,))
            out.append(
                (
                    wire.telemetry_topic(park, enterprise, device),
                    wire.encode_batch(batch),
                )
            )
    return out


async def test_two_bridges_share_the_subscription_and_one_killed_loses_nothing(
    park_id: str, platform: Settings, mqtt_addr: tuple[str, int], tmp_path: Path
) -> None:
    """Bridges A and B share the telemetry subscription ($share/...): both forward
    a share. B is killed -9 while devices publish; what the broker had given B
    waits in B's persistent session (measured: what is stored while B is down)
    and arrives once B is back under the same client id. Every reading published
    is stored exactly once."""
    settings = platform
    env = settings_env(settings) | {"SMARTPARK_MQTT__SHARE_GROUP": "bridges"}
    command = ["bridge", "--stats-every", "0.2"]
    bridges = {
        name: ServiceProcess(
            command,
            env | {"SMARTPARK_MQTT__CLIENT_ID": f"bridge-{park_id}-{name}"},
            tmp_path / f"bridge-{name}.log",
        )
        for name in ("a", "b")
    }
    a, b = bridges["a"], bridges["b"]
    messages = device_messages(park_id, devices=12, per_device=100)
    chunks = [messages[i : i + 40] for i in range(0, 360, 40)]
    chunks += [messages[360:600]]
    chunks += [messages[i : i + 40] for i in range(600, len(messages), 40)]
    kill_at, restart_at = 9, 17
    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with Sink(settings) as sink:
            sink_task = asyncio.create_task(sink.run())
            try:
                for proc in (a, b):
                    proc.start()
                for proc in (a, b):
                    await wait_for(
                        proc.logged("MQTT subscribed to $share/bridges/"),
                        timeout_s=60,
                        what="shared subscription",
                    )
                for i, chunk in enumerate(chunks):
                    if i == restart_at:
                        # what B's session holds while it is down is not stored
                        published = sum(len(c) for c in chunks[:i])
                        down_stored = await _settled(storage, park_id)
                        b.start()
                    sent = asyncio.create_task(
                        asyncio.to_thread(publish_all, *mqtt_addr, chunk)
                    )
                    if i == kill_at:  # a big chunk: B is forwarding its share
                        await asyncio.sleep(0.02)
                        b_acked = max(s["acked"] for s in stats_of(b.log))
                        b.kill()
                    await sent
                    await asyncio.sleep(0.05)
                expected = sorted(
                    (f"meter{d}", seq, "active_power")
                    for d in range(12)
                    for seq in range(1, 101)
                )
                stored = await wait_stored(storage, park_id, expected, timeout_s=60)
            finally:
                sink.stop()
                await sink_task
                for proc in (a, b):
                    if proc.running:
                        proc.stop()
    records = await consume_until(
        settings.kafka.bootstrap,
        settings.kafka.telemetry_topic,
        lambda r: False,  # all of it, duplicates included
        timeout_s=3,
    )
    a_acked = max(s["acked"] for s in stats_of(a.log))
    b_acked_after = stats_of(b.log)[-1]["acked"]  # the restarted B's count
    print(
        f"published {len(messages)}; A acknowledged {a_acked}, B {b_acked} before"
        f" the kill and {b_acked_after} after its restart; with B down,"
        f" {published - down_stored} of {published} published were not stored;"
        f" {len(records) - len(messages)} duplicates in Kafka"
    )
    assert min(a_acked, b_acked) > 0, (a_acked, b_acked)
    # Mosquitto keeps giving the dead member its turn (README, "Several of each
    # service"): part of what was sent meanwhile waited for B to come back
    assert down_stored < published, (down_stored, published)
    assert_exactly_once(stored, expected)


async def _settled(storage: Storage, park: str) -> int:
    """Readings stored once the count stops moving for two seconds."""
    count, still_since = -1, 0.0
    loop = asyncio.get_running_loop()
    while True:
        now = len(await stored_keys(storage, park))
        if now != count:
            count, still_since = now, loop.time()
        elif loop.time() - still_since >= 2.0:
            return count
        await asyncio.sleep(0.25)


async def test_two_notifiers_share_the_endpoints_and_one_killed_loses_nothing(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    """Notifier A delivers to 12 endpoints (4 receivers, 3 paths each); B joins
    mid-stream and A gives it half of the slots; both deliver. A is killed -9
    while deliveries are in flight; B takes A's slots over. Every delivery
    arrives at its endpoint; a repeat is the same ``webhook-id`` with the same
    body, at most one per endpoint (what A had in flight); at every endpoint each
    alert's events arrive in the order the alert raised them (a repeat
    included)."""
    settings = notifier_settings(platform)
    enterprises = [f"e{i}" for i in range(12)]
    events = alert_events(park_id, enterprises, 8)
    order = {e["event_id"]: i for i, e in enumerate(events)}
    env = settings_env(settings) | notifier_env(settings)
    command = ["notifier", "--stats-every", "0.2"]
    a = ServiceProcess(command, env, tmp_path / "notifier-a.log")
    b = ServiceProcess(command, env, tmp_path / "notifier-b.log")
    slow = lambda _: Reply(200, delay_s=0.5)  # noqa: E731 - deliveries take a while
    with (
        Receiver(slow) as r0, Receiver(slow) as r1, Receiver(slow) as r2,
        Receiver(slow) as r3,
    ):  # fmt: skip
        receivers = [r0, r1, r2, r3]
        urls = {
            ent: f"{receivers[i % 4].url}-{ent}" for i, ent in enumerate(enterprises)
        }
        async with Storage(settings.database, webhook_keys=keys(settings)) as storage:
            await storage.migrate()
            secrets = {
                ent: await subscribe(storage, f"sub-{ent}", park_id, ent, url)
                for ent, url in urls.items()
            }
            try:

                def received() -> list[Received]:
                    return [r for rec in receivers for r in rec.received]

                def attempts(proc: ServiceProcess) -> int:
                    return max((s["attempts"] for s in stats_of(proc.log)), default=0)

                a.start()
                await wait_for(
                    a.logged("webhooks for 16 of 16 slots"), timeout_s=60, what="A"
                )
                await produce_events(settings, events)
                await wait_for(
                    lambda: len(received()) >= len(events) // 8,
                    timeout_s=60,
                    what="A delivering",
                )
                # B joins mid-stream: A gives back half of the slots, each once
                # its worker on it has finished the attempt in flight
                b.start()
                # the 12 endpoints hash into 9 of the 16 slots: with 8 slots
                # each, both notifiers have endpoints to deliver
                await wait_for(
                    lambda: b.logged("slots (2 notifiers)")() and attempts(b) > 0,
                    timeout_s=60,
                    what="B delivering",
                )
                a_attempts = attempts(a)
                killed_at = time.monotonic()
                a.kill()  # with deliveries in flight
                await wait_for(
                    lambda: {r.headers["webhook-id"] for r in received()} >= set(order),
                    timeout_s=90,
                    what="every delivery",
                )
                # the last answers are recorded just after they were received
                counts: dict[str, dict[str, int]] = {}
                for _ in range(100):
                    counts = await storage.webhooks.delivery_counts()
                    if all(c["pending"] == 0 for c in counts.values()):
                        break
                    await asyncio.sleep(0.1)
                assert b.stop() == 0
            finally:
                for proc in (a, b):
                    if proc.running:
                        proc.kill()
    b_stats = stats_of(b.log)[-1]
    got = received()
    repeats = len(got) - len(order)
    print(
        f"{len(order)} deliveries to {len(urls)} endpoints; A attempted {a_attempts}"
        f" before the kill, B {b_stats['attempts']}; {repeats} repeats"
    )
    assert min(a_attempts, b_stats["attempts"]) > 0, (a_attempts, b_stats)
    done = {"pending": 0, "delivered": 16, "failed": 0}  # 8 alerts, 2 events each
    assert counts == {f"sub-{ent}": done for ent in enterprises}
    first_body: dict[str, bytes] = {}
    for ent, url in urls.items():
        path = "/" + url.split("/", 3)[3]
        at_endpoint = sorted(
            (r for r in got if r.path == path), key=lambda r: (r.at_s, r.index)
        )
        wanted = [e["event_id"] for e in events if e["scope"]["enterprise"] == ent]
        seen = [r.headers["webhook-id"] for r in at_endpoint]
        assert set(seen) == set(wanted), ent
        # a repeat is an attempt A had in flight when it died: one per endpoint,
        # sent again after the kill (a slot handed over mid-attempt would repeat
        # the attempt while A was alive)
        assert len(seen) - len(set(seen)) <= 1, (ent, seen)
        firsts: set[str] = set()
        for r in at_endpoint:
            wid = r.headers["webhook-id"]
            assert wid not in firsts or r.at_s >= killed_at, (ent, wid)
            firsts.add(wid)
        for r in at_endpoint:
            signing.verify(secrets[ent], r.headers, r.body)
            wid = r.headers["webhook-id"]
            assert first_body.setdefault(wid, r.body) == r.body, wid
        # per alert, never an earlier event after a later one
        by_alert: dict[str, list[int]] = {}
        for wid in seen:
            alert = next(e["alert_id"] for e in events if e["event_id"] == wid)
            by_alert.setdefault(alert, []).append(order[wid])
        assert all(p == sorted(p) for p in by_alert.values()), (ent, by_alert)


async def test_two_sinks_rebalancing_mid_stream_store_every_reading_once(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    """Sink A alone, B joining while records flow (the group rebalances), then A
    killed -9 while records flow (B takes its partitions from the offsets stored
    with A's rows): every reading is stored once; B never skipped a row as
    already stored; both wrote a share."""
    settings = platform
    records, keys = telemetry(park_id, 8, 3, range(1, 41))  # 960 records
    env = settings_env(settings) | {
        "SMARTPARK_SINK__BATCH_MAX_RECORDS": "20",
        "SMARTPARK_SINK__BATCH_MAX_WAIT_MS": "50",
    }
    command = ["sink", "--stats-every", "0.2"]
    a = ServiceProcess(command, env, tmp_path / "sink-a.log")
    b = ServiceProcess(command, env, tmp_path / "sink-b.log")
    third = len(records) // 3

    def stat(proc: ServiceProcess, name: str) -> int:
        return max((s[name] for s in stats_of(proc.log)), default=0)

    async with Storage(settings.database) as storage:
        await storage.migrate()
        await ensure_topics(settings.kafka)
        try:
            a.start()
            await wait_for(a.logged("positioned"), timeout_s=60, what="A assigned")
            flow = asyncio.create_task(
                produce_records(settings, records[: 2 * third], pause_every=20)
            )
            await wait_for(lambda: stat(a, "records") > 0, timeout_s=60, what="A")
            b.start()  # joins while the first two thirds flow
            await wait_for(lambda: stat(b, "records") > 0, timeout_s=60, what="B")
            await flow
            flow = asyncio.create_task(
                produce_records(settings, records[2 * third :], pause_every=20)
            )
            await asyncio.sleep(0.3)
            a_records = stat(a, "records")
            a.kill()  # mid-stream: its batch in flight is not committed
            await flow
            stored = 0
            for _ in range(300):
                stored = await storage.telemetry.count_rows(park=park_id)
                if stored >= len(keys):
                    break
                await asyncio.sleep(0.2)
            got = await storage.telemetry.reading_keys(park=park_id)
            assert b.stop() == 0
        finally:
            for proc in (a, b):
                if proc.running:
                    proc.kill()
    b_last = stats_of(b.log)[-1]
    print(
        f"{len(records)} records, {len(keys)} readings; A wrote {a_records} records"
        f" before the kill (at least), B {b_last['records']}"
    )
    assert min(a_records, b_last["records"]) > 0, (a_records, b_last)
    assert b.log.read_text().count("positioned") >= 2  # joined, then took A's over
    assert len(got) == len(keys)
    assert set(got) == keys
    assert b_last["duplicates"] == 0, b_last


async def test_slot_shares_follow_the_members_and_never_overlap(
    platform: Settings,
) -> None:
    """The advisory-lock shares the notifiers deliver by: members counted from
    pg_locks, each at most ceil(slots / members) once balanced, a busy slot kept
    until idle, a member's slots free when its session ends, no slot held twice."""
    every = set(range(16))

    def shares() -> SlotShares:
        return SlotShares(
            platform.database, "test", slots=16, application_name="shares-test"
        )

    a, b, c = shares(), shares(), shares()
    try:
        assert await a.rebalance(every) == every  # alone: everything
        assert await b.rebalance(every) == set()  # none free yet
        assert b.members == 2
        # only 4 of a's slots are idle: it gives back those, keeps the busy ones
        kept = await a.rebalance({0, 1, 2, 3})
        assert kept == every - {0, 1, 2, 3}
        assert await b.rebalance(every) == {0, 1, 2, 3}
        assert len(await a.rebalance(every)) == 8  # all idle now: back to its share
        assert len(await b.rebalance(every)) == 8
        assert not a.held & b.held
        await c.rebalance(every)  # a third joins: 6, 6 and the 4 left
        for member in (a, b, c):
            await member.rebalance(every)
        assert sorted(len(m.held) for m in (a, b, c)) == [4, 6, 6]
        # disjoint, and every slot held: the sizes add up to the union's
        assert sum(len(m.held) for m in (a, b, c)) == len(a.held | b.held | c.held)
        assert a.held | b.held | c.held == every
        await a.release()  # its slots are free once the server ended its session
        for _ in range(50):
            for member in (b, c):
                await member.rebalance(every)
            if len(b.held) == len(c.held) == 8:
                break
            await asyncio.sleep(0.1)
        assert (len(b.held), len(c.held), b.members) == (8, 8, 2)
        assert b.held | c.held == every
    finally:
        for member in (a, b, c):
            await member.release()


async def test_a_member_with_another_slot_count_waits_until_it_is_alone(
    platform: Settings,
) -> None:
    """Two counts would put one endpoint in two slots, delivered twice at once: a
    process with another count than a live member's takes nothing, says why, and
    joins once the other has gone (a rolling change of notifier.slots)."""
    every8, every16 = set(range(8)), set(range(16))
    old = SlotShares(platform.database, "count", slots=8, application_name="old")
    new = SlotShares(platform.database, "count", slots=16, application_name="new")
    try:
        assert await old.rebalance(every8) == every8
        with pytest.raises(StorageError, match=r"into 16 slots, a running one into 8"):
            await new.rebalance(every16)
        assert new.held == set()
        assert await old.rebalance(every8) == every8  # the old one goes on
        await old.release()
        assert await new.rebalance(every16) == every16
    finally:
        await old.release()
        await new.release()
