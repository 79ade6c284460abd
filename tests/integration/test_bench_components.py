"""The component benches (``smartpark bench sink|bridge|rules|storage|report``) at a
tiny size against the local services: every drain finishes, every row the sink
process was given is stored, figures come with their baselines, the report writes
its document and plots from the run's own numbers, and nothing is left behind."""

from __future__ import annotations

import math
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from bench import bridge_bench, report, rules_bench, sink_bench, storage_bench
from bench.figures import Figure

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _finite_positive(*values: float) -> bool:
    return all(math.isfinite(v) and v > 0 for v in values)


def _schemas(pg_dsn: str, prefix: str) -> list[str]:
    with psycopg.connect(pg_dsn) as conn:
        rows = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE %s", (prefix + "%",)
        ).fetchall()
    return [r[0] for r in rows]


async def test_sink_bench_stores_every_row_through_the_sink_process(
    pg_dsn: str, kafka_bootstrap: str, db_schema: str
) -> None:
    run = await sink_bench.run(
        sink_bench.Options(
            rows=10_000,
            batch_records=400,
            schema=db_schema,
            keep=True,  # the fixture drops it; the rows of (f) are counted below
            dsn=pg_dsn,
            kafka=kafka_bootstrap,
        )
    )

    assert set(run.results) == {"a", "c", "b", "e", "f"}
    for letter in "abef":
        assert run.results[letter].rows == 10_000, run.report()
    assert run.progress is not None
    assert run.progress.complete
    with psycopg.connect(pg_dsn) as conn:
        row = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(
                sql.Identifier(db_schema, "telemetry")
            )
        ).fetchone()
    assert row == (10_000,)  # (f) wrote them all, into an emptied table
    figures = {(f.what, f.baseline): f for f in run.figures()}
    main = figures[("sink write path (a)", "raw COPY (b)")]
    assert main.goal_ratio == sink_bench.SINK_GOAL
    assert main.ratio == pytest.approx(run.results["a"].rate / run.results["b"].rate)
    assert ("sink process (f)", "row-by-row INSERT (e)") in figures
    assert all(_finite_positive(f.value, f.baseline_value) for f in figures.values())
    assert [w for w, *_ in run.sizes] == ["after (a)", "after compaction"]
    assert all(readings == 10_000 for _, readings, _ in run.sizes)
    assert all(m.peak_kib > 10_000 for m in run.memory), run.memory
    assert "sink process (f)" in run.report()


async def test_bridge_bench_drains_both_backlogs_and_cleans_up(
    mqtt_addr: tuple[str, int], kafka_bootstrap: str, kafka_admin: object
) -> None:
    def bench_topics(topics: list[str]) -> set[str]:
        return {t for t in topics if t.startswith("bbench") and "telemetry" in t}

    # (a run killed elsewhere may have left its own: this run must leave none)
    before = bench_topics(await kafka_admin.list_topics())  # type: ignore[attr-defined]
    result = await bridge_bench.run(
        bridge_bench.Options(messages=1500, mqtt=mqtt_addr, kafka=kafka_bootstrap)
    )

    assert result.ok
    assert result.raw.samples[-1][1] == result.bridge.samples[-1][1] == 1500
    assert _finite_positive(
        result.bridge_rate, result.raw_rate, result.producer_rate
    ), result.report()
    assert [f.baseline for f in result.figures()] == [
        "raw MQTT subscriber, only counts",
        "Kafka producer alone, same records",
    ]
    assert result.memory[0].process.startswith("smartpark bridge")
    assert result.memory[0].peak_kib > 10_000
    after = bench_topics(await kafka_admin.list_topics())  # type: ignore[attr-defined]
    assert after <= before


