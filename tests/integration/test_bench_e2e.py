"""``smartpark bench e2e`` at a small rate: a valid open-loop run, every reading
stored, both latencies measured on every probe poll, every injected breach's
webhook received and verified, and nothing left behind."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from dataclasses import replace

import psycopg
import pytest
from aiokafka.admin import AIOKafkaAdminClient

from bench import e2e
from bench.load import PRESETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.parametrize("gateway", [False, True], ids=["devices", "gateways"])
async def test_small_run_is_valid_stores_everything_and_cleans_up(
    pg_dsn: str, mqtt_addr: tuple[str, int], kafka_bootstrap: str, gateway: bool
) -> None:
    options = e2e.Options(
        # 150 readings/s, a message a device or an enterprise (wire version 2)
        replace(PRESETS["pilot"].scaled(0.25), gateway=gateway),
        duration_s=10,
        publishers=2,
        probe_every=10,
        dsn=pg_dsn,
        mqtt=mqtt_addr,
        kafka=kafka_bootstrap,
        alerts=4,
    )
    result = await e2e.run(options)

    report = result.report()
    assert result.ok, report
    assert result.verdict.acked_readings == result.verdict.offered_readings > 1000
    assert result.stored == result.verdict.acked_readings
    assert len(result.raw.values) == len(result.visible.values) == result.raw.expected
    assert result.raw.expected >= 20
    # A row is visible after the broker delivered it, not before.
    assert 0 < result.raw.pct(50) < result.visible.pct(50) < 5
    # 4 analysers, one breach reading every 10 s each: opened, resolved, opened...
    assert result.hooks is not None
    assert result.webhook is not None
    assert result.hooks.expected == 4
    assert len(result.webhook.values) == 4
    assert result.hooks.bad_signatures == result.hooks.unmatched == 0
    assert 0 < result.webhook.pct(100) < 10
    assert "webhooks: 4 of 4 breaches" in report
    assert "RESULT: VALID" in report
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_namespace WHERE nspname = %s", (result.schema,)
        ).fetchone()
    assert row == (0,)


def test_a_run_ended_by_kill_cleans_up_as_ctrl_c_does(
    pg_dsn: str, mqtt_addr: tuple[str, int], kafka_bootstrap: str
) -> None:
    """SIGTERM mid-run: the run's schema and Kafka topics are gone afterwards and
    the command says it was interrupted (killed before, a run left them behind)."""

    def schemas() -> set[str]:
        with psycopg.connect(pg_dsn) as conn:
            rows = conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'bench\\_%'"
            ).fetchall()
        return {r[0] for r in rows}

    before = schemas()
    argv = [
        sys.executable, "-m", "smartpark.cli", "bench", "e2e", "--preset", "pilot",
        "--rate-scale", "0.25", "--duration", "60", "--alerts", "0",
        "--dsn", pg_dsn, "--mqtt", f"{mqtt_addr[0]}:{mqtt_addr[1]}",
        "--kafka", kafka_bootstrap,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        ours: set[str] = set()
        while not ours and time.monotonic() < deadline:
            time.sleep(0.5)
            ours = schemas() - before
        assert ours, "the run's schema never appeared"
        prefix = f"bench{ours.pop().removeprefix('bench_')}."  # its topics' prefix
        time.sleep(8)  # its services started, the load running
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"interrupted; the run's clean-up ran" in err
    assert schemas() - before == set()
    assert [t for t in list_topics(kafka_bootstrap) if t.startswith(prefix)] == []


def list_topics(bootstrap: str) -> list[str]:
    async def topics() -> list[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            return list(await admin.list_topics())
        finally:
            await admin.close()

    return asyncio.run(topics())
