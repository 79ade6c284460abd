"""Clocks are injected: domain and pipeline code never reads the wall clock itself."""

from __future__ import annotations

import time
from collections.abc import Callable
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MsClock = Callable[[], int]
"""Returns the current time as integer UTC milliseconds."""


def system_ms() -> int:
    return time.time_ns() // 1_000_000


def zone(name: str) -> ZoneInfo:
    """The IANA time zone ``name`` (e.g. ``Asia/Shanghai``), else ValueError.

    Whatever the text: a directory of the zone database (``Asia``) raises
    IsADirectoryError inside ZoneInfo, a NUL byte ValueError, a path outside it
    ValueError; all become "unknown time zone".
    """
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ValueError(f"unknown time zone {name!r}") from None


def check_timezone(name: str) -> str:
    """``name`` if it is an IANA time zone (e.g. ``Asia/Shanghai``), else ValueError."""
    zone(name)
    return name
