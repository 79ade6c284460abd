"""The archive's SQL: its index tables (migration 0014) and the hot rows it seals.

Plain functions over a connection and a schema, as :mod:`storage.reads`; the
caller wraps them in :func:`storage.base.storage_errors`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from storage.archive.segment import ArchivedRow
from storage.base import Conn, table


@dataclass(frozen=True, slots=True)
class Enterprise:
    """An enterprise with telemetry, its park and the park's time zone (None: the
    park is not in the registry)."""

    park: str
    enterprise: str
    time_zone: str | None


@dataclass(frozen=True, slots=True)
class IndexRow:
    """A row of ``archive_manifests``."""

    enterprise: str
    position: int
    park: str
    day: date
    time_zone: str
    kind: str
    row_count: int
    segment_path: str
    segment_sha256: str
    manifest_path: str
    manifest_sha256: str
    previous_sha256: str | None
    key_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Eviction:
    """A row of ``archive_evictions``: a day read from the archive."""

    enterprise: str
    day: date
    park: str
    start_at: datetime
    end_at: datetime
    row_count: int
    archive_url: str


_ROW_COLUMNS = sql.SQL(
    "t.time, s.park, s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit,"
    " t.value, t.quality::text, t.seq, t.reset"
)


async def enterprises(conn: Conn, schema: str, only: str | None) -> list[Enterprise]:
    """Every enterprise with a series (or only ``only``), sorted."""
    where = sql.SQL(" WHERE s.enterprise = %s") if only is not None else sql.SQL("")
    cur = await conn.execute(
        sql.SQL(
            "SELECT DISTINCT s.park, s.enterprise, p.timezone FROM {} s"
            " LEFT JOIN {} p ON p.id = s.park{} ORDER BY 2, 1"
        ).format(table(schema, "series"), table(schema, "parks"), where),
        (only,) if only is not None else (),
    )
    return [Enterprise(*r) for r in await cur.fetchall()]


async def series_ids(conn: Conn, schema: str, park: str, enterprise: str) -> list[int]:
    cur = await conn.execute(
        sql.SQL("SELECT id FROM {} WHERE park = %s AND enterprise = %s").format(
            table(schema, "series")
        ),
        (park, enterprise),
    )
    return [r[0] for r in await cur.fetchall()]


async def day_counts(
    conn: Conn, schema: str, ids: Sequence[int], tz: str, before: datetime
) -> dict[date, int]:
    """Hot rows per local day (in ``tz``) of the series ``ids``, before ``before``."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT (time AT TIME ZONE %s)::date, count(*) FROM {}"
            " WHERE series_id = ANY(%s) AND time < %s GROUP BY 1"
        ).format(table(schema, "telemetry")),
        (tz, list(ids), before),
    )
    return {r[0]: int(r[1]) for r in await cur.fetchall()}


async def hot_rows(
    conn: Conn, schema: str, ids: Sequence[int], start: datetime, end: datetime
) -> list[ArchivedRow]:
    """The hot rows of the series ``ids`` with ``start <= time < end``."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT {} FROM {} t JOIN {} s ON s.id = t.series_id"
            " WHERE t.series_id = ANY(%s) AND t.time >= %s AND t.time < %s"
        ).format(_ROW_COLUMNS, table(schema, "telemetry"), table(schema, "series")),
        (list(ids), start, end),
    )
    return [ArchivedRow(*r) for r in await cur.fetchall()]


async def delete_hot(
    conn: Conn, schema: str, ids: Sequence[int], start: datetime, end: datetime
) -> int:
    cur = await conn.execute(
        sql.SQL(
            "DELETE FROM {} WHERE series_id = ANY(%s) AND time >= %s AND time < %s"
        ).format(table(schema, "telemetry")),
        (list(ids), start, end),
    )
    return cur.rowcount


async def marks(
    conn: Conn, schema: str, enterprise: str, start: datetime, end: datetime
) -> list[dict[str, Any]]:
    """The marks in force or not, as they stand now (``marks_current``), of the
    enterprise's devices overlapping ``[start, end)``, by id; times as ISO 8601."""
    cur = await conn.execute(
        sql.SQL(
            "SELECT id, device, metric, start_at, end_at, kind, invalid, reason,"
            " attachment, origin, created_by, created_at, supersedes, review,"
            " in_force FROM {} WHERE enterprise = %s AND start_at < %s"
            " AND end_at > %s ORDER BY id"
        ).format(table(schema, "marks_current")),
        (enterprise, end, start),
    )
    names = [d.name for d in cur.description or ()]
    return [
        {
            n: v.isoformat() if isinstance(v, datetime) else v
            for n, v in zip(names, r, strict=True)
        }
        for r in await cur.fetchall()
    ]


