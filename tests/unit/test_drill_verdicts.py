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
        status="", edge=drill.EdgeLedger(600, [], {}, 0), publisher_disconnects=1,
        resends=(1, 500, 500), proxy=(1, 0), logs=Path("."),
        elapsed_s=30.0,
    )  # fmt: skip


def test_a_clean_run_passes_and_counts_duplicates_apart() -> None:
    outcome = _outcome()
    assert outcome.ok
    text = outcome.report()
    assert text.rstrip().endswith("RESULT: PASS")
    assert "duplicates 20 (stored once)" in text
    assert "| kill -9 of the bridge | 4.0 |" in text
    assert "500 readings after 1 reconnects, 500 of them acknowledged again" in text


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
        (
            {"edge": drill.EdgeLedger(600, [("coal-1.meter-1", 7)], {}, 0)},
            "FAIL: every poll the edge agent stored in its outbox is in the database"
            " (600 polls, 1 missing (e.g. coal-1.meter-1/7))",
        ),
        (
            {"edge": drill.EdgeLedger(600, [], {"dropped_rows": 5}, 0)},
            "outbox gave up {'dropped_rows': 5}",
        ),
        (
            {"edge": drill.EdgeLedger(0, [], {}, 0)},
            "FAIL: every poll the edge agent stored in its outbox is in the database"
            " (0 polls",
        ),
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


def test_messages_sent_again_are_never_counted_as_acknowledged_twice() -> None:
    ledger = drill.Ledger()
    first = drill.Sent((("d1", 1), ("d1", 2)), ("nh3", "o2"), 0, 0.0, "t", b"x")
    ledger.record(1, first)
    ledger.ack(1, 10.0)
    assert [s.keys for s in ledger.acked_since(9.0)] == [first.keys]
    assert ledger.acked_since(10.5) == []
    ledger.ack(2, 11.0)  # a PUBACK before its publish was recorded
    ledger.record(2, first, again=True)
    ledger.record(3, first, again=True)
    assert ledger.unacked_readings == 4
    ledger.ack(3, 12.0)
    assert (ledger.acked_readings, ledger.resent_readings, ledger.resent_acked) == (
        4,
        8,
        8,
    )
    assert ledger.unacked_readings == 0
