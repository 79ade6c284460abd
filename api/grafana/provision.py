"""Provisioning Grafana from the registry through its HTTP API (``grafana-client``).

Grafana OSS has no data-source permissions: every user of an organisation can
query every data source of it. Isolation is therefore one **organisation per
scope**, whose single data source logs in as that scope's database role
(:mod:`storage.grafana_roles`):

- ``smartpark enterprise <id>``: the enterprise's view and devices;
- ``smartpark park <id> operators``: the park overview and the views of the
  park's enterprises;
- ``smartpark regulators``: every dashboard.

In each organisation: the data source (uid ``smartpark-pg``), a folder
``smartpark`` holding the dashboards, and the folder's permissions set to the
full intended list (:data:`FOLDER_PERMISSIONS`: viewers and editors may view,
nobody but admins may edit generated dashboards), which also removes the
Editor-edit grant Grafana gives every new folder. Grafana replaces a folder's
whole permission list on every update, so the full list is always sent.

Idempotent: each object is read first and written only when it differs (data
sources compared on every field but the password, dashboards on their JSON, the
folder's permissions as a set); every write is reported as one line. The
password is sent when the data source is created or its fields changed: a role
whose password was changed behind provisioning's back (``ALTER ROLE``) is not
noticed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError
from grafana_foundation_sdk.cog.encoder import JSONEncoder

from api.grafana.dashboards import Built, Registry, all_dashboards, load_registry
from api.grafana.query import DATASOURCE_TYPE, DATASOURCE_UID
from smartpark.tenancy import Role, Scope
from storage import Storage
from storage.grafana_roles import GrafanaRole, GrafanaRoles

# connect(org_id): a grafana_client.GrafanaApi acting in that organisation (None:
# the credential's own); typed Any, as grafana-client ships no annotations
Connect = Callable[[int | None], Any]
FOLDER_UID = "smartpark"
FOLDER_TITLE = "smartpark"
DATASOURCE_NAME = "smartpark"
VIEW = 1
FOLDER_PERMISSIONS: tuple[dict[str, Any], ...] = (
    {"role": "Viewer", "permission": VIEW},
    {"role": "Editor", "permission": VIEW},
)


@dataclass(frozen=True, slots=True)
class Database:
    """Where Grafana reaches the platform's database (as Grafana sees it)."""

    host: str  # host:port
    name: str
    sslmode: str = "require"
    timescaledb: bool = False


@dataclass(frozen=True, slots=True)
class OrgPlan:
    name: str
    scope: Scope
    dashboards: tuple[Built, ...]


def organisations(reg: Registry, boards: dict[str, Built]) -> list[OrgPlan]:
    """Every organisation the registry calls for, with its dashboards."""
    plans = [OrgPlan("smartpark regulators", Scope(Role.REGULATOR),
                     tuple(boards[u] for u in sorted(boards)))]  # fmt: skip
    for park in reg.parks:
        uids = [f"sp-park-{park.id}"] + [
            f"{prefix}-{e.id}" for e in reg.enterprises if e.park == park.id
            for prefix in ("sp-ent", "sp-dev")
        ]  # fmt: skip
        plans.append(OrgPlan(f"smartpark park {park.id} operators",
                             Scope(Role.OPERATOR, park.id),
                             tuple(boards[u] for u in uids)))  # fmt: skip
    plans.extend(
        OrgPlan(
            f"smartpark enterprise {ent.id}", Scope(Role.ENTERPRISE, ent.park, ent.id),
            (boards[f"sp-ent-{ent.id}"], boards[f"sp-dev-{ent.id}"]),
        )
        for ent in reg.enterprises
    )  # fmt: skip
    return plans


def datasource_body(role: GrafanaRole, db: Database) -> dict[str, Any]:
    """The data source as Grafana's API takes it (without the password)."""
    return {
        "uid": DATASOURCE_UID,
        "name": DATASOURCE_NAME,
        "type": DATASOURCE_TYPE,
        "access": "proxy",
        "url": db.host,
        "user": role.role,
        "isDefault": True,
        "jsonData": {
            "database": db.name,
            "sslmode": db.sslmode,
            "postgresVersion": 1500,
            "timescaledb": db.timescaledb,
            "maxOpenConns": 10,
        },
    }


def dashboard_json(board: Built) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(board.model, cls=JSONEncoder))
    return out


def _missing(exc: GrafanaClientError) -> bool:
    return bool(exc.status_code == 404)


