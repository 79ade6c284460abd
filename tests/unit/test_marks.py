"""The marks vocabulary: kinds, their default validity, HJ 212 flags as kinds,
and the checks on a mark's period."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from smartpark.marks import (
    MarkKind,
    clip,
    flags_of,
    kind_of_flag,
    period_problem,
    resolve_invalid,
)

T = datetime(2026, 3, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("flag", "kind"),
    [
        ("F", "stopped"), ("M", "maintenance"), ("S", "other"), ("D", "fault"),
        ("C", "calibration"), ("T", "out_of_range"), ("B", "comms_fault"),
    ],
)  # fmt: skip
def test_each_flag_is_a_kind(flag: str, kind: str) -> None:
    assert kind_of_flag(flag) == kind


@pytest.mark.parametrize("flag", ["N", "X", "", "c"])
def test_normal_or_unknown_flags_are_no_mark(flag: str) -> None:
    with pytest.raises(ValueError, match=r"not marked|is not a valid"):
        kind_of_flag(flag)


@pytest.mark.parametrize(
    ("kind", "flags"),
    [
        (MarkKind.CALIBRATION, ("C",)), (MarkKind.OTHER, ("S",)),
        (MarkKind.STARTUP, ()), (MarkKind.PLANNED_MAINTENANCE, ()),
        (MarkKind.MAINTENANCE, ("M",)),
    ],
)  # fmt: skip
def test_flags_of_a_kind(kind: MarkKind, flags: tuple[str, ...]) -> None:
    assert flags_of(kind) == flags


@pytest.mark.parametrize("kind", [k for k in MarkKind if k is not MarkKind.OTHER])
def test_every_kind_but_other_is_invalid_by_default(kind: MarkKind) -> None:
    assert resolve_invalid(kind, None) is True
    assert resolve_invalid(kind, False) is False


def test_other_must_say() -> None:
    with pytest.raises(ValueError, match="has no default"):
        resolve_invalid(MarkKind.OTHER, None)
    assert resolve_invalid(MarkKind.OTHER, False) is False


@pytest.mark.parametrize(
    ("start", "end", "problem"),
    [
        (T, T + DAY, None),
        (T, T + 31 * DAY, None),
        (T, T + 31 * DAY + timedelta(seconds=1), "end: a mark may span at most 31"),
        (T, T, "end: must be after start"),
        (T + DAY, T, "end: must be after start"),
        (T.replace(tzinfo=None), T + DAY, "start: needs a UTC offset"),
        (T, (T + DAY).replace(tzinfo=None), "end: needs a UTC offset"),
        # 08:00 in +08:00 is 00:00 UTC: the same instant
        (T, T.astimezone(timezone(timedelta(hours=8))), "end: must be after start"),
    ],
)
def test_period_problems(start: datetime, end: datetime, problem: str | None) -> None:
    found = period_problem(start, end, 31 * DAY)
    if problem is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(problem), found


@pytest.mark.parametrize(
    ("period", "range_", "clipped"),
    [
        ((0, 10), (2, 5), (2, 5)), ((0, 3), (2, 5), (2, 3)), ((3, 9), (2, 5), (3, 5)),
        ((0, 2), (2, 5), None), ((5, 6), (2, 5), None),
    ],
)  # fmt: skip
def test_clip(
    period: tuple[int, int], range_: tuple[int, int], clipped: tuple[int, int] | None
) -> None:
    h = timedelta(hours=1)
    got = clip(T + period[0] * h, T + period[1] * h, T + range_[0] * h,
               T + range_[1] * h)  # fmt: skip
    want = None if clipped is None else (T + clipped[0] * h, T + clipped[1] * h)
    assert got == want
