"""Rollups for plain PostgreSQL: an invalidation log and an incremental refresh.

Why not upsert the rollups in the write transaction: measured with
``bench/sink_bench.py`` it tripled the cost of a write (three upserts per stored row,
every batch touches every series). So the write path only records which one-minute
buckets it touched (``rollup_pending``, same transaction as the rows), and
:func:`refresh` brings the rollups up to date later, off the sink's write loop.

Incremental: telemetry is insert-only (a stored reading never changes; a
redelivered one is not stored again), so a touched minute's new aggregate is its
old one plus the rows added since. :func:`refresh` recomputes each touched minute
from the raw rows, and merges only the difference into the hour and the day (``n``
and ``sum`` added, ``min``/``max`` folded in). The cost follows the rows of the
touched minutes, not the size of the hour or the day: the last minute of an hour
costs what the first did (``bench/rollup_bench.py`` measures it). A recomputed
minute whose raw rows are gone (retention) is left as it was.

Concurrency: refreshes are serialised by an advisory lock per schema (each sink
runs one), so two never merge the same difference twice. The log is append-only
(no unique key, migration 0019): a write marks its minutes with a plain INSERT,
which never waits for a refresh deleting the same minute. (With the minute as the
key it did, and every batch of the current minute stalled for the whole refresh.)
A refresh takes the marks its snapshot sees; a write that commits while it runs
leaves its marks for the next refresh, so the rollups lag the raw rows by at most
one refresh interval. Recomputing a minute twice is harmless: the difference
merged the second time is zero.

The minute in progress: the sink's periodic refresh merges a minute once it has
ended (``before``), not on every refresh while rows still arrive in it.
Recomputing it every 10 s aggregated each row six times over: at the province
load (56 000 rows a second, 560 000 series) a refresh took longer than a minute
and PostgreSQL spent half a core on it. So the rollups lag the raw rows by the
minute in progress plus one refresh interval; the raw rows are there meanwhile,
and an explicit refresh (``smartpark db``, tests) still merges every minute.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta

import psycopg
from psycopg import sql

from storage.base import Conn
from storage.partitions import partition_name

log = logging.getLogger(__name__)

_MINUTE = timedelta(minutes=1)
# Minutes taken off the log per transaction, so a replay of months of history is
# refreshed in bounded steps.
REFRESH_CHUNK_MINUTES = 1440
_NO_LIMIT = datetime(9999, 1, 1, tzinfo=UTC)


def touched_minutes(times: Iterable[datetime]) -> list[datetime]:
    """The distinct UTC minute starts of ``times`` (aware datetimes)."""
    minutes = {int(t.timestamp()) // 60 for t in times}
    return [datetime.fromtimestamp(m * 60, UTC) for m in sorted(minutes)]


def mark(schema: str) -> sql.Composed:
    """Record touched minutes (one array parameter); part of the write transaction."""
    return sql.SQL("INSERT INTO {} (bucket) SELECT unnest(%s::timestamptz[])").format(
        sql.Identifier(schema, "rollup_pending")
    )


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


def _merge_statement(schema: str) -> sql.Composed:
    """One range of touched minutes: recompute them from the raw rows, store them,
    and merge what changed into the hours and days. Parameters: start, end."""
    key = sql.SQL("(series_id, bucket)")
    cols = sql.SQL("series_id, bucket, n, sum, min, max")

    def merge_into(table: str, width: str) -> sql.Composed:
        t = sql.Identifier(schema, table)
        return sql.SQL(
            "INSERT INTO {t} AS r ({cols})"
            " SELECT series_id, date_bin({width}::interval, bucket,"
            " TIMESTAMPTZ 'epoch'), sum(dn), sum(dsum), min(min), max(max)"
            " FROM delta GROUP BY 1, 2"
            " ON CONFLICT {key} DO UPDATE SET n = r.n + EXCLUDED.n,"
            " sum = r.sum + EXCLUDED.sum, min = LEAST(r.min, EXCLUDED.min),"
            " max = GREATEST(r.max, EXCLUDED.max)"
        ).format(t=t, cols=cols, width=sql.Literal(width), key=key)

    minute = sql.Identifier(schema, "telemetry_1m")
    return sql.SQL(
        "WITH fresh AS ("
        " SELECT series_id,"
        " date_bin('60 seconds'::interval, time, TIMESTAMPTZ 'epoch') AS bucket,"
        " count(*)::bigint AS n, sum(value) AS sum, min(value) AS min,"
        " max(value) AS max FROM {raw} WHERE time >= %s AND time < %s"
        " GROUP BY 1, 2),"
        " delta AS ("
        " SELECT f.*, f.n - coalesce(m.n, 0) AS dn, f.sum - coalesce(m.sum, 0) AS dsum"
        " FROM fresh f LEFT JOIN {minute} m USING (series_id, bucket)"
        " WHERE f.n > coalesce(m.n, 0)),"
        " minutes AS ("
        " INSERT INTO {minute} AS r ({cols}) SELECT {cols} FROM delta"
        " ON CONFLICT {key} DO UPDATE SET n = EXCLUDED.n, sum = EXCLUDED.sum,"
        " min = EXCLUDED.min, max = EXCLUDED.max),"
        " hours AS ({hours})"
        " {days}"
    ).format(
        raw=sql.Identifier(schema, "telemetry"),
        minute=minute,
        cols=cols,
        key=key,
        hours=merge_into("telemetry_1h", "3600 seconds"),
        days=merge_into("telemetry_1d", "86400 seconds"),
    )


async def _summarize(conn: Conn, schema: str, days: set[date]) -> None:
    """Summarise the new page ranges of the BRIN indexes of the days' partitions.

    Inserts keep a summarised range up to date, but ranges filled since the last
    VACUUM are unsummarised, and a BRIN scan reads every unsummarised page: without
    this, the minutes' read grows with the rows written since autovacuum last ran
    (measured: twice as slow by the end of an hour). Summarising costs the new
    pages only. It waits at most a second for its lock (a ``REINDEX CONCURRENTLY``
    of a compacted day holds it for long) and is skipped then: the read still
    finds every row, only slower.
    """
    if not days:
        return
    names = [sql.Identifier(schema, partition_name(d)).as_string(conn) for d in days]
    try:
        async with conn.transaction():  # a savepoint: a timeout undoes only this
            await conn.execute("SELECT set_config('lock_timeout', '1s', true)")
            await conn.execute(
                "SELECT brin_summarize_new_values(x.indexrelid) FROM pg_index x"
                " JOIN pg_class c ON c.oid = x.indexrelid"
                " JOIN pg_am a ON a.oid = c.relam AND a.amname = 'brin'"
                " WHERE x.indrelid IN"
                " (SELECT to_regclass(n) FROM unnest(%s::text[]) AS n)",
                (names,),
            )
            await conn.execute("SELECT set_config('lock_timeout', '0', true)")
    except psycopg.errors.LockNotAvailable:
        log.warning("rollups: BRIN summary of %s skipped: locked", sorted(names))


async def refresh(
    conn: Conn,
    schema: str,
    extra: tuple[datetime, datetime] | None = None,
    *,
    before: datetime | None = None,
) -> int:
    """Merge the minutes the log names (and ``extra``); return minutes refreshed.

    ``before``: only the logged minutes that start before it (the minute in
    progress stays in the log for a later call: see the module doc).
    ``conn`` is in autocommit mode; each chunk of the log is one transaction, so a
    failure leaves the untreated minutes in the log for the next call.
    """
    pending = sql.Identifier(schema, "rollup_pending")
    merge = _merge_statement(schema)
    done = 0
    while True:
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))",
                (f"smartpark.rollups:{schema}",),
            )
            # The touched minutes are a narrow slice of a day's partition: read it
            # through the BRIN index on time. Without fresh statistics (a partition
            # filling up since midnight) the planner picks a sequential scan of
            # the whole day, whose cost then grows with every minute of the day.
            await conn.execute("SET LOCAL enable_seqscan = off")
            cur = await conn.execute(
                sql.SQL(
                    "DELETE FROM {p} WHERE bucket IN (SELECT DISTINCT bucket FROM {p}"
                    " WHERE bucket < %s ORDER BY bucket LIMIT %s) RETURNING bucket"
                ).format(p=pending),
                (before or _NO_LIMIT, REFRESH_CHUNK_MINUTES),
            )
            minutes = sorted({r[0] for r in await cur.fetchall()})
            await _summarize(conn, schema, {m.date() for m in minutes})
            if extra is not None:
                start, end = _floor(extra[0], _MINUTE), extra[1]
                while start < end:
                    minutes.append(start)
                    start += _MINUTE
                minutes = sorted(set(minutes))
                extra = None
            if not minutes:
                return done
            for start, end in _ranges(minutes, _MINUTE):
                await conn.execute(merge, (start, end))
        done += len(minutes)
