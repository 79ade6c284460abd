"""A local HTTP server that answers the part of Grafana's HTTP API provisioning
uses, as Grafana's documentation describes it, keeps the state those calls make
(organisations, data sources, folders with their permissions, dashboards), and
records every call.

Documented behaviours kept: organisations by name (``GET /api/orgs/name/:name``,
404 when absent); everything else is in the organisation of the
``X-Grafana-Org-Id`` header (default 1); a new folder gets Grafana's default
grants (Editor: edit, Viewer: view); ``POST /api/folders/:uid/permissions``
replaces the folder's whole list; ``POST /api/dashboards/db`` without
``overwrite`` refuses an existing uid (412); a dashboard's version counts up on
every save; secure JSON data is never returned, only ``secureJsonFields``.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EDIT, VIEW = 2, 1


@dataclass
class Call:
    method: str
    path: str
    org: int
    body: Any


@dataclass
class Org:
    id: int
    name: str
    datasources: dict[str, dict[str, Any]] = field(default_factory=dict)
    secure: dict[str, dict[str, Any]] = field(default_factory=dict)
    folders: dict[str, dict[str, Any]] = field(default_factory=dict)
    permissions: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dashboards: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> saved


class FakeGrafana:
    """The state and the call log; :meth:`start` serves it on a free port."""

    def __init__(self) -> None:
        self.orgs: dict[int, Org] = {1: Org(1, "Main Org.")}
        self.calls: list[Call] = []
        self._lock = threading.Lock()
        self._next_id = 100
        self._server: ThreadingHTTPServer | None = None

    # -- serving ----------------------------------------------------------------

    def start(self) -> str:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                org = int(self.headers.get("X-Grafana-Org-Id") or 1)
                status, answer = fake.handle(self.command, self.path, org, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def do_PUT(self) -> None:
                self._serve()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- the API ----------------------------------------------------------------

    def _id(self) -> int:
        self._next_id += 1
        return self._next_id

    def handle(self, method: str, path: str, org_id: int,
               body: Any) -> tuple[int, Any]:  # fmt: skip
        with self._lock:
            self.calls.append(Call(method, path, org_id, body))
            org = self.orgs.get(org_id)
            if org is None:
                return 401, {"message": "User does not belong to the organization"}
            for pattern, verb, fn in self._routes():
                m = re.fullmatch(pattern, path.split("?", maxsplit=1)[0])
                if m and verb == method:
                    result: tuple[int, Any] = fn(org, body, *m.groups())
                    return result
            return 404, {"message": "Not found"}

    def _routes(self) -> list[tuple[str, str, Any]]:
        return [
            (
                r"/api/health",
                "GET",
                lambda o, b: (200, {"database": "ok", "version": "11.6.0"}),
            ),
            (r"/api/orgs/name/([^/]+)", "GET", self._org_by_name),
            (r"/api/orgs", "POST", self._create_org),
            (r"/api/datasources/uid/([^/]+)", "GET", self._get_ds),
            (r"/api/datasources", "POST", self._create_ds),
            (r"/api/datasources/uid/([^/]+)", "PUT", self._update_ds),
            (r"/api/folders/([^/]+)", "GET", self._get_folder),
            (r"/api/folders", "POST", self._create_folder),
            (r"/api/folders/([^/]+)/permissions", "GET", self._get_perms),
            (r"/api/folders/([^/]+)/permissions", "POST", self._set_perms),
            (r"/api/dashboards/uid/([^/]+)", "GET", self._get_dash),
            (r"/api/dashboards/db", "POST", self._save_dash),
        ]

    def _org_by_name(self, org: Org, body: Any, name: str) -> tuple[int, Any]:
        from urllib.parse import unquote

        for o in self.orgs.values():
            if o.name == unquote(name):
                return 200, {"id": o.id, "name": o.name, "address": {}}
        return 404, {"message": "Organization not found"}

    def _create_org(self, org: Org, body: Any) -> tuple[int, Any]:
        if any(o.name == body["name"] for o in self.orgs.values()):
            return 409, {"message": "Organization name taken"}
        new = Org(self._id(), body["name"])
        self.orgs[new.id] = new
        return 200, {"orgId": new.id, "message": "Organization created"}

    def _get_ds(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        ds = org.datasources.get(uid)
        if ds is None:
            return 404, {"message": "Data source not found"}
        return 200, ds

    def _store_ds(self, org: Org, body: dict[str, Any], ds_id: int) -> dict[str, Any]:
        secure = body.get("secureJsonData") or {}
        kept = org.secure.setdefault(body["uid"], {})
        kept.update(secure)
        ds = {k: v for k, v in body.items() if k != "secureJsonData"}
        ds.update(id=ds_id, orgId=org.id, readOnly=False, version=1,
                  secureJsonFields=dict.fromkeys(kept, True))  # fmt: skip
        org.datasources[body["uid"]] = ds
        return ds

    def _create_ds(self, org: Org, body: Any) -> tuple[int, Any]:
        if body.get("uid") in org.datasources or any(
            d["name"] == body["name"] for d in org.datasources.values()
        ):
            return 409, {"message": "data source with the same name already exists"}
        ds = self._store_ds(org, body, self._id())
        return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource added",
                     "name": ds["name"]}  # fmt: skip

    def _update_ds(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        old = org.datasources.get(uid)
        if old is None:
            return 404, {"message": "Data source not found"}
        ds = self._store_ds(org, {**body, "uid": uid}, old["id"])
        return 200, {"datasource": ds, "id": ds["id"], "message": "Datasource updated",
                     "name": ds["name"]}  # fmt: skip

    def _get_folder(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        f = org.folders.get(uid)
        return (200, f) if f else (404, {"message": "folder not found"})

    def _create_folder(self, org: Org, body: Any) -> tuple[int, Any]:
        uid = body.get("uid") or f"f{self._id()}"
        if uid in org.folders:
            return 409, {"message": "a folder with the same uid already exists"}
        f = {"id": self._id(), "uid": uid, "title": body["title"], "version": 1}
        org.folders[uid] = f
        # Grafana's defaults for a new folder
        org.permissions[uid] = [
            {"role": "Editor", "permission": EDIT, "permissionName": "Edit"},
            {"role": "Viewer", "permission": VIEW, "permissionName": "View"},
        ]
        return 200, f

    def _get_perms(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        if uid not in org.folders:
            return 404, {"message": "folder not found"}
        return 200, [{**p, "uid": uid, "isFolder": True} for p in org.permissions[uid]]

    def _set_perms(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        if uid not in org.folders:
            return 404, {"message": "folder not found"}
        org.permissions[uid] = [dict(item) for item in body["items"]]
        return 200, {"message": "Folder permissions updated"}

    def _get_dash(self, org: Org, body: Any, uid: str) -> tuple[int, Any]:
        saved = org.dashboards.get(uid)
        if saved is None:
            return 404, {"message": "Dashboard not found"}
        return 200, {"dashboard": saved["dashboard"],
                     "meta": {"folderUid": saved["folderUid"], "version":
                              saved["dashboard"]["version"]}}  # fmt: skip

    def _save_dash(self, org: Org, body: Any) -> tuple[int, Any]:
        dash = dict(body["dashboard"])
        uid = dash["uid"]
        old = org.dashboards.get(uid)
        if old is not None and not body.get("overwrite"):
            return 412, {"message": "A dashboard with the same uid already exists",
                         "status": "name-exists"}  # fmt: skip
        folder = body.get("folderUid", "")
        if folder and folder not in org.folders:
            return 400, {"message": "folder not found"}
        dash["id"] = old["dashboard"]["id"] if old else self._id()
        dash["version"] = old["dashboard"]["version"] + 1 if old else 1
        org.dashboards[uid] = {"dashboard": dash, "folderUid": folder}
        return 200, {"id": dash["id"], "uid": uid, "status": "success",
                     "version": dash["version"], "url": f"/d/{uid}/x"}  # fmt: skip

    # -- for assertions --------------------------------------------------------

    def changes(self) -> list[Call]:
        """The calls that change state."""
        return [c for c in self.calls if c.method != "GET"]

    def org_named(self, name: str) -> Org:
        [org] = [o for o in self.orgs.values() if o.name == name]
        return org
