"""HJ 212 codec properties: round trip of generated packets; no crash on any input."""

from __future__ import annotations

import contextlib
from datetime import datetime

from hypothesis import given
from hypothesis import strategies as st

from edge_agent.hj212 import Hj212Error, Packet, Pollutant, build_frame, decode, encode

GOLDEN = (
    b"##0109ST=32;CN=2011;PW=123456;MN=NJGDKYYC202101q0001w0001;CP=&&"
    b"DataTime=20210305003817000;ele01-Rtd=1;ele02-Rtd=0&&8c41\r\n"
)


_ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
_times = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31))
_numbers = st.decimals(
    min_value=-(10**9), max_value=10**9, places=3, allow_nan=False, allow_infinity=False
)


@st.composite
def _pollutant(draw: st.DrawFn, code: str) -> Pollutant:
    numeric = (
        "rtd",
        "min",
        "avg",
        "max",
        "cou",
        "zs_rtd",
        "zs_min",
        "zs_avg",
        "zs_max",
    )
    chosen = draw(st.sets(st.sampled_from(numeric), min_size=1, max_size=4))
    kwargs: dict[str, object] = {n: draw(_numbers) for n in chosen}
    kwargs["flag"] = draw(st.none() | st.sampled_from("NFMSDCTB"))
    kwargs["eflag"] = draw(st.none() | st.text(_ALNUM, min_size=1, max_size=4))
    kwargs["sample_time"] = draw(
        st.none() | _times.map(lambda t: t.strftime("%Y%m%d%H%M%S"))
    )
    return Pollutant(code, **kwargs)  # type: ignore[arg-type]


@st.composite
def packets(draw: st.DrawFn) -> Packet:
    flag = draw(st.none() | st.integers(0, 255))
    pnum = pno = None
    if flag is not None and flag & 2:
        pnum = draw(st.integers(1, 99))
        pno = draw(st.integers(1, pnum))
    codes = draw(
        st.lists(
            st.from_regex(r"[aw][0-9]{5}", fullmatch=True), unique=True, max_size=4
        )
    )
    return Packet(
        st=draw(st.from_regex(r"[0-9]{2}", fullmatch=True)),
        cn=draw(st.from_regex(r"[0-9]{4}", fullmatch=True)),
        mn=draw(st.text(_ALNUM, min_size=1, max_size=24)),
        pw=draw(st.none() | st.text(_ALNUM, max_size=8)),
        qn=draw(st.none() | _times.map(lambda t: t.strftime("%Y%m%d%H%M%S%f")[:17])),
        flag=flag,
        pnum=pnum,
        pno=pno,
        data_time=draw(
            st.none()
            | _times.map(lambda t: t.strftime("%Y%m%d%H%M%S"))
            | _times.map(lambda t: t.strftime("%Y%m%d%H%M%S%f")[:17])
        ),
        pollutants=tuple(draw(_pollutant(c)) for c in codes),
    )


@given(packets())
def test_decode_encode_roundtrip(packet: Packet) -> None:
    raw = encode(packet)
    d = decode(raw)
    assert d.packet == packet
    assert encode(d.packet) == raw


@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_raise_hj212error(raw: bytes) -> None:
    for strict in (True, False):
        with contextlib.suppress(Hj212Error):
            decode(raw, strict=strict)


@given(st.text(max_size=200))
def test_arbitrary_segments_with_good_crc_only_raise_hj212error(segment: str) -> None:
    for strict in (True, False):
        with contextlib.suppress(Hj212Error):
            decode(build_frame(segment), strict=strict)


@given(st.binary(max_size=20), st.integers(0, len(GOLDEN)))
def test_mutated_golden_only_raises_hj212error(junk: bytes, at: int) -> None:
    with contextlib.suppress(Hj212Error):
        decode(GOLDEN[:at] + junk + GOLDEN[at:])
