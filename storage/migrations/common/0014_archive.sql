-- The sealed archive (storage/archive): the index of its manifests and the days
-- that left the hot database.
--
-- The manifests themselves (signed, hash-chained) live beside their segments in the
-- archive's storage (SMARTPARK_ARCHIVE__URL); this table indexes them so the chain
-- head of an enterprise is found without listing the storage, and so reads know
-- which days to take from the archive. ``smartpark archive verify`` checks each row
-- against the manifest file it names, so the index is not trusted on its own.
--
-- Append-only: a manifest is never rewritten. ``position`` numbers an enterprise's
-- manifests 1, 2, ... in sealing order (the order of its hash chain).
CREATE TABLE archive_manifests (
    enterprise       text        NOT NULL,
    position         integer     NOT NULL CHECK (position >= 1),
    park             text        NOT NULL,
    day              date        NOT NULL,  -- the local day in the park's time zone
    time_zone        text        NOT NULL,
    kind             text        NOT NULL CHECK (kind IN ('seal', 'amendment')),
    row_count        bigint      NOT NULL CHECK (row_count >= 0),
    segment_path     text        NOT NULL,  -- relative to the archive's root
    segment_sha256   text        NOT NULL,
    manifest_path    text        NOT NULL,
    manifest_sha256  text        NOT NULL,  -- SHA-256 of the manifest file's bytes
    previous_sha256  text,                  -- NULL only at position 1
    key_id           text        NOT NULL,
    created_at       timestamptz NOT NULL,
    PRIMARY KEY (enterprise, position),
    CHECK ((position = 1) = (previous_sha256 IS NULL))
);
-- A day is sealed once; late rows become amendments of it.
CREATE UNIQUE INDEX archive_manifests_seal ON archive_manifests (enterprise, day)
    WHERE kind = 'seal';
CREATE INDEX archive_manifests_day ON archive_manifests (enterprise, day, position);

-- Days whose raw rows left the hot database (``smartpark archive retain``) after
-- they were sealed and verified: reads take them from the archive at
-- ``archive_url`` (recorded so that reads need no archive setting). Rollup rows
-- are kept in the database.
CREATE TABLE archive_evictions (
    enterprise   text        NOT NULL,
    day          date        NOT NULL,
    park         text        NOT NULL,
    start_at     timestamptz NOT NULL,  -- the local day as a UTC range [start, end)
    end_at       timestamptz NOT NULL,
    row_count    bigint      NOT NULL,
    archive_url  text        NOT NULL,
    evicted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (enterprise, day),
    CHECK (end_at > start_at)
);
CREATE INDEX archive_evictions_range ON archive_evictions (start_at, end_at);
