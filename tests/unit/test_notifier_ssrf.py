"""The webhook destination policy (notifier.ssrf), with an injected resolver."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from notifier.ssrf import (
    ResolvedTarget,
    UnsafeDestination,
    check_redirect,
    check_url,
    system_resolve,
)
from smartpark.errors import ConfigError

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"

DNS: dict[str, list[str]] = {
    "localhost": ["::1"],
    "hooks.example.com": [PUBLIC_V4, PUBLIC_V6],
    "mixed.example.com": [PUBLIC_V4, "10.0.0.7"],
    "metadata.example.com": ["169.254.169.254"],
    "internal.example.com": ["192.168.1.20"],
    "empty.example.com": [],
    "weird.example.com": ["not-an-ip"],
}


def resolve(host: str) -> Sequence[str]:
    if host not in DNS:
        raise OSError(f"test resolver: unknown host {host}")
    return DNS[host]


def refused(url: str, allow: Sequence[str] = ()) -> str:
    with pytest.raises(UnsafeDestination) as info:
        check_url(url, resolve=resolve, allow=allow)
    assert not info.value.retriable
    assert str(info.value) == info.value.reason
    return info.value.reason


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "address 127.0.0.1, which is loopback"),
        ("http://127.8.9.10:8080/x", "address 127.8.9.10, which is loopback"),
        (
            "http://localhost/hook",
            "host 'localhost' resolves to ::1, which is loopback",
        ),
        ("http://[::1]/", "address ::1, which is loopback"),
        ("http://10.1.2.3/", "address 10.1.2.3, which is private"),
        ("http://172.16.0.1/", "address 172.16.0.1, which is private"),
        ("http://172.31.255.255/", "address 172.31.255.255, which is private"),
        ("http://192.168.1.1/", "address 192.168.1.1, which is private"),
        ("http://[fd12:3456::1]/", "address fd12:3456::1, which is private"),
        (
            "http://169.254.169.254/latest/meta-data/",
            "address 169.254.169.254, which is link-local (cloud metadata service)",
        ),
        ("http://169.254.1.1/", "address 169.254.1.1, which is link-local"),
        ("http://[fe80::1]/", "address fe80::1, which is link-local"),
        (
            "http://[::ffff:127.0.0.1]/",
            "address ::ffff:127.0.0.1 (IPv4-mapped 127.0.0.1), which is loopback",
        ),
        (
            "http://[::ffff:169.254.169.254]/",
            "address ::ffff:169.254.169.254 (IPv4-mapped 169.254.169.254), "
            "which is link-local (cloud metadata service)",
        ),
        (
            "http://[2002:a00:1::]/",
            "address 2002:a00:1:: (6to4 10.0.0.1), which is private",
        ),
        ("http://100.64.0.1/", "address 100.64.0.1, which is carrier-grade NAT"),
        (
            "http://100.127.255.254/",
            "address 100.127.255.254, which is carrier-grade NAT",
        ),
        ("http://0.0.0.0/", "address 0.0.0.0, which is unspecified"),
        ("http://[::]/", "address ::, which is unspecified"),
        ("http://224.0.0.1/", "address 224.0.0.1, which is multicast"),
        ("http://[ff02::1]/", "address ff02::1, which is multicast"),
        ("http://240.0.0.1/", "address 240.0.0.1, which is reserved"),
        ("http://198.18.0.1/", "address 198.18.0.1, which is private"),
        ("http://192.0.2.1/", "address 192.0.2.1, which is private"),
        (
            "http://mixed.example.com/",
            "host 'mixed.example.com' resolves to 10.0.0.7, which is private",
        ),
        (
            "https://metadata.example.com/",
            "host 'metadata.example.com' resolves to 169.254.169.254, "
            "which is link-local (cloud metadata service)",
        ),
        ("file:///etc/passwd", "scheme 'file' is not allowed: only http and https"),
        (
            "gopher://hooks.example.com/",
            "scheme 'gopher' is not allowed: only http and https",
        ),
        (
            "ftp://hooks.example.com/",
            "scheme 'ftp' is not allowed: only http and https",
        ),
        ("hooks.example.com/x", "scheme '' is not allowed: only http and https"),
        (
            "http://user:pass@hooks.example.com/",
            "credentials in the URL are not allowed",
        ),
        ("http://user@hooks.example.com/", "credentials in the URL are not allowed"),
        (
            "http://hooks.example.com@127.0.0.1/",
            "credentials in the URL are not allowed",
        ),
        ("http:///path", "the URL has no host"),
        ("http://hooks.example.com:99999/", "the URL has an invalid port"),
        ("http://hooks.example.com:0/", "the URL has an invalid port"),
        (
            "http://empty.example.com/",
            "host 'empty.example.com' resolves to no address",
        ),
        (
            "http://weird.example.com/",
            "host 'weird.example.com' resolved to 'not-an-ip', not an IP",
        ),
    ],
)
def test_refused(url: str, reason: str) -> None:
    assert refused(url) == reason


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"http://{PUBLIC_V4}/",
            ResolvedTarget("http", PUBLIC_V4, 80, "/", (PUBLIC_V4,)),
        ),
        (
            f"https://{PUBLIC_V4}/hook?tenant=7",
            ResolvedTarget("https", PUBLIC_V4, 443, "/hook?tenant=7", (PUBLIC_V4,)),
        ),
        (
            "HTTPS://Hooks.Example.COM.:8443/in",
            ResolvedTarget(
                "https", "hooks.example.com", 8443, "/in", (PUBLIC_V4, PUBLIC_V6)
            ),
        ),
        (
            f"http://[{PUBLIC_V6}]:8080",
            ResolvedTarget("http", PUBLIC_V6, 8080, "/", (PUBLIC_V6,)),
        ),
    ],
)
def test_accepted(url: str, expected: ResolvedTarget) -> None:
    assert check_url(url, resolve=resolve) == expected


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:9000/hook", ["127.0.0.1/32"]),
        ("http://127.0.0.1:9000/hook", ["127.0.0.1"]),
        ("http://[::ffff:127.0.0.1]:9000/hook", ["127.0.0.1/32"]),
        ("http://localhost:9000/hook", ["::1/128"]),
        ("http://localhost:9000/hook", ["LOCALHOST"]),
        ("http://internal.example.com/hook", ["192.168.0.0/16"]),
        ("http://internal.example.com/hook", ["internal.example.com."]),
        ("http://mixed.example.com/hook", ["10.0.0.0/8"]),
    ],
)
def test_allow_list_admits(url: str, allow: list[str]) -> None:
    target = check_url(url, resolve=resolve, allow=allow)
    assert target.addresses


@pytest.mark.parametrize(
    ("url", "allow", "reason"),
    [
        ("http://127.0.0.2/", ["127.0.0.1/32"], "address 127.0.0.2, which is loopback"),
        (
            "http://mixed.example.com/",
            ["hooks.example.com"],
            "host 'mixed.example.com' resolves to 10.0.0.7, which is private",
        ),
        (
            "file:///etc/passwd",
            ["127.0.0.0/8"],
            "scheme 'file' is not allowed: only http and https",
        ),
        (
            "http://u:p@127.0.0.1/",
            ["127.0.0.1/32"],
            "credentials in the URL are not allowed",
        ),
    ],
)
def test_allow_list_is_narrow(url: str, allow: list[str], reason: str) -> None:
    assert refused(url, allow) == reason


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "300.1.1.1/32", "10.0.0.0/40"])
def test_bad_allow_entry_is_a_config_error(entry: str) -> None:
    with pytest.raises(ConfigError, match="webhook allow-list entry"):
        check_url(f"http://{PUBLIC_V4}/", resolve=resolve, allow=[entry])


def test_allow_must_be_a_list() -> None:
    with pytest.raises(TypeError):
        check_url(f"http://{PUBLIC_V4}/", resolve=resolve, allow="127.0.0.1/32")


def test_resolver_failure_propagates() -> None:
    with pytest.raises(OSError, match=r"unknown host nowhere\.example\.com"):
        check_url("http://nowhere.example.com/", resolve=resolve)


@pytest.mark.parametrize(
    ("url", "host_header", "pinned"),
    [
        (
            "https://hooks.example.com/in?a=1",
            "hooks.example.com",
            f"https://{PUBLIC_V4}:443/in?a=1",
        ),
        (
            "http://hooks.example.com:8080/in",
            "hooks.example.com:8080",
            f"http://{PUBLIC_V4}:8080/in",
        ),
        (f"https://[{PUBLIC_V6}]/", f"[{PUBLIC_V6}]", f"https://[{PUBLIC_V6}]:443/"),
    ],
)
def test_pinned_connection(url: str, host_header: str, pinned: str) -> None:
    target = check_url(url, resolve=resolve)
    assert target.host_header == host_header
    assert target.pinned_url(target.addresses[0]) == pinned


def test_pinned_url_only_for_checked_addresses() -> None:
    target = check_url("https://hooks.example.com/", resolve=resolve)
    with pytest.raises(ValueError, match="not a checked address"):
        target.pinned_url("10.0.0.7")


BASE = "https://hooks.example.com/in"


@pytest.mark.parametrize(
    ("location", "pinned"),
    [
        ("/moved", f"https://{PUBLIC_V4}:443/moved"),
        (f"http://[{PUBLIC_V6}]/x", f"http://[{PUBLIC_V6}]:80/x"),
    ],
)
def test_redirect_to_public_is_admitted(location: str, pinned: str) -> None:
    target = check_redirect(location, BASE, resolve=resolve)
    assert target.pinned_url(target.addresses[0]) == pinned


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://127.0.0.1/admin", "address 127.0.0.1, which is loopback"),
        (
            "//169.254.169.254/",
            "address 169.254.169.254, which is link-local (cloud metadata service)",
        ),
        ("file:///etc/passwd", "scheme 'file' is not allowed: only http and https"),
        ("http://localhost/", "host 'localhost' resolves to ::1, which is loopback"),
    ],
)
def test_redirect_to_refused_address(location: str, reason: str) -> None:
    with pytest.raises(UnsafeDestination) as info:
        check_redirect(location, BASE, resolve=resolve)
    assert info.value.reason == reason


def test_system_resolver_reads_ip_literals_without_dns() -> None:
    assert system_resolve("127.0.0.1") == ["127.0.0.1"]
