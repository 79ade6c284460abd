"""Which webhook destinations the notifier may connect to (SSRF policy).

An enterprise chooses its webhook URL, so the URL is untrusted input: without this
check it could point the platform at its own database, Kafka, Grafana or a cloud
metadata service. :func:`check_url` admits only ``http``/``https`` URLs without
credentials whose host resolves *only* to publicly routable addresses; it refuses
loopback, link-local (169.254.0.0/16 with the 169.254.169.254 metadata service,
fe80::/10), private (10/8, 172.16/12, 192.168/16, fc00::/7), unspecified, multicast,
reserved, carrier-grade NAT (100.64/10) and any other not globally routable
address, also when embedded in IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, 6to4
``2002::/16``). Every address the host resolves to is checked: one bad address
refuses the URL. Operators may allow destinations explicitly: ``allow`` holds CIDRs
(``127.0.0.1/32``; a bare address means that address) and exact host names.

Contracts:

- :class:`UnsafeDestination` (not retriable) carries a ``reason`` naming the rule
  that refused; the URL itself is never echoed (it may carry secrets).
- A resolver failure (``OSError``, e.g. ``socket.gaierror``) propagates unchanged: it
  is a delivery failure to retry, not a policy refusal.
- DNS rebinding: the notifier connects to one of :attr:`ResolvedTarget.addresses`
  (the addresses that were checked), never to the host name, which could resolve
  differently a moment later. With httpx: request :meth:`ResolvedTarget.pinned_url`,
  send ``Host: {host_header}`` and pass ``extensions={"sni_hostname": host}`` so TLS
  still verifies the certificate for the original name. It checks again before
  every attempt (DNS may change between retries).
- Redirects are not followed: a 3xx response is a failed attempt, as Standard
  Webhooks recommends (the enterprise registers the final URL instead).
  :func:`check_redirect` applies the same policy to a ``Location`` so the endpoint
  test can tell the enterprise where its URL redirects and whether that is allowed.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, urljoin, urlsplit

from smartpark.errors import ConfigError, SmartparkError

Resolver = Callable[[str], Sequence[str]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = ("http", "https")
CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
CLOUD_METADATA = frozenset({ipaddress.ip_address("169.254.169.254")})


class UnsafeDestination(SmartparkError):
    """The notifier refuses to connect to this destination; ``reason`` says why."""

    retriable = False

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class ResolvedTarget:
    """A destination that passed the policy, with the addresses that were checked."""

    scheme: str
    host: str  # lower case, IPv6 without brackets
    port: int
    path: str  # path and query, at least "/"
    addresses: tuple[str, ...]  # in resolver order; connect to one of these only

    @property
    def host_header(self) -> str:
        """The ``Host`` header the original URL implies."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    def pinned_url(self, address: str) -> str:
        """The URL with its host replaced by ``address`` (one of :attr:`addresses`)."""
        if address not in self.addresses:
            raise ValueError(f"{address} is not a checked address of this target")
        ip = f"[{address}]" if ":" in address else address
        return f"{self.scheme}://{ip}:{self.port}{self.path}"


def system_resolve(host: str) -> list[str]:
    """Every address ``host`` resolves to (A and AAAA), via ``socket.getaddrinfo``."""
    infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def check_url(
    url: str, *, resolve: Resolver = system_resolve, allow: Sequence[str] = ()
) -> ResolvedTarget:
    """Admit ``url`` as a webhook destination or raise :class:`UnsafeDestination`."""
    parts = urlsplit(url.strip())
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        raise UnsafeDestination(
            f"scheme {scheme!r} is not allowed: only http and https"
        )
    if "@" in parts.netloc:
        raise UnsafeDestination("credentials in the URL are not allowed")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UnsafeDestination("the URL has no host")
    port = _port(parts, scheme)
    networks, names = _parse_allow(allow)

    literal = _ip(host)
    addresses = [host] if literal is not None else list(resolve(host))
    if not addresses:
        raise UnsafeDestination(f"host {host!r} resolves to no address")
    for text in addresses:
        address = _ip(text)
        if address is None:
            raise UnsafeDestination(f"host {host!r} resolved to {text!r}, not an IP")
        if host in names or _allowed(address, networks):
            continue
        refusal = _refusal(text, address)
        if refusal is None:
            continue
        if literal is not None:
            raise UnsafeDestination(f"address {refusal}")
        raise UnsafeDestination(f"host {host!r} resolves to {refusal}")
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    return ResolvedTarget(scheme, host, port, path, tuple(addresses))


def check_redirect(
    location: str,
    base_url: str,
    *,
    resolve: Resolver = system_resolve,
    allow: Sequence[str] = (),
) -> ResolvedTarget:
    """Apply :func:`check_url` to a ``Location`` header relative to ``base_url``."""
    return check_url(urljoin(base_url, location), resolve=resolve, allow=allow)


def _port(parts: SplitResult, scheme: str) -> int:
    try:
        port = parts.port
    except ValueError:
        raise UnsafeDestination("the URL has an invalid port") from None
    if port is None:
        return 443 if scheme == "https" else 80
    if port == 0:
        raise UnsafeDestination("the URL has an invalid port")
    return port


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _parse_allow(allow: Sequence[str]) -> tuple[list[IPNetwork], set[str]]:
    if isinstance(allow, str):
        raise TypeError("allow must be a sequence of CIDRs and host names")
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in allow:
        text = entry.strip().lower().rstrip(".")
        if "/" in text or _ip(text) is not None:
            try:
                networks.append(ipaddress.ip_network(text))
            except ValueError as exc:
                raise ConfigError(
                    f"webhook allow-list entry {entry!r}: {exc}", field="allow"
                ) from None
        elif text:
            names.add(text)
    return networks, names


def _allowed(address: IPAddress, networks: list[IPNetwork]) -> bool:
    embedded = _embedded_ipv4(address)
    inner = embedded[1] if embedded else None
    return any(
        address in net or (inner is not None and inner in net) for net in networks
    )


def _embedded_ipv4(address: IPAddress) -> tuple[str, ipaddress.IPv4Address] | None:
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return "IPv4-mapped", address.ipv4_mapped
        if address.sixtofour is not None:
            return "6to4", address.sixtofour
    return None


def _refusal(text: str, address: IPAddress) -> str | None:
    """``None`` if ``address`` is publicly routable, else what it is, for a message.

    Messages show ``text`` as written (``str()`` of an IPv4-mapped address differs
    between Python versions).
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        kind, inner = embedded
        category = _category(inner)
        if category is not None:
            return f"{text} ({kind} {inner}), which is {category}"
    category = _category(address)
    return None if category is None else f"{text}, which is {category}"


def _category(address: IPAddress) -> str | None:
    # Order matters: 127.0.0.1 and 0.0.0.0 are also "private" to ipaddress.
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address in CLOUD_METADATA:
        return "link-local (cloud metadata service)"
    if address.is_link_local:
        return "link-local"
    if isinstance(address, ipaddress.IPv4Address) and address in CARRIER_GRADE_NAT:
        return "carrier-grade NAT"
    if address.is_multicast:
        return "multicast"
    if address.is_reserved:
        return "reserved"
    if address.is_private:
        return "private"
    if not address.is_global:
        return "not globally routable"
    return None
