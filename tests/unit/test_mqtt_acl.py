"""The broker's files (api.mqtt.acl): Mosquitto's hash form, the ACL, what is left out.

The hash is checked against the real ``mosquitto_passwd`` (installed with the local
services' Mosquitto); the files on a real broker are tests/integration/test_mqtt_acl.py.
"""

from __future__ import annotations

import base64
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from api.mqtt import acl
from storage.mqtt_accounts import AccountGrant

HASH = acl.hash_password("pw", salt=b"saltsaltsalt")
BRIDGE_HASH = acl.hash_password("bridge-pw", salt=b"bridgebridge")


def gateway(
    username: str = "gw1@acme",
    park: str | None = "p1",
    enterprise: str | None = "acme",
    *,
    active: bool = True,
    password_hash: str = HASH,
) -> AccountGrant:
    return AccountGrant(username, "gateway", password_hash, park, enterprise, active)


def bridge(username: str = "bridge") -> AccountGrant:
    return AccountGrant(username, "bridge", BRIDGE_HASH, None, None, False)


def test_the_hash_is_the_one_mosquitto_passwd_writes(tmp_path: Path) -> None:
    exe = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    if not Path(exe).exists():
        pytest.fail("mosquitto_passwd is missing: deploy/local/services up installs it")
    passwd = tmp_path / "passwd"
    passwd.touch()
    subprocess.run([exe, "-b", str(passwd), "gw1@acme", "s3cret pass"], check=True)
    user, _, theirs = passwd.read_text().strip().partition(":")
    _, seven, iterations, salt, _ = theirs.split("$")
    assert (user, seven, iterations) == ("gw1@acme", "7", str(acl.ITERATIONS))
    ours = acl.hash_password("s3cret pass", salt=base64.b64decode(salt))
    assert ours == theirs


def test_a_new_hash_has_a_text_salt_and_mosquittos_lengths() -> None:
    h = acl.hash_password(acl.new_password())
    _, seven, iterations, salt, digest = h.split("$")
    assert (seven, iterations) == ("7", "101")
    raw_salt = base64.b64decode(salt)
    assert len(raw_salt) == 12
    assert raw_salt.decode("ascii").isprintable()  # the same salt serves EMQX
    assert len(base64.b64decode(digest)) == 64
    assert acl.hash_password("x") != acl.hash_password("x")  # salted


def test_passwords_are_long_and_random() -> None:
    passwords = {acl.new_password() for _ in range(100)}
    assert len(passwords) == 100
    assert all(len(p) == 32 for p in passwords)


def test_the_acl_grants_each_gateway_its_own_topics_and_the_bridge_the_rest() -> None:
    p = acl.plan([bridge(), gateway(), gateway("gw2@beta", "p2", "beta")])
    assert acl.render_acl(p) == (
        "# Written by `smartpark mqtt write` from the MQTT accounts and the registry;\n"
        "# edits are overwritten. Anything not granted here is denied.\n"
        "\n"
        "# bridge bridge: reads every device topic\n"
        "user bridge\n"
        "topic read sp/v1/+/+/+/telemetry\n"
        "topic read sp/v1/+/+/+/status\n"
        "topic write sp/v1/clock\n"
        "\n"
        "# gateway of enterprise acme (park p1)\n"
        "user gw1@acme\n"
        "topic write sp/v1/p1/acme/+/telemetry\n"
        "topic write sp/v1/p1/acme/+/status\n"
        "topic read sp/v1/clock\n"
        "\n"
        "# gateway of enterprise beta (park p2)\n"
        "user gw2@beta\n"
        "topic write sp/v1/p2/beta/+/telemetry\n"
        "topic write sp/v1/p2/beta/+/status\n"
        "topic read sp/v1/clock\n"
    )
    assert acl.render_passwd(p) == (
        f"bridge:{BRIDGE_HASH}\ngw1@acme:{HASH}\ngw2@beta:{HASH}\n"
    )


def test_the_bridge_reads_what_the_bridge_subscribes_to() -> None:
    from smartpark.settings import MqttSettings

    sub = MqttSettings().subscription
    assert sub in acl.BRIDGE_READ
    assert sub.rsplit("/", 1)[0] + "/status" in acl.BRIDGE_READ  # ingest.bridge