class Provisioner:
    """Applies plans through ``connect(org_id)``, a GrafanaApi acting in that
    organisation (None: the credential's own)."""

    def __init__(self, connect: Connect) -> None:
        self._connect = connect
        self.changes: list[str] = []

    def apply(
        self, plans: Sequence[tuple[OrgPlan, GrafanaRole]], db: Database
    ) -> list[str]:
        for plan, role in plans:
            org_id = self._org(plan.name)
            api = self._connect(org_id)
            where = plan.name
            self._datasource(api, where, datasource_body(role, db), role.password)
            self._folder(api, where)
            for board in plan.dashboards:
                self._dashboard(api, where, board)
        return self.changes

    def _org(self, name: str) -> int:
        api = self._connect(None)
        try:
            found = api.client.GET(f"/orgs/name/{quote(name, safe='')}")
            return int(found["id"])
        except GrafanaClientError as exc:
            if not _missing(exc):
                raise
        created = api.organization.create_organization({"name": name})
        self.changes.append(f"organisation created: {name}")
        return int(created["orgId"])

    def _datasource(self, api: Any, where: str, body: dict[str, Any],
                    password: str) -> None:  # fmt: skip
        with_secret = {**body, "secureJsonData": {"password": password}}
        try:
            current = api.datasource.get_datasource_by_uid(DATASOURCE_UID)
        except GrafanaClientError as exc:
            if not _missing(exc):
                raise
            api.datasource.create_datasource(with_secret)
            self.changes.append(f"data source created: {where}: {body['user']}")
            return
        if any(current.get(k) != v for k, v in body.items() if k != "jsonData") or any(
            (current.get("jsonData") or {}).get(k) != v
            for k, v in body["jsonData"].items()
        ):
            api.datasource.update_datasource_by_uid(DATASOURCE_UID, with_secret)
            self.changes.append(f"data source updated: {where}: {body['user']}")

    def _folder(self, api: Any, where: str) -> None:
        try:
            api.folder.get_folder(FOLDER_UID)
        except GrafanaClientError as exc:
            if not _missing(exc):
                raise
            api.folder.create_folder(FOLDER_TITLE, uid=FOLDER_UID)
            self.changes.append(f"folder created: {where}: {FOLDER_UID}")
        current = api.folder.get_folder_permissions(FOLDER_UID)
        grants = {_grant(p) for p in current}
        if grants != {_grant(p) for p in FOLDER_PERMISSIONS}:
            api.folder.update_folder_permissions(
                FOLDER_UID, {"items": [dict(p) for p in FOLDER_PERMISSIONS]}
            )
            self.changes.append(
                f"folder permissions set: {where}: {FOLDER_UID} (was {sorted(grants)})"
            )

    def _dashboard(self, api: Any, where: str, board: Built) -> None:
        wanted = dashboard_json(board)
        try:
            current = api.dashboard.get_dashboard(board.uid)
        except GrafanaClientError as exc:
            if not _missing(exc):
                raise
            current = None
        if current is not None:
            stored = {k: v for k, v in current["dashboard"].items()
                      if k not in ("id", "version")}  # fmt: skip
            if stored == wanted and current["meta"].get("folderUid") == FOLDER_UID:
                return
        api.dashboard.update_dashboard({
            "dashboard": wanted, "folderUid": FOLDER_UID, "overwrite": True,
            "message": "smartpark grafana provision",
        })  # fmt: skip
        verb = "created" if current is None else "updated"
        self.changes.append(f"dashboard {verb}: {where}: {board.uid}")


def _grant(p: dict[str, Any]) -> tuple[str, str, int]:
    """(kind, who, permission) of a permission item, whatever its other fields."""
    for kind in ("role", "teamId", "userId"):
        if p.get(kind) not in (None, "", 0):
            return kind, str(p[kind]), int(p["permission"])
    return "other", json.dumps(p, sort_keys=True), int(p.get("permission", 0))


def connector(url: str, credential: str | tuple[str, str]) -> Connect:
    """A ``connect(org_id)`` for :class:`Provisioner` over one Grafana URL."""

    def connect(org_id: int | None) -> Any:
        api = GrafanaApi.from_url(url, credential=credential)
        if org_id is not None:
            api.client.organization_id = org_id
            api.client.s.headers["X-Grafana-Org-Id"] = str(org_id)
        return api

    return connect


async def plans_with_roles(
    storage: Storage, roles: GrafanaRoles
) -> tuple[list[tuple[OrgPlan, GrafanaRole]], list[str]]:
    """Every organisation of the registry with its database role (created when
    missing), and a line per role created."""
    reg = await load_registry(storage.registry)
    changes: list[str] = []
    out: list[tuple[OrgPlan, GrafanaRole]] = []
    for plan in organisations(reg, all_dashboards(reg)):
        role, created = await roles.ensure(plan.scope)
        if created:
            changes.append(f"database role created: {role.role}")
        out.append((plan, role))
    return out, changes


async def provision(
    storage: Storage, roles: GrafanaRoles,
    connect: Connect, db: Database,
) -> list[str]:  # fmt: skip
    """Roles first (the database), then Grafana: every change made, one line each."""
    plans, changes = await plans_with_roles(storage, roles)
    grafana = Provisioner(connect)
    return changes + await asyncio.to_thread(grafana.apply, plans, db)
