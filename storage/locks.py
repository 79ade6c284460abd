"""A PostgreSQL session-level advisory lock held on a connection of its own.

One process at a time does some work (the notifier's deliveries): whoever holds the
lock does it, the others wait. The lock lives as long as its connection, so the
server releases it when the holder dies or loses the connection; :meth:`hold`
notices a lost connection and tries to take the lock again.
"""

from __future__ import annotations

import psycopg

from smartpark.errors import StorageError
from smartpark.settings import DatabaseSettings


class SessionLock:
    """``await lock.hold()`` until it says True; ``await lock.release()`` to give it
    up. Raises :class:`StorageError` when the database cannot be reached."""

    def __init__(
        self, settings: DatabaseSettings, name: str, *, application_name: str
    ) -> None:
        self._dsn = settings.dsn
        self._key = f"{settings.schema_}.{name}"
        self._application_name = application_name
        self._conn: psycopg.AsyncConnection[object] | None = None
        # How many times a held lock was found lost with its connection.
        self.losses = 0

    @property
    def held(self) -> bool:
        return self._conn is not None

    async def hold(self) -> bool:
        """True while this process holds the lock (taking it if it is free).

        A held lock whose connection was lost (a server restart) is no longer held:
        this then tries to take it again on a new connection.
        """
        if self._conn is not None:
            try:
                await self._conn.execute("SELECT 1")
            except psycopg.Error:
                await self._conn.close()
                self._conn = None
                self.losses += 1
            else:
                return True
        try:
            conn = await psycopg.AsyncConnection.connect(
                self._dsn.get_secret_value(),
                autocommit=True,
                application_name=self._application_name,
            )
        except psycopg.Error as exc:
            raise StorageError(
                f"connect for the lock {self._key} failed: {exc}"
            ) from exc
        try:
            cur = await conn.execute(
                "SELECT pg_try_advisory_lock(hashtext(%s))", (self._key,)
            )
            row = await cur.fetchone()
        except psycopg.Error as exc:
            await conn.close()
            raise StorageError(f"take the lock {self._key}: {exc}") from exc
        if not (row and row[0]):
            await conn.close()
            return False
        self._conn = conn
        return True

    async def release(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            await conn.close()  # the server releases the lock with the session
