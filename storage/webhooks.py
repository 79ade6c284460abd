"""Webhook subscriptions, secrets, the delivery outbox and the attempt log (0004).

:class:`WebhookStore` works on an open :class:`~storage.Storage` (its pool);
every method raises :class:`~smartpark.errors.StorageError` when the database
fails. Times cross this API as epoch milliseconds from the caller's clock, so the
notifier's schedule is testable. Contracts:

- :meth:`WebhookStore.enqueue` stores deliveries (each (subscription, event) once)
  and the alerts-topic offsets they cover in one transaction.
- :meth:`WebhookStore.next_due` gives a subscription's next delivery to attempt: due,
  pending, and the first pending one of its ``order_key`` (so the events of one
  alert go out in the order they were queued, while other alerts are not held up).
- :meth:`WebhookStore.record_attempt` logs an attempt and moves its delivery on in
  one transaction (and disables the subscription when asked to).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from psycopg import sql
from psycopg.rows import class_row

from smartpark.errors import ConfigError
from smartpark.tenancy import Scope
from storage import offsets as offset_sql
from storage.base import Conn, Database, storage_errors, table
from storage.model import KafkaOffset
from storage.secretbox import KEY_VARIABLE, SecretBox

_Row = TypeVar("_Row")

_STATUSES = ("pending", "delivered", "failed")
_SUBSCRIPTION_COLUMNS = (
    "subscription_id, park, enterprise, url, event_types, description, enabled,"
    " disabled_reason, (extract(epoch FROM created_at) * 1000)::bigint"
)


@dataclass(frozen=True, slots=True)
class Subscription:
    subscription_id: str
    park: str
    enterprise: str | None  # None: the park's operators (every event of the park)
    url: str
    event_types: tuple[str, ...]
    description: str = ""
    enabled: bool = True
    disabled_reason: str | None = None
    created_ms: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "subscription_id": self.subscription_id,
            "park": self.park,
            "enterprise": self.enterprise,
            "url": self.url,
            "event_types": list(self.event_types),
            "description": self.description,
            "enabled": self.enabled,
            "disabled_reason": self.disabled_reason,
            "created_ms": self.created_ms,
        }


@dataclass(frozen=True, slots=True)
class NewDelivery:
    subscription_id: str
    event_id: str  # the webhook-id header
    event_type: str
    order_key: str
    event_ms: int
    body: str  # the exact JSON sent on every attempt


@dataclass(frozen=True, slots=True)
class DueDelivery:
    delivery_id: int
    subscription_id: str
    url: str
    event_id: str
    event_type: str
    body: str
    attempts: int  # over the delivery's life
    scheduled: int  # attempts since it was (re)queued: the position in the schedule


@dataclass(frozen=True, slots=True)
class DeliveryRow:
    """A delivery as the log shows it (without its body)."""

    delivery_id: int
    subscription_id: str
    event_id: str
    event_type: str
    status: str  # pending | delivered | failed
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    finished_at: datetime | None
    last_error: str | None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One logged attempt of a delivery."""

    delivery_id: int
    attempt: int
    started_at: datetime
    latency_ms: int
    status_code: int | None
    error: str | None
    outcome: str
    address: str | None


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    delivery_id: int
    attempt: int
    started_ms: int
    latency_ms: int
    status_code: int | None
    error: str | None
    outcome: str
    address: str | None


def _sub(row: Sequence[Any]) -> Subscription:
    sid, park, ent, url, types, desc, enabled, reason, created = row
    return Subscription(
        sid, park, ent, url, tuple(types), desc, enabled, reason, int(created)
    )


