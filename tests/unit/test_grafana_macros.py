"""The port of Grafana's PostgreSQL macros (api.grafana.macros), checked on the
expansions of Grafana's own tests (pkg/tsdb/grafana-postgresql-datasource/
macros_test.go: a range of 2018-04-12 18:00 to 18:05 UTC) and of the data
source's variable interpolation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.grafana.macros import (
    MacroError,
    TimeRange,
    Variable,
    expand,
    format_interval,
    interpolate_macros,
    replace_variables,
)

FROM = datetime(2018, 4, 12, 18, tzinfo=UTC)
RNG = TimeRange(FROM, FROM + timedelta(minutes=5))


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("WHERE $__timeFilter(time_column)",
         "WHERE time_column BETWEEN '2018-04-12T18:00:00Z' AND '2018-04-12T18:05:00Z'"),
        ("select $__time(time_column)", 'select time_column AS "time"'),
        ("select $__timeEpoch(time)", 'select extract(epoch from time) as "time"'),
        ("GROUP BY $__timeGroup(time_column,'5m')",
         "GROUP BY floor(extract(epoch from time_column)/300)*300"),
        ("GROUP BY $__timeGroup(time_column, '5m', NULL)",
         "GROUP BY floor(extract(epoch from time_column)/300)*300"),
        ("GROUP BY $__timeGroupAlias(time_column,'5m')",
         'GROUP BY floor(extract(epoch from time_column)/300)*300 AS "time"'),
        ("SELECT $__timeGroup(time_column,'5m'), value",
         'SELECT floor(extract(epoch from time_column)/300)*300 AS "time", value'),
        ("select $__timeFrom()", "select '2018-04-12T18:00:00Z'"),
        ("select $__timeTo()", "select '2018-04-12T18:05:00Z'"),
        ("select $__unixEpochFilter(time)",
         "select time >= 1523556000 AND time <= 1523556300"),
        ("select $__unixEpochNanoFilter(time)",
         "select time >= 1523556000000000000 AND time <= 1523556300000000000"),
        ("select $__unixEpochNanoFrom()", "select 1523556000000000000"),
        ("select $__unixEpochGroup(time_column,'5m')",
         "select floor((time_column)/300)*300"),
        ("select $__unixEpochGroupAlias(time_column,'5m')",
         'select floor((time_column)/300)*300 AS "time"'),
    ],
)  # fmt: skip
def test_postgres_macros_as_grafana_expands_them(sql: str, expected: str) -> None:
    assert interpolate_macros(sql, RNG) == expected


def test_time_group_on_timescaledb_is_time_bucket_in_utc() -> None:
    got = interpolate_macros("GROUP BY $__timeGroup(time_column,'1d')", RNG,
                             timescaledb=True)  # fmt: skip
    assert got == "GROUP BY time_bucket('86400.000s',time_column)"


def test_unknown_macros_and_bad_intervals_are_refused() -> None:
    with pytest.raises(MacroError, match="unknown macro"):
        interpolate_macros("select $__nope(x)", RNG)
    with pytest.raises(MacroError, match="interval"):
        interpolate_macros("select $__timeGroup(x, 'soon')", RNG)
    with pytest.raises(MacroError, match="missing time column"):
        interpolate_macros("select $__timeFilter()", RNG)


def test_global_macros_and_variables() -> None:
    got = expand(
        "SELECT $__interval_ms, '$__interval', $__unixEpochFrom(), $__unixEpochTo()"
        " WHERE park = '$park' AND device IN ($device) AND x = '${park}'"
        " AND y = '[[park]]' AND z = '$parking'",
        RNG,
        {"park": Variable("p'1"), "device": Variable(["a", "b'c"], multi=True)},
        interval=timedelta(hours=1),
    )
    assert got == (
        "SELECT 3600000, '1h', 1523556000, 1523556300"
        " WHERE park = 'p''1' AND device IN ('a','b''c') AND x = 'p''1'"
        " AND y = 'p''1' AND z = '$parking'"
    )


def test_variables_never_touch_grafanas_own_names() -> None:
    assert replace_variables("$__timeFilter(t)", {"park": Variable("p")}) == (
        "$__timeFilter(t)"
    )


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(86400, "1d"), (3600, "1h"), (90, "90s"), (0.5, "500ms"), (604800, "1w")],
)
def test_interval_format(seconds: float, text: str) -> None:
    assert format_interval(timedelta(seconds=seconds)) == text
