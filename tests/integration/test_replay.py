"""Replay on the real services: telemetry with known breaches through the whole
pipeline (MQTT → bridge → Kafka → sink and the live rules runner), then replays
of what was stored.

The data: one SO2 analyser, a reading every 10 minutes, seven hours from 21:00
Asia/Shanghai (13:00 UTC) across the local midnight, hourly means
10 40 10 60 10 70 10, and one reading after the next local midnight that closes
the local day. The live pack has an hourly limit of 50 and a daily one of 30.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from api.replay.service import ReplayRequest, ReplayScope, run_replay
from rules.runner import RulesRunner
from smartpark import wire
from smartpark.settings import Settings
from storage.rule_packs import RulePackStore
from storage.signing import generate_private_key
from tests.support.clients import publish_all, wait_for
from tests.support.pipeline import running_platform
from tests.support.settings import settings_env

pytestmark = [pytest.mark.integration]

PACK = """\
pack: replay-test
version: "{version}"
timezone: Asia/Shanghai
watermark_delay: 1min
allowed_lateness: 10min
rules:
  - {{id: so2-hourly, kind: window, metric: so2, window: 1h, aggregate: mean,
     limit: {hourly}, clear: {clear}}}
  - {{id: so2-daily, kind: window, metric: so2, window: 1d, aggregate: mean,
     limit: 30}}
