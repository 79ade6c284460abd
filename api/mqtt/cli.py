"""``smartpark mqtt``: the broker's accounts, and its password and ACL files.

    smartpark mqtt add-gateway ENTERPRISE GATEWAY   # account GATEWAY@ENTERPRISE
    smartpark mqtt add-bridge [NAME]                # default "bridge"
    smartpark mqtt rotate USERNAME                  # a new password for one account
    smartpark mqtt retire USERNAME
    smartpark mqtt list
    smartpark mqtt write DIR [--broker-dir PATH]    # passwd, acl, smartpark-auth.conf

``add-gateway``, ``add-bridge`` and ``rotate`` print the password once; only its
hash is stored (:mod:`api.mqtt.acl`), so a lost password is replaced with
``rotate``, never shown again. Nothing reaches the broker until ``write`` has
rewritten its files and the broker has reloaded them (``kill -HUP``). What each
account may do is :mod:`api.mqtt.acl`'s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from api.mqtt import acl as mqtt_acl
from smartpark.cli import command
from smartpark.errors import NotFound, UsageError
from smartpark.settings import load_settings
from storage import Storage
from storage.mqtt_accounts import AccountTaken, MqttAccountRow, MqttAccountStore

RELOAD_HINT = (
    "# the broker uses it once `smartpark mqtt write DIR` has run and the broker"
    " has reloaded its files (kill -HUP <mosquitto pid>)"
)


def _usage(exc: ValueError) -> UsageError:
    return UsageError(str(exc))


async def add_gateway(
    storage: Storage, enterprise: str, gateway: str
) -> tuple[MqttAccountRow, str]:
    """A new gateway account of an active enterprise and its password (shown once)."""
    try:
        mqtt_acl.gateway_username(enterprise, gateway)
    except ValueError as exc:
        raise _usage(exc) from None
    password = mqtt_acl.new_password()
    store = MqttAccountStore(storage)
    try:
        row = await store.create_gateway(
            enterprise, gateway, mqtt_acl.hash_password(password)
        )
    except AccountTaken as exc:
        raise UsageError(
            f"{exc}; use `smartpark mqtt rotate` for a new password"
        ) from None
    if row is None:
        raise NotFound(f"no active enterprise {enterprise!r} in the registry")
    return row, password


async def add_bridge(storage: Storage, name: str) -> tuple[MqttAccountRow, str]:
    """A new bridge account and its password (shown once)."""
    try:
        mqtt_acl.check_bridge_name(name)
    except ValueError as exc:
        raise _usage(exc) from None
    password = mqtt_acl.new_password()
    try:
        row = await MqttAccountStore(storage).create_bridge(
            name, mqtt_acl.hash_password(password)
        )
    except AccountTaken as exc:
        raise UsageError(
            f"{exc}; use `smartpark mqtt rotate` for a new password"
        ) from None
    return row, password


async def rotate(storage: Storage, username: str) -> tuple[MqttAccountRow, str]:
    """A new password for one active account (the old one stops working once the
    broker has reloaded the rewritten files)."""
    password = mqtt_acl.new_password()
    row = await MqttAccountStore(storage).set_password(
        username, mqtt_acl.hash_password(password)
    )
    if row is None:
        raise NotFound(f"no active MQTT account {username!r}")
    return row, password


async def retire(storage: Storage, username: str) -> MqttAccountRow:
    row = await MqttAccountStore(storage).retire(username)
    if row is None:
        raise NotFound(f"no active MQTT account {username!r}")
    return row


async def write(
    storage: Storage, directory: Path, *, broker_dir: Path | None = None
) -> mqtt_acl.Plan:
    """Write the broker's files from the active accounts; return what they carry."""
    p = mqtt_acl.plan(await MqttAccountStore(storage).grants())
    mqtt_acl.write_files(p, directory, broker_dir=broker_dir)
    return p


def _out(line: str) -> None:
    print(line, flush=True)


def _show_password(row: MqttAccountRow, password: str) -> None:
    _out(f"username: {row.username}")
    _out(f"password: {password}")
    _out("# shown once, only its hash is stored: give it to the client now")
    _out(RELOAD_HINT)


async def _run(args: argparse.Namespace) -> None:
    async with Storage(load_settings().database) as storage:
        await storage.require_migrated()
        if args.command == "add-gateway":
            _show_password(*await add_gateway(storage, args.enterprise, args.gateway))
        elif args.command == "add-bridge":
            _show_password(*await add_bridge(storage, args.name))
        elif args.command == "rotate":
            _show_password(*await rotate(storage, args.username))
        elif args.command == "retire":
            row = await retire(storage, args.username)
            _out(f"retired {row.username} at {row.retired_at}")
            _out(RELOAD_HINT)
        elif args.command == "list":
            for a in await MqttAccountStore(storage).all():
                state = f"retired {a.retired_at}" if a.retired_at else "active"
                _out(
                    f"{a.username}  {a.kind:<7} enterprise={a.enterprise or '-'}"
                    f"  {state}  password_set={a.password_set_at}"
                )
        else:
            p = await write(storage, args.dir, broker_dir=args.broker_dir)
            for s in p.skipped:
                print(f"left out {s.username}: {s.reason}", file=sys.stderr)
            _out(
                f"wrote {args.dir / mqtt_acl.PASSWD_FILE} ({len(p.accounts)} accounts,"
                f" {len(p.skipped)} left out), {args.dir / mqtt_acl.ACL_FILE},"
                f" {args.dir / mqtt_acl.CONF_FILE}"
            )
            _out("# reload the broker to use them: kill -HUP <mosquitto pid>")


@command("mqtt")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark mqtt",
        description="MQTT accounts and the broker's password and ACL files",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    gw = sub.add_parser("add-gateway", help="an account for an enterprise's gateway")
    gw.add_argument("enterprise", help="an active enterprise of the registry")
    gw.add_argument("gateway", help="the gateway's name within its enterprise")
    bridge = sub.add_parser("add-bridge", help="an account for a bridge")
    bridge.add_argument("name", nargs="?", default="bridge")
    rot = sub.add_parser("rotate", help="a new password for one account")
    rot.add_argument("username")
    ret = sub.add_parser("retire", help="remove an account from the files for good")
    ret.add_argument("username")
    sub.add_parser("list", help="every account (never a password)")
    wr = sub.add_parser("write", help="write passwd, acl and smartpark-auth.conf")
    wr.add_argument("dir", type=Path)
    wr.add_argument(
        "--broker-dir", type=Path, help="DIR as the broker sees it (default: DIR)"
    )
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0