async def test_rules_bench_runner_drains_the_readings_the_core_judged(
    pg_dsn: str, kafka_bootstrap: str
) -> None:
    before = set(_schemas(pg_dsn, "bench_rules_"))
    result = await rules_bench.run(
        rules_bench.Options(stacks=10, hours=2, dsn=pg_dsn, kafka=kafka_bootstrap)
    )

    assert result.ok  # the core's hourly means equal NumPy's
    assert result.readings == 10 * 2 * (2 * 60 + 1)
    assert result.runner is not None
    assert result.runner.complete
    assert result.runner.samples[-1][1] == result.readings
    runner, core = result.figures()[0], result.figures()[1]
    assert (runner.what, runner.baseline) == (
        "rules runner process (c)",
        "rule core (a), same readings",
    )
    assert runner.baseline_value == core.value == result.core_rate
    assert _finite_positive(runner.value, runner.baseline_value)
    assert set(_schemas(pg_dsn, "bench_rules_")) == before


async def test_storage_bench_sizes_plain_postgres(pg_dsn: str) -> None:
    result = await storage_bench.run(
        storage_bench.Options(rows=20_000, dsn=pg_dsn, timescale_dsn=None)
    )

    written, compacted = result.plain
    assert written.readings == compacted.readings == 20_000
    # The rows alone are smaller than rows and indexes; compaction only shrinks.
    assert 0 < written.heap_bytes < written.total_bytes
    assert compacted.total_bytes <= written.total_bytes
    assert 40 < compacted.per_reading < 400
    assert result.timescale == []
    assert result.timescale_skipped == "--timescale-dsn none"
    assert all(f.goal_max == storage_bench.GOAL_BYTES for f in result.figures())
    assert result.week_average == pytest.approx(
        (2 * written.per_reading + 5 * compacted.per_reading) / 7
    )


async def test_report_writes_the_document_from_its_own_figures(
    pg_dsn: str,
    mqtt_addr: tuple[str, int],
    kafka_bootstrap: str,
    tmp_path: Path,
) -> None:
    options = report.Options(
        quick=True,
        out=tmp_path,
        dsn=pg_dsn,
        mqtt=mqtt_addr,
        kafka=kafka_bootstrap,
        timescale_dsn=None,
        sink_rows=5_000,
        bridge_messages=1000,
        rules_stacks=4,
        rules_hours=2,
        storage_rows=5_000,
        timescale_rows=0,
        e2e_runs=(("pilot", 0.25, False),),
        e2e_duration_s=6,
        command="smartpark bench report --quick (test)",
    )
    r = await report.run(options)

    md = (tmp_path / "benchmarks.md").read_text()
    for png in ("bench-throughput.png", "bench-latency.png"):
        data = (tmp_path / png).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        assert f"]({png})" in md
    assert "## The machine" in md
    assert f"| PostgreSQL | {r.machine.postgres} |" in md
    assert "mosquitto version" in r.machine.mosquitto
    assert "smartpark bench report --quick (test)" in md
    figures: list[Figure] = [
        *r.sink.figures(),
        *r.bridge.figures(),
        *r.rules.figures(),
        *r.storage.figures(),
    ]
    for f in figures:  # every figure in the document as it was measured
        assert f"| {f.what} | {f.cell(f.value)} {f.unit} |" in md
        assert f"| {f.ratio:.1%} |" in md
    caps = report.capacities(r)
    for c in caps:
        assert f"{c.readings_per_s:,.0f} readings/s" in md
    assert f"scale first: the {caps[0].component}" in md
    chain = report.chain_enterprises_per_core(caps)
    assert chain < min(c.enterprises for c in caps)
    assert f"every component on one core: {chain:,.0f} enterprises" in md
    (run,) = r.e2e
    assert run.ok, run.report()
    assert f"| {run.verdict.offered_rate:,.0f} |" in md


@pytest.mark.timescale
async def test_storage_bench_compresses_on_timescale(
    pg_dsn: str, timescale_dsn: str
) -> None:
    result = await storage_bench.run(
        storage_bench.Options(
            rows=5_000,
            timescale_rows=20_000,
            timescale_devices=100,
            dsn=pg_dsn,
            timescale_dsn=timescale_dsn,
        )
    )

    raw, packed = result.timescale
    assert raw.readings == packed.readings == 20_000
    assert 0 < packed.total_bytes < raw.total_bytes
    compressed = result.figures()[-1]
    assert (compressed.what, compressed.baseline) == (
        "TimescaleDB, compressed",
        "TimescaleDB, uncompressed",
    )
    assert compressed.ratio == pytest.approx(packed.per_reading / raw.per_reading)
