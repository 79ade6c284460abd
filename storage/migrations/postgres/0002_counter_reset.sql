-- Counter discontinuities (smartpark.wire ``reset``): 'rollover' or 'replacement' on
-- a counter reading that does not continue from the previous reading of its series,
-- NULL on every other row (all rows stored before this migration included).
--
-- A nullable column without a default is a catalogue change only: no rewrite and no
-- scan of the existing partitions, which it reaches through the partitioned parent.
-- The CHECK is NOT VALID so that adding it does not scan years of rows under an
-- ACCESS EXCLUSIVE lock; it still holds for every row written from now on, and the
-- existing rows are all NULL (VALIDATE CONSTRAINT can confirm that later under a
-- lock that does not block writes).

ALTER TABLE telemetry ADD COLUMN reset text;
ALTER TABLE telemetry ADD CONSTRAINT telemetry_reset_kind
    CHECK (reset IN ('rollover', 'replacement')) NOT VALID;
