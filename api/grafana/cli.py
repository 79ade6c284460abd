"""``smartpark grafana``: Grafana organisations, data sources and dashboards.

    smartpark grafana provision --url URL (--token TOKEN | --user USER)
        --db-host HOST:PORT [--db-name NAME] [--sslmode MODE] [--timescaledb]
    smartpark grafana export DIR --db-host HOST:PORT [--db-name NAME] ...
    smartpark grafana render --park PARK --out FILE.png [--from T] [--to T]

Both create the per-scope database roles that are missing (the platform's
database user needs CREATEROLE). ``provision`` then creates or updates, through
Grafana's HTTP API, one organisation per scope with its data source, folder,
folder permissions and dashboards, and prints one line per change (nothing when
Grafana is already as the registry says). Creating organisations needs a Grafana
server admin: ``--user`` (password from ``GRAFANA_PASSWORD``) for basic
authentication; a service account ``--token`` only acts in its own organisation.
``--db-host`` is the database as Grafana reaches it. ``render`` draws the park
overview with matplotlib from its own panel queries, run as the park operators'
role (:mod:`api.grafana.render`); the range defaults to the dashboard's, the last
two days.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

from api.grafana.export import export
from api.grafana.macros import TimeRange
from api.grafana.provision import Database, connector, plans_with_roles, provision
from api.grafana.render import default_range, render_park_overview
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
    box = SecretBox.from_settings(settings.webhooks)
    if args.command == "render":
        await _render(args, settings, box)
        return
    db = _database(args, settings)
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


def _time(flag: str, text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{flag} {text!r}: not an ISO 8601 time") from None
    if t.tzinfo is None:
        raise UsageError(f"{flag} {text!r}: give the offset (e.g. +08:00 or Z)")
    return t


async def _render(args: argparse.Namespace, settings: Settings, box: SecretBox) -> None:
    rng = default_range(datetime.now(UTC))
    start = _time("--from", args.start) or rng.start
    end = _time("--to", args.end) or rng.end
    if start >= end:
        raise UsageError(
            f"--from {start.isoformat()} is not before --to {end.isoformat()}"
        )
    async with Storage(settings.database) as storage:
        await storage.require_migrated()
        rendered = await render_park_overview(
            storage, settings.database.dsn.get_secret_value(), box,
            park=args.park, rng=TimeRange(start, end), out=args.out,
        )  # fmt: skip
    print(f"wrote {args.out}: {len(rendered.results)} panels of sp-park-{args.park}")


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
    ren = sub.add_parser("render", help="draw the park overview to a PNG")
    ren.add_argument("--park", required=True)
    ren.add_argument("--out", required=True, type=Path, help="the PNG to write")
    ren.add_argument("--from", dest="start", help="ISO 8601 (default: now - 2 days)")
    ren.add_argument("--to", dest="end", help="ISO 8601 (default: now)")
    args = parser.parse_args(argv)
    asyncio.run(_run(args))
    return 0
