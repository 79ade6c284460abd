-- Webhook signing secrets encrypted at rest (storage/secretbox.py).
--
-- ``secret`` holds base64(nonce || AES-256-GCM ciphertext || tag) and ``key_id``
-- names the key that opens it (derived from SMARTPARK_WEBHOOKS__SECRET_KEY or one
-- of SMARTPARK_WEBHOOKS__OLD_SECRET_KEYS). A NULL key_id marks a secret still in
-- clear from before this migration: it keeps signing as it is until the notifier
-- starts or ``smartpark webhooks reencrypt`` runs, which encrypt it in place (no
-- secret is dropped or changed, receivers notice nothing).
ALTER TABLE webhook_secrets ADD COLUMN key_id text;

-- The primary key included the secret itself; a ciphertext changes on every
-- re-encryption, so rows get an id of their own.
ALTER TABLE webhook_secrets DROP CONSTRAINT webhook_secrets_pkey;
ALTER TABLE webhook_secrets ADD COLUMN secret_id bigserial PRIMARY KEY;
CREATE INDEX webhook_secrets_subscription ON webhook_secrets (subscription_id);