async def manifests(conn: Conn, schema: str, enterprise: str) -> list[IndexRow]:
    """The index of an enterprise's manifests, in chain order."""
    async with conn.cursor(row_factory=class_row(IndexRow)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT enterprise, position, park, day, time_zone, kind, row_count,"
                " segment_path, segment_sha256, manifest_path, manifest_sha256,"
                " previous_sha256, key_id, created_at FROM {}"
                " WHERE enterprise = %s ORDER BY position"
            ).format(table(schema, "archive_manifests")),
            (enterprise,),
        )
        return await cur.fetchall()


async def head(conn: Conn, schema: str, enterprise: str) -> IndexRow | None:
    """The last manifest of an enterprise's chain (None: nothing sealed yet)."""
    async with conn.cursor(row_factory=class_row(IndexRow)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT enterprise, position, park, day, time_zone, kind, row_count,"
                " segment_path, segment_sha256, manifest_path, manifest_sha256,"
                " previous_sha256, key_id, created_at FROM {}"
                " WHERE enterprise = %s ORDER BY position DESC LIMIT 1"
            ).format(table(schema, "archive_manifests")),
            (enterprise,),
        )
        return await cur.fetchone()


async def insert_manifest(conn: Conn, schema: str, row: IndexRow) -> None:
    """Index a manifest; fails on the primary key if another seal took the
    position first (the caller's transaction then rolls back)."""
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (enterprise, position, park, day, time_zone, kind,"
            " row_count, segment_path, segment_sha256, manifest_path,"
            " manifest_sha256, previous_sha256, key_id, created_at)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
        ).format(table(schema, "archive_manifests")),
        (
            row.enterprise, row.position, row.park, row.day, row.time_zone, row.kind,
            row.row_count, row.segment_path, row.segment_sha256, row.manifest_path,
            row.manifest_sha256, row.previous_sha256, row.key_id, row.created_at,
        ),
    )  # fmt: skip


async def evictions(
    conn: Conn,
    schema: str,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    enterprise: str | None = None,
) -> list[Eviction]:
    """Evicted days overlapping ``[start, end)`` (None: unbounded), by start."""
    conds: list[sql.Composable] = [sql.SQL("true")]
    params: list[Any] = []
    if start is not None:
        conds.append(sql.SQL("end_at > %s"))
        params.append(start)
    if end is not None:
        conds.append(sql.SQL("start_at < %s"))
        params.append(end)
    if enterprise is not None:
        conds.append(sql.SQL("enterprise = %s"))
        params.append(enterprise)
    async with conn.cursor(row_factory=class_row(Eviction)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT enterprise, day, park, start_at, end_at, row_count,"
                " archive_url FROM {} WHERE {} ORDER BY start_at, enterprise"
            ).format(table(schema, "archive_evictions"), sql.SQL(" AND ").join(conds)),
            params,
        )
        return await cur.fetchall()


async def insert_eviction(conn: Conn, schema: str, e: Eviction) -> None:
    await conn.execute(
        sql.SQL(
            "INSERT INTO {} (enterprise, day, park, start_at, end_at, row_count,"
            " archive_url) VALUES (%s, %s, %s, %s, %s, %s, %s)"
        ).format(table(schema, "archive_evictions")),
        (e.enterprise, e.day, e.park, e.start_at, e.end_at, e.row_count,
         e.archive_url),
    )  # fmt: skip
