"""The fault drills' short tier (``smartpark drill --tier short``), as CI runs it.

With the pilot park's load running, every fault of :data:`bench.drill.FAULTS` in
turn: kill -9 of a real edge agent, the bridge, the sink, the rules runner, the
notifier and the API; kill -9 of the shared Mosquitto and Kafka broker and
PostgreSQL's immediate shutdown, each restarted with ``deploy/local/services``; the
edge's network cut; the database down; Mosquitto killed while it holds the bridge's
backlog. Every reading Mosquitto acknowledged to the load and every poll the edge
agent stored in its outbox must be in the database, and every injected breach must
have its alert and its signed webhook; the API must be ready again after its
restart; the shared services must be up and healthy afterwards (the suite runs
serially, so restarting them here disturbs no other test).
"""

from __future__ import annotations

import re

import pytest

from bench import drill

pytestmark = [pytest.mark.integration, pytest.mark.slow]


async def test_the_short_tier_loses_no_acknowledged_reading_and_no_alert(
    pg_dsn: str, mqtt_addr: tuple[str, int], kafka_bootstrap: str
) -> None:
    argv = ["--tier", "short", "--dsn", pg_dsn, "--kafka", kafka_bootstrap]
    argv += ["--mqtt", f"{mqtt_addr[0]}:{mqtt_addr[1]}"]
    o = drill.options(drill.parser().parse_args(argv))
    outcome = await drill.Drill(o).run()
    print(outcome.report())  # the raw drill output, kept by pytest on failure

    # every fault was applied, and really: the process is a new one
    assert [f.name for f in outcome.faults] == list(drill.FAULTS)
    for f in outcome.faults:
        if f.name == "netcut":
            continue
        pids = re.findall(r"pid (\d+)", f.evidence)
        assert len(pids) >= 2, f.evidence
        assert len(set(pids)) == len(pids), f.evidence
        if f.name in drill.PROCESS_FAULTS:
            assert "exited -9" in f.evidence, f.evidence
    assert outcome.proxy[1] >= 1  # the publisher tried during the cut, refused
    assert outcome.publisher_disconnects >= 2  # Mosquitto's kill, the cut

    # the load ran throughout, and the ledger judged every acknowledged reading
    assert outcome.acked == outcome.sent >= 600 * 60
    assert outcome.unacked == outcome.not_queued == 0
    assert outcome.missing == []
    assert outcome.kafka_readings >= outcome.acked
    # what Mosquitto lost with the bridge's backlog came again (the resend window)
    assert outcome.resends[0] >= 1
    assert outcome.resends[2] > 0

    # the real edge agent: killed, restarted, nothing it stored lost
    assert outcome.edge.polls >= 4 * 30
    assert outcome.edge.missing == []
    assert outcome.edge.losses == {}
    api = [f for f in outcome.faults if f.name == "api"]
    assert api
    assert api[0].api_ready_s is not None

    # every breach (one per fault, and the warm-up's) raised and delivered
    assert len(outcome.breaches) == len(drill.FAULTS) + 1
    assert outcome.no_alert == []
    assert outcome.no_webhook == []
    assert outcome.bad_signatures == 0

    # after each fault the backlog drained, and the services are back
    assert all(f.drained_s is not None for f in outcome.faults)
    assert outcome.healthy, outcome.status
    assert outcome.ok


GATEWAY_FAULTS = ("edge", "bridge", "sink", "mosquitto", "kafka", "mosquitto-backlog")


async def test_gateway_messages_survive_the_faults_of_the_message_path(
    pg_dsn: str, mqtt_addr: tuple[str, int], kafka_bootstrap: str
) -> None:
    """The same verdicts with gateway messages (wire version 2) from the load
    and from the real edge agent (``publish.gateway``), for the faults on the
    path a message takes: the agent, the bridge, the sink, Mosquitto (also
    while it holds the bridge's backlog) and Kafka."""
    argv = ["--tier", "short", "--gateway", "--faults", ",".join(GATEWAY_FAULTS)]
    argv += ["--dsn", pg_dsn, "--kafka", kafka_bootstrap]
    argv += ["--mqtt", f"{mqtt_addr[0]}:{mqtt_addr[1]}"]
    o = drill.options(drill.parser().parse_args(argv))
    assert o.workload.gateway
    outcome = await drill.Drill(o).run()
    print(outcome.report())

    assert [f.name for f in outcome.faults] == list(GATEWAY_FAULTS)
    assert outcome.acked == outcome.sent >= 600 * 30
    assert outcome.missing == []
    assert outcome.resends[2] > 0  # what Mosquitto lost came again
    assert outcome.edge.polls >= 4 * 30
    assert outcome.edge.missing == []
    # the agent sent gateway messages: several devices' polls a message
    stats = re.findall(
        r"messages published (\d+)", (outcome.logs / "edge.log").read_text()
    )
    assert stats, "no stats line of the edge agent"
    assert 0 < int(stats[-1]) < outcome.edge.polls / 2
    assert outcome.no_alert == outcome.no_webhook == []
    assert outcome.ok