@pytest.mark.parametrize(
    ("grant", "reason"),
    [
        (gateway(active=False), "enterprise 'acme' is retired or missing"),
        (gateway(park=None), "enterprise 'acme' is retired or missing"),
        (gateway("gw@a+b", "p1", "a+b"), "cannot be written to the files"),
        (gateway("gw@acme", "p1", "a+b"), "enterprise id 'a+b' is not a valid id"),
        (gateway("gw@acme", "#", "acme"), "park id '#' is not a valid id"),
        (gateway("gw@acme", "p1", "a/b"), "enterprise id 'a/b' is not a valid id"),
        (gateway("g:w@acme"), "cannot be written to the files"),
        (gateway("gw@acme\ntopic readwrite #"), "cannot be written to the files"),
        (gateway("a@b@acme"), "cannot be written to the files"),
        (gateway(password_hash="plain"), "not Mosquitto's $7$ form"),
        (gateway(password_hash=HASH + "\nuser x"), "not Mosquitto's $7$ form"),
        (AccountGrant("x", "admin", HASH, None, None, False), "unknown kind"),
    ],
)
def test_an_account_the_files_must_not_carry_is_left_out_alone(
    grant: AccountGrant, reason: str
) -> None:
    p = acl.plan([bridge(), grant, gateway("gw9@ok", "p1", "ok")])
    assert [g.username for g in p.accounts] == ["bridge", "gw9@ok"]
    assert [s.username for s in p.skipped] == [grant.username]
    assert reason in p.skipped[0].reason
    assert grant.username not in acl.render_acl(p).split()
    assert not acl.render_passwd(p).startswith(grant.username + ":")


@pytest.mark.parametrize(
    ("enterprise", "gw", "message"),
    [
        ("acme", "gw:1", "gateway: 'gw:1' contains ':'"),
        ("ac:me", "gw1", "enterprise: 'ac:me' contains ':'"),
        ("acme", "gw/1", "gateway: 'gw/1' is not an id"),
        ("acme", "+", "gateway: '+' is not an id"),
        ("", "gw1", "enterprise: '' is not an id"),
    ],
)
def test_names_that_cannot_be_accounts_are_refused(
    enterprise: str, gw: str, message: str
) -> None:
    with pytest.raises(ValueError, match="^" + message.replace("+", r"\+")):
        acl.gateway_username(enterprise, gw)


def test_a_gateway_username_is_gateway_at_enterprise() -> None:
    assert acl.gateway_username("acme-steel.2", "gw-1") == "gw-1@acme-steel.2"


def test_files_are_written_whole_with_their_modes(tmp_path: Path) -> None:
    out = tmp_path / "broker"
    acl.write_files(acl.plan([bridge()]), out)
    acl.write_files(acl.plan([bridge(), gateway()]), out)  # replaces
    assert sorted(p.name for p in out.iterdir()) == [
        "acl",
        "passwd",
        "smartpark-auth.conf",
    ]  # fmt: skip  (no temporary file left)
    assert stat.S_IMODE((out / "passwd").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "acl").stat().st_mode) == 0o644
    assert (out / "passwd").read_text().count("\n") == 2
    conf = (out / "smartpark-auth.conf").read_text().splitlines()
    assert [line for line in conf if not line.startswith("#")] == [
        "allow_anonymous false",
        f"password_file {out.resolve() / 'passwd'}",
        f"acl_file {out.resolve() / 'acl'}",
    ]


def test_the_config_names_the_directory_as_the_broker_sees_it(tmp_path: Path) -> None:
    acl.write_files(acl.plan([]), tmp_path, broker_dir=Path("/mosquitto/config"))
    conf = (tmp_path / "smartpark-auth.conf").read_text()
    assert "password_file /mosquitto/config/passwd\n" in conf
    assert "acl_file /mosquitto/config/acl\n" in conf


def test_a_failed_write_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "passwd"
    acl.write_atomic(target, "old\n", 0o600)
    with pytest.raises(UnicodeEncodeError):
        acl.write_atomic(target, "new \udcff\n", 0o600)  # not encodable: fails mid-way
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["passwd"]
