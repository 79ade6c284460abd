"""The database layer of the whole platform: one API, two SQL dialects.

* :class:`Storage` — one pool over one schema: open, resolve the dialect, migrate,
  describe (``smartpark db``, :mod:`storage.cli`); its stores, one per concern, each
  returning typed rows:

  - ``storage.telemetry`` (:class:`TelemetryStore`) — readings and their Kafka
    offsets in one transaction, reads, rollups, partitions and retention;
  - ``storage.offsets`` (:class:`OffsetStore`) — consumer positions;
  - ``storage.alerts`` (:class:`AlertStore`) — alert events, alerts, rule-engine
    checkpoints;
  - ``storage.webhooks`` (:class:`WebhookStore`) — subscriptions, secrets, the
    delivery outbox and its log.

* Dialects: ``timescale`` (hypertable, continuous aggregates, compression and
  retention policies) and ``postgres`` (daily range partitions, rollup tables
  refreshed from the write path's log, retention by dropping partitions), chosen by
  the ``database.dialect`` setting, where ``auto`` detects the TimescaleDB extension.
* Migrations: ``storage/migrations/common/NNNN_name.sql`` where both dialects agree,
  ``storage/migrations/<dialect>/NNNN_name.sql`` where they differ.

Imports: the core (:mod:`smartpark`) and psycopg; nothing of the services.
"""

from storage.alerts import AlertEventRow, AlertRow, AlertStore, RuleState
from storage.base import Conn, Database
from storage.model import (
    AppliedMigration,
    Dialect,
    EpochRow,
    KafkaOffset,
    ReadingKey,
    RollupLevel,
    RollupRow,
    StorageInfo,
    TelemetryRow,
    WriteResult,
    rows_from_batch,
)
from storage.offsets import OffsetStore
from storage.store import Storage
from storage.telemetry import TelemetryStore
from storage.webhooks import (
    AttemptRecord,
    AttemptRow,
    DeliveryRow,
    DueDelivery,
    NewDelivery,
    Subscription,
    WebhookStore,
)

__all__ = [
    "AlertEventRow",
    "AlertRow",
    "AlertStore",
    "AppliedMigration",
    "AttemptRecord",
    "AttemptRow",
    "Conn",
    "Database",
    "DeliveryRow",
    "Dialect",
    "DueDelivery",
    "EpochRow",
    "KafkaOffset",
    "NewDelivery",
    "OffsetStore",
    "ReadingKey",
    "RollupLevel",
    "RollupRow",
    "RuleState",
    "Storage",
    "StorageInfo",
    "Subscription",
    "TelemetryRow",
    "TelemetryStore",
    "WebhookStore",
    "WriteResult",
    "rows_from_batch",
]
