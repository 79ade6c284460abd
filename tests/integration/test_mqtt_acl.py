"""The generated password and ACL files on a real Mosquitto (the services' binary).

Accounts are made from a real registry (PostgreSQL) with the functions behind
``smartpark mqtt``; the files are written by them, and a private broker of the test
runs with exactly the generated config lines (``include_dir``), so the shared broker
of ``deploy/local/services`` keeps its development config. Real paho clients:
gateway A of enterprise acme, gateway B of enterprise beta (same park), the bridge.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.reasoncodes import ReasonCode
from pydantic import SecretStr

from api.mqtt import cli as mqtt_cli
from smartpark.settings import DatabaseSettings, MqttSettings
from smartpark.tenancy import Role, Scope
from storage import Storage
from tests.support.mosquitto import TestBroker

pytestmark = pytest.mark.integration

A, B, BRIDGE = "gw1@acme", "gw1@beta", "bridge"
A_TELEMETRY = "sp/v1/p1/acme/meter-1/telemetry"
A_STATUS = "sp/v1/p1/acme/agent.gw1/status"
B_TELEMETRY = "sp/v1/p1/beta/meter-9/telemetry"
# What the bridge subscribes to (ingest.bridge: the subscription and its status twin)
BRIDGE_SUBS = [MqttSettings().subscription, "sp/v1/+/+/+/status"]
WAIT_S = 5.0


class AuthBroker(TestBroker):
    """A private Mosquitto whose only auth config is the generated lines."""

    __test__ = False

    def __init__(self, workdir: Path, auth_dir: Path) -> None:
        super().__init__(workdir)
        self._auth_dir = auth_dir

    def _write_config(self) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "use_username_as_clientid true",  # as the generated file asks
            "log_dest stderr",
            "log_type all",
            f"include_dir {self._auth_dir}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf = self.workdir / "mosquitto.conf"
        conf.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return conf

    def reload(self) -> None:
        """SIGHUP: Mosquitto rereads its password and ACL files."""
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)


class Client:
    """A real paho client that records CONNACK, SUBACK, PUBACK and messages."""

    def __init__(
        self,
        port: int,
        username: str | None,
        password: str | None,
        *,
        client_id: str = "",
        clean: bool = True,
        protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    ) -> None:
        self.port = port
        self.messages: list[tuple[str, bytes]] = []
        self.connack: ReasonCode | None = None
        self.suback: list[ReasonCode] | None = None
        self.puback: dict[int, ReasonCode] = {}
        self._cond = threading.Condition()
        self._c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            # MQTT 5 has no clean session flag (clean start is a connect option)
            clean_session=None if protocol == mqtt.MQTTv5 else clean,
            protocol=protocol,
        )
        if username is not None:
            self._c.username_pw_set(username, password)
        self._c.on_connect = self._on_connect
        self._c.on_subscribe = self._on_subscribe
        self._c.on_publish = self._on_publish
        self._c.on_message = self._on_message

    def _set(self, fn: object) -> None:
        with self._cond:
            assert callable(fn)
            fn()
            self._cond.notify_all()

    def _on_connect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        self._set(lambda: setattr(self, "connack", rc))

    def _on_subscribe(
        self, _c: object, _u: object, _m: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        self._set(lambda: setattr(self, "suback", rcs))

    def _on_publish(
        self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        self._set(lambda: self.puback.__setitem__(mid, rc))

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        self._set(lambda: self.messages.append((msg.topic, bytes(msg.payload))))

    def _wait(self, what: str, done: object) -> None:
        assert callable(done)
        with self._cond:
            if not self._cond.wait_for(done, WAIT_S):
                pytest.fail(f"no {what} within {WAIT_S} s")

    def connect(self) -> ReasonCode:
        self._c.connect("127.0.0.1", self.port, keepalive=30)
        self._c.loop_start()
        self._wait("CONNACK", lambda: self.connack is not None)
        assert self.connack is not None
        return self.connack

    def subscribe(self, filters: list[str]) -> list[ReasonCode]:
        self.suback = None
        self._c.subscribe([(f, 1) for f in filters])
        self._wait("SUBACK", lambda: self.suback is not None)
        assert self.suback is not None
        return self.suback

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False
    ) -> ReasonCode:
        """QoS 1; the PUBACK's reason code."""
        info = self._c.publish(topic, payload, qos=1, retain=retain)
        self._wait("PUBACK", lambda: info.mid in self.puback)
        return self.puback[info.mid]

    def wait_for(self, payload: bytes) -> None:
        self._wait(
            f"message {payload!r}", lambda: any(p == payload for _, p in self.messages)
        )

    def close(self) -> None:
        self._c.disconnect()
        self._c.loop_stop()


