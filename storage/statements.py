"""The write-path SQL of both dialects, composed once per storage with psycopg.sql.

Every table name is qualified with the configured schema (``sql.Identifier``), so the
statements do not depend on the session's search_path. The staging table is a
session-local temporary table (``pg_temp``), one per connection.
"""

from __future__ import annotations

from psycopg import sql

# The columns of a stored row (migration 0006), in table order; see StoredRow.
COLUMNS = ("time", "seq", "value", "series_id", "quality", "reset")
# Binary COPY needs the types up front; order matches COLUMNS.
COPY_TYPES = ("timestamptz", "int8", "float8", "int4", "text", "text")
_ARRAY_CASTS = ("timestamptz[]", "int8[]", "float8[]", "int4[]", "text[]", "text[]")
STAGING = sql.Identifier("pg_temp", "sp_telemetry_staging")

_cols = sql.SQL(", ").join(sql.Identifier(c) for c in COLUMNS)


def create_staging() -> sql.Composed:
    """The per-connection staging table; ``ON COMMIT DELETE ROWS`` empties it per batch.

    No constraints: COPY must accept the batch as it is, duplicates included; the
    INSERT from it decides what is new.
    """
    return sql.SQL(
        "CREATE TEMP TABLE IF NOT EXISTS {} (time timestamptz, seq int8,"
        " value float8, series_id int4, quality text, reset text)"
        " ON COMMIT DELETE ROWS"
    ).format(STAGING)


def copy_into_staging() -> sql.Composed:
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(STAGING, _cols)


def copy_into_telemetry(schema: str) -> sql.Composed:
    """COPY straight into ``telemetry``: fails on the first row already stored."""
    return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
        sql.Identifier(schema, "telemetry"), _cols
    )


def unnest_source() -> sql.Composed:
    """A row source from one array parameter per column (the INSERT path)."""
    arrays = sql.SQL(", ").join(
        sql.SQL("%s::{}").format(sql.SQL(cast)) for cast in _ARRAY_CASTS
    )
    return sql.SQL("unnest({}) AS s ({})").format(arrays, _cols)


def insert_rows(schema: str, source: sql.Composable) -> sql.Composed:
    """Insert the rows of ``source``; the cursor's rowcount is the number inserted.

    Existing (series_id, time) rows are left untouched (``ON CONFLICT DO
    NOTHING``), duplicates inside the batch too.
    """
    return sql.SQL(
        "INSERT INTO {table} ({cols}) SELECT {cols} FROM {source}"
        " ON CONFLICT DO NOTHING"
    ).format(table=sql.Identifier(schema, "telemetry"), cols=_cols, source=source)
