-- Rule pack versions as they ran live, and regulator replay jobs (api/replay).
--
-- rule_packs: every version the live runner (rules/runner.py) ran, with the
-- SHA-256 of the file's bytes and its text, so a replay "with the version in force
-- at the time" runs exactly what ran. ``valid_from`` is when a runner started it,
-- ``valid_to`` when a runner switched to another version of the pack (NULL while
-- in force). A version is immutable: the same version with another hash is refused
-- by the runner. A version run again after another keeps its row and is reopened;
-- the version in force at a time is the one with the latest ``valid_from`` not
-- after it whose ``valid_to`` is NULL or after it (storage/rule_packs.py).
CREATE TABLE rule_packs (
    pack        text        NOT NULL,
    version     text        NOT NULL,
    sha256      text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    content     text        NOT NULL,
    valid_from  timestamptz NOT NULL,
    valid_to    timestamptz,
    PRIMARY KEY (pack, version),
    CHECK (valid_to IS NULL OR valid_to >= valid_from)
);
CREATE INDEX rule_packs_in_force ON rule_packs (pack, valid_from);

-- replay_jobs: one replay asked through the API, its progress and its result.
-- The result (events as JSON lines, the signed CSV report) is kept here so it
-- survives the API process; a job found 'running' or 'queued' when the API starts
-- is marked 'interrupted' (its task died with the process that ran it).
CREATE TABLE replay_jobs (
    id              text        PRIMARY KEY,
    status          text        NOT NULL
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'cancelled',
                          'interrupted')),
    key_id          text        NOT NULL,  -- the API key that asked for it
    request         jsonb       NOT NULL,  -- scope, range, pack choice
    rows_read       bigint      NOT NULL DEFAULT 0,
    rows_estimated  bigint,
    summary         jsonb,                 -- counts and the evidence, when done
    error           text,
    events          text,                  -- JSON lines, when done
    report          bytea,                 -- the CSV report, when done
    signature       bytea,                 -- its raw Ed25519 signature (64 bytes)
    created_at      timestamptz NOT NULL DEFAULT now(),
    started_at      timestamptz,
    finished_at     timestamptz
);
CREATE INDEX replay_jobs_active ON replay_jobs (status)
    WHERE status IN ('queued', 'running');
