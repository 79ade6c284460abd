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
class RuleState:
    group: str
    topic: str
    partition: int
    pack: str
    pack_version: str
    next_offset: int
    snapshot: dict[str, Any]  # the engine's snapshot (JSON)


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
        checkpoints in one transaction; the number of new events."""
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
                    " WHERE alert_id = %s"
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
    conn: Conn, schema: str, alert_id: str, by: str, now_ms: int
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