@dataclass
class Park:
    storage: Storage
    auth_dir: Path
    broker: AuthBroker
    passwords: dict[str, str]

    def client(
        self,
        username: str | None,
        password: str | None = None,
        *,
        client_id: str = "",
        clean: bool = True,
        protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    ) -> Client:
        """A client of ``username`` (its own password unless one is given)."""
        if password is None and username is not None:
            password = self.passwords.get(username)
        return Client(
            self.broker.port, username, password,
            client_id=client_id, clean=clean, protocol=protocol,
        )  # fmt: skip

    def connected(
        self,
        username: str,
        *,
        client_id: str = "",
        clean: bool = True,
        protocol: MQTTProtocolVersion = mqtt.MQTTv311,
    ) -> Client:
        c = self.client(username, client_id=client_id, clean=clean, protocol=protocol)
        rc = c.connect()
        assert not rc.is_failure, f"{username} refused: {rc}"
        return c


@pytest.fixture
async def park(pg_dsn: str, db_schema: str, tmp_path: Path) -> AsyncIterator[Park]:
    db = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    async with Storage(db) as storage:
        await storage.migrate()
        op = Scope(Role.OPERATOR)
        park = {"id": "p1", "name": "Park 1", "timezone": "Asia/Shanghai"}
        await storage.registry.create_park(op, park)
        for e in ("acme", "beta"):
            await storage.registry.create_enterprise(
                op, {"id": e, "park": "p1", "name": e}
            )
        passwords = {}
        for row, password in [
            await mqtt_cli.add_gateway(storage, "acme", "gw1"),
            await mqtt_cli.add_gateway(storage, "beta", "gw1"),
            await mqtt_cli.add_bridge(storage, BRIDGE),
        ]:
            passwords[row.username] = password
        auth_dir = tmp_path / "auth"
        plan = await mqtt_cli.write(storage, auth_dir)
        assert [g.username for g in plan.accounts] == [BRIDGE, A, B]
        broker = AuthBroker(tmp_path / "broker", auth_dir)
        with broker:
            yield Park(storage, auth_dir, broker, passwords)
        # the generated lines opened no listener of their own
        log = [ln.partition(": ")[2] for ln in broker.log().splitlines()]
        listening = [ln for ln in log if "listen socket" in ln]
        assert listening == [f"Opening ipv4 listen socket on port {broker.port}."]


def test_a_gateway_reaches_the_bridge_on_its_own_topics_only(park: Park) -> None:
    bridge = park.connected(BRIDGE)
    a = park.connected(A)
    try:
        assert [rc.value for rc in bridge.subscribe(BRIDGE_SUBS)] == [1, 1]
        assert not a.publish(A_TELEMETRY, b"a-own").is_failure
        assert not a.publish(A_STATUS, b"a-status", retain=True).is_failure
        # MQTT 3.1.1 has no refusal in a PUBACK: Mosquitto acknowledges the
        # publish and drops it (src/handle_publish.c, "Denied PUBLISH").
        assert not a.publish(B_TELEMETRY, b"a-as-beta").is_failure
        assert not a.publish("sp/v1/clock", b"a-clock").is_failure
        assert not a.publish(
            "sp/v1/p2/acme/meter-1/telemetry", b"a-other-park"
        ).is_failure
        assert not a.publish(A_TELEMETRY, b"a-last").is_failure
        bridge.wait_for(b"a-last")  # each later message would have come first
        assert bridge.messages == [
            (A_TELEMETRY, b"a-own"), (A_STATUS, b"a-status"), (A_TELEMETRY, b"a-last"),
        ]  # fmt: skip
    finally:
        a.close()
        bridge.close()
    log = park.broker.log()
    denied = [ln for ln in log.splitlines() if "Denied PUBLISH from gw1@acme" in ln]
    assert [ln.rsplit("'", 2)[1] for ln in denied] == [
        B_TELEMETRY,
        "sp/v1/clock",
        "sp/v1/p2/acme/meter-1/telemetry",
    ]  # fmt: skip  (the client id is the username: use_username_as_clientid)


