"""One webhook delivery attempt over HTTP: check, sign, POST, read a little, report.

:meth:`Sender.send` makes exactly one attempt and returns an :class:`AttemptResult`;
whether and when to try again is :mod:`notifier.retry`'s decision.

Contracts:

- ``send`` never raises for anything the network, DNS or the receiver does: every
  such failure is an :class:`AttemptResult` with ``status=None``, an ``error_kind``
  that is a :class:`~notifier.retry.TransportError` value and an ``error``
  that starts with that kind and names the reason. It raises only for the
  caller's mistakes: a bad secret or ``msg_id`` (``ValueError``, from
  :mod:`~notifier.signing`) or a bad allow-list entry (``ConfigError``).
- Every attempt checks the URL again with :func:`~notifier.ssrf.check_url`
  (DNS may have changed; the blocking resolver runs in a thread) and connects only
  to the checked addresses, in resolver order. It moves to the next address only
  when no connection was made (refused, unreachable, connect timeout), so a
  request the receiver may have read is never sent twice within one attempt. The
  original host name goes in ``Host`` (IDNA-encoded) and, for https, in SNI and
  certificate verification (httpcore's ``sni_hostname`` extension).
- Every attempt is signed afresh: ``webhook-timestamp`` is ``clock()`` at its start.
- The whole attempt (DNS, connect, request, status line, excerpt) takes at most
  ``timeout_s``, however slowly the receiver trickles bytes; a connection attempt
  at most ``connect_timeout_s``. At most ``max_response_bytes`` of the body are
  read, undecoded (``accept-encoding: identity``), then the connection is closed.
- Once the status line has arrived the status stands: a body cut short by the
  deadline or a reset only shortens ``response_excerpt``.
- Redirects are returned as statuses, never followed; no proxy or environment
  setting applies (``trust_env=False``) and connections are never reused, so each
  attempt's TLS session was verified for its own host name.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httpx

from notifier import signing
from notifier.retry import TransportError, parse_retry_after
from notifier.ssrf import Resolver, UnsafeDestination, check_url, system_resolve
from smartpark.clock import MsClock, system_ms

USER_AGENT = "smartpark-webhooks/1"
ERROR_EXCERPT_CHARS = 200


@dataclass(frozen=True, slots=True)
class AttemptResult:
    """What one delivery attempt did, as the notifier stores it."""

    started_ms: int  # clock() when the attempt began
    latency_ms: int  # until the status line and the excerpt were read, or the failure
    status: int | None  # the HTTP status; None if there was no response
    error_kind: str | None  # a TransportError value when status is None
    error: str | None  # "<kind>: <reason>" or "HTTP <status>[: <excerpt>]"; None if 2xx
    retry_after_s: float | None  # the parsed Retry-After of any response
    address: str | None  # the checked address of the last connection attempt
    response_excerpt: str  # at most max_response_bytes of the body, utf-8 "replace"


@dataclass(slots=True)
class _Progress:
    """How far an attempt got; kept outside the deadline so a timeout keeps it."""

    resolved: bool = False
    address: str | None = None
    status: int | None = None
    retry_after_s: float | None = None
    excerpt: bytearray = field(default_factory=bytearray)
    error_kind: TransportError | None = None
    reasons: list[str] = field(default_factory=list)

    def fail(self, kind: TransportError, reason: str) -> None:
        self.error_kind = kind
        self.reasons.append(reason)


class Sender:
    """Makes delivery attempts through one ``httpx.AsyncClient`` (use ``async with``).

    ``allow`` is the SSRF allow-list (:func:`~notifier.ssrf.check_url`);
    ``tls_context`` replaces the default certificate verification (tests pass one
    trusting their own CA).
    """

    def __init__(
        self,
        *,
        allow: Sequence[str] = (),
        connect_timeout_s: float = 5.0,
        timeout_s: float = 15.0,
        max_response_bytes: int = 4096,
        resolve: Resolver = system_resolve,
        clock: MsClock = system_ms,
        tls_context: ssl.SSLContext | None = None,
        user_agent: str = USER_AGENT,
    ) -> None:
        if isinstance(allow, str):
            raise TypeError("allow must be a sequence of CIDRs and host names")
        if connect_timeout_s <= 0 or timeout_s <= 0 or max_response_bytes < 0:
            raise ValueError("timeouts must be positive, max_response_bytes >= 0")
        self._allow = tuple(allow)
        self._connect_timeout_s = connect_timeout_s
        self._timeout_s = timeout_s
        self._max_response_bytes = max_response_bytes
        self._resolve = resolve
        self._clock = clock
        self._client = httpx.AsyncClient(
            verify=tls_context if tls_context is not None else True,
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(timeout_s, connect=connect_timeout_s),
            # A kept-alive connection would carry a later request for another host
            # name on the same address over a TLS session verified for the first.
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"user-agent": user_agent, "accept-encoding": "identity"},
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.aclose()

    async def send(
        self, url: str, *, msg_id: str, body: bytes, secrets: Sequence[str]
    ) -> AttemptResult:
        """POST ``body`` to ``url`` once, signed with ``secrets`` as ``msg_id``."""
        started_ms = self._clock()
        headers = signing.headers(secrets, msg_id, started_ms // 1000, body)
        headers["content-type"] = "application/json"
        progress = _Progress()
        started = time.monotonic()  # latency must not jump with the wall clock
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._attempt(url, headers, body, progress)
        except TimeoutError:
            if not progress.resolved:
                host = urlsplit(url).hostname
                progress.fail(
                    TransportError.DNS,
                    f"no answer for {host!r} within {self._timeout_s:g} s",
                )
            elif progress.status is None:
                progress.fail(
                    TransportError.TIMEOUT,
                    f"no response within {self._timeout_s:g} s",
                )
        latency_ms = round((time.monotonic() - started) * 1000)
        return _result(progress, started_ms, latency_ms)

    async def _attempt(
        self, url: str, headers: dict[str, str], body: bytes, progress: _Progress
    ) -> None:
        try:
            target = await asyncio.to_thread(
                check_url, url, resolve=self._resolve, allow=self._allow
            )
        except UnsafeDestination as exc:
            progress.fail(TransportError.UNSAFE_DESTINATION, exc.reason)
            return
        except OSError as exc:
            host = urlsplit(url).hostname
            progress.fail(TransportError.DNS, f"cannot resolve {host!r}: {_os(exc)}")
            return
        progress.resolved = True
        host_header = target.host_header
        if not host_header.isascii():
            try:  # the codec getaddrinfo and ssl use for the same name
                host_header = host_header.encode("idna").decode("ascii")
            except UnicodeError as exc:
                progress.fail(TransportError.DNS, f"bad host name: {exc}")
                return
        headers["host"] = host_header
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        for address in target.addresses:
            progress.address = address
            where = f"[{address}]" if ":" in address else address
            where += f":{target.port}"
            try:
                async with self._client.stream(
                    "POST",
                    target.pinned_url(address),
                    headers=headers,
                    content=body,
                    extensions=extensions,
                ) as response:
                    progress.status = response.status_code
                    progress.retry_after_s = parse_retry_after(
                        response.headers.get("retry-after"), self._clock() / 1000
                    )
                    await self._read_excerpt(response, progress.excerpt)
            except httpx.TransportError as exc:
                if progress.status is not None:
                    return  # failed while closing: the status stands
                kind, reason = self._describe(exc, where)
                progress.fail(kind, reason)
                never_connected = isinstance(
                    exc, httpx.ConnectError | httpx.ConnectTimeout
                )
                if kind is TransportError.TLS or not never_connected:
                    return
            else:
                return

    async def _read_excerpt(self, response: httpx.Response, into: bytearray) -> None:
        if self._max_response_bytes == 0:
            return
        try:
            async for chunk in response.aiter_raw():
                into += chunk[: self._max_response_bytes - len(into)]
                if len(into) >= self._max_response_bytes:
                    return  # leaving the stream closes the connection unread
        except httpx.TransportError:
            return  # the status arrived; a broken body only shortens the excerpt

    def _describe(
        self, exc: httpx.TransportError, where: str
    ) -> tuple[TransportError, str]:
        tls = next((e for e in _chain(exc) if isinstance(e, ssl.SSLError)), None)
        if tls is not None:
            return TransportError.TLS, f"{_tls(tls)} ({where})"
        if isinstance(exc, httpx.ConnectTimeout):
            return (
                TransportError.TIMEOUT,
                f"no connection to {where} within {self._connect_timeout_s:g} s",
            )
        if isinstance(exc, httpx.TimeoutException):
            return TransportError.TIMEOUT, f"no response within {self._timeout_s:g} s"
        if isinstance(exc, httpx.NetworkError):  # connect, read, write or close
            return TransportError.CONNECT, f"{_os(exc)} to {where}"
        text = str(exc).rstrip(".") or type(exc).__name__
        return TransportError.PROTOCOL, f"{text} ({where})"


def _result(progress: _Progress, started_ms: int, latency_ms: int) -> AttemptResult:
    excerpt = progress.excerpt.decode("utf-8", errors="replace")
    kind = progress.error_kind
    error: str | None
    if progress.status is not None:
        kind = None
        error = None
        if not 200 <= progress.status <= 299:
            error = f"HTTP {progress.status}"
            if excerpt:
                error += f": {excerpt[:ERROR_EXCERPT_CHARS]}"
    else:
        assert kind is not None
        error = f"{kind.value}: {'; '.join(progress.reasons)}"
    return AttemptResult(
        started_ms=started_ms,
        latency_ms=latency_ms,
        status=progress.status,
        error_kind=None if kind is None else kind.value,
        error=error,
        retry_after_s=progress.retry_after_s,
        address=progress.address,
        response_excerpt=excerpt,
    )


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes: httpx wraps httpcore, which wraps anyio or the OS."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _os(exc: BaseException) -> str:
    """The operating system's words for the first errno in the chain."""
    for link in _chain(exc):
        if isinstance(link, OSError) and link.errno is not None and link.errno > 0:
            return os.strerror(link.errno).lower()
        if isinstance(link, OSError) and link.strerror:
            return link.strerror
    return str(exc) or type(exc).__name__


def _tls(exc: ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {exc.verify_message}"
    return exc.reason.lower().replace("_", " ") if exc.reason else str(exc)
