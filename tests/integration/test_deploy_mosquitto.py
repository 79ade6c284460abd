"""deploy/compose's Mosquitto config on a real Mosquitto, with the files
``smartpark mqtt write`` makes, and the compose health check against it.

The config is used as written but for what only a container has: its paths
(``/mosquitto/...`` becomes a temporary directory) and its ports (1883 and 8883
become free loopback ports). Accounts come from a real registry (PostgreSQL);
certificates from trustme. The services' Mosquitto is 2.0.11; the compose file
pins 2.0.20 (the same configuration language).
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import trustme
import yaml
from pydantic import SecretStr

from api.mqtt import cli as mqtt_cli
from smartpark.settings import DatabaseSettings
from storage import Storage
from tests.support.mosquitto import mosquitto_exe, restartable_port

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
COMPOSE_DIR = REPO / "deploy" / "compose"


def substitute(text: str, old: str, new: str, count: int | None = None) -> str:
    """Replace ``old`` (a line or a path prefix), failing if the file changed so
    that it is no longer there."""
    found = text.count(old)
    assert found, f"{old!r} not found"
    assert count is None or found == count, f"{old!r} found {found} times"
    return text.replace(old, new)


def healthcheck_command(port: int) -> str:
    compose = yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text())
    test = compose["services"]["mosquitto"]["healthcheck"]["test"]
    assert test[0] == "CMD-SHELL"
    return substitute(test[1], "-p 1883 ", f"-p {port} ", count=1)


def sh(cmd: str, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["sh", "-c", cmd], capture_output=True, text=True, timeout=timeout, check=False
    )


async def bridge_account(db: DatabaseSettings, accounts: Path) -> tuple[str, str]:
    """The bridge's account, its files written as the mqtt-files service writes
    them; its username and password."""
    async with Storage(db) as storage:
        await storage.migrate()
        row, password = await mqtt_cli.add_bridge(storage, "bridge")
        await mqtt_cli.write(
            storage, accounts, broker_dir=Path("/mosquitto/config/smartpark")
        )
    return row.username, password


def test_compose_mosquitto_refuses_anonymous_and_admits_the_bridge(
    pg_dsn: str, db_schema: str, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    accounts = root / "mosquitto" / "config" / "smartpark"
    certs = root / "mosquitto" / "certs"
    for d in (accounts, certs, root / "mosquitto" / "data"):
        d.mkdir(parents=True)
    db = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    username, password = asyncio.run(bridge_account(db, accounts))
    assert (
        "/mosquitto/config/smartpark/passwd"
        in (accounts / "smartpark-auth.conf").read_text()
    )

    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    server.private_key_pem.write_to_path(certs / "server.key")
    (certs / "server.pem").write_bytes(
        b"".join(p.bytes() for p in server.cert_chain_pems)
    )
    ca.cert_pem.write_to_path(tmp_path / "ca.pem")

    plain, tls = restartable_port(), restartable_port()
    conf = (COMPOSE_DIR / "mosquitto" / "mosquitto.conf").read_text()
    conf = substitute(conf, "\nlistener 1883\n", f"\nlistener {plain} 127.0.0.1\n", 1)
    conf = substitute(conf, "\nlistener 8883\n", f"\nlistener {tls} 127.0.0.1\n", 1)
    conf = substitute(conf, " /mosquitto/", f" {root}/mosquitto/")
    if os.geteuid() == 0:
        conf += "user root\n"  # as root Mosquitto would drop to user mosquitto
    (root / "mosquitto.conf").write_text(conf)
    # The included file names the passwd and acl where the container has them.
    auth = (accounts / "smartpark-auth.conf").read_text()
    (accounts / "smartpark-auth.conf").write_text(
        substitute(auth, " /mosquitto/", f" {root}/mosquitto/")
    )

    log = (tmp_path / "mosquitto.log").open("wb")
    proc = subprocess.Popen(
        [mosquitto_exe(), "-c", str(root / "mosquitto.conf")], stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 10
        while sh(healthcheck_command(plain)).returncode != 0:
            assert proc.poll() is None, (tmp_path / "mosquitto.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "mosquitto.log").read_text()
            time.sleep(0.2)

        sub = "mosquitto_sub -t sp/v1/clock -E -W 5 -h 127.0.0.1"
        anonymous = sh(f"{sub} -p {plain}")
        assert anonymous.returncode != 0
        assert "not authori" in anonymous.stderr
        bridge = f"-u {username} -P {password}"
        assert sh(f"{sub} -p {plain} {bridge}").returncode == 0
        wrong = sh(f"{sub} -p {plain} -u {username} -P not-{password}")
        assert wrong.returncode != 0
        assert "not authori" in wrong.stderr
        on_tls = f"mosquitto_sub -t sp/v1/clock -E -W 5 -h localhost -p {tls}"
        ca_file = f"--cafile {tmp_path / 'ca.pem'}"
        assert sh(f"{on_tls} {ca_file} {bridge}").returncode == 0
        unverified = sh(f"{on_tls} {bridge}")  # the system's CAs do not know it
        assert unverified.returncode != 0
        anonymous_tls = sh(f"{on_tls} {ca_file}")
        assert anonymous_tls.returncode != 0
        assert "not authori" in anonymous_tls.stderr
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()
    text = (tmp_path / "mosquitto.log").read_text()
    assert re.search(rf"Opening ipv4 listen socket on port {plain}\.", text)
    assert re.search(rf"Opening ipv4 listen socket on port {tls}\.", text)
    assert "port 1883" not in text  # no listener of its own from the included file
