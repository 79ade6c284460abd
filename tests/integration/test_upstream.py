"""HJ 212 forwarding against a real local regulator server (tests/support/regulator).

Telemetry goes to the test's own Kafka topic as the bridge writes it; the upstream
service runs in this process on the real PostgreSQL and Kafka; the regulator is a
real TCP server that decodes every frame strictly (CRC included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import trustme
from aiokafka import AIOKafkaProducer

from edge_agent.hj212.model import Packet
from smartpark import wire
from smartpark.catalogue import metric as catalogue_metric
from smartpark.settings import Settings, UpstreamSettings
from storage import Storage, TelemetryRow
from storage.upstream import UpstreamStore
from stream.kafka import ensure_topics
from tests.support.procs import ServiceProcess
from tests.support.regulator import Regulator, wait_for
from tests.support.settings import settings_env
from upstream import cli as upstream_cli
from upstream.config import UpstreamFile, parse
from upstream.service import UpstreamService

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 3, 1, 0, 0, tzinfo=UTC)
T0_MS = int(T0.timestamp() * 1000)
PASSWORD = "s3cret-pw"
MN1, MN2 = "88888880000001", "88888880000002"


def local(ms: int) -> str:
    return (
        (T0 + timedelta(milliseconds=ms - T0_MS))
        .astimezone(SHANGHAI)
        .strftime("%Y%m%d%H%M%S")
    )


@pytest.fixture
def settings(platform: Settings, park_id: str) -> Settings:
    cfg = UpstreamSettings(
        group_id=f"upstream-{park_id}", poll_ms=100, backoff_s=[0.2, 0.4],
        lock_retry_s=0.2, connect_timeout_s=2.0, batch_max_wait_ms=100,
    )  # fmt: skip
    return platform.model_copy(update={"upstream": cfg})


@pytest.fixture
async def storage(settings: Settings) -> AsyncIterator[Storage]:
    async with Storage(settings.database) as s:
        await s.migrate()
        yield s


def upstream_file(
    park: str, port: int, *, overtime_s: float = 2.0, recount: int = 3
) -> UpstreamFile:
    def outlet(n: int, mn: str) -> dict[str, Any]:
        return {
            "outlet": f"stack-{n}", "park": park, "enterprise": "e1",
            "devices": [f"cems-{n}"], "mn": mn, "password_env": "UPSTREAM_TEST_PW",
            "st": "31", "series": ["realtime", "minute", "hour"],
            "pollutants": {
                "a21026": {"metric": "so2", "corrected": "so2_corrected"},
                "a21002": {"metric": "nox"},
            },
        }  # fmt: skip

    return parse({
        "upstreams": [{
            "name": "province", "host": "127.0.0.1", "port": port,
            "overtime_s": overtime_s, "recount": recount,
            "outlets": [outlet(1, MN1), outlet(2, MN2)],
        }]
    })  # fmt: skip


def realtime(park: str, device: str, seq: int, ts_ms: int, **values: float) -> bytes:
    readings = tuple(
        wire.Reading(seq, metric, v, catalogue_metric(metric).unit, ts_ms, "N")
        for metric, v in values.items()
    )
    return wire.encode_batch(wire.TelemetryBatch(park, "e1", device, readings))


async def produce(settings: Settings, values: Sequence[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka.bootstrap)
    await producer.start()
    try:
        for v in values:  # keyed by enterprise, as the bridge does
            await producer.send_and_wait(settings.kafka.telemetry_topic, v, key=b"e1")
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running(
    settings: Settings, cfg: UpstreamFile
) -> AsyncIterator[UpstreamService]:
    async with UpstreamService(settings, cfg) as service:
        task = asyncio.create_task(service.run())
        try:
            yield service
        finally:
            service.stop()
            await asyncio.wait_for(task, 30)


async def pending(store: UpstreamStore) -> int:
    return sum(b.pending for b in await store.backlog(["province"]))


async def test_outage_then_backlog_arrives_once_and_in_order(
    settings: Settings, storage: Storage, park_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("UPSTREAM_TEST_PW", PASSWORD)
    await ensure_topics(settings.kafka)
    regulator = Regulator()
    await regulator.start()
    port = regulator.port
    await regulator.stop()  # the platform is down from the start
    cfg = upstream_file(park_id, port)
    store = UpstreamStore(storage)
    first = []
    for i in range(20):
        ts = T0_MS + i * 30_000
        first.append(realtime(park_id, "cems-1", i + 1, ts, so2=20.5 + i, nox=40.0))
        first.append(realtime(park_id, "cems-2", i + 1, ts, so2=10.0 + i))
    # One DataTime split across two records: SO2 and its corrected value apart.
    split_ms = T0_MS + 20 * 30_000
    first.append(realtime(park_id, "cems-1", 21, split_ms, so2=33.25))
    # A record read twice (a bridge retry) in one batch: its values are sent once.
    first.append(first[0])
    # Readings of devices outside the file and an unmapped metric: not sent.
    first.append(realtime(park_id, "boiler-9", 1, T0_MS, so2=1.0))
    first.append(realtime(park_id, "cems-2", 99, T0_MS + 5, o2=6.0))
    # A record that is not telemetry: counted, never blocking the partition.
    first.append(b"not json")
    # In later batches: the split's other half joins its unsent packet, and a
    # repeated record finds its values already queued.
    late = [
        realtime(park_id, "cems-1", 21, split_ms, so2_corrected=35.5),
        first[2],
    ]

    async with running(settings, cfg) as service:
        feed = service.stats.feed
        await produce(settings, first)
        await wait_for(lambda: feed.records == len(first), what="feed")
        await produce(settings, late)
        await wait_for(lambda: feed.records == len(first) + 2, what="feed")
        await wait_for(
            lambda: service.links["province"].stats.connect_failures >= 2,
            what="connection attempts while the platform is down",
        )
        assert await pending(store) == 41  # 20 + 20 + the split DataTime
        assert feed.rows_merged == 1
        assert feed.duplicates == 4  # so2 and nox of first[0] and of first[2]
        assert feed.skipped == 1  # o2 of cems-2 is not mapped
        assert feed.bad_records == 1
    # A restart while the platform is still down: nothing lost, nothing twice.
    second = [
        realtime(park_id, "cems-1", 30 + i, T0_MS + (30 + i) * 30_000, so2=50.0 + i)
        for i in range(5)
    ]
    # A logger's minute data (CN 2051): the stored stats become -Avg/-Min/-Max/-Cou.
    minute_ms = T0_MS + 40 * 30_000
    second.append(
        wire.encode_batch(
            wire.TelemetryBatch(park_id, "e1", "cems-1", tuple(
                wire.Reading(40, metric, v, unit, minute_ms, "N", None, "minute", stat)
                for metric, v, unit, stat in (
                    ("so2", 31.5, "mg/m3", "value"), ("so2", 30.0, "mg/m3", "min"),
                    ("so2", 33.0, "mg/m3", "max"), ("so2", 0.02, "kg", "cou"),
                    ("so2_corrected", 35.25, "mg/m3", "value"),
                )
            ))
        )
    )  # fmt: skip
    await produce(settings, second)
    async with running(settings, cfg) as service:
        feed = service.stats.feed
        await wait_for(lambda: feed.records == len(second), what="feed")
        await regulator.start()  # the platform is back
        await wait_for(
            lambda: len(regulator.data()) >= 47, what="the backlog at the platform"
        )
        # After sending: a repeated record is not sent again; a new value of a
        # sent DataTime goes in a packet of its own.
        await produce(
            settings,
            [first[0], realtime(park_id, "cems-2", 1, T0_MS, nox=12.0)],
        )
        await wait_for(lambda: len(regulator.data()) >= 48, what="the supplement")
        await asyncio.sleep(0.5)  # anything more would be a duplicate
        stats = service.links["province"].stats
        assert stats.acked == 48
        assert stats.reconnects == 0
    await regulator.stop()

    assert regulator.bad == []  # every frame decoded strictly: CRC and length right
    got = regulator.data()
    assert len(got) == 48
    assert len({p.qn for p in got}) == 48
    assert all(p.pw == PASSWORD and p.st == "31" and p.flag == 5 for p in got)
    values = Counter(
        (p.mn, p.cn, p.data_time, x.code, name)
        for p in got
        for x in p.pollutants
        for name in ("rtd", "zs_rtd")
        if getattr(x, name) is not None
    )
    assert max(values.values()) == 1, "a value arrived twice"
    assert len(values) == 20 * 2 + 20 + 2 + 5 + 1
    for mn in (MN1, MN2):  # the backlog, in DataTime order per outlet
        times = [p.data_time or "" for p in got[:47] if p.mn == mn]
        assert times == sorted(times), f"{mn} out of order"
    by_key: dict[tuple[str, str], list[Packet]] = {}
    for p in got:
        by_key.setdefault((p.mn, p.data_time or ""), []).append(p)
    (p0,) = by_key[(MN1, local(T0_MS))]
    assert p0.cn == "2011"
    assert [(x.code, x.rtd, x.flag) for x in p0.pollutants] == [
        ("a21026", Decimal("20.5"), "N"), ("a21002", Decimal("40"), "N")
    ]  # fmt: skip
    (split,) = by_key[(MN1, local(split_ms))]
    assert [(x.code, x.rtd, x.zs_rtd) for x in split.pollutants] == [
        ("a21026", Decimal("33.25"), Decimal("35.5"))
    ]
    (last,) = by_key[(MN1, local(T0_MS + 34 * 30_000))]
    assert last.pollutants[0].rtd == Decimal(54)
    (minute,) = by_key[(MN1, local(minute_ms))]
    assert minute.cn == "2051"
    (so2,) = minute.pollutants
    assert (so2.avg, so2.min, so2.max, so2.cou, so2.zs_avg, so2.rtd) == (
        Decimal("31.5"), Decimal(30), Decimal(33), Decimal("0.02"), Decimal("35.25"),
        None,
    )  # fmt: skip
    sent, supplement = by_key[(MN2, local(T0_MS))]
    assert [(x.code, x.rtd) for x in sent.pollutants] == [("a21026", Decimal(10))]
    assert [(x.code, x.rtd) for x in supplement.pollutants] == [("a21002", Decimal(12))]
    assert await pending(store) == 0


async def test_a_gateway_record_forwards_every_device_in_it(
    settings: Settings, storage: Storage, park_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    """A gateway's record (wire version 2) carries both stacks' readings: each
    goes to its own outlet (MN), as two device records would."""
    monkeypatch.setenv("UPSTREAM_TEST_PW", PASSWORD)
    await ensure_topics(settings.kafka)
    regulator = Regulator()
    await regulator.start()
    cfg = upstream_file(park_id, regulator.port)
    batches = tuple(
        wire.decode_batch(realtime(park_id, device, 1, T0_MS, so2=so2), now_ms=2**62)
        for device, so2 in (("cems-1", 21.5), ("cems-2", 11.5))
    )
    record = wire.encode_gateway(wire.GatewayBatch(park_id, "e1", "agent.e1", batches))
    try:
        async with running(settings, cfg) as service:
            await produce(settings, [record])
            await wait_for(lambda: len(regulator.data()) >= 2, what="both packets")
            assert service.stats.feed.bad_records == 0
    finally:
        await regulator.stop()
    got = {(p.mn, p.pollutants[0].rtd) for p in regulator.data()}
    assert got == {(MN1, Decimal("21.5")), (MN2, Decimal("11.5"))}


async def test_a_platform_that_does_not_reply_gets_the_packet_again(
    settings: Settings, storage: Storage, park_id: str, pg_dsn: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.setenv("UPSTREAM_TEST_PW", PASSWORD)
    await ensure_topics(settings.kafka)
    regulator = Regulator(replying=False)
    await regulator.start()
    cfg = upstream_file(park_id, regulator.port, overtime_s=0.3, recount=2)
    store = UpstreamStore(storage)
    try:
        async with running(settings, cfg) as service:
            await produce(settings, [realtime(park_id, "cems-1", 1, T0_MS, so2=7.5)])
            link = service.links["province"]
            # 1 + ReCount frames with one QN, then a new connection and a new QN.
            await wait_for(lambda: len(regulator.data()) >= 4, what="resends")
            regulator.replying = True
            await wait_for(lambda: link.stats.acked == 1, what="the reply")
            qns = [p.qn for p in regulator.data()]
            assert qns[0] == qns[1] == qns[2] != qns[3]
            assert link.stats.retried >= 2
            assert link.stats.timeouts >= 3
            assert link.stats.reconnects >= 1
        (row,) = await store.rows("province")
        assert row.status == "acked"
        assert row.attempts == len(regulator.data())
        assert row.qn == regulator.data()[-1].qn
        monkeypatch.setenv("SMARTPARK_DATABASE__DSN", pg_dsn)
        monkeypatch.setenv("SMARTPARK_DATABASE__SCHEMA", settings.database.schema_)
        assert await asyncio.to_thread(upstream_cli.main, ["status"]) == 0
        status = json.loads(capsys.readouterr().out)
        assert status == {
            "upstream": "province", "pending": 0, "oldest_pending_age_s": None,
            "acked": 1, "frames_sent": row.attempts, "resent": row.attempts - 1,
        }  # fmt: skip
    finally:
        await regulator.stop()
    assert regulator.bad == []


async def test_history_requests_are_answered_from_storage(
    settings: Settings, storage: Storage, park_id: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("UPSTREAM_TEST_PW", PASSWORD)
    await ensure_topics(settings.kafka)
    rows = []
    for h in range(3):
        t = T0 + timedelta(hours=h)
        for stat, value in (("value", 30.0 + h), ("min", 20.0), ("max", 41.5),
                            ("cou", 1.25)):  # fmt: skip
            rows.append(TelemetryRow(t, park_id, "e1", "cems-1", "so2", value, "N",
                                     h, None, "hour", stat))  # fmt: skip
        rows.append(TelemetryRow(t, park_id, "e1", "cems-1", "so2_corrected",
                                 33.0 + h, "N", h, None, "hour", "value"))  # fmt: skip
        # Another tenant's device and a real-time reading: never in the answer.
        rows.append(TelemetryRow(t, park_id, "e1", "cems-1", "so2", 99.0, "N", h))
        rows.append(TelemetryRow(t, park_id, "e2", "other", "so2", 99.0, "N", h,
                                 None, "hour", "value"))  # fmt: skip
    await storage.telemetry.write(rows)
    regulator = Regulator()
    await regulator.start()
    cfg = upstream_file(park_id, regulator.port)

    def ask(qn: str, cn: str, begin: datetime, end: datetime, pw: str = PASSWORD,
            mn: str = MN1) -> Packet:  # fmt: skip
        fmt = "%Y%m%d%H%M%S"
        return Packet(
            st="31", cn=cn, mn=mn, pw=pw, qn=qn, flag=5, params=(
                ("BeginTime", begin.astimezone(SHANGHAI).strftime(fmt)),
                ("EndTime", end.astimezone(SHANGHAI).strftime(fmt)),
            ),
        )  # fmt: skip

    def done(qn: str) -> bool:
        """The request's answer is complete: a 9012, or a 9011 refusing it."""
        return any(
            p.cn == "9012" or (p.cn == "9011" and dict(p.params)["QnRtn"] != "1")
            for p in regulator.answers(qn)
        )

    async def answered(qn: str) -> list[Packet]:
        await wait_for(lambda: done(qn), what=f"the answer to QN={qn}")
        return regulator.answers(qn)

    try:
        async with running(settings, cfg) as service:
            await wait_for(lambda: regulator.connected, what="the connection")
            qn = "20260301120000001"
            await regulator.request(ask(qn, "2061", T0, T0 + timedelta(hours=1)))
            answer = await answered(qn)
            assert [p.cn for p in answer] == ["9011", "2061", "2061", "9012"]
            assert dict(answer[0].params) == {"QnRtn": "1"}
            assert dict(answer[-1].params) == {"ExeRtn": "1"}
            first = answer[1]
            assert first.data_time == local(T0_MS)
            assert first.mn == MN1
            (so2,) = first.pollutants
            assert (so2.avg, so2.min, so2.max, so2.cou, so2.zs_avg, so2.flag) == (
                Decimal(30), Decimal(20), Decimal("41.5"), Decimal("1.25"),
                Decimal(33), "N",
            )  # fmt: skip
            assert answer[2].data_time == local(T0_MS + 3_600_000)

            refusals = {
                "20260301120000002": (ask("20260301120000002", "2061", T0, T0,
                                          pw="wrong"), "3"),
                "20260301120000003": (ask("20260301120000003", "2061", T0, T0,
                                          mn="nobody"), "4"),
                "20260301120000004": (ask("20260301120000004", "1011", T0, T0), "2"),
            }  # fmt: skip
            for request, _ in refusals.values():
                await regulator.request(request)
            for qn_, (_, code) in refusals.items():
                (reply,) = await answered(qn_)
                assert (reply.cn, dict(reply.params)) == ("9011", {"QnRtn": code})
            empty = "20260301120000005"
            later = T0 + timedelta(days=3)
            await regulator.request(ask(empty, "2051", later, later))
            assert [(p.cn, dict(p.params)) for p in await answered(empty)] == [
                ("9011", {"QnRtn": "1"}), ("9012", {"ExeRtn": "100"})
            ]  # fmt: skip
            link = service.links["province"].stats
            assert link.requests == {"2061": 3, "1011": 1, "2051": 1}
            assert link.refused == {"wrong PW": 1, "unknown MN": 1, "unsupported CN": 1}
            assert link.history_packets == 2
    finally:
        await regulator.stop()
    assert regulator.bad == []


