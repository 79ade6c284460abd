"""HJ 212 data loggers → EdgeAgent's listener → outbox → real Mosquitto.

The test plays the data logger over a real TCP socket; a real paho subscriber
records what the agent publishes.
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig, parse_config
from edge_agent.hj212 import Packet, Pollutant, decode, encode
from edge_agent.sample import to_ms
from tests.support.mosquitto import TestBroker
from tests.support.recorder import Recorder, until

pytestmark = pytest.mark.integration

MN = "88888880000001"


def agent_config(
    host: str, port: int, tmp_path: Path, park: str, **outbox: Any
) -> AgentConfig:
    return parse_config(
        {
            "site": {"park": park, "enterprise": "coal-power"},
            "broker": {
                "host": host,
                "port": port,
                "client_id": f"edge-{park}",
                "reconnect_min_s": 1,
                "reconnect_max_s": 1,
            },
            "outbox": {"path": str(tmp_path / "outbox.db"), **outbox},
            "status": {"host": "127.0.0.1", "port": 0},
            "hj212": {
                "host": "127.0.0.1",
                "port": 0,
                "idle_timeout_s": 30,
                "loggers": [
                    {
                        "mn": MN,
                        "device": "stack-1",
                        "hourly": "stack-1.hour",
                        "pollutants": {
                            "a21026": {"metric": "so2", "corrected": "so2_corrected"},
                            "a19001": {"metric": "o2"},
                        },
                    }
                ],
            },
        },
        source="test",
    )


def packet(
    minute: int, *, cn: str = "2011", flag: int = 4, so2_flag: str = "N"
) -> bytes:
    # DataTime is the logger's local time (Asia/Shanghai, UTC+8)
    data_time = f"2026010108{minute:02d}00"
    so2 = (
        Pollutant("a21026", rtd=Decimal("21.5"), zs_rtd=Decimal("25.3"), flag=so2_flag)
        if cn == "2011"
        else Pollutant("a21026", avg=Decimal("20.0"), zs_avg=Decimal("24.0"), flag="N")
    )
    o2 = (
        Pollutant("a19001", rtd=Decimal("7.10"), flag="N")
        if cn == "2011"
        else Pollutant("a19001", avg=Decimal("7.00"), flag="N")
    )
    return encode(
        Packet(
            st="31",
            cn=cn,
            mn=MN,
            pw="123456",
            qn=f"{data_time}000",
            flag=flag,
            data_time=data_time,
            pollutants=(so2, o2),
        )
    )


def utc_ms(minute: int) -> int:
    return to_ms(datetime(2026, 1, 1, 0, minute, tzinfo=UTC))


async def test_logger_packets_are_published_as_series_with_their_flags(
    mqtt_addr: tuple[str, int], park_id: str, tmp_path: Path
) -> None:
    host, port = mqtt_addr
    cfg = agent_config(host, port, tmp_path, park_id)
    with Recorder(
        host, port, f"sp/v1/{park_id}/+/+/telemetry", persistent=False
    ) as rec:
        async with EdgeAgent(cfg) as agent:
            hj_port = agent.hj212_port
            assert hj_port is not None
            reader, writer = await asyncio.open_connection("127.0.0.1", hj_port)
            stream = (
                packet(0)
                + packet(1, so2_flag="C")  # calibrating
                + b"##0010garbage\r\n"  # rejected, the rest still delivered
                + packet(2, so2_flag="D")  # analyser fault
                + packet(0, cn="2061")  # the hourly average: a series of its own
            )
            # split across writes at an awkward place
            writer.write(stream[:37])
            await writer.drain()
            await asyncio.sleep(0.05)
            writer.write(stream[37:] + packet(3, flag=5))
            await writer.drain()
            reply = decode(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
            writer.close()
            await until(lambda: agent.stats().outbox.rows == 0, 10, "published")
            stats = agent.stats()
            url = f"http://127.0.0.1:{agent.status_port}/metrics"
            metrics = await asyncio.to_thread(scrape, url)
        await until(
            lambda: sum(len(b.readings) for b in rec.batches()) >= 15, 5, "15 readings"
        )
        await asyncio.sleep(0.2)
        batches = rec.batches()

    assert (reply.packet.cn, reply.packet.qn) == ("9014", "20260101080300000")
    got = sorted(
        (b.device, r.seq, r.metric, r.value, r.ts_ms, r.quality)
        for b in batches
        for r in b.readings
    )
    expected = []
    for seq, (minute, flag) in enumerate([(0, "N"), (1, "C"), (2, "D"), (3, "N")], 1):
        ts = utc_ms(minute)
        expected += [
            ("stack-1", seq, "so2", 21.5, ts, flag),
            ("stack-1", seq, "so2_corrected", 25.3, ts, flag),
            ("stack-1", seq, "o2", 7.1, ts, "N"),
        ]
    expected += [
        ("stack-1.hour", 1, "so2", 20.0, utc_ms(0), "N"),
        ("stack-1.hour", 1, "so2_corrected", 24.0, utc_ms(0), "N"),
        ("stack-1.hour", 1, "o2", 7.0, utc_ms(0), "N"),
    ]
    assert got == sorted(expected)
    hj = stats.hj212
    assert hj is not None
    assert (hj.frames_ok, hj.replies_sent, hj.samples) == (5, 1, 15)
    # the garbage: a frame cut short at its declared length, then skipped bytes
    assert hj.frames_rejected == {"trailer": 1, "stream": 1}
    assert (
        stats.devices["stack-1"].last_seq,
        stats.devices["stack-1.hour"].polls_ok,
    ) == (
        4,
        1,
    )
    assert stats.devices["stack-1"].last_reading_ms == utc_ms(3)
    # the same numbers on the agent's Prometheus endpoint
    assert metrics[("smartpark_edge_hj212_frames_ok_total", ())] == 5
    assert (
        metrics[("smartpark_edge_device_readings_total", (("device", "stack-1.hour"),))]
        == 3
    )
    assert metrics[("smartpark_edge_broker_connected", ())] == 1


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a real GET, parsed by the official Prometheus parser, by name and
    labels (without the ``agent`` label, which is checked to be the same on all)."""
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    assert len({s.labels["agent"] for s in samples}) == 1
    return {
        (s.name, tuple(sorted((k, v) for k, v in s.labels.items() if k != "agent"))): (
            s.value
        )
        for s in samples
    }


