"""API keys (``api_keys``) and the audit log (``audit_log``); see migration 0007.

The store keeps rows; the key's shape and hash are :mod:`smartpark.apikeys`'.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from psycopg import sql
from psycopg.rows import class_row

from smartpark.tenancy import Role, Scope
from storage.base import Database, storage_errors, table

# last_used_at is written at most this often per key, not on every request.
TOUCH_EVERY = timedelta(minutes=1)


@dataclass(frozen=True, slots=True)
class KeyRow:
    id: str
    name: str
    role: str
    park: str | None
    enterprise: str | None
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None

    @property
    def scope(self) -> Scope:
        return Scope(Role(self.role), self.park, self.enterprise)

    def usable(self, now: datetime) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class AuditRow:
    id: int
    at: datetime
    key_id: str
    role: str
    park: str | None
    enterprise: str | None
    action: str
    target: str
    remote: str | None
    detail: dict[str, Any]


_KEY_COLUMNS = (
    "id, name, role, park, enterprise, created_at, expires_at, revoked_at, last_used_at"
)


class KeyStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC)

    async def create(
        self,
        key_id: str,
        secret_hash: bytes,
        *,
        name: str,
        scope: Scope,
        expires_at: datetime | None = None,
    ) -> KeyRow:
        with storage_errors("create key"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(KeyRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, secret_hash, name, role, park, enterprise,"
                        " expires_at, created_at)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"
                        " RETURNING " + _KEY_COLUMNS
                    ).format(table(self._db.schema, "api_keys")),
                    (key_id, secret_hash, name, scope.role.value, scope.park,
                     scope.enterprise, expires_at, self._now()),
                )  # fmt: skip
                row = await cur.fetchone()
                assert row is not None
                return row

    async def lookup(self, key_id: str) -> tuple[KeyRow, bytes] | None:
        """The key and its stored hash, or None."""
        with storage_errors("read key"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT " + _KEY_COLUMNS + ", secret_hash FROM {} WHERE id = %s"
                    ).format(table(self._db.schema, "api_keys")),
                    (key_id,),
                )
                row = await cur.fetchone()
        if row is None:
            return None
        return KeyRow(*row[:-1]), bytes(row[-1])

    async def touch(self, key: KeyRow) -> None:
        """Record a use (at most once per :data:`TOUCH_EVERY`)."""
        now = self._now()
        if key.last_used_at is not None and now - key.last_used_at < TOUCH_EVERY:
            return
        with storage_errors("touch key"):
            async with self._db.connection() as conn:
                await conn.execute(
                    sql.SQL("UPDATE {} SET last_used_at = %s WHERE id = %s").format(
                        table(self._db.schema, "api_keys")
                    ),
                    (now, key.id),
                )

    async def all(self) -> list[KeyRow]:
        with storage_errors("list keys"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(KeyRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "SELECT " + _KEY_COLUMNS + " FROM {} ORDER BY created_at, id"
                    ).format(table(self._db.schema, "api_keys"))
                )
                return await cur.fetchall()

    async def revoke(self, key_id: str) -> KeyRow | None:
        """Revoke a key (idempotent: the first revocation time stays); None if no
        such key."""
        with storage_errors("revoke key"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(KeyRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "UPDATE {} SET revoked_at = coalesce(revoked_at, %s)"
                        " WHERE id = %s RETURNING " + _KEY_COLUMNS
                    ).format(table(self._db.schema, "api_keys")),
                    (self._now(), key_id),
                )
                return await cur.fetchone()

    # -- audit --------------------------------------------------------------------

    async def audit(
        self,
        key: KeyRow,
        action: str,
        target: str,
        *,
        remote: str | None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry to the audit log."""
        with storage_errors("write audit log"):
            async with self._db.connection() as conn:
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (at, key_id, role, park, enterprise, action,"
                        " target, remote, detail) VALUES (%s, %s, %s, %s, %s, %s, %s,"
                        " %s, %s)"
                    ).format(table(self._db.schema, "audit_log")),
                    (self._now(), key.id, key.role, key.park, key.enterprise, action,
                     target, remote, json.dumps(detail or {}, sort_keys=True)),
                )  # fmt: skip

    async def audit_log(self, *, limit: int = 100) -> list[AuditRow]:
        """The newest entries first."""
        with storage_errors("read audit log"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AuditRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "SELECT id, at, key_id, role, park, enterprise, action, target,"
                        " remote, detail FROM {} ORDER BY id DESC LIMIT %s"
                    ).format(table(self._db.schema, "audit_log")),
                    (limit,),
                )
                return await cur.fetchall()
