"""``smartpark grafana``: Grafana organisations, data sources and dashboards.

    smartpark grafana provision --url URL (--token TOKEN | --user USER)
        --db-host HOST:PORT [--db-name NAME] [--sslmode MODE] [--timescaledb]
    smartpark grafana export DIR --db-host HOST:PORT [--db-name NAME] ...

Both create the per-scope database roles that are missing (the platform's
database user needs CREATEROLE). ``provision`` then creates or updates, through
Grafana's HTTP API, one organisation per scope with its data source, folder,
folder permissions and dashboards, and prints one line per change (nothing when
Grafana is already as the registry says). Creating organisations needs a Grafana
server admin: ``--user`` (password from ``GRAFANA_PASSWORD``) for basic
authentication; a service account ``--token`` only acts in its own organisation.
``--db-host`` is the database as Grafana reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path
from urllib.parse import urlparse

from api.grafana.export import export
from api.grafana.provision import Database, connector, plans_with_roles, provision
from smartpark.cli import command
from smartpark.errors import UsageError
from smartpark.settings import Settings, load_settings
from storage import Storage
from storage.grafana_roles import GrafanaRoles
from storage.secretbox import SecretBox


def _database(args: argparse.Namespace, settings: Settings) -> Database:
    name = args.db_name
    if name is None:
        dsn = settings.database.dsn.get_secret_value()
        name = urlparse(dsn).path.lstrip("/") if "://" in dsn else ""
        if not name:
            raise UsageError("--db-name: required when the DSN names no database")
    return Database(args.db_host, name, args.sslmode, args.timescaledb)


def _credential(args: argparse.Namespace) -> str | tuple[str, str]:
    if args.token:
        return str(args.token)
    password = os.environ.get("GRAFANA_PASSWORD")
    if not password:
        raise UsageError("GRAFANA_PASSWORD: required with --user")
    return str(args.user), password


async def _run(args: argparse.Namespace) -> None:
    settings = load_settings()
    db = _database(args, settings)
    box = SecretBox.from_settings(settings.webhooks)
    async with Storage(settings.database) as storage:
        await storage.require_migrated()
        roles = GrafanaRoles(storage, box)
        if args.command == "provision":
            changes = await provision(
                storage, roles, connector(args.url, _credential(args)), db
            )
            for line in changes:
                print(line)
            return
        plans, changes = await plans_with_roles(storage, roles)
        for line in changes:
            print(line)
        for path in export(args.dir, plans, db):
            print(f"wrote {path}")


@command("grafana")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smartpark grafana",
        description="Grafana organisations, data sources and dashboards",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    prov = sub.add_parser("provision", help="create or update through the HTTP API")
    prov.add_argument("--url", required=True, help="Grafana's URL")
    who = prov.add_mutually_exclusive_group(required=True)
    who.add_argument("--token", help="a service account token")
    who.add_argument("--user", help="a server admin (password: GRAFANA_PASSWORD)")
    exp = sub.add_parser("export", help="dashboards and file provisioning")
    exp.add_argument("dir", type=Path)
    for p in (prov, exp):
        p.add_argument("--db-host", required=True, help="HOST:PORT as Grafana sees it")
        p.add_argument("--db-name", help="default: the DSN's database")
        p.add_argument(
            "--sslmode",
            default="require",
            choices=["disable", "require", "verify-ca", "verify-full"],
        )
        p.add_argument("--timescaledb", action="store_true")
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0