def test_mqtt5_refuses_a_publish_to_another_enterprise_in_the_puback(
    park: Park,
) -> None:
    a = park.connected(A, protocol=mqtt.MQTTv5)
    bridge = park.connected(BRIDGE, protocol=mqtt.MQTTv5)
    try:
        bridge.subscribe(BRIDGE_SUBS)
        a.subscribe(["sp/v1/clock"])
        refused = a.publish(B_TELEMETRY, b"x")
        assert (refused.value, str(refused)) == (0x87, "Not authorized")
        assert a.publish(A_TELEMETRY, b"y").value == 0
        bridge.wait_for(b"y")
        # the bridge publishes the clock and nothing else
        assert bridge.publish(A_TELEMETRY, b"z").value == 0x87
        assert bridge.publish("sp/v1/clock", b"tick").value == 0
        a.wait_for(b"tick")
        assert bridge.messages == [(A_TELEMETRY, b"y")]
    finally:
        a.close()
        bridge.close()


def test_a_gateway_reads_nothing_but_the_clock(park: Park) -> None:
    bridge = park.connected(BRIDGE)
    a = park.connected(A)
    b = park.connected(B)
    try:
        bridge.subscribe(BRIDGE_SUBS)
        # Mosquitto 2.0's ACL file does not check SUBSCRIBE (src/security_default.c:
        # "FIXME - implement ACL subscription strings"): the SUBACK grants, and every
        # message is checked against the read grants when it is delivered.
        granted = a.subscribe(
            ["#", "sp/v1/+/+/+/telemetry", A_TELEMETRY, "sp/v1/clock"]
        )
        assert [rc.value for rc in granted] == [1, 1, 1, 1]
        b.publish(B_TELEMETRY, b"b-reading")
        a.publish(A_TELEMETRY, b"a-reading")
        bridge.wait_for(b"a-reading")
        bridge.publish("sp/v1/clock", b"tick")
        a.wait_for(b"tick")
        b.publish(B_TELEMETRY, b"b-after")
        bridge.wait_for(b"b-after")
        bridge.publish("sp/v1/clock", b"tock")
        a.wait_for(b"tock")
        assert a.messages == [("sp/v1/clock", b"tick"), ("sp/v1/clock", b"tock")]
    finally:
        for c in (a, b, bridge):
            c.close()


@pytest.mark.parametrize(
    ("username", "password"),
    [("nobody", "whatever"), (A, "wrong-password"), (A, None), (None, None)],
    ids=["unknown user", "wrong password", "no password", "anonymous"],
)
def test_unknown_clients_and_wrong_passwords_are_refused_at_connect(
    park: Park, username: str | None, password: str | None
) -> None:
    c = (
        park.client(username, password)
        if password
        else Client(park.broker.port, username, None)
    )
    try:
        rc = c.connect()
        assert rc.is_failure
        assert str(rc) == "Not authorized"
    finally:
        c.close()


