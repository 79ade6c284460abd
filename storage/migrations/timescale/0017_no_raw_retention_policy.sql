-- Raw telemetry leaves the hot database only through the sealed archive
-- (``smartpark archive retain``: a day goes once it is sealed and verified). The
-- retention policy of 0001/0006 dropped chunks older than 1095 days whether or not
-- their rows were archived, which could lose them; it is removed. Compression
-- keeps old chunks small meanwhile (about 6 bytes a reading, README).
SELECT remove_retention_policy('telemetry', if_exists => true);
