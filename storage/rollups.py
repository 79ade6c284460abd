"""Rollups for plain PostgreSQL: an invalidation log and a refresh, like TimescaleDB.

Why not upsert the rollups in the write transaction: measured with
``bench/sink_bench.py`` it tripled the cost of a write (three upserts per stored row,
every batch touches every series), while recomputing a bucket from the raw rows later
costs about one read per row. So the write path only records which one-minute buckets
it touched (``rollup_pending``, same transaction as the rows), and :func:`refresh`
recomputes those buckets from the raw rows, then the hours and days from the level
below. A recomputed bucket is replaced, not incremented, so the result is exact
whatever was redelivered, late or retried.

Concurrency: a write that commits while a refresh runs re-marks its minutes (or its
mark waits for the refresh's delete and then lands), so the next refresh picks it
up; the rollups lag the raw rows by at most one refresh interval.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from psycopg import sql

from storage.base import Conn

_MINUTE = timedelta(minutes=1)
_LEVELS = (  # (relation, bucket width, source relation, source time column)
    ("telemetry_1m", timedelta(minutes=1), "telemetry", "time"),
    ("telemetry_1h", timedelta(hours=1), "telemetry_1m", "bucket"),
    ("telemetry_1d", timedelta(days=1), "telemetry_1h", "bucket"),
)
# Minutes taken off the log per transaction, so a replay of months of history is
# refreshed in bounded steps.
REFRESH_CHUNK_MINUTES = 1440


def touched_minutes(times: Iterable[datetime]) -> list[datetime]:
    """The distinct UTC minute starts of ``times`` (aware datetimes)."""
    minutes = {int(t.timestamp()) // 60 for t in times}
    return [datetime.fromtimestamp(m * 60, UTC) for m in sorted(minutes)]


def mark(schema: str) -> sql.Composed:
    """Record touched minutes (one array parameter); part of the write transaction."""
    return sql.SQL(
        "INSERT INTO {} (bucket) SELECT unnest(%s::timestamptz[])"
        " ON CONFLICT DO NOTHING"
    ).format(sql.Identifier(schema, "rollup_pending"))


def _ranges(
    buckets: list[datetime], width: timedelta
) -> list[tuple[datetime, datetime]]:
    """Merge sorted bucket starts into contiguous ``[start, end)`` ranges."""
    ranges: list[tuple[datetime, datetime]] = []
    for b in buckets:
        if ranges and ranges[-1][1] == b:
            ranges[-1] = (ranges[-1][0], b + width)
        else:
            ranges.append((b, b + width))
    return ranges


def _floor(t: datetime, width: timedelta) -> datetime:
    seconds = int(width.total_seconds())
    epoch = int(t.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, UTC)


async def _recompute(
    conn: Conn, schema: str, level: int, ranges: list[tuple[datetime, datetime]]
) -> None:
    table, width, source, column = _LEVELS[level]
    target = sql.Identifier(schema, table)
    if source == "telemetry":
        aggregates = sql.SQL("count(*), sum(value), min(value), max(value)")
    else:
        aggregates = sql.SQL("sum(n), sum(sum), min(min), max(max)")
    for start, end in ranges:
        await conn.execute(
            sql.SQL("DELETE FROM {} WHERE bucket >= %s AND bucket < %s").format(target),
            (start, end),
        )
        await conn.execute(
            sql.SQL(
                "INSERT INTO {target} (bucket, park, enterprise, device, metric, n,"
                " sum, min, max)"
                " SELECT date_bin({width}::interval, {col}, TIMESTAMPTZ 'epoch'),"
                " park, enterprise, device, metric, {aggregates}"
                " FROM {source} WHERE {col} >= %s AND {col} < %s"
                " GROUP BY 1, 2, 3, 4, 5"
            ).format(
                target=target,
                width=sql.Literal(f"{int(width.total_seconds())} seconds"),
                col=sql.Identifier(column),
                aggregates=aggregates,
                source=sql.Identifier(schema, source),
            ),
            (start, end),
        )


async def refresh(
    conn: Conn, schema: str, extra: tuple[datetime, datetime] | None = None
) -> int:
    """Recompute the buckets the log names (and ``extra``); return minutes refreshed.

    ``conn`` is in autocommit mode; each chunk of the log is one transaction, so a
    failure leaves the untreated minutes in the log for the next call.
    """
    pending = sql.Identifier(schema, "rollup_pending")
    done = 0
    while True:
        async with conn.transaction():
            cur = await conn.execute(
                sql.SQL(
                    "DELETE FROM {p} WHERE bucket IN (SELECT bucket FROM {p}"
                    " ORDER BY bucket LIMIT %s) RETURNING bucket"
                ).format(p=pending),
                (REFRESH_CHUNK_MINUTES,),
            )
            minutes = sorted(r[0] for r in await cur.fetchall())
            if extra is not None:
                start, end = _floor(extra[0], _MINUTE), extra[1]
                while start < end:
                    minutes.append(start)
                    start += _MINUTE
                minutes = sorted(set(minutes))
                extra = None
            if not minutes:
                return done
            buckets = minutes
            for level, (_, width, _, _) in enumerate(_LEVELS):
                buckets = sorted({_floor(b, width) for b in buckets})
                await _recompute(conn, schema, level, _ranges(buckets, width))
        done += len(minutes)