async def test_a_killed_service_loses_nothing_and_repeats_at_most_the_packet_in_flight(
    settings: Settings, storage: Storage, park_id: str, tmp_path: Path,
) -> None:  # fmt: skip
    await ensure_topics(settings.kafka)
    regulator = Regulator(reply_delay_s=0.05)
    await regulator.start()
    (tmp_path / "pw.txt").write_text(PASSWORD)
    cfg_text = f"""\
upstreams:
  - name: province
    host: 127.0.0.1
    port: {regulator.port}
    overtime_s: 2
    outlets:
      - outlet: stack-1
        park: {park_id}
        enterprise: e1
        devices: [cems-1]
        mn: "{MN1}"
        password_file: pw.txt
        series: [realtime]
        pollutants:
          a21026: {{metric: so2}}
"""
    (tmp_path / "upstream.yaml").write_text(cfg_text)
    env = settings_env(settings) | {
        "SMARTPARK_UPSTREAM__GROUP_ID": settings.upstream.group_id,
        "SMARTPARK_UPSTREAM__POLL_MS": "100",
        "SMARTPARK_UPSTREAM__BACKOFF_S": "[0.2]",
        "SMARTPARK_UPSTREAM__LOCK_RETRY_S": "0.2",
    }
    command = ["upstream", "run", "--config", str(tmp_path / "upstream.yaml")]
    times = [T0_MS + i * 30_000 for i in range(80)]
    await produce(
        settings, [realtime(park_id, "cems-1", i, t, so2=float(i)) for i, t in
                   enumerate(times[:60])]
    )  # fmt: skip
    proc = ServiceProcess(command, env, tmp_path / "upstream.log")
    proc.start()
    try:
        await wait_for(lambda: len(regulator.data()) >= 15, 60, "sending")
        proc.kill()  # SIGKILL while packets are in flight
        await produce(
            settings, [realtime(park_id, "cems-1", i, t, so2=float(i)) for i, t in
                       enumerate(times[60:], start=60)]
        )  # fmt: skip
        proc.start()
        expected = [local(t) for t in times]
        await wait_for(
            lambda: {p.data_time for p in regulator.data()} >= set(expected),
            60, "every packet after the restart",
        )  # fmt: skip
        await asyncio.sleep(0.5)
    finally:
        assert proc.stop() == 0
        await regulator.stop()
    assert regulator.bad == []
    got = [p.data_time for p in regulator.data()]
    repeated = [t for t, n in Counter(got).items() if n > 1]
    assert len(repeated) <= 1, f"more than the packet in flight repeated: {repeated}"
    assert list(dict.fromkeys(got)) == expected  # in order, nothing lost
    rows = await UpstreamStore(storage).rows("province")
    assert [r.data_time for r in rows] == expected  # queued exactly once
    assert {r.status for r in rows} == {"acked"}


