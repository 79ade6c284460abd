"""The live rules runner on real Kafka and PostgreSQL, killed and restarted, against
the offline core (what ``smartpark rules check`` prints) over the same records."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from rules.engine import Engine
from rules.model import Obs
from rules.pack import parse_pack
from rules.runner import RulesRunner, event_row
from smartpark import wire
from smartpark.clock import system_ms
from smartpark.settings import Settings
from storage import Storage
from stream.kafka import ensure_topics
from tests.support.clients import wait_for
from tests.support.procs import ServiceProcess
from tests.support.rules import consume_all, offline_events, wait_caught_up
from tests.support.settings import platform_settings, settings_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACK = """\
pack: runner-test
version: "{version}"
watermark_delay: 0
allowed_lateness: 10min
rules:
  - {{id: nh3-slip, kind: threshold, metric: nh3, limit: 8, clear: 6}}
  - {{id: so2-spike, kind: threshold, metric: so2, limit: 100, severity: minor}}
  - {{id: so2-10min, kind: window, metric: so2, window: 10min, aggregate: mean,
     limit: 80, clear: 75}}
  - {{id: nh3-long, kind: duration, metric: nh3, limit: 7, for: 2min}}
  - {{id: silent, kind: missing_data, metrics: [nh3], expected_interval: 10s,
     max_silence: 3min}}
"""
T0 = 1_704_067_200_000


def random_batches(seed: int, park: str, n: int) -> list[wire.TelemetryBatch]:
    """Readings that cross the limits often, for 3 enterprises x 2 devices."""
    rng = random.Random(seed)
    seqs: dict[str, int] = defaultdict(int)
    out = []
    for i in range(n):
        enterprise = f"e{rng.randrange(3)}"
        device = f"{enterprise}.stack-{rng.randrange(2)}"
        seqs[device] += 1
        # now and then a reading arrives late (for the window's revisions)
        ts = T0 + i * 10_000 - rng.choice((0, 0, 0, 0, 0, 0, 0, 0, 0, 90_000))
        readings = (
            wire.Reading(
                seqs[device], "nh3", round(rng.uniform(3, 11), 2), "mg/m3", ts
            ),
            wire.Reading(
                seqs[device],
                "so2",
                round(rng.uniform(20, 140), 1),
                "mg/m3",
                ts,
                rng.choice("NNNNNC"),
            ),
        )
        out.append(wire.TelemetryBatch(park, enterprise, device, readings))
    return out


async def produce(
    settings: Settings, batches: Sequence[wire.TelemetryBatch | wire.GatewayBatch]
) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for b in batches:  # keyed by enterprise, as the bridge does
            value = (
                wire.encode_gateway(b)
                if isinstance(b, wire.GatewayBatch)
                else wire.encode_batch(b)
            )
            await producer.send_and_wait(
                settings.kafka.telemetry_topic, value, key=b.enterprise.encode()
            )
    finally:
        await producer.stop()


def gateway_messages(batches: list[wire.TelemetryBatch]) -> list[wire.GatewayBatch]:
    """The batches as gateways send them: an enterprise's consecutive batches in
    one message, each device at most once in it; each enterprise's order kept."""
    out: list[wire.GatewayBatch] = []
    open_: dict[str, list[wire.TelemetryBatch]] = {}
    for b in batches:
        group = open_.setdefault(b.enterprise, [])
        if any(g.device == b.device for g in group):
            out.append(wire.GatewayBatch(b.park, b.enterprise, "gw", tuple(group)))
            group = open_[b.enterprise] = []
        group.append(b)
    for enterprise, group in open_.items():
        out.append(wire.GatewayBatch(group[0].park, enterprise, "gw", tuple(group)))
    return out