"""
HOUR = 3_600_000
T0 = datetime(2026, 11, 1, 13, tzinfo=UTC)  # 21:00 in Asia/Shanghai
T0_MS = int(T0.timestamp() * 1000)
LOCAL_MIDNIGHT_MS = T0_MS + 3 * HOUR  # 2026-11-02 00:00 +08:00
MEANS = (10.0, 40.0, 10.0, 60.0, 10.0, 70.0, 10.0)
END = T0 + timedelta(hours=len(MEANS))


def batches(park: str) -> list[wire.TelemetryBatch]:
    """One batch an hour (six readings), then the reading that closes the day."""
    out, seq = [], 0
    for h, mean in enumerate(MEANS):
        readings = []
        for i in range(6):
            seq += 1
            ts = T0_MS + h * HOUR + i * 600_000
            readings.append(wire.Reading(seq, "so2", mean, "mg/m3", ts))
        out.append(wire.TelemetryBatch(park, "e1", "stack-1", tuple(readings)))
    closing = wire.Reading(
        seq + 1, "so2", 10.0, "mg/m3", LOCAL_MIDNIGHT_MS + 24 * HOUR + 300_000
    )
    out.append(wire.TelemetryBatch(park, "e1", "stack-1", (closing,)))
    return out


def key(e: dict[str, Any]) -> tuple[str, str, int, float | None]:
    return (e["rule_id"], e["kind"], e["window"]["start_ms"], e["value"])


async def test_replays_of_the_stored_telemetry_against_what_ran_live(
    mqtt_addr: tuple[str, int], park_id: str, platform: Settings, tmp_path: Path
) -> None:
    settings = platform
    live_text = PACK.format(version="1", hourly=50, clear=45)
    pack_path = tmp_path / "pack.yaml"
    pack_path.write_text(live_text)
    sent = batches(park_id)
    readings = sum(len(b.readings) for b in sent)
    async with running_platform(settings) as (storage, _bridge, _sink):
        # the version ran since before the data (the runner's own record keeps it)
        await RulePackStore(storage).record(
            pack="replay-test", version="1",
            sha256=hashlib.sha256(live_text.encode()).hexdigest(), content=live_text,
            at=T0 - timedelta(days=2),
        )  # fmt: skip
        async with RulesRunner(settings, pack_path) as runner:
            task = asyncio.create_task(runner.run())
            try:
                topic = f"sp/v1/{park_id}/e1/stack-1/telemetry"
                messages = [(topic, wire.encode_batch(b)) for b in sent]
                await asyncio.to_thread(publish_all, *mqtt_addr, messages)
                await wait_for(
                    lambda: runner.stats.readings >= readings, timeout_s=60,
                    what="the runner",
                )  # fmt: skip

                async def stored() -> int:
                    keys = await storage.telemetry.reading_keys(park=park_id)
                    return len(keys)

                for _ in range(120):
                    if await stored() >= readings and runner.stats.events >= 5:
                        break
                    await asyncio.sleep(0.5)
            finally:
                runner.stop()
                await task
        live = [e.body for e in await storage.alerts.events(park=park_id)]
        # what live raised: two hourly breaches, each resolved, and the local day
        # from 2026-11-02 00:00 +08:00 (mean 37.5 > 30)
        assert sorted(key(e) for e in live) == sorted([
            ("so2-hourly", "opened", T0_MS + 3 * HOUR, 60.0),
            ("so2-hourly", "resolved", T0_MS + 4 * HOUR, 10.0),
            ("so2-hourly", "opened", T0_MS + 5 * HOUR, 70.0),
            ("so2-hourly", "resolved", T0_MS + 6 * HOUR, 10.0),
            ("so2-daily", "opened", LOCAL_MIDNIGHT_MS, 37.5),
        ])  # fmt: skip
        scope = ReplayScope(park_id)

        # 1. the version in force at the time: the same events, an empty diff
        same = await run_replay(storage, ReplayRequest(scope, T0, END))
        assert [e.to_json() for e in same.events] == live  # ids included
        assert same.diff == []
        [part] = same.evidence.parts
        assert (part.pack, part.version, part.source) == (
            "replay-test",
            "1",
            "recorded",
        )
        assert part.sha256 == hashlib.sha256(live_text.encode()).hexdigest()
        assert part.rows == readings
        assert part.timezone == "Asia/Shanghai"
        # the day window is the park's local day, as live judged it
        daily = [e for e in same.events if e.rule_id == "so2-daily"]
        assert [(e.window.start_ms, e.window.end_ms) for e in daily if e.window] == [
            (LOCAL_MIDNIGHT_MS, LOCAL_MIDNIGHT_MS + 24 * HOUR)
        ]

        # 2. a stricter proposed pack: exactly the hour at 40 is new
        strict = PACK.format(version="2-proposed", hourly=35, clear=30)
        proposed = await run_replay(
            storage, ReplayRequest(scope, T0, END, proposed=strict)
        )
        assert [(d.status, d.rule_id, d.key_ms) for d in proposed.diff] == [
            ("new", "so2-hourly", T0_MS + HOUR)
        ]
        [new] = proposed.diff
        assert new.replay is not None
        assert new.live is None
        assert (new.replay.kind, new.replay.verdict, new.replay.value) == (
            "opened", "breach", 40.0,
        )  # fmt: skip
        assert (
            proposed.evidence.parts[0].sha256
            == hashlib.sha256(strict.encode()).hexdigest()
        )
        assert proposed.evidence.parts[0].rows_sha256 == part.rows_sha256

        # 3. a device's replay: the same events (every rule judges one device)
        device = await run_replay(
            storage, ReplayRequest(ReplayScope(park_id, device="stack-1"), T0, END)
        )
        assert [e.to_json() for e in device.events] == live
        assert device.diff == []

        # 4. a version switch mid-range: two parts, each with its own version
        v2 = PACK.format(version="2", hourly=35, clear=30)
        switch = T0 + timedelta(hours=4)
        await RulePackStore(storage).record(
            pack="replay-test", version="2",
            sha256=hashlib.sha256(v2.encode()).hexdigest(), content=v2, at=switch,
        )  # fmt: skip
        split = await run_replay(storage, ReplayRequest(scope, T0, END))
        assert [(p.version, p.start, p.end) for p in split.evidence.parts] == [
            ("1", T0, switch), ("2", switch, END)
        ]  # fmt: skip
        # v2's stricter hourly limit judges only its own part: the hour at 40
        # (T0 + 1h) is v1's, and v2 judges the hours after the switch as v1 did
        assert split.diff == []
        assert {e.rule_version for e in split.events} == {"1", "2"}
        # ...and v2 read the hour before its part (its lead-in): it knew the alert
        # of the hour at 60 was open, so it resolved it at T0 + 4h as live did
        assert sorted(key(e.to_json()) for e in split.events) == sorted(
            key(e) for e in live
        )

        # 5. the command writes a report a third party verifies offline
        await cli_report_verifies_offline(settings, park_id, tmp_path)


async def cli_report_verifies_offline(
    settings: Settings, park_id: str, tmp_path: Path
) -> None:
    key = generate_private_key()
    env = {
        **os.environ,
        **settings_env(settings),
        "SMARTPARK_SIGNING__PRIVATE_KEY": key,
    }
    out = tmp_path / "report.csv"
    cmd = [
        sys.executable, "-m", "smartpark.cli", "replay", "run", "--park", park_id,
        "--start", T0.isoformat(), "--end", END.isoformat(), "--pack-version", "1",
        "--out", str(out),
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, cmd, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "5 events, 0 new, 0 vanished, 0 changed; 43 rows read" in done.stdout
    pem = tmp_path / "smartpark-public.pem"
    public = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-m", "smartpark.cli", "signing", "public"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    pem.write_text(public.stdout)
    text = out.read_text()
    assert text.startswith("# report: smartpark replay\n# key_id: ")
    assert text.count("\nevent,") == 5
    # the one documented command (api/replay/report.py, README)
    openssl = shutil.which("openssl")
    assert openssl is not None
    verify = [
        openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "smartpark-public.pem",
        "-rawin", "-in", "report.csv", "-sigfile", "report.csv.sig",
    ]  # fmt: skip
    ok = await asyncio.to_thread(
        subprocess.run, verify, cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert ok.returncode == 0
    assert "Signature Verified Successfully" in ok.stdout
    data = bytearray(out.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    out.write_bytes(bytes(data))
    bad = await asyncio.to_thread(
        subprocess.run, verify, cwd=tmp_path, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    assert bad.returncode != 0
