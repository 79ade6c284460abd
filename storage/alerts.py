"""Alert events, alerts and rule-engine checkpoints (tables of migration 0003).

The rows are plain data defined here, so the storage layer does not depend on the
rule engine; :mod:`rules.runner` converts its events into :class:`AlertEventRow`.
:class:`AlertStore` holds the SQL; every method raises
:class:`~smartpark.errors.StorageError` when the database fails.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg import sql
from psycopg.rows import class_row
from psycopg.types.json import Jsonb

from smartpark.tenancy import Scope
from storage.base import Conn, Database, storage_errors, table


@dataclass(frozen=True, slots=True)
class AlertEventRow:
    event_id: str
    alert_id: str
    kind: str  # opened | acknowledged | resolved | revised | insufficient_data
    pack: str
    rule_id: str
    rule_version: str
    severity: str
    park: str
    enterprise: str | None
    device: str | None
    metric: str | None
    at_ms: int
    body: dict[str, Any]  # the event as produced to the alerts topic (JSON)


@dataclass(frozen=True, slots=True)
class AlertRow:
    """An alert with its current status (open, acknowledged or resolved)."""

    alert_id: str
    rule_id: str
    severity: str
    status: str
    park: str
    enterprise: str | None
    device: str | None
    metric: str | None
    opened_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    last_event_id: str


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """An alert as the API shows it: current status, rule version and pack."""

    alert_id: str
    pack: str
    rule_id: str
    rule_version: str
    severity: str
    status: str
    park: str
    enterprise: str | None
    device: str | None
    metric: str | None
    opened_at: datetime
    resolved_at: datetime | None
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    last_event_id: str


@dataclass(frozen=True, slots=True)
class AlertFilters:
    """What an API caller asked for (None: any); the caller's scope applies on
    top of it, in SQL. ``since``/``until`` bound ``opened_at`` as [since, until)."""

    status: str | None = None
    severity: str | None = None
    rule_id: str | None = None
    enterprise: str | None = None
    device: str | None = None
    outlet: str | None = None  # the devices of a registered outlet
    since: datetime | None = None
    until: datetime | None = None


AlertKey = tuple[datetime, str]
"""A page position: (opened_at, alert_id) of the last alert of the previous page."""


@dataclass(frozen=True, slots=True)
class RuleState:
    group: str
    topic: str
    partition: int
    pack: str
    pack_version: str
    next_offset: int
    snapshot: dict[str, Any]  # the engine's snapshot (JSON)


_RECORD_COLUMNS = sql.SQL(
    "alert_id, pack, rule_id, rule_version, severity, status, park, enterprise,"
    " device, metric, opened_at, resolved_at, acknowledged_at, acknowledged_by,"
    " last_event_id"
)


def _scoped(scope: Scope) -> tuple[list[sql.Composable], list[Any]]:
    """The scope's conditions on an alert row: its park, its enterprise."""
    conds: list[sql.Composable] = []
    params: list[Any] = []
    if scope.park is not None:
        conds.append(sql.SQL("park = %s"))
        params.append(scope.park)
    if scope.enterprise is not None:
        conds.append(sql.SQL("enterprise = %s"))
        params.append(scope.enterprise)
    return conds, params


def _where(conds: Sequence[sql.Composable]) -> sql.Composable:
    if not conds:
        return sql.SQL("")
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(conds)


_EVENT_COLUMNS = sql.SQL(
    "event_id, alert_id, kind, pack, rule_id, rule_version, severity, park,"
    " enterprise, device, metric, (extract(epoch FROM at) * 1000)::bigint AS at_ms,"
    " body"
)


