"""upstream.packets: readings to HJ 212 packet fields, packets and replies (pure)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.hj212.codec import decode, encode
from edge_agent.hj212.model import Hj212Version, Packet
from upstream import packets as pk

SHANGHAI = ZoneInfo("Asia/Shanghai")
T0_MS = int(datetime(2026, 3, 1, tzinfo=UTC).timestamp() * 1000)
OUTLET = pk.Mapping212(
    devices=frozenset({"cems-1", "cems-2"}),
    series=frozenset({"realtime", "hour"}),
    by_metric={
        "so2": ("a21026", False),
        "so2_corrected": ("a21026", True),
        "nox": ("a21002", False),
    },
    tz=SHANGHAI,
)


def value(
    metric: str,
    v: float,
    *,
    dt: str = "realtime",
    stat: str = "value",
    device: str = "cems-1",
    ts_ms: int = T0_MS,
    q: str = "N",
) -> pk.Value:
    return pk.Value(device, metric, dt, stat, ts_ms, v, q)


@pytest.mark.parametrize(
    ("data_type", "stat", "corrected", "field"),
    [
        ("realtime", "value", False, "Rtd"),
        ("realtime", "value", True, "ZsRtd"),
        ("realtime", "min", False, None),
        ("minute", "value", False, "Avg"),
        ("hour", "min", False, "Min"),
        ("hour", "max", False, "Max"),
        ("day", "cou", False, "Cou"),
        ("day", "value", True, "ZsAvg"),
        ("hour", "min", True, "ZsMin"),
        ("hour", "max", True, "ZsMax"),
        ("hour", "cou", True, None),  # a corrected total does not exist
    ],
)
def test_field_of_each_series_and_stat(
    data_type: str, stat: str, corrected: bool, field: str | None
) -> None:
    assert pk.field_of(data_type, stat, corrected) == field


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (20.5, "20.5"), (40.0, "40"), (0.0, "0"), (-0.0, "0"), (-3.25, "-3.25"),
        (1e-7, "0.0000001"), (12345678.9, "12345678.9"),
        (0.1 + 0.2, "0.30000000000000004"),
        (1e21, "1000000000000000000000"),
    ],
)  # fmt: skip
def test_number_text_is_the_stored_double_without_exponent(
    number: float, text: str
) -> None:
    assert pk.number_text(number) == text
    assert float(text) == number


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_number_text_refuses_non_finite(bad: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        pk.number_text(bad)


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_every_finite_double_reads_back_exactly(number: float) -> None:
    assert float(pk.number_text(number)) == number


def test_collect_groups_by_cn_and_local_datatime() -> None:
    got = pk.collect(
        [
            value("so2", 20.5),
            value("so2_corrected", 22.0, q="C"),
            value("nox", 40.0, device="cems-2", ts_ms=T0_MS + 999),  # same second
            value("so2", 30.0, dt="hour"),
            value("so2", 20.0, dt="hour", stat="min"),
            value("so2", 9.0, dt="minute"),  # series not forwarded
            value("o2", 6.0),  # metric not mapped
            value("so2", 1.0, device="boiler"),  # not the outlet's device
            value("so2", 1.0, dt="realtime", stat="cou"),  # no such field
        ],
        OUTLET,
    )
    assert got.skipped == 3
    assert got.packets == {
        ("2011", "20260301080000"): {
            "a21026": {"Rtd": ["20.5", "N"], "ZsRtd": ["22", "C"]},
            "a21002": {"Rtd": ["40", "N"]},
        },
        ("2061", "20260301080000"): {
            "a21026": {"Avg": ["30", "N"], "Min": ["20", "N"]},
        },
    }


def test_split_new_drops_duplicates_and_keeps_the_first_of_a_conflict() -> None:
    queued: list[pk.Fields] = [
        {"a21026": {"Rtd": ["20.5", "N"]}},
        {"a21002": {"Rtd": ["40", "N"]}},
    ]
    incoming: pk.Fields = {
        "a21026": {"Rtd": ["20.5", "N"], "ZsRtd": ["22", "N"]},
        "a21002": {"Rtd": ["41", "N"]},
    }
    split = pk.split_new(queued, incoming)
    assert split.new == {"a21026": {"ZsRtd": ["22", "N"]}}
    assert split.duplicates == 1
    assert split.conflicts == ["a21002-Rtd: queued 40, now 41"]
    assert pk.split_new([], incoming).new == incoming


def test_merge_adds_fields_without_touching_its_inputs() -> None:
    a: pk.Fields = {"a21026": {"Rtd": ["1", "N"]}}
    b: pk.Fields = {"a21026": {"ZsRtd": ["2", "N"]}, "a21002": {"Rtd": ["3", "N"]}}
    assert pk.merge(a, b) == {
        "a21026": {"Rtd": ["1", "N"], "ZsRtd": ["2", "N"]},
        "a21002": {"Rtd": ["3", "N"]},
    }
    assert a == {"a21026": {"Rtd": ["1", "N"]}}


@pytest.mark.parametrize(
    ("version", "reply", "flag"),
    [
        (Hj212Version.V2017, True, 5),
        (Hj212Version.V2017, False, 4),
        (Hj212Version.V2025, True, 9),
        (Hj212Version.V2025, False, 8),
    ],
)
def test_flag_bits(version: Hj212Version, reply: bool, flag: int) -> None:
    assert pk.flag_bits(version, reply=reply) == flag


def test_data_packet_encodes_to_a_frame_the_strict_decoder_accepts() -> None:
    fields: pk.Fields = {
        "a21002": {"Avg": ["40", "N"], "Max": ["51.5", "T"]},
        "a21026": {"Min": ["20", "D"], "Avg": ["30", "N"], "Cou": ["1.25", "N"]},
        "w00000": {"Rtd": ["7", "N"]},
    }
    packet = pk.data_packet(
        fields, cn="2061", data_time_text="20260301080000", mn="88888880000001",
        st="31", pw="123456", qn="20260301080000123", flag=5,
        order=("a21026", "a21002"),
    )  # fmt: skip
    decoded = decode(encode(packet), version=Hj212Version.V2017).packet
    assert decoded == packet
    assert [p.code for p in decoded.pollutants] == ["a21026", "a21002", "w00000"]
    so2 = decoded.pollutants[0]
    assert (so2.avg, so2.min, so2.cou, so2.flag) == (
        Decimal(30), Decimal(20), Decimal("1.25"), "N"  # the Avg's flag
    )  # fmt: skip
    assert decoded.pollutants[1].flag == "N"
    assert b"a21026-Min=20,a21026-Avg=30,a21026-Cou=1.25,a21026-Flag=N" in encode(
        packet
    )


def test_a_corrected_value_alone_takes_its_own_flag() -> None:
    packet = pk.data_packet(
        {"a21026": {"ZsRtd": ["22", "C"]}}, cn="2011", data_time_text="20260301080000",
        mn="m", st="31", pw="p", qn="20260301080000123", flag=5,
    )  # fmt: skip
    assert packet.pollutants[0].flag == "C"


def test_replies_keep_qn_pw_and_mn() -> None:
    request = Packet(st="31", cn="2061", mn="m1", pw="pw", qn="20260301080000123",
                     flag=5, params=(("BeginTime", "20260301000000"),))  # fmt: skip
    r = pk.reply(request, pk.REQUEST_REPLY, "QnRtn", pk.QN_READY, 4)
    assert encode(r) == encode(
        Packet(
            st="91",
            cn="9011",
            mn="m1",
            pw="pw",
            qn="20260301080000123",
            flag=4,
            params=(("QnRtn", "1"),),
        )
    )
    assert decode(encode(r), version=Hj212Version.V2017).packet == r
    done = pk.reply(request, pk.EXECUTION_RESULT, "ExeRtn", pk.EXE_NO_DATA, 4)
    assert dict(done.params) == {"ExeRtn": "100"}


def test_qns_increase_strictly_even_within_one_millisecond() -> None:
    qns = pk.QnClock(SHANGHAI)
    got = [qns.next(T0_MS) for _ in range(3)] + [qns.next(T0_MS - 5_000)]
    assert got == [
        "20260301080000000", "20260301080000001", "20260301080000002",
        "20260301080000003",
    ]  # fmt: skip
    assert qns.next(T0_MS + 61_000) == "20260301080101000"


def test_a_row_too_large_for_one_frame_is_split_by_pollutant() -> None:
    fields: pk.Fields = {
        f"c{i:03d}": {n: ["123456.789", "N"] for n in ("Avg", "Min", "Max", "Cou")}
        for i in range(200)
    }

    def build(f: pk.Fields) -> Packet:
        return pk.data_packet(
            f, cn="2061", data_time_text="20260301080000", mn="m", st="31",
            pw="p", qn="20260301080000123", flag=5,
        )  # fmt: skip

    parts = pk.fitting(fields, build)
    assert len(parts) > 1
    assert all(len(encode(build(p))) <= 9999 + 12 for p in parts)
    assert pk.merge({}, {k: v for p in parts for k, v in p.items()}) == fields
    assert [c for p in parts for c in p] == list(fields)  # order kept
    small: pk.Fields = {"a21026": {"Rtd": ["1", "N"]}}
    assert pk.fitting(small, build) == [small]