async def test_gateway_records_raise_what_the_core_raises_on_their_readings(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    """Gateway records (wire version 2, several devices each) mixed with device
    records: the runner judges every reading in them, as the core does."""
    settings = platform
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK.format(version="1"))
    batches = random_batches(11, park_id, 300)
    messages: list[wire.TelemetryBatch | wire.GatewayBatch] = [
        *gateway_messages(batches[:200]),
        *batches[200:],
    ]
    assert len(messages) < 200 + 100
    async with Storage(settings.database) as storage:
        await storage.migrate()
        await ensure_topics(settings.kafka)
        runner = ServiceProcess(
            ["rules", "run", "--pack", str(pack_path), "--stats-every", "1"],
            settings_env(settings),
            tmp_path / "rules.log",
        )
        runner.start()
        try:
            await wait_for(runner.logged("positioned"), timeout_s=60, what="assignment")
            await produce(settings, messages)
            records = await consume_all(
                settings,
                settings.kafka.telemetry_topic,
                lambda got: len(got) >= len(messages),
            )
            expected = offline_events(pack_path, records)
            await wait_caught_up(storage, settings, len(messages))
            got = [e.body for e in await storage.alerts.events(park=park_id)]
        finally:
            rc = runner.stop()
    assert rc == 0
    assert {e["kind"] for e in expected} >= {"opened", "resolved"}
    # every device's readings were judged, those in gateway records included
    assert {e["scope"]["device"] for e in expected if "device" in e["scope"]} == {
        b.device for b in batches
    }
    assert sorted(json.dumps(e, sort_keys=True) for e in got) == sorted(
        json.dumps(e, sort_keys=True) for e in expected
    )


async def test_killed_runner_raises_exactly_what_the_offline_core_raises(
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK.format(version="1"))
    batches = random_batches(7, park_id, 600)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        await ensure_topics(settings.kafka)
        runner = ServiceProcess(
            ["rules", "run", "--pack", str(pack_path), "--stats-every", "1"],
            settings_env(settings)
            # small batches, a checkpoint every few of them: kills land between
            # checkpoints, so records are evaluated again after each restart
            | {
                "SMARTPARK_RULES__BATCH_MAX_RECORDS": "25",
                "SMARTPARK_RULES__CHECKPOINT_EVERY_MS": "300",
            },
            tmp_path / "rules.log",
        )
        runner.start()
        try:
            await wait_for(runner.logged("positioned"), timeout_s=60, what="assignment")
            rng = random.Random(3)
            chunks = [batches[i : i + 150] for i in range(0, len(batches), 150)]
            progress = []
            for starts, chunk in enumerate(chunks, 1):

                def ready(n: int = starts) -> bool:
                    # this incarnation owns its partitions (restored from the DB)
                    return runner.log.read_text().count("rules runner started") >= n

                await wait_for(ready, timeout_s=60, what="runner up")
                await produce(settings, chunk)
                await asyncio.sleep(rng.uniform(0.05, 0.6))
                runner.kill()  # mid-batch or between: nothing may be lost or doubled
                progress.append(len(await storage.alerts.events(park=park_id)))
                runner.start()
            # the last incarnation up before it is judged and stopped (a SIGTERM
            # while it still starts would end it before its handler is in place)
            await wait_for(
                lambda: (
                    runner.log.read_text().count("rules runner started") > len(chunks)
                ),
                timeout_s=60,
                what="the last runner up",
            )
            records = await consume_all(
                settings,
                settings.kafka.telemetry_topic,
                lambda got: len(got) >= len(batches),
            )
            expected = offline_events(pack_path, records)

            async def stored() -> list[dict[str, Any]]:
                return [e.body for e in await storage.alerts.events(park=park_id)]

            got: list[dict[str, Any]] = []
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 90
            while loop.time() < deadline:
                got = await stored()
                states = await storage.alerts.states(
                    settings.rules.group_id, settings.kafka.telemetry_topic
                )
                if sum(s.next_offset for s in states) == len(batches):
                    break
                await asyncio.sleep(0.5)
            got = await stored()
            alerts = await storage.alerts.list_alerts(park=park_id)
        finally:
            rc = runner.stop()
    assert rc == 0
    # it was killed with work done and work left: 4 kills, 5 starts
    assert runner.log.read_text().count("rules runner started") == len(chunks) + 1
    # (the first kill comes before the later chunks exist; by the last, work is done)
    assert progress[0] < len(got), progress
    assert progress[-1] > 0, progress
    # the stream exercises every rule, late readings included
    assert {e["kind"] for e in expected} >= {"opened", "resolved", "revised"}
    assert {e["rule_id"] for e in expected} == {
        "nh3-slip", "so2-spike", "so2-10min", "nh3-long", "silent",
    }  # fmt: skip
    # Per partition (enterprise) the stored events are the offline ones, in order.
    by_enterprise: dict[str, list[str]] = defaultdict(list)
    for e in expected:
        by_enterprise[e["scope"]["enterprise"]].append(e["event_id"])
    stored_by: dict[str, list[str]] = defaultdict(list)
    for e in got:
        stored_by[e["scope"]["enterprise"]].append(e["event_id"])
    assert stored_by == by_enterprise
    assert sorted(json.dumps(e, sort_keys=True) for e in got) == sorted(
        json.dumps(e, sort_keys=True) for e in expected
    )
    # The lifecycle table agrees with the events.
    opened = {e["alert_id"] for e in expected if e["kind"] == "opened"}
    resolved = {e["alert_id"] for e in expected if e["kind"] == "resolved"}
    assert {a.alert_id for a in alerts} == opened
    assert {a.alert_id for a in alerts if a.status == "resolved"} == resolved

    # Every stored event reached the alerts topic at least once, nothing else did.
    def ids(records: list[tuple[int, bytes]]) -> set[str]:
        return {json.loads(v)["event_id"] for _, v in records}

    produced = await consume_all(
        settings, settings.kafka.alerts_topic, lambda r: len(ids(r)) >= len(got)
    )
    produced_ids = ids(produced)
    assert produced_ids == {e["event_id"] for e in got}


