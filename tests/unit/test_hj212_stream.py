"""FrameBuffer: TCP reads cut anywhere give the same frames and errors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.hj212 import (
    Decoded,
    Frame,
    FrameBuffer,
    Hj212Error,
    Packet,
    Pollutant,
    build_frame,
    encode,
)

GOLDEN = (
    b"##0109ST=32;CN=2011;PW=123456;MN=NJGDKYYC202101q0001w0001;CP=&&"
    b"DataTime=20210305003817000;ele01-Rtd=1;ele02-Rtd=0&&8c41\r\n"
)
OTHER = encode(
    Packet(
        st="31",
        cn="2051",
        mn="MN1",
        flag=4,
        pollutants=(Pollutant("a21026", avg=Decimal("2.50"), flag="N"),),
    )
)
BAD_CRC = GOLDEN.replace(b"8c41", b"0000")

Event = tuple[object, ...]


def _events(results: list[Decoded | Hj212Error]) -> list[Event]:
    """Comparable form: exceptions compare by identity."""
    return [
        ("ok", r.packet, r.frame, r.issues)
        if isinstance(r, Decoded)
        else ("err", r.kind, r.path, r.reason)
        for r in results
    ]


def _all_at_once(data: bytes, *, strict: bool = True) -> list[Event]:
    buf = FrameBuffer(strict=strict)
    return _events(buf.feed(data) + buf.flush())


def _in_pieces(data: bytes, cuts: list[int], *, strict: bool = True) -> list[Event]:
    buf = FrameBuffer(strict=strict)
    out: list[Decoded | Hj212Error] = []
    prev = 0
    for cut in [*sorted(cuts), len(data)]:
        out += buf.feed(data[prev:cut])
        prev = cut
    return _events(out + buf.flush())


def test_frames_in_one_read() -> None:
    events = _all_at_once(GOLDEN + OTHER + GOLDEN)
    assert [e[0] for e in events] == ["ok", "ok", "ok"]
    assert events[1][1] == Packet(
        st="31",
        cn="2051",
        mn="MN1",
        flag=4,
        pollutants=(Pollutant("a21026", avg=Decimal("2.50"), flag="N"),),
    )


def test_garbage_between_frames_is_skipped_and_reported() -> None:
    events = _all_at_once(b"\x00junk#" + GOLDEN + b"\r\n#x" + OTHER + b"tail")
    assert events[0] == (
        "err",
        "stream",
        "stream[0]",
        "skipped 6 bytes before '##': b'\\x00junk#'",
    )
    assert events[1][0] == "ok"
    assert events[2][:2] == ("err", "stream")
    assert "skipped 4 bytes" in str(events[2][3])
    assert events[3][0] == "ok"
    assert events[4][:2] == ("err", "stream")
    assert "skipped 4 bytes" in str(events[4][3])
    assert len(events) == 5


def test_bad_crc_frame_is_consumed_whole() -> None:
    events = _all_at_once(BAD_CRC + GOLDEN)
    assert events[0][:3] == ("err", "crc", "frame.crc")
    assert events[1][0] == "ok"
    assert len(events) == 2


@pytest.mark.parametrize(
    ("prefix", "kind"),
    [
        (b"##01x9abc", "length"),
        (b"##0005abc", "trailer"),  # declared length too short: no CRLF where due
    ],
)
def test_broken_frame_then_resync(prefix: bytes, kind: str) -> None:
    events = _all_at_once(prefix + GOLDEN)
    assert events[0][1] == kind
    assert events[-1][0] == "ok"
    assert events[-1][2] == Frame(GOLDEN[6:-6].decode(), "8c41")


def test_oversize_frame_is_refused_and_buffer_is_bounded() -> None:
    buf = FrameBuffer(max_data_length=50)
    results = buf.feed(GOLDEN)
    assert isinstance(results[0], Hj212Error)
    assert results[0].reason.endswith("declared 109 bytes, limit 50")
    huge = FrameBuffer()
    for _ in range(30):
        huge.feed(b"##9999" + b"x" * 999)
        assert huge.buffered <= huge.max_buffer
    assert buf.buffered <= buf.max_buffer


def test_max_data_length_is_checked() -> None:
    with pytest.raises(ValueError, match="max_data_length"):
        FrameBuffer(max_data_length=10_000)


def test_lenient_accepts_missing_crlf() -> None:
    data = GOLDEN[:-2] + OTHER + GOLDEN[:-2]
    strict = _all_at_once(data)
    assert strict[0][:2] == ("err", "trailer")
    lenient = _all_at_once(data, strict=False)
    assert [e[0] for e in lenient] == ["ok", "ok", "ok"]
    assert lenient[0][3] == ("frame.trailer: missing '\\r\\n'",)


def test_flush_reports_an_incomplete_frame() -> None:
    buf = FrameBuffer()
    assert buf.feed(GOLDEN[:50]) == []
    (err,) = buf.flush()
    assert isinstance(err, Hj212Error)
    assert "inside a frame (50 bytes)" in err.reason
    assert buf.buffered == 0


STREAM = (
    b"xx#" + GOLDEN + OTHER + b"##01x9" + BAD_CRC + b"#" + GOLDEN[:-2] + OTHER + b"##00"
)


@pytest.mark.parametrize("strict", [True, False])
def test_every_split_position_gives_the_same_result(strict: bool) -> None:
    whole = _all_at_once(STREAM, strict=strict)
    assert sum(e[0] == "ok" for e in whole) >= 3
    for cut in range(len(STREAM) + 1):
        assert _in_pieces(STREAM, [cut], strict=strict) == whole, cut
    assert _in_pieces(STREAM, list(range(len(STREAM))), strict=strict) == whole


_chunks = st.lists(
    st.sampled_from([GOLDEN, OTHER, BAD_CRC, GOLDEN[:-2], b"##", b"#", b"##0"])
    | st.binary(max_size=12),
    max_size=8,
)


@given(_chunks, st.lists(st.integers(0, 400), max_size=6), st.booleans())
def test_random_splits_give_the_same_result(
    chunks: list[bytes], cuts: list[int], strict: bool
) -> None:
    data = b"".join(chunks)
    cuts = [c for c in cuts if c <= len(data)]
    assert _in_pieces(data, cuts, strict=strict) == _all_at_once(data, strict=strict)


@given(st.lists(st.binary(max_size=64), max_size=10), st.booleans())
def test_arbitrary_bytes_never_raise(reads: list[bytes], strict: bool) -> None:
    buf = FrameBuffer(strict=strict, max_data_length=100)
    for data in reads:
        for r in buf.feed(data):
            assert isinstance(r, Decoded | Hj212Error)
        assert buf.buffered <= buf.max_buffer
    buf.flush()


def test_built_frame_roundtrips_through_the_stream() -> None:
    frame = build_frame("ST=32;CN=2011;MN=X;CP=&&&&")
    (result,) = FrameBuffer().feed(frame)
    assert isinstance(result, Decoded)
    assert result.packet.mn == "X"
