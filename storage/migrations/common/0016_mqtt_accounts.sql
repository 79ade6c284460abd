-- MQTT accounts of the broker (smartpark mqtt, api/mqtt/): one per enterprise
-- gateway, and the bridges'.
--
-- The password is shown once when it is set and never stored: only its hash, in
-- Mosquitto's own PBKDF2-SHA512 form ("$7$<iterations>$<salt>$<hash>"), which the
-- broker's password file is written from. The hash is kept so the files can be
-- rewritten whole at any time (one account rotated, a broker rebuilt) without
-- touching the other accounts' passwords. A gateway account names its enterprise;
-- its park is the enterprise's (an enterprise never changes park), read when the
-- files are written, so the ACL follows the registry. Rows are retired, never
-- deleted: a retired account is left out of the files and its name stays taken.
CREATE TABLE mqtt_accounts (
    username         text        PRIMARY KEY,
    kind             text        NOT NULL CHECK (kind IN ('gateway', 'bridge')),
    enterprise       text        REFERENCES enterprises (id),
    gateway          text,
    password_hash    text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    password_set_at  timestamptz NOT NULL DEFAULT now(),
    retired_at       timestamptz,
    CHECK (username NOT LIKE '%:%'),  -- the password file's separator
    CHECK (
        (kind = 'gateway' AND enterprise IS NOT NULL
            AND username = gateway || '@' || enterprise)
        OR (kind = 'bridge' AND enterprise IS NULL AND gateway IS NULL)
    )
);
