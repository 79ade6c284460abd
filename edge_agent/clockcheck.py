"""Is the agent's clock good enough to stamp readings with? (pure)

The agent stamps every Modbus reading with its own clock, and a reading's time is
evidence (an hourly mean, a quota day, an offline alert). :func:`clock_problem`
says what is wrong with the clock, if anything:

- **unset**: it reads before ``clock.min_valid`` (a gateway without a
  battery-backed clock comes back from a power cut in 1970 or 2000);
- **off**: the platform's clock beacon (``sp/v1/clock``, published by the bridge),
  heard within ``clock.beacon_max_age_s``, is more than ``clock.max_skew_s`` away.

No beacon heard (the platform does not publish one, or the broker is away) is no
verdict: the unset check still applies.
"""

from __future__ import annotations

from edge_agent.config import ClockConfig


def clock_problem(
    cfg: ClockConfig,
    *,
    now_ms: int,
    offset_ms: int | None,
    heard_ms: int | None,
) -> str | None:
    """Why the clock must not stamp readings now, or None if it may.

    ``offset_ms`` is the platform's clock minus ours at the last beacon, heard at
    ``heard_ms`` (our clock); None if no beacon was heard.
    """
    floor_ms = int(cfg.min_valid.timestamp() * 1000)
    if now_ms < floor_ms:
        return (
            f"clock unset: it reads {now_ms} ms since 1970, before"
            f" {cfg.min_valid.isoformat()}; set the gateway's time (NTP)"
        )
    if offset_ms is None or heard_ms is None:
        return None
    if abs(now_ms - heard_ms) > cfg.beacon_max_age_s * 1000:
        return None  # the last beacon is too old to judge by
    if abs(offset_ms) > cfg.max_skew_s * 1000:
        side = "behind" if offset_ms > 0 else "ahead of"
        return (
            f"clock {abs(offset_ms) / 1000:.0f} s {side} the platform's (more than"
            f" clock.max_skew_s = {cfg.max_skew_s:g} s); fix the gateway's time (NTP)"
        )
    return None
