"""``smartpark api`` serves the platform API; ``smartpark keys`` manages its keys.

    smartpark api [--host H] [--port P]       # settings: SMARTPARK_API__*, database
    smartpark keys create --role operator|enterprise|regulator --name NAME
                          [--park P] [--enterprise E] [--expires-days N]
    smartpark keys list
    smartpark keys revoke KEY_ID

``keys create`` prints the key once (``spk_<id>_<secret>``); only its keyed hash is
stored, so it cannot be shown again: create a new one and revoke the old one.
"""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

from smartpark.apikeys import new_key, parse_key, secret_hash
from smartpark.cli import command
from smartpark.errors import ConfigError, NotFound, UsageError
from smartpark.settings import Settings, load_settings
from smartpark.tenancy import Role, Scope
from storage import Storage


def _out(line: str) -> None:
    print(line, flush=True)


def _pepper(settings: Settings) -> bytes:
    if settings.api.key_pepper is None:
        raise ConfigError(
            "SMARTPARK_API__KEY_PEPPER: required (a random secret of 32+ characters)"
        )
    return settings.api.key_pepper.get_secret_value().encode()


async def create_key(
    storage: Storage,
    pepper: bytes,
    *,
    scope: Scope,
    name: str,
    expires_at: datetime | None = None,
) -> str:
    """Store a new key for ``scope``; return the full key (shown once)."""
    key_id, full = new_key()
    parsed = parse_key(full)
    assert parsed is not None
    await storage.keys.create(
        key_id, secret_hash(parsed[1], pepper), name=name, scope=scope,
        expires_at=expires_at,
    )  # fmt: skip
    return full


async def _keys(settings: Settings, args: argparse.Namespace) -> None:
    async with Storage(settings.database) as storage:
        await storage.require_migrated()
        if args.command == "create":
            try:
                scope = Scope(Role(args.role), args.park, args.enterprise)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            expires = None
            if args.expires_days is not None:
                expires = datetime.now(UTC) + timedelta(days=args.expires_days)
            full = await create_key(
                storage, _pepper(settings), scope=scope, name=args.name,
                expires_at=expires,
            )  # fmt: skip
            _out(full)
            _out(f"# {scope.describe()}; shown once: store it now")
        elif args.command == "list":
            for k in await storage.keys.all():
                state = "revoked" if k.revoked_at else "active"
                _out(
                    f"{k.id}  {k.role:<10} park={k.park or '*'} "
                    f"enterprise={k.enterprise or '*'}  {state}  name={k.name!r} "
                    f"expires={k.expires_at or '-'} last_used={k.last_used_at or '-'}"
                )
        else:
            key_id = args.key_id.removeprefix("spk_").split("_")[0]
            row = await storage.keys.revoke(key_id)
            if row is None:
                raise NotFound(f"no key {key_id!r}")
            _out(f"revoked {row.id} at {row.revoked_at}")


@command("keys")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark keys", description="API keys: create | list | revoke"
    )
    sub = parser.add_subparsers(dest="command", required=True)
    create = sub.add_parser("create", help="a new key, printed once")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--name", required=True, help="who or what holds it")
    create.add_argument("--park", help="operator: one park (default every park)")
    create.add_argument("--enterprise", help="enterprise keys: the enterprise")
    create.add_argument("--expires-days", type=int, help="default: no expiry")
    sub.add_parser("list", help="every key (never the secret)")
    revoke = sub.add_parser("revoke", help="revoke a key by id (or the key itself)")
    revoke.add_argument("key_id")
    args = parser.parse_args(argv)
    asyncio.run(_keys(load_settings(), args))
    return 0


@command("api")
def api_main(argv: list[str] | None = None) -> int:
    import uvicorn

    from api.app import create_app

    parser = argparse.ArgumentParser(
        prog="smartpark api", description="serve the platform API"
    )
    settings = load_settings()
    parser.add_argument("--host", default=settings.api.host)
    parser.add_argument("--port", type=int, default=settings.api.port)
    args = parser.parse_args(argv)
    app = create_app(settings)
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
