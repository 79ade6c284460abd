"""TLS and credentials to the broker, against a real Mosquitto this test owns.

Each test starts its own ``mosquitto`` (tests/support/mosquitto.py) with a TLS
listener and certificates made by ``trustme``: the agent publishes through it and a
TLS subscriber receives; a client certificate is required and given; a wrong CA
keeps the agent disconnected and ``smartpark edge check`` says why; a username and
password are accepted, a wrong one is refused, and neither appears in any log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from edge_agent.agent import EdgeAgent
from edge_agent.cli import probe_broker
from edge_agent.config import BrokerConfig, load_config, parse_config
from edge_agent.stats import AgentStats
from simulators.park import SimulatedPark
from tests.support.mosquitto import ServerTls, TestBroker
from tests.support.recorder import Recorder, delivered_through, first_seen_seqs, until

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.2
SECRET = "pw-3b7e1f-never-logged"
WRONG = "wrong-9c41d2-never-logged"


@dataclass(frozen=True)
class Pki:
    ca: trustme.CA
    server: trustme.LeafCert
    dir: Path  # ca.pem, edge.pem, edge.key (a client certificate), other-ca.pem


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    d = (tmp_path / "pki").resolve()
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("edge-client")
    client.cert_chain_pems[0].write_to_path(str(d / "edge.pem"))
    client.private_key_pem.write_to_path(str(d / "edge.key"))
    trustme.CA().cert_pem.write_to_path(str(d / "other-ca.pem"))
    return Pki(ca, ca.issue_cert("127.0.0.1", "localhost"), d)


def write_config(park: SimulatedPark, tmp_path: Path, port: int, **broker: Any) -> Path:
    """The park's agent config with ``broker`` settings added, as YAML on disk
    (TLS paths relative to it), so everything goes through ``load_config``."""
    data = park.agent_config_data(
        park.enterprises[0],
        mqtt_host="127.0.0.1",
        mqtt_port=port,
        outbox_path="outbox.db",
        poll_interval_s=POLL_S,
        timeout_s=0.5,
        max_backoff_s=2.0,
    )
    data["broker"].update(reconnect_min_s=1, reconnect_max_s=1, **broker)
    path = tmp_path / f"agent-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def broker_config(port: int, **broker: Any) -> BrokerConfig:
    """A broker section validated like a file's (paths relative to ``base_dir``)."""
    base_dir = broker.pop("base_dir")
    data = {
        "site": {"park": "p", "enterprise": "e"},
        "broker": {"host": "127.0.0.1", "port": port, "client_id": "tls-probe"}
        | broker,
        "outbox": {"path": "outbox.db"},
        "devices": [
            {
                "id": "d1",
                "protocol": "modbus_tcp",
                "host": "127.0.0.1",
                "poll_interval_s": 1,
                "registers": [
                    {
                        "address": 0,
                        "type": "u16",
                        "metric": "active_power",
                        "unit": "kW",
                    }
                ],
            }
        ],
    }
    return parse_config(data, base_dir=base_dir).broker


def client_context(pki: Pki, *, with_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.dir / "ca.pem")
    if with_cert:
        ctx.load_cert_chain(pki.dir / "edge.pem", pki.dir / "edge.key")
    return ctx


