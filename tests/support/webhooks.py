"""Real local webhook receivers for tests: a recording HTTP(S) server and bad peers.

:class:`Receiver` is a ``ThreadingHTTPServer`` on a free port of ``127.0.0.1``
(or another ``host``; optionally TLS with a ``trustme`` certificate). It reads
every request's body by ``Content-Length``, records it (:class:`Received`) *before*
answering, and answers with what the responder returns for it (:class:`Reply`,
default ``200``); it never writes to stderr (a responder that raises answers
``500`` with the exception). Answers carry ``Content-Length`` and ``Connection:
close`` unless the reply sets them itself. Leaving the ``with`` block wakes replies
still sleeping in ``delay_s``, cuts open connections and joins every thread, so a
test leaves no thread or socket behind.

:func:`silent_server` accepts connections and never answers (timeouts);
:func:`reset_server` resets every connection as soon as it is accepted;
:func:`raw_server` serves each connection with a function of the socket, for peers
that misbehave in other ways (trickling, endless or malformed responses).
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    import trustme

# A client that connects and sends nothing must not hold a handler thread forever.
CONNECTION_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Received:
    """One request as the receiver read it."""

    index: int  # 0, 1, 2... in arrival order
    at_s: float  # time.monotonic() when the request was read
    wall_s: float  # time.time()
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(frozen=True)
class Reply:
    """How the receiver answers one request."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0  # sleep before answering


Responder = Callable[[Received], Reply]


