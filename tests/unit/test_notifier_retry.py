"""Delivery outcome classification and the retry schedule (notifier.retry)."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from notifier.retry import (
    DEFAULT_SCHEDULE,
    HOUR_MS,
    MINUTE_MS,
    SECOND_MS,
    Outcome,
    TransportError,
    classify,
    next_attempt,
    parse_retry_after,
)

NOW_MS = 1_700_000_000_000
NOW_S = NOW_MS / 1000


class Fixed:
    """An rng whose uniform(a, b) returns a chosen point of [a, b] (0 = a, 1 = b)."""

    def __init__(self, where: float) -> None:
        self.where = where

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.where


MIDDLE = Fixed(0.5)  # no jitter


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, Outcome.DELIVERED),
        (201, Outcome.DELIVERED),
        (204, Outcome.DELIVERED),
        (299, Outcome.DELIVERED),
        (100, Outcome.RETRY),
        (301, Outcome.RETRY),
        (302, Outcome.RETRY),
        (307, Outcome.RETRY),
        (400, Outcome.RETRY),
        (401, Outcome.RETRY),
        (403, Outcome.RETRY),
        (404, Outcome.RETRY),
        (408, Outcome.RETRY),
        (410, Outcome.DISABLE_ENDPOINT),
        (413, Outcome.RETRY),
        (429, Outcome.RETRY),
        (500, Outcome.RETRY),
        (502, Outcome.RETRY),
        (503, Outcome.RETRY),
        (504, Outcome.RETRY),
    ],
)
def test_classify_status(status: int, outcome: Outcome) -> None:
    assert classify(status, None) is outcome


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (429, Outcome.RETRY_AFTER),
        (503, Outcome.RETRY_AFTER),
        (500, Outcome.RETRY),
        (301, Outcome.RETRY),
        (200, Outcome.DELIVERED),
        (410, Outcome.DISABLE_ENDPOINT),
    ],
)
def test_retry_after_counts_for_429_and_503_only(status: int, outcome: Outcome) -> None:
    assert classify(status, None, retry_after_s=30.0) is outcome


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (TransportError.TIMEOUT, Outcome.RETRY),
        (TransportError.CONNECT, Outcome.RETRY),
        (TransportError.DNS, Outcome.RETRY),
        (TransportError.TLS, Outcome.RETRY),
        (TransportError.PROTOCOL, Outcome.RETRY),
        ("timeout", Outcome.RETRY),
        (TransportError.UNSAFE_DESTINATION, Outcome.FAILED_PERMANENTLY),
    ],
)
def test_classify_transport_error(error: str, outcome: Outcome) -> None:
    assert classify(None, error) is outcome


@pytest.mark.parametrize(
    ("status", "error", "message"),
    [
        (None, None, "exactly one"),
        (500, "timeout", "exactly one"),
        (None, "Connection reset by peer", "is not a valid TransportError"),
        (99, None, "not an HTTP status: 99"),
        (600, None, "not an HTTP status: 600"),
    ],
)
def test_classify_refuses_bad_input(
    status: int | None, error: str | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        classify(status, error)


@pytest.mark.parametrize(
    ("outcome", "final"),
    [
        (Outcome.DELIVERED, True),
        (Outcome.DISABLE_ENDPOINT, True),
        (Outcome.FAILED_PERMANENTLY, True),
        (Outcome.RETRY, False),
        (Outcome.RETRY_AFTER, False),
    ],
)
def test_final_outcomes(outcome: Outcome, final: bool) -> None:
    assert outcome.final is final


def test_default_schedule_is_the_spec_example_spanning_about_three_days() -> None:
    assert DEFAULT_SCHEDULE == (
        0,
        5 * SECOND_MS,
        5 * MINUTE_MS,
        30 * MINUTE_MS,
        2 * HOUR_MS,
        5 * HOUR_MS,
        10 * HOUR_MS,
        14 * HOUR_MS,
        20 * HOUR_MS,
        24 * HOUR_MS,
    )
    assert sum(DEFAULT_SCHEDULE) == 75 * HOUR_MS + 35 * MINUTE_MS + 5 * SECOND_MS


@pytest.mark.parametrize(("attempt", "delay_ms"), list(enumerate(DEFAULT_SCHEDULE)))
def test_next_attempt_follows_schedule(attempt: int, delay_ms: int) -> None:
    assert next_attempt(attempt, now_ms=NOW_MS, rng=MIDDLE) == NOW_MS + delay_ms


@pytest.mark.parametrize("attempt", [len(DEFAULT_SCHEDULE), len(DEFAULT_SCHEDULE) + 5])
def test_no_attempt_after_the_last(attempt: int) -> None:
    assert next_attempt(attempt, now_ms=NOW_MS, rng=MIDDLE) is None
    assert next_attempt(attempt, now_ms=NOW_MS, rng=MIDDLE, retry_after_s=5) is None


def test_negative_attempt_is_an_error() -> None:
    with pytest.raises(ValueError, match="must not be negative"):
        next_attempt(-1, now_ms=NOW_MS, rng=MIDDLE)


@pytest.mark.parametrize(
    ("where", "delay_ms"),
    [
        (0.0, 27 * MINUTE_MS),
        (1.0, 33 * MINUTE_MS),
        (0.25, 28 * MINUTE_MS + 30 * SECOND_MS),
    ],
)
def test_jitter_is_ten_percent_either_way(where: float, delay_ms: int) -> None:
    assert next_attempt(3, now_ms=NOW_MS, rng=Fixed(where)) == NOW_MS + delay_ms


def test_first_attempt_is_immediate_whatever_the_jitter() -> None:
    assert next_attempt(0, now_ms=NOW_MS, rng=Fixed(1.0)) == NOW_MS


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_jitter_is_deterministic_and_bounded(seed: int) -> None:
    first = [
        next_attempt(n, now_ms=NOW_MS, rng=random.Random(seed))
        for n in range(len(DEFAULT_SCHEDULE))
    ]
    again = [
        next_attempt(n, now_ms=NOW_MS, rng=random.Random(seed))
        for n in range(len(DEFAULT_SCHEDULE))
    ]
    assert first == again
    for due, delay in zip(first, DEFAULT_SCHEDULE, strict=True):
        assert due is not None
        assert 0.9 * delay <= due - NOW_MS <= 1.1 * delay


@pytest.mark.parametrize(
    ("attempt", "retry_after_s", "delay_ms"),
    [
        (1, 60.0, 60 * SECOND_MS),  # schedule says 5 s, the receiver 60 s
        (2, 60.0, 5 * MINUTE_MS),  # schedule later than Retry-After: schedule wins
        (1, 0.0, 5 * SECOND_MS),
        (1, -30.0, 5 * SECOND_MS),
        (1, 2.0004, 5 * SECOND_MS),
        (1, 7.0004, 7001),  # rounded up: never before the time asked for
        (1, 3 * 86_400.0, 86_400 * SECOND_MS),  # capped at one day
        (1, math.inf, 86_400 * SECOND_MS),
    ],
)
def test_retry_after_is_a_capped_lower_bound(
    attempt: int, retry_after_s: float, delay_ms: int
) -> None:
    due = next_attempt(attempt, now_ms=NOW_MS, rng=MIDDLE, retry_after_s=retry_after_s)
    assert due == NOW_MS + delay_ms


def test_retry_after_cap_is_configurable() -> None:
    due = next_attempt(
        1, now_ms=NOW_MS, rng=MIDDLE, retry_after_s=7200, max_retry_after_s=3600
    )
    assert due == NOW_MS + HOUR_MS


def test_custom_schedule() -> None:
    schedule = (0, 1000)
    assert (
        next_attempt(1, now_ms=NOW_MS, rng=MIDDLE, schedule=schedule) == NOW_MS + 1000
    )
    assert next_attempt(2, now_ms=NOW_MS, rng=MIDDLE, schedule=schedule) is None


def http_date(seconds_from_now: float) -> str:
    when = datetime.fromtimestamp(NOW_S + seconds_from_now, tz=UTC)
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("120", 120.0),
        (" 0 ", 0.0),
        ("007", 7.0),
        ("9" * 13, math.inf),
        (http_date(90), 90.0),
        (http_date(-90), 0.0),
        ("Tue, 14 Nov 2023 22:15:20 GMT", 120.0),  # IMF-fixdate, NOW_S + 120
        ("Tuesday, 14-Nov-23 22:15:20 GMT", 120.0),  # obsolete RFC 850 form
        ("Tue Nov 14 22:15:20 2023", 120.0),  # obsolete asctime form, no zone
        (None, None),
        ("", None),
        ("soon", None),
        ("1.5", None),
        ("-5", None),
        ("+5", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value, NOW_S) == seconds
