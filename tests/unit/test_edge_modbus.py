"""Register codec and read planning: golden vectors, round trips, invariants."""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.config import REGISTER_WIDTH, RegisterConfig
from edge_agent.modbus import decode_value, encode_value, plan_reads, tidy


def reg(type_: str = "u16", address: int = 0, **kw: Any) -> RegisterConfig:
    # The metric/unit are irrelevant to the codec; any valid pair will do.
    return RegisterConfig.model_validate(
        {
            "address": address,
            "type": type_,
            "metric": "active_power",
            "unit": "kW",
            **kw,
        }
    )


# Words as a Modbus master receives them, written out by hand from the byte layout
# tables in vendor manuals (A B C D = big-endian bytes of the value).
GOLDEN = [
    # type, word_order, byte_order, words, value
    ("u16", "big", "big", [0x1234], 0x1234),
    ("u16", "big", "little", [0x3412], 0x1234),
    ("i16", "big", "big", [0xFFFF], -1),
    ("i16", "big", "big", [0x8000], -32768),
    ("i16", "big", "little", [0x0080], -32768),
    ("u32", "big", "big", [0x0102, 0x0304], 0x01020304),  # ABCD
    ("u32", "little", "big", [0x0304, 0x0102], 0x01020304),  # CDAB
    ("u32", "big", "little", [0x0201, 0x0403], 0x01020304),  # BADC
    ("u32", "little", "little", [0x0403, 0x0201], 0x01020304),  # DCBA
    ("u32", "big", "big", [0xFFFF, 0xFFFF], 4294967295),
    ("i32", "big", "big", [0xFFFF, 0xFFFE], -2),
    ("i32", "little", "big", [0xFFFE, 0xFFFF], -2),
    ("i32", "big", "big", [0x8000, 0x0000], -(2**31)),
    ("f32", "big", "big", [0x3FC0, 0x0000], 1.5),
    ("f32", "little", "big", [0x0000, 0x3FC0], 1.5),
    ("f32", "big", "little", [0xC03F, 0x0000], 1.5),
    ("f32", "little", "little", [0x0000, 0xC03F], 1.5),
    ("f32", "big", "big", [0xC010, 0x0000], -2.25),
    ("f32", "big", "big", [0x42F6, 0xE979], 123.4560012817383),
    ("u64", "big", "big", [0x0000, 0x0001, 0x0002, 0x0003], 0x000000010002_0003),
    ("u64", "little", "big", [0x0003, 0x0002, 0x0001, 0x0000], 0x000000010002_0003),
    ("u64", "big", "little", [0x0000, 0x0100, 0x0200, 0x0300], 0x000000010002_0003),
    ("i64", "big", "big", [0xFFFF, 0xFFFF, 0xFFFF, 0xFFFD], -3),
    ("i64", "little", "little", [0xFDFF, 0xFFFF, 0xFFFF, 0xFFFF], -3),
    ("f64", "big", "big", [0x3FF8, 0x0000, 0x0000, 0x0000], 1.5),
    ("f64", "little", "big", [0x0000, 0x0000, 0x0000, 0x3FF8], 1.5),
    ("f64", "big", "big", [0x4059, 0x0000, 0x0000, 0x0000], 100.0),
]


@pytest.mark.parametrize(("type_", "wo", "bo", "words", "expected"), GOLDEN)
def test_decode_golden(
    type_: str, wo: str, bo: str, words: list[int], expected: float
) -> None:
    spec = reg(type_, word_order=wo, byte_order=bo)
    assert decode_value(words, spec) == expected


@pytest.mark.parametrize(("type_", "wo", "bo", "words", "value"), GOLDEN)
def test_encode_golden(
    type_: str, wo: str, bo: str, words: list[int], value: float
) -> None:
    spec = reg(type_, word_order=wo, byte_order=bo)
    assert encode_value(value, spec) == words


@pytest.mark.parametrize(
    ("type_", "words", "scale", "offset", "expected"),
    [
        ("u16", [1000], 0.1, -40.0, 60.0),
        ("i16", [0xFF9C], 0.5, 10.0, -40.0),  # -100 * 0.5 + 10
        ("u32", [0x0000, 0x3039], 0.01, 0.0, 123.45),  # 12345 * 0.01, no float noise
        ("u32", [0x03BF, 0x3D6F], 0.001, 0.0, 62864.751),  # 62864751 * 0.001
        ("f32", [0x3FC0, 0x0000], 1000.0, 0.0, 1500.0),  # MW register read as kW
        ("i32", [0xFFFF, 0xFC18], 1.0, 273.15, -726.85),  # -1000 + 273.15
    ],
)
def test_decode_scale_and_offset(
    type_: str, words: list[int], scale: float, offset: float, expected: float
) -> None:
    assert decode_value(words, reg(type_, scale=scale, offset=offset)) == expected


@pytest.mark.parametrize(
    ("type_", "words"), [("u32", [1]), ("u16", [1, 2]), ("f64", [0])]
)
def test_decode_rejects_wrong_word_count(type_: str, words: list[int]) -> None:
    with pytest.raises(ValueError, match="registers"):
        decode_value(words, reg(type_))


def test_decode_rejects_word_out_of_range() -> None:
    with pytest.raises(struct.error):
        decode_value([0x10000], reg("u16"))


