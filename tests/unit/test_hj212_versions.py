"""HJ 212 in three generations: the standards' examples, check() per version, the
2005 corrected group, split and truncation, the capture corpus, the listener."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from datetime import datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.hj212 import (
    FrameBuffer,
    Hj212Error,
    Hj212Version,
    Packet,
    Pollutant,
    build_frame,
    check,
    decode,
    encode,
    encode_data,
    required_reply,
)
from edge_agent.hj212.cli import main as cli_main
from edge_agent.hj212.dictionary import GENERATIONS, FieldType, generation
from edge_agent.hj212.jsonform import from_json, to_json
from edge_agent.hj212.listener import Hj212Listener, LoggerMapping
from tests.unit.test_hj212_listener import until

V2005, V2017, V2025 = Hj212Version.V2005, Hj212Version.V2017, Hj212Version.V2025
CORPUS = Path(__file__).parent.parent / "fixtures" / "hj212" / "corpus.txt"
STD_MN = "010000A8900016F000169DC0"
HEAD17 = f"QN=20160801085857223;ST=32;CN={{cn}};PW=123456;MN={STD_MN};Flag={{flag}};"

# --- the standards' own examples -------------------------------------------------

# HJ 212-2017 appendix C, setting the real-time interval; the CRC is the standard's.
STD_1062 = (
    b"##0101QN=20160801085857223;ST=32;CN=1062;PW=100000;MN=010000A8900016F000169DC0;"
    b"Flag=5;CP=&&RtdInterval=30&&1C80\r\n"
)


def _std(cn: str, cp: str, flag: int = 5, st: str = "32") -> bytes:
    """A 2017 appendix C example as copied in caoyiliang/HJ212 Test/Program.cs
    (data segment as published; CRC ours, the copy gives none)."""
    head = HEAD17.format(cn=cn, flag=flag).replace("ST=32", f"ST={st}")
    return build_frame(head + f"CP=&&{cp}&&")


GOLDEN_2017 = [
    # (frame, params expected)
    (STD_1062, (("RtdInterval", "30"),)),
    (_std("1061", ""), ()),
    (_std("1072", "NewPW=654321"), (("NewPW", "654321"),)),
    (_std("1064", "MinInterval=10"), (("MinInterval", "10"),)),
    (_std("1000", "OverTime=5;ReCount=3"), (("OverTime", "5"), ("ReCount", "3"))),
    (
        _std("1012", "PolId=w01018;SystemTime=20160801085857"),
        (("PolId", "w01018"), ("SystemTime", "20160801085857")),
    ),
    (
        _std("2041", "BeginTime=20160801000000,EndTime=20160801000000"),
        (("BeginTime", "20160801000000"), ("EndTime", "20160801000000")),
    ),
    (
        _std("3016", "PolId=w01018;CstartTime=000000;CTime=2"),
        (("PolId", "w01018"), ("CstartTime", "000000"), ("CTime", "2")),
    ),
    (_std("3015", ""), ()),
    (_std("9014", "", flag=4, st="91"), ()),
    (
        _std("3021", "PolId=w01018;InfoId=i13004;i13004-Info=168.0"),
        (("PolId", "w01018"), ("InfoId", "i13004"), ("i13004-Info", "168.0")),
    ),
    # published with their CRC in liruoyu2008/HJ212Interpreter README.md
    (
        b"##0094QN=20231008125115215;ST=22;CN=9011;PW=123456;MN=010000A8900016F000169"
        b"DC0;Flag=4;CP=&&QnRtn=1&&CC01\r\n",
        (("QnRtn", "1"),),
    ),
    (
        b"##0137QN=20231008130452757;ST=22;CN=2081;PW=123456;MN=010000A8900016F000169"
        b"DC0;Flag=5;CP=&&DataTime=20231008130452;RestartTime=20231007130452&&3AC0\r\n",
        (("RestartTime", "20231007130452"),),
    ),
    (_std("9012", "ExeRtn=1", flag=4), (("ExeRtn", "1"),)),
    (
        _std("2021", "DataTime=20160801085857;SB1-RS=1;SB2-RS=0"),
        (("SB1-RS", "1"), ("SB2-RS", "0")),
    ),
    (
        _std("2041", "DataTime=20160801000000;SB1-RT=18.5;SB2-RT=24"),
        (("SB1-RT", "18.5"), ("SB2-RT", "24")),
    ),
]


@pytest.mark.parametrize(("raw", "params"), GOLDEN_2017)
def test_2017_examples_are_accepted_by_strict_2017(
    raw: bytes, params: tuple[tuple[str, str], ...]
) -> None:
    d = decode(raw, version=V2017)
    assert d.issues == ()
    assert d.packet.params == params
    assert decode(encode(d.packet), version=V2017).packet == d.packet


def test_the_standards_1062_example_reencodes_byte_identically() -> None:
    d = decode(STD_1062, version=V2017)
    assert d.frame.crc == "1C80"
    assert encode(d.packet) == STD_1062.replace(b"1C80", b"1c80")


def _std25(cn: str, cp: str, flag: int = 9) -> bytes:
    """A 2025 appendix C example as copied in caoyiliang/HJ212 Test/Program.cs."""
    head = HEAD17.format(cn=cn, flag=flag).replace("20160801", "20240601")
    return build_frame(head + f"CP=&&{cp}&&")


GOLDEN_2025 = [
    _std25("1014", "SKCreateTime=20240601085857223,NewSK=0000000000000000"),
    _std25("1002", "i23005-Info=6970000000001ABCDEFG1234"),
    _std25("3011", "PolId=w01018,CalibrationType=0"),
    _std25("3024", "PolId=w01018"),
    _std25("2062", "BeginTime=20240601080000;EndTime=20240601080000"),
    _std25("9015", "", flag=9),
    _std25("1062", "RtdInterval=30"),
]


@pytest.mark.parametrize("raw", GOLDEN_2025)
def test_2025_examples_are_accepted_by_strict_2025(raw: bytes) -> None:
    d = decode(raw, version=V2025)
    assert d.issues == ()
    assert decode(encode(d.packet), version=V2025).packet == d.packet


def test_2025_heartbeat_is_no_2017_command_and_is_answered_with_9013() -> None:
    raw = _std25("9015", "")
    with pytest.raises(Hj212Error) as info:
        decode(raw, version=V2017)
    assert (info.value.kind, info.value.path) == ("command", "data.CN")
    reply = required_reply(decode(raw).packet)
    assert reply is not None
    assert (reply.st, reply.cn, reply.flag, reply.qn) == (
        "91",
        "9013",
        8,
        "20240601085857223",
    )


# HJ/T 212-2005 generation: the CEMS form with 2-/3-digit codes (published with its
# CRC in Yimning/Daily-Code protocol/rtuacq_protocol_cems_BJxuedilong.c, vendor code
# "Nh3-scr" aside) and the separate corrected groups.
SEGMENT_2005 = (
    "ST=31;CN=2011;PW=123456;MN=88888880000001;CP=&&DataTime=20200718123600;"
    "01-Rtd=1.48,01-Flag=N;01-ZsRtd=2.47,01-Flag=D;"
    "02-ZsRtd=5.08,02-Flag=N;02-Rtd=3.05,02-Flag=N;"
    "S01-Rtd=20.7,S01-Flag=N;B02-Rtd=7.43,B02-Flag=N&&"
)


def test_2005_corrected_group_has_its_own_flag_not_a_duplicate() -> None:
    d = decode(build_frame(SEGMENT_2005), version=V2005)
    dust, so2, o2, flow = d.packet.pollutants
    assert dust == Pollutant(
        "01", rtd=Decimal("1.48"), zs_rtd=Decimal("2.47"), flag="N", zs_flag="D"
    )
    assert so2 == Pollutant(
        "02", rtd=Decimal("3.05"), zs_rtd=Decimal("5.08"), flag="N", zs_flag="N"
    )
    assert (o2.flag, o2.zs_flag, flow.code) == ("N", None, "B02")
    again = decode(encode(d.packet), version=V2005).packet
    assert again == d.packet
    # measured group first, corrected group with its own flag after it
    assert "01-Rtd=1.48,01-Flag=N;01-ZsRtd=2.47,01-Flag=D;" in encode_data(d.packet)


def test_2005_corrected_group_is_not_2017_form() -> None:
    raw = build_frame(SEGMENT_2005)
    with pytest.raises(Hj212Error) as info:
        decode(raw, version=V2017)
    assert (info.value.kind, info.value.path) == ("field", "cp.01-Flag")
    lenient = decode(raw, strict=False, version=V2017)
    assert [i.kind for i in lenient.issues] == ["field", "field"]


@pytest.mark.parametrize(
    "cp",
    [
        "a21026-Rtd=1,a21026-Flag=N;a21026-Avg=2,a21026-Flag=N",  # neither corrected
        "a21026-ZsRtd=1,a21026-Flag=N;a21026-ZsAvg=2,a21026-Flag=N",  # both
        "a21026-Rtd=1,a21026-Flag=N;a21026-Rtd=2",  # a value twice
    ],
)
def test_other_repeated_groups_are_still_duplicates(cp: str) -> None:
    raw = build_frame(f"ST=31;CN=2011;MN=X;CP=&&{cp}&&")
    for strict in (True, False):
        with pytest.raises(Hj212Error, match="duplicate field") as info:
            decode(raw, strict=strict)
        assert info.value.kind == "field"


# --- harmless deviations and errors named for what happened ------------------------

SPLIT_NO_PNUM = build_frame(
    "QN=20240101000000000;ST=31;CN=2011;MN=X;Flag=6;CP=&&DataTime=20240101000000;"
    "a21026-Rtd=1,a21026-Flag=N&&"
)


def test_split_bit_without_pnum_is_tolerated_when_lenient() -> None:
    d = decode(SPLIT_NO_PNUM, strict=False)
    assert d.packet.split
    assert (d.packet.pnum, d.packet.pno) == (None, None)
    assert [(i, i.kind) for i in d.issues] == [
        ("data.Flag: bit D=2 (split) is set without PNUM and PNO", "header")
    ]
    with pytest.raises(Hj212Error) as info:
        decode(SPLIT_NO_PNUM)
    assert (info.value.kind, info.value.path) == ("header", "data.Flag")


@pytest.mark.parametrize("cut", [7, 30, 100, 105, 110])
@pytest.mark.parametrize("strict", [True, False])
def test_truncated_frame_is_a_length_error_in_both_modes(
    cut: int, strict: bool
) -> None:
    golden = decode(GOLDEN_2017[0][0]).frame
    raw = build_frame(golden.data, golden.crc)
    with pytest.raises(Hj212Error) as info:
        decode(raw[:cut], strict=strict)
    assert info.value.kind == "length"
    assert "truncated" in info.value.reason


def test_missing_line_feed_alone_is_a_trailer_matter() -> None:
    with pytest.raises(Hj212Error) as info:
        decode(STD_1062[:-1])
    assert info.value.kind == "trailer"
    d = decode(STD_1062[:-1], strict=False)
    assert [i.kind for i in d.issues] == ["trailer"]


def test_crc_error_only_when_all_bytes_are_there() -> None:
    raw = STD_1062.replace(b"RtdInterval=30", b"RtdInterval=31")
    for strict in (True, False):
        with pytest.raises(Hj212Error) as info:
            decode(raw, strict=strict)
        assert info.value.kind == "crc"


@pytest.mark.parametrize("strict", [True, False])
def test_stream_ending_inside_a_frame_is_a_length_error(strict: bool) -> None:
    buf = FrameBuffer(strict=strict)
    assert buf.feed(STD_1062[:60]) == []
    (err,) = buf.flush()
    assert isinstance(err, Hj212Error)
    assert err.kind == "length"


def test_stream_ending_after_the_crc_is_a_trailer_matter() -> None:
    for tail in (STD_1062[:-2], STD_1062[:-1]):
        buf = FrameBuffer()
        assert buf.feed(tail) == []
        (err,) = buf.flush()
        assert isinstance(err, Hj212Error)
        assert err.kind == "trailer"
        lenient = FrameBuffer(strict=False)
        assert lenient.feed(tail) == []
        (ok,) = lenient.flush()
        assert not isinstance(ok, Hj212Error)
        assert ok.packet.params == (("RtdInterval", "30"),)


def test_unknown_vendor_field_is_tolerated_and_named() -> None:
    raw = build_frame(
        "QN=20240101000000000;ST=31;CN=2011;MN=X;Flag=4;CP=&&DataTime=20240101000000;"
        "a21026-Rtd=1,a21026-Flag=N;Nh3-scr-Rtd=4.1&&"
    )
    d = decode(raw, strict=False, version=V2017)
    assert d.packet.extra_cp == (("Nh3-scr-Rtd", "4.1"),)
    assert [(i, i.kind) for i in d.issues] == [
        ("cp.Nh3-scr-Rtd: unknown field", "field")
    ]


# --- check(): what each generation defines ------------------------------------------


def _packet(**kw: object) -> Packet:
    base: dict[str, object] = {"st": "32", "cn": "2011", "mn": "X", "flag": 4}
    base.update(kw)
    return Packet(**base)  # type: ignore[arg-type]


CHECK_ERRORS = [
    # (version, packet, kind, path)
    (V2017, _packet(cn="9015"), "command", "data.CN"),
    (V2025, _packet(cn="3014", flag=8), "command", "data.CN"),
    (V2005, _packet(cn="2081", flag=None), "command", "data.CN"),
    (V2017, _packet(cn="2072"), "command", "data.CN"),
    (V2017, _packet(st="101"), "header", "data.ST"),
    (V2005, _packet(st="51", flag=None), "header", "data.ST"),
    (V2025, _packet(st="44", flag=8), "header", "data.ST"),
    (V2017, _packet(flag=8), "version", "data.Flag"),
    (V2025, _packet(flag=5), "version", "data.Flag"),
    (V2005, _packet(flag=4), "version", "data.Flag"),
    (V2017, _packet(params=(("AlarmTarget", "x"),)), "field", "cp.AlarmTarget"),
    (V2005, _packet(flag=1, params=(("MinInterval", "5"),)), "field", "cp.MinInterval"),
    (V2017, _packet(params=(("NewSK", "0"),)), "field", "cp.NewSK"),
    (V2017, _packet(params=(("RtdInterval", "3a"),)), "number", "cp.RtdInterval"),
    (V2017, _packet(params=(("SB1-RT", "1e3"),)), "number", "cp.SB1-RT"),
    (V2017, _packet(params=(("SystemTime", "20161301"),)), "datatime", "cp.SystemTime"),
    (V2017, _packet(params=(("CstartTime", "250000"),)), "datatime", "cp.CstartTime"),
    (V2017, _packet(params=(("PolId", ""),)), "field", "cp.PolId"),
    (
        V2005,
        _packet(flag=None, pollutants=(Pollutant("01", rtd=Decimal(1), eflag="A"),)),
        "field",
        "cp.01-EFlag",
    ),
]


@pytest.mark.parametrize(("version", "packet", "kind", "path"), CHECK_ERRORS)
def test_check_names_what_the_generation_does_not_define(
    version: Hj212Version, packet: Packet, kind: str, path: str
) -> None:
    with pytest.raises(Hj212Error) as info:
        check(packet, version)
    assert (info.value.kind, info.value.path) == (kind, path)
    (issue,) = check(packet, version, strict=False)
    assert (issue.kind, issue.split(":")[0]) == (kind, path)


def test_unverified_2025_additions_are_behind_their_option() -> None:
    packet = _packet(st="44", flag=8)
    assert check(packet, V2025, unverified_2025=True) == ()
    assert "unverified" in generation(V2025, unverified_2025=True).title


def test_required_reply_by_cn() -> None:
    def cn_of(packet: Packet) -> str | None:
        answer = required_reply(packet)
        return None if answer is None else answer.cn

    assert cn_of(_packet(flag=5)) == "9014"
    assert cn_of(_packet(cn="2081", flag=5)) == "9014"
    assert cn_of(_packet(cn="1013", flag=5)) == "9013"
    assert cn_of(_packet(cn="9011", flag=5)) is None
    assert cn_of(_packet(flag=4)) is None


# --- encode -> decode is identity for every command of every generation ------------

_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_VALUES: dict[FieldType, st.SearchStrategy[str]] = {
    "int": st.integers(0, 9999).map(str),
    "number": st.decimals(-(10**6), 10**6, places=2).map(lambda d: format(d, "f")),
    "time": st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(
        lambda t: t.strftime("%Y%m%d%H%M%S")
    ),
    "hhmmss": st.times().map(lambda t: t.strftime("%H%M%S")),
    "text": st.text(_ALNUM, min_size=1, max_size=12),
}


@st.composite
def version_packets(draw: st.DrawFn) -> tuple[Hj212Version, Packet]:
    version = draw(st.sampled_from(list(Hj212Version)))
    gen = GENERATIONS[version]
    names = draw(st.lists(st.sampled_from(sorted(gen.names)), unique=True, max_size=4))
    params = [(n, draw(_VALUES[gen.names[n]])) for n in names]
    for suffix in draw(st.lists(st.sampled_from(sorted(gen.suffixes)), max_size=3)):
        code = draw(st.from_regex(r"(SB|i1)[0-9]{1,4}", fullmatch=True))
        if all(k != f"{code}-{suffix}" for k, _ in params):
            params.append((f"{code}-{suffix}", draw(_VALUES[gen.suffixes[suffix]])))
    pollutants = []
    codes = st.from_regex(r"[aw][0-9]{5}|[0-9]{2,3}|[BS]0[0-9]", fullmatch=True)
    for code in draw(st.lists(codes, unique=True, max_size=3)):
        rtd = draw(_VALUES["number"].map(Decimal))
        zs = draw(st.none() | _VALUES["number"].map(Decimal))
        flag = draw(st.sampled_from("NFMSDCTB"))
        zs_flag = None
        if zs is not None and gen.separate_corrected:
            zs_flag = draw(st.none() | st.sampled_from("NFMSDCTB"))
        pollutants.append(
            Pollutant(code, rtd=rtd, zs_rtd=zs, flag=flag, zs_flag=zs_flag)
        )
    reply = draw(st.booleans())
    packet = Packet(
        st=draw(st.sampled_from(sorted(gen.systems))),
        cn=draw(st.sampled_from(sorted(gen.commands))),
        mn=draw(st.text(_ALNUM, min_size=1, max_size=24)),
        pw="123456",
        qn="20240601085857223",
        flag=gen.flag_version << 2 | int(reply),
        data_time=draw(st.none() | _VALUES["time"]),
        pollutants=tuple(pollutants),
        params=tuple(params),
    )
    return version, packet


@given(version_packets())
def test_encode_decode_identity_for_every_command_of_every_version(
    vp: tuple[Hj212Version, Packet],
) -> None:
    version, packet = vp
    raw = encode(packet)
    d = decode(raw, version=version)
    assert d.packet == packet
    assert d.issues == ()
    assert encode(d.packet) == raw
    assert from_json(json.loads(json.dumps(to_json(packet)))) == packet


def test_every_command_of_every_version_roundtrips() -> None:
    for version, gen in GENERATIONS.items():
        for cn in sorted(gen.commands):
            packet = Packet(
                st=sorted(gen.systems)[0], cn=cn, mn="X", flag=gen.flag_version << 2
            )
            assert decode(encode(packet), version=version).packet == packet, cn


# --- the regression corpus of real captures -----------------------------------------


def _corpus() -> list[tuple[str, str, str, str, str]]:
    out = []
    source = ""
    for line in CORPUS.read_text(encoding="utf-8").splitlines():
        if line.startswith("# source: "):
            source = line.removeprefix("# source: ")
        elif line and not line.startswith("#"):
            version, strict, lenient, frame = line.split(" ", 3)
            out.append((source, version, strict, lenient, frame))
    return out


def _outcome(frame: str, version: str, *, strict: bool) -> str:
    try:
        d = decode(frame + "\r\n", strict=strict, version=Hj212Version(version))
    except Hj212Error as err:
        return f"reject:{err.kind}"
    if d.issues:
        return "tolerated:" + "+".join(sorted({i.kind for i in d.issues}))
    return "ok"


def test_corpus_outcomes_and_counts_per_kind(
    capsys: pytest.CaptureFixture[str],
) -> None:
    corpus = _corpus()
    assert len(corpus) >= 30
    counts: dict[str, Counter[str]] = {"strict": Counter(), "lenient": Counter()}
    for source, version, strict, lenient, frame in corpus:
        got = (
            _outcome(frame, version, strict=True),
            _outcome(frame, version, strict=False),
        )
        assert got == (strict, lenient), (source, frame[:60])
        counts["strict"][strict] += 1
        counts["lenient"][lenient] += 1
    with capsys.disabled():
        for mode, counter in counts.items():
            print(f"\nhj212 corpus {mode}: {dict(sorted(counter.items()))}")
    # Named for what happened: only frames whose bytes are all there are crc errors.
    assert counts["lenient"]["reject:crc"] == 10
    assert counts["lenient"]["reject:length"] == 1
    assert counts["strict"]["ok"] == 12


# --- CLI, JSON form, configuration ----------------------------------------------------


def test_cli_decode_with_version(capsys: pytest.CaptureFixture[str]) -> None:
    text = STD_1062.decode().rstrip()
    assert cli_main(["decode", "--version", "2017", text]) == 0
    obj = json.loads(capsys.readouterr().out)
    assert obj["params"] == [["RtdInterval", "30"]]
    assert cli_main(["decode", "--version", "2005", text]) == 1
    assert "not a command" not in capsys.readouterr().err  # 1062 is a 2005 command
    heartbeat = _std25("9015", "").decode().rstrip()
    assert cli_main(["decode", "--version", "2017", "--lenient", heartbeat]) == 0
    assert "tolerated: data.CN: CN=9015" in capsys.readouterr().err


def test_json_form_keeps_zs_flag() -> None:
    packet = decode(build_frame(SEGMENT_2005)).packet
    obj = to_json(packet)
    assert obj["pollutants"]["01"] == {
        "Rtd": "1.48",
        "ZsRtd": "2.47",
        "Flag": "N",
        "ZsFlag": "D",
    }
    assert from_json(obj) == packet


# --- the listener: version per logger, non-data commands, counts --------------------

MN = "LOGGER2005"


async def _run(
    mapping: LoggerMapping, *frames: bytes, strict: bool = True
) -> tuple[Hj212Listener, list[bytes]]:
    got: list[object] = []
    lst = Hj212Listener({MN: mapping}, lambda dev, s: got.append(s), strict=strict)
    replies: list[bytes] = []
    async with lst:
        reader, writer = await asyncio.open_connection("127.0.0.1", lst.port)
        for raw in frames:
            writer.write(raw)
            await writer.drain()
            if b"Flag=5" in raw or b"Flag=9" in raw:
                replies.append(await asyncio.wait_for(reader.readuntil(b"\r\n"), 5))
        writer.close()
        await writer.wait_closed()
        await until(lambda: lst.stats.connections_open == 0)
    return lst, replies


def _mapped(version: Hj212Version) -> LoggerMapping:
    return LoggerMapping(
        device_id="cems-1",
        metrics={"02": "so2", "a21026": "so2"},
        corrected={"02": "so2_corrected", "a21026": "so2_corrected"},
        version=version,
    )


def _logger_frame(cn: str, cp: str, flag: int) -> bytes:
    return build_frame(
        f"QN=20240101080000000;ST=31;CN={cn};PW=123456;MN={MN};Flag={flag};CP=&&{cp}&&"
    )


async def test_listener_accepts_state_and_boot_packets_and_answers_them() -> None:
    lst, replies = await _run(
        _mapped(V2017),
        _logger_frame("2021", "DataTime=20240101080000;SB1-RS=1;SB2-RS=0", 5),
        _logger_frame("2081", "DataTime=20240101080000;RestartTime=20240101070000", 5),
        _logger_frame("9011", "QnRtn=1", 4),
    )
    assert not lst.stats.frames_rejected
    assert lst.stats.frames_other == {"2021": 1, "2081": 1, "9011": 1}
    assert [decode(r).packet.cn for r in replies] == ["9014", "9014"]
    assert lst.stats.replies_sent == 2


async def test_listener_2025_heartbeat_gets_a_notify_reply() -> None:
    lst, replies = await _run(_mapped(V2025), _logger_frame("9015", "", 9))
    assert lst.stats.frames_other == {"9015": 1}
    (reply,) = replies
    assert (decode(reply).packet.cn, decode(reply).packet.flag) == ("9013", 8)


async def test_listener_rejects_by_the_loggers_version_and_counts_by_kind() -> None:
    data = "DataTime=20240101080000;a21026-Rtd=1,a21026-Flag=N"
    lst, _ = await _run(
        _mapped(V2017),
        _logger_frame("9015", "", 8),  # a 2025 command from a 2017 logger
        _logger_frame("2011", data, 8),  # 2025's Flag from a 2017 logger
        _logger_frame("2011", data, 4),
    )
    assert lst.stats.frames_rejected == {"command": 1, "version": 1}
    assert lst.stats.frames_ok == 1


async def test_listener_2005_logger_corrected_group_and_lenient_tolerations() -> None:
    cp = (
        "DataTime=20240101080000;02-Rtd=3.05,02-Flag=N;02-ZsRtd=5.08,02-Flag=D;"
        "Vendor-X=1"
    )
    lst, _ = await _run(_mapped(V2005), _logger_frame("2011", cp, 2), strict=False)
    assert not lst.stats.frames_rejected
    assert lst.stats.frames_ok == 1
    # Flag=2: split bit without PNUM/PNO; Vendor-X: unknown field
    assert lst.stats.tolerated == {"header": 1, "field": 1}


def test_loggers_version_in_the_agent_config(tmp_path: Path) -> None:
    from edge_agent.config import load_config

    text = (
        "site: {park: park1, enterprise: coal-power}\n"
        "broker: {host: 127.0.0.1, client_id: edge-1}\n"
        "outbox: {path: outbox.db}\n"
        "hj212:\n  port: 9001\n  loggers:\n"
        '    - mn: "A1"\n      device: stack-1\n      version: 2005\n'
        "      pollutants: {'02': {metric: so2}}\n"
        '    - mn: "A2"\n      device: stack-2\n'
        "      pollutants: {a21026: {metric: so2}}\n"
    )
    path = tmp_path / "agent.yaml"
    path.write_text(text, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.hj212 is not None
    assert {mn: m.version for mn, m in cfg.hj212.mappings().items()} == {
        "A1": V2005,
        "A2": V2017,
    }
    path.write_text(text.replace("version: 2005", "version: 2018"), encoding="utf-8")
    with pytest.raises(Exception, match="version"):
        load_config(path)
