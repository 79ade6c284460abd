"""Simulated HJ 212 data loggers: frames, ground truth, scenarios, TCP client, CLI.

Expected values are computed from the recorded ground truth (:class:`SentPacket`),
never typed in, except the hand-checked O2 corrections.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.hj212.codec import decode, parse_time
from edge_agent.hj212.listener import Hj212Listener, LoggerMapping
from edge_agent.hj212.model import SUFFIXES, Decoded, Hj212Error, Packet
from edge_agent.hj212.stream import FrameBuffer
from edge_agent.sample import Sample
from simulators.analysers import KINDS, O2, Station, o2_corrected
from simulators.hj212_faults import CORRUPTIONS, corrupt
from simulators.hj212_logger import Hj212Logger
from simulators.hj212_source import (
    HOUR,
    MINUTE,
    REAL_TIME,
    Expected,
    PacketSource,
    Phase,
    SentPacket,
    SimClock,
    Tick,
)
from smartpark.catalogue import metric, to_canonical

T0 = datetime(2024, 1, 1, tzinfo=UTC)
#: every scenario, composed over three hours of data time
SCHEDULE = (
    Phase("breach", 1200, 900),
    Phase("calibration", 2400, 600),
    Phase("fault", 3600, 600),
    Phase("dropout", 4800, 300, close=True),
    Phase("corrupt", 6000, 360),
    Phase("normal", 6100, 20),  # a later phase wins where they overlap
)
#: ultra-low emission limits, corrected, mg/m3 (domain.md section 2)
LIMITS = {"a21026": Decimal(35), "a21002": Decimal(50), "a34013": Decimal(10)}
#: what a strict stream decoder reports for each corruption (stream.py contract)
REJECTED_AS = {
    "crc": {"crc"},
    "length": {"trailer", "stream"},
    "truncated": {"trailer", "stream"},
    "garbage": {"stream"},
    "unknown_cp": {"field"},
    "oversize": {"trailer", "stream"},
}
_NUMERIC = [(s, a) for s, a in SUFFIXES if s not in {"Flag", "EFlag", "SampleTime"}]


def ticks(
    kind: str = "cems",
    *,
    n: int,
    step_s: int = 20,
    seed: int = 1,
    schedule: tuple[Phase, ...] = (),
    start: datetime = T0,
    mn: str | None = None,
    **station: object,
) -> list[Tick]:
    source = PacketSource(
        Station(kind, mn or f"MN-{kind}", **station),  # type: ignore[arg-type]
        seed=seed,
        schedule=schedule,
    )
    clock = SimClock(start, step_s)
    return [source.tick(clock()) for _ in range(n)]


def sent(ts: Iterable[Tick]) -> list[SentPacket]:
    return [p for t in ts for p in t.packets]


def readings(packet: Packet) -> tuple[Expected, ...]:
    """What a decoded packet carries, in the ground truth's form."""
    out = []
    for p in packet.pollutants:
        assert p.flag is not None
        values = {s: getattr(p, a) for s, a in _NUMERIC if getattr(p, a) is not None}
        out.append(Expected(p.code, values, p.flag))
    return tuple(out)


def stream_events(data: bytes, cuts: Iterable[int] = ()) -> list[Decoded | Hj212Error]:
    buf = FrameBuffer(strict=True)
    out: list[Decoded | Hj212Error] = []
    at = 0
    for cut in [*sorted(cuts), len(data)]:
        out += buf.feed(data[at:cut])
        at = cut
    assert buf.buffered == 0, "a corruption left the decoder waiting"
    return out + buf.flush()


def by_code(p: SentPacket) -> dict[str, Expected]:
    return {e.code: e for e in p.readings}


# --- frames and ground truth -----------------------------------------------------