async def test_rotating_one_password_and_retiring_an_account(park: Park) -> None:
    old = park.passwords[A]
    _, new = await mqtt_cli.rotate(park.storage, A)
    await mqtt_cli.retire(park.storage, B)
    plan = await mqtt_cli.write(park.storage, park.auth_dir)
    assert [g.username for g in plan.accounts] == [BRIDGE, A]
    park.broker.reload()
    deadline = time.monotonic() + WAIT_S
    while True:  # the reload is asynchronous
        c = park.client(A, old)
        refused = c.connect().is_failure
        c.close()
        if refused:
            break
        assert time.monotonic() < deadline, "the old password still works"
        await asyncio.sleep(0.1)
    for username, password, ok in [(A, new, True), (B, park.passwords[B], False),
                                   (BRIDGE, park.passwords[BRIDGE], True)]:  # fmt: skip
        c = park.client(username, password)
        assert c.connect().is_failure is not ok, username
        c.close()


def test_no_account_can_take_over_the_bridges_session(park: Park) -> None:
    """The bridge's persistent session holds the telemetry queued while it is away.
    A gateway connecting with the bridge's client id must neither take those
    messages nor make the broker drop them (``use_username_as_clientid``)."""
    bridge = park.connected(BRIDGE, client_id="smartpark-bridge", clean=False)
    bridge.subscribe(BRIDGE_SUBS)
    bridge.close()
    a = park.connected(A)
    a.publish(A_TELEMETRY, b"queued")  # for the bridge's session
    a.close()
    thief = park.connected(A, client_id="smartpark-bridge", clean=False)
    time.sleep(0.5)
    thief.close()
    assert thief.messages == []
    bridge = park.connected(BRIDGE, client_id="smartpark-bridge", clean=False)
    try:
        bridge.wait_for(b"queued")
    finally:
        bridge.close()


