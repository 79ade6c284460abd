"""The broker's password and ACL files, made from the MQTT accounts and the registry.

Who may do what (the only grants there are; anything not granted is denied):

- a **gateway** account ``{gateway}@{enterprise}`` publishes its own enterprise's
  device topics, ``sp/v1/{park}/{enterprise}/+/telemetry`` and ``.../+/status`` (the
  agent's own status and last will are ``.../agent.{client_id}/status``), and reads
  the platform's clock beacon ``sp/v1/clock`` (:mod:`edge_agent.publisher` subscribes
  to it);
- a **bridge** account reads every device's telemetry and status
  (``sp/v1/+/+/+/telemetry``, ``.../status``: what :mod:`ingest.bridge` subscribes
  to) and publishes the clock beacon. Nobody else reads telemetry.

Passwords are random (:func:`new_password`, 192 bits), shown once and stored only as
Mosquitto's PBKDF2-SHA512 hash, the ``$7$`` form ``mosquitto_passwd`` writes
(eclipse/mosquitto ``apps/mosquitto_passwd/mosquitto_passwd.c``,
``output_new_password``: ``user:$7$<iterations>$<base64 salt>$<base64 hash>``;
``src/password_mosq.c``, ``pw__hash``: ``PKCS5_PBKDF2_HMAC`` with SHA-512, a 12-byte
salt, a 64-byte hash; ``src/security_default.c`` refuses any other salt or hash
length). The salt is 12 URL-safe characters (72 random bits) rather than 12 raw
bytes so the same hash also serves EMQX's built-in database (``pbkdf2``,
``mac_fun = sha512``, ``iterations = 101``, ``dk_length = 64``, the salt taken as
its text; see the README). 101 iterations is ``mosquitto_passwd``'s default
(``PW_DEFAULT_ITERATIONS`` in ``src/password_mosq.h``): iterations slow the guessing
of a weak password, and these passwords are random, not guessable.

:func:`plan` leaves out, with the reason, an account the files must not carry (a
gateway of a retired enterprise, an id that would widen a topic filter), and never
lets one bad account stop the others. :func:`write_files` writes each file
atomically (a temporary file in the same directory, fsync, rename).
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from smartpark.wire import CLOCK_TOPIC, TOPIC_ROOT, valid_id
from storage.mqtt_accounts import AccountGrant, AccountKind

ITERATIONS = 101
_SALT_CHARS = 12  # mosquitto accepts exactly 12 salt bytes
# $7$<iterations>$<salt>$<hash>, base64 (one line: nothing can be injected)
_HASH_RE = re.compile(r"^\$7\$[1-9][0-9]{0,6}\$[A-Za-z0-9+/]{16}\$[A-Za-z0-9+/]{86}==$")
PASSWD_MODE = 0o600
ACL_MODE = 0o644  # no secret in it; the broker's user must be able to read it

PASSWD_FILE = "passwd"  # noqa: S105 (a file name)
ACL_FILE = "acl"
CONF_FILE = "smartpark-auth.conf"


def new_password() -> str:
    """A random password (24 random bytes, URL-safe base64: 32 characters)."""
    return secrets.token_urlsafe(24)


def hash_password(
    password: str, *, salt: bytes | None = None, iterations: int = ITERATIONS
) -> str:
    """``$7$<iterations>$<salt>$<hash>`` as ``mosquitto_passwd`` writes it (the part
    after ``user:``). ``salt``: 12 bytes; by default 12 random URL-safe characters."""
    if salt is None:
        salt = secrets.token_urlsafe(9).encode()  # 9 bytes -> 12 characters
    if len(salt) != _SALT_CHARS:
        raise ValueError(f"salt: {len(salt)} bytes, Mosquitto needs {_SALT_CHARS}")
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    b64 = base64.b64encode
    return f"$7${iterations}${b64(salt).decode()}${b64(digest).decode()}"


def gateway_username(enterprise: str, gateway: str) -> str:
    """``gateway@enterprise`` (``@`` is not in the id alphabet, so the name is
    unambiguous); ValueError naming the field for an id that cannot be used."""
    for field, value in (("enterprise", enterprise), ("gateway", gateway)):
        _check_id(field, value)
    return f"{gateway}@{enterprise}"


def check_bridge_name(name: str) -> None:
    """A bridge account's name: an id without ``:``; ValueError otherwise."""
    _check_id("bridge name", name)


def _check_id(field: str, value: str) -> None:
    if not valid_id(value):
        raise ValueError(
            f"{field}: {value!r} is not an id (1 to 64 of A-Za-z0-9_.:-, starting"
            " with a letter or digit)"
        )
    if ":" in value:
        raise ValueError(
            f"{field}: {value!r} contains ':', which Mosquitto's password file uses"
            " as its separator"
        )


def gateway_topics(park: str, enterprise: str) -> tuple[str, str]:
    """The topic filters a gateway of ``enterprise`` may publish to."""
    base = f"{TOPIC_ROOT}/{park}/{enterprise}/+"
    return f"{base}/telemetry", f"{base}/status"