class AlertStore:
    """The rule engine's output and checkpoints, and a person's acknowledgement."""

    def __init__(self, db: Database) -> None:
        self._db = db

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def write(
        self, events: Sequence[AlertEventRow], states: Sequence[RuleState]
    ) -> int:
        """Store alert events (each once, with their lifecycle) and the engine's
        checkpoints in one transaction; the number of new events. Nothing to
        store costs no round trip."""
        if not events and not states:
            return 0
        with storage_errors(f"write of {len(events)} alert events"):
            async with self._db.connection() as conn, conn.transaction():
                return await write(conn, self._db.schema, events, states)

    async def states(self, group: str, topic: str) -> list[RuleState]:
        """The engine checkpoints of ``group`` on ``topic``, by partition."""
        with storage_errors("load rule states"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT partition, pack, pack_version, next_offset, snapshot"
                        " FROM {} WHERE consumer_group = %s AND topic = %s"
                        " ORDER BY partition"
                    ).format(self._t("rule_state")),
                    (group, topic),
                )
                return [
                    RuleState(group, topic, int(p), pack, version, int(off), snap)
                    for p, pack, version, off, snap in await cur.fetchall()
                ]

    async def unproduced(self, limit: int = 1000) -> list[AlertEventRow]:
        """Events not yet produced to the alerts topic, in the order stored."""
        return await self._events(
            "read unproduced alert events",
            sql.SQL(" WHERE NOT produced"),
            (),
            limit,
        )

    async def mark_produced(self, event_ids: Sequence[str]) -> None:
        with storage_errors("mark alert events produced"):
            async with self._db.connection() as conn:
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET produced = true WHERE event_id = ANY(%s)"
                    ).format(self._t("alert_events")),
                    (list(event_ids),),
                )

    async def events(self, *, park: str | None = None) -> list[AlertEventRow]:
        """Stored events (optionally of one park) in the order they were stored."""
        if park is None:
            return await self._events("read alert events", sql.SQL(""), ())
        return await self._events(
            "read alert events", sql.SQL(" WHERE park = %s"), (park,)
        )

    async def _events(
        self,
        what: str,
        where: sql.Composable,
        params: Sequence[Any],
        limit: int | None = None,
    ) -> list[AlertEventRow]:
        query = sql.SQL("SELECT {} FROM {}{} ORDER BY seq").format(
            _EVENT_COLUMNS, self._t("alert_events"), where
        )
        if limit is not None:
            query += sql.SQL(" LIMIT {}").format(sql.Literal(limit))
        with storage_errors(what):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AlertEventRow)) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()

    async def list_alerts(self, *, park: str | None = None) -> list[AlertRow]:
        """Alerts with their current status, oldest first."""
        where = sql.SQL(" WHERE park = %s") if park is not None else sql.SQL("")
        with storage_errors("read alerts"):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AlertRow)) as cur,
            ):
                await cur.execute(
                    sql.SQL(
                        "SELECT alert_id, rule_id, severity, status, park, enterprise,"
                        " device, metric, opened_at, resolved_at, acknowledged_at,"
                        " acknowledged_by, last_event_id FROM {}{}"
                        " ORDER BY opened_at, alert_id"
                    ).format(self._t("alerts"), where),
                    (park,) if park is not None else (),
                )
                return await cur.fetchall()

    async def acknowledge(self, alert_id: str, *, by: str) -> str | None:
        """Acknowledge an open alert (a person's act); the alert's status after it,
        None if there is no such alert. The engine still resolves it later. It is
        also an ``acknowledged`` event, produced to the alerts topic by the runner."""
        with storage_errors("acknowledge alert"):
            async with self._db.connection() as conn, conn.transaction():
                return await acknowledge(
                    conn, self._db.schema, alert_id, by, self._db.clock()
                )

    # -- the API: every read and write within the caller's scope, in SQL ---------

    async def find(
        self,
        scope: Scope,
        filters: AlertFilters,
        *,
        limit: int,
        after: AlertKey | None = None,
    ) -> list[AlertRecord]:
        """Alerts within ``scope`` matching ``filters``, newest first (by
        ``opened_at``, then id), at most ``limit``, after the page key ``after``."""
        conds, params = _scoped(scope)
        f = filters
        for column, value in (
            ("status", f.status), ("severity", f.severity), ("rule_id", f.rule_id),
            ("enterprise", f.enterprise), ("device", f.device),
        ):  # fmt: skip
            if value is not None:
                conds.append(sql.SQL("{} = %s").format(sql.Identifier(column)))
                params.append(value)
        if f.outlet is not None:
            conds.append(
                sql.SQL("device IN (SELECT id FROM {} WHERE outlet = %s)").format(
                    self._t("devices")
                )
            )
            params.append(f.outlet)
        if f.since is not None:
            conds.append(sql.SQL("opened_at >= %s"))
            params.append(f.since)
        if f.until is not None:
            conds.append(sql.SQL("opened_at < %s"))
            params.append(f.until)
        if after is not None:
            conds.append(sql.SQL("(opened_at, alert_id) < (%s, %s)"))
            params.extend(after)
        query = sql.SQL(
            "SELECT {} FROM {}{} ORDER BY opened_at DESC, alert_id DESC LIMIT %s"
        ).format(_RECORD_COLUMNS, self._t("alerts"), _where(conds))
        return await self._records("read alerts", query, [*params, limit])

    async def get(self, scope: Scope, alert_id: str) -> AlertRecord | None:
        """One alert, None if there is none within ``scope``."""
        conds, params = _scoped(scope)
        conds.append(sql.SQL("alert_id = %s"))
        query = sql.SQL("SELECT {} FROM {}{}").format(
            _RECORD_COLUMNS, self._t("alerts"), _where(conds)
        )
        found = await self._records("read an alert", query, [*params, alert_id])
        return found[0] if found else None

    async def history(self, scope: Scope, alert_id: str) -> list[AlertEventRow]:
        """The events of an alert within ``scope``, in the order stored (empty if
        there is no such alert within it)."""
        conds, params = _scoped(scope)
        conds.append(sql.SQL("alert_id = %s"))
        return await self._events(
            "read an alert's events", _where(conds), [*params, alert_id]
        )

    async def acknowledge_within(
        self, scope: Scope, alert_id: str, *, by: str, comment: str | None
    ) -> str | None:
        """Acknowledge an open alert within ``scope`` (see :func:`acknowledge`); its
        status afterwards, None if there is no such alert within the scope."""
        with storage_errors("acknowledge alert"):
            async with self._db.connection() as conn, conn.transaction():
                if not await _lock_within(conn, self._db.schema, scope, alert_id):
                    return None
                return await acknowledge(
                    conn, self._db.schema, alert_id, by, self._db.clock(),
                    comment=comment,
                )  # fmt: skip

    async def resolve_by_hand(
        self, scope: Scope, alert_id: str, *, by: str, reason: str
    ) -> str | None:
        """Resolve an open or acknowledged alert within ``scope`` by hand (see
        :func:`resolve_by_hand`); its status afterwards, None if there is no such
        alert within the scope."""
        with storage_errors("resolve alert"):
            async with self._db.connection() as conn, conn.transaction():
                if not await _lock_within(conn, self._db.schema, scope, alert_id):
                    return None
                return await resolve_by_hand(
                    conn, self._db.schema, alert_id, by=by, reason=reason,
                    now_ms=self._db.clock(),
                )  # fmt: skip

    async def _records(
        self, what: str, query: sql.Composed, params: Sequence[Any]
    ) -> list[AlertRecord]:
        with storage_errors(what):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(AlertRecord)) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()


