"""A Mosquitto whose ACL a test rewrites, and an edge agent that logs in to it as
a gateway account: for the tests of refused publishes (``test_edge_refusals.py``,
``test_edge_gateway.py``)."""

from __future__ import annotations

import os
import signal
import urllib.error
import urllib.request
from pathlib import Path

from edge_agent.config import AgentConfig, parse_config
from simulators.park import SimulatedPark
from tests.support.mosquitto import TestBroker, password_line

POLL_S = 0.2
USER, PASSWORD = "gw1", "gw1-secret"
RETRY_MIN_S, RETRY_MAX_S = 0.2, 0.5
NOT_AUTHORIZED = "Not authorized (0x87)"


class AclBroker(TestBroker):
    """A private Mosquitto with a password file and an ACL file the test rewrites."""

    __test__ = False

    def __init__(self, workdir: Path, acl: str) -> None:
        super().__init__(workdir)
        self.acl_file = workdir / "acl"
        self.set_acl(acl)

    def set_acl(self, acl: str) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.acl_file.write_text(acl, encoding="utf-8")

    def _write_config(self) -> Path:
        d = self.workdir
        passwd = d / "passwd"
        passwd.write_text(password_line(USER, PASSWORD) + "\n", encoding="utf-8")
        lines = [
            f"listener {self.port} 127.0.0.1",
            "log_dest stderr",
            "log_type all",
            "allow_anonymous true",  # the recorder; the ACL lets it only read
            f"password_file {passwd}",
            f"acl_file {self.acl_file}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)


def acl(park: str, enterprise: str, granted: str) -> str:
    """Anonymous clients read everything; the gateway writes statuses and the
    telemetry topics ``granted`` matches (a device id or ``+``)."""
    site = f"sp/v1/{park}/{enterprise}"
    return (
        "topic read sp/v1/#\n"
        f"user {USER}\n"
        f"topic write {site}/+/status\n"
        f"topic write {site}/{granted}/telemetry\n"
        "topic read sp/v1/clock\n"
    )


def agent_config(
    park: SimulatedPark, port: int, tmp_path: Path, *, protocol: str
) -> AgentConfig:
    (tmp_path / "mqtt.pass").write_text(PASSWORD + "\n", encoding="utf-8")
    data = park.agent_config_data(
        park.enterprises[0],
        mqtt_host="127.0.0.1",
        mqtt_port=port,
        outbox_path=str(tmp_path / "outbox.db"),
        poll_interval_s=POLL_S,
        timeout_s=1.0,
        max_backoff_s=2.0,
    )
    data["broker"] |= {
        "username": USER,
        "password_file": str(tmp_path / "mqtt.pass"),
        "protocol": protocol,
        "reconnect_min_s": 1,
        "reconnect_max_s": 1,
    }
    data["publish"] = {
        "refused_retry_min_s": RETRY_MIN_S,
        "refused_retry_max_s": RETRY_MAX_S,
    }
    data["status"] = {"port": 0}
    return parse_config(data, source="test (generated)")


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read().decode()
