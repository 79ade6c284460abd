"""``smartpark bench e2e`` at a small rate: a valid open-loop run, every reading
stored, both latencies measured on every probe poll, every injected breach's
webhook received and verified, and nothing left behind."""

from __future__ import annotations

import psycopg
import pytest

from bench import e2e
from bench.load import PRESETS

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_small_run_is_valid_stores_everything_and_cleans_up(
    pg_dsn: str, mqtt_addr: tuple[str, int], kafka_bootstrap: str
) -> None:
    options = e2e.Options(
        PRESETS["pilot"].scaled(0.25),  # 150 readings/s
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
    assert result.raw.expected >= 30
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