async def test_an_alert_is_opened_acknowledged_then_resolved(
    pg_dsn: str, db_schema: str, tmp_path: Path
) -> None:
    """The engine opens and resolves; a person acknowledges in between, with the
    real command; a resolve after that keeps who acknowledged it."""
    settings = platform_settings(
        ("127.0.0.1", 1), "127.0.0.1:1", "x.", "ack", pg_dsn=pg_dsn, db_schema=db_schema
    )
    engine_pack = parse_pack(
        {"pack": "ack", "version": "1",
         "rules": [{"id": "nh3", "kind": "threshold", "metric": "nh3", "limit": 8}]}
    )  # fmt: skip
    engine = Engine(engine_pack)
    events = [
        e
        for i, v in enumerate((9.0, 5.0))
        for e in engine.feed(Obs(T0 + i * 60_000, "ack", "e1", "d1", "nh3", v))
    ]
    opened, resolved = (event_row(engine_pack, e) for e in events)
    env = settings_env(settings)
    async with Storage(settings.database) as storage:
        await storage.migrate()
        await storage.alerts.write([opened], [])
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "smartpark.cli", "rules", "ack", opened.alert_id,
             "--by", "duty-operator"],
            env=os.environ | env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert (done.returncode, done.stdout) == (
            0,
            f"{opened.alert_id} acknowledged\n",
        ), done.stderr
        [row] = await storage.alerts.list_alerts(park="ack")
        assert (row.status, row.acknowledged_by) == (
            "acknowledged",
            "duty-operator",
        )
        # acknowledging twice changes nothing; an unknown alert is an error
        assert (
            await storage.alerts.acknowledge(opened.alert_id, by="x") == "acknowledged"
        )
        assert await storage.alerts.acknowledge("nope", by="x") is None
        await storage.alerts.write([resolved], [])
        [row] = await storage.alerts.list_alerts(park="ack")
        stored = [e.body for e in await storage.alerts.events(park="ack")]
        unproduced = await storage.alerts.unproduced()
    assert (row.status, row.acknowledged_by) == ("resolved", "duty-operator")
    # the acknowledgement is an event of the alert, between its open and resolve,
    # queued for the alerts topic like the engine's (webhooks subscribe to it)
    assert [e["kind"] for e in stored] == ["opened", "acknowledged", "resolved"]
    ack = stored[1]
    assert (ack["alert_id"], ack["evidence"]["acknowledged_by"]) == (
        opened.alert_id,
        "duty-operator",
    )
    assert [e.event_id for e in unproduced] == [e["event_id"] for e in stored]
    assert row.last_event_id == resolved.event_id


