"""The registry (``parks``, ``enterprises``, ``outlets``, ``devices``; migration 0008).

Contract: every method takes the caller's :class:`~smartpark.tenancy.Scope` and
applies it in SQL. A row outside the scope is indistinguishable from a missing
one: reads return None (or leave it out of a list), writes return None. Scope
rules:

- a regulator reads everything and writes nothing;
- an operator of one park reads and writes within it; an operator of every park
  also creates parks;
- an enterprise reads its own enterprise, outlets and devices and its park (name
  and time zone), and writes nothing.

Rows are retired (``retired_at``), never deleted; a retired row stays readable by
id and is listed with ``retired=True``. Writes raise :class:`RegistryConflict`
for a taken id or MN, a retired row or a parent that would be left with active
children; validation of values (ids, time zones, metrics) is the caller's.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from smartpark.tenancy import Role, Scope
from storage.base import Conn, Database, storage_errors, table


class RegistryConflict(Exception):
    """A write that contradicts the registry's state; ``field`` names the cause."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ParentNotFound(Exception):
    """A row a write names (an outlet of a device) is not an active row of the
    same enterprise within the scope; ``what`` says which."""

    def __init__(self, what: str) -> None:
        super().__init__(f"{what} not found")
        self.what = what


@dataclass(frozen=True, slots=True)
class ParkRow:
    id: str
    name: str
    timezone: str
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    # region of the grid CO2 factor (migration 0011; smartpark.kpi); None: default
    grid_region: str | None = None


@dataclass(frozen=True, slots=True)
class EnterpriseRow:
    id: str
    park: str
    name: str
    industry: str | None
    permits: list[str]
    energy_quota_tce: dict[str, float]
    water_quota_m3: dict[str, float]
    quotas_from: date | None
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    # KPI configuration (migration 0011; storage.kpis): the product and the
    # purchased electricity meters (None: every active_energy device)
    product: dict[str, Any] | None = None
    electricity_meters: list[str] | None = None


@dataclass(frozen=True, slots=True)
class OutletRow:
    id: str
    park: str
    enterprise: str
    kind: str
    name: str
    reference_o2: float | None
    limits: dict[str, float]
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None


@dataclass(frozen=True, slots=True)
class DeviceRow:
    id: str
    park: str
    enterprise: str
    outlet: str | None
    protocol: str
    interval_s: int
    metrics: list[str]
    mn: str | None
    created_at: datetime
    updated_at: datetime
    retired_at: datetime | None
    # HJ 212 data type -> reporting interval (s); {}: real-time every interval_s
    # (migration 0012; smartpark.coverage.reported_types)
    data_types: dict[str, int] = field(default_factory=dict)


R = TypeVar("R", ParkRow, EnterpriseRow, OutletRow, DeviceRow)


@dataclass(frozen=True, slots=True)
class _Entity(Generic[R]):
    table: str
    what: str
    row: type[R]
    park_column: str
    enterprise_column: str | None
    writable: frozenset[str]  # columns a create or an update may set
    json_columns: frozenset[str] = frozenset()

    @property
    def columns(self) -> list[str]:
        return list(self.row.__dataclass_fields__)