@pytest.mark.parametrize(("kind", "flag"), [("cems", 5), ("wastewater", 4)])
def test_every_valid_frame_decodes_strictly_to_its_ground_truth(
    kind: str, flag: int
) -> None:
    station = Station(kind, f"MN-{kind}", flag=flag)  # type: ignore[arg-type]
    # three hours at 40 s: every scenario, minute and hourly data
    packets = sent(ticks(kind, n=270, step_s=40, schedule=SCHEDULE, flag=flag))
    valid = [p for p in packets if p.valid]
    assert {p.cn for p in valid} == {REAL_TIME, MINUTE, HOUR}
    for p in valid:
        got = decode(p.frame).packet
        header = (got.st, got.mn, got.pw, got.flag, got.qn, got.cn)
        assert header == (station.st, station.mn, station.pw, flag, p.qn, p.cn)
        assert got.data_time == p.data_time
        assert readings(got) == p.readings
        assert [e.code for e in p.readings] == [s.code for s in station.codes]
        utc = parse_time(p.data_time, station.tz).astimezone(UTC)
        assert int(utc.timestamp() * 1000) == p.data_time_ms
        assert p.reply_required == (flag == 5)
        for e, spec in zip(p.readings, station.codes, strict=True):
            exponents = {v.as_tuple().exponent for v in e.values.values()}
            assert exponents == {-spec.decimals}, (p.cn, e)
    qns = [p.qn for p in packets if p.qn]
    assert len(set(qns)) == len(qns)


def test_frames_are_deterministic_per_seed_and_logger() -> None:
    def values(seed: int, mn: str = "MN-1") -> list[tuple[Expected, ...]]:
        return [p.readings for p in sent(ticks(n=100, seed=seed, mn=mn))]

    a = sent(ticks(n=100, seed=7, schedule=SCHEDULE))
    b = sent(ticks(n=100, seed=7, schedule=SCHEDULE))
    assert [p.frame for p in a] == [p.frame for p in b]
    assert values(7) != values(8)
    assert values(7) != values(7, mn="MN-2")  # two loggers, one seed


@pytest.mark.parametrize(
    ("c", "o2", "o2_ref", "decimals", "expected"),
    [
        ("20.00", "9.00", "6", 2, "25.00"),  # 20 * 15 / 12
        ("30.00", "7.50", "6", 2, "33.33"),  # 30 * 15 / 13.5 = 33.333…
        ("12.34", "6.00", "6", 2, "12.34"),  # measured at the reference O2
        ("0.02", "6.00", "9", 3, "0.016"),  # 0.02 * 12 / 15
        ("0.02", "9.00", "6", 2, "0.03"),  # 0.025 rounds half up, not to even
        ("40.0", "16.00", "16", 1, "40.0"),  # sinter head, 16 % reference
    ],
)
def test_o2_correction_by_hand(
    c: str, o2: str, o2_ref: str, decimals: int, expected: str
) -> None:
    got = o2_corrected(Decimal(c), Decimal(o2), Decimal(o2_ref), decimals)
    assert str(got) == expected


def test_o2_of_21_percent_cannot_be_corrected() -> None:
    with pytest.raises(ValueError, match="O2"):
        o2_corrected(Decimal(10), Decimal(21), Decimal(6), 2)


@pytest.mark.parametrize("o2_ref", [Decimal(6), Decimal(8)])
def test_corrected_values_follow_the_printed_raw_value_and_o2(o2_ref: Decimal) -> None:
    corrected = [s for s in KINDS["cems"][1] if s.corrected]
    packets = sent(ticks(n=150, schedule=SCHEDULE, o2_ref=o2_ref))
    real = [p for p in packets if p.valid and p.cn == REAL_TIME]
    for p in real:
        values = by_code(p)
        o2 = values[O2].values["Rtd"]
        for spec in corrected:
            v = values[spec.code].values
            assert v["ZsRtd"] == o2_corrected(v["Rtd"], o2, o2_ref, spec.decimals)


# --- time: real-time, minute and hourly data -------------------------------------


