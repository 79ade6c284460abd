"""Hj212Listener over real TCP sockets on 127.0.0.1 (the test plays the logger)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from edge_agent.hj212 import Packet, Pollutant, decode, encode
from edge_agent.hj212.listener import Hj212Listener, LoggerMapping, packet_samples
from edge_agent.sample import Sample, to_ms
from smartpark.errors import StorageError

MN = "LOGGER0001"
MAPPING = {
    MN: LoggerMapping(
        device_id="cems-1",
        metrics={"a21026": "so2", "a19001": "o2"},
        corrected={"a21026": "so2_corrected"},
    )
}
# 08:00 in Asia/Shanghai is 00:00 UTC
TS_MS = to_ms(datetime(2024, 1, 1, tzinfo=UTC))

Got = list[tuple[str, list[Sample]]]


def frame(
    *,
    mn: str = MN,
    cn: str = "2011",
    flag: int | None = 4,
    qn: str = "20240101080000123",
    so2: str = "12.5",
    quality: str = "N",
) -> bytes:
    return encode(
        Packet(
            st="31",
            cn=cn,
            mn=mn,
            pw="123456",
            qn=qn,
            flag=flag,
            data_time="20240101080000",
            pollutants=(
                Pollutant("a21026", rtd=Decimal(so2), zs_rtd=Decimal("15.1"), flag="N")
                if cn == "2011"
                else Pollutant("a21026", avg=Decimal(so2), min=Decimal(1), flag="N"),
                Pollutant("a19001", rtd=Decimal("7.2"), flag=quality),
                Pollutant("a99999", rtd=Decimal(1), flag="N"),
            ),
        )
    )


async def until(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        if cond():
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def send(port: int, *chunks: bytes) -> None:
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    for chunk in chunks:
        writer.write(chunk)
        await writer.drain()
    writer.close()
    await writer.wait_closed()


def listener(got: Got, **kw: object) -> Hj212Listener:
    return Hj212Listener(
        MAPPING,
        lambda dev, samples: got.append((dev, samples)),
        **kw,  # type: ignore[arg-type]
    )


async def test_valid_frame_raw_and_corrected_to_separate_metrics() -> None:
    got: Got = []
    async with listener(got) as lst:
        await send(lst.port, frame(quality="M"))
        await until(lambda: len(got) == 1)
        assert got == [
            (
                "cems-1",
                [
                    Sample("so2", 12.5, "mg/m3", TS_MS, "N"),
                    Sample("so2_corrected", 15.1, "mg/m3", TS_MS, "N"),
                    Sample("o2", 7.2, "%", TS_MS, "M"),
                ],
            )
        ]
        assert lst.stats.frames_ok == 1
        assert lst.stats.unmapped_codes == 1  # a99999
        assert lst.stats.replies_sent == 0


async def test_two_frames_in_one_write_and_one_split_byte_by_byte() -> None:
    got: Got = []
    async with listener(got) as lst:
        await send(lst.port, frame(so2="1") + frame(so2="2"))
        one = frame(so2="3")
        await send(lst.port, *(one[i : i + 1] for i in range(len(one))))
        await until(lambda: len(got) == 3)
        assert [s[0].value for _, s in got] == [1.0, 2.0, 3.0]
        assert not lst.stats.frames_rejected


async def test_garbage_then_valid_frame() -> None:
    got: Got = []
    async with listener(got) as lst:
        await send(lst.port, b"\x00\xffnoise##xx" + frame())
        await until(lambda: len(got) == 1)
        assert lst.stats.frames_ok == 1
        assert sum(lst.stats.frames_rejected.values()) >= 1


async def test_bad_crc_between_valid_frames_is_counted_and_kept() -> None:
    got: Got = []
    good = frame(so2="2")
    bad = good[:-6] + (b"0000" if good[-6:-2] != b"0000" else b"1111") + b"\r\n"
    async with listener(got) as lst:
        await send(lst.port, frame(so2="1") + bad + frame(so2="3"))
        await until(lambda: len(got) == 2)
        await until(lambda: lst.stats.connections_open == 0)
        assert [s[0].value for _, s in got] == [1.0, 3.0]
        assert lst.stats.frames_rejected == {"crc": 1}
        (rejected,) = lst.rejected
        assert rejected.kind == "crc"
        assert bad in rejected.raw
        assert rejected.peer.startswith("127.0.0.1:")


async def test_unknown_mn_and_disabled_cn_are_counted() -> None:
    got: Got = []
    async with listener(got) as lst:
        await send(lst.port, frame(mn="OTHER"), frame(cn="2061"), frame())
        await until(lambda: len(got) == 1)
        assert lst.stats.unknown_mn == 1
        assert lst.stats.frames_rejected == {"unknown_mn": 1, "cn": 1}


async def test_interval_cn_is_its_own_series_when_enabled() -> None:
    got: Got = []
    mapping = {
        MN: LoggerMapping(
            device_id="cems-1",
            metrics={"a21026": "so2"},
            intervals={"2061": "cems-1.hour"},
        )
    }
    async with Hj212Listener(mapping, lambda d, s: got.append((d, s))) as lst:
        # 2051 is not enabled for this logger: rejected, the others delivered
        await send(
            lst.port, frame(cn="2061", so2="9.5"), frame(cn="2051"), frame(so2="3.5")
        )
        await until(
            lambda: lst.stats.frames_ok + lst.stats.frames_rejected.total() == 3
        )
    hour = {"data_type": "hour"}
    assert got == [
        (
            "cems-1.hour",
            [
                Sample("so2", 9.5, "mg/m3", TS_MS, "N", **hour),
                Sample("so2", 1.0, "mg/m3", TS_MS, "N", stat="min", **hour),
            ],
        ),
        ("cems-1", [Sample("so2", 3.5, "mg/m3", TS_MS, "N")]),
    ]
    assert lst.stats.frames_rejected == {"cn": 1}


def test_interval_values_keep_min_max_and_total_on_the_loggers_device() -> None:
    """Avg, Min, Max, Cou (and the corrected Zs values) each become a reading of
    their own series, tagged with the data type; nothing of the packet is dropped,
    and the interval may go to the logger's own device."""
    from edge_agent.hj212.listener import packet_samples

    mapping = LoggerMapping(
        device_id="cems-1",
        metrics={"a21026": "so2"},
        corrected={"a21026": "so2_corrected"},
        intervals={"2031": "cems-1"},
    )
    d = Decimal
    packet = Packet(
        st="31", cn="2031", mn=MN, data_time="20240101000000",
        pollutants=(Pollutant("a21026", min=d(2), avg=d("10.5"), max=d(20),
                              cou=d("3.25"), zs_avg=d(12), zs_min=d(3),
                              zs_max=d(24), flag="N"),),
    )  # fmt: skip
    got = [
        (s.metric, s.stat, s.value, s.unit, s.data_type)
        for s in packet_samples(packet, mapping, strict=True)
    ]
    assert got == [
        ("so2", "value", 10.5, "mg/m3", "day"),
        ("so2_corrected", "value", 12.0, "mg/m3", "day"),
        ("so2", "min", 2.0, "mg/m3", "day"),
        ("so2_corrected", "min", 3.0, "mg/m3", "day"),
        ("so2", "max", 20.0, "mg/m3", "day"),
        ("so2_corrected", "max", 24.0, "mg/m3", "day"),
        ("so2", "cou", 3.25, "kg", "day"),
    ]
    assert mapping.series_device("2031") == "cems-1"


