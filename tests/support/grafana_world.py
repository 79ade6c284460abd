"""A small registered world with data, for the Grafana tests: two parks, three
enterprises, readings over two local days written through the storage write path,
rollups refreshed, alerts of every enterprise, and a Grafana role per scope.

Park p1 (Asia/Shanghai): enterprise e1 (purchased electricity ``meter-*``: meter-1
active_energy every 10 min with a meter replacement; aux-1, a submeter; coal-1;
cems-1 on stack-1 with so2/nox/particulate limits, water-1,
cast-1 production), enterprise e2 (e2-meter, e2-cems on stack-2, whose reference
O2 of 6 % makes its limits judged on so2_corrected etc.). Park p2
(Europe/London): enterprise e3 (e3-meter). Local days 2023-03-01 and 2023-03-02
of p1 are [2023-02-28 16:00, 2023-03-02 16:00) UTC.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from smartpark.tenancy import Role, Scope
from storage import Storage, TelemetryRow
from storage.grafana_roles import GrafanaRole, GrafanaRoles
from storage.secretbox import SecretBox
from tests.support.api import api_settings

START = datetime(2023, 2, 28, 16, tzinfo=UTC)  # p1 local 2023-03-01 00:00
END = START + timedelta(days=2)
STEP = timedelta(minutes=10)

ENTERPRISES = {"e1": "p1", "e2": "p1", "e3": "p2"}
LIMITS = {"so2": 35.0, "nox": 50.0, "particulate": 10.0}


@dataclass
class World:
    storage: Storage
    roles: GrafanaRoles
    dsn: str
    by_scope: dict[str, GrafanaRole]

    def connect(self, key: str) -> psycopg.Connection[Any]:
        """A psycopg connection logged in as the role of ``key`` (e1, e2, e3,
        op-p1, op-p2, regulators)."""
        role = self.by_scope[key]
        return psycopg.connect(
            self.dsn, user=role.role, password=role.password, autocommit=True
        )


def energy_rows(
    ent: str, device: str, park: str, per_step: float
) -> list[TelemetryRow]:
    """A counter rising ``per_step`` kWh every 10 min from 1000 (one reading
    before the range); replaced by a new meter from 0 at START + 30 h (e1 only)."""
    out = []
    value = 1000.0
    t = START - STEP
    seq = 0
    while t < END:
        reset = None
        if ent == "e1" and t == START + timedelta(hours=30):
            value, reset = 7.0, "replacement"
        out.append(TelemetryRow(t, park, ent, device, "active_energy", value, "N",
                                seq, reset))  # fmt: skip
        seq += 1
        value += per_step
        t += STEP
    return out


def gauge_rows(ent: str, device: str, park: str, metric: str,
               base: float) -> list[TelemetryRow]:  # fmt: skip
    """A reading every 10 min: ``base`` plus the hour of the day (UTC)."""
    out = []
    t = START
    seq = 0
    while t < END:
        out.append(TelemetryRow(t, park, ent, device, metric, base + t.hour, "N", seq))
        seq += 1
        t += STEP
    return out


def world_rows() -> list[TelemetryRow]:
    rows = [
        *energy_rows("e1", "meter-1", "p1", 50.0),
        *energy_rows("e1", "aux-1", "p1", 1000.0),  # a submeter: not purchased
        *energy_rows("e1", "coal-1", "p1", 0.01),
        *gauge_rows("e1", "cems-1", "p1", "so2", 10.0),
        *gauge_rows("e1", "cems-1", "p1", "nox", 20.0),
        *gauge_rows("e1", "cems-1", "p1", "particulate", 1.0),
        *energy_rows("e1", "water-1", "p1", 2.0),
        *energy_rows("e1", "cast-1", "p1", 0.5),
        *energy_rows("e2", "e2-meter", "p1", 7.0),
        *gauge_rows("e2", "e2-cems", "p1", "so2", 100.0),
        *gauge_rows("e2", "e2-cems", "p1", "so2_corrected", 200.0),
        *energy_rows("e3", "e3-meter", "p2", 3.0),
    ]
    # production and water are counters of their own metric
    return [
        r._replace(metric="water_volume") if r.device == "water-1"
        else r._replace(metric="coal_mass") if r.device == "coal-1"
        else r._replace(metric="production_mass") if r.device == "cast-1"
        else r
        for r in rows
    ]  # fmt: skip


async def register(storage: Storage) -> None:
    s = storage.schema

    def t(name: str) -> sql.Identifier:
        return sql.Identifier(s, name)

    async with storage.connection() as conn:
        for park, tz in (("p1", "Asia/Shanghai"), ("p2", "Europe/London")):
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, name, timezone) VALUES (%s, %s, %s)")
                .format(t("parks")), (park, park.upper(), tz),
            )  # fmt: skip
        for ent, park in ENTERPRISES.items():
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, park, name, energy_quota_tce,"
                        " product, electricity_meters)"
                        " VALUES (%s, %s, %s, %s, %s, %s)")
                .format(t("enterprises")),
                (ent, park, f"Enterprise {ent}", '{"day": 2.5}',
                 '{"name": "aluminium liquid", "metric": "production_mass"}'
                 if ent == "e1" else None,
                 ["meter-*"] if ent == "e1" else None),
            )  # fmt: skip
        for outlet, ent in (("stack-1", "e1"), ("stack-2", "e2"), ("stack-3", "e3")):
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, park, enterprise, kind, name, limits,"
                        " reference_o2) VALUES (%s, %s, %s, 'stack', %s, %s, %s)")
                .format(t("outlets")),
                (outlet, ENTERPRISES[ent], ent, outlet, Jsonb(LIMITS),
                 6.0 if outlet == "stack-2" else None),
            )  # fmt: skip
        devices: list[tuple[str, str, str | None, list[str]]] = [
            ("meter-1", "e1", None, ["active_energy"]),
            ("aux-1", "e1", None, ["active_energy"]),
            ("coal-1", "e1", None, ["coal_mass"]),
            ("cems-1", "e1", "stack-1", ["so2", "nox", "particulate"]),
            ("water-1", "e1", None, ["water_volume"]),
            ("cast-1", "e1", None, ["production_mass"]),
            ("e2-meter", "e2", None, ["active_energy"]),
            ("e2-cems", "e2", "stack-2", ["so2", "so2_corrected"]),
            ("e3-meter", "e3", None, ["active_energy"]),
            ("e1-silent", "e1", None, ["active_energy"]),
        ]
        for dev, ent, on_outlet, metrics in devices:
            await conn.execute(
                sql.SQL("INSERT INTO {} (id, park, enterprise, outlet, protocol,"
                        " interval_s, metrics) VALUES (%s, %s, %s, %s, 'modbus_tcp',"
                        " 600, %s)").format(t("devices")),
                (dev, ENTERPRISES[ent], ent, on_outlet, metrics),
            )  # fmt: skip
        for i, (ent, severity, status) in enumerate((
            ("e1", "critical", "open"), ("e1", "warning", "open"),
            ("e1", "warning", "resolved"), ("e2", "critical", "open"),
            ("e3", "warning", "open"),
        )):  # fmt: skip
            opened = START + timedelta(hours=3 + i)
            await conn.execute(
                sql.SQL("INSERT INTO {} (alert_id, pack, rule_id, rule_version,"
                        " severity, park, enterprise, device, metric, status,"
                        " opened_at, resolved_at, last_event_id) VALUES (%s, 'pack',"
                        " %s, '1', %s, %s, %s, %s, 'so2', %s, %s, %s, %s)")
                .format(t("alerts")),
                (f"a{i}", f"rule-{i}", severity, ENTERPRISES[ent], ent,
                 {"e1": "cems-1", "e2": "e2-cems", "e3": "e3-meter"}[ent], status,
                 opened, opened + timedelta(hours=1) if status == "resolved" else None,
                 f"ev{i}"),
            )  # fmt: skip


SCOPES = {
    "e1": Scope(Role.ENTERPRISE, "p1", "e1"),
    "e2": Scope(Role.ENTERPRISE, "p1", "e2"),
    "e3": Scope(Role.ENTERPRISE, "p2", "e3"),
    "op-p1": Scope(Role.OPERATOR, "p1"),
    "op-p2": Scope(Role.OPERATOR, "p2"),
    "regulators": Scope(Role.REGULATOR),
}


@asynccontextmanager
async def grafana_world(pg_dsn: str, schema: str) -> AsyncIterator[World]:
    """The world in ``schema``, its roles dropped on the way out."""
    settings = api_settings(pg_dsn, schema)
    box = SecretBox.from_settings(settings.webhooks)
    async with Storage(settings.database, pool_size=2) as storage:
        await storage.migrate()
        await register(storage)
        await storage.telemetry.write(world_rows())
        await storage.telemetry.refresh_rollups()
        roles = GrafanaRoles(storage, box)
        try:
            by_scope = {k: (await roles.ensure(s))[0] for k, s in SCOPES.items()}
            yield World(storage, roles, pg_dsn, by_scope)
        finally:
            await roles.drop_all()


def scram_matches(verifier: str, password: str) -> bool:
    """Whether ``password`` is the one PostgreSQL's SCRAM-SHA-256 ``verifier``
    (pg_authid.rolpassword) was made from (RFC 5802 / RFC 7677)."""
    method, rest = verifier.split("$", 1)
    if method != "SCRAM-SHA-256":
        return False
    iter_salt, keys = rest.split("$")
    iterations, salt = iter_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac(
        "sha256", password.encode(), base64.b64decode(salt), int(iterations)
    )
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key
