"""Child processes of the embedded services: ports, accounts, clean stops."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import pwd
import signal
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

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


class ChildService:
    """Base of the embedded services that run as a child process we own.

    Subclasses start the child in ``__aenter__`` and keep it in ``_child``; leaving
    the context stops it (with the child's own stop signal, then a kill).
    """

    _child: ChildProcess | None = None

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


async def run_to_end(child: ChildProcess, timeout_s: float) -> None:
    await child.start()
    try:
        code = await asyncio.wait_for(child.wait(), timeout_s)
    except TimeoutError:
        raise child.failure(f"did not finish in {timeout_s:.0f} s") from None
    finally:
        await child.stop()  # nothing to do unless we time out or are cancelled
    if code != 0:
        raise child.failure(f"failed with exit code {code}")


async def start_on_free_port(
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