class WebhookStore:
    """Subscriptions, secrets (encrypted with ``keys``), the outbox and its log.

    Without ``keys`` nothing can be created or rotated (a ConfigError naming
    ``SMARTPARK_WEBHOOKS__SECRET_KEY``), and only secrets still in clear can be
    read; every process that needs secrets builds its :class:`SecretBox` at start-up.
    """

    def __init__(self, db: Database, keys: SecretBox | None = None) -> None:
        self._db = db
        self._keys = keys

    def _box(self) -> SecretBox:
        if self._keys is None:
            raise ConfigError(
                f"{KEY_VARIABLE}: required (webhook signing secrets are stored"
                " encrypted with it)"
            )
        return self._keys

    def _t(self, name: str) -> sql.Identifier:
        return table(self._db.schema, name)

    async def _fetch(
        self, what: str, query: sql.Composed, params: Sequence[Any] = ()
    ) -> list[Any]:
        with storage_errors(what):
            async with self._db.connection() as conn:
                cur = await conn.execute(query, params)
                return list(await cur.fetchall())

    async def _fetch_rows(
        self,
        what: str,
        row: type[_Row],
        query: sql.Composed,
        params: Sequence[Any],
    ) -> list[_Row]:
        with storage_errors(what):
            async with (
                self._db.connection() as conn,
                conn.cursor(row_factory=class_row(row)) as cur,
            ):
                await cur.execute(query, params)
                return await cur.fetchall()

    # -- subscriptions ----------------------------------------------------------

    async def create_subscription(self, sub: Subscription, secret: str) -> None:
        with storage_errors("create webhook subscription"):
            async with self._db.connection() as conn, conn.transaction():
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (subscription_id, park, enterprise, url,"
                        " event_types, description, enabled)"
                        " VALUES (%s, %s, %s, %s, %s, %s, %s)"
                    ).format(self._t("webhook_subscriptions")),
                    (
                        sub.subscription_id, sub.park, sub.enterprise, sub.url,
                        list(sub.event_types), sub.description, sub.enabled,
                    ),
                )  # fmt: skip
                sealed, kid = self._box().seal(secret, sub.subscription_id)
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (subscription_id, secret, key_id)"
                        " VALUES (%s, %s, %s)"
                    ).format(self._t("webhook_secrets")),
                    (sub.subscription_id, sealed, kid),
                )

    async def subscriptions(
        self, *, park: str | None = None, enabled_only: bool = False
    ) -> list[Subscription]:
        where: list[sql.Composable] = []
        params: list[Any] = []
        if park is not None:
            where.append(sql.SQL("park = %s"))
            params.append(park)
        if enabled_only:
            where.append(sql.SQL("enabled"))
        clause = (
            sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
        )
        rows = await self._fetch(
            "read webhook subscriptions",
            sql.SQL("SELECT {} FROM {}{} ORDER BY created_at, subscription_id").format(
                sql.SQL(_SUBSCRIPTION_COLUMNS), self._t("webhook_subscriptions"), clause
            ),
            params,
        )
        return [_sub(r) for r in rows]

    async def subscription(self, subscription_id: str) -> Subscription | None:
        rows = await self._fetch(
            "read webhook subscription",
            sql.SQL("SELECT {} FROM {} WHERE subscription_id = %s").format(
                sql.SQL(_SUBSCRIPTION_COLUMNS), self._t("webhook_subscriptions")
            ),
            (subscription_id,),
        )
        return _sub(rows[0]) if rows else None

    async def set_enabled(
        self, subscription_id: str, enabled: bool, *, reason: str | None = None
    ) -> bool:
        """Enable or disable (with the reason shown to operators); False: no such
        subscription."""
        with storage_errors("update webhook subscription"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET enabled = %s, disabled_reason = %s,"
                        " updated_at = now() WHERE subscription_id = %s"
                    ).format(self._t("webhook_subscriptions")),
                    (enabled, None if enabled else reason, subscription_id),
                )
                return cur.rowcount == 1

    async def rotate_secret(
        self, subscription_id: str, secret: str, *, old_until_ms: int
    ) -> bool:
        """Make ``secret`` current; the secrets signing until now keep signing until
        ``old_until_ms`` (the overlap). False: no such subscription."""
        sealed, kid = self._box().seal(secret, subscription_id)
        with storage_errors("rotate webhook secret"):
            async with self._db.connection() as conn, conn.transaction():
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT 1 FROM {} WHERE subscription_id = %s FOR UPDATE"
                    ).format(self._t("webhook_subscriptions")),
                    (subscription_id,),
                )
                if await cur.fetchone() is None:
                    return False
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET expires_at = LEAST(COALESCE(expires_at,"
                        " to_timestamp(%s / 1000.0)), to_timestamp(%s / 1000.0))"
                        " WHERE subscription_id = %s"
                    ).format(self._t("webhook_secrets")),
                    (old_until_ms, old_until_ms, subscription_id),
                )
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (subscription_id, secret, key_id)"
                        " VALUES (%s, %s, %s)"
                    ).format(self._t("webhook_secrets")),
                    (subscription_id, sealed, kid),
                )
                return True

    async def signing_secrets(self, subscription_id: str, now_ms: int) -> list[str]:
        """The secrets that sign now, newest first, decrypted (a secret still in
        clear from before migration 0009 as it is)."""
        rows = await self._fetch(
            "read webhook secrets",
            sql.SQL(
                "SELECT secret, key_id FROM {} WHERE subscription_id = %s AND"
                " (expires_at IS NULL OR expires_at > to_timestamp(%s / 1000.0))"
                " ORDER BY created_at DESC, secret_id DESC"
            ).format(self._t("webhook_secrets")),
            (subscription_id, now_ms),
        )
        return [
            str(s) if kid is None else self._box().open(s, kid, subscription_id)
            for s, kid in rows
        ]

    async def reencrypt(self) -> int:
        """Encrypt every secret still in clear, and re-encrypt every secret sealed
        with an older key, with the current key; the number of secrets changed.
        Row by row, each in place (a crash leaves every secret readable)."""
        box = self._box()
        rows = await self._fetch(
            "read webhook secrets to re-encrypt",
            sql.SQL(
                "SELECT secret_id, subscription_id, secret, key_id FROM {}"
                " WHERE key_id IS DISTINCT FROM %s ORDER BY secret_id"
            ).format(self._t("webhook_secrets")),
            (box.current_id,),
        )
        changed = 0
        for secret_id, sid, stored, kid in rows:
            plain = str(stored) if kid is None else box.open(stored, kid, sid)
            sealed, new_kid = box.seal(plain, sid)
            with storage_errors("re-encrypt a webhook secret"):
                async with self._db.connection() as conn:
                    cur = await conn.execute(
                        sql.SQL(
                            "UPDATE {} SET secret = %s, key_id = %s"
                            " WHERE secret_id = %s AND key_id IS NOT DISTINCT FROM %s"
                        ).format(self._t("webhook_secrets")),
                        (sealed, new_kid, secret_id, kid),
                    )
                    changed += cur.rowcount
        return changed

    # -- the outbox ---------------------------------------------------------------

    async def enqueue(
        self,
        deliveries: Sequence[NewDelivery],
        offsets: Sequence[KafkaOffset],
        *,
        now_ms: int,
    ) -> int:
        """Queue deliveries (due at ``now_ms``) and set offsets in one transaction;
        the number of deliveries new."""
        with storage_errors(f"queue {len(deliveries)} webhook deliveries"):
            async with self._db.connection() as conn, conn.transaction():
                new = await _insert_deliveries(
                    conn, self._t("webhook_deliveries"), deliveries, now_ms
                )
                await offset_sql.upsert(conn, self._db.schema, offsets)
                return new

    async def due_subscriptions(
        self,
        now_ms: int,
        *,
        exclude: Sequence[str] = (),
        limit: int = 100,
        slot_count: int = 1,
        slots: Sequence[int] | None = None,
    ) -> list[tuple[str, int]]:
        """Enabled subscriptions with a delivery due at ``now_ms``, each with its
        slot among ``slot_count`` (a hash of its id: the same in every process);
        with ``slots``, only the subscriptions in those."""
        slot = sql.SQL("mod(abs(hashtext(d.subscription_id)::bigint), %s)")
        only = None if slots is None else list(slots)
        rows = await self._fetch(
            "find due webhook deliveries",
            sql.SQL(
                "SELECT DISTINCT d.subscription_id, {slot} FROM {d} d JOIN {s} s"
                " USING (subscription_id) WHERE d.status = 'pending' AND s.enabled"
                " AND d.next_attempt_at <= to_timestamp(%s / 1000.0)"
                " AND NOT (d.subscription_id = ANY(%s))"
                " AND (%s::int[] IS NULL OR {slot} = ANY(%s::int[])) LIMIT %s"
            ).format(
                slot=slot,
                d=self._t("webhook_deliveries"),
                s=self._t("webhook_subscriptions"),
            ),
            (
                slot_count, now_ms, list(exclude), only, slot_count, only, limit,
            ),
        )  # fmt: skip
        return [(str(sid), int(n)) for sid, n in rows]

    async def next_due(self, subscription_id: str, now_ms: int) -> DueDelivery | None:
        rows = await self._fetch(
            "read the next webhook delivery",
            sql.SQL(
                "SELECT d.delivery_id, d.subscription_id, s.url, d.event_id,"
                " d.event_type, d.body, d.attempts, d.scheduled"
                " FROM {d} d JOIN {s} s USING (subscription_id)"
                " WHERE d.subscription_id = %s AND s.enabled AND d.status = 'pending'"
                " AND d.next_attempt_at <= to_timestamp(%s / 1000.0)"
                " AND NOT EXISTS (SELECT 1 FROM {d} e WHERE e.status = 'pending'"
                " AND e.subscription_id = d.subscription_id"
                " AND e.order_key = d.order_key AND e.delivery_id < d.delivery_id)"
                " ORDER BY d.delivery_id LIMIT 1"
            ).format(
                d=self._t("webhook_deliveries"), s=self._t("webhook_subscriptions")
            ),
            (subscription_id, now_ms),
        )
        if not rows:
            return None
        did, sid, url, eid, etype, body, attempts, scheduled = rows[0]
        return DueDelivery(int(did), sid, url, eid, etype, body, attempts, scheduled)

    async def record_attempt(
        self,
        record: AttemptRecord,
        *,
        status: str,
        next_attempt_ms: int | None,
        disable_reason: str | None = None,
        subscription_id: str | None = None,
    ) -> None:
        """Log ``record`` and set its delivery's ``status`` ('pending' with
        ``next_attempt_ms``, 'delivered' or 'failed'); with ``disable_reason``, disable
        ``subscription_id`` in the same transaction."""
        with storage_errors("record a webhook attempt"):
            async with self._db.connection() as conn, conn.transaction():
                await conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (delivery_id, attempt, started_at, latency_ms,"
                        " status_code, error, outcome, address) VALUES (%s, %s,"
                        " to_timestamp(%s / 1000.0), %s, %s, %s, %s, %s)"
                        " ON CONFLICT DO NOTHING"
                    ).format(self._t("webhook_attempts")),
                    (
                        record.delivery_id, record.attempt, record.started_ms,
                        record.latency_ms, record.status_code, record.error,
                        record.outcome, record.address,
                    ),
                )  # fmt: skip
                await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET status = %s, attempts = attempts + 1,"
                        " scheduled = scheduled + 1,"
                        " next_attempt_at = COALESCE(to_timestamp(%s / 1000.0),"
                        " next_attempt_at), last_error = %s,"
                        " finished_at = CASE WHEN %s = 'pending' THEN NULL"
                        " ELSE to_timestamp(%s / 1000.0) END"
                        " WHERE delivery_id = %s"
                    ).format(self._t("webhook_deliveries")),
                    (
                        status, next_attempt_ms, record.error, status,
                        record.started_ms + record.latency_ms, record.delivery_id,
                    ),
                )  # fmt: skip
                if disable_reason is not None and subscription_id is not None:
                    await conn.execute(
                        sql.SQL(
                            "UPDATE {} SET enabled = false, disabled_reason = %s,"
                            " updated_at = now() WHERE subscription_id = %s"
                        ).format(self._t("webhook_subscriptions")),
                        (disable_reason, subscription_id),
                    )

    # -- the log and redelivery ---------------------------------------------------

    async def deliveries(
        self,
        *,
        subscription_id: str | None = None,
        status: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        limit: int = 1000,
    ) -> list[DeliveryRow]:
        """Deliveries (without bodies), oldest first, filtered by subscription, status
        and creation time [since, until)."""
        clause, params = _filters(subscription_id, status, since_ms, until_ms)
        return await self._fetch_rows(
            "read webhook deliveries",
            DeliveryRow,
            sql.SQL(
                "SELECT delivery_id, subscription_id, event_id, event_type, status,"
                " attempts, next_attempt_at, created_at, finished_at, last_error"
                " FROM {}{} ORDER BY delivery_id LIMIT %s"
            ).format(self._t("webhook_deliveries"), clause),
            [*params, limit],
        )

    async def delivery_counts(self) -> dict[str, dict[str, int]]:
        """Per subscription: how many deliveries are pending, delivered, failed."""
        rows = await self._fetch(
            "count webhook deliveries",
            sql.SQL(
                "SELECT subscription_id, status, count(*) FROM {}"
                " GROUP BY subscription_id, status"
            ).format(self._t("webhook_deliveries")),
        )
        out: dict[str, dict[str, int]] = {}
        for sid, status, n in rows:
            counts = out.setdefault(sid, dict.fromkeys(_STATUSES, 0))
            counts[status] = int(n)
        return out

    async def delivery_body(self, delivery_id: int) -> str | None:
        rows = await self._fetch(
            "read a webhook delivery",
            sql.SQL("SELECT body FROM {} WHERE delivery_id = %s").format(
                self._t("webhook_deliveries")
            ),
            (delivery_id,),
        )
        return str(rows[0][0]) if rows else None

    async def attempts(self, delivery_id: int) -> list[AttemptRow]:
        return await self._fetch_rows(
            "read webhook attempts",
            AttemptRow,
            sql.SQL(
                "SELECT delivery_id, attempt, started_at, latency_ms, status_code,"
                " error, outcome, address FROM {} WHERE delivery_id = %s"
                " ORDER BY attempt"
            ).format(self._t("webhook_attempts")),
            (delivery_id,),
        )

    async def redeliver(
        self,
        now_ms: int,
        *,
        delivery_ids: Sequence[int] = (),
        subscription_id: str | None = None,
        status: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> int:
        """Queue deliveries again, due now, with a fresh schedule and the same
        webhook-id; the number queued. Give ids, or filters (a subscription, a
        status, a creation-time range); with neither nothing is queued."""
        if delivery_ids:
            clause: sql.Composable = sql.SQL(" WHERE delivery_id = ANY(%s)")
            params: list[Any] = [list(delivery_ids)]
        else:
            clause, params = _filters(subscription_id, status, since_ms, until_ms)
            if not params:
                return 0
        with storage_errors("redeliver webhooks"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET status = 'pending', scheduled = 0,"
                        " next_attempt_at = to_timestamp(%s / 1000.0),"
                        " finished_at = NULL{}"
                    ).format(self._t("webhook_deliveries"), clause),
                    [now_ms, *params],
                )
                return cur.rowcount

    async def queue_one(self, delivery: NewDelivery, *, now_ms: int) -> int:
        """Queue one delivery outside the consumer (a test ping); its id."""
        with storage_errors("queue a webhook delivery"):
            async with self._db.connection() as conn:
                await _insert_deliveries(
                    conn, self._t("webhook_deliveries"), [delivery], now_ms
                )
                cur = await conn.execute(
                    sql.SQL(
                        "SELECT delivery_id FROM {} WHERE subscription_id = %s"
                        " AND event_id = %s"
                    ).format(self._t("webhook_deliveries")),
                    (delivery.subscription_id, delivery.event_id),
                )
                row = await cur.fetchone()
                assert row is not None
                return int(row[0])

    # -- the API: every read and write within the caller's scope, in SQL ---------

    async def find_subscriptions(
        self, scope: Scope, *, limit: int, after: str | None = None
    ) -> list[Subscription]:
        """Subscriptions within ``scope`` (an enterprise: its own; an operator: its
        park's), by id, at most ``limit``, after the id ``after``."""
        conds, params = _sub_scope(scope)
        if after is not None:
            conds.append(sql.SQL("subscription_id > %s"))
            params.append(after)
        rows = await self._fetch(
            "read webhook subscriptions",
            sql.SQL("SELECT {} FROM {}{} ORDER BY subscription_id LIMIT %s").format(
                sql.SQL(_SUBSCRIPTION_COLUMNS),
                self._t("webhook_subscriptions"),
                _where(conds),
            ),
            [*params, limit],
        )
        return [_sub(r) for r in rows]

    async def subscription_within(
        self, scope: Scope, subscription_id: str
    ) -> Subscription | None:
        conds, params = _sub_scope(scope)
        conds.append(sql.SQL("subscription_id = %s"))
        rows = await self._fetch(
            "read webhook subscription",
            sql.SQL("SELECT {} FROM {}{}").format(
                sql.SQL(_SUBSCRIPTION_COLUMNS),
                self._t("webhook_subscriptions"),
                _where(conds),
            ),
            [*params, subscription_id],
        )
        return _sub(rows[0]) if rows else None

    async def delivery_counts_within(
        self, scope: Scope, subscription_ids: Sequence[str]
    ) -> dict[str, dict[str, int]]:
        """Per subscription of ``subscription_ids`` within ``scope``: how many
        deliveries are pending, delivered, failed."""
        rows = await self._fetch(
            "count webhook deliveries",
            sql.SQL(
                "SELECT subscription_id, status, count(*) FROM {}"
                " WHERE subscription_id = ANY(%s) AND {}"
                " GROUP BY subscription_id, status"
            ).format(self._t("webhook_deliveries"), self._owned(scope)),
            [list(subscription_ids), *_sub_scope(scope)[1]],
        )
        out = {sid: dict.fromkeys(_STATUSES, 0) for sid in subscription_ids}
        for sid, status, n in rows:
            out[sid][status] = int(n)
        return out

    async def find_deliveries(
        self,
        scope: Scope,
        *,
        subscription_id: str | None = None,
        status: str | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> list[DeliveryRow]:
        """Deliveries of subscriptions within ``scope``, oldest first, after the
        delivery id ``after``."""
        conds: list[sql.Composable] = [self._owned(scope)]
        params: list[Any] = list(_sub_scope(scope)[1])
        for cond, value in (
            ("subscription_id = %s", subscription_id),
            ("status = %s", status),
            ("created_at >= to_timestamp(%s / 1000.0)", since_ms),
            ("created_at < to_timestamp(%s / 1000.0)", until_ms),
        ):
            if value is not None:
                conds.append(sql.SQL(cond))
                params.append(value)
        if after is not None:
            conds.append(sql.SQL("delivery_id > %s"))
            params.append(after)
        return await self._fetch_rows(
            "read webhook deliveries",
            DeliveryRow,
            sql.SQL(
                "SELECT delivery_id, subscription_id, event_id, event_type, status,"
                " attempts, next_attempt_at, created_at, finished_at, last_error"
                " FROM {} WHERE {} ORDER BY delivery_id LIMIT %s"
            ).format(self._t("webhook_deliveries"), sql.SQL(" AND ").join(conds)),
            [*params, limit],
        )

    async def delivery_within(
        self, scope: Scope, delivery_id: int
    ) -> DeliveryRow | None:
        rows = await self._fetch_rows(
            "read a webhook delivery",
            DeliveryRow,
            sql.SQL(
                "SELECT delivery_id, subscription_id, event_id, event_type, status,"
                " attempts, next_attempt_at, created_at, finished_at, last_error"
                " FROM {} WHERE delivery_id = %s AND {}"
            ).format(self._t("webhook_deliveries"), self._owned(scope)),
            [delivery_id, *_sub_scope(scope)[1]],
        )
        return rows[0] if rows else None

    async def attempts_within(
        self, scope: Scope, delivery_id: int
    ) -> list[AttemptRow] | None:
        """Every attempt of a delivery within ``scope``; None if there is no such
        delivery within it."""
        if await self.delivery_within(scope, delivery_id) is None:
            return None
        return await self.attempts(delivery_id)

    async def redeliver_within(
        self, scope: Scope, delivery_ids: Sequence[int], now_ms: int
    ) -> list[int]:
        """Queue the deliveries of ``delivery_ids`` within ``scope`` again (see
        :meth:`redeliver`); the ids queued (those outside the scope are not)."""
        with storage_errors("redeliver webhooks"):
            async with self._db.connection() as conn:
                cur = await conn.execute(
                    sql.SQL(
                        "UPDATE {} SET status = 'pending', scheduled = 0,"
                        " next_attempt_at = to_timestamp(%s / 1000.0),"
                        " finished_at = NULL WHERE delivery_id = ANY(%s) AND {}"
                        " RETURNING delivery_id"
                    ).format(self._t("webhook_deliveries"), self._owned(scope)),
                    [now_ms, list(delivery_ids), *_sub_scope(scope)[1]],
                )
                return sorted(int(d) for (d,) in await cur.fetchall())

    def _owned(self, scope: Scope) -> sql.Composable:
        """A condition on a delivery row: its subscription is within ``scope``
        (parameters: ``_sub_scope(scope)[1]``)."""
        conds, _ = _sub_scope(scope)
        if not conds:
            return sql.SQL("true")
        return sql.SQL("subscription_id IN (SELECT subscription_id FROM {}{})").format(
            self._t("webhook_subscriptions"), _where(conds)
        )


async def _insert_deliveries(
    conn: Conn, table: sql.Identifier, deliveries: Sequence[NewDelivery], due_ms: int
) -> int:
    new = 0
    for d in deliveries:
        cur = await conn.execute(
            sql.SQL(
                "INSERT INTO {} (subscription_id, event_id, event_type, order_key,"
                " event_at, body, next_attempt_at) VALUES (%s, %s, %s, %s,"
                " to_timestamp(%s / 1000.0), %s, to_timestamp(%s / 1000.0))"
                " ON CONFLICT (subscription_id, event_id) DO NOTHING"
            ).format(table),
            (
                d.subscription_id, d.event_id, d.event_type, d.order_key, d.event_ms,
                d.body, due_ms,
            ),
        )  # fmt: skip
        new += cur.rowcount
    return new


def _filters(
    subscription_id: str | None,
    status: str | None,
    since_ms: int | None,
    until_ms: int | None,
) -> tuple[sql.Composable, list[Any]]:
    where: list[sql.Composable] = []
    params: list[Any] = []
    if subscription_id is not None:
        where.append(sql.SQL("subscription_id = %s"))
        params.append(subscription_id)
    if status is not None:
        where.append(sql.SQL("status = %s"))
        params.append(status)
    if since_ms is not None:
        where.append(sql.SQL("created_at >= to_timestamp(%s / 1000.0)"))
        params.append(since_ms)
    if until_ms is not None:
        where.append(sql.SQL("created_at < to_timestamp(%s / 1000.0)"))
        params.append(until_ms)
    if not where:
        return sql.SQL(""), params
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where), params


def _sub_scope(scope: Scope) -> tuple[list[sql.Composable], list[Any]]:
    """The scope's conditions on a subscription row: its park, its enterprise."""
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
