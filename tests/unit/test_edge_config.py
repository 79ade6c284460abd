"""The agent's YAML config: a good file loads; every mistake names file:line: field."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config
from smartpark.errors import ConfigError

# Line numbers matter below: keep this text in sync with the expectations.
GOOD = """\
site: {park: park1, enterprise: alu-smelter}
broker: {host: 127.0.0.1, port: 1883, client_id: edge-alu-smelter, keepalive_s: 30}
outbox: {path: data/outbox.db, max_rows: 1000, max_age_s: 3600, overflow: drop_oldest}
publish: {max_readings_per_message: 500, max_in_flight: 20}
devices:
  - id: pot-line-1-meter
    protocol: modbus_tcp
    host: 10.0.0.21
    port: 502
    unit_id: 1
    poll_interval_s: 10
    timeout_s: 2
    registers:
      - {address: 0, type: u32, scale: 0.01, metric: active_energy, unit: kWh}
      - {address: 2, table: holding, type: f32, metric: active_power, unit: MW}
  - id: water-in
    protocol: modbus_tcp
    host: 10.0.0.22
    poll_interval_s: 60
    registers:
      - address: 0
        table: input
        type: u32
        word_order: little
        metric: water_volume
        unit: L
"""


def write(tmp_path: Path, text: str, name: str = "agent.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error_of(tmp_path: Path, text: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return info.value


def test_good_file_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert cfg.site.enterprise == "alu-smelter"
    assert cfg.agent_id == "agent.edge-alu-smelter"
    # relative outbox paths are relative to the config file, not the cwd
    assert cfg.outbox.path == tmp_path.resolve() / "data" / "outbox.db"
    meter, water = cfg.devices
    assert meter.registers[0].scale == 0.01
    assert meter.registers[1].unit == "MW"
    # defaults a plant engineer may leave out
    assert (water.port, water.unit_id, water.timeout_s) == (502, 1, 2.0)
    assert water.registers[0].word_order == "little"
    assert water.registers[0].byte_order == "big"
    assert cfg.broker.password is None


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        # a typo'd type
        (
            "type: f32, metric: active_power",
            "type: u23, metric: active_power",
            "agent.yaml:15: devices[0].registers[1].type: unknown value 'u23' (expected"
            " one of 'u16', 'i16', 'u32', 'i32', 'f32', 'u64', 'i64' or 'f64')",
        ),
        # a typo'd key is reported on the key's own line
        (
            "    timeout_s: 2\n",
            "    timout_s: 2\n",
            "agent.yaml:12: devices[0].timout_s: unknown field (a typo?)",
        ),
        (
            "broker: {host",
            "brokr: {host",
            "agent.yaml:2: brokr: unknown field (a typo?)",
        ),
        # a wrong type
        (
            "    port: 502\n",
            "    port: five-o-two\n",
            "agent.yaml:9: devices[0].port: Input should be a valid integer, unable to "
            "parse string as an integer (got 'five-o-two')",
        ),
        (
            "poll_interval_s: 60",
            "poll_interval_s: -1",
            "agent.yaml:19: devices[1].poll_interval_s: Input should be greater than 0 "
            "(got -1)",
        ),
        # an unknown metric, with a hint
        (
            "metric: water_volume",
            "metric: water_volum",
            "agent.yaml:25: devices[1].registers[0].metric: unknown metric "
            "'water_volum' (did you mean 'water_volume'?)",
        ),
        # a unit that cannot become the metric's unit
        (
            "metric: active_power, unit: MW",
            "metric: active_power, unit: MWh",
            "agent.yaml:15: devices[0].registers[1].unit: unit 'MWh' cannot be "
            "converted to 'kW' for active_power",
        ),
        (
            "        unit: L\n",
            "        unit: kg\n",
            "agent.yaml:26: devices[1].registers[0].unit: unit 'kg' cannot be "
            "converted to 'm3' for water_volume",
        ),
        # ids end up in MQTT topics
        (
            "id: water-in",
            "id: water/in",
            "agent.yaml:16: devices[1].id: invalid id 'water/in': 1-64 characters of "
            "A-Z a-z 0-9 _ . : -, starting with a letter or digit",
        ),
        # cross-field checks point at the offending entry, not at its list
        (
            "id: water-in",
            "id: pot-line-1-meter",
            "agent.yaml:16: devices[1].id: duplicate device id 'pot-line-1-meter'",
        ),
        (
            "metric: active_power, unit: MW",
            "metric: active_energy, unit: MWh",
            "agent.yaml:15: devices[0].registers[1].metric: metric 'active_energy' is "
            "already read by registers[0]",
        ),
        # a missing field is reported on its parent mapping
        (
            "    host: 10.0.0.22\n",
            "",
            "agent.yaml:16: devices[1].host: missing required field",
        ),
        (
            "        word_order: little\n",
            "        word_order: middle\n",
            "agent.yaml:24: devices[1].registers[0].word_order: unknown value 'middle' "
            "(expected one of 'big' or 'little')",
        ),
        (
            "      - address: 0\n",
            "      - address: 65535\n",
            "agent.yaml:21: devices[1].registers[0].address: a u32 at 65535 runs past "
            "65535",
        ),
        (
            "overflow: drop_oldest",
            "overflow: drop_newest",
            "agent.yaml:3: outbox.overflow: unknown value 'drop_newest' (expected one "
            "of 'drop_oldest' or 'refuse_new')",
        ),
        (
            "client_id: edge-alu-smelter",
            "client_id: " + "x" * 60,
            "agent.yaml:2: broker.client_id: at most 58 characters: the agent's status"
            " is published as device 'agent.{client_id}'",
        ),
        # YAML itself
        (
            "    unit_id: 1\n",
            "    unit_id: 1\n    unit_id: 2\n",
            "agent.yaml:11: duplicate key 'unit_id'",
        ),
        (
            "    host: 10.0.0.21\n",
            "    host: [10.0.0.21\n",
            "agent.yaml:9: not valid YAML: expected ',' or ']', but got ':'",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    err = error_of(tmp_path, GOOD.replace(old, new, 1))
    assert str(err) == expected
    assert err.file == "agent.yaml"


def test_empty_and_missing_files(tmp_path: Path) -> None:
    assert str(error_of(tmp_path, "")) == "agent.yaml: the file is empty"
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


def test_password_from_file_is_secret(tmp_path: Path) -> None:
    (tmp_path / "mqtt.pass").write_text("s3cret\n", encoding="utf-8")
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, username: edge, password_file: mqtt.pass}"
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.broker.password is not None
    assert cfg.broker.password.get_secret_value() == "s3cret"
    for shown in (repr(cfg), str(cfg), cfg.model_dump_json()):
        assert "s3cret" not in shown


def test_password_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, password_env: SP_TEST_PW}"
    )
    monkeypatch.setenv("SP_TEST_PW", "from-env")
    password = load_config(write(tmp_path, text)).broker.password
    assert password is not None
    assert password.get_secret_value() == "from-env"
    monkeypatch.delenv("SP_TEST_PW")
    assert str(error_of(tmp_path, text)) == (
        "agent.yaml:2: broker.password_env: environment variable SP_TEST_PW is not set"
    )


def test_unreadable_password_file(tmp_path: Path) -> None:
    text = GOOD.replace(
        "keepalive_s: 30}", "keepalive_s: 30, password_file: none.pass}"
    )
    assert str(error_of(tmp_path, text)) == (
        "agent.yaml:2: broker.password_file: cannot read: No such file or directory"
    )


def test_parse_config_from_data_has_no_line() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({"site": {"park": "p"}}, source="generated")
    assert str(info.value) == "generated: site.enterprise: missing required field"
    assert info.value.line is None


def test_mqtt_5_by_default_with_a_session_expiry(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, GOOD))
    assert (cfg.broker.protocol, cfg.broker.session_expiry_s) == ("5", 86_400)
    assert (cfg.publish.refused_retry_min_s, cfg.publish.refused_retry_max_s) == (
        1.0,
        60.0,
    )
    broker = "keepalive_s: 30}"
    for written, expected in [("5", "5"), ('"3.1.1"', "3.1.1"), ("3.1.1", "3.1.1")]:
        text = GOOD.replace(broker, f"keepalive_s: 30, protocol: {written}}}")
        assert load_config(write(tmp_path, text)).broker.protocol == expected


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "keepalive_s: 30}",
            "keepalive_s: 30, protocol: 4}",
            "agent.yaml:2: broker.protocol: unknown value '4' (expected one of '5' or"
            " '3.1.1')",
        ),
        (
            "keepalive_s: 30}",
            "keepalive_s: 30, protocol: 3.1.1, session_expiry_s: 60}",
            "agent.yaml:2: broker: session_expiry_s needs protocol 5 (an MQTT 3.1.1"
            " session without clean session never expires on the broker)",
        ),
        (
            "keepalive_s: 30}",
            "keepalive_s: 30, session_expiry_s: 0}",
            "agent.yaml:2: broker.session_expiry_s: Input should be greater than or"
            " equal to 1 (got 0)",
        ),
        (
            "max_in_flight: 20}",
            "max_in_flight: 20, refused_retry_min_s: 30, refused_retry_max_s: 10}",
            "agent.yaml:4: publish: refused_retry_max_s is below refused_retry_min_s",
        ),
    ],
)
def test_protocol_and_retry_mistakes(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert str(error_of(tmp_path, GOOD.replace(old, new, 1))) == expected


def test_models_are_frozen(tmp_path: Path) -> None:
    cfg: AgentConfig = load_config(write(tmp_path, GOOD))
    with pytest.raises(ValueError, match="frozen"):
        cfg.devices[0].port = 1


def test_the_shipped_example_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SMARTPARK_MQTT_PASSWORD", "x")
    monkeypatch.setenv("SMARTPARK_HJ212_PW", "y")
    example = Path(__file__).resolve().parents[2] / "edge_agent" / "agent.example.yaml"
    cfg = load_config(example)
    assert [d.id for d in cfg.devices] == ["pot-line-1-meter", "fresh-water-in"]
    assert cfg.devices[0].registers[1].unit == "MW"
    assert cfg.hj212 is not None
    assert [logger.device for logger in cfg.hj212.loggers] == [
        "stack-1-cems",
        "outfall-1",
    ]


# --- TLS to the broker ------------------------------------------------------

# Line numbers matter below: tls starts on line 5, its fields on lines 6-8.
TLS_GOOD = """\
site: {park: park1, enterprise: alu-smelter}
broker:
  host: 127.0.0.1
  client_id: edge-alu-smelter
  tls:
    ca_file: pki/ca.pem
    cert_file: pki/edge.pem
    key_file: pki/edge.key
