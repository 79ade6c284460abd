"""The drill's TCP proxy on real loopback sockets: forwards, cuts, restores."""

from __future__ import annotations

import asyncio

import pytest

from bench.tcp_proxy import TcpProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        writer.write(data)
        await writer.drain()
    writer.close()


async def _round_trip(addr: tuple[str, int], data: bytes) -> bytes:
    reader, writer = await asyncio.open_connection(*addr)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(data)), 5)
    finally:
        writer.close()


async def test_forwards_cuts_and_restores() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[:2]
    async with server, TcpProxy(upstream) as proxy:
        assert await _round_trip(proxy.address, b"hello") == b"hello"

        reader, writer = await asyncio.open_connection(*proxy.address)
        writer.write(b"x")
        assert await reader.readexactly(1) == b"x"
        proxy.cut()
        # the carried connection is reset: reading ends with an error or EOF
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await asyncio.wait_for(reader.readexactly(1), 5)
        writer.close()
        # a new connection during the cut is reset at once, never forwarded
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _round_trip(proxy.address, b"during")
        assert proxy.refused == 1

        proxy.restore()
        assert await _round_trip(proxy.address, b"again") == b"again"
        assert proxy.connections == 3  # hello, x, again


async def test_an_unreachable_upstream_resets_the_client() -> None:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    upstream = server.sockets[0].getsockname()[:2]
    server.close()
    await server.wait_closed()
    async with TcpProxy(upstream) as proxy:
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            await _round_trip(proxy.address, b"nobody")
        assert proxy.connections == 0
