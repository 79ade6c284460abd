"""Plain data types of the storage API, shared by both SQL dialects.

Rows are tuples (``NamedTuple``) rather than dataclasses because the write path hands
them to ``COPY`` as they are: one allocation per row, no conversion on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import NamedTuple

from smartpark.wire import TelemetryBatch

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Dialect(StrEnum):
    """The SQL dialect of a schema (recorded in ``schema_migrations``)."""

    POSTGRES = "postgres"
    TIMESCALE = "timescale"


class RollupLevel(StrEnum):
    """Rollup resolutions; the value is the suffix of the rollup relation's name."""

    MINUTE = "1m"
    HOUR = "1h"
    DAY = "1d"


class TelemetryRow(NamedTuple):
    """One stored reading as the platform reads it: its series spelled out (stored
    once, in ``series``; a ``telemetry`` row holds the series' integer id)."""

    time: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    value: float
    quality: str
    seq: int
    # Counter discontinuity from the wire (smartpark.wire.Reset value), else None.
    reset: str | None = None
    data_type: str = "realtime"  # smartpark.wire.DataType value
    stat: str = "value"  # smartpark.wire.Stat value


def rows_from_batch(batch: TelemetryBatch) -> list[TelemetryRow]:
    """The rows of one wire batch (event time converted to an aware UTC datetime)."""
    park, enterprise, device = batch.park, batch.enterprise, batch.device
    # The readings of one poll share their timestamp: convert each one once.
    times: dict[int, datetime] = {}
    rows = []
    for r in batch.readings:
        t = times.get(r.ts_ms)
        if t is None:
            t = times[r.ts_ms] = _EPOCH + timedelta(milliseconds=r.ts_ms)
        rows.append(
            TelemetryRow(
                t,
                park,
                enterprise,
                device,
                r.metric,
                r.value,
                r.quality,
                r.seq,
                r.reset,
                r.data_type,
                r.stat,
            )
        )
    return rows


@dataclass(frozen=True, slots=True)
class EpochRow:
    """The first stored poll of a device under one edge outbox epoch."""

    park: str
    enterprise: str
    device: str
    epoch: str
    first_seq: int
    first_time: datetime


class ReadingKey(NamedTuple):
    """What identifies a reading end to end, for gap and duplicate checks."""

    device: str
    seq: int
    metric: str


@dataclass(frozen=True, slots=True)
class KafkaOffset:
    """The next offset to consume for (group, topic, partition)."""

    group: str
    topic: str
    partition: int
    next_offset: int


@dataclass(frozen=True, slots=True)
class WriteResult:
    """Outcome of one committed write: ``inserted + duplicates == rows given``."""

    inserted: int
    duplicates: int


@dataclass(frozen=True, slots=True)
class RollupRow:
    bucket: datetime
    park: str
    enterprise: str
    device: str
    metric: str
    n: int
    sum: float
    min: float
    max: float
    data_type: str = "realtime"
    stat: str = "value"

    @property
    def mean(self) -> float:
        return self.sum / self.n


@dataclass(frozen=True, slots=True)
class AppliedMigration:
    version: int
    name: str
    dialect: Dialect
    applied_at: datetime


@dataclass(frozen=True, slots=True)
class StorageInfo:
    """What ``smartpark db info`` shows."""

    schema: str
    dialect: Dialect
    server_version: str
    timescaledb_version: str | None
    migrations: tuple[AppliedMigration, ...]
    pending: tuple[str, ...]
    row_counts: dict[str, int]
    partitions: tuple[str, ...]
