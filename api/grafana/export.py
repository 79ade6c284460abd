"""``smartpark grafana export DIR``: the dashboards and Grafana's file
provisioning for them, for a Grafana provisioned from files (a container).

Written under DIR:

- ``dashboards/<org-slug>/<uid>.json``: each organisation's dashboards;
- ``provisioning/datasources/smartpark.yaml``: one data source per organisation
  (``orgId`` in :func:`~api.grafana.provision.organisations`' order, from 2:
  file provisioning cannot create organisations, so they must exist with these
  ids; create them in this order, or run ``smartpark grafana provision`` once);
  its password is ``$SMARTPARK_GRAFANA_PW_<n>``, which Grafana expands from its
  environment;
- ``provisioning/dashboards/smartpark.yaml``: one provider per organisation,
  folder ``smartpark``, editing disabled;
- ``grafana.env``: the ``SMARTPARK_GRAFANA_PW_<n>`` passwords, mode 0600 (a
  secret: give it to Grafana's container as an env file, keep it out of
  version control).

File provisioning has no folder permissions: a Grafana provisioned from files
keeps its default folder grants, which in one organisation per scope widen
nothing beyond that organisation (the data source's role is the boundary).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from api.grafana.provision import (
    DATASOURCE_NAME,
    FOLDER_TITLE,
    Database,
    OrgPlan,
    dashboard_json,
    datasource_body,
)
from storage.grafana_roles import GrafanaRole

CONTAINER_DASHBOARDS = "/var/lib/grafana/smartpark-dashboards"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _yaml(doc: Any) -> str:
    # JSON is YAML: no YAML writer needed, and no quoting surprises
    return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def export(
    directory: Path, plans: Sequence[tuple[OrgPlan, GrafanaRole]], db: Database,
    dashboards_path: str = CONTAINER_DASHBOARDS,
) -> list[Path]:  # fmt: skip
    """Write the files; the paths written."""
    written: list[Path] = []
    datasources: list[dict[str, Any]] = []
    providers: list[dict[str, Any]] = []
    env: list[str] = []
    for n, (plan, role) in enumerate(plans, start=2):
        folder = directory / "dashboards" / slug(plan.name)
        folder.mkdir(parents=True, exist_ok=True)
        for board in plan.dashboards:
            path = folder / f"{board.uid}.json"
            path.write_text(json.dumps(dashboard_json(board), indent=2) + "\n")
            written.append(path)
        body = datasource_body(role, db)
        body["orgId"] = n
        body["editable"] = False
        body["secureJsonData"] = {"password": f"$SMARTPARK_GRAFANA_PW_{n}"}
        datasources.append(body)
        env.append(f"SMARTPARK_GRAFANA_PW_{n}={role.password}")
        providers.append({
            "name": f"{DATASOURCE_NAME}-{slug(plan.name)}", "orgId": n,
            "folder": FOLDER_TITLE, "folderUid": "smartpark", "type": "file",
            "disableDeletion": True, "allowUiUpdates": False,
            "options": {"path": f"{dashboards_path}/{slug(plan.name)}"},
        })  # fmt: skip
    prov = directory / "provisioning"
    for sub, doc in (
        ("datasources", {"apiVersion": 1, "datasources": datasources}),
        ("dashboards", {"apiVersion": 1, "providers": providers}),
    ):
        path = prov / sub / "smartpark.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_yaml(doc))
        written.append(path)
    secrets = directory / "grafana.env"
    fd = os.open(secrets, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write("\n".join(env) + "\n")
    os.chmod(secrets, 0o600)
    written.append(secrets)
    return written
