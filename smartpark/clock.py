"""Clocks are injected: domain and pipeline code never reads the wall clock itself."""

from __future__ import annotations

import time
from collections.abc import Callable

MsClock = Callable[[], int]
"""Returns the current time as integer UTC milliseconds."""


def system_ms() -> int:
    return time.time_ns() // 1_000_000