def test_the_command_shows_each_password_once_and_says_why_it_refuses(
    park: Park,
    pg_dsn: str,
    db_schema: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("SMARTPARK_DATABASE__DSN", pg_dsn)
    monkeypatch.setenv("SMARTPARK_DATABASE__SCHEMA", db_schema)
    assert mqtt_cli.main(["add-gateway", "acme", "gw2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "username: gw2@acme"
    password = out[1].removeprefix("password: ")
    assert len(password) == 32
    assert mqtt_cli.main(["list"]) == 0
    listed = capsys.readouterr().out
    assert "gw2@acme  gateway enterprise=acme  active" in listed
    assert password not in listed
    assert mqtt_cli.main(["add-gateway", "acme", "gw2"]) == 2
    assert "'gw2@acme' exists already" in capsys.readouterr().err
    assert mqtt_cli.main(["add-gateway", "nope", "gw1"]) == 1
    assert "no active enterprise 'nope'" in capsys.readouterr().err
    assert mqtt_cli.main(["add-gateway", "acme", "g:w"]) == 2
    assert "contains ':'" in capsys.readouterr().err
    assert mqtt_cli.main(["rotate", "nobody"]) == 1
    assert mqtt_cli.main(["write", str(tmp_path / "out")]) == 0
    assert "(4 accounts, 0 left out)" in capsys.readouterr().out
    passwd = (tmp_path / "out" / "passwd").read_text()
    assert passwd.count("\n") == 4
    assert password not in passwd


async def test_a_retired_enterprise_s_gateways_leave_the_files(park: Park) -> None:
    from storage.registry import ENTERPRISES

    assert await park.storage.registry.retire(ENTERPRISES, Scope(Role.OPERATOR), "beta")
    plan = await mqtt_cli.write(park.storage, park.auth_dir)
    assert [g.username for g in plan.accounts] == [BRIDGE, A]
    assert [(s.username, s.reason) for s in plan.skipped] == [
        (B, "enterprise 'beta' is retired or missing in the registry")
    ]
    assert B not in (park.auth_dir / "acl").read_text()
    park.broker.reload()
    deadline = time.monotonic() + WAIT_S
    while True:
        c = park.client(B)
        refused = c.connect().is_failure
        c.close()
        if refused:
            break
        assert time.monotonic() < deadline, "the retired enterprise's gateway connects"
        await asyncio.sleep(0.1)
    park.connected(A).close()


async def test_real_agents_and_the_real_bridge_under_the_generated_acl(
    pg_dsn: str,
    db_schema: str,
    kafka_bootstrap: str,
    topic_prefix: str,
    park_id: str,
    tmp_path: Path,
) -> None:
    """The edge agent (status, last will, clock subscription) and the bridge (its
    subscriptions, the clock beacon, Kafka) with their accounts: the honest
    gateway's readings reach Kafka and its clock is heard; a gateway whose config
    names another enterprise gets nothing through: the broker refuses each publish
    in its MQTT 5 PUBACK, so the agent keeps those readings in its outbox, counts the
    refusals and retries (README, "Refused publishes")."""
    from edge_agent.agent import EdgeAgent
    from edge_agent.config import parse_config
    from ingest.bridge import Bridge
    from simulators.park import SimulatedPark
    from tests.support.clients import consume_until
    from tests.support.recorder import until
    from tests.support.settings import platform_settings

    db = DatabaseSettings(dsn=SecretStr(pg_dsn), schema=db_schema)
    async with (
        Storage(db) as storage,
        SimulatedPark(seed=5, park=park_id, enterprises=2, port_base=0) as sim,
    ):
        await storage.migrate()
        honest, other = sim.enterprises
        op = Scope(Role.OPERATOR)
        park = {"id": park_id, "name": "Park", "timezone": "Asia/Shanghai"}
        await storage.registry.create_park(op, park)
        passwords: dict[str, str] = {}
        for e in (honest, other):
            await storage.registry.create_enterprise(
                op, {"id": e, "park": park_id, "name": e}
            )
            _, passwords[e] = await mqtt_cli.add_gateway(storage, e, "gw1")
        _, bridge_password = await mqtt_cli.add_bridge(storage, BRIDGE)
        await mqtt_cli.write(storage, tmp_path / "auth")

        def agent(enterprise: str, account: str, devices_of: str) -> Any:
            data = sim.agent_config_data(
                devices_of, mqtt_host="127.0.0.1", mqtt_port=broker.port,
                outbox_path=str(tmp_path / f"{enterprise}-{account}.db"),
                poll_interval_s=0.2, timeout_s=1.0, max_backoff_s=2.0,
            )  # fmt: skip
            pw = tmp_path / f"{account}.pw"
            pw.write_text(passwords[account])
            data["site"]["enterprise"] = enterprise
            data["broker"] |= {"username": f"gw1@{account}", "password_file": str(pw)}
            return parse_config(data)

        with AuthBroker(tmp_path / "broker", tmp_path / "auth") as broker:
            settings = platform_settings(
                ("127.0.0.1", broker.port), kafka_bootstrap, topic_prefix, park_id
            )
            settings.mqtt.username = BRIDGE
            settings.mqtt.password = SecretStr(bridge_password)
            settings.bridge.clock_beacon_s = 0.2
            async with Bridge(settings) as bridge:
                task = asyncio.create_task(bridge.run())
                try:
                    # the other enterprise's gateway, claiming the honest one's topics
                    async with (
                        EdgeAgent(agent(honest, honest, honest)) as a,
                        EdgeAgent(agent(honest, other, other)) as rogue,
                    ):
                        await until(
                            lambda: (
                                a.stats().publisher.acked_messages >= 3
                                and rogue.stats().publisher.refused_readings >= 3
                                and a.stats().publisher.clock_offset_ms is not None
                            ),
                            20,
                            "the honest agent acknowledged, the rogue refused, the"
                            " clock heard",
                        )
                        rogue_stats = rogue.stats().publisher
                        rogue_kept = rogue.outbox.stats().rows
                    records = await consume_until(
                        kafka_bootstrap,
                        settings.kafka.telemetry_topic,
                        lambda rs: len(rs) >= 3,
                        timeout_s=20,
                    )
                finally:
                    bridge.stop()
                    await task
    devices = {json.loads(r.value)["device"] for r in records if r.value}
    honest_devices = {d.device.device_id for d in sim.devices if d.enterprise == honest}
    assert devices == honest_devices
    assert rogue_stats.refused_messages.get("Not authorized (0x87)", 0) >= 1
    assert rogue_kept >= 3  # kept in the outbox, not lost
    assert "Denied PUBLISH from gw1@" + other in broker.log()