async def test_wrong_password_is_rejected() -> None:
    got: Got = []
    base = MAPPING[MN]
    mapping = {
        MN: LoggerMapping(device_id="cems-1", metrics=base.metrics, password="654321")
    }
    async with Hj212Listener(mapping, lambda d, s: got.append((d, s))) as lst:
        await send(lst.port, frame())  # frame() carries PW=123456
        await until(lambda: lst.stats.frames_rejected.total() == 1)
    assert got == []
    assert lst.stats.frames_rejected == {"password": 1}
    assert "654321" not in repr(mapping[MN])
    assert "654321" not in lst.rejected[0].reason


async def test_reply_sent_when_flag_bit_a_set() -> None:
    got: Got = []
    async with listener(got) as lst:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        writer.write(frame(flag=5, qn="20240101080000999"))
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        writer.close()
        await writer.wait_closed()
        packet = decode(reply).packet
        assert packet == Packet(
            st="91", cn="9014", mn=MN, pw="123456", qn="20240101080000999", flag=4
        )
        assert b"CP=&&&&" in reply
        assert lst.stats.replies_sent == 1


async def test_idle_connection_closed() -> None:
    got: Got = []
    async with listener(got, idle_timeout_s=0.2) as lst:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        writer.close()
        await writer.wait_closed()
        assert lst.stats.idle_closed == 1
        assert lst.stats.connections_open == 0


async def test_connections_beyond_max_are_refused() -> None:
    got: Got = []
    async with listener(got, max_connections=1) as lst:
        _, first = await asyncio.open_connection("127.0.0.1", lst.port)
        await until(lambda: lst.stats.connections_open == 1)
        reader, second = await asyncio.open_connection("127.0.0.1", lst.port)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert lst.stats.connections_refused == 1
        for w in (first, second):
            w.close()
            await w.wait_closed()


