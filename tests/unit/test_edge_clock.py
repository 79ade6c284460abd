"""The agent's clock check (edge_agent.clockcheck), hand-computed."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from edge_agent.clockcheck import clock_problem
from edge_agent.config import ClockConfig
from smartpark import wire
from smartpark.errors import PayloadError

NOW = int(datetime(2026, 12, 5, 12, 0, tzinfo=UTC).timestamp() * 1000)
S = 1000
CFG = ClockConfig()  # max skew 60 s, unset before 2025-01-01, beacons for 300 s


@pytest.mark.parametrize(
    ("now_ms", "offset_ms", "heard_ms", "expected"),
    [
        (NOW, None, None, None),  # no beacon heard: no verdict on skew
        (NOW, 0, NOW - 5 * S, None),
        (NOW, 60 * S, NOW, None),  # exactly the allowed skew
        (NOW, 61 * S, NOW, "clock 61 s behind the platform's"),
        (NOW, -600 * S, NOW - 10 * S, "clock 600 s ahead of the platform's"),
        (NOW, -600 * S, NOW - 301 * S, None),  # the beacon is too old to judge by
        (946_684_800_000, None, None, "clock unset"),  # 2000-01-01, no RTC
        (0, 5 * S, 0, "clock unset"),  # 1970 wins over a skew
    ],
)
def test_clock_problem(
    now_ms: int, offset_ms: int | None, heard_ms: int | None, expected: str | None
) -> None:
    got = clock_problem(CFG, now_ms=now_ms, offset_ms=offset_ms, heard_ms=heard_ms)
    if expected is None:
        assert got is None
    else:
        assert got is not None
        assert got.startswith(expected), got


def test_clock_beacons_round_trip_and_bad_ones_are_refused() -> None:
    assert wire.decode_clock(wire.encode_clock(NOW)) == NOW
    for bad in (b"", b"[]", b'{"ts_ms": "soon"}', b'{"ts_ms": 5}', b'{"ts_ms": true}'):
        with pytest.raises(PayloadError):
            wire.decode_clock(bad)