async def write(
    conn: Conn,
    schema: str,
    events: Sequence[AlertEventRow],
    states: Sequence[RuleState],
) -> int:
    """Store events (each once), apply their lifecycle, upsert checkpoints.

    Call inside a transaction. Returns how many events were new.
    """
    new = 0
    for e in events:
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} (event_id, alert_id, kind, pack, rule_id, rule_version,"
                " severity, park, enterprise, device, metric, at, body)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " to_timestamp(%s / 1000.0), %s) ON CONFLICT (event_id) DO NOTHING"
            ).format(table(schema, "alert_events")),
            (
                e.event_id, e.alert_id, e.kind, e.pack, e.rule_id, e.rule_version,
                e.severity, e.park, e.enterprise, e.device, e.metric, e.at_ms,
                Jsonb(e.body),
            ),
        )  # fmt: skip
        if cur.rowcount != 1:
            continue  # stored by an earlier attempt: its lifecycle is applied too
        new += 1
        if e.kind == "opened":
            await conn.execute(
                sql.SQL(
                    "INSERT INTO {} (alert_id, pack, rule_id, rule_version, severity,"
                    " park, enterprise, device, metric, status, opened_at,"
                    " last_event_id) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                    " 'open', to_timestamp(%s / 1000.0), %s)"
                    " ON CONFLICT (alert_id) DO NOTHING"
                ).format(table(schema, "alerts")),
                (
                    e.alert_id, e.pack, e.rule_id, e.rule_version, e.severity, e.park,
                    e.enterprise, e.device, e.metric, e.at_ms, e.event_id,
                ),
            )  # fmt: skip
        elif e.kind == "resolved":
            await conn.execute(
                sql.SQL(
                    "UPDATE {} SET status = 'resolved',"
                    " resolved_at = to_timestamp(%s / 1000.0), last_event_id = %s"
                    " WHERE alert_id = %s AND status <> 'resolved'"
                ).format(table(schema, "alerts")),
                (e.at_ms, e.event_id, e.alert_id),
            )
    for s in states:
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (consumer_group, topic, partition, pack, pack_version,"
                " next_offset, snapshot, updated_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, now())"
                " ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET"
                " pack = EXCLUDED.pack, pack_version = EXCLUDED.pack_version,"
                " next_offset = EXCLUDED.next_offset, snapshot = EXCLUDED.snapshot,"
                " updated_at = EXCLUDED.updated_at"
            ).format(table(schema, "rule_state")),
            (
                s.group, s.topic, s.partition, s.pack, s.pack_version, s.next_offset,
                Jsonb(s.snapshot),
            ),
        )  # fmt: skip
    return new