outbox: {path: outbox.db}
devices:
  - {id: m1, protocol: modbus_tcp, host: 10.0.0.21, poll_interval_s: 10,
     registers: [{address: 0, type: u16, metric: active_power, unit: kW}]}
"""
KEY_PASSWORD = "k3y-pass-5d1e"


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """tmp_path/pki: ca.pem, edge.pem + edge.key (a client certificate of that CA),
    enc.key (edge.key encrypted with KEY_PASSWORD), other.key, junk.pem."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    d = tmp_path / "pki"
    d.mkdir()
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    client = ca.issue_cert("edge-client")
    client.cert_chain_pems[0].write_to_path(str(d / "edge.pem"))
    client.private_key_pem.write_to_path(str(d / "edge.key"))
    key = serialization.load_pem_private_key(client.private_key_pem.bytes(), None)
    (d / "enc.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(KEY_PASSWORD.encode()),
        )
    )
    ca.issue_cert("someone-else").private_key_pem.write_to_path(str(d / "other.key"))
    (d / "junk.pem").write_text("not a certificate\n", encoding="utf-8")
    return d


def test_tls_context_is_built_once_at_load(tmp_path: Path, pki: Path) -> None:
    cfg = load_config(write(tmp_path, TLS_GOOD))
    tls = cfg.broker.tls
    assert tls is not None
    # paths are relative to the config file; the port defaults to MQTT over TLS's
    assert tls.ca_file == tmp_path.resolve() / "pki" / "ca.pem"
    assert cfg.broker.port == 8883
    ctx = tls.ssl_context()
    assert ctx is tls.ssl_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname
    assert ctx.minimum_version >= ssl.TLSVersion.TLSv1_2
    assert len(ctx.get_ca_certs()) == 1  # the given CA
    # an explicit port stays; no tls section: plain TCP on 1883
    explicit = load_config(
        write(tmp_path, TLS_GOOD.replace("  tls:", "  port: 1883\n  tls:"))
    )
    assert explicit.broker.port == 1883
    plain = load_config(write(tmp_path, GOOD))
    assert (plain.broker.tls, plain.broker.port) == (None, 1883)


