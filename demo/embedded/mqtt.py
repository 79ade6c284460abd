"""An in-process MQTT 3.1.1 broker (amqtt) for the demo."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from types import TracebackType
from typing import Any

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin

from demo.embedded.processes import (
    LOOPBACK,
    EmbeddedServiceError,
)

log = logging.getLogger(__name__)


class _OpenAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt is untyped
    """Lets every client in without marking its session anonymous.

    amqtt 0.12's own ``AnonymousAuthPlugin`` flags every session it admits as
    anonymous, and amqtt neither queues messages for an offline anonymous session
    nor keeps it after a disconnect: the bridge's persistent session (clean_session
    False, QoS 1) would silently lose what arrives while it is away.
    """

    async def authenticate(self, *, session: Any) -> bool:
        return True


_OPEN_AUTH = f"{__name__}.{_OpenAuthPlugin.__qualname__}"


async def mqtt_handshake(host: str, port: int, *, timeout_s: float = 2.0) -> None:
    """Connect with MQTT 3.1.1, expect CONNACK "accepted", disconnect.

    Raises OSError if nothing listens or the broker refuses.
    """
    client_id = b"smartpark-demo-probe"
    variable = b"\x00\x04MQTT\x04\x02\x00\x0a"  # protocol level 4, clean, keepalive 10
    payload = struct.pack("!H", len(client_id)) + client_id
    body = variable + payload
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection(host, port), timeout_s
    )
    try:
        writer.write(bytes([0x10, len(body)]) + body)
        await writer.drain()
        connack = await asyncio.wait_for(reader.readexactly(4), timeout_s)
        if connack[0] != 0x20 or connack[3] != 0:
            raise OSError(f"MQTT broker refused the connection: {connack.hex()}")
        writer.write(b"\xe0\x00")  # DISCONNECT
        await writer.drain()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


class EmbeddedMqttBroker:
    """An amqtt broker in this process on ``127.0.0.1:port``, anonymous clients
    allowed; ``async with EmbeddedMqttBroker() as (host, port)``.

    We accept the TCP connections ourselves and hand them to amqtt as an "external"
    listener: so the port can be 0 (the kernel picks it, no race), and we can close
    what amqtt 0.12 leaves open. Its writer adapter drains before closing and gives
    up on the error when the client hung up first, leaking the socket (a
    ResourceWarning, an error under the tests' ``filterwarnings``); and its
    connection tasks can outlive ``Broker.shutdown()``.

    Known limits of amqtt 0.12 (the production broker has none of them): a QoS 1
    message sent to a subscriber that does not PUBACK it within 5 s is dropped from
    the session, not redelivered (logged as "Timeout waiting for PUBACK"); there is
    no in-flight window, so a subscriber gets every queued message at once; state
    is in memory only.
    """

    def __init__(self, port: int | None = None) -> None:
        self.port = port
        self.host = LOOPBACK
        self._broker: Any = None
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[Any], asyncio.StreamWriter] = {}
        self._stopping = False

    async def __aenter__(self) -> tuple[str, int]:
        broker = Broker(
            {
                "listeners": {"default": {"type": "external"}},
                # An explicit plugin list: the default one loads BrokerSysPlugin,
                # whose construction raises a DeprecationWarning in amqtt 0.12.
                "plugins": {_OPEN_AUTH: {}},
            }
        )
        try:
            await broker.start()
        except BrokerError as exc:
            raise EmbeddedServiceError(f"amqtt broker did not start: {exc}") from exc
        self._broker = broker
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port or 0
            )
            self.port = int(self._server.sockets[0].getsockname()[1])
            await mqtt_handshake(self.host, self.port)
        except BaseException:
            await self._stop()
            raise
        log.info("MQTT broker listening on %s:%d", self.host, self.port)
        return self.host, self.port

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections[task] = writer
        try:
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), "default"
            )
        except asyncio.CancelledError:
            # Cancelled by _stop(): end normally, because Python 3.11's start_server
            # logs a cancelled connection task as an "Exception in callback".
            if not self._stopping:
                raise
        finally:
            del self._connections[task]
            writer.close()

    async def _stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.close()
        if self._broker is not None:
            await self._broker.shutdown()
            self._broker = None
        for writer in self._connections.values():
            writer.close()
        if self._connections:
            # Closing the sockets ends amqtt's handlers; a stuck one is cancelled.
            _, stuck = await asyncio.wait(self._connections, timeout=2)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None


# -- Kafka --------------------------------------------------------------------------
