"""HJ 212 codec: reference packet, hand-built frames, every error kind."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest

from edge_agent.hj212 import (
    Hj212Error,
    Packet,
    Pollutant,
    build_frame,
    crc16,
    decode,
    encode,
    encode_data,
    parse_time,
)
from smartpark.errors import PayloadError

# From domain.md section 1 (public material): length 109, CRC 8c41.
GOLDEN = (
    b"##0109ST=32;CN=2011;PW=123456;MN=NJGDKYYC202101q0001w0001;CP=&&"
    b"DataTime=20210305003817000;ele01-Rtd=1;ele02-Rtd=0&&8c41\r\n"
)


def _modbus_crc(data: bytes) -> int:
    """The Modbus CRC, to show the HJ 212 one is different."""
    crc = 0xFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return crc


def test_golden_frame_decodes() -> None:
    d = decode(GOLDEN)
    p = d.packet
    assert (p.st, p.cn, p.pw, p.mn) == (
        "32",
        "2011",
        "123456",
        "NJGDKYYC202101q0001w0001",
    )
    assert p.qn is None
    assert p.flag is None
    assert p.pnum is None
    assert p.data_time == "20210305003817000"  # 17 digits kept as sent
    assert p.pollutants == (
        Pollutant("ele01", rtd=Decimal("1")),
        Pollutant("ele02", rtd=Decimal("0")),
    )
    assert d.frame.crc == "8c41"
    assert len(d.frame.data.encode()) == 109
    assert d.issues == ()


def test_golden_frame_reencodes_byte_identically() -> None:
    assert encode(decode(GOLDEN).packet) == GOLDEN
    assert build_frame(decode(GOLDEN).frame.data) == GOLDEN


def test_golden_crc_and_not_modbus() -> None:
    data = GOLDEN[6:-6]
    assert crc16(data) == 0x8C41
    assert _modbus_crc(data) != 0x8C41


def test_crc_of_one_byte_by_hand() -> None:
    # "A" = 0x41. crc = (0xFFFF >> 8) ^ 0x41 = 0x00BE = 1011_1110b, then 8 shifts
    # (XOR 0xA001 when the bit shifted out is 1):
    #   1: out 0 -> 0x005F       2: out 1 -> 0x002F ^ 0xA001 = 0xA02E
    #   3: out 0 -> 0x5017       4: out 1 -> 0x280B ^ 0xA001 = 0x880A
    #   5: out 0 -> 0x4405       6: out 1 -> 0x2202 ^ 0xA001 = 0x8203
    #   7: out 1 -> 0x4101 ^ 0xA001 = 0xE100
    #   8: out 0 -> 0x7080
    assert crc16(b"A") == 0x7080
    assert crc16(b"") == 0xFFFF


def test_crc_case_is_either() -> None:
    upper = GOLDEN.replace(b"8c41", b"8C41")
    d = decode(upper)
    assert d.frame.crc == "8C41"
    assert d.issues == ()
    assert build_frame(d.frame.data, d.frame.crc) == upper


MINUTE = (
    "QN=20210305003800123;ST=31;CN=2051;PW=123456;MN=MN0001;Flag=5;CP=&&"
    "DataTime=20210305003800;a21026-Min=1.0,a21026-Avg=2.50,a21026-Max=4,"
    "a21026-Flag=N;a19001-Avg=8.1,a19001-Flag=M&&"
)
HOUR = (
    "QN=20210305010000000;ST=31;CN=2061;PW=123456;MN=MN0001;Flag=4;CP=&&"
    "DataTime=20210305010000;a21026-Avg=20.1,a21026-Cou=1.234,a21026-ZsMin=20.0,"
    "a21026-ZsAvg=25.3,a21026-ZsMax=30.0,a21026-Flag=N,a21026-EFlag=A01,"
    "a21026-SampleTime=20210305005959&&"
)
SPLIT = (
    "QN=20210305010000000;ST=32;CN=2061;PW=123456;MN=MN0002;Flag=7;PNUM=2;PNO=1;"
    "CP=&&DataTime=20210305010000;w01018-Avg=35.2,w01018-ZsRtd=-0.5,w01018-Flag=D&&"
)


def test_minute_data_by_hand() -> None:
    # CRC computed by our own implementation: structure is checked, not the CRC.
    raw = build_frame(MINUTE)
    assert raw.startswith(b"##%04d" % len(MINUTE))
    assert raw.endswith(b"\r\n")
    p = decode(raw).packet
    assert (p.cn, p.flag, p.reply_required, p.split, p.version) == (
        "2051",
        5,
        True,
        False,
        1,
    )
    so2, o2 = p.pollutants
    assert so2 == Pollutant(
        "a21026", min=Decimal("1.0"), avg=Decimal("2.50"), max=Decimal("4"), flag="N"
    )
    assert o2.flag == "M"
    assert encode_data(p) == MINUTE  # trailing zeros survive


def test_hour_data_with_corrected_values() -> None:
    p = decode(build_frame(HOUR)).packet
    (so2,) = p.pollutants
    assert (so2.zs_min, so2.zs_avg, so2.zs_max) == (
        Decimal("20.0"),
        Decimal("25.3"),
        Decimal("30.0"),
    )
    assert (so2.cou, so2.eflag, so2.sample_time) == (
        Decimal("1.234"),
        "A01",
        "20210305005959",
    )
    assert (p.reply_required, p.split, p.version) == (False, False, 1)
    assert encode_data(p) == HOUR


def test_split_packet() -> None:
    p = decode(build_frame(SPLIT)).packet
    assert (p.flag, p.split, p.reply_required, p.pnum, p.pno) == (7, True, True, 2, 1)
    assert p.pollutants[0].zs_rtd == Decimal("-0.5")
    assert encode_data(p) == SPLIT


def test_parse_time_takes_the_zone() -> None:
    cst = timezone(timedelta(hours=8))
    assert parse_time("20210305003817123", cst) == datetime(
        2021, 3, 5, 0, 38, 17, 123000, tzinfo=cst
    )
    assert parse_time("20210305003817", UTC).microsecond == 0
    with pytest.raises(ValueError, match="14 or 17"):
        parse_time("2021", UTC)


def _frame(segment: str) -> bytes:
    return build_frame(segment)


HEAD = "ST=32;CN=2011;PW=1;MN=X;"
ERRORS = [
    # (frame, kind, path, reason fragment)
    (b"#X" + GOLDEN[2:], "header", "frame", "does not start with '##'"),
    (b"##01a9" + GOLDEN[6:], "length", "frame.length", "4 decimal digits"),
    (
        b"##0108" + GOLDEN[6:],
        "length",
        "frame.length",
        "declared 108 bytes, data segment is 109",
    ),
    (GOLDEN.replace(b"8c41", b"8c42"), "crc", "frame.crc", "expected 8c41, got 8c42"),
    (GOLDEN.replace(b"8c41", b"8c4g"), "crc", "frame.crc", "4 hex digits"),
    (GOLDEN[:-2], "trailer", "frame.trailer", "missing"),
    (GOLDEN[:-1], "trailer", "frame.trailer", "missing"),
    (_frame("ST=32;CN=2011;MN=X"), "cp", "data.CP", "missing 'CP=&&'"),
    (_frame(HEAD + "CP=&&DataTime=20210305003817"), "cp", "data.CP", "closing '&&'"),
    (_frame(HEAD + "CP=&&&&;"), "cp", "data.CP", "closing '&&'"),
    (_frame("ST=32;CN=2011;XX=1;MN=X;CP=&&&&"), "field", "data.XX", "unknown field"),
    (_frame(HEAD + "CP=&&a21026-Foo=1&&"), "field", "cp.a21026-Foo", "unknown field"),
    (_frame(HEAD + "CP=&&Foo=1&&"), "field", "cp.Foo", "unknown field"),
    (_frame(HEAD + "CP=&&a21026-Rtd=1;&&"), "field", "cp", "empty field"),
    (
        _frame(HEAD + "CP=&&a21026-Rtd=1,a21026-Rtd=2&&"),
        "field",
        "cp.a21026-Rtd",
        "duplicate",
    ),
    (_frame("ST=32;ST=32;CN=2011;MN=X;CP=&&&&"), "field", "data.ST", "duplicate"),
    (
        _frame(HEAD + "CP=&&a21026-Flag=X&&"),
        "field",
        "cp.a21026-Flag",
        "unknown data flag",
    ),
    (_frame(HEAD + "CP=&&a21026-Rtd=1.2.3&&"), "number", "cp.a21026-Rtd", "bad number"),
    (_frame(HEAD + "CP=&&a21026-Rtd=&&"), "number", "cp.a21026-Rtd", "bad number"),
    (_frame(HEAD + "CP=&&a21026-Rtd=1e3&&"), "number", "cp.a21026-Rtd", "bad number"),
    (_frame(HEAD + "CP=&&a21026-Rtd=+1&&"), "number", "cp.a21026-Rtd", "non-canonical"),
    (_frame(HEAD + "CP=&&a21026-Rtd=01&&"), "number", "cp.a21026-Rtd", "non-canonical"),
    (
        _frame(HEAD + "CP=&&DataTime=20211305003817&&"),
        "datatime",
        "cp.DataTime",
        "yyyyMMdd",
    ),
    (
        _frame(HEAD + "CP=&&DataTime=202103050038171&&"),
        "datatime",
        "cp.DataTime",
        "got",
    ),
    (_frame(HEAD + "CP=&&DataTime=1;DataTime=1&&"), "datatime", "cp.DataTime", "got"),
    (_frame("ST=32;CN=2011;PW=1;CP=&&&&"), "header", "data.MN", "missing"),
    (_frame("ST=32;CN=201;MN=X;CP=&&&&"), "header", "data.CN", "bad code"),
    (_frame("ST=3a;CN=2011;MN=X;CP=&&&&"), "header", "data.ST", "bad code"),
    (_frame("QN=2021;" + HEAD + "CP=&&&&"), "header", "data.QN", "bad timestamp"),
    (_frame("QN=20210305003817;" + HEAD + "CP=&&&&"), "header", "data.QN", "is not"),
    (_frame(HEAD + "Flag=x;CP=&&&&"), "header", "data.Flag", "bad integer"),
    (_frame(HEAD + "Flag=6;CP=&&&&"), "header", "data.Flag", "PNUM and PNO"),
    (
        _frame(HEAD + "Flag=4;PNUM=2;PNO=1;CP=&&&&"),
        "header",
        "data.Flag",
        "PNUM and PNO",
    ),
    (
        _frame(HEAD + "Flag=6;PNUM=2;PNO=3;CP=&&&&"),
        "header",
        "data.PNO",
        "not in 1..PNUM",
    ),
    (_frame(HEAD + "junk;CP=&&&&"), "header", "data.junk", "without '='"),
    (_frame(HEAD + "CP=&&junk&&"), "field", "cp.junk", "without '='"),
    (b"##0002\xff\xfeffff\r\n", "crc", "frame.crc", "expected"),
]


@pytest.mark.parametrize(("raw", "kind", "path", "reason"), ERRORS)
def test_strict_errors_name_the_place(
    raw: bytes, kind: str, path: str, reason: str
) -> None:
    with pytest.raises(Hj212Error) as info:
        decode(raw)
    err = info.value
    assert (err.kind, err.path) == (kind, path)
    assert reason in err.reason
    assert isinstance(err, PayloadError)


def test_not_utf8_is_a_header_error() -> None:
    data = b"MN=\xff"
    raw = b"##%04d%s%04x\r\n" % (len(data), data, crc16(data))
    with pytest.raises(Hj212Error, match="not UTF-8") as info:
        decode(raw)
    assert info.value.kind == "header"


def test_lenient_tolerates_and_lists_issues() -> None:
    segment = "QN=20210305003817;ST=32;CN=2011;XX=1;MN=X;CP=&&a21026-Rtd=+1.50;Foo=2;&&"
    raw = build_frame(segment)
    wrong_length = b"##0001" + raw[6:-2]  # and no trailer
    d = decode(wrong_length, strict=False)
    assert d.packet.extra_header == (("XX", "1"),)
    assert d.packet.extra_cp == (("Foo", "2"),)
    assert d.packet.pollutants[0].rtd == Decimal("1.50")
    assert [i.split(":")[0] for i in d.issues] == [
        "frame.trailer",
        "frame.length",
        "data.XX",
        "data.QN",
        "cp.a21026-Rtd",
        "cp.Foo",
        "cp",
    ]


@pytest.mark.parametrize(
    "raw", [GOLDEN.replace(b"8c41", b"8c42"), b"##0109", b"", b"garbage"]
)
def test_lenient_still_refuses_corruption(raw: bytes) -> None:
    with pytest.raises(Hj212Error):
        decode(raw, strict=False)


def test_lenient_packet_roundtrips_with_extras() -> None:
    p = Packet(
        st="32",
        cn="9014",
        mn="X",
        extra_header=(("X", "1"),),
        extra_cp=(("VendorX", "1"),),
    )
    assert decode(encode(p), strict=False).packet == p
    with pytest.raises(Hj212Error, match="unknown field"):
        decode(encode(p))


@pytest.mark.parametrize(
    ("packet", "path"),
    [
        (Packet(st="32", cn="2011", mn="a;b"), "data.MN"),
        (Packet(st="32", cn="2011", mn="X", pollutants=(Pollutant("a1"),)), "cp.a1"),
        (
            Packet(
                st="32",
                cn="2011",
                mn="X",
                pollutants=(Pollutant("a1", rtd=Decimal("NaN")),),
            ),
            "a1-Rtd",
        ),
        (
            Packet(
                st="32",
                cn="2011",
                mn="X",
                pollutants=(Pollutant("a-1", rtd=Decimal(1)),),
            ),
            "data",
        ),
        (Packet(st="32", cn="2011", mn="X", pnum=1, pno=1), "data.Flag"),
        (Packet(st="32", cn="2011", mn="X" * 10_000), "frame.length"),
    ],
)
def test_encode_refuses_what_would_not_come_back(packet: Packet, path: str) -> None:
    with pytest.raises(Hj212Error) as info:
        encode(packet)
    assert info.value.path == path