def _mean(values: list[Decimal], like: Decimal) -> Decimal:
    return (sum(values, Decimal(0)) / len(values)).quantize(like, ROUND_HALF_UP)


@pytest.mark.parametrize(
    ("kind", "tz"), [("cems", "Asia/Shanghai"), ("wastewater", "Asia/Kolkata")]
)
def test_interval_data_aggregates_the_real_time_data_of_its_interval(
    kind: str, tz: str
) -> None:
    step = 30
    all_ticks = ticks(kind, n=2 * 120 + 20, step_s=step, tz=ZoneInfo(tz))
    packets = sent(all_ticks)
    real = [p for p in packets if p.cn == REAL_TIME]
    assert [p.data_time_ms for p in real] == [
        int(t.at.timestamp()) * 1000 for t in all_ticks
    ]
    offset = T0.astimezone(ZoneInfo(tz)).utcoffset()
    assert offset is not None
    offset_ms = int(offset.total_seconds() * 1000)
    for cn, length_ms in ((MINUTE, 60_000), (HOUR, 3_600_000)):
        intervals = [p for p in packets if p.cn == cn]

        def number(p: SentPacket, length_ms: int = length_ms) -> int:
            return (p.data_time_ms + offset_ms) // length_ms  # local interval no.

        # every interval but the last (still open) is sent once, DataTime = its start
        assert [number(p) for p in intervals] == sorted({number(p) for p in real})[:-1]
        for p in intervals:
            assert (p.data_time_ms + offset_ms) % length_ms == 0
            inside = [
                r
                for r in real
                if p.data_time_ms <= r.data_time_ms < p.data_time_ms + length_ms
            ]
            for code, e in by_code(p).items():
                raw = [by_code(r)[code].values["Rtd"] for r in inside]
                assert e.values["Min"] == min(raw)
                assert e.values["Max"] == max(raw)
                assert e.values["Avg"] == _mean(raw, raw[0])
                if "ZsAvg" in e.values:
                    zs = [by_code(r)[code].values["ZsRtd"] for r in inside]
                    assert e.values["ZsAvg"] == _mean(zs, zs[0])
                if "Cou" in e.values:
                    # each value stands for the seconds since the previous tick
                    seconds = [0 if r is real[0] else step for r in inside]
                    volume = sum(
                        (v * s for v, s in zip(raw, seconds, strict=True)), Decimal(0)
                    )
                    per_m3 = 3600 if kind == "cems" else 1000  # m3/h or L/s
                    cou = (volume / per_m3).quantize(raw[0], ROUND_HALF_UP)
                    assert e.values["Cou"] == cou
                assert e.flag == "N"


def test_source_rejects_time_that_does_not_advance() -> None:
    source = PacketSource(Station("cems", "MN"), seed=1)
    source.tick(T0)
    for bad in (T0, T0 - timedelta(seconds=1), T0.replace(tzinfo=None)):
        with pytest.raises(ValueError, match="data time"):
            source.tick(bad)
    with pytest.raises(ValueError, match="whole"):
        source.tick(T0 + timedelta(milliseconds=1500))
    with pytest.raises(ValueError, match="step_s"):
        SimClock(T0, 0)
    with pytest.raises(ValueError, match="scenario"):
        Phase("flood")
    with pytest.raises(ValueError, match="corruptions"):
        Phase("corrupt", corruptions=("bitrot",))


# --- scenarios ---------------------------------------------------------------------


def _in(phase: Phase, p: SentPacket) -> bool:
    return phase.covers((p.data_time_ms - int(T0.timestamp() * 1000)) / 1000)