BRIDGE_READ = (f"{TOPIC_ROOT}/+/+/+/telemetry", f"{TOPIC_ROOT}/+/+/+/status")


@dataclass(frozen=True, slots=True)
class Skipped:
    username: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plan:
    """What the files carry: the accounts in them and those left out, with why."""

    accounts: tuple[AccountGrant, ...]
    skipped: tuple[Skipped, ...]


def plan(grants: Sequence[AccountGrant]) -> Plan:
    """Split the active accounts into those the files carry and those they must not."""
    kept: list[AccountGrant] = []
    skipped: list[Skipped] = []
    for g in grants:
        reason = _refusal(g)
        if reason is None:
            kept.append(g)
        else:
            skipped.append(Skipped(g.username, reason))
    return Plan(tuple(kept), tuple(skipped))


def _refusal(g: AccountGrant) -> str | None:
    parts = g.username.split("@")
    if len(parts) > 2 or not all(valid_id(p) and ":" not in p for p in parts):
        return "the username cannot be written to the files (not id or id@id)"
    if _HASH_RE.match(g.password_hash) is None:
        return "the stored hash is not Mosquitto's $7$ form"
    if g.kind == AccountKind.BRIDGE:
        return None
    if g.kind != AccountKind.GATEWAY:
        return f"unknown kind {g.kind!r}"
    if not g.enterprise_active or g.park is None or g.enterprise is None:
        return f"enterprise {g.enterprise!r} is retired or missing in the registry"
    for field, value in (("park", g.park), ("enterprise", g.enterprise)):
        if not valid_id(value):  # a wildcard or "/" would widen the grant
            return f"{field} id {value!r} is not a valid id"
    return None


def render_passwd(p: Plan) -> str:
    """Mosquitto's ``password_file``: ``username:$7$...`` per line."""
    return "".join(f"{g.username}:{g.password_hash}\n" for g in p.accounts)


def render_acl(p: Plan) -> str:
    """Mosquitto's ``acl_file``: a ``user`` block per account, nothing for anyone
    else (no ``topic`` line outside a block, no ``pattern``)."""
    out = [
        "# Written by `smartpark mqtt write` from the MQTT accounts and the registry;",
        "# edits are overwritten. Anything not granted here is denied.",
    ]
    for g in p.accounts:
        out.append("")
        if g.kind == AccountKind.BRIDGE:
            out.append(f"# bridge {g.username}: reads every device topic")
            out.append(f"user {g.username}")
            out += [f"topic read {t}" for t in BRIDGE_READ]
            out.append(f"topic write {CLOCK_TOPIC}")
        else:
            assert g.park is not None
            assert g.enterprise is not None
            out.append(f"# gateway of enterprise {g.enterprise} (park {g.park})")
            out.append(f"user {g.username}")
            out += [f"topic write {t}" for t in gateway_topics(g.park, g.enterprise)]
            out.append(f"topic read {CLOCK_TOPIC}")
    return "\n".join(out) + "\n"


def render_conf(passwd: Path, acl: Path) -> str:
    """The lines a production ``mosquitto.conf`` includes (``include_dir``) to use
    the files. Only global settings: Mosquitto reads each included file with no
    current listener, so a listener setting there would open a listener of its own
    on port 1883 (``src/conf.c``, ``config__read_file_core``; checked by the tests).
    Hence the listener line the comment asks for: without
    ``use_username_as_clientid`` any account could connect with another's client id
    and take over its session; Mosquitto 2.0 does not compare usernames on a
    takeover and then drops the queued messages the new owner may not read
    (``src/handle_connect.c``, ``connection_check_acl``): the bridge's backlog."""
    return (
        "# Written by `smartpark mqtt write`; edits are overwritten.\n"
        "# Needs per_listener_settings false (the default), and in mosquitto.conf\n"
        "# under every listener line: use_username_as_clientid true\n"
        "allow_anonymous false\n"
        f"password_file {passwd}\n"
        f"acl_file {acl}\n"
    )


def write_atomic(path: Path, text: str, mode: int) -> None:
    """Replace ``path`` with ``text`` at once: a reader sees the old file or the new
    one, never a part. The new file has ``mode`` (and, when it replaces a file and
    the process may, that file's owner and group)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)  # before any byte is written
        _keep_owner(fd, path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _keep_owner(fd: int, path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    if os.geteuid() == 0:
        os.fchown(fd, st.st_uid, st.st_gid)


def write_files(p: Plan, directory: Path, *, broker_dir: Path | None = None) -> None:
    """Write the password file (0600), the ACL file and the config lines into
    ``directory``. ``broker_dir``: the same directory as the broker sees it (in a
    container), named in the config lines; default ``directory`` itself."""
    directory.mkdir(parents=True, exist_ok=True)
    seen = broker_dir if broker_dir is not None else directory.resolve()
    write_atomic(directory / PASSWD_FILE, render_passwd(p), PASSWD_MODE)
    write_atomic(directory / ACL_FILE, render_acl(p), ACL_MODE)
    conf = render_conf(seen / PASSWD_FILE, seen / ACL_FILE)
    write_atomic(directory / CONF_FILE, conf, ACL_MODE)