def test_bare_tls_means_tls_with_the_system_cas(tmp_path: Path) -> None:
    text = (
        TLS_GOOD.split("    ca_file:", maxsplit=1)[0]
        + "outbox:"
        + TLS_GOOD.split("outbox:", maxsplit=1)[1]
    )
    cfg = load_config(write(tmp_path, text))
    assert cfg.broker.tls is not None
    assert cfg.broker.tls.ca_file is None
    assert cfg.broker.tls.ssl_context().verify_mode == ssl.CERT_REQUIRED
    assert cfg.broker.port == 8883


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "ca_file: pki/ca.pem",
            "ca_file: pki/none.pem",
            "agent.yaml:6: broker.tls.ca_file: cannot read: No such file or directory",
        ),
        (
            "ca_file: pki/ca.pem",
            "ca_file: pki",
            "agent.yaml:6: broker.tls.ca_file: cannot read: Is a directory",
        ),
        (
            "ca_file: pki/ca.pem",
            "ca_file: pki/junk.pem",
            "agent.yaml:6: broker.tls.ca_file: no PEM certificate in the file",
        ),
        (
            "cert_file: pki/edge.pem",
            "cert_file: pki/edge.key",
            "agent.yaml:7: broker.tls.cert_file: no PEM certificate in the file",
        ),
        (
            "key_file: pki/edge.key",
            "key_file: pki/junk.pem",
            "agent.yaml:8: broker.tls.key_file: no PEM private key in the file",
        ),
        (
            "key_file: pki/edge.key",
            "key_file: pki/other.key",
            "agent.yaml:8: broker.tls.key_file: the key does not belong to the "
            "certificate in cert_file",
        ),
        (
            "key_file: pki/edge.key",
            "key_file: pki/enc.key",
            "agent.yaml:8: broker.tls.key_file: the key is encrypted: give "
            "key_password_file or key_password_env",
        ),
        (
            "    key_file: pki/edge.key\n",
            "",
            "agent.yaml:6: broker.tls.key_file: required with cert_file (the "
            "certificate's key)",
        ),
        (
            "    cert_file: pki/edge.pem\n",
            "",
            "agent.yaml:6: broker.tls.cert_file: required with key_file (the client "
            "certificate)",
        ),
        (
            "    cert_file: pki/edge.pem\n    key_file: pki/edge.key\n",
            "    key_password_env: SP_TEST_KEY_PW\n",
            "agent.yaml:7: broker.tls.key_password_env: only with key_file (a client "
            "key)",
        ),
        (
            "key_file: pki/edge.key",
            "key_file: pki/enc.key\n    key_password_file: pki/kp\n"
            "    key_password_env: SP_TEST_KEY_PW",
            "agent.yaml:10: broker.tls.key_password_env: give key_password_file or "
            "key_password_env, not both",
        ),
        (
            "key_file: pki/edge.key",
            "key_file: pki/enc.key\n    key_password_file: pki/none",
            "agent.yaml:9: broker.tls.key_password_file: cannot read: No such file or "
            "directory",
        ),
        # there is no switch to turn verification off
        (
            "ca_file: pki/ca.pem",
            "ca_file: pki/ca.pem\n    insecure: true",
            "agent.yaml:7: broker.tls.insecure: unknown field (a typo?)",
        ),
        (
            "ca_file: pki/ca.pem",
            "ca_file: pki/ca.pem\n    server_name: ''",
            "agent.yaml:7: broker.tls.server_name: String should have at least 1 "
            "character (got '')",
        ),
    ],
)
def test_tls_mistakes_name_the_field(
    tmp_path: Path, pki: Path, old: str, new: str, expected: str
) -> None:
    assert old in TLS_GOOD
    assert str(error_of(tmp_path, TLS_GOOD.replace(old, new, 1))) == expected


