"""Grafana's read-only database roles (``grafana_roles``, migration 0018).

Contract: :meth:`GrafanaRoles.ensure` makes the LOGIN role of a scope (an
enterprise, a park's operators, the regulators) exist with exactly these rights:
``USAGE`` on the platform's schema and ``SELECT`` on the ``grafana_*`` views,
which keep only the scope's rows (the migration's comment says how); every
session of the role is read-only, has the platform's schema as its search path
and a statement timeout. It is idempotent: a second call changes nothing and
returns the same password. The password is generated here (32 random URL-safe
characters), stored sealed with the webhook secret key
(:class:`~storage.secretbox.SecretBox`, the role's name as associated data) and
returned to provisioning, which gives it to Grafana's data source.

Roles are cluster-wide, schemas are not: a role's name carries the schema
(``sp_grafana_<schema>_<scope>``, hashed when it would pass PostgreSQL's 63
bytes), so two platforms (or two test schemas) on one server never share a role.
A name is never reused for another scope: :class:`RoleConflict` when the
stored row names another scope, or when the role exists without a row here
(another platform's, or made by hand). The connecting user needs ``CREATEROLE``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from psycopg import sql

from smartpark.errors import StorageError
from smartpark.tenancy import Role, Scope
from storage.base import Conn, Database, storage_errors, table
from storage.secretbox import SecretBox

# Every view a Grafana role may read (migration 0018); nothing else is granted.
VIEWS = (
    "grafana_series",
    "grafana_telemetry",
    "grafana_telemetry_1m",
    "grafana_telemetry_1h",
    "grafana_telemetry_1d",
    "grafana_alerts",
    "grafana_parks",
    "grafana_enterprises",
    "grafana_outlets",
    "grafana_devices",
)
STATEMENT_TIMEOUT = "30s"
CONNECTION_LIMIT = 20
_MAX_NAME = 63  # PostgreSQL's identifier length in bytes


@dataclass(frozen=True, slots=True)
class GrafanaRole:
    """A scope's database role and its password (the data source's login)."""

    role: str
    scope: Scope
    password: str


def role_name(schema: str, scope: Scope) -> str:
    """The role of ``scope`` for the platform in ``schema`` (at most 63 bytes; a
    hash of the full name replaces the tail when longer)."""
    if scope.role is Role.ENTERPRISE:
        key = f"e_{scope.enterprise}"
    elif scope.role is Role.OPERATOR:
        key = f"p_{scope.park}" if scope.park else "operators"
    else:
        key = "regulators"
    name = f"sp_grafana_{schema}_{key}"  # case kept: ids "E1" and "e1" differ
    if len(name.encode()) <= _MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:16]
    return f"{name.encode()[: _MAX_NAME - 17].decode(errors='ignore')}_{digest}"


def _kind(scope: Scope) -> str:
    if scope.role is Role.OPERATOR and scope.park is None:
        raise ValueError(
            "Grafana roles of operators are per park: an operator of every park"
            " uses the regulators' organisation"
        )
    return scope.role.value


class RoleConflict(StorageError):
    """A role name that is taken by another scope or by a role this schema did
    not create: never reused, since its data source would see another scope."""


class GrafanaRoles:
    """Creates, reads and drops the Grafana roles of one platform schema."""

    def __init__(self, db: Database, box: SecretBox) -> None:
        self._db = db
        self._box = box

    async def ensure(self, scope: Scope) -> tuple[GrafanaRole, bool]:
        """The role of ``scope`` and whether it was created now; its grants and
        session settings are (re)applied either way."""
        kind = _kind(scope)
        name = role_name(self._db.schema, scope)
        with storage_errors(f"ensure Grafana role {name}"):
            async with self._db.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT password_sealed, password_kid, kind, park, enterprise"
                        " FROM {} WHERE role = %s FOR UPDATE"
                    ).format(table(self._db.schema, "grafana_roles")),
                    (name,),
                )
                row = await cur.fetchone()
                created = row is None
                if row is not None and tuple(row[2:]) != (
                    kind,
                    scope.park,
                    scope.enterprise,
                ):
                    raise RoleConflict(
                        f"Grafana role {name} belongs to {row[2]} {row[3]}/{row[4]},"
                        f" not to {scope.describe()}"
                    )
                if row is None:
                    await self._refuse_foreign(conn, name)
                    password = secrets.token_urlsafe(24)
                    sealed, kid = self._box.seal(password, name)
                    await conn.execute(
                        sql.SQL(
                            "INSERT INTO {} (role, kind, park, enterprise,"
                            " password_sealed, password_kid)"
                            " VALUES (%s, %s, %s, %s, %s, %s)"
                        ).format(table(self._db.schema, "grafana_roles")),
                        (name, kind, scope.park, scope.enterprise, sealed, kid),
                    )
                else:
                    password = self._box.open(row[0], row[1], name)
                    if row[1] != self._box.current_id:
                        # sealed with a key being retired: seal it with the
                        # current one while the old one still opens it
                        sealed, kid = self._box.seal(password, name)
                        await conn.execute(
                            sql.SQL(
                                "UPDATE {} SET password_sealed = %s,"
                                " password_kid = %s WHERE role = %s"
                            ).format(table(self._db.schema, "grafana_roles")),
                            (sealed, kid, name),
                        )
                await self._apply(conn, name, password)
        return GrafanaRole(name, scope, password), created

    async def _refuse_foreign(self, conn: Conn, name: str) -> None:
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        if await cur.fetchone():
            raise RoleConflict(
                f"a database role {name} exists already and is not recorded in"
                f" {self._db.schema}.grafana_roles: drop it or rename it first"
            )

    async def _apply(self, conn: Conn, name: str, password: str) -> None:
        role = sql.Identifier(name)
        cur = await conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (name,))
        verb = sql.SQL("ALTER" if await cur.fetchone() else "CREATE")
        await conn.execute(
            sql.SQL(
                "{} ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT"
                " NOREPLICATION NOBYPASSRLS CONNECTION LIMIT {} PASSWORD {}"
            ).format(verb, role, sql.Literal(CONNECTION_LIMIT), sql.Literal(password))
        )
        schema = sql.Identifier(self._db.schema)
        for setting, value in (
            ("default_transaction_read_only", "on"),
            ("search_path", self._db.schema),
            ("statement_timeout", STATEMENT_TIMEOUT),
        ):
            await conn.execute(
                sql.SQL("ALTER ROLE {} SET {} = {}").format(
                    role, sql.Identifier(setting), sql.Literal(value)
                )
            )
        await conn.execute(
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, role)
        )
        views = sql.SQL(", ").join(table(self._db.schema, v) for v in VIEWS)
        await conn.execute(sql.SQL("GRANT SELECT ON {} TO {}").format(views, role))

    async def get(self, scope: Scope) -> GrafanaRole | None:
        """The stored role of ``scope`` with its password, or None."""
        name = role_name(self._db.schema, scope)
        with storage_errors(f"read Grafana role {name}"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT password_sealed, password_kid FROM {} WHERE role = %s"
                    ).format(table(self._db.schema, "grafana_roles")),
                    (name,),
                )
                row = await cur.fetchone()
        if row is None:
            return None
        return GrafanaRole(name, scope, self._box.open(row[0], row[1], name))

    async def names(self) -> list[str]:
        """Every stored role of this schema, sorted."""
        with storage_errors("list Grafana roles"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL("SELECT role FROM {} ORDER BY role").format(
                        table(self._db.schema, "grafana_roles")
                    )
                )
                return [str(r[0]) for r in await cur.fetchall()]

    async def drop_all(self) -> list[str]:
        """Drop every role of this schema (its grants first) and forget it; the
        names dropped. For taking a platform schema down."""
        dropped = await self.names()
        with storage_errors("drop Grafana roles"):
            async with self._db.connection() as conn, conn.transaction():
                for name in dropped:
                    cur = await conn.execute(
                        "SELECT 1 FROM pg_roles WHERE rolname = %s", (name,)
                    )
                    if await cur.fetchone():
                        role = sql.Identifier(name)
                        await conn.execute(sql.SQL("DROP OWNED BY {}").format(role))
                        await conn.execute(sql.SQL("DROP ROLE {}").format(role))
                await conn.execute(
                    sql.SQL("DELETE FROM {}").format(
                        table(self._db.schema, "grafana_roles")
                    )
                )
        return dropped