_STAMPS = ("created_at", "updated_at", "retired_at")
PARKS = _Entity(
    "parks", "park", ParkRow, "id", None,
    frozenset({"name", "timezone", "grid_region"}),
)  # fmt: skip
ENTERPRISES = _Entity(
    "enterprises", "enterprise", EnterpriseRow, "park", "id",
    frozenset({"name", "industry", "permits", "energy_quota_tce", "water_quota_m3",
               "quotas_from", "product", "electricity_meters"}),
    frozenset({"energy_quota_tce", "water_quota_m3", "product"}),
)  # fmt: skip
OUTLETS = _Entity(
    "outlets", "outlet", OutletRow, "park", "enterprise",
    frozenset({"kind", "name", "reference_o2", "limits"}), frozenset({"limits"}),
)  # fmt: skip
DEVICES = _Entity(
    "devices", "device", DeviceRow, "park", "enterprise",
    frozenset({"outlet", "protocol", "interval_s", "metrics", "mn", "data_types"}),
    frozenset({"data_types"}),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ListFilters:
    park: str | None = None
    enterprise: str | None = None
    outlet: str | None = None
    protocol: str | None = None
    retired: bool = False  # False: active rows only; True: retired rows only


def _refused(exc: psycopg.errors.IntegrityError) -> str:
    # A check the API should have made first; still a 409, never a 503.
    return f"refused by the registry: {exc.diag.message_primary}"


def _is_writer(scope: Scope) -> bool:
    return scope.role is Role.OPERATOR


class RegistryStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._db.clock() / 1000, UTC)

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    # -- generic --------------------------------------------------------------------

    def _scope_where(
        self, entity: _Entity[Any], scope: Scope
    ) -> tuple[list[sql.Composable], list[Any]]:
        conds: list[sql.Composable] = []
        params: list[Any] = []
        if scope.park is not None:
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(entity.park_column)))
            params.append(scope.park)
        if scope.enterprise is not None and entity.enterprise_column is not None:
            conds.append(
                sql.SQL("{} = %s").format(sql.Identifier(entity.enterprise_column))
            )
            params.append(scope.enterprise)
        return conds, params

    def _select(self, entity: _Entity[Any]) -> sql.Composable:
        return sql.SQL("SELECT {} FROM {}").format(
            sql.SQL(", ").join(map(sql.Identifier, entity.columns)),
            self._t(entity.table),
        )

    def _returning(self, entity: _Entity[Any]) -> sql.Composable:
        return sql.SQL(" RETURNING {}").format(
            sql.SQL(", ").join(map(sql.Identifier, entity.columns))
        )

    def _value(self, entity: _Entity[Any], column: str, value: Any) -> Any:
        return Jsonb(value) if column in entity.json_columns else value

    async def _get(
        self, conn: Conn, entity: _Entity[R], scope: Scope, id_: str, *,
        active: bool = False, lock: bool = False,
    ) -> R | None:  # fmt: skip
        conds, params = self._scope_where(entity, scope)
        conds.append(sql.SQL("id = %s"))
        params.append(id_)
        if active:
            conds.append(sql.SQL("retired_at IS NULL"))
        query = sql.SQL("{} WHERE {}{}").format(
            self._select(entity), sql.SQL(" AND ").join(conds),
            sql.SQL(" FOR UPDATE" if lock else ""),
        )  # fmt: skip
        async with conn.cursor(row_factory=class_row(entity.row)) as cur:
            await cur.execute(query, params)
            return await cur.fetchone()

    async def get(self, entity: _Entity[R], scope: Scope, id_: str) -> R | None:
        """One row (retired or not) within the scope, else None."""
        with storage_errors(f"read {entity.what}"):
            async with self._db.connection() as conn:
                return await self._get(conn, entity, scope, id_)

    async def find(
        self, entity: _Entity[R], scope: Scope, f: ListFilters, *,
        after: str | None = None, limit: int = 100,
    ) -> list[R]:  # fmt: skip
        """Rows within the scope and filters, by id, after the id ``after``."""
        conds, params = self._scope_where(entity, scope)
        for name, value in (
            ("park", f.park), ("enterprise", f.enterprise), ("outlet", f.outlet),
            ("protocol", f.protocol),
        ):  # fmt: skip
            if value is None:
                continue
            column: str | None = {
                "park": entity.park_column, "enterprise": entity.enterprise_column,
            }.get(name, name)  # fmt: skip
            if column is None or column not in entity.columns:
                return []  # e.g. an outlet filter on parks: nothing matches
            conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
            params.append(value)
        conds.append(
            sql.SQL("retired_at IS NOT NULL" if f.retired else "retired_at IS NULL")
        )
        if after is not None:
            conds.append(sql.SQL("id > %s"))
            params.append(after)
        query = sql.SQL("{} WHERE {} ORDER BY id LIMIT %s").format(
            self._select(entity), sql.SQL(" AND ").join(conds)
        )
        params.append(limit)
        with storage_errors(f"list {entity.what}s"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(entity.row)) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()

    async def _insert(
        self, conn: Conn, entity: _Entity[R], values: Mapping[str, Any]
    ) -> R:
        now = self._now()
        columns = [*values, "created_at", "updated_at"]
        params = [self._value(entity, c, v) for c, v in values.items()] + [now, now]
        query = sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            self._t(entity.table),
            sql.SQL(", ").join(map(sql.Identifier, columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(columns)),
        ) + self._returning(entity)
        async with conn.cursor(row_factory=class_row(entity.row)) as cur:
            try:
                await cur.execute(query, params)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == "devices_mn":
                    raise RegistryConflict(
                        "mn", f"MN {values.get('mn')!r} is already registered"
                    ) from None
                raise RegistryConflict(
                    "id", f"{entity.what} id {values['id']!r} is already registered"
                ) from None
            except psycopg.errors.IntegrityError as exc:
                raise RegistryConflict("body", _refused(exc)) from None
            row = await cur.fetchone()
            assert row is not None
            return row

    async def _update(
        self, conn: Conn, entity: _Entity[R], current: R, changes: Mapping[str, Any]
    ) -> R:
        if current.retired_at is not None:
            raise RegistryConflict("id", f"{entity.what} {current.id} is retired")
        unknown = set(changes) - entity.writable
        if unknown:
            raise ValueError(f"not writable: {sorted(unknown)}")
        sets = [
            sql.SQL("{} = %s").format(sql.Identifier(c))
            for c in [*changes, "updated_at"]
        ]
        params = [self._value(entity, c, v) for c, v in changes.items()]
        params += [self._now(), current.id]
        query = sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
            self._t(entity.table), sql.SQL(", ").join(sets)
        ) + self._returning(entity)
        async with conn.cursor(row_factory=class_row(entity.row)) as cur:
            try:
                await cur.execute(query, params)
            except psycopg.errors.UniqueViolation:
                raise RegistryConflict(
                    "mn", f"MN {changes.get('mn')!r} is already registered"
                ) from None
            except psycopg.errors.IntegrityError as exc:
                raise RegistryConflict("body", _refused(exc)) from None
            row = await cur.fetchone()
            assert row is not None
            return row

    async def _children(
        self, conn: Conn, child: _Entity[Any], column: str, id_: str
    ) -> int:
        cur = await conn.execute(
            sql.SQL("SELECT count(*) FROM {} WHERE {} = %s AND retired_at IS NULL")
            .format(self._t(child.table), sql.Identifier(column)),
            (id_,),
        )  # fmt: skip
        row = await cur.fetchone()
        return int(row[0]) if row else 0

    # -- creates ----------------------------------------------------------------------

    async def create_park(self, scope: Scope, values: Mapping[str, Any]) -> ParkRow:
        """A new park; only an operator of every park may (else PermissionError)."""
        if not _is_writer(scope) or scope.park is not None:
            raise PermissionError("only an operator of every park creates parks")
        with storage_errors("create park"):
            async with self._db.connection() as conn:
                return await self._insert(conn, PARKS, values)

    async def create_enterprise(
        self, scope: Scope, values: Mapping[str, Any]
    ) -> EnterpriseRow | None:
        """None if its park is not an active park within the scope."""
        if not _is_writer(scope):
            return None
        with storage_errors("create enterprise"):
            async with self._db.connection() as conn, conn.transaction():
                park = await self._get(
                    conn, PARKS, scope, values["park"], active=True, lock=True
                )
                if park is None:
                    return None
                return await self._insert(conn, ENTERPRISES, values)

    async def _parent_enterprise(
        self, conn: Conn, scope: Scope, enterprise: str
    ) -> EnterpriseRow | None:
        return await self._get(conn, ENTERPRISES, scope, enterprise, active=True,
                               lock=True)  # fmt: skip

    async def create_outlet(
        self, scope: Scope, values: Mapping[str, Any]
    ) -> OutletRow | None:
        """None if its enterprise is not an active enterprise within the scope."""
        if not _is_writer(scope):
            return None
        with storage_errors("create outlet"):
            async with self._db.connection() as conn, conn.transaction():
                ent = await self._parent_enterprise(conn, scope, values["enterprise"])
                if ent is None:
                    return None
                return await self._insert(conn, OUTLETS, {**values, "park": ent.park})

    async def _check_outlet(
        self, conn: Conn, scope: Scope, outlet: str | None, enterprise: str
    ) -> None:
        if outlet is None:
            return
        row = await self._get(conn, OUTLETS, scope, outlet, active=True)
        if row is None or row.enterprise != enterprise:
            raise ParentNotFound("outlet")

    async def create_device(
        self, scope: Scope, values: Mapping[str, Any]
    ) -> DeviceRow | None:
        """None if its enterprise is not an active enterprise within the scope;
        :class:`ParentNotFound` if its outlet is not an active outlet of it."""
        if not _is_writer(scope):
            return None
        with storage_errors("create device"):
            async with self._db.connection() as conn, conn.transaction():
                ent = await self._parent_enterprise(conn, scope, values["enterprise"])
                if ent is None:
                    return None
                await self._check_outlet(conn, scope, values.get("outlet"), ent.id)
                return await self._insert(conn, DEVICES, {**values, "park": ent.park})

    # -- update and retire ------------------------------------------------------------

    async def update(
        self, entity: _Entity[R], scope: Scope, id_: str, changes: Mapping[str, Any]
    ) -> R | None:
        """Apply ``changes`` (writable columns) to an active row; None if the row is
        not within the scope; :class:`RegistryConflict` if it is retired;
        :class:`ParentNotFound` for a device's outlet not of its enterprise."""
        if not _is_writer(scope):
            return None
        with storage_errors(f"update {entity.what}"):
            async with self._db.connection() as conn, conn.transaction():
                current = await self._get(conn, entity, scope, id_, lock=True)
                if current is None:
                    return None
                if isinstance(current, DeviceRow) and changes.get("outlet"):
                    await self._check_outlet(
                        conn, scope, changes["outlet"], current.enterprise
                    )
                if not changes:
                    return current
                return await self._update(conn, entity, current, changes)

    async def retire(self, entity: _Entity[R], scope: Scope, id_: str) -> R | None:
        """Retire a row (idempotent: the first retirement time stays); None if not
        within the scope; :class:`RegistryConflict` while it has active children."""
        if not _is_writer(scope):
            return None
        children: Sequence[tuple[_Entity[Any], str]] = {
            "parks": ((ENTERPRISES, "park"),),
            "enterprises": ((OUTLETS, "enterprise"), (DEVICES, "enterprise")),
            "outlets": ((DEVICES, "outlet"),),
            "devices": (),
        }[entity.table]
        with storage_errors(f"retire {entity.what}"):
            async with self._db.connection() as conn, conn.transaction():
                current = await self._get(conn, entity, scope, id_, lock=True)
                if current is None or current.retired_at is not None:
                    return current
                for child, column in children:
                    n = await self._children(conn, child, column, id_)
                    if n:
                        raise RegistryConflict(
                            "id",
                            f"{entity.what} {id_} has {n} active {child.what}(s):"
                            f" retire them first",
                        )
                now = self._now()
                async with conn.cursor(row_factory=class_row(entity.row)) as cur:
                    await cur.execute(
                        sql.SQL("UPDATE {} SET retired_at = %s, updated_at = %s"
                                " WHERE id = %s").format(self._t(entity.table))
                        + self._returning(entity),
                        (now, now, id_),
                    )  # fmt: skip
                    return await cur.fetchone()

    # -- edge config ------------------------------------------------------------------

    async def enterprise_devices(
        self, scope: Scope, enterprise: str
    ) -> tuple[EnterpriseRow, list[DeviceRow]] | None:
        """An active enterprise within the scope and its active devices, or None."""
        with storage_errors("read enterprise devices"):
            async with self._db.connection() as conn:
                ent = await self._get(conn, ENTERPRISES, scope, enterprise,
                                      active=True)  # fmt: skip
                if ent is None:
                    return None
                async with conn.cursor(row_factory=class_row(DeviceRow)) as cur:
                    await cur.execute(
                        sql.SQL("{} WHERE enterprise = %s AND retired_at IS NULL"
                                " ORDER BY id").format(self._select(DEVICES)),
                        (ent.id,),
                    )  # fmt: skip
                    return ent, await cur.fetchall()

    async def import_devices(
        self,
        scope: Scope,
        enterprise: str,
        devices: Sequence[tuple[str, Mapping[str, Any]]],
        *,
        default_interval_s: int,
    ) -> dict[str, list[str]] | None:
        """Register ``devices`` of an active enterprise within the scope, in one
        transaction. Each is (where in the file, values: ``id``, ``protocol``,
        ``interval_s``, ``metrics``, ``mn``): new ids are created, changed ones
        updated, equal ones left alone; a new device without ``interval_s`` gets
        ``default_interval_s``. None if the enterprise is not within the
        scope; :class:`RegistryConflict` naming ``{where}.id`` for an id of another
        enterprise or a retired device, ``{where}.mn`` for a taken MN."""
        out: dict[str, list[str]] = {"created": [], "updated": [], "unchanged": []}
        if not _is_writer(scope):
            return None
        with storage_errors("import devices"):
            async with self._db.connection() as conn, conn.transaction():
                ent = await self._parent_enterprise(conn, scope, enterprise)
                if ent is None:
                    return None
                for at, dev in devices:
                    try:
                        outcome = await self._import_one(
                            conn, ent, dev, default_interval_s
                        )
                    except RegistryConflict as exc:
                        raise RegistryConflict(
                            f"{at}.{exc.field}", exc.reason
                        ) from None
                    out[outcome].append(dev["id"])
        return out

    async def _import_one(
        self, conn: Conn, ent: EnterpriseRow, dev: Mapping[str, Any], interval_s: int
    ) -> str:
        current = await self._get(
            conn, DEVICES, Scope(Role.REGULATOR), dev["id"], lock=True
        )
        if current is None:
            values = {"interval_s": interval_s, **dev}
            values.update(park=ent.park, enterprise=ent.id)
            await self._insert(conn, DEVICES, values)
            return "created"
        if current.enterprise != ent.id:
            raise RegistryConflict(
                "id", f"device id {dev['id']!r} is already registered"
            )
        changes = {
            k: v for k, v in dev.items() if k != "id" and getattr(current, k) != v
        }
        if not changes:
            return "unchanged"
        await self._update(conn, DEVICES, current, changes)
        return "updated"
