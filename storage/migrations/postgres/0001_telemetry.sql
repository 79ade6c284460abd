-- Telemetry, Kafka offsets and rollups for plain PostgreSQL (no TimescaleDB).
--
-- Runs with search_path set to the target schema only: every name below lands there.
-- Verified on PostgreSQL 15 (the local services) by tests/integration/test_storage_*.
--
-- telemetry is range-partitioned by day (UTC). There is deliberately no DEFAULT
-- partition: a row for a missing day would land in it and later block creating that
-- day's partition. The storage layer creates daily partitions ahead of time
-- (today-1 .. today+7, at migrate and on maintenance) and on demand for any other day
-- a batch contains, so a late or replayed batch never fails for lack of a partition.
-- Retention drops whole partitions.

CREATE TABLE telemetry (
    time        timestamptz      NOT NULL,
    park        text             NOT NULL,
    enterprise  text             NOT NULL,
    device      text             NOT NULL,
    metric      text             NOT NULL,
    value       double precision NOT NULL,
    quality     char(1)          NOT NULL DEFAULT 'N',
    seq         bigint           NOT NULL,
    PRIMARY KEY (device, metric, time)
) PARTITION BY RANGE (time);

-- Park- and enterprise-wide queries (Grafana, coverage) scan by time within a park.
CREATE INDEX telemetry_park_time ON telemetry (park, enterprise, time);

-- The next offset to consume, written in the same transaction as the rows it covers:
-- after a crash the sink resumes exactly where the committed rows end.
CREATE TABLE kafka_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Rollups: recomputed from the raw rows by the refresh (Storage.refresh_rollups, run
-- by the sink every few seconds) for the one-minute buckets the write path logged in
-- rollup_pending, in the same transaction as the rows. A recomputed bucket replaces
-- the old one, so redelivered, late or retried rows never count twice. Buckets are
-- date_bin() from the Unix epoch: the same boundaries as TimescaleDB's time_bucket()
-- for these widths. (Upserting the rollups inside the write transaction was measured
-- at three times the cost of the write itself; see storage/rollups.py.)
CREATE TABLE rollup_pending (
    bucket      timestamptz PRIMARY KEY
);

-- The refresh reads raw rows by time range; rows arrive roughly in time order, so a
-- BRIN index is enough and costs next to nothing on insert.
CREATE INDEX telemetry_time_brin ON telemetry USING brin (time);

CREATE TABLE telemetry_1m (
    bucket      timestamptz      NOT NULL,
    park        text             NOT NULL,
    enterprise  text             NOT NULL,
    device      text             NOT NULL,
    metric      text             NOT NULL,
    n           bigint           NOT NULL,
    sum         double precision NOT NULL,
    min         double precision NOT NULL,
    max         double precision NOT NULL,
    PRIMARY KEY (device, metric, bucket, park, enterprise)
);
CREATE INDEX telemetry_1m_bucket ON telemetry_1m (bucket);
CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING ALL);
CREATE TABLE telemetry_1d (LIKE telemetry_1m INCLUDING ALL);
