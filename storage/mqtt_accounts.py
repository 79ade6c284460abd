"""MQTT accounts of the broker (``mqtt_accounts``, migration 0016).

Contract: the store keeps rows and never sees a password, only the hash the caller
made (:mod:`api.mqtt.acl`). A gateway account is created only for an active
enterprise of the registry; :meth:`MqttAccountStore.grants` reads each active
account with its enterprise's park and whether the enterprise is still active, which
is all the broker's files are made of. Accounts are retired, never deleted, and a
retired account is never changed again (its name stays taken).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import psycopg
from psycopg import sql
from psycopg.rows import class_row

from storage.base import Database, storage_errors, table


class AccountKind(StrEnum):
    GATEWAY = "gateway"  # an enterprise's edge gateway: publishes its own topics
    BRIDGE = "bridge"  # the MQTT -> Kafka bridge: reads every device topic


class AccountTaken(Exception):
    """The username exists already (active or retired)."""

    def __init__(self, username: str) -> None:
        super().__init__(f"MQTT account {username!r} exists already")
        self.username = username


@dataclass(frozen=True, slots=True)
class MqttAccountRow:
    username: str
    kind: str
    enterprise: str | None
    gateway: str | None
    created_at: datetime
    password_set_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class AccountGrant:
    """An active account as the broker's files need it."""

    username: str
    kind: str
    password_hash: str
    park: str | None  # a gateway's enterprise's park; None for a bridge
    enterprise: str | None
    enterprise_active: bool  # False: the enterprise was retired in the registry


_COLUMNS = (
    "username, kind, enterprise, gateway, created_at, password_set_at, retired_at"
)


class MqttAccountStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC)

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def create_gateway(
        self, enterprise: str, gateway: str, password_hash: str
    ) -> MqttAccountRow | None:
        """A gateway account ``gateway@enterprise``; None when the enterprise is not
        an active one. :class:`AccountTaken` when the name exists."""
        username = f"{gateway}@{enterprise}"
        query = sql.SQL(
            "INSERT INTO {accounts} (username, kind, enterprise, gateway,"
            " password_hash, created_at, password_set_at)"
            " SELECT %s, 'gateway', id, %s, %s, %s, %s FROM {enterprises}"
            " WHERE id = %s AND retired_at IS NULL"
            " RETURNING " + _COLUMNS
        ).format(accounts=self._t("mqtt_accounts"), enterprises=self._t("enterprises"))
        now = self._now()
        params = (username, gateway, password_hash, now, now, enterprise)
        return await self._insert(username, query, params)

    async def create_bridge(self, name: str, password_hash: str) -> MqttAccountRow:
        """A bridge account; :class:`AccountTaken` when the name exists."""
        query = sql.SQL(
            "INSERT INTO {} (username, kind, password_hash, created_at,"
            " password_set_at) VALUES (%s, 'bridge', %s, %s, %s)"
            " RETURNING " + _COLUMNS
        ).format(self._t("mqtt_accounts"))
        now = self._now()
        row = await self._insert(name, query, (name, password_hash, now, now))
        assert row is not None
        return row

    async def _insert(
        self, username: str, query: sql.Composed, params: tuple[object, ...]
    ) -> MqttAccountRow | None:
        with storage_errors("create MQTT account"):
            try:
                async with (
                    self._db.connection() as conn,
                    conn.cursor(row_factory=class_row(MqttAccountRow)) as cur,
                ):
                    await cur.execute(query, params)
                    return await cur.fetchone()
            except psycopg.errors.UniqueViolation:
                raise AccountTaken(username) from None

    async def set_password(
        self, username: str, password_hash: str
    ) -> MqttAccountRow | None:
        """Replace an active account's hash; None if there is no such account."""
        return await self._update(
            "set MQTT password",
            sql.SQL("password_hash = %s, password_set_at = %s"),
            (password_hash, self._now(), username),
        )

    async def retire(self, username: str) -> MqttAccountRow | None:
        """Retire an active account; None if there is no such account."""
        return await self._update(
            "retire MQTT account", sql.SQL("retired_at = %s"), (self._now(), username)
        )

    async def _update(
        self, what: str, assignments: sql.Composable, params: tuple[object, ...]
    ) -> MqttAccountRow | None:
        query = sql.SQL(
            "UPDATE {} SET {} WHERE username = %s AND retired_at IS NULL"
            " RETURNING " + _COLUMNS
        ).format(self._t("mqtt_accounts"), assignments)
        with storage_errors(what):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(MqttAccountRow)) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchone()

    async def all(self) -> list[MqttAccountRow]:
        """Every account, retired ones included, by username."""
        with storage_errors("list MQTT accounts"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(MqttAccountRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL("SELECT " + _COLUMNS + " FROM {} ORDER BY username").format(
                        self._t("mqtt_accounts")
                    )
                )
                return await cur.fetchall()

    async def grants(self) -> list[AccountGrant]:
        """Every active account with its enterprise's park, by username."""
        query = sql.SQL(
            "SELECT a.username, a.kind, a.password_hash, e.park, a.enterprise,"
            " e.id IS NOT NULL AND e.retired_at IS NULL AS enterprise_active"
            " FROM {accounts} a LEFT JOIN {enterprises} e ON e.id = a.enterprise"
            " WHERE a.retired_at IS NULL ORDER BY a.username"
        ).format(accounts=self._t("mqtt_accounts"), enterprises=self._t("enterprises"))
        with storage_errors("read MQTT accounts"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AccountGrant)) as cur,
            ):
                await cur.execute(query)
                return await cur.fetchall()
