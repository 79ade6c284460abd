"""A Grafana panel query run as Grafana's data source runs it: logged in as the
scope's read-only role (:mod:`storage.grafana_roles`), so the session has the
role's search path, read-only transactions and statement timeout, and sees only
the rows of the role's scope.

Contract: :func:`run_as` opens one connection to ``dsn`` with the role's name and
password (the server and database of ``dsn``; its user and password are
replaced), runs the already expanded SQL text as it is (no parameters: Grafana
sends text) and returns the column names and every row. Any database failure,
the login included, is a :class:`~smartpark.errors.StorageError` naming the role.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from storage.base import storage_errors
from storage.grafana_roles import GrafanaRole


@dataclass(frozen=True, slots=True)
class QueryResult:
    """What a panel query returned: its columns in order and its rows."""

    columns: tuple[str, ...]
    rows: list[tuple[Any, ...]]


async def run_as(dsn: str, role: GrafanaRole, statement: str) -> QueryResult:
    """Run ``statement`` logged in as ``role`` on the database of ``dsn``."""
    with storage_errors(f"Grafana query as {role.role}"):
        async with await psycopg.AsyncConnection.connect(
            dsn, user=role.role, password=role.password, autocommit=True
        ) as conn:
            cur = await conn.execute(statement.encode())
            if cur.description is None:
                raise psycopg.ProgrammingError("the statement returned no rows")
            columns = tuple(c.name for c in cur.description)
            return QueryResult(columns, await cur.fetchall())
