"""A TCP proxy on loopback that can cut the network and restore it.

The fault drill puts it between the load's publisher (the edge side) and the MQTT
broker, so "the edge's network is down" is a real fault on real sockets, with no
network namespace and no privileges:

- :meth:`TcpProxy.cut` resets every connection it carries (both sides see the
  connection fail, as after a broken link) and, until :meth:`TcpProxy.restore`,
  accepts new connections only to reset them at once: a client reconnecting during
  the cut gets an error, not a hang;
- :meth:`TcpProxy.restore` forwards new connections again.

It runs on the caller's event loop (``async with TcpProxy(...) as proxy``); the
address to connect to is :attr:`TcpProxy.address`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from types import TracebackType
from typing import Self


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``upstream``; cut and restore on demand."""

    def __init__(self, upstream: tuple[str, int], *, host: str = "127.0.0.1") -> None:
        self.upstream = upstream
        self._host = host
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.is_cut = False
        self.connections = 0  # forwarded since the start
        self.refused = 0  # accepted during a cut and reset

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None, "TcpProxy used outside its async with"
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self._host, 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        self._reset_all()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def cut(self) -> None:
        """Reset every carried connection; refuse new ones until :meth:`restore`."""
        self.is_cut = True
        self._reset_all()

    def restore(self) -> None:
        self.is_cut = False

    def _reset_all(self) -> None:
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    async def _accept(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if self.is_cut:
            self.refused += 1
            _reset(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # the broker is down: the client sees its connection fail
            _reset(writer)
            return
        self.connections += 1
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(_pump(reader, up_writer)),
            asyncio.create_task(_pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            # one direction ending (EOF or reset) ends the other: a broken link
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a broken link looks to the peer."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
    writer.close()