async def acknowledge(
    conn: Conn,
    schema: str,
    alert_id: str,
    by: str,
    now_ms: int,
    *,
    comment: str | None = None,
) -> str | None:
    """Mark an open alert acknowledged by ``by``; its status afterwards (None: no
    such alert). An acknowledged or resolved alert is left as it is.

    Call inside a transaction: the acknowledgement is also an ``acknowledged`` event
    of the alert (for webhooks), stored unproduced like the engine's events; its id
    is deterministic, as an alert is acknowledged at most once.
    """
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'acknowledged',"
            " acknowledged_at = to_timestamp(%s / 1000.0), acknowledged_by = %s"
            " WHERE alert_id = %s AND status = 'open'"
            " RETURNING pack, rule_id, rule_version, severity, park, enterprise,"
            " device, metric"
        ).format(table(schema, "alerts")),
        (now_ms, by, alert_id),
    )
    row = await cur.fetchone()
    if row is not None:
        pack, rule_id, version, severity, park, enterprise, device, metric = row
        digest = hashlib.sha256(f"{alert_id}\x1facknowledged".encode())
        event_id = digest.hexdigest()[:24]
        body = {
            "event_id": event_id,
            "alert_id": alert_id,
            "kind": "acknowledged",
            "rule_id": rule_id,
            "rule_version": version,
            "severity": severity,
            "scope": {
                "park": park, "enterprise": enterprise, "device": device,
                "metric": metric,
            },
            "at_ms": now_ms,
            "value": None,
            "window": None,
            "evidence": {"pack": pack, "acknowledged_by": by},
        }  # fmt: skip
        if comment is not None:
            body["evidence"]["comment"] = comment
        ack = AlertEventRow(
            event_id, alert_id, "acknowledged", pack, rule_id, version, severity,
            park, enterprise, device, metric, now_ms, body,
        )  # fmt: skip
        await write(conn, schema, [ack], [])
    cur = await conn.execute(
        sql.SQL("SELECT status FROM {} WHERE alert_id = %s").format(
            table(schema, "alerts")
        ),
        (alert_id,),
    )
    found = await cur.fetchone()
    return None if found is None else str(found[0])


