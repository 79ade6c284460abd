-- Raw telemetry leaves the hot database only through the sealed archive
-- (``smartpark archive retain``). Plain PostgreSQL never had a retention policy in
-- the database: ``smartpark db maintain --retention-days`` now drops only the old
-- partitions the archive emptied (storage.partitions.drop_before). Nothing to
-- change here; the version keeps both dialects' migrations numbered alike (the
-- TimescaleDB dialect removes its 1095-day policy in its 0017).
SELECT 1;
