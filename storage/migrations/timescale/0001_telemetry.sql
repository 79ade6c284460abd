-- Telemetry, Kafka offsets and rollups for TimescaleDB.
--
-- Runs in one transaction with search_path = <target schema>, <extension schema>.
--
-- Verified on the PGlite build (timescaledb 2.23.0-dev, PostgreSQL 17.5 in WASM) by
-- tests/integration/test_storage_timescale.py: hypertable with 1-day chunks,
-- ON CONFLICT DO NOTHING (also into compressed chunks), hierarchical continuous
-- aggregates 1m -> 1h -> 1d with real-time aggregation, refresh policies, compression
-- (segmentby device, metric) and compression + retention policies, all created inside
-- one transaction; policies run there only through CALL run_job(id) (no background
-- workers). Not verifiable there: the scheduler running policies on its own, and
-- COPY FROM STDIN (the sink uses bulk_method=insert on PGlite).
-- The continuous-aggregate, compression and policy functions need the TSL module
-- ("timescale" licence); an Apache-only build refuses them with SQLSTATE 0A000.

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
);
SELECT create_hypertable('telemetry', by_range('time', INTERVAL '1 day'));
CREATE INDEX telemetry_park_time ON telemetry (park, enterprise, time);

CREATE TABLE kafka_offsets (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Real-time aggregation (materialized_only = false): queries see rows newer than the
-- last refresh too, so dashboards do not lag the refresh schedule.
CREATE MATERIALIZED VIEW telemetry_1m
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 minute', time) AS bucket,
       park, enterprise, device, metric,
       count(*)::bigint AS n, sum(value) AS sum, min(value) AS min, max(value) AS max
FROM telemetry
GROUP BY 1, park, enterprise, device, metric
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry_1h
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 hour', bucket) AS bucket,
       park, enterprise, device, metric,
       sum(n)::bigint AS n, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM telemetry_1m
GROUP BY 1, park, enterprise, device, metric
WITH NO DATA;

CREATE MATERIALIZED VIEW telemetry_1d
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT time_bucket(INTERVAL '1 day', bucket) AS bucket,
       park, enterprise, device, metric,
       sum(n)::bigint AS n, sum(sum) AS sum, min(min) AS min, max(max) AS max
FROM telemetry_1h
GROUP BY 1, park, enterprise, device, metric
WITH NO DATA;

-- Late data older than start_offset is not re-materialised by the policies; a replay
-- of old history calls refresh_continuous_aggregate for its range
-- (Storage.refresh_rollups).
SELECT add_continuous_aggregate_policy('telemetry_1m',
    start_offset => INTERVAL '3 days', end_offset => INTERVAL '1 minute',
    schedule_interval => INTERVAL '1 minute');
SELECT add_continuous_aggregate_policy('telemetry_1h',
    start_offset => INTERVAL '7 days', end_offset => INTERVAL '1 hour',
    schedule_interval => INTERVAL '15 minutes');
SELECT add_continuous_aggregate_policy('telemetry_1d',
    start_offset => INTERVAL '35 days', end_offset => INTERVAL '1 day',
    schedule_interval => INTERVAL '1 hour');

-- Chunks are compressed once no more late data is expected; segmenting by the series
-- keeps per-device reads fast on compressed chunks.
ALTER TABLE telemetry SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'device, metric',
    timescaledb.compress_orderby = 'time DESC'
);
SELECT add_compression_policy('telemetry', compress_after => INTERVAL '7 days');

-- Raw readings are kept three years (regulator replay); the rollups outlive them.
SELECT add_retention_policy('telemetry', drop_after => INTERVAL '1095 days');
