"""Grafana's PostgreSQL query expansion, ported to Python so the tests run every
panel query exactly as Grafana would send it to the database.

Three steps, in Grafana's order (pure; no I/O):

1. **Template variables** (the browser, before the query leaves it):
   ``$name``, ``${name}``, ``${name:raw}`` and ``[[name]]`` replaced by the
   PostgreSQL data source's ``interpolateVariable``: a single value of a
   variable that is neither multi nor include-all goes in as it is, its quotes
   doubled (the panel writes ``'$park'``); values of a multi or include-all
   variable go in as quoted literals joined by commas (the panel writes
   ``IN ($device)``). Ported from grafana/grafana
   ``public/app/features/plugins/sql/datasource/SqlDatasource.ts``
   (``interpolateVariable``); the doubling of quotes is what current releases
   do, older ones inserted a single value unescaped.
2. **Global macros** (the server, ``sqleng.Interpolate``): ``$__interval_ms``,
   ``$__interval``, ``$__unixEpochFrom()``, ``$__unixEpochTo()``. Ported from
   grafana/grafana ``pkg/tsdb/grafana-postgresql-datasource/sqleng/sql_engine.go``.
3. **PostgreSQL macros** (the server, ``postgresMacroEngine``): ``$__time``,
   ``$__timeEpoch``, ``$__timeFilter``, ``$__timeFrom``, ``$__timeTo``,
   ``$__timeGroup`` / ``$__timeGroupAlias`` (``time_bucket`` when the data
   source has TimescaleDB on, else ``floor(extract(epoch ...))``: both **UTC**),
   ``$__unixEpochFilter``, ``$__unixEpochNanoFilter``, ``$__unixEpochNanoFrom``,
   ``$__unixEpochNanoTo``, ``$__unixEpochGroup`` / ``$__unixEpochGroupAlias``.
   Ported from grafana/grafana
   ``pkg/tsdb/grafana-postgresql-datasource/macros.go`` (commit
   02ab314b81e2adc656bd7d08cc0533304a0037ff), including its quirks: the macro
   pattern ``\\$(\\w+)\\(([^)]*)\\)`` (an argument cannot contain ``)``), a
   ``$__timeGroup(...)`` directly followed by ``,`` becoming
   ``$__timeGroupAlias``, ``BETWEEN`` for ``$__timeFilter`` (both ends
   included), and an unknown macro being an error.

Fill modes (the third ``$__timeGroup`` argument) only change how Grafana
post-processes the rows, not the SQL: they are checked and otherwise ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^\)]*)\)")
# gtime.ParseInterval: a number and a unit (ms s m h d w M y), or a bare number
# of seconds.
_INTERVAL = re.compile(r"^(\d+)(ms|s|m|h|d|w|M|y)?$")
_UNIT_SECONDS = {
    "ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800,
    "M": 2592000, "y": 31536000, None: 1,
}  # fmt: skip
_FILL = {"NULL", "previous"}


class MacroError(ValueError):
    """A query Grafana would refuse: an unknown macro or a bad argument."""


@dataclass(frozen=True, slots=True)
class Variable:
    """A template variable's current value as Grafana holds it."""

    value: str | Sequence[str]
    multi: bool = False
    include_all: bool = False


@dataclass(frozen=True, slots=True)
class TimeRange:
    start: datetime  # aware
    end: datetime  # aware

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("a time range needs aware datetimes")


def quote_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def interpolate_variable(var: Variable) -> str:
    """What the PostgreSQL data source puts in place of a variable."""
    if isinstance(var.value, str):
        if var.multi or var.include_all:
            return quote_literal(var.value)
        return var.value.replace("'", "''")
    return ",".join(quote_literal(v) for v in var.value)


def replace_variables(sql: str, variables: Mapping[str, Variable]) -> str:
    """Step 1: ``$name``, ``${name}``, ``${name:raw}``, ``[[name]]`` of the given
    variables (longest names first, so ``$park`` never eats ``$park_zone``);
    Grafana's own ``$__`` names are left to the server."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        var = variables.get(name)
        if var is None:
            return m.group(0)
        if m.group(3) == "raw":
            return var.value if isinstance(var.value, str) else ",".join(var.value)
        return interpolate_variable(var)

    pattern = re.compile(
        r"\$([A-Za-z0-9_]+)\b(?!\()|\$\{([A-Za-z0-9_]+)(?::(\w+))?\}"
        r"|\[\[([A-Za-z0-9_]+)\]\]"
    )
    return pattern.sub(sub, sql)


def parse_interval(text: str) -> timedelta:
    """gtime.ParseInterval for the forms panels use (``'1h'``, ``5m``, ``60``)."""
    m = _INTERVAL.match(text.strip("'"))
    if not m:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def format_interval(interval: timedelta) -> str:
    """gtime.FormatInterval: the largest whole unit (``1d``, ``2h``, ``30s``,
    ``500ms``)."""
    ms = int(interval.total_seconds() * 1000)
    for unit, size in (("y", 31536000000), ("w", 604800000), ("d", 86400000),
                       ("h", 3600000), ("m", 60000), ("s", 1000)):  # fmt: skip
        if ms >= size and ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def _rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time: trailing zeros of the fraction
    dropped, ``Z``."""
    t = t.astimezone(UTC)
    text = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        text += ("." + f"{t.microsecond:06d}").rstrip("0")
    return text + "Z"


