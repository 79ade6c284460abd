"""Health checks for the platform's containers (``smartpark-healthcheck`` in the image).

The bridge, the sink, the rules runner, the notifier and the upstream service open
no port of their own; what tells they are working is that they hold their
connections to the brokers and the database. So:

- ``connected PORT [PORT ...]`` exits 0 when the container holds an established
  TCP connection to each remote ``PORT`` (read from ``/proc/net/tcp`` and
  ``/proc/net/tcp6`` of the container's network namespace, in which the service is
  the only process), and 1 naming the first port it has none to. A service whose
  broker or database went away fails it until it has connected again.
- ``http URL`` exits 0 when ``GET URL`` answers 200 within 5 s (the API's
  ``/ready``: its database and Kafka answer), and 1 naming the status or the error.

It says nothing about a process that holds its connections but does no work; the
services' stats lines and the consumer lag do (deploy/README.md, "Health").
Standard library only: it runs in the slim image without curl.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path

TCP_TABLES = (Path("/proc/net/tcp"), Path("/proc/net/tcp6"))
ESTABLISHED = "01"  # include/net/tcp_states.h: TCP_ESTABLISHED
HTTP_TIMEOUT_S = 5.0


def established_remote_ports(tables: Iterable[Path] = TCP_TABLES) -> set[int]:
    """The remote ports of every established TCP connection in ``tables``.

    Each line after the header is ``sl local_address rem_address st ...`` with the
    addresses as ``HEXIP:HEXPORT`` (proc_net_tcp(5)); a missing table (no IPv6) is
    skipped.
    """
    ports: set[int] = set()
    for table in tables:
        try:
            lines = table.read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == ESTABLISHED:
                ports.add(int(fields[2].rsplit(":", 1)[1], 16))
    return ports


def check_connected(
    ports: list[int], tables: Iterable[Path] = TCP_TABLES
) -> str | None:
    """``None`` when there is an established connection to every port in ``ports``,
    else the reason naming the first one missing."""
    have = established_remote_ports(tables)
    for port in ports:
        if port not in have:
            return f"no established connection to port {port}"
    return None


def check_http(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> str | None:
    """``None`` when ``GET url`` answers 200, else the status or error."""
    if not url.startswith(("http://", "https://")):
        return f"not an http(s) URL: {url!r}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            status = int(response.status)
    except urllib.error.HTTPError as exc:
        return f"GET {url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"GET {url}: {exc}"
    return None if status == 200 else f"GET {url}: HTTP {status}"


def _say(message: str) -> None:
    sys.stderr.write(f"smartpark-healthcheck: {message}\n")


USAGE = "usage: smartpark-healthcheck connected PORT [PORT ...] | http URL"


def main(argv: list[str] | None = None) -> int:
    """Exit 0 healthy, 1 unhealthy (the reason on stderr), 2 bad arguments."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "connected":
        try:
            ports = [int(a) for a in args[1:]]
        except ValueError:
            _say(f"ports must be numbers: {args[1:]}")
            return 2
        problem = check_connected(ports)
    elif len(args) == 2 and args[0] == "http":
        problem = check_http(args[1])
    else:
        sys.stderr.write(USAGE + "\n")
        return 2
    if problem is not None:
        _say(problem)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