def _ok(_: Received) -> Reply:
    return Reply()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which can take seconds.
        socketserver.TCPServer.server_bind(self)
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def finish_request(self, request: Any, client_address: Any) -> None:
        self.receiver._serve_connection(request, client_address)

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up or fails the handshake is not news


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S
    server: _Server

    def do_POST(self) -> None:
        self._answer()

    def do_GET(self) -> None:
        self._answer()

    def do_PUT(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read what was received, not access logs on stderr

    def _answer(self) -> None:
        self.close_connection = True
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length > 0 else b""
        receiver = self.server.receiver
        request = receiver._record(
            self.command,
            self.path,
            {name.lower(): value for name, value in self.headers.items()},
            body,
        )
        try:
            reply = receiver._respond(request)
        except Exception as exc:  # a broken responder must show in the test
            reply = Reply(500, body=f"responder raised {exc!r}".encode())
        if reply.delay_s > 0 and receiver._closing.wait(reply.delay_s):
            return  # the receiver is closing: drop the connection unanswered
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        given = {name.lower() for name in reply.headers}
        if "content-length" not in given:  # a test may send a wrong one on purpose
            self.send_header("Content-Length", str(len(reply.body)))
        if "connection" not in given:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(reply.body)


class Receiver:
    """A recording webhook receiver on ``host`` (see the module docstring)."""

    def __init__(
        self,
        respond: Responder | None = None,
        *,
        tls: trustme.LeafCert | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self._respond_fn = respond or _ok
        self._lock = threading.Lock()
        self._received: list[Received] = []
        self._closing = threading.Event()
        self._open: set[socket.socket] = set()
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            tls.configure_cert(self._tls)
        self._host = host
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        server_class = _Server6 if ":" in self._host else _Server
        self._server = server_class((self._host, 0), _Handler)
        self._server.receiver = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"webhook-receiver-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._closing.set()
        self._server.shutdown()
        with self._lock:
            still_open = list(self._open)
        for conn in still_open:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown: SSLSocket's would unwrap it under
                # the handler thread's feet.
                socket.socket.shutdown(conn, socket.SHUT_RDWR)
        self._server.server_close()  # joins the handler threads
        self._thread.join(5)

    @property
    def port(self) -> int:
        assert self._server is not None, "use the Receiver in a with block"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        scheme = "https" if self._tls is not None else "http"
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"{scheme}://{host}:{self.port}/hook"

    def set_respond(self, respond: Responder) -> None:
        with self._lock:
            self._respond_fn = respond

    @property
    def received(self) -> list[Received]:
        with self._lock:
            return list(self._received)

    def wait_for(
        self, predicate: Callable[[list[Received]], bool], timeout_s: float
    ) -> list[Received]:
        """The requests once ``predicate`` holds for them; AssertionError on timeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            received = self.received
            if predicate(received):
                return received
            if time.monotonic() >= deadline:
                summary = ", ".join(
                    f"#{r.index} {r.method} {r.path} {len(r.body)} B" for r in received
                )
                raise AssertionError(
                    f"receiver on port {self.port}: condition not met within "
                    f"{timeout_s:g} s; {len(received)} received: [{summary}]"
                )
            time.sleep(0.01)

    def _serve_connection(self, request: socket.socket, client_address: Any) -> None:
        # Runs in the connection's own thread, so a slow TLS handshake blocks no one.
        assert self._server is not None
        conn = request
        self._track(request, add=True)
        try:
            if self._tls is not None:
                request.settimeout(CONNECTION_TIMEOUT_S)
                conn = self._tls.wrap_socket(request, server_side=True)
                self._track(conn, add=True)
            _Handler(conn, client_address, self._server)
        finally:
            self._track(request, add=False)
            if conn is not request:  # the TLS socket took over the descriptor
                self._track(conn, add=False)
                conn.close()

    def _track(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._open.add(conn)
            else:
                self._open.discard(conn)

    def _record(
        self, method: str, path: str, headers: dict[str, str], body: bytes
    ) -> Received:
        with self._lock:
            request = Received(
                index=len(self._received),
                at_s=time.monotonic(),
                wall_s=time.time(),
                method=method,
                path=path,
                headers=headers,
                body=body,
            )
            self._received.append(request)
            return request

    def _respond(self, request: Received) -> Reply:
        with self._lock:
            respond = self._respond_fn
        return respond(request)


Handler = Callable[[socket.socket, threading.Event], None]
"""Serves one accepted connection; the event is set when the listener closes."""


class _Listener:
    """A TCP listener that runs a :data:`Handler` per connection in its own thread."""

    def __init__(self, handle: Handler, host: str, port: int) -> None:
        self._handle = handle
        self._closing = threading.Event()
        self._sock = socket.create_server((host, port))
        self._sock.settimeout(0.05)  # lets the accept loop notice the closing event
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._sock.getsockname()[:2]
        return f"http://{host}:{port}/hook"

    def __enter__(self) -> Self:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._closing.set()
        self._accepter.join(5)
        for thread in self._threads:
            thread.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._run, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _run(self, conn: socket.socket) -> None:
        conn.settimeout(CONNECTION_TIMEOUT_S)
        with conn, contextlib.suppress(OSError):  # the client may hang up any time
            self._handle(conn, self._closing)


@contextlib.contextmanager
def raw_server(
    handle: Handler, *, host: str = "127.0.0.1", port: int = 0
) -> Iterator[str]:
    """The URL of a TCP listener on ``host:port`` that serves connections with
    ``handle(conn, closing)``, for peers no HTTP server would imitate. The listener
    closes each connection after ``handle`` returns (``OSError`` is ignored) and on
    exit sets ``closing`` and joins every thread."""
    with _Listener(handle, host, port) as listener:
        yield listener.url


def _hold(conn: socket.socket, closing: threading.Event) -> None:
    closing.wait()


def _reset(conn: socket.socket, closing: threading.Event) -> None:
    # SO_LINGER with a zero timeout makes close() send RST instead of FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


@contextlib.contextmanager
def silent_server() -> Iterator[str]:
    """The URL of a listener that accepts connections and never answers."""
    with raw_server(_hold) as url:
        yield url


@contextlib.contextmanager
def reset_server() -> Iterator[str]:
    """The URL of a listener that resets every connection as soon as it accepts it."""
    with raw_server(_reset) as url:
        yield url
