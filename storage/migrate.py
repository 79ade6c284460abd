"""Versioned schema migrations, per dialect, with bookkeeping in ``schema_migrations``.

Migrations are SQL files ``NNNN_name.sql`` shipped with the package, in
``migrations/common/`` when both dialects run the same statements (alerts, webhooks,
registry tables) and in ``migrations/<dialect>/`` only where they really differ
(telemetry as a hypertable with continuous aggregates, or as a partitioned table
with rollup tables). The two folders are merged by version; a version lives in
exactly one of them.

:func:`apply_migrations` applies the missing ones in version order, each in its own
transaction together with its bookkeeping row, so a failed migration leaves the
schema at the previous version. It is idempotent, and concurrent callers are
serialised by an advisory lock on the schema name.

The dialect of a schema is fixed by its first migration: a schema migrated as plain
PostgreSQL stays plain even if TimescaleDB is installed later (the tables differ).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from smartpark.errors import ConfigError, StorageError
from smartpark.settings import DialectSetting
from storage.base import Conn
from storage.model import AppliedMigration, Dialect

_FILE_RE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str


COMMON = "common"


def available(dialect: Dialect) -> list[Migration]:
    """The migrations shipped for ``dialect`` (its own and the common ones), in
    version order. Raises :class:`StorageError` if a version is shipped twice."""
    by_version: dict[int, tuple[str, Migration]] = {}
    for folder in (COMMON, dialect.value):
        for mig in _folder(folder):
            if mig.version in by_version:
                other = by_version[mig.version][0]
                raise StorageError(
                    f"migration {mig.version:04d} is shipped twice: in {other}/"
                    f" and in {folder}/"
                )
            by_version[mig.version] = (folder, mig)
    return [mig for _, (_, mig) in sorted(by_version.items())]


def migrations_root() -> Path:
    """The folder the shipped migrations are read from."""
    return Path(str(resources.files("storage") / "migrations"))


def _folder(name: str) -> list[Migration]:
    folder = resources.files("storage") / "migrations" / name
    found = []
    for entry in folder.iterdir():
        m = _FILE_RE.match(entry.name)
        if m is not None:
            found.append(Migration(int(m[1]), m[2], entry.read_text("utf-8")))
    return found


async def detect_dialect(conn: Conn, wanted: DialectSetting) -> Dialect:
    """Resolve the ``dialect`` setting (``auto|timescale|postgres``) for a new schema.

    ``auto`` picks TimescaleDB when the extension is installed in the database or
    preloaded by the server (so ``CREATE EXTENSION`` can succeed), plain PostgreSQL
    otherwise.
    """
    if wanted in (Dialect.POSTGRES.value, Dialect.TIMESCALE.value):
        dialect = Dialect(wanted)
        if dialect is Dialect.TIMESCALE and not await _timescale_usable(conn):
            raise ConfigError(
                "TimescaleDB is not installed or preloaded on this server",
                field="database.dialect",
            )
        return dialect
    return Dialect.TIMESCALE if await _timescale_usable(conn) else Dialect.POSTGRES


async def _timescale_usable(conn: Conn) -> bool:
    cur = await conn.execute(
        "SELECT EXISTS (SELECT FROM pg_extension WHERE extname = 'timescaledb')"
        " OR current_setting('shared_preload_libraries') LIKE '%timescaledb%'"
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def bookkeeping_exists(conn: Conn, schema: str) -> bool:
    cur = await conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL",
        (sql.Identifier(schema, "schema_migrations").as_string(conn),),
    )
    row = await cur.fetchone()
    return bool(row and row[0])


async def applied(conn: Conn, schema: str) -> list[AppliedMigration]:
    """The migrations recorded in ``schema``; empty if it was never migrated."""
    if not await bookkeeping_exists(conn, schema):
        return []
    async with conn.cursor(row_factory=class_row(AppliedMigration)) as cur:
        await cur.execute(
            sql.SQL(
                "SELECT version, name, dialect, applied_at FROM {} ORDER BY version"
            ).format(sql.Identifier(schema, "schema_migrations"))
        )
        rows = await cur.fetchall()
    return [
        AppliedMigration(r.version, r.name, Dialect(r.dialect), r.applied_at)
        for r in rows
    ]


def recorded_dialect(done: list[AppliedMigration]) -> Dialect | None:
    dialects = {m.dialect for m in done}
    if len(dialects) > 1:
        raise StorageError(f"schema_migrations mixes dialects {sorted(dialects)}")
    return dialects.pop() if dialects else None


async def _search_path(conn: Conn, schema: str, dialect: Dialect) -> sql.Composable:
    parts = [sql.Identifier(schema)]
    if dialect is Dialect.TIMESCALE:
        cur = await conn.execute(
            "SELECT n.nspname FROM pg_extension e"
            " JOIN pg_namespace n ON n.oid = e.extnamespace"
            " WHERE e.extname = 'timescaledb'"
        )
        row = await cur.fetchone()
        parts.append(sql.Identifier(row[0] if row else "public"))
    return sql.SQL(", ").join(parts)


async def apply_migrations(
    conn: Conn, schema: str, dialect: Dialect, *, up_to: int | None = None
) -> list[Migration]:
    """Apply the missing migrations of ``dialect`` to ``schema``; return those applied.

    ``up_to`` stops after that version (None: all), to upgrade a schema step by step.
    ``conn`` must be in autocommit mode (each migration opens its own transaction).
    Raises :class:`ConfigError` if the schema was migrated with another dialect, and
    :class:`StorageError` if a migration fails (that migration is rolled back).
    """
    lock_key = f"smartpark.migrate:{schema}"
    ident = sql.Identifier(schema)
    book = sql.Identifier(schema, "schema_migrations")
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,))
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(ident))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " dialect text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(book)
        )
    newly: list[Migration] = []
    for mig in available(dialect):
        if up_to is not None and mig.version > up_to:
            break
        async with conn.transaction():
            await conn.execute(
                "SELECT pg_advisory_xact_lock(hashtext(%s))", (lock_key,)
            )
            done = await applied(conn, schema)
            other = recorded_dialect(done)
            if other is not None and other is not dialect:
                raise ConfigError(
                    f"schema {schema!r} was migrated as {other.value}, not "
                    f"{dialect.value}",
                    field="database.dialect",
                )
            if any(m.version == mig.version for m in done):
                continue
            path = await _search_path(conn, schema, dialect)
            await conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(path))
            try:
                await conn.execute(mig.sql.encode())
            except psycopg.errors.FeatureNotSupported as exc:
                raise StorageError(
                    f"migration {dialect.value}/{mig.version:04d}_{mig.name} needs a "
                    f"feature this server refuses ({exc}); for TimescaleDB that is "
                    "the TSL module ('timescale' licence) which must be loaded"
                ) from exc
            except psycopg.Error as exc:
                raise StorageError(
                    f"migration {dialect.value}/{mig.version:04d}_{mig.name} "
                    f"failed: {exc}"
                ) from exc
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (version, name, dialect) VALUES (%s, %s, %s)"
                ).format(book),
                (mig.version, mig.name, dialect.value),
            )
        newly.append(mig)
    return newly