def test_scenarios_set_values_and_flags_as_specified() -> None:
    breach, calibration, fault, dropout, *_ = SCHEDULE
    packets = sent(ticks(n=3 * 180, schedule=SCHEDULE))
    real = [p for p in packets if p.valid and p.cn == REAL_TIME]
    gas = KINDS["cems"][2]
    seen: Counter[str] = Counter()
    last_good: dict[str, Decimal] = {}
    for p in real:
        values = by_code(p)
        for code, e in values.items():
            if _in(calibration, p) and code in gas:
                expected_flag = "C"
            elif _in(fault, p) and code in gas:
                expected_flag = "D"
            else:
                expected_flag = "N"
            assert e.flag == expected_flag, (p.data_time, code)
            if expected_flag == "D":
                assert e.values["Rtd"] == last_good[code]
            else:
                last_good[code] = e.values["Rtd"]
        for code, limit in LIMITS.items():
            zs = values[code].values["ZsRtd"]
            if _in(breach, p):
                seen["breach"] += 1
                assert zs > limit
            elif not (_in(calibration, p) and code in gas):
                assert zs <= limit
    assert seen["breach"] > 0
    assert not [p for p in packets if p.cn == REAL_TIME and _in(dropout, p)]
    minute = [p for p in packets if p.cn == MINUTE]
    assert {e.flag for p in minute if _in(calibration, p) for e in p.readings} == {
        "C",
        "N",
    }


def test_scenario_codes_and_wastewater_defaults() -> None:
    phases = (
        Phase("fault", 0, 600, codes=frozenset({"a34013"})),
        Phase("calibration", 600, 600),
    )
    cems = [p for p in sent(ticks(n=60, schedule=phases)) if p.cn == REAL_TIME]
    assert {e.code for p in cems[:30] for e in p.readings if e.flag != "N"} == {
        "a34013"
    }
    water = [
        p for p in sent(ticks("wastewater", n=60, schedule=phases)) if p.cn == REAL_TIME
    ]
    flagged = {(e.code, e.flag) for p in water for e in p.readings if e.flag != "N"}
    assert flagged == {("w01018", "C")}  # the fault hit a code it does not have


@pytest.mark.parametrize(
    ("phases", "flag"),
    [
        ((), "N"),
        ((Phase("calibration", 60, 20),), "C"),
        ((Phase("calibration", 60, 20), Phase("fault", 80, 20)), "D"),
    ],
)
def test_interval_flag_is_d_over_c_over_n(phases: tuple[Phase, ...], flag: str) -> None:
    minutes = [
        p for p in sent(ticks(n=13, step_s=10, schedule=phases)) if p.cn == MINUTE
    ]
    assert [by_code(p)["a21026"].flag for p in minutes] == ["N", flag]


def test_dropout_withholds_packets_and_asks_to_close() -> None:
    all_ticks = ticks(n=60, schedule=(Phase("dropout", 200, 200, close=True),))
    for t in all_ticks:
        in_dropout = t.scenario == "dropout"
        assert (not t.packets) == in_dropout
        assert t.close == in_dropout
        assert (t.withheld > 0) == in_dropout
    assert sum(t.scenario == "dropout" for t in all_ticks) == 200 // 20


# --- corruptions ---------------------------------------------------------------------


def _corrupt_run(kind: str, *, n: int = 12) -> list[SentPacket]:
    return sent(ticks(n=n, schedule=(Phase("corrupt", 100, 100, corruptions=(kind,)),)))


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_each_corruption_is_rejected_and_the_frames_around_it_come_through(
    kind: str,
) -> None:
    packets = _corrupt_run(kind)
    bad = [p for p in packets if not p.valid]
    assert bad
    assert {p.corruption for p in bad} == {kind}
    for p in bad:
        with pytest.raises(Hj212Error):
            decode(p.frame)
    data = b"".join(p.frame for p in packets)
    valid_qns = [p.qn for p in packets if p.valid]
    rng = random.Random(kind)
    for cuts in ([], range(1, len(data)), rng.sample(range(len(data)), 40)):
        events = stream_events(data, cuts)
        decoded = [e.packet.qn for e in events if isinstance(e, Decoded)]
        errors = [e for e in events if isinstance(e, Hj212Error)]
        assert decoded == valid_qns
        assert {e.kind for e in errors} == REJECTED_AS[kind]
        assert len(errors) == len(bad) * len(REJECTED_AS[kind])


