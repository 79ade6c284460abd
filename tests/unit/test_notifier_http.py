"""One webhook delivery attempt (notifier.http.Sender) against real local peers.

Every peer is a real socket on the loopback interface: the recording
:class:`~tests.support.webhooks.Receiver` (HTTP or TLS with ``trustme``
certificates) or a raw TCP listener that misbehaves on purpose. Only DNS is
replaced, by resolvers the tests pass in.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import pytest
import trustme

from notifier import signing
from notifier.http import AttemptResult, Sender
from notifier.retry import Outcome, classify
from tests.support.webhooks import (
    Receiver,
    Reply,
    raw_server,
    reset_server,
    silent_server,
)

SECRET = signing.generate_secret()
OLD_SECRET = signing.generate_secret()
LOOPBACK = ["127.0.0.1/32"]
BODY = b'{"type":"alert.raised","data":{"rule":"cod-high"}}'
NOW_MS = 1_700_000_000_000


class Clock:
    """A settable epoch-ms clock."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms


def resolver(*addresses: str) -> Callable[[str], Sequence[str]]:
    return lambda host: list(addresses)


async def send(url: str, *, msg_id: str = "msg_1", **options: Any) -> AttemptResult:
    """One attempt by a fresh Sender; ``options`` override the Sender's defaults."""
    options.setdefault("allow", LOOPBACK)
    options.setdefault("timeout_s", 3.0)
    options.setdefault("connect_timeout_s", 1.0)
    async with Sender(**options) as sender:
        return await sender.send(url, msg_id=msg_id, body=BODY, secrets=[SECRET])


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", maxsplit=1)[0])


