"""A Mosquitto process owned by one test: its own port, config, certificates, users.

For what the shared broker of ``deploy/local/services`` cannot be: a TLS listener,
client certificates, a password file, a broker a test may stop, freeze, kill and
restart (with ``persistence``, sessions and queued messages survive a restart by
:meth:`TestBroker.stop`, which saves them; :meth:`TestBroker.kill` keeps only what
the last autosave wrote). Usage::

    with TestBroker(tmp_path / "broker", tls=ServerTls(ca, server_cert)) as broker:
        ...  # broker.port; broker.log() on failure

The process is killed when the ``with`` ends (also when the test fails). A missing
``mosquitto`` binary fails the test (``deploy/local/services up`` installs it); it
never skips, so CI cannot pass without it.
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest
import trustme


def mosquitto_exe() -> str:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(exe).exists():
        pytest.fail(
            "mosquitto is not installed; deploy/local/services up installs it "
            "(or: apt-get install -y mosquitto)"
        )
    return exe


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def restartable_port() -> int:
    """A free 127.0.0.1 port outside the kernel's ephemeral range.

    A port from ``bind(0)`` is an ephemeral one: while a broker on it is stopped,
    any outgoing connection may be given it as its local port (a client retrying
    that very port can even connect to itself), and the restart then fails with
    "Address already in use". Outside the range the kernel never hands it out.
    """
    low, _ = _ephemeral_range()
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, max(20001, low))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.fail("no free port below the ephemeral range for a restartable broker")


def password_line(user: str, password: str, *, iterations: int = 101) -> str:
    """A ``password_file`` line in mosquitto 2's ``$7$`` format (PBKDF2-SHA512),
    as ``mosquitto_passwd`` writes it."""
    salt = secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"{user}:$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


@dataclass(frozen=True)
class ServerTls:
    """The broker's certificate and the CA its clients' certificates are checked
    against (with ``require_certificate``)."""

    client_ca: trustme.CA
    server_cert: trustme.LeafCert
    require_certificate: bool = False


class TestBroker:
    """A private mosquitto on a free 127.0.0.1 port (see the module doc).

    ``users``: name → password; when given, anonymous clients are refused.
    ``persistence``: keep sessions on disk across :meth:`stop` / :meth:`start`.
    ``autosave_interval_s``: with ``persistence``, how often mosquitto writes its
    database (its own default: 1800 s); what came since is lost by :meth:`kill`.
    """

    __test__ = False  # not a test class, despite the name

    def __init__(
        self,
        workdir: Path,
        *,
        tls: ServerTls | None = None,
        users: dict[str, str] | None = None,
        persistence: bool = False,
        autosave_interval_s: int | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = restartable_port()
        self._tls = tls
        self._users = users
        self._persistence = persistence
        self._autosave_interval_s = autosave_interval_s
        self._exe = mosquitto_exe()
        self._log = workdir / "mosquitto.log"
        self._proc: subprocess.Popen[bytes] | None = None

    def _write_config(self) -> Path:
        d = self.workdir
        d.mkdir(parents=True, exist_ok=True)
        lines = [f"listener {self.port} 127.0.0.1", "log_dest stderr", "log_type all"]
        if self._tls is not None:
            self._tls.client_ca.cert_pem.write_to_path(d / "ca.pem")
            self._tls.server_cert.private_key_pem.write_to_path(d / "server.key")
            chain = b"".join(p.bytes() for p in self._tls.server_cert.cert_chain_pems)
            (d / "server.pem").write_bytes(chain)
            lines += [
                f"cafile {d / 'ca.pem'}",
                f"certfile {d / 'server.pem'}",
                f"keyfile {d / 'server.key'}",
                f"require_certificate {str(self._tls.require_certificate).lower()}",
            ]
        if self._users is None:
            lines.append("allow_anonymous true")
        else:
            passwd = d / "passwd"
            passwd.write_text(
                "".join(password_line(u, p) + "\n" for u, p in self._users.items()),
                encoding="utf-8",
            )
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        if self._persistence:
            lines += ["persistence true", f"persistence_location {d}/"]
            if self._autosave_interval_s is not None:
                lines.append(f"autosave_interval {self._autosave_interval_s}")
        if os.geteuid() == 0:
            # As root mosquitto drops to user "mosquitto", which cannot read here.
            lines.append("user root")
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def start(self) -> None:
        conf = self._write_config()
        with self._log.open("ab") as log:
            self._proc = subprocess.Popen(
                [self._exe, "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + 5
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if time.monotonic() > deadline or self._proc.poll() is not None:
                    self.stop()
                    pytest.fail(f"mosquitto did not start:\n{self.log()}")
                time.sleep(0.05)

    def pause(self) -> None:
        """Freeze the broker: connections stay open, nothing is acknowledged."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGSTOP)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its sessions), also when paused."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            proc.send_signal(signal.SIGCONT)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def kill(self) -> None:
        """SIGKILL: nothing is saved; a restart has the database of the last
        autosave (or of the last :meth:`stop`)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait(10)

    def log(self) -> str:
        return self._log.read_text(errors="replace") if self._log.exists() else ""

    def __enter__(self) -> TestBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