def test_unknown_cp_field_is_accepted_by_a_lenient_decoder() -> None:
    (bad,) = [p for p in _corrupt_run("unknown_cp", n=6) if not p.valid]
    packet = decode(bad.frame, strict=False).packet
    assert readings(packet) == bad.readings
    assert packet.extra_cp


def test_corrupt_frames_carry_different_values_at_the_same_data_time() -> None:
    packets = _corrupt_run("crc")
    for i, p in enumerate(packets):
        if not p.valid:
            twin = next(q for q in packets[i:] if q.valid and q.cn == REAL_TIME)
            assert twin.data_time_ms == p.data_time_ms
            assert p.readings != twin.readings


@functools.cache
def every_corruption() -> tuple[SentPacket, ...]:
    return tuple(sent(ticks(n=2 * len(CORRUPTIONS), schedule=(Phase("corrupt"),))))


@settings(max_examples=40)
@given(data=st.data())
def test_a_stream_of_every_corruption_yields_exactly_the_valid_frames(
    data: st.DataObject,
) -> None:
    packets = every_corruption()
    stream = b"".join(p.frame for p in packets)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=12))
    events = stream_events(stream, cuts)
    decoded = [e.packet.qn for e in events if isinstance(e, Decoded)]
    assert decoded == [p.qn for p in packets if p.valid]
    assert [e.kind for e in events if isinstance(e, Hj212Error)] == [
        kind
        for p in packets
        if p.corruption
        for kind in sorted(
            REJECTED_AS[p.corruption], key=("crc", "field", "trailer", "stream").index
        )
    ]


def test_unknown_corruption_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="corruption"):
        corrupt("bitrot", Packet("31", "2011", "MN"), random.Random(0))


# --- the TCP client against a real listener ------------------------------------------

CEMS_METRICS = {
    "a21026": "so2",
    "a21002": "nox",
    "a34013": "particulate",
    O2: "o2",
    "a01012": "flue_temperature",
    "a00000": "flue_gas_flow",
}
CEMS_CORRECTED = {
    "a21026": "so2_corrected",
    "a21002": "nox_corrected",
    "a34013": "particulate_corrected",
}
WATER_METRICS = {
    "w00000": "wastewater_flow",
    "w01018": "cod",
    "w21003": "ammonia_nitrogen",
    "w01001": "ph",
}
WATER_UNITS = {"w00000": "L/s"}
SERIES = {REAL_TIME: "dev", MINUTE: "dev.minute", HOUR: "dev.hour"}

Got = list[tuple[str, list[Sample]]]


def mapping(kind: str) -> LoggerMapping:
    cems = kind == "cems"
    return LoggerMapping(
        device_id=SERIES[REAL_TIME],
        metrics=CEMS_METRICS if cems else WATER_METRICS,
        corrected=CEMS_CORRECTED if cems else {},
        units={} if cems else WATER_UNITS,
        intervals={MINUTE: SERIES[MINUTE], HOUR: SERIES[HOUR]},
    )


def expected_samples(packets: list[SentPacket], m: LoggerMapping) -> Got:
    """What the listener must deliver for ``packets``, from the ground truth."""
    out: Got = []
    for p in packets:
        if not p.valid:
            continue
        assert p.cn is not None
        data_type = {REAL_TIME: "realtime", MINUTE: "minute", HOUR: "hour"}[p.cn]
        keys = (
            [("Rtd", "ZsRtd", "value")]
            if p.cn == REAL_TIME
            else [("Avg", "ZsAvg", "value"), ("Min", "ZsMin", "min"),
                  ("Max", "ZsMax", "max"), ("Cou", None, "cou")]
        )  # fmt: skip
        samples = []
        for e in p.readings:
            for raw, zs, stat in keys:
                for key, table in ((raw, m.metrics), (zs, m.corrected)):
                    name = table.get(e.code)
                    if name is None or key is None or key not in e.values:
                        continue
                    value = float(e.values[key])
                    unit = metric(name).unit
                    if stat == "cou":
                        unit = metric(name).total_unit or "?"
                    else:
                        value = to_canonical(name, value, m.units.get(e.code, unit))
                    samples.append(
                        Sample(name, value, unit, p.data_time_ms, e.flag,
                               data_type=data_type, stat=stat)
                    )  # fmt: skip
        out.append((SERIES[p.cn], samples))
    return out


