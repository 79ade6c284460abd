-- Counter discontinuities (smartpark.wire ``reset``): 'rollover' or 'replacement' on
-- a counter reading that does not continue from the previous reading of its series,
-- NULL on every other row (all rows stored before this migration included).
--
-- TimescaleDB allows adding a nullable column to a hypertable with compression
-- enabled, compressed chunks included (no decompression: the column reads as NULL
-- there). Verified on the PGlite build (timescaledb 2.23.0-dev) by
-- tests/integration/test_storage_timescale.py, with a compressed chunk present.
-- The continuous aggregates name their columns, so they are unaffected.
-- The CHECK is NOT VALID: no scan of existing chunks, enforced for new rows, also
-- those inserted into compressed chunks.

ALTER TABLE telemetry ADD COLUMN reset text;
ALTER TABLE telemetry ADD CONSTRAINT telemetry_reset_kind
    CHECK (reset IN ('rollover', 'replacement')) NOT VALID;