@pytest.mark.slow
async def test_a_packet_the_outbox_refuses_is_counted_and_not_answered(
    private_broker: TestBroker, tmp_path: Path
) -> None:
    # The broker is down and the outbox holds 3 rows at most (refuse_new): the first
    # packet (3 readings) fits, the second is refused and must not be acknowledged
    # to the logger, so a logger that asked for a reply sends it again later.
    cfg = agent_config(
        "127.0.0.1",
        private_broker.port,
        tmp_path,
        "refuse",
        max_rows=3,
        overflow="refuse_new",
    )
    private_broker.stop()
    async with EdgeAgent(cfg, flush_timeout_s=0.5) as agent:
        assert agent.hj212_port is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", agent.hj212_port)
        writer.write(packet(0, flag=5))
        await writer.drain()
        first = decode(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
        writer.write(packet(1, flag=5))
        await writer.drain()

        def rejected() -> int:
            hj = agent.stats().hj212
            assert hj is not None
            return sum(hj.frames_rejected.values())

        await until(lambda: rejected() == 1, 5, "refusal")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readuntil(b"\r\n"), 0.5)
        writer.close()
        stats = agent.stats()
    assert first.packet.cn == "9014"
    assert stats.hj212 is not None
    assert stats.hj212.frames_rejected == {"sink_error": 1}
    assert (stats.hj212.frames_ok, stats.hj212.replies_sent) == (1, 1)
    assert (stats.outbox.rows, stats.outbox.refused_polls) == (3, 1)
    # the refused packet consumed a seq, so the loss shows downstream as a gap
    assert stats.devices["stack-1"].last_seq == 2
    assert stats.devices["stack-1"].polls_ok == 1
