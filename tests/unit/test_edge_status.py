"""The status endpoint: metrics checked with Prometheus' own parser, HTTP over real
sockets (urllib and raw streams), and clients that misbehave."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.hj212.listener import ListenerStats
from edge_agent.outbox import OutboxStats
from edge_agent.publisher import PublisherStats, Refusal
from edge_agent.stats import AgentStats, DeviceStats
from edge_agent.status import (
    CONTENT_TYPE,
    MAX_LABEL_CHARS,
    MAX_REQUEST_HEAD,
    StatusServer,
    health,
    render_metrics,
)
from smartpark.errors import StorageError

AGENT = "agent.edge-1"
NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
NOW_MS = int(NOW.timestamp() * 1000)
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def publisher(**kw: object) -> PublisherStats:
    base: dict[str, object] = {
        "connected": True,
        "connects": 2,
        "disconnects": 1,
        "last_disconnect": "keepalive timeout",
        "in_flight": 3,
        "published_messages": 40,
        "acked_messages": 37,
        "published_readings": 400,
        "acked_readings": 370,
        "refused_messages": {"Quota exceeded (0x97)": 1},
        "refused_readings": 10,
        "no_subscribers": 2,
    }
    return PublisherStats(**(base | kw))  # type: ignore[arg-type]


def make_stats(
    *, error: str = "no answer within 2 s", hj212: bool = True, **pub: object
) -> AgentStats:
    return AgentStats(
        devices={
            "meter-1": DeviceStats(
                polls_ok=120,
                last_seq=120,
                last_reading_ms=1_714_564_800_250,
                samples=480,
                rollovers=1,
                replacements=2,
                invalid_values=3,
                clock_refused=4,
            ),
            "meter-2": DeviceStats(
                errors=7,
                consecutive_failures=4,
                last_error=error,
                backoff_s=math.inf,
            ),
        },
        outbox=OutboxStats(12, 3.5, 1000, 5, 6, 7, 8),
        publisher=publisher(**pub),
        hj212=ListenerStats(
            frames_ok=9,
            frames_rejected=Counter({"crc": 2, "unknown_mn": 1}),
            frames_other=Counter({"2021": 4}),
            tolerated=Counter({"field": 3}),
            unmapped_codes=4,
            unknown_flags=5,
            samples=27,
            replies_sent=8,
            connections_open=1,
            connections_total=6,
            connections_refused=2,
            idle_closed=3,
        )
        if hj212
        else None,
    )


def parse(text: str) -> tuple[Samples, dict[str, str]]:
    """Prometheus' own parser: samples by (name, labels), and family → type."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[
        (f"smartpark_edge_{name}", frozenset(({"agent": AGENT} | labels).items()))
    ]