def test_key_password_loads_the_key_and_no_secret_shows_anywhere(
    tmp_path: Path, pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker_pw = "mqtt-pw-0a9b8c"
    monkeypatch.setenv("SP_TEST_MQTT_PW", broker_pw)
    (pki / "key.pass").write_text(KEY_PASSWORD + "\n", encoding="utf-8")
    text = TLS_GOOD.replace(
        "key_file: pki/edge.key",
        "key_file: pki/enc.key\n    key_password_file: pki/key.pass",
    ).replace("  tls:", "  username: edge\n  password_env: SP_TEST_MQTT_PW\n  tls:")
    cfg = load_config(write(tmp_path, text))
    assert cfg.broker.tls is not None
    assert cfg.broker.tls.ssl_context().verify_mode == ssl.CERT_REQUIRED
    shown = [repr(cfg), str(cfg), cfg.model_dump_json(), str(cfg.model_dump())]
    # a wrong key password is reported without the password
    monkeypatch.setenv("SP_TEST_KEY_PW", "wrong-" + KEY_PASSWORD)
    err = error_of(
        tmp_path,
        text.replace(
            "key_password_file: pki/key.pass", "key_password_env: SP_TEST_KEY_PW"
        ),
    )
    assert str(err) == (
        "agent.yaml:11: broker.tls.key_password_env: cannot decrypt key_file with "
        "this password"
    )
    shown += [str(err), repr(err), str(err.__cause__), str(err.__context__)]
    for text_shown in shown:
        assert KEY_PASSWORD not in text_shown
        assert broker_pw not in text_shown


# --- the status endpoint ----------------------------------------------------


@pytest.mark.parametrize(
    ("section", "expected"),
    [
        ("", None),  # off unless asked for
        ("status: {}\n", ("127.0.0.1", 9108, 300.0)),
        ("status:\n", ("127.0.0.1", 9108, 300.0)),  # a bare key asks for it too
        (
            "status: {host: 0.0.0.0, port: 0, unhealthy_after_s: 60}\n",
            ("0.0.0.0", 0, 60.0),
        ),
    ],
)
def test_status_section(
    tmp_path: Path, section: str, expected: tuple[str, int, float] | None
) -> None:
    cfg = load_config(write(tmp_path, GOOD + section))
    status = cfg.status
    got = (
        None if status is None else (status.host, status.port, status.unhealthy_after_s)
    )
    assert got == expected


def test_status_port_out_of_range(tmp_path: Path) -> None:
    err = error_of(tmp_path, GOOD + "status: {port: 70000}\n")
    assert str(err) == (
        "agent.yaml:27: status.port: Input should be less than or equal to 65535 "
        "(got 70000)"
    )