async def _lock_within(conn: Conn, schema: str, scope: Scope, alert_id: str) -> bool:
    conds, params = _scoped(scope)
    conds.append(sql.SQL("alert_id = %s"))
    cur = await conn.execute(
        sql.SQL("SELECT 1 FROM {}{} FOR UPDATE").format(
            table(schema, "alerts"), _where(conds)
        ),
        [*params, alert_id],
    )
    return await cur.fetchone() is not None


async def resolve_by_hand(
    conn: Conn, schema: str, alert_id: str, *, by: str, reason: str, now_ms: int
) -> str | None:
    """Resolve an open or acknowledged alert by hand; its status afterwards (None:
    no such alert). A resolved alert is left as it is.

    Call inside a transaction. The resolution is a ``resolved`` event of its own,
    produced to the alerts topic like any other (webhooks ``alert.resolved``), whose
    evidence says it was a person's act: ``resolution: "manual"``, ``resolved_by``,
    ``reason``, and no value or window, since the rule did not judge it resolved.
    The rule engine is not told: a later ``resolved`` from the engine is stored as
    an event but leaves the alert's resolution as it is.
    """
    cur = await conn.execute(
        sql.SQL(
            "UPDATE {} SET status = 'resolved',"
            " resolved_at = to_timestamp(%s / 1000.0)"
            " WHERE alert_id = %s AND status <> 'resolved'"
            " RETURNING pack, rule_id, rule_version, severity, park, enterprise,"
            " device, metric"
        ).format(table(schema, "alerts")),
        (now_ms, alert_id),
    )
    row = await cur.fetchone()
    if row is not None:
        pack, rule_id, version, severity, park, enterprise, device, metric = row
        digest = hashlib.sha256(f"{alert_id}\x1fresolved by hand".encode())
        event_id = digest.hexdigest()[:24]
        body = {
            "event_id": event_id,
            "alert_id": alert_id,
            "kind": "resolved",
            "rule_id": rule_id,
            "rule_version": version,
            "severity": severity,
            "scope": {
                "park": park, "enterprise": enterprise, "device": device,
                "metric": metric,
            },
            "at_ms": now_ms,
            "value": None,
            "window": None,
            "evidence": {
                "pack": pack, "resolution": "manual", "resolved_by": by,
                "reason": reason,
            },
        }  # fmt: skip
        event = AlertEventRow(
            event_id, alert_id, "resolved", pack, rule_id, version, severity,
            park, enterprise, device, metric, now_ms, body,
        )  # fmt: skip
        await conn.execute(
            sql.SQL(
                "INSERT INTO {} (event_id, alert_id, kind, pack, rule_id, rule_version,"
                " severity, park, enterprise, device, metric, at, body)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s,"
                " to_timestamp(%s / 1000.0), %s) ON CONFLICT (event_id) DO NOTHING"
            ).format(table(schema, "alert_events")),
            (
                event.event_id, alert_id, "resolved", pack, rule_id, version,
                severity, park, enterprise, device, metric, now_ms, Jsonb(body),
            ),
        )  # fmt: skip
        await conn.execute(
            sql.SQL("UPDATE {} SET last_event_id = %s WHERE alert_id = %s").format(
                table(schema, "alerts")
            ),
            (event_id, alert_id),
        )
    cur = await conn.execute(
        sql.SQL("SELECT status FROM {} WHERE alert_id = %s").format(
            table(schema, "alerts")
        ),
        (alert_id,),
    )
    found = await cur.fetchone()
    return None if found is None else str(found[0])