async def test_sink_error_counts_packet_rejected_and_keeps_serving() -> None:
    calls: list[str] = []

    def sink(device: str, samples: list[Sample]) -> None:
        calls.append(device)
        if len(calls) == 1:
            raise StorageError("outbox full")

    async with Hj212Listener(MAPPING, sink) as lst:
        await send(lst.port, frame(flag=5) + frame())
        await until(lambda: len(calls) == 2)
        assert lst.stats.frames_rejected == {"sink_error": 1}
        assert lst.stats.frames_ok == 1
        assert lst.stats.replies_sent == 0


async def test_fifty_concurrent_connections_all_delivered() -> None:
    got: Got = []
    async with listener(got) as lst:
        await asyncio.gather(
            *(send(lst.port, frame(so2=str(i)), frame(so2=str(i))) for i in range(50))
        )
        await until(lambda: len(got) == 100)
        values = sorted(s[0].value for _, s in got)
        assert values == sorted(float(i) for i in range(50) for _ in range(2))
        assert lst.stats.connections_total == 50


def test_unknown_flag_rejects_in_strict_and_drops_code_when_lenient() -> None:
    packet = decode(frame(quality="X"), strict=False).packet
    with pytest.raises(Exception, match="not a data flag"):
        packet_samples(packet, MAPPING[MN], strict=True)
    metrics = [s.metric for s in packet_samples(packet, MAPPING[MN], strict=False)]
    assert metrics == ["so2", "so2_corrected"]


def test_mapping_refuses_unknown_metric_and_cn() -> None:
    with pytest.raises(Exception, match="unknown metric"):
        LoggerMapping(device_id="d", metrics={"a21026": "nope"})
    with pytest.raises(ValueError, match="intervals"):
        LoggerMapping(device_id="d", metrics={}, intervals={"2021": "d.status"})
    with pytest.raises(ValueError, match="without a device id"):
        LoggerMapping(device_id="d", metrics={}, intervals={"2061": ""})


async def test_thousands_of_silent_connections_do_not_block_a_logger() -> None:
    # Loggers that connect and never send hold a connection each; a real logger
    # beside 3000 of them is still served at once, and beyond max_connections new
    # connections are refused and counted, never queued.
    got: Got = []
    silent = 3000
    async with listener(got, max_connections=silent + 1) as lst:
        writers = []
        for _ in range(silent):
            _, w = await asyncio.open_connection("127.0.0.1", lst.port)
            writers.append(w)
        await until(lambda: lst.stats.connections_open == silent, 30)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await send(lst.port, frame())
        await until(lambda: len(got) == 1)
        assert loop.time() - started < 2.0
        _, extra = await asyncio.open_connection("127.0.0.1", lst.port)
        _, extra2 = await asyncio.open_connection("127.0.0.1", lst.port)
        await until(lambda: lst.stats.connections_refused >= 1, 10)
        for w in [*writers, extra, extra2]:
            w.close()
        await until(lambda: lst.stats.connections_open == 0, 30)
    assert lst.stats.connections_total == silent + 2
    assert lst.stats.connections_refused == 1


async def test_closing_with_open_connections_logs_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    got: Got = []
    async with listener(got) as lst:
        _, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        await until(lambda: lst.stats.connections_open == 1)
    await asyncio.sleep(0.05)  # asyncio reports a handler's end in a callback
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert lst.stats.connections_open == 0
    writer.close()


def test_a_2005_corrected_group_keeps_its_own_flag() -> None:
    """``01-Rtd=…,01-Flag=N;01-ZsRtd=…,01-Flag=D``: the measured value is normal,
    the corrected one faulty; each reading carries its own flag."""
    from edge_agent.hj212 import decode
    from edge_agent.hj212.codec import build_frame
    from edge_agent.hj212.listener import packet_samples

    mapping = LoggerMapping(
        device_id="stack-old", metrics={"02": "so2"}, corrected={"02": "so2_corrected"}
    )
    data = (
        "ST=32;CN=2011;PW=123456;MN=OLD0001;CP=&&DataTime=20240101080000;"
        "02-Rtd=12.5,02-Flag=N;02-ZsRtd=15.0,02-Flag=D&&"
    )
    packet = decode(build_frame(data)).packet
    got = [(s.metric, s.quality) for s in packet_samples(packet, mapping, strict=True)]
    assert got == [("so2", "N"), ("so2_corrected", "D")]