def test_every_value_round_trips_through_the_prometheus_parser() -> None:
    text = render_metrics(make_stats(), agent_id=AGENT)
    samples, types = parse(text)
    got = {
        (name.removeprefix("smartpark_edge_"), dict(labels).get("device", "")): v
        for (name, labels), v in samples.items()
        if "device" in dict(labels)
    }
    assert got == {
        ("device_polls_ok_total", "meter-1"): 120,
        ("device_polls_ok_total", "meter-2"): 0,
        ("device_poll_errors_total", "meter-1"): 0,
        ("device_poll_errors_total", "meter-2"): 7,
        ("device_consecutive_failures", "meter-1"): 0,
        ("device_consecutive_failures", "meter-2"): 4,
        ("device_backoff_seconds", "meter-1"): 0,
        ("device_backoff_seconds", "meter-2"): math.inf,
        # no reading yet: no sample rather than a made-up 0
        ("device_last_reading_timestamp_seconds", "meter-1"): 1_714_564_800.25,
        ("device_last_seq", "meter-1"): 120,
        ("device_last_seq", "meter-2"): 0,
        ("device_readings_total", "meter-1"): 480,
        ("device_readings_total", "meter-2"): 0,
        ("device_counter_rollovers_total", "meter-1"): 1,
        ("device_counter_rollovers_total", "meter-2"): 0,
        ("device_counter_replacements_total", "meter-1"): 2,
        ("device_counter_replacements_total", "meter-2"): 0,
        ("device_invalid_values_total", "meter-1"): 3,
        ("device_invalid_values_total", "meter-2"): 0,
        ("device_clock_refused_polls_total", "meter-1"): 4,
        ("device_clock_refused_polls_total", "meter-2"): 0,
        ("device_last_error_info", "meter-2"): 1,
    }
    assert (
        value(
            samples,
            "device_last_error_info",
            device="meter-2",
            error="no answer within 2 s",
        )
        == 1
    )
    expected = {
        "outbox_rows": 12,
        "outbox_max_rows": 1000,
        "outbox_oldest_age_seconds": 3.5,
        "outbox_dropped_rows_total": 5,
        "outbox_expired_rows_total": 6,
        "outbox_refused_polls_total": 7,
        "outbox_refused_rows_total": 8,
        "broker_connected": 1,
        "broker_connects_total": 2,
        "broker_disconnects_total": 1,
        "broker_connect_failures_total": 0,
        "published_messages_total": 40,
        "acked_messages_total": 37,
        "published_readings_total": 400,
        "acked_readings_total": 370,
        "in_flight_messages": 3,
        "clock_ok": 1,
        "hj212_frames_ok_total": 9,
        "hj212_unmapped_codes_total": 4,
        "hj212_unknown_flags_total": 5,
        "hj212_samples_total": 27,
        "hj212_replies_sent_total": 8,
        "hj212_connections_open": 1,
        "hj212_connections_total": 6,
        "hj212_connections_refused_total": 2,
        "hj212_idle_closed_total": 3,
    }
    for name, v in expected.items():
        assert value(samples, name) == v, name
    assert value(samples, "hj212_frames_rejected_total", kind="crc") == 2
    assert value(samples, "hj212_frames_rejected_total", kind="unknown_mn") == 1
    assert value(samples, "hj212_frames_other_total", cn="2021") == 4
    assert value(samples, "hj212_tolerated_total", kind="field") == 3
    # connected: no "disconnected since", no connect error
    assert not any(
        "disconnected_since" in n or "connect_error" in n for n, _ in samples
    )
    # every sample: the prefix and the agent label; counters end in _total
    assert all(n.startswith("smartpark_edge_") for n, _ in samples)
    assert all(("agent", AGENT) in labels for _, labels in samples)
    for name, kind in types.items():
        assert kind in ("counter", "gauge"), name
        if kind == "counter":  # the parser strips _total from a counter family
            assert (name + "_total") in {n for n, _ in samples} or name.startswith(
                "smartpark_edge_hj212_frames_rejected"
            )
    # each family documented
    assert text.count("# HELP ") == text.count("# TYPE ") == len(types)


@pytest.mark.parametrize(
    "error",
    [
        'Modbus exception 4 ("server device failure")',
        "C:\\path\\to\\port",
        "line one\nline two",
        'all three: \\ " \n end',
        "ünïcode µg/m³ 传感器",
        "\\n is not a newline",
    ],
)
def test_a_device_error_round_trips_escaped(error: str) -> None:
    text = render_metrics(make_stats(error=error), agent_id=AGENT)
    samples, _ = parse(text)
    assert value(samples, "device_last_error_info", device="meter-2", error=error) == 1
    line = next(
        ln
        for ln in text.splitlines()
        if ln.startswith("smartpark_edge_device_last_error_info{")
    )
    assert line.endswith('"} 1')  # one line: the newline is escaped


def test_a_long_error_is_cut_and_control_characters_blanked() -> None:
    error = "bad\r\x00frame " + "x" * 500
    samples, _ = parse(render_metrics(make_stats(error=error), agent_id=AGENT))
    (shown,) = [
        dict(labels)["error"]
        for name, labels in samples
        if name == "smartpark_edge_device_last_error_info"
    ]
    assert len(shown) == MAX_LABEL_CHARS
    assert shown.startswith("bad  frame xxx")
    assert shown.endswith("x…")