async def test_a_tls_link_verifies_the_platform_and_sends(
    settings: Settings, storage: Storage, park_id: str, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    monkeypatch.setenv("UPSTREAM_TEST_PW", PASSWORD)
    await ensure_topics(settings.kafka)
    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_ctx)
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    regulator = Regulator(ssl=server_ctx)
    await regulator.start()
    data = upstream_file(park_id, regulator.port).model_dump(mode="json")
    good = {**data["upstreams"][0], "tls": True, "ca_file": str(tmp_path / "ca.pem")}
    for outlet in good["outlets"]:
        del outlet["password_file"]
    untrusted = trustme.CA()
    untrusted.cert_pem.write_to_path(str(tmp_path / "other.pem"))
    try:
        bad = parse({"upstreams": [{**good, "ca_file": str(tmp_path / "other.pem")}]})
        async with running(settings, bad) as service:
            link = service.links["province"].stats
            await wait_for(lambda: link.connect_failures >= 2, what="refused TLS")
            assert regulator.received == []
        async with running(settings, parse({"upstreams": [good]})) as service:
            await produce(settings, [realtime(park_id, "cems-1", 1, T0_MS, so2=7.5)])
            await wait_for(lambda: service.links["province"].stats.acked == 1)
    finally:
        await regulator.stop()
    (packet,) = regulator.data()
    assert packet.pollutants[0].rtd == Decimal("7.5")
