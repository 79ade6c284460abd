-- API keys and the audit log (the platform API, api/).
--
-- A key is shown once at creation: ``spk_<id>_<secret>``. Only the keyed hash of
-- the secret is stored (HMAC-SHA256 with the platform's key pepper, a secret from
-- the environment: a leaked table without the pepper verifies nothing). The id and
-- the "spk_" prefix make a leaked key easy to find in logs and revoke. The tenant
-- scope (role, park, enterprise) is the key's, never the request's.
CREATE TABLE api_keys (
    id            text        PRIMARY KEY,
    secret_hash   bytea       NOT NULL,
    name          text        NOT NULL,
    role          text        NOT NULL
        CHECK (role IN ('operator', 'enterprise', 'regulator')),
    park          text,
    enterprise    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((role = 'enterprise') = (enterprise IS NOT NULL)),
    CHECK (role <> 'enterprise' OR park IS NOT NULL),
    CHECK (role <> 'regulator' OR park IS NULL)
);

-- Every write and every export through the API: who, what, when, from where.
-- Append-only by the platform (nothing updates or deletes it).
CREATE TABLE audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    key_id      text        NOT NULL,
    role        text        NOT NULL,
    park        text,
    enterprise  text,
    action      text        NOT NULL,
    target      text        NOT NULL,
    remote      text,
    detail      jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