def test_encode_wraps_counters_like_a_meter() -> None:
    assert encode_value(2**32 + 5, reg("u32")) == [0, 5]
    assert encode_value(-1, reg("u16")) == [0xFFFF]
    assert decode_value(encode_value(40000, reg("i16")), reg("i16")) == 40000 - 65536


def test_tidy_keeps_integers_exact_up_to_2_53() -> None:
    assert tidy(2.0**53 - 1) == 2**53 - 1
    assert tidy(0.1 + 0.2) == 0.3
    assert tidy(1.7976931348623157e308) == 1.7976931348623157e308  # not inf


ORDERS = st.sampled_from(["big", "little"])


@given(
    type_=st.sampled_from(["u16", "i16", "u32", "i32", "u64", "i64"]),
    wo=ORDERS,
    bo=ORDERS,
    data=st.data(),
)
def test_integer_round_trip(type_: str, wo: str, bo: str, data: st.DataObject) -> None:
    bits = 16 * REGISTER_WIDTH[type_]
    lo, hi = (
        (0, 2**bits - 1)
        if type_[0] == "u"
        else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    )
    # Beyond 2**53 a double cannot hold every integer; meters never count that far.
    value = data.draw(st.integers(max(lo, -(2**53)), min(hi, 2**53)))
    spec = reg(type_, word_order=wo, byte_order=bo)
    words = encode_value(value, spec)
    assert len(words) == spec.width
    assert all(0 <= w <= 0xFFFF for w in words)
    assert decode_value(words, spec) == value


@given(
    value=st.floats(allow_nan=False, allow_infinity=False, width=32),
    wo=ORDERS,
    bo=ORDERS,
)
def test_f32_round_trip(value: float, wo: str, bo: str) -> None:
    spec = reg("f32", word_order=wo, byte_order=bo)
    assert decode_value(encode_value(value, spec), spec) == pytest.approx(
        value, rel=1e-15
    )


@given(value=st.floats(allow_nan=False, allow_infinity=False), wo=ORDERS, bo=ORDERS)
def test_f64_round_trip(value: float, wo: str, bo: str) -> None:
    spec = reg("f64", word_order=wo, byte_order=bo)
    assert decode_value(encode_value(value, spec), spec) == pytest.approx(
        value, rel=1e-15
    )


@given(
    type_=st.sampled_from(sorted(REGISTER_WIDTH)),
    wo=ORDERS,
    bo=ORDERS,
    words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_decoder_never_crashes_on_arbitrary_words(
    type_: str, wo: str, bo: str, words: list[int]
) -> None:
    spec = reg(type_, word_order=wo, byte_order=bo, scale=0.01)
    value = decode_value(words[: spec.width], spec)
    assert isinstance(value, float)
    assert math.isfinite(value) or type_ in ("f32", "f64")


# --- read planning ----------------------------------------------------------


def spans(specs: list[RegisterConfig]) -> list[tuple[str, int, int]]:
    return [(b.table, b.address, b.count) for b in plan_reads(specs)]


@pytest.mark.parametrize(
    ("specs", "expected"),
    [
        # a typical energy meter: one contiguous map, one read
        (
            [reg("u32", 0), reg("f32", 2), reg("u32", 4), reg("i16", 6)],
            [("holding", 0, 7)],
        ),
        # the order in the config does not matter
        (
            [reg("i16", 6), reg("u32", 0), reg("u32", 4), reg("f32", 2)],
            [("holding", 0, 7)],
        ),
        # a gap is never bridged: unmapped addresses make real meters fail the read
        ([reg("u16", 0), reg("u16", 5)], [("holding", 0, 1), ("holding", 5, 1)]),
        # overlapping views of the same registers share one read
        ([reg("u32", 0), reg("u16", 1)], [("holding", 0, 2)]),
        # holding and input registers are different function codes
        (
            [reg("u16", 0), reg("u16", 1, table="input")],
            [("holding", 0, 1), ("input", 1, 1)],
        ),
        # at most 125 registers per read: 70 contiguous u32 need two reads
        (
            [reg("u32", 2 * i) for i in range(70)],
            [("holding", 0, 124), ("holding", 124, 16)],
        ),
        ([reg("u16", i) for i in range(125)], [("holding", 0, 125)]),
        (
            [reg("u16", i) for i in range(126)],
            [("holding", 0, 125), ("holding", 125, 1)],
        ),
    ],
)
def test_plan_reads(
    specs: list[RegisterConfig], expected: list[tuple[str, int, int]]
) -> None:
    assert spans(specs) == expected


@given(
    st.lists(
        st.tuples(
            st.integers(0, 400), st.sampled_from(sorted(REGISTER_WIDTH)), st.booleans()
        ),
        min_size=1,
        max_size=60,
    )
)
def test_plan_reads_covers_every_register_once_within_limits(
    items: list[tuple[int, str, bool]],
) -> None:
    specs = [reg(t, a, table="input" if i else "holding") for a, t, i in items]
    blocks = plan_reads(specs)
    covered = [s for b in blocks for s in b.registers]
    assert sorted(map(id, covered)) == sorted(map(id, specs))
    for b in blocks:
        assert 1 <= b.count <= 125
        assert all(s.table == b.table for s in b.registers)
        assert all(
            b.address <= s.address and s.address + s.width <= b.address + b.count
            for s in b.registers
        )
        # no gap inside a block: every address is part of some register
        used = {a for s in b.registers for a in range(s.address, s.address + s.width)}
        assert used == set(range(b.address, b.address + b.count))
