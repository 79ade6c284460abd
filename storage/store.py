"""The storage of the whole platform: one pool, one schema, one store per concern.

``async with Storage(settings.database) as storage:`` opens one async connection pool
(one per process), reads the schema's migration state and resolves the dialect (the
one recorded in ``schema_migrations``, else the ``dialect`` setting, where ``auto``
detects TimescaleDB). Then the stores work over that pool:

- ``storage.telemetry`` (:class:`~storage.telemetry.TelemetryStore`): readings
  with their Kafka offsets in one transaction, reads, rollups, partitions;
- ``storage.offsets`` (:class:`~storage.offsets.OffsetStore`): consumer positions;
- ``storage.alerts`` (:class:`~storage.alerts.AlertStore`): alert events, alerts and
  rule-engine checkpoints;
- ``storage.webhooks`` (:class:`~storage.webhooks.WebhookStore`): subscriptions,
  secrets, the delivery outbox and its log;
- ``storage.marks`` (:class:`~storage.marks.MarkStore`): data marks, their
  corrections and reviews, automatic marks and the invalid periods.

Every database failure surfaces as :class:`~smartpark.errors.StorageError`
(retriable), a wrong setting or an unmigrated schema as
:class:`~smartpark.errors.ConfigError`. Stores return typed rows (dataclasses or
named tuples), never bare dictionaries.
"""

from __future__ import annotations

import logging
from contextlib import AbstractAsyncContextManager
from typing import Self

import psycopg
from psycopg_pool import AsyncConnectionPool

from smartpark.clock import MsClock, system_ms
from smartpark.errors import ConfigError, StorageError
from smartpark.settings import DatabaseSettings
from storage import migrate, reads
from storage.alerts import AlertStore
from storage.base import Conn, storage_errors
from storage.keys import KeyStore
from storage.marks import MarkStore
from storage.model import AppliedMigration, Dialect, StorageInfo
from storage.offsets import OffsetStore
from storage.queries import TelemetryQueries
from storage.registry import RegistryStore
from storage.secretbox import SecretBox
from storage.telemetry import TelemetryStore
from storage.webhooks import WebhookStore

log = logging.getLogger(__name__)


class Storage:
    """One PostgreSQL schema of the platform (either dialect) and its stores.

    Construct cheaply; :meth:`open` (or ``async with``) connects. ``clock`` gives
    "today" for partition maintenance and the time of a person's acknowledgement.
    The stores exist once the storage is open (the telemetry store needs the
    dialect).
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        pool_size: int = 1,
        clock: MsClock = system_ms,
        connect_timeout_s: float = 30.0,
        application_name: str = "smartpark",
        webhook_keys: SecretBox | None = None,
        prefill: bool = False,
    ) -> None:
        self._schema = settings.schema_
        self._settings = settings
        self._pool_size = pool_size
        # Open every connection at start: the pool never grows under load later.
        self._min_size = pool_size if prefill else 1
        self._clock = clock
        self._connect_timeout_s = connect_timeout_s
        self._application_name = application_name
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._dialect: Dialect | None = None
        self._telemetry: TelemetryStore | None = None
        self._queries: TelemetryQueries | None = None
        self.offsets = OffsetStore(self)
        self.alerts = AlertStore(self)
        self.webhooks = WebhookStore(self, webhook_keys)
        self.keys = KeyStore(self)
        self.registry = RegistryStore(self)
        self.marks = MarkStore(self)

    # -- the Database protocol the stores work through --------------------------------

    @property
    def schema(self) -> str:
        return self._schema

    @property
    def clock(self) -> MsClock:
        return self._clock

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """``async with storage.connection() as conn``: a pooled autocommit
        connection; wrap its use in :func:`storage.base.storage_errors`."""
        if self._pool is None:
            raise RuntimeError("Storage is not open")
        return self._pool.connection()

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
            min_size=self._min_size,
            max_size=self._pool_size,
            open=False,
            kwargs={"autocommit": True, "application_name": self._application_name},
            name=f"smartpark-storage-{self._schema}",
            timeout=self._connect_timeout_s,
        )
        try:
            await pool.open(wait=True, timeout=self._connect_timeout_s)
        except psycopg.Error as exc:
            await pool.close()
            raise StorageError(f"cannot connect to the database: {exc}") from exc
        self._pool = pool
        try:
            async with self.connection() as conn:
                self._dialect = await self._resolve_dialect(conn)
        except BaseException:
            await self.close()
            raise
        self._telemetry = TelemetryStore(
            self, self._dialect, self._settings.bulk_method
        )
        self._queries = TelemetryQueries(self, self._dialect)

    async def _resolve_dialect(self, conn: Conn) -> Dialect:
        recorded = migrate.recorded_dialect(await migrate.applied(conn, self._schema))
        wanted = self._settings.dialect
        if recorded is None:
            return await migrate.detect_dialect(conn, wanted)
        if wanted not in ("auto", recorded.value):
            raise ConfigError(
                f"schema {self._schema!r} was migrated as {recorded.value}, "
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

    @property
    def telemetry(self) -> TelemetryStore:
        if self._telemetry is None:
            raise RuntimeError("Storage is not open")
        return self._telemetry

    @property
    def queries(self) -> TelemetryQueries:
        """Telemetry as the API reads it, within a caller's scope."""
        if self._queries is None:
            raise RuntimeError("Storage is not open")
        return self._queries

    # -- migrations ---------------------------------------------------------------

    async def migrate(self, *, up_to: int | None = None) -> list[str]:
        """Apply missing migrations (idempotent); return ``NNNN_name`` of those applied.

        ``up_to`` stops after that version (None: every shipped migration). For plain
        PostgreSQL it also creates the partitions around today.
        """
        with storage_errors("migrate"):
            async with self.connection() as conn:
                done = await migrate.apply_migrations(
                    conn, self._schema, self.dialect, up_to=up_to
                )
        await self.telemetry.ensure_partitions()
        return [f"{m.version:04d}_{m.name}" for m in done]

    async def applied_migrations(self) -> list[AppliedMigration]:
        with storage_errors("read schema_migrations"):
            async with self.connection() as conn:
                return await migrate.applied(conn, self._schema)

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
                f"schema {self._schema!r} is not migrated ({self.dialect.value}, "
                f"pending {', '.join(pending)}); run: smartpark db migrate",
                field="database.schema",
            )

    # -- what is in it ------------------------------------------------------------

    async def info(self) -> StorageInfo:
        """Dialect, versions, migrations and row counts, for ``smartpark db info``."""
        with storage_errors("read info"):
            async with self.connection() as conn:
                done = await migrate.applied(conn, self._schema)
                versions = {m.version for m in done}
                pending = tuple(
                    f"{m.version:04d}_{m.name}"
                    for m in migrate.available(self.dialect)
                    if m.version not in versions
                )
                counts = await reads.table_counts(conn, self._schema) if done else {}
                parts: tuple[str, ...] = ()
                if done and self.dialect is Dialect.POSTGRES:
                    existing = await self.telemetry.partitions.existing(conn)
                    parts = tuple(sorted(existing.values()))
                server, ts = await reads.versions(conn)
        return StorageInfo(
            self._schema, self.dialect, server, ts, tuple(done), pending, counts, parts
        )