async def until(cond: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not cond():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(("kind", "flag"), [("cems", 5), ("wastewater", 4)])
async def test_listener_delivers_exactly_the_valid_packets(
    kind: str, flag: int
) -> None:
    got: Got = []
    m = mapping(kind)
    station = Station(kind, "MN-E2E", flag=flag)  # type: ignore[arg-type]
    schedule = (
        Phase("calibration", 300, 300),
        Phase("corrupt", 700, 240),
        Phase("dropout", 1000, 200, close=True),
        Phase("breach", 1300, 300),
    )
    source = PacketSource(station, seed=3, schedule=schedule)
    start = T0 + timedelta(minutes=45)  # crosses an hour
    dry, clock = PacketSource(station, seed=3, schedule=schedule), SimClock(start, 20)
    dry_ticks = [dry.tick(clock()) for _ in range(120)]
    async with Hj212Listener({"MN-E2E": m}, lambda d, s: got.append((d, s))) as lst:
        async with Hj212Logger(
            source,
            SimClock(start, 20),
            "127.0.0.1",
            lst.port,
            count=120,
            interval_s=0,
            join=True,
            split_every=3,
        ) as logger:
            await logger.wait()
        packets = logger.sent
        total = len([p for p in packets if p.valid])
        await until(lambda: lst.stats.frames_ok == total)
        await until(lambda: lst.stats.connections_open == 0)
    assert got == expected_samples(packets, m)
    assert {p.corruption for p in packets} == {None, *CORRUPTIONS}
    data = b"".join(p.frame for p in packets)
    rejected = Counter(e.kind for e in stream_events(data) if isinstance(e, Hj212Error))
    assert lst.stats.frames_rejected == rejected
    assert sum(rejected.values()) >= len(packets) - total
    assert logger.stats.ticks == 120
    assert logger.stats.frames == len(packets)
    assert logger.stats.bytes == len(data)
    assert logger.stats.dropout_closes == logger.stats.reconnects == 1
    assert lst.stats.connections_total == 2
    assert [p.frame for p in packets] == [p.frame for p in sent(dry_ticks)]
    assert logger.stats.withheld == sum(t.withheld for t in dry_ticks) > 0
    needing = {p.qn for p in packets if p.reply_required}
    assert bool(needing) == (flag == 5)
    assert logger.replied == needing
    assert logger.unanswered == []
    assert logger.stats.replies == lst.stats.replies_sent == len(needing)
    assert logger.stats.unexpected_replies == logger.stats.bad_replies == 0
    assert logger.unsent == []


async def test_logger_reconnects_after_the_listener_drops_it_as_idle() -> None:
    got: Got = []
    station = Station("cems", "MN-IDLE", minute=False, hourly=False)
    m = mapping("cems")
    source = PacketSource(station, seed=5, schedule=(Phase("dropout", 100, 200),))
    async with Hj212Listener(
        {"MN-IDLE": m}, lambda d, s: got.append((d, s)), idle_timeout_s=0.15
    ) as lst:
        async with Hj212Logger(
            source, SimClock(T0, 20), "127.0.0.1", lst.port, count=20, interval_s=0.04
        ) as logger:
            await logger.wait()
        await until(lambda: lst.stats.connections_open == 0)
    assert lst.stats.idle_closed >= 1
    assert logger.stats.connections_lost >= 1
    assert logger.stats.reconnects >= 1
    assert got == expected_samples(logger.sent, m)
    assert logger.unanswered == []
    assert len(logger.sent) == 20 - 200 // 20


async def test_a_write_cut_short_is_sent_again_whole() -> None:
    # The listener drops a connection idle for 0.05 s; the logger pauses 0.3 s
    # inside every third write, so that write fails halfway and is sent again.
    got: Got = []
    station = Station("cems", "MN-CUT", minute=False, hourly=False)
    m = mapping("cems")
    async with Hj212Listener(
        {"MN-CUT": m}, lambda d, s: got.append((d, s)), idle_timeout_s=0.05
    ) as lst:
        async with Hj212Logger(
            PacketSource(station, seed=6),
            SimClock(T0, 20),
            "127.0.0.1",
            lst.port,
            count=4,
            interval_s=0,
            split_every=3,
            split_pause_s=0.3,
        ) as logger:
            await logger.wait()
        await until(lambda: lst.stats.connections_open == 0)
    assert logger.stats.send_failures == 1
    assert logger.stats.reconnects == 1
    assert got == expected_samples(logger.sent, m)
    assert [p.qn for p in logger.sent] == [
        p.qn for p in sent(ticks(n=4, seed=6, mn="MN-CUT", minute=False, hourly=False))
    ]
    assert lst.stats.frames_rejected == {"length": 1}  # the half frame: truncated
    assert logger.unanswered == []


async def test_logger_retries_until_the_listener_is_up_and_stops_cleanly() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    got: Got = []
    station = Station("wastewater", "MN-LATE", minute=False, hourly=False)
    source = PacketSource(station, seed=2)
    logger = Hj212Logger(
        source, SimClock(T0, 10), "127.0.0.1", port, interval_s=0.01, backoff_s=0.02
    )
    m = mapping("wastewater")
    listener = Hj212Listener({"MN-LATE": m}, lambda d, s: got.append((d, s)), port=port)
    async with contextlib.AsyncExitStack() as outer:
        async with logger:
            await until(lambda: logger.stats.connect_failures >= 2)
            assert logger.sent == []
            lst = await outer.enter_async_context(listener)  # outlives the logger
            await until(lambda: len(logger.sent) >= 5)
            logger.stop()
            await logger.wait()
            n = len(logger.sent)
            await until(lambda: len(got) == logger.stats.replies == n)
        await until(lambda: lst.stats.connections_open == 0)
    assert logger.stats.connects == 1
    assert got == expected_samples(logger.sent, m)
    assert lst.stats.replies_sent == logger.stats.replies == len(logger.sent)


async def test_cli_prints_each_frame_it_sends() -> None:
    got: Got = []
    m = mapping("wastewater")
    args = ["--mn", "MN-CLI", "--seed", "4", "--interval-s", "0", "--step-s", "30"]
    args += ["--count", "9", "--start", "2024-01-01T00:00:00+00:00"]
    args += ["--scenario", "corrupt@60+60", "--split-every", "2"]
    phase = Phase("corrupt", 60, 60)
    source = PacketSource(Station("wastewater", "MN-CLI"), seed=4, schedule=(phase,))
    clock = SimClock(T0, 30)
    expected = [p for _ in range(9) for p in source.tick(clock()).packets]
    async with Hj212Listener({"MN-CLI": m}, lambda d, s: got.append((d, s))) as lst:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "smartpark.cli",
            "simulate",
            "wastewater",
            "--connect",
            f"127.0.0.1:{lst.port}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 15)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert [line.split()[1] for line in lines[:-1]] == [f"QN={p.qn}" for p in expected]
    assert sum("corrupt=" in line for line in lines) == sum(
        not p.valid for p in expected
    )
    assert lines[-1].startswith("summary: ticks=9 ")
    assert f"replies={sum(p.reply_required for p in expected)} " in lines[-1]
    assert got == expected_samples(expected, m)
