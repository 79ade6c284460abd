"""Storage of telemetry, Kafka offsets and rollups: one API, two SQL dialects.

* :class:`Storage` — open, migrate, write (rows + offsets in one transaction), read.
* Dialects: ``timescale`` (hypertable, continuous aggregates, compression and
  retention policies) and ``postgres`` (daily range partitions, rollup tables
  maintained by the write path, retention by dropping partitions), chosen by the
  ``database.dialect`` setting, where ``auto`` detects the TimescaleDB extension.
* Alerts: the rule engine's alert events, alerts and checkpoints (:mod:`.alerts`).
* Migrations: ``ingest/storage/migrations/<dialect>/NNNN_name.sql``.
"""

from ingest.storage.alerts import AlertEventRow, RuleState
from ingest.storage.model import (
    AppliedMigration,
    Dialect,
    KafkaOffset,
    ReadingKey,
    RollupLevel,
    RollupRow,
    StorageInfo,
    TelemetryRow,
    WriteResult,
    rows_from_batch,
)
from ingest.storage.store import Storage

__all__ = [
    "AlertEventRow",
    "AppliedMigration",
    "Dialect",
    "KafkaOffset",
    "ReadingKey",
    "RollupLevel",
    "RollupRow",
    "RuleState",
    "Storage",
    "StorageInfo",
    "TelemetryRow",
    "WriteResult",
    "rows_from_batch",
]