def test_disconnected_broker_and_no_listener() -> None:
    stats = make_stats(
        hj212=False,
        connected=False,
        connect_failures=3,
        last_connect_error='TLS: certificate verify failed: "self-signed"',
        disconnected_since_ms=NOW_MS - 90_000,
    )
    samples, types = parse(render_metrics(stats, agent_id=AGENT))
    assert value(samples, "broker_connected") == 0
    assert value(samples, "broker_connect_failures_total") == 3
    assert (
        value(samples, "broker_disconnected_since_timestamp_seconds")
        == (NOW_MS - 90_000) / 1000
    )
    assert (
        value(
            samples,
            "broker_last_connect_error_info",
            reason='TLS: certificate verify failed: "self-signed"',
        )
        == 1
    )
    assert not any(name.startswith("smartpark_edge_hj212") for name in types)


REFUSAL = Refusal(
    "sp/v1/p1/e1/meter-2/telemetry", "Not authorized (0x87)", NOW_MS - 5_000, 3
)


def test_refusals_by_reason_and_the_refused_topics() -> None:
    stats = make_stats(
        refused_messages={"Not authorized (0x87)": 3, "Quota exceeded (0x97)": 1},
        refused_readings=40,
        refusing=(REFUSAL,),
    )
    samples, types = parse(render_metrics(stats, agent_id=AGENT))
    by_reason = "broker_refused_messages_total"
    assert value(samples, by_reason, reason="Not authorized (0x87)") == 3
    assert value(samples, by_reason, reason="Quota exceeded (0x97)") == 1
    assert value(samples, "broker_refused_readings_total") == 40
    assert value(samples, "broker_refused_topics") == 1
    assert value(samples, "broker_no_subscribers_messages_total") == 2
    info = {"topic": REFUSAL.topic, "reason": REFUSAL.reason}
    assert value(samples, "broker_refused_topic_info", **info) == 1
    assert types["smartpark_edge_broker_refused_messages"] == "counter"
    # none refused: the gauge says 0 and the info family has no sample
    samples, _ = parse(render_metrics(make_stats(), agent_id=AGENT))
    assert value(samples, "broker_refused_topics") == 0
    assert not any(n.endswith("refused_topic_info") for n, _ in samples)


@pytest.mark.parametrize(
    ("pub", "healthy", "line"),
    [
        ({}, True, "ok"),
        (
            {"connected": False, "disconnected_since_ms": NOW_MS - 10_000},
            True,
            "ok (broker unreachable for 10 s: keepalive timeout)",
        ),
        (
            {
                "connected": False,
                "disconnected_since_ms": NOW_MS - 300_000,
                "last_connect_error": "refused: Not authorized",
            },
            False,
            "broker unreachable for 300 s: refused: Not authorized",
        ),
        (
            {"connected": False, "disconnected_since_ms": None},
            False,
            "broker not connected",
        ),
        (
            {"refusing": (REFUSAL,)},
            False,
            "the broker refuses sp/v1/p1/e1/meter-2/telemetry: Not authorized (0x87)",
        ),
        (
            {
                "refusing": (REFUSAL, dataclasses.replace(REFUSAL, topic="t2")),
                "connected": False,
                "disconnected_since_ms": NOW_MS - 10_000,
            },
            False,
            "the broker refuses sp/v1/p1/e1/meter-2/telemetry: Not authorized (0x87)"
            " and 1 more",
        ),
    ],
)
def test_health_rule(pub: dict[str, object], healthy: bool, line: str) -> None:
    stats = dataclasses.replace(make_stats(), publisher=publisher(**pub))
    assert health(stats, now_ms=NOW_MS, unhealthy_after_s=300) == (healthy, line)


# --- HTTP over real sockets --------------------------------------------------