async def edge_check(config: Path) -> tuple[int, str]:
    """``smartpark edge check`` as an engineer runs it: exit code, stdout+stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smartpark.cli", "edge", "check", "--config", str(config),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT)}, cwd=ROOT,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, _ = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode()


def seqs_of(stats: AgentStats) -> dict[str, int]:
    return {d: s.last_seq for d, s in stats.devices.items()}


async def test_agent_publishes_over_tls_verified_against_the_ca(
    pki: Pki, tmp_path: Path
) -> None:
    with TestBroker(tmp_path / "broker", tls=ServerTls(pki.ca, pki.server)) as broker:
        async with SimulatedPark(
            seed=21, park="tls", enterprises=1, devices_per_enterprise=2, port_base=0
        ) as park:
            cfg = load_config(
                write_config(park, tmp_path, broker.port, tls={"ca_file": "pki/ca.pem"})
            )
            assert cfg.broker.tls is not None
            assert cfg.broker.tls.ca_file == pki.dir / "ca.pem"  # relative to the file
            with Recorder(
                "127.0.0.1",
                broker.port,
                "sp/v1/tls/#",
                persistent=False,
                tls=client_context(pki),
            ) as rec:
                async with EdgeAgent(cfg) as agent:
                    await until(
                        lambda: min(seqs_of(agent.stats()).values()) >= 3, 10, "polls"
                    )
                last = seqs_of(agent.stats())
                await until(lambda: delivered_through(rec, last), 10, "TLS delivery")
                received = first_seen_seqs(rec.batches())
            # the listener speaks TLS only: the same broker without TLS is refused
            plain = cfg.broker.model_copy(update={"tls": None})
            plain_problem = await asyncio.to_thread(probe_broker, plain, timeout_s=2)
    final = agent.stats()
    for device, n in last.items():
        assert received[device] == list(range(1, n + 1))
    assert final.publisher.connects == 1
    assert final.publisher.connect_failures == 0
    assert final.publisher.acked_messages == final.publisher.published_messages > 0
    assert plain_problem is not None


async def test_a_required_client_certificate_is_presented(
    pki: Pki, tmp_path: Path
) -> None:
    tls = ServerTls(pki.ca, pki.server, require_certificate=True)
    with TestBroker(tmp_path / "broker", tls=tls) as broker:
        async with SimulatedPark(
            seed=22, park="mtls", enterprises=1, devices_per_enterprise=1, port_base=0
        ) as park:
            with_cert = load_config(
                write_config(
                    park,
                    tmp_path,
                    broker.port,
                    tls={
                        "ca_file": "pki/ca.pem",
                        "cert_file": "pki/edge.pem",
                        "key_file": "pki/edge.key",
                    },
                )
            )
            without = load_config(
                write_config(park, tmp_path, broker.port, tls={"ca_file": "pki/ca.pem"})
            )
            async with EdgeAgent(with_cert) as agent:
                await until(
                    lambda: agent.stats().publisher.acked_messages >= 2, 10, "acks"
                )
            async with EdgeAgent(without) as refused:
                await until(
                    lambda: refused.stats().publisher.connect_failures >= 1, 10, "fail"
                )
                refused_stats = refused.stats()
            assert await asyncio.to_thread(probe_broker, with_cert.broker) is None
            no_cert = await asyncio.to_thread(probe_broker, without.broker)
    assert agent.stats().publisher.connect_failures == 0
    # Mosquitto drops a TLS 1.3 client without a certificate after the handshake,
    # before its CONNACK: that is what both report, not a silent retry.
    assert not refused_stats.publisher.connected
    assert refused_stats.publisher.acked_messages == 0
    assert refused_stats.publisher.last_connect_error.startswith(
        "the broker closed the connection before accepting it"
    )
    assert no_cert is not None
    assert no_cert.startswith("the broker closed the connection before answering")


async def test_wrong_ca_keeps_the_agent_disconnected_and_check_says_why(
    pki: Pki, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with TestBroker(tmp_path / "broker", tls=ServerTls(pki.ca, pki.server)) as broker:
        async with SimulatedPark(
            seed=23, park="badca", enterprises=1, devices_per_enterprise=1, port_base=0
        ) as park:
            path = write_config(
                park, tmp_path, broker.port, tls={"ca_file": "pki/other-ca.pem"}
            )
            async with EdgeAgent(load_config(path)) as agent:
                await until(
                    lambda: agent.stats().publisher.connect_failures >= 2,
                    10,
                    "two failed attempts",
                )
                stats = agent.stats()
            code, out = await edge_check(path)
    pub = stats.publisher
    assert (pub.connected, pub.connects, pub.acked_messages) == (False, 0, 0)
    assert pub.last_connect_error.startswith("TLS: certificate verify failed: ")
    assert stats.devices[next(iter(stats.devices))].last_seq > 0  # polling goes on
    assert "cannot connect: TLS: certificate verify failed" in caplog.text
    assert code == 1, out
    fails = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fails) == 1, out  # the device answered; the broker did not verify
    assert fails[0].startswith(
        f"FAIL broker 127.0.0.1:{broker.port} (TLS): cannot connect to "
        f"127.0.0.1:{broker.port}: TLS: certificate verify failed: "
    ), out


def test_server_name_is_the_name_verified(pki: Pki, tmp_path: Path) -> None:
    only_localhost = pki.ca.issue_cert("localhost")
    with TestBroker(tmp_path / "broker", tls=ServerTls(pki.ca, only_localhost)) as b:
        tls = {"ca_file": "pki/ca.pem"}
        by_address = broker_config(b.port, tls=tls, base_dir=tmp_path)
        by_name = broker_config(
            b.port, tls=tls | {"server_name": "localhost"}, base_dir=tmp_path
        )
        mismatch = probe_broker(by_address)
        assert probe_broker(by_name) is None
    assert mismatch is not None
    assert mismatch.endswith(
        "TLS: certificate verify failed: IP address mismatch, certificate is not "
        "valid for '127.0.0.1'."
    )


async def test_password_accepted_wrong_one_refused_and_never_logged(
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SP_TEST_MQTT_PASSWORD", SECRET)
    (tmp_path / "wrong.pass").write_text(WRONG + "\n", encoding="utf-8")
    tls = {"ca_file": "pki/ca.pem"}
    with TestBroker(
        tmp_path / "broker",
        tls=ServerTls(pki.ca, pki.server),
        users={"edge": SECRET},
    ) as broker:
        async with SimulatedPark(
            seed=24, park="auth", enterprises=1, devices_per_enterprise=1, port_base=0
        ) as park:
            good = load_config(
                write_config(
                    park,
                    tmp_path,
                    broker.port,
                    tls=tls,
                    username="edge",
                    password_env="SP_TEST_MQTT_PASSWORD",
                )
            )
            bad_path = write_config(
                park,
                tmp_path,
                broker.port,
                tls=tls,
                username="edge",
                password_file="wrong.pass",
            )
            async with EdgeAgent(good) as agent:
                await until(
                    lambda: agent.stats().publisher.acked_messages >= 2, 10, "acks"
                )
            async with EdgeAgent(load_config(bad_path)) as refused:
                await until(
                    lambda: refused.stats().publisher.connect_failures >= 1, 10, "fail"
                )
                refused_stats = refused.stats()
            code, out = await edge_check(bad_path)
    assert agent.stats().publisher.connect_failures == 0
    pub = refused_stats.publisher
    assert (pub.connected, pub.last_connect_error) == (False, "refused: Not authorized")
    assert "cannot connect: refused: Not authorized" in caplog.text
    assert code == 1
    assert "(TLS): refused: Not authorized" in out
    everything = caplog.text + out + repr(good) + repr(refused_stats)
    everything += good.model_dump_json() + load_config(bad_path).model_dump_json()
    assert SECRET not in everything
    assert WRONG not in everything
