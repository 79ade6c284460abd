"""The storage API: one class over both SQL dialects.

``async with Storage(settings.database) as storage:`` opens one async connection pool
(one per process; the sink needs one connection), reads the schema's migration state
and resolves the dialect (the one recorded in ``schema_migrations``, else the
``dialect`` setting, where ``auto`` detects TimescaleDB).

The write contract (:meth:`Storage.write`): rows and Kafka offsets are committed in
one transaction. If ``write()`` raises, nothing of the batch is committed — neither
rows nor offsets — and calling it again with the same batch is safe; if it returns,
both are durable. Rows already stored (same device, metric, time) are counted as
duplicates and left untouched, so redelivery and retries never duplicate a row.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import AbstractAsyncContextManager, contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any, Self

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from ingest.storage import alerts, migrate, reads, rollups, statements
from ingest.storage.alerts import AlertEventRow, RuleState
from ingest.storage.model import (
    AppliedMigration,
    Dialect,
    KafkaOffset,
    ReadingKey,
    RollupLevel,
    RollupRow,
    StorageInfo,
    TelemetryRow,
    WriteResult,
)
from ingest.storage.partitions import Partitions
from ingest.storage.writer import BULK_METHODS, RowWriter
from smartpark.clock import MsClock, system_ms
from smartpark.errors import ConfigError, StorageError
from smartpark.settings import DatabaseSettings

log = logging.getLogger(__name__)

Conn = psycopg.AsyncConnection[Any]


class Storage:
    """Telemetry, offsets and rollups in one PostgreSQL schema (both dialects).

    Construct cheaply; :meth:`open` (or ``async with``) connects. ``clock`` gives
    "today" for partition maintenance. Every database failure surfaces as
    :class:`StorageError` (retriable), a wrong setting or an unmigrated schema as
    :class:`ConfigError`.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        pool_size: int = 1,
        clock: MsClock = system_ms,
        connect_timeout_s: float = 30.0,
        application_name: str = "smartpark",
    ) -> None:
        if settings.bulk_method not in BULK_METHODS:
            raise ConfigError(
                f"unknown bulk method {settings.bulk_method!r}; expected "
                + " or ".join(BULK_METHODS),
                field="database.bulk_method",
            )
        self.schema = settings.schema_
        self._settings = settings
        self._pool_size = pool_size
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._application_name = application_name
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._dialect: Dialect | None = None
        self._partitions = Partitions(self.schema)
        self._writer = RowWriter(self.schema, settings.bulk_method)

    # -- lifecycle ----------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def open(self) -> None:
        """Connect and resolve the dialect. Does not require the schema migrated."""
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self._settings.dsn.get_secret_value(),
            min_size=1,
            max_size=self._pool_size,
            open=False,
            kwargs={"autocommit": True, "application_name": self._application_name},
            name=f"smartpark-storage-{self.schema}",
            timeout=self._connect_timeout_s,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise StorageError(f"cannot connect to the database: {exc}") from exc
        self._pool = pool
        try:
            async with self._conn() as conn:
                self._dialect = await self._resolve_dialect(conn)
        except BaseException:
            await self.close()
            raise

    async def _resolve_dialect(self, conn: Conn) -> Dialect:
        recorded = migrate.recorded_dialect(await migrate.applied(conn, self.schema))
        wanted = self._settings.dialect
        if recorded is None:
            return await migrate.detect_dialect(conn, wanted)
        if wanted not in ("auto", recorded.value):
            raise ConfigError(
                f"schema {self.schema!r} was migrated as {recorded.value}, "
                f"the setting asks for {wanted}",
                field="database.dialect",
            )
        return recorded

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @property
    def dialect(self) -> Dialect:
        if self._dialect is None:
            raise RuntimeError("Storage is not open")
        return self._dialect

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """A pooled autocommit connection for the stores built on this one
        (:class:`ingest.storage.webhooks.WebhookStore`); wrap its use in
        :func:`storage_errors`."""
        return self._conn()

    def _conn(self) -> AbstractAsyncContextManager[Conn]:
        """``async with self._conn() as conn``: a pooled autocommit connection."""
        if self._pool is None:
            raise RuntimeError("Storage is not open")
        return self._pool.connection()

    # -- migrations ---------------------------------------------------------------

    async def migrate(self, *, up_to: int | None = None) -> list[str]:
        """Apply missing migrations (idempotent); return ``NNNN_name`` of those applied.

        ``up_to`` stops after that version (None: every shipped migration). For plain
        PostgreSQL it also creates the partitions around today.
        """
        with storage_errors("migrate"):
            async with self._conn() as conn:
                done = await migrate.apply_migrations(
                    conn, self.schema, self.dialect, up_to=up_to
                )
                if self.dialect is Dialect.POSTGRES:
                    await self._partitions.ensure_window(conn, self._today())
        return [f"{m.version:04d}_{m.name}" for m in done]

    async def applied_migrations(self) -> list[AppliedMigration]:
        with storage_errors("read schema_migrations"):
            async with self._conn() as conn:
                return await migrate.applied(conn, self.schema)

    async def pending_migrations(self) -> list[str]:
        done = {m.version for m in await self.applied_migrations()}
        return [
            f"{m.version:04d}_{m.name}"
            for m in migrate.available(self.dialect)
            if m.version not in done
        ]

    async def require_migrated(self) -> None:
        """Raise :class:`ConfigError` unless every shipped migration is applied."""
        pending = await self.pending_migrations()
        if pending:
            raise ConfigError(
                f"schema {self.schema!r} is not migrated ({self.dialect.value}, "
                f"pending {', '.join(pending)}); run: smartpark db migrate",
                field="database.schema",
            )

    # -- write path ---------------------------------------------------------------

    async def write(
        self, rows: Sequence[TelemetryRow], *, offsets: Sequence[KafkaOffset] = ()
    ) -> WriteResult:
        """Store ``rows`` and set ``offsets`` in one transaction.

        ``rows`` carry aware datetimes. If this raises :class:`StorageError`,
        nothing of the batch is committed; retrying the same call is safe. (If the
        connection drops during COMMIT the outcome is unknown to us, which is why
        retrying must be, and is, idempotent.)
        """
        plain = self.dialect is Dialect.POSTGRES
        minutes = rollups.touched_minutes(r.time for r in rows) if plain else []
        with storage_errors(f"write of {len(rows)} rows"), self._partitions.unsure():
            async with self._conn() as conn:
                if minutes:
                    days = {m.date() for m in minutes}
                    await self._partitions.ensure_days(conn, days)
                await self._writer.prepare(conn)
                async with conn.transaction():
                    inserted = await self._writer.insert(conn, rows)
                    if inserted and minutes:
                        await conn.execute(rollups.mark(self.schema), (minutes,))
                    if offsets:
                        await conn.execute(
                            statements.upsert_offsets(self.schema),
                            statements.offset_arrays(offsets),
                        )
        return WriteResult(inserted, len(rows) - inserted)

    async def load_offsets(self, group: str, topic: str) -> dict[int, int]:
        """The next offset per partition stored for ``group`` on ``topic``."""
        with storage_errors("load offsets"):
            async with self._conn() as conn:
                return await reads.offsets(conn, self.schema, group, topic)

    # -- alerts (the rule engine's) -------------------------------------------------

    async def write_alerts(
        self, events: Sequence[AlertEventRow], states: Sequence[RuleState]
    ) -> int:
        """Store alert events (each once, with their lifecycle) and the engine's
        checkpoints in one transaction; the number of new events."""
        with storage_errors(f"write of {len(events)} alert events"):
            async with self._conn() as conn, conn.transaction():
                return await alerts.write(conn, self.schema, events, states)

    async def load_rule_states(self, group: str, topic: str) -> list[RuleState]:
        with storage_errors("load rule states"):
            async with self._conn() as conn:
                return await alerts.states(conn, self.schema, group, topic)

    async def unproduced_alert_events(
        self, limit: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        with storage_errors("read unproduced alert events"):
            async with self._conn() as conn:
                return await alerts.unproduced(conn, self.schema, limit)

    async def mark_alert_events_produced(self, event_ids: Sequence[str]) -> None:
        with storage_errors("mark alert events produced"):
            async with self._conn() as conn:
                await alerts.mark_produced(conn, self.schema, event_ids)

    async def alert_events(self, *, park: str | None = None) -> list[dict[str, Any]]:
        """Stored alert events (as produced), in the order they were stored."""
        with storage_errors("read alert events"):
            async with self._conn() as conn:
                return await alerts.events(conn, self.schema, park=park)

    async def acknowledge_alert(self, alert_id: str, *, by: str) -> str | None:
        """Acknowledge an open alert (a person's act); the alert's status after it,
        None if there is no such alert. The engine still resolves it later. It is
        also an ``acknowledged`` event, produced to the alerts topic by the runner."""
        with storage_errors("acknowledge alert"):
            async with self._conn() as conn, conn.transaction():
                return await alerts.acknowledge(
                    conn, self.schema, alert_id, by, self._clock()
                )

    async def alerts(self, *, park: str | None = None) -> list[dict[str, Any]]:
        """Alerts with their current status."""
        with storage_errors("read alerts"):
            async with self._conn() as conn:
                return await alerts.alert_rows(conn, self.schema, park=park)

    # -- maintenance --------------------------------------------------------------

    def _today(self) -> date:
        return datetime.fromtimestamp(self._clock() / 1000, UTC).date()

    async def ensure_partitions(self, *, today: date | None = None) -> list[str]:
        """Plain PostgreSQL: partitions for today-1 .. today+7; no-op on TimescaleDB."""
        if self.dialect is not Dialect.POSTGRES:
            return []
        with storage_errors("ensure partitions"):
            async with self._conn() as conn:
                return await self._partitions.ensure_window(
                    conn, today or self._today()
                )

    async def apply_retention(self, *, keep_days: int) -> list[str]:
        """Plain PostgreSQL: drop raw partitions older than ``keep_days`` days.

        TimescaleDB has a retention policy instead (see its migration); there this
        returns ``[]``.
        """
        if self.dialect is not Dialect.POSTGRES:
            return []
        cutoff = self._today() - timedelta(days=keep_days)
        with storage_errors("apply retention"):
            async with self._conn() as conn:
                return await self._partitions.drop_before(conn, cutoff)

    async def refresh_rollups(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> int:
        """Bring the rollups up to date; ``[start, end)`` is recomputed in any case.

        Plain PostgreSQL: recompute the buckets the write path logged (and the given
        range); returns the number of one-minute buckets recomputed. TimescaleDB:
        refresh the continuous aggregates finest first (each level reads the one
        below) over the range (None: unbounded); returns 0. Either way, afterwards
        the rollups equal a GROUP BY over the raw rows.
        """
        with storage_errors("refresh rollups"):
            async with self._conn() as conn:
                if self.dialect is Dialect.POSTGRES:
                    extra = (start, end) if start and end else None
                    return await rollups.refresh(conn, self.schema, extra)
                for level in RollupLevel:
                    await conn.execute(
                        "CALL refresh_continuous_aggregate("
                        "%s::regclass, %s::timestamptz, %s::timestamptz)",
                        (
                            sql.Identifier(
                                self.schema, f"telemetry_{level.value}"
                            ).as_string(conn),
                            start,
                            end,
                        ),
                    )
        return 0

    # -- reads --------------------------------------------------------------------

    async def count_rows(
        self,
        *,
        park: str | None = None,
        enterprise: str | None = None,
        device: str | None = None,
    ) -> int:
        with storage_errors("count rows"):
            async with self._conn() as conn:
                return await reads.count_rows(
                    conn, self.schema, park=park, enterprise=enterprise, device=device
                )

    async def reading_keys(
        self, *, park: str | None = None, device: str | None = None
    ) -> list[ReadingKey]:
        """(device, seq, metric) of every stored reading, sorted: exactness checks."""
        with storage_errors("read keys"):
            async with self._conn() as conn:
                return await reads.reading_keys(
                    conn, self.schema, park=park, device=device
                )

    async def readings(
        self,
        *,
        device: str | None = None,
        park: str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[TelemetryRow]:
        """Stored rows in time order, filtered; ``[start, end)``."""
        with storage_errors("read rows"):
            async with self._conn() as conn:
                return await reads.readings(
                    conn, self.schema, device=device, park=park, start=start, end=end
                )

    async def rollup(
        self,
        level: RollupLevel,
        *,
        start: datetime,
        end: datetime,
        park: str | None = None,
        enterprise: str | None = None,
        device: str | None = None,
        metric: str | None = None,
    ) -> list[RollupRow]:
        """Rollup rows with ``start <= bucket < end`` by bucket, device, metric."""
        with storage_errors("read rollup"):
            async with self._conn() as conn:
                return await reads.rollup(
                    conn, self.schema, level, start=start, end=end, park=park,
                    enterprise=enterprise, device=device, metric=metric,
                )  # fmt: skip

    async def info(self) -> StorageInfo:
        """Dialect, versions, migrations and row counts, for ``smartpark db info``."""
        with storage_errors("read info"):
            async with self._conn() as conn:
                done = await migrate.applied(conn, self.schema)
                versions = {m.version for m in done}
                pending = tuple(
                    f"{m.version:04d}_{m.name}"
                    for m in migrate.available(self.dialect)
                    if m.version not in versions
                )
                counts = await reads.table_counts(conn, self.schema) if done else {}
                parts: tuple[str, ...] = ()
                if done and self.dialect is Dialect.POSTGRES:
                    parts = tuple(
                        sorted((await self._partitions.existing(conn)).values())
                    )
                server, ts = await reads.versions(conn)
        return StorageInfo(
            self.schema, self.dialect, server, ts, tuple(done), pending, counts, parts
        )


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn any psycopg error (pool timeouts included) into :class:`StorageError`."""
    try:
        yield
    except psycopg.Error as exc:
        raise StorageError(f"{what} failed: {exc}") from exc