async def test_a_new_pack_version_is_picked_up_without_a_restart(
    park_id: str,
    platform: Settings,
    tmp_path: Path,
) -> None:
    settings = platform
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(PACK.format(version="1"))

    def reading(i: int, nh3: float) -> wire.TelemetryBatch:
        return wire.TelemetryBatch(
            park_id, "e1", "d1", (wire.Reading(i, "nh3", nh3, "mg/m3", T0 + i * 1000),)
        )

    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with RulesRunner(settings, pack_path) as runner:
            task = asyncio.create_task(runner.run())
            try:
                await produce(settings, [reading(1, 9.0), reading(2, 5.0)])
                await wait_for(
                    lambda: runner.stats.readings == 2, timeout_s=90, what="v1"
                )
                # the limit goes down and the version up; a broken file is ignored
                pack_path.write_text("pack: [")
                await asyncio.sleep(1.5)  # > reload_every_s: read, refused, kept
                assert runner.pack.version == "1"
                pack_path.write_text(
                    PACK.format(version="2").replace("limit: 8, clear: 6", "limit: 4")
                )
                await wait_for(
                    lambda: runner.stats.pack_version == "2", timeout_s=90, what="v2"
                )
                await produce(settings, [reading(3, 5.0)])
                # events are counted once stored, readings as soon as evaluated
                await wait_for(
                    lambda: runner.stats.events == 3, timeout_s=90, what="stored"
                )
                events = [e.body for e in await storage.alerts.events(park=park_id)]
            finally:
                runner.stop()
                await task
    got = [(e["rule_id"], e["rule_version"], e["kind"], e["value"]) for e in events]
    assert got == [
        ("nh3-slip", "1", "opened", 9.0),
        ("nh3-slip", "1", "resolved", 5.0),
        ("nh3-slip", "2", "opened", 5.0),  # 5 > the new limit 4
    ]
    assert runner.stats.reloads == 1


SILENCE_PACK = """\
pack: silence-test
version: "1"
watermark_delay: 1s
rules:
  - {id: offline, kind: missing_data, metrics: [nh3], expected_interval: 1s,
     max_silence: 3s}
"""


async def test_a_silent_partition_is_reported_offline_while_it_is_silent(
    park_id: str, platform: Settings, tmp_path: Path
) -> None:
    """Every device of the enterprise (so of its partition) stops: each is reported
    offline while still silent, within max_silence + watermark_delay (3 s + 1 s)
    and a little of its last reading; a reading afterwards resolves it once."""
    settings = platform
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(SILENCE_PACK)
    seq = 0

    def now_batch(device: str) -> wire.TelemetryBatch:
        nonlocal seq
        seq += 1
        reading = wire.Reading(seq, "nh3", 5.0, "mg/m3", system_ms())
        return wire.TelemetryBatch(park_id, "e1", device, (reading,))

    async def stored() -> list[dict[str, Any]]:
        return [e.body for e in await storage.alerts.events(park=park_id)]

    async with Storage(settings.database) as storage:
        await storage.migrate()
        async with RulesRunner(settings, pack_path) as runner:
            task = asyncio.create_task(runner.run())
            try:
                for _ in range(4):  # both devices report for a while, then stop
                    await produce(settings, [now_batch("d1"), now_batch("d2")])
                    await asyncio.sleep(0.5)
                await wait_for(
                    lambda: runner.stats.readings == 8, timeout_s=90, what="readings"
                )
                last_sent = time.monotonic()
                events: list[dict[str, Any]] = []
                while len(events) < 2 and time.monotonic() - last_sent < 30:
                    events = await stored()
                    await asyncio.sleep(0.1)
                offline_after = time.monotonic() - last_sent
                assert [(e["kind"], e["scope"]["device"]) for e in events] == [
                    ("opened", "d1"),
                    ("opened", "d2"),
                ], events
                assert runner.stats.silence_events == 2
                await produce(settings, [now_batch("d1")])
                await wait_for(
                    lambda: runner.stats.readings == 9, timeout_s=90, what="back"
                )
                await asyncio.sleep(2)  # d2 stays offline; nothing is raised twice
                events = await stored()
            finally:
                runner.stop()
                await task
    # 3 s + 1 s after the last reading, plus the runner's polling and this loop's
    assert offline_after < 4 + 3, offline_after
    kinds = [(e["kind"], e["scope"]["device"]) for e in events]
    assert kinds == [("opened", "d1"), ("opened", "d2"), ("resolved", "d1")]