def _seconds(interval: timedelta) -> str:
    """Go's %v of a float64 number of seconds (3600, 0.5)."""
    s = interval.total_seconds()
    return str(int(s)) if s == int(s) else repr(s)


def _unix(t: datetime) -> int:
    return int(t.timestamp())


def _unix_nano(t: datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000 + t.microsecond * 1000


def _need_column(name: str, args: list[str]) -> str:
    if not args or args == [""]:
        raise MacroError(f"missing time column argument for macro {name}")
    return args[0]


def _group_interval(name: str, args: list[str]) -> timedelta:
    if len(args) < 2:
        raise MacroError(
            f"macro {name} needs time column and interval and optional fill value"
        )
    interval = parse_interval(args[1].strip("'"))
    if len(args) == 3 and args[2] not in _FILL:
        try:
            float(args[2])
        except ValueError:
            raise MacroError(f"error parsing fill value {args[2]}") from None
    return interval


def evaluate_macro(
    name: str, args: list[str], rng: TimeRange, timescaledb: bool
) -> str:
    """postgresMacroEngine.evaluateMacro."""
    if name == "__time":
        return f'{_need_column(name, args)} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {_need_column(name, args)}) as "time"'
    if name == "__timeFilter":
        col = _need_column(name, args)
        return f"{col} BETWEEN '{_rfc3339(rng.start)}' AND '{_rfc3339(rng.end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(rng.start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(rng.end)}'"
    if name == "__timeGroup":
        interval = _group_interval(name, args)
        if timescaledb:
            return f"time_bucket('{interval.total_seconds():.3f}s',{args[0]})"
        s = _seconds(interval)
        return f"floor(extract(epoch from {args[0]})/{s})*{s}"
    if name == "__timeGroupAlias":
        return evaluate_macro("__timeGroup", args, rng, timescaledb) + ' AS "time"'
    if name == "__unixEpochFilter":
        col = _need_column(name, args)
        return f"{col} >= {_unix(rng.start)} AND {col} <= {_unix(rng.end)}"
    if name == "__unixEpochNanoFilter":
        col = _need_column(name, args)
        return f"{col} >= {_unix_nano(rng.start)} AND {col} <= {_unix_nano(rng.end)}"
    if name == "__unixEpochNanoFrom":
        return str(_unix_nano(rng.start))
    if name == "__unixEpochNanoTo":
        return str(_unix_nano(rng.end))
    if name == "__unixEpochGroup":
        s = _seconds(_group_interval(name, args))
        return f"floor(({args[0]})/{s})*{s}"
    if name == "__unixEpochGroupAlias":
        return evaluate_macro("__unixEpochGroup", args, rng, timescaledb) + ' AS "time"'
    raise MacroError(f"unknown macro {name!r}")


def interpolate_global(sql: str, rng: TimeRange, interval: timedelta) -> str:
    """Step 2: sqleng.Interpolate."""
    sql = sql.replace("$__interval_ms", str(int(interval.total_seconds() * 1000)))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(_unix(rng.start)))
    return sql.replace("$__unixEpochTo()", str(_unix(rng.end)))


def interpolate_macros(sql: str, rng: TimeRange, *, timescaledb: bool = False) -> str:
    """Step 3: postgresMacroEngine.Interpolate (MacroError on the first bad one)."""

    def sub(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":
            # as macros.go: the first occurrence of the same text decides
            index = sql.find(m.group(0))
            after = index + len(m.group(0))
            if index >= 0 and len(sql) > after and sql[after] == ",":
                name = "__timeGroupAlias"
        args = [a.strip(" ") for a in m.group(2).split(",")]
        return evaluate_macro(name, args, rng, timescaledb)

    return _MACRO.sub(sub, sql)


def expand(
    sql: str, rng: TimeRange, variables: Mapping[str, Variable], *,
    interval: timedelta = timedelta(minutes=1), timescaledb: bool = False,
) -> str:  # fmt: skip
    """The SQL Grafana's PostgreSQL data source runs for a panel query."""
    return interpolate_macros(
        interpolate_global(replace_variables(sql, variables), rng, interval),
        rng, timescaledb=timescaledb,
    )  # fmt: skip