@contextlib.contextmanager
def full_backlog(host: str, port: int) -> Iterator[None]:
    """A listener on ``host:port`` whose accept queue is full, so new connection
    attempts hang (Linux drops their SYNs) until the connect timeout."""
    with socket.socket() as listener:
        listener.bind((host, port))
        listener.listen(0)
        fillers = [socket.socket() for _ in range(3)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex((host, port))
            time.sleep(0.05)
            yield
        finally:
            for filler in fillers:
                filler.close()


def read_request(conn: socket.socket) -> bytes:
    """One whole request (head and Content-Length body), b"" if the peer hung up.

    Closing a socket with unread data sends RST, not FIN: raw servers read the
    whole request before they misbehave, so they misbehave as intended.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head = data.split(b"\r\n\r\n", 1)[0]
    length = 0
    for line in head.lower().split(b"\r\n"):
        if line.startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(data) < len(head) + 4 + length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- delivered -------------------------------------------------------------------


async def test_2xx_is_delivered_signed_and_verifiable() -> None:
    with Receiver(lambda r: Reply(204)) as rx:
        result = await send(rx.url)
        [request] = rx.received

    assert result.status == 204
    assert (result.error_kind, result.error) == (None, None)
    assert result.address == "127.0.0.1"
    assert result.response_excerpt == ""
    assert classify(result.status, result.error_kind) is Outcome.DELIVERED
    assert (request.method, request.path, request.body) == ("POST", "/hook", BODY)
    assert request.headers["host"] == f"127.0.0.1:{rx.port}"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "smartpark-webhooks/1"
    assert request.headers["accept-encoding"] == "identity"
    assert request.headers["webhook-id"] == "msg_1"
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 5
    signing.verify(SECRET, request.headers, request.body)
    with pytest.raises(signing.WebhookVerificationError, match="no matching v1"):
        signing.verify(SECRET, request.headers, request.body.replace(b"cod", b"nh3"))


async def test_two_secrets_give_two_signatures_each_verifying() -> None:
    with Receiver() as rx:
        async with Sender(allow=LOOPBACK) as sender:
            result = await sender.send(
                rx.url, msg_id="msg_rot", body=BODY, secrets=[SECRET, OLD_SECRET]
            )
        [request] = rx.received

    assert result.status == 200
    signatures = request.headers["webhook-signature"].split()
    assert len(signatures) == 2
    assert all(s.startswith("v1,") for s in signatures)
    for secret, signature in zip([SECRET, OLD_SECRET], signatures, strict=True):
        alone = {**request.headers, "webhook-signature": signature}
        signing.verify(secret, alone, request.body)
    with pytest.raises(signing.WebhookVerificationError):
        signing.verify(signing.generate_secret(), request.headers, request.body)


async def test_every_attempt_is_signed_with_a_fresh_timestamp() -> None:
    clock = Clock()
    with Receiver() as rx:
        async with Sender(allow=LOOPBACK, clock=clock) as sender:
            first = await sender.send(rx.url, msg_id="m", body=BODY, secrets=[SECRET])
            clock.now_ms += 90_500
            second = await sender.send(rx.url, msg_id="m", body=BODY, secrets=[SECRET])
        one, two = rx.received

    assert (first.started_ms, second.started_ms) == (NOW_MS, NOW_MS + 90_500)
    assert one.headers["webhook-timestamp"] == str(NOW_MS // 1000)
    assert two.headers["webhook-timestamp"] == str((NOW_MS + 90_500) // 1000)
    assert one.headers["webhook-signature"] != two.headers["webhook-signature"]
    signing.verify(SECRET, one.headers, one.body, now_s=NOW_MS / 1000)
    signing.verify(SECRET, two.headers, two.body, now_s=NOW_MS / 1000 + 90)
    with pytest.raises(signing.WebhookVerificationError, match="too old"):
        signing.verify(SECRET, one.headers, one.body, now_s=NOW_MS / 1000 + 400)


# --- statuses ----------------------------------------------------------------------


async def test_500_keeps_status_and_excerpt() -> None:
    body = b"database unavailable: " + b"x" * 300
    with Receiver(lambda r: Reply(500, body=body)) as rx:
        result = await send(rx.url)

    assert result.status == 500
    assert result.error_kind is None
    assert result.error == "HTTP 500: " + body[:200].decode()
    assert result.response_excerpt == body.decode()
    assert classify(result.status, result.error_kind) is Outcome.RETRY


async def test_410_asks_to_disable_the_endpoint() -> None:
    with Receiver(lambda r: Reply(410)) as rx:
        result = await send(rx.url)

    assert (result.status, result.error, result.retry_after_s) == (
        410,
        "HTTP 410",
        None,
    )
    assert classify(result.status, result.error_kind) is Outcome.DISABLE_ENDPOINT


@pytest.mark.parametrize(
    ("status", "retry_after", "expected_s"),
    [
        (429, "120", 120.0),
        (
            503,
            format_datetime(datetime.fromtimestamp(NOW_MS / 1000 + 30, UTC), True),
            30.0,
        ),
        (503, "soon", None),
    ],
)
async def test_retry_after_is_parsed(
    status: int, retry_after: str, expected_s: float | None
) -> None:
    reply = Reply(status, headers={"Retry-After": retry_after}, body=b"slow down")
    with Receiver(lambda r: reply) as rx:
        result = await send(rx.url, clock=Clock())

    assert result.status == status
    assert result.retry_after_s == expected_s
    assert result.error == f"HTTP {status}: slow down"
    outcome = classify(result.status, result.error_kind, retry_after_s=expected_s)
    assert outcome is (Outcome.RETRY if expected_s is None else Outcome.RETRY_AFTER)


async def test_redirect_is_returned_not_followed() -> None:
    with Receiver() as rx:
        rx.set_respond(lambda r: Reply(302, headers={"Location": rx.url + "/next"}))
        result = await send(rx.url)
        received = rx.received

    assert (result.status, result.error) == (302, "HTTP 302")
    assert [r.path for r in received] == ["/hook"]


async def test_excerpt_is_cut_at_max_bytes_and_decoded_leniently() -> None:
    with Receiver(lambda r: Reply(400, body="ééé".encode())) as rx:
        result = await send(rx.url, max_response_bytes=5)

    assert result.response_excerpt == "éé\ufffd"
    assert result.error == "HTTP 400: éé\ufffd"


# --- slow and hostile receivers ------------------------------------------------------


async def test_silent_server_times_out_after_timeout_s() -> None:
    with silent_server() as url:
        result = await send(url, timeout_s=0.5)

    assert result.status is None
    assert result.error_kind == "timeout"
    assert result.error == "timeout: no response within 0.5 s"
    assert result.address == "127.0.0.1"
    assert 450 <= result.latency_ms < 1500


def trickle(head: bytes) -> Callable[[socket.socket, threading.Event], None]:
    """Read the request, send ``head``, then one byte every 0.2 s until closing."""

    def handle(conn: socket.socket, closing: threading.Event) -> None:
        read_request(conn)
        conn.sendall(head)
        while not closing.wait(0.2):
            conn.sendall(b"x")

    return handle


async def test_trickling_body_is_bounded_by_timeout_s_and_the_status_stands() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n"
    with raw_server(trickle(head)) as url:
        result = await send(url, timeout_s=1.0)

    assert result.status == 200
    assert result.error is None
    assert 3 <= len(result.response_excerpt) <= 6
    assert set(result.response_excerpt) == {"x"}
    assert 950 <= result.latency_ms < 1800


async def test_trickling_headers_time_out_without_a_status() -> None:
    with raw_server(trickle(b"HTTP/1.1 200 OK\r\nX-Slow: ")) as url:
        result = await send(url, timeout_s=1.0)

    assert (result.status, result.error_kind) == (None, "timeout")
    assert 950 <= result.latency_ms < 1800


async def test_huge_response_is_not_read_whole() -> None:
    size = 200 * 1024 * 1024
    sent = [0]

    def endless(conn: socket.socket, closing: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk = b"y" * 65536
        while sent[0] < size and not closing.is_set():
            conn.sendall(chunk)  # OSError once the client hangs up ends it
            sent[0] += len(chunk)

    with raw_server(endless) as url:
        started = time.monotonic()
        result = await send(url, max_response_bytes=4096)
        elapsed = time.monotonic() - started

    assert result.status == 200
    assert result.response_excerpt == "y" * 4096
    assert elapsed < 2.0
    assert sent[0] < size // 4  # the rest was never sent: the client closed


async def test_connection_refused() -> None:
    port = closed_port()
    result = await send(f"http://127.0.0.1:{port}/hook")

    assert result.status is None
    assert result.error_kind == "connect"
    assert result.error == f"connect: connection refused to 127.0.0.1:{port}"
    assert result.address == "127.0.0.1"
    assert classify(result.status, result.error_kind) is Outcome.RETRY


async def test_connection_reset() -> None:
    with reset_server() as url:
        result = await send(url)

    assert result.status is None
    assert result.error_kind in ("connect", "protocol")
    assert result.error is not None
    assert result.error.startswith(f"{result.error_kind}: ")
    assert result.error.endswith(f"127.0.0.1:{port_of(url)}")


async def test_malformed_response_is_a_protocol_error() -> None:
    def garbage(conn: socket.socket, closing: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"SMTP READY\r\n\r\n")

    with raw_server(garbage) as url:
        result = await send(url)

    assert (result.status, result.error_kind) == (None, "protocol")
    assert result.error == (
        "protocol: illegal status line: bytearray(b'SMTP READY') "
        f"(127.0.0.1:{port_of(url)})"
    )


async def test_server_closing_without_a_response_is_a_protocol_error() -> None:
    def hang_up(conn: socket.socket, closing: threading.Event) -> None:
        read_request(conn)

    with raw_server(hang_up) as url:
        result = await send(url)

    assert result.error == (
        "protocol: Server disconnected without sending a response "
        f"(127.0.0.1:{port_of(url)})"
    )


async def test_connection_closed_mid_response_keeps_the_status() -> None:
    def short(conn: socket.socket, closing: threading.Event) -> None:
        read_request(conn)
        conn.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 100\r\n\r\npartial")

    with raw_server(short) as url:
        result = await send(url)

    assert (result.status, result.error_kind) == (500, None)
    assert result.response_excerpt == "partial"


# --- TLS: SNI and verification use the host name, the connection the checked IP ---


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def trusting(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def test_tls_verifies_the_host_name_while_connecting_to_the_ip(
    ca: trustme.CA,
) -> None:
    with Receiver(tls=ca.issue_cert("localhost")) as rx:
        result = await send(
            f"https://localhost:{rx.port}/hook",
            resolve=resolver("127.0.0.1"),
            tls_context=trusting(ca),
        )
        [request] = rx.received

    assert (result.status, result.error) == (200, None)
    assert result.address == "127.0.0.1"
    assert request.headers["host"] == f"localhost:{rx.port}"
    signing.verify(SECRET, request.headers, request.body)


async def test_tls_to_an_ip_literal_verifies_the_ip(ca: trustme.CA) -> None:
    with Receiver(tls=ca.issue_cert("127.0.0.1")) as rx:
        result = await send(rx.url, tls_context=trusting(ca))

    assert result.status == 200


async def test_tls_certificate_for_another_name_fails(ca: trustme.CA) -> None:
    with Receiver(tls=ca.issue_cert("hooks.example.org")) as rx:
        result = await send(
            f"https://localhost:{rx.port}/hook",
            resolve=resolver("127.0.0.1"),
            tls_context=trusting(ca),
        )
        received = rx.received

    assert (result.status, result.error_kind) == (None, "tls")
    assert result.error == (
        "tls: certificate verify failed: Hostname mismatch, certificate is not "
        f"valid for 'localhost'. (127.0.0.1:{rx.port})"
    )
    assert received == []


async def test_tls_untrusted_ca_fails(ca: trustme.CA) -> None:
    with Receiver(tls=ca.issue_cert("localhost")) as rx:
        result = await send(
            f"https://localhost:{rx.port}/hook",
            resolve=resolver("127.0.0.1"),
            tls_context=trusting(trustme.CA()),
        )
        received = rx.received

    assert (result.status, result.error_kind) == (None, "tls")
    assert result.error is not None
    assert result.error.startswith("tls: certificate verify failed: ")
    assert received == []


async def test_https_to_a_plain_http_server_is_a_tls_error(ca: trustme.CA) -> None:
    with Receiver() as rx:
        result = await send(
            f"https://127.0.0.1:{rx.port}/hook", tls_context=trusting(ca)
        )

    assert (result.status, result.error_kind) == (None, "tls")


# --- destination policy, DNS and addresses -------------------------------------------


async def test_private_address_is_refused_without_connecting() -> None:
    result = await send("http://10.0.0.1/hook", allow=())

    assert result.status is None
    assert result.error_kind == "unsafe_destination"
    assert result.error == "unsafe_destination: address 10.0.0.1, which is private"
    assert result.address is None
    assert result.latency_ms < 500
    assert classify(result.status, result.error_kind) is Outcome.FAILED_PERMANENTLY


async def test_name_resolving_to_loopback_is_refused_without_connecting() -> None:
    accepted: list[socket.socket] = []

    def count(conn: socket.socket, closing: threading.Event) -> None:
        accepted.append(conn)

    with raw_server(count) as url:
        port = port_of(url)
        result = await send(
            f"http://hooks.example:{port}/hook",
            allow=(),
            resolve=resolver("127.0.0.1"),
        )
        await asyncio.sleep(0.1)  # time to accept a connection, if one came

    assert result.error == (
        "unsafe_destination: host 'hooks.example' resolves to 127.0.0.1, "
        "which is loopback"
    )
    assert accepted == []


async def test_resolver_failure_is_dns_and_runs_off_the_event_loop() -> None:
    threads: list[threading.Thread] = []

    def fail(host: str) -> Sequence[str]:
        threads.append(threading.current_thread())
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    result = await send("https://hooks.example/hook", resolve=fail)

    assert result.status is None
    assert result.error_kind == "dns"
    assert (
        result.error == "dns: cannot resolve 'hooks.example': Name or service not known"
    )
    assert threads
    assert threads[0] is not threading.main_thread()


async def test_hanging_resolver_is_bounded_by_timeout_s() -> None:
    release = threading.Event()

    def hang(host: str) -> Sequence[str]:
        release.wait(5)
        return ["127.0.0.1"]

    try:
        result = await send("http://slow.example/hook", resolve=hang, timeout_s=0.3)
    finally:
        release.set()

    assert (result.status, result.error_kind) == (None, "dns")
    assert result.error == "dns: no answer for 'slow.example' within 0.3 s"
    assert 250 <= result.latency_ms < 1000


async def test_url_is_checked_again_on_every_attempt() -> None:
    answers = [["127.0.0.1"], ["10.0.0.7"]]
    asked: list[str] = []

    def rebinding(host: str) -> Sequence[str]:
        asked.append(host)
        return answers[len(asked) - 1]

    with Receiver() as rx:
        url = f"http://hooks.example:{rx.port}/hook"
        async with Sender(allow=LOOPBACK, resolve=rebinding) as sender:
            first = await sender.send(url, msg_id="m", body=BODY, secrets=[SECRET])
            second = await sender.send(url, msg_id="m", body=BODY, secrets=[SECRET])
        received = rx.received

    assert asked == ["hooks.example", "hooks.example"]
    assert first.status == 200
    assert second.error_kind == "unsafe_destination"
    assert len(received) == 1
    assert received[0].headers["host"] == f"hooks.example:{rx.port}"


async def test_international_host_name_is_sent_idna_encoded() -> None:
    asked: list[str] = []

    def dns(host: str) -> Sequence[str]:
        asked.append(host)
        return ["127.0.0.1"]

    with Receiver() as rx:
        result = await send(f"http://Bücher.example:{rx.port}/hook", resolve=dns)
        [request] = rx.received

    assert result.status == 200
    assert asked == ["bücher.example"]
    assert request.headers["host"] == f"xn--bcher-kva.example:{rx.port}"


async def test_refused_address_falls_through_to_the_next() -> None:
    with Receiver() as rx:
        result = await send(
            f"http://hooks.example:{rx.port}/hook",
            allow=["127.0.0.0/8"],
            resolve=resolver("127.0.0.2", "127.0.0.1"),
        )
        received = rx.received

    assert (result.status, result.address) == (200, "127.0.0.1")
    assert len(received) == 1


async def test_every_address_refused_names_each() -> None:
    port = closed_port()
    result = await send(
        f"http://hooks.example:{port}/hook",
        allow=["127.0.0.0/8"],
        resolve=resolver("127.0.0.2", "127.0.0.3"),
    )

    assert result.error == (
        f"connect: connection refused to 127.0.0.2:{port}; "
        f"connection refused to 127.0.0.3:{port}"
    )
    assert result.address == "127.0.0.3"


async def test_no_next_address_once_the_request_was_sent() -> None:
    """The receiver may have acted on a request it read before hanging up: sending
    it to another address in the same attempt would deliver it twice."""
    requests: list[bytes] = []
    accepted: list[socket.socket] = []

    def read_then_reset(conn: socket.socket, closing: threading.Event) -> None:
        requests.append(read_request(conn))
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def count(conn: socket.socket, closing: threading.Event) -> None:
        accepted.append(conn)

    with raw_server(read_then_reset) as url:
        port = port_of(url)
        with raw_server(count, host="127.0.0.2", port=port):
            result = await send(
                f"http://hooks.example:{port}/hook",
                allow=["127.0.0.0/8"],
                resolve=resolver("127.0.0.1", "127.0.0.2"),
            )
            await asyncio.sleep(0.1)  # time to accept a connection, if one came

    assert (result.status, result.address) == (None, "127.0.0.1")
    assert result.error_kind in ("connect", "protocol")
    assert len(requests) == 1
    assert requests[0].startswith(b"POST /hook HTTP/1.1\r\n")
    assert accepted == []


async def test_connect_timeout_falls_through_to_the_next_address() -> None:
    with Receiver() as rx, full_backlog("127.0.0.2", rx.port):
        result = await send(
            f"http://hooks.example:{rx.port}/hook",
            allow=["127.0.0.0/8"],
            resolve=resolver("127.0.0.2", "127.0.0.1"),
            connect_timeout_s=0.3,
        )
        received = rx.received

    assert (result.status, result.address) == (200, "127.0.0.1")
    assert 250 <= result.latency_ms < 1500
    assert len(received) == 1


async def test_connect_timeout() -> None:
    port = closed_port()
    with full_backlog("127.0.0.2", port):
        result = await send(
            f"http://127.0.0.2:{port}/hook",
            allow=["127.0.0.0/8"],
            connect_timeout_s=0.3,
        )

    assert (result.status, result.error_kind) == (None, "timeout")
    assert result.error == f"timeout: no connection to 127.0.0.2:{port} within 0.3 s"
    assert 250 <= result.latency_ms < 1500


async def test_connections_are_not_reused() -> None:
    """A kept-alive connection could carry a request for another host name over a
    TLS session verified for the first; every attempt gets its own connection."""
    connections: list[int] = []

    def keep_alive(conn: socket.socket, closing: threading.Event) -> None:
        connections.append(1)
        while read_request(conn):
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")

    with raw_server(keep_alive) as url:
        async with Sender(allow=LOOPBACK) as sender:
            for _ in range(3):
                result = await sender.send(url, msg_id="m", body=BODY, secrets=[SECRET])
                assert (result.status, result.response_excerpt) == (200, "ok")

    assert len(connections) == 3


# --- the receiver itself -------------------------------------------------------------


async def test_slow_receiver_times_out_and_closes_without_waiting() -> None:
    with Receiver(lambda r: Reply(200, delay_s=30)) as rx:
        result = await send(rx.url, timeout_s=0.3)
        closing = time.monotonic()
    closed_in = time.monotonic() - closing

    assert (result.status, result.error_kind) == (None, "timeout")
    assert len(rx.received) == 1  # recorded before the reply was due
    assert closed_in < 1.0


def test_wait_for_returns_the_requests_or_fails_with_a_summary() -> None:
    with Receiver() as rx:
        with socket.create_connection(("127.0.0.1", rx.port)) as conn:
            conn.sendall(b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
            assert conn.recv(4096).startswith(b"HTTP/1.1 200 ")
        [request] = rx.wait_for(lambda received: len(received) == 1, timeout_s=2)
        with pytest.raises(AssertionError, match=r"1 received: \[#0 POST /x 3 B\]"):
            rx.wait_for(lambda received: len(received) == 2, timeout_s=0.1)

    assert (request.index, request.path, request.body) == (0, "/x", b"abc")
    assert request.headers["host"] == "a"
