"""Typed read queries over one schema (both dialects: the relation names match).

Functions take a connection and keyword-only filters; ``None`` means "any". Rows
and rollups are stored by series id (:mod:`storage.series`): the queries join
``series`` (alias ``s``) for the names and filter on it, and the telemetry key
(series_id, time) does the rest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from storage.base import Conn
from storage.model import ReadingKey, RollupLevel, RollupRow, TelemetryRow

_TABLES = (
    "series", "telemetry", "telemetry_1m", "telemetry_1h", "telemetry_1d",
    "kafka_offsets", "device_epochs",
)  # fmt: skip


def _where(
    equal: dict[str, str | None],
    column: str = "time",
    start: datetime | None = None,
    end: datetime | None = None,
) -> tuple[sql.Composable, list[Any]]:
    conds: list[sql.Composable] = []
    params: list[Any] = []
    for name, value in equal.items():
        if value is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier("s", name)))
            params.append(value)
    if start is not None:
        conds.append(sql.SQL("{} >= %s").format(sql.Identifier("t", column)))
        params.append(start)
    if end is not None:
        conds.append(sql.SQL("{} < %s").format(sql.Identifier("t", column)))
        params.append(end)
    if not conds:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds), params


def _joined(schema: str, table: str) -> sql.Composed:
    """``table`` (alias ``t``) with its series (alias ``s``)."""
    return sql.SQL("{} t JOIN {} s ON s.id = t.series_id").format(
        sql.Identifier(schema, table), sql.Identifier(schema, "series")
    )


async def count_rows(
    conn: Conn,
    schema: str,
    *,
    park: str | None,
    enterprise: str | None,
    device: str | None,
) -> int:
    where, params = _where({"park": park, "enterprise": enterprise, "device": device})
    cur = await conn.execute(
        sql.SQL("SELECT count(*) FROM {}{}").format(
            _joined(schema, "telemetry"), where
        ),
        params,
    )
    row = await cur.fetchone()
    assert row is not None
    return int(row[0])


async def reading_keys(
    conn: Conn, schema: str, *, park: str | None, device: str | None
) -> list[ReadingKey]:
    where, params = _where({"park": park, "device": device})
    cur = await conn.execute(
        sql.SQL("SELECT s.device, t.seq, s.metric FROM {}{} ORDER BY 1, 2, 3").format(
            _joined(schema, "telemetry"), where
        ),
        params,
    )
    return [ReadingKey(*r) for r in await cur.fetchall()]


async def readings(
    conn: Conn,
    schema: str,
    *,
    device: str | None,
    park: str | None,
    start: datetime | None,
    end: datetime | None,
    data_type: str | None = None,
) -> list[TelemetryRow]:
    where, params = _where(
        {"device": device, "park": park, "data_type": data_type}, "time", start, end
    )
    cur = await conn.execute(
        sql.SQL(
            "SELECT t.time, s.park, s.enterprise, s.device, s.metric, t.value,"
            " t.quality, t.seq, t.reset, s.data_type, s.stat FROM {}{}"
            " ORDER BY t.time, s.device, s.metric, s.data_type, s.stat"
        ).format(_joined(schema, "telemetry"), where),
        params,
    )
    return [TelemetryRow(*r) for r in await cur.fetchall()]


async def rollup(
    conn: Conn,
    schema: str,
    level: RollupLevel,
    *,
    start: datetime,
    end: datetime,
    park: str | None,
    enterprise: str | None,
    device: str | None,
    metric: str | None,
    data_type: str | None = None,
) -> list[RollupRow]:
    where, params = _where(
        {"park": park, "enterprise": enterprise, "device": device, "metric": metric,
         "data_type": data_type},
        "bucket",
        start,
        end,
    )  # fmt: skip
    async with conn.cursor(row_factory=class_row(RollupRow)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT t.bucket, s.park, s.enterprise, s.device, s.metric,"
                " t.n::bigint AS n, t.sum, t.min, t.max, s.data_type, s.stat"
                " FROM {}{} ORDER BY t.bucket, s.device, s.metric, s.data_type,"
                " s.stat, s.park, s.enterprise"
            ).format(_joined(schema, f"telemetry_{RollupLevel(level).value}"), where),
            params,
        )
        return await cur.fetchall()


async def table_counts(conn: Conn, schema: str) -> dict[str, int]:
    """Exact row counts of the platform's relations (a full scan each: for
    ``info``); a relation a pending migration has not created yet is left out."""
    counts = {}
    for table in _TABLES:
        cur = await conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL",
            (sql.Identifier(schema, table).as_string(conn),),
        )
        exists = await cur.fetchone()
        if not (exists and exists[0]):
            continue
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(schema, table))
        )
        row = await cur.fetchone()
        assert row is not None
        counts[table] = int(row[0])
    return counts


async def versions(conn: Conn) -> tuple[str, str | None]:
    """The server version and the installed TimescaleDB version, if any."""
    cur = await conn.execute(
        "SELECT current_setting('server_version'),"
        " (SELECT extversion FROM pg_extension WHERE extname = 'timescaledb')"
    )
    row = await cur.fetchone()
    assert row is not None
    return str(row[0]), row[1]
