"""Coverage arithmetic (smartpark.coverage), every expectation computed by hand."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from smartpark import coverage as cov

SH = ZoneInfo("Asia/Shanghai")
BERLIN = ZoneInfo("Europe/Berlin")
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)
LATER = datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "day", "start_utc", "hours"),
    [
        # Shanghai is UTC+8 all year: a local day starts at 16:00 UTC the day before
        (SH, date(2026, 3, 1), datetime(2026, 2, 28, 16, tzinfo=UTC), 24),
        # Berlin: 29 March 2026 02:00 CET -> 03:00 CEST (23 h);
        # 25 October 2026 03:00 CEST -> 02:00 CET (25 h)
        (BERLIN, date(2026, 3, 28), datetime(2026, 3, 27, 23, tzinfo=UTC), 24),
        (BERLIN, date(2026, 3, 29), datetime(2026, 3, 28, 23, tzinfo=UTC), 23),
        (BERLIN, date(2026, 10, 25), datetime(2026, 10, 24, 22, tzinfo=UTC), 25),
    ],
)
def test_local_days_start_at_local_midnight(
    tz: ZoneInfo, day: date, start_utc: datetime, hours: int
) -> None:
    [p] = cov.local_periods(day, day, "day", tz)
    assert (p.label, p.start) == (day, start_utc)
    assert p.end - p.start == timedelta(hours=hours)


def test_months_are_local_and_contain_the_dates() -> None:
    got = cov.local_periods(date(2026, 2, 15), date(2026, 4, 1), "month", BERLIN)
    assert [p.label for p in got] == [date(2026, 2, 1), date(2026, 3, 1),
                                      date(2026, 4, 1)]  # fmt: skip
    # March 2026 in Berlin: 31 days less the hour lost on the 29th
    assert got[1].end - got[1].start == timedelta(hours=31 * 24 - 1)
    dec = cov.local_periods(date(2026, 12, 5), date(2027, 1, 2), "month", SH)
    assert [p.label for p in dec] == [date(2026, 12, 1), date(2027, 1, 1)]
    assert dec[1].start == datetime(2026, 12, 31, 16, tzinfo=UTC)


@pytest.mark.parametrize(
    ("tz", "day", "data_type", "interval_s", "expected"),
    [
        (SH, date(2026, 3, 1), "realtime", 10, 8640),  # 86 400 s / 10
        (SH, date(2026, 3, 1), "minute", 600, 144),
        (SH, date(2026, 3, 1), "hour", 3600, 24),
        (SH, date(2026, 3, 1), "day", 86400, 1),
        (BERLIN, date(2026, 3, 29), "realtime", 10, 8280),  # 23 h
        (BERLIN, date(2026, 3, 29), "hour", 3600, 23),
        (BERLIN, date(2026, 3, 29), "day", 86400, 1),  # still one daily packet
        (BERLIN, date(2026, 10, 25), "realtime", 10, 9000),  # 25 h
        (BERLIN, date(2026, 10, 25), "day", 86400, 1),
        (SH, date(2026, 3, 1), "realtime", 7, 12342),  # 86 400 / 7 = 12 342.9
    ],
)
def test_expected_per_local_day(
    tz: ZoneInfo, day: date, data_type: str, interval_s: int, expected: int
) -> None:
    [p] = cov.local_periods(day, day, "day", tz)
    assert cov.expected_count(p.start, p.end, data_type, interval_s, tz) == expected


def test_daily_data_expected_once_per_local_midnight_of_a_month() -> None:
    [march] = cov.local_periods(date(2026, 3, 1), date(2026, 3, 1), "month", BERLIN)
    assert cov.expected_count(march.start, march.end, "day", 86400, BERLIN) == 31
    # registered at noon on the 10th: midnights of the 11th .. 31st
    noon = datetime(2026, 3, 10, 11, tzinfo=UTC)
    assert cov.expected_count(noon, march.end, "day", 86400, BERLIN) == 21


def test_expected_is_clipped_to_registration_retirement_and_now() -> None:
    [p] = cov.local_periods(date(2026, 3, 1), date(2026, 3, 1), "day", SH)
    # registered at 10:00 local (02:00 UTC): 14 h left, 5 040 readings of 10 s
    reg = datetime(2026, 3, 1, 2, tzinfo=UTC)
    lo, hi = cov.clip(p.start, p.end, reg, None, LATER) or (p.start, p.start)
    assert cov.expected_count(lo, hi, "realtime", 10, SH) == 5040
    # retired at 12:00 local: 2 h, 720
    ret = datetime(2026, 3, 1, 4, tzinfo=UTC)
    lo, hi = cov.clip(p.start, p.end, reg, ret, LATER) or (p.start, p.start)
    assert cov.expected_count(lo, hi, "realtime", 10, SH) == 720
    # today, now at 06:00:05 local: 6 h 5 s -> 2 160 (rounded down)
    now = datetime(2026, 2, 28, 22, 0, 5, tzinfo=UTC)
    lo, hi = cov.clip(p.start, p.end, LONG_AGO, None, now) or (p.start, p.start)
    assert cov.expected_count(lo, hi, "realtime", 10, SH) == 2160
    assert cov.clip(p.start, p.end, LATER, None, LATER) is None


def test_received_and_valid_are_capped_so_no_rate_exceeds_one() -> None:
    c = cov.series_counts(8640, 9000, 8700)
    assert (c.expected, c.received, c.valid) == (8640, 8640, 8640)
    assert c.transmission_rate == c.validity_rate == c.coverage_rate == 1.0
    c = cov.series_counts(8640, 8280, 8100)
    assert c.transmission_rate == 8280 / 8640
    assert c.validity_rate == 8100 / 8280
    assert c.coverage_rate == 8100 / 8640
    empty = cov.series_counts(0, 0, 0)
    assert (empty.transmission_rate, empty.validity_rate) == (None, None)


def test_the_park_is_not_covered_while_an_enterprise_sends_nothing() -> None:
    full = cov.Counts(100, 100, 100)
    assert cov.park_coverage([full, full]) == 1.0
    assert cov.park_coverage([full, cov.Counts(100, 0, 0)]) == 0.5
    assert cov.park_coverage([full, cov.Counts()]) == 0.5  # no device at all
    assert cov.park_coverage([]) is None


T = datetime(2026, 3, 1, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("previous", "edge", "following", "start", "missed"),
    [
        # last reading 09:59:50, next 11:00:00: 10:00:00 .. 10:59:50 missing
        (T - timedelta(seconds=10), False, T + timedelta(hours=1), T, 360),
        # from the start of the range, nothing until 00:01:00: 6 missing
        (T, True, T + timedelta(minutes=1), T, 6),
        # a whole day without a reading
        (T, True, T + timedelta(days=1), T, 8640),
        # the last reading 30 s before the end of the range: 2 missing
        (T, False, T + timedelta(seconds=30), T + timedelta(seconds=10), 2),
    ],
)
def test_gap_span_counts_the_missing_slots(
    previous: datetime, edge: bool, following: datetime, start: datetime, missed: int
) -> None:
    span = cov.gap_span(previous, edge, following, 10)
    assert (span.start, span.end, span.missed) == (start, following, missed)


def test_a_gap_is_longer_than_two_intervals() -> None:
    assert not cov.is_gap(T, T + timedelta(seconds=20), 10)
    assert cov.is_gap(T, T + timedelta(seconds=21), 10)


@pytest.mark.parametrize(
    ("kind", "silent", "cause"),
    [
        ("maintenance", True, "marked:maintenance"),
        (None, True, "gateway_offline"),
        (None, False, "device_offline"),
    ],
)
def test_gap_cause(kind: str | None, silent: bool, cause: str) -> None:
    assert cov.gap_cause(kind, silent) == cause


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ({"weekly": 604800}, "'weekly': not an HJ 212 data type"),
        ({"hour": 1800}, "hour: interval must be 3600 seconds, not 1800"),
        ({"day": 3600}, "day: interval must be 86400 seconds, not 3600"),
        ({"minute": 7 * 60}, "minute: interval must be a divisor of 3600"),
        ({"realtime": 0}, "realtime: interval must be 1 to 86400 seconds"),
    ],
)
def test_registry_data_types_are_checked(value: dict[str, int], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        cov.check_data_types(value)


def test_reported_types_default_to_realtime_at_the_interval() -> None:
    assert cov.reported_types(30, {}) == {"realtime": 30}
    assert cov.reported_types(30, {"minute": 600, "hour": 3600}) == {
        "minute": 600, "hour": 3600,
    }  # fmt: skip
    assert cov.check_data_types({"realtime": 30, "minute": 600, "hour": 3600,
                                 "day": 86400})  # fmt: skip


def _dev(id_: str, ent: str, types: dict[str, int] | None = None,
         metrics: tuple[str, ...] = ("so2",)) -> cov.DeviceSpec:  # fmt: skip
    return cov.DeviceSpec(id_, ent, None, 10, metrics, types or {}, LONG_AGO, None)


def test_figures_per_level_and_data_type() -> None:
    """e1 has a meter (2 metrics, 10 s) and an analyser (minute and hour data);
    e2 is registered with no device: the park is the mean of e1's rate and 0."""
    [p] = cov.local_periods(date(2026, 3, 1), date(2026, 3, 1), "day", SH)
    devices = [
        _dev("m1", "e1", metrics=("active_power", "active_energy")),
        _dev("c1", "e1", {"minute": 600, "hour": 3600}),
    ]
    ents = [cov.EntitySpec("e1", "e1", LONG_AGO, None),
            cov.EntitySpec("e2", "e2", LONG_AGO, None)]  # fmt: skip
    received = {
        ("m1", "realtime", p.label): {"active_power": (8640, 8640),
                                      "active_energy": (4320, 4000)},
        ("c1", "minute", p.label): {"so2": (144, 140)},
        ("c1", "hour", p.label): {"so2": (30, 24)},  # more than expected: capped
    }  # fmt: skip
    got = cov.figures("p1", [p], devices=devices, enterprises=ents, outlets=[],
                      received=received, now=LATER, tz=SH)  # fmt: skip
    by = {(f.level, f.id): f for f in got}
    m1 = by["device", "m1"]
    assert m1.counts == cov.Counts(2 * 8640, 8640 + 4320, 8640 + 4000)
    c1 = by["device", "c1"]
    assert c1.by_type == {"minute": cov.Counts(144, 144, 140),
                          "hour": cov.Counts(24, 24, 24)}  # fmt: skip
    e1 = by["enterprise", "e1"]
    assert e1.counts == cov.Counts(17280 + 168, 12960 + 168, 12640 + 164)
    assert e1.coverage_percent == pytest.approx(100 * 12804 / 17448)
    assert by["enterprise", "e2"].coverage_percent == 0.0
    park = by["park", "p1"]
    assert park.coverage_percent == pytest.approx(100 * (12804 / 17448 + 0) / 2)
    assert park.devices == 2


def test_status_registered_against_reporting_now() -> None:
    now = datetime(2026, 3, 5, tzinfo=UTC)
    devices = [
        cov.DeviceNow("a", "e1", "o1", 10, now - timedelta(seconds=20)),  # 2 x 10
        cov.DeviceNow("b", "e1", None, 10, now - timedelta(seconds=21)),
        cov.DeviceNow("c", "e2", None, 60, None),
    ]
    got = cov.statuses("p1", devices, enterprises=["e1", "e2", "e3"],
                       outlets=[("o1", "e1")], now=now)  # fmt: skip
    by = {(s.level, s.id): s for s in got}
    park = by["park", "p1"]
    assert (park.devices_registered, park.devices_reporting) == (3, 1)
    assert park.devices_never_reported == ("c",)
    assert park.enterprises_without_devices == ("e3",)
    assert park.enterprises_never_reported == ("e2",)
    assert by["outlet", "o1"].devices_reporting == 1
    assert by["device", "b"].last_reading == now - timedelta(seconds=21)
