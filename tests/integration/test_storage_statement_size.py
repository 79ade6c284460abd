"""The INSERT write path keeps every client message under 64 KiB (PGlite's limit).

A small TCP relay between psycopg and the real PostgreSQL reads the frontend protocol
stream and records the size of every message the client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from smartpark.settings import DatabaseSettings
from storage import Storage, TelemetryRow

pytestmark = pytest.mark.integration

_REQUEST_CODES = {80877103, 80877104}  # SSLRequest, GSSENCRequest: no type byte


class Relay:
    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.sizes: list[tuple[str, int]] = []
        self.handlers: set[asyncio.Task[object]] = set()

    async def handle(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        back = asyncio.create_task(self._pipe(up_reader, writer))
        try:
            await self._client_to_server(reader, up_writer)
        finally:
            await _close(up_writer)
            await back
            await _close(writer)

    async def _client_to_server(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        started = False
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                if not started:
                    head = await reader.readexactly(8)
                    length, code = struct.unpack("!II", head)
                    body = await reader.readexactly(length - 8)
                    started = code not in _REQUEST_CODES
                    writer.write(head + body)
                    continue
                head = await reader.readexactly(5)
                length = struct.unpack("!I", head[1:])[0]
                body = await reader.readexactly(length - 4)
                self.sizes.append((chr(head[0]), 1 + length))
                writer.write(head + body)
                await writer.drain()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.fixture
async def relay(pg_dsn: str) -> AsyncIterator[tuple[Relay, int]]:
    url = urlsplit(pg_dsn)
    r = Relay((url.hostname or "127.0.0.1", url.port or 5432))
    server = await asyncio.start_server(r.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield r, port
    # Python 3.11's Server.wait_closed() does not wait for the connections.
    await asyncio.wait_for(asyncio.gather(*r.handlers), 10)


async def test_insert_path_messages_stay_under_64_kib(
    relay: tuple[Relay, int], pg_dsn: str, db_schema: str
) -> None:
    r, port = relay
    url = urlsplit(pg_dsn)
    dsn = f"postgresql://{url.username}@127.0.0.1:{port}{url.path}?sslmode=disable"
    settings = DatabaseSettings(
        dsn=SecretStr(dsn), schema=db_schema, bulk_method="insert"
    )
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    longest = "x" * 64  # the longest id the wire format allows
    rows = [
        TelemetryRow(t0 + timedelta(milliseconds=i), longest, longest,
                     f"{i % 7}{longest[1:]}", "particulate_corrected", i * 1.0000001,
                     "N", 2**62 + i, "replacement")
        for i in range(20_000)
    ]  # fmt: skip
    async with Storage(settings) as storage:
        await storage.migrate()
        result = await storage.telemetry.write(rows)
        assert result.inserted == len(rows)
    binds = [size for kind, size in r.sizes if kind == "B"]
    assert binds, r.sizes
    assert max(size for _, size in r.sizes) < 64 * 1024
    # The chunks are sized to the limit, not needlessly small.
    assert max(binds) > 32 * 1024, max(binds)
