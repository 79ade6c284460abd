"""What every store of :mod:`storage` stands on: one connection type, one way to
report a database failure, and the handle a store works through.

A store (telemetry, offsets, alerts, webhooks) is constructed by
:class:`storage.Storage` with that storage as its :class:`Database`: it borrows a
pooled autocommit connection per call, qualifies every table with the schema, and
turns every psycopg error into :class:`~smartpark.errors.StorageError`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from typing import Any, Protocol

import psycopg
from psycopg import sql

from smartpark.clock import MsClock
from smartpark.errors import StorageError

Conn = psycopg.AsyncConnection[Any]


class Database(Protocol):
    """The open storage, as its stores see it."""

    @property
    def schema(self) -> str: ...

    @property
    def clock(self) -> MsClock: ...

    def connection(self) -> AbstractAsyncContextManager[Conn]:
        """``async with db.connection() as conn``: a pooled autocommit connection."""
        ...


def table(schema: str, name: str) -> sql.Identifier:
    """``schema.name``, quoted: statements never depend on the search_path."""
    return sql.Identifier(schema, name)


@contextmanager
def storage_errors(what: str) -> Iterator[None]:
    """Turn any psycopg error (pool timeouts included) into :class:`StorageError`."""
    try:
        yield
    except psycopg.Error as exc:
        raise StorageError(f"{what} failed: {exc}") from exc
