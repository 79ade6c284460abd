"""The drill's verdicts from its ledger: a loss, a missed alert or webhook, a
backlog that never drained or a service left down each fail the run by name."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench import drill
from bench.load import PRESETS


def _outcome() -> drill.Outcome:
    o = drill.Options(
        tier="short", faults=("bridge",), workload=PRESETS["pilot"], fault_s=4,
        steady_s=2, drain_limit_s=60, dsn="", mqtt=("127.0.0.1", 1), kafka="",
        services_dir=Path("."),
    )  # fmt: skip
    fault = drill.FaultResult(
        "bridge", 100.0, recovered_s=104.0, settled_s=105.0, drained_s=0.5,
        breach="breach-bridge", alert_s=4.1, webhook_s=4.3,
        evidence="bridge pid 1 exited -9; new pid 2",
    )  # fmt: skip
    return drill.Outcome(
        options=o, faults=[fault], acked=1000, missing=[], stored_unacked=0,
        unacked=0, not_queued=0, sent=1000, duplicates=20, late=0, kafka_readings=1020,
        breaches=["breach-bridge", "breach-warmup"], no_alert=[], no_webhook=[],
        bad_signatures=0, webhook_duplicates=0, exits={}, healthy=True,
        status="", publisher_disconnects=0, proxy=(1, 0), logs=Path("."),
        elapsed_s=30.0,
    )  # fmt: skip


def test_a_clean_run_passes_and_counts_duplicates_apart() -> None:
    outcome = _outcome()
    assert outcome.ok
    text = outcome.report()
    assert text.rstrip().endswith("RESULT: PASS")
    assert "duplicates 20 (stored once)" in text
    assert "| kill -9 of the bridge | 4.0 |" in text


@pytest.mark.parametrize(
    ("change", "line"),
    [
        (
            {"missing": [("e0001-d002", 7, "active_power")]},
            "FAIL: every acknowledged reading is in the database (1,000 acknowledged,"
            " 1 missing (e.g. e0001-d002/7/active_power))",
        ),
        (
            {"no_alert": ["breach-bridge"]},
            "FAIL: every injected breach produced its alert (1/2, none for "
            "breach-bridge)",
        ),
        ({"bad_signatures": 1}, "FAIL: every injected breach produced its signed"),
        ({"healthy": False}, "FAIL: the local services are healthy at the end"),
    ],
)
def test_each_broken_promise_fails_the_run(
    change: dict[str, object], line: str
) -> None:
    outcome = replace(_outcome(), **change)  # type: ignore[arg-type]
    assert not outcome.ok
    assert line in outcome.report()
    assert outcome.report().rstrip().endswith("RESULT: FAIL")


def test_a_backlog_that_never_drained_fails_the_run() -> None:
    outcome = _outcome()
    outcome.faults[0].drained_s = None
    assert not outcome.ok
    assert "FAIL: after each fault the backlog drained (not within 60 s: bridge)" in (
        outcome.report()
    )
