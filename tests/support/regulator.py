"""A regulator's HJ 212 platform for tests: a real asyncio TCP server on the codec.

It decodes every frame strictly (a wrong CRC or length is kept in ``bad``, never
accepted), records what arrives in order, answers data packets that ask for a
reply with 9014 (same QN, after ``reply_delay_s``) while ``replying`` is true,
and can send requests to the connected client (:meth:`Regulator.request`).
:meth:`Regulator.stop` closes the port and every connection (the platform is
down); :meth:`Regulator.start` opens the same port again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl as ssl_
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_agent.hj212.codec import encode
from edge_agent.hj212.dictionary import REPLY_CNS
from edge_agent.hj212.model import FLAG_REPLY, Hj212Error, Hj212Version, Packet
from edge_agent.hj212.stream import FrameBuffer


@dataclass
class Regulator:
    host: str = "127.0.0.1"
    port: int = 0
    replying: bool = True
    reply_delay_s: float = 0.0
    ssl: ssl_.SSLContext | None = None
    version: Hj212Version = Hj212Version.V2017
    received: list[Packet] = field(default_factory=list)
    bad: list[Hj212Error] = field(default_factory=list)
    connections: int = 0
    _server: asyncio.Server | None = None
    _writers: list[asyncio.StreamWriter] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, self.host, self.port, ssl=self.ssl
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in self._writers:
            w.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
        self._writers.clear()

    @property
    def connected(self) -> bool:
        return bool(self._writers)

    async def request(self, packet: Packet) -> None:
        """Send ``packet`` on the newest connection."""
        writer = self._writers[-1]
        writer.write(encode(packet))
        await writer.drain()

    def data(self, cn: str | None = None) -> list[Packet]:
        """Data packets received (not replies), optionally of one CN."""
        return [
            p
            for p in self.received
            if p.cn not in REPLY_CNS and (cn is None or p.cn == cn)
        ]

    def answers(self, qn: str) -> list[Packet]:
        """Everything the client sent with ``qn`` (a request's answer)."""
        return [p for p in self.received if p.qn == qn]

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        self._writers.append(writer)
        frames = FrameBuffer(strict=True)
        try:
            while data := await reader.read(65536):
                for event in frames.feed(data):
                    if isinstance(event, Hj212Error):
                        self.bad.append(event)
                        continue
                    packet = event.packet
                    self.received.append(packet)
                    if self.replying and packet.flag and packet.flag & FLAG_REPLY:
                        if self.reply_delay_s:
                            await asyncio.sleep(self.reply_delay_s)
                        reply = Packet(
                            st="91", cn="9014", mn=packet.mn, pw=packet.pw,
                            qn=packet.qn, flag=packet.flag & ~FLAG_REPLY,
                        )  # fmt: skip
                        writer.write(encode(reply))
                        await writer.drain()
        except (asyncio.CancelledError, ConnectionError):
            pass
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(ValueError):
                self._writers.remove(writer)
            writer.close()


async def wait_for(
    condition: Callable[[], bool], timeout_s: float = 20.0, what: str = ""
) -> None:
    """Poll ``condition`` every 50 ms; AssertionError after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what or condition}")
        await asyncio.sleep(0.05)