def get(url: str, method: str = "GET") -> tuple[int, dict[str, str], bytes]:
    """A real HTTP request with urllib; errors become their status."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, dict(err.headers), err.read()


def server(
    get_stats: Callable[[], AgentStats] = make_stats,
    *,
    unhealthy_after_s: float = 300.0,
    read_timeout_s: float = 5.0,
    max_connections: int = 32,
) -> StatusServer:
    return StatusServer(
        get_stats,
        host="127.0.0.1",
        port=0,
        agent_id=AGENT,
        unhealthy_after_s=unhealthy_after_s,
        read_timeout_s=read_timeout_s,
        max_connections=max_connections,
        clock=lambda: NOW,
    )


async def test_get_metrics_and_healthz_over_http() -> None:
    async with server() as srv:
        assert srv.port > 0
        base = f"http://127.0.0.1:{srv.port}"
        status, headers, body = await asyncio.to_thread(get, base + "/metrics")
        assert status == 200
        assert headers["Content-Type"] == CONTENT_TYPE
        assert body.decode() == render_metrics(make_stats(), agent_id=AGENT)
        status, _, body = await asyncio.to_thread(get, base + "/healthz")
        assert (status, body) == (200, b"ok\n")
        status, headers, body = await asyncio.to_thread(get, base + "/metrics", "HEAD")
        assert (status, body) == (200, b"")
        assert int(headers["Content-Length"]) == len(
            render_metrics(make_stats(), agent_id=AGENT).encode()
        )
        status, _, _ = await asyncio.to_thread(get, base + "/metrics?x=1")
        assert status == 200
        status, _, _ = await asyncio.to_thread(get, base + "/")
        assert status == 404
        status, headers, _ = await asyncio.to_thread(get, base + "/metrics", "POST")
        assert (status, headers["Allow"]) == (405, "GET, HEAD")


async def test_healthz_503_once_the_broker_is_away_too_long() -> None:
    away = make_stats(
        connected=False,
        disconnected_since_ms=NOW_MS - 61_000,
        last_connect_error="TLS: certificate verify failed: unable to get issuer",
    )
    async with server(lambda: away, unhealthy_after_s=60) as srv:
        status, _, body = await asyncio.to_thread(
            get, f"http://127.0.0.1:{srv.port}/healthz"
        )
    assert status == 503
    assert body == (
        b"broker unreachable for 61 s: TLS: certificate verify failed: "
        b"unable to get issuer\n"
    )


async def test_stats_failure_is_a_500() -> None:
    def broken() -> AgentStats:
        raise StorageError("disk I/O error")

    async with server(broken) as srv:
        status, _, body = await asyncio.to_thread(
            get, f"http://127.0.0.1:{srv.port}/metrics"
        )
    assert status == 500
    assert b"disk I/O error" in body


async def test_a_silent_client_does_not_block_another_and_gets_408() -> None:
    async with server(read_timeout_s=1.0) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            started = time.monotonic()
            status, _, _ = await asyncio.to_thread(
                get, f"http://127.0.0.1:{srv.port}/metrics"
            )
            assert status == 200
            assert time.monotonic() - started < 0.5  # not after the silent one
            async with asyncio.timeout(5):
                answer = await reader.read()  # until the server closes
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 408 ")


async def test_an_oversize_request_gets_431_and_is_closed() -> None:
    async with server() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(
                b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * (4 * MAX_REQUEST_HEAD)
            )
            await writer.drain()
            async with asyncio.timeout(5):
                answer = await reader.read()  # returns only once closed
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert b"Connection: close" in answer


@pytest.mark.parametrize(
    "request_line",
    [b"GARBAGE", b"GET /metrics", b"GET /metrics SPDY/3", b"GET  /metrics HTTP/1.1"],
)
async def test_a_malformed_request_is_a_400(request_line: bytes) -> None:
    async with server() as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            writer.write(request_line + b"\r\n\r\n")
            async with asyncio.timeout(5):
                answer = await reader.read()
        finally:
            writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")


async def test_connections_beyond_the_limit_are_closed_at_once() -> None:
    async with server(max_connections=2, read_timeout_s=30) as srv:
        idle = [await asyncio.open_connection("127.0.0.1", srv.port) for _ in range(2)]
        await asyncio.sleep(0.1)  # let the server take them
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        try:
            async with asyncio.timeout(2):
                assert await reader.read() == b""
        finally:
            writer.close()
            for _, w in idle:
                w.close()


async def test_close_ends_open_connections_at_once() -> None:
    srv = server(read_timeout_s=30)
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await srv.close()
    assert time.monotonic() - started < 1
    async with asyncio.timeout(2):
        assert await reader.read() == b""
    writer.close()
