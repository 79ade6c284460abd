"""Pure parts of the storage layer: row conversion, migration files, bucket logic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from smartpark.wire import Reading, TelemetryBatch
from storage import Dialect, TelemetryRow, rows_from_batch
from storage.migrate import available
from storage.rollups import touched_minutes


@pytest.mark.parametrize(
    ("ts_ms", "expected"),
    [
        (946_684_800_000, datetime(2000, 1, 1, tzinfo=UTC)),
        (1_767_225_600_123, datetime(2026, 1, 1, 0, 0, 0, 123_000, tzinfo=UTC)),
        (1_767_225_599_999, datetime(2025, 12, 31, 23, 59, 59, 999_000, tzinfo=UTC)),
        (4_102_444_800_001, datetime(2100, 1, 1, 0, 0, 0, 1_000, tzinfo=UTC)),
    ],
)
def test_event_time_converts_exactly(ts_ms: int, expected: datetime) -> None:
    batch = TelemetryBatch(
        "p", "e", "d", (Reading(1, "active_power", 2.5, "kW", ts_ms),)
    )
    [row] = rows_from_batch(batch)
    assert row.time == expected
    assert row.time.tzinfo is UTC


def test_rows_carry_the_batch_identity_and_every_reading() -> None:
    readings = (
        Reading(7, "active_energy", 10.0, "kWh", 1_767_225_600_000, "N"),
        Reading(7, "active_power", 1.5, "kW", 1_767_225_600_000, "M"),
        Reading(8, "active_power", 1.0, "kW", 1_767_225_610_000, "D"),
        Reading(8, "active_energy", 0.5, "kWh", 1_767_225_610_000, "N", "rollover"),
    )
    rows = rows_from_batch(TelemetryBatch("p1", "e1", "d1", readings))
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    assert rows == [
        TelemetryRow(t0, "p1", "e1", "d1", "active_energy", 10.0, "N", 7),
        TelemetryRow(t0, "p1", "e1", "d1", "active_power", 1.5, "M", 7),
        TelemetryRow(
            t0.replace(second=10), "p1", "e1", "d1", "active_power", 1.0, "D", 8
        ),
        TelemetryRow(
            t0.replace(second=10),
            "p1",
            "e1",
            "d1",
            "active_energy",
            0.5,
            "N",
            8,
            "rollover",
        ),
    ]
    assert [r.reset for r in rows] == [None, None, None, "rollover"]


@pytest.mark.parametrize("dialect", list(Dialect))
def test_migrations_are_numbered_from_one_without_gaps(dialect: Dialect) -> None:
    versions = [m.version for m in available(dialect)]
    assert versions == list(range(1, len(versions) + 1))


def test_both_dialects_ship_the_same_migration_versions() -> None:
    def names(d: Dialect) -> list[tuple[int, str]]:
        return [(m.version, m.name) for m in available(d)]

    assert names(Dialect.POSTGRES) == names(Dialect.TIMESCALE)


def test_touched_minutes_are_distinct_sorted_utc_minute_starts() -> None:
    times = [
        datetime(2026, 1, 1, 0, 1, 59, 999_999, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 1, 0, tzinfo=UTC),
        datetime(2025, 12, 31, 23, 59, 30, tzinfo=UTC),
    ]
    assert touched_minutes(times) == [
        datetime(2025, 12, 31, 23, 59, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 1, 1, 0, 1, tzinfo=UTC),
    ]


def test_the_series_migration_knows_every_catalogue_unit() -> None:
    """0006 gives the series of rows stored before it their metric's unit from a
    list written into the migration; it must equal the catalogue's."""
    import re

    from smartpark.catalogue import METRICS
    from storage.migrate import migrations_root

    for dialect in ("postgres", "timescale"):
        text = (migrations_root() / dialect / "0006_series.sql").read_text()
        values = text[text.index("LEFT JOIN (VALUES") : text.index("AS u (metric")]
        units = dict(re.findall(r"\('([a-z0-9_]+)', '([^']+)'\)", values))
        assert units == {name: m.unit for name, m in METRICS.items()}, dialect
