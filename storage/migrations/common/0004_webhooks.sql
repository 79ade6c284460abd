-- Alert webhooks (notifier): subscriptions, their signing secrets, the
-- delivery outbox and the log of every attempt.

-- Acknowledging an alert is an event of its life too: enterprises subscribe to it.
ALTER TABLE alert_events DROP CONSTRAINT alert_events_kind_check;
ALTER TABLE alert_events ADD CONSTRAINT alert_events_kind_check
    CHECK (kind IN ('opened', 'acknowledged', 'resolved', 'revised',
                    'insufficient_data'));

-- One endpoint of an enterprise (enterprise set: its own events) or of a park's
-- operators (enterprise NULL: every event of the park). ``event_types`` are the
-- webhook types it receives (alert.opened, device.offline...). A receiver answering
-- 410 Gone, or an operator, disables it: nothing new is queued for it and what is
-- queued waits until it is enabled again.
CREATE TABLE webhook_subscriptions (
    subscription_id  text        PRIMARY KEY,
    park             text        NOT NULL,
    enterprise       text,
    url              text        NOT NULL,
    event_types      text[]      NOT NULL,
    description      text        NOT NULL DEFAULT '',
    enabled          boolean     NOT NULL DEFAULT true,
    disabled_reason  text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions_scope ON webhook_subscriptions (park, enterprise);

-- Signing secrets. The current one has no expiry; a rotation gives the old one an
-- expiry (the overlap), and until then every request is signed with both. They are
-- kept in clear because signing needs them: protect the database accordingly.
CREATE TABLE webhook_secrets (
    subscription_id  text        NOT NULL
        REFERENCES webhook_subscriptions ON DELETE CASCADE,
    secret           text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at       timestamptz,
    PRIMARY KEY (subscription_id, secret)
);

-- The delivery outbox: one row per (subscription, event), written in the same
-- transaction as the alerts-topic offsets it covers, so an event is queued exactly
-- once per endpoint. ``body`` is the exact bytes sent on every attempt; the event id
-- is the webhook-id header. Deliveries of one ``order_key`` (an alert) to one
-- subscription go out in ``delivery_id`` order: a resolve never before its open.
CREATE TABLE webhook_deliveries (
    delivery_id      bigserial   PRIMARY KEY,
    subscription_id  text        NOT NULL
        REFERENCES webhook_subscriptions ON DELETE CASCADE,
    event_id         text        NOT NULL,
    event_type       text        NOT NULL,
    order_key        text        NOT NULL,
    event_at         timestamptz NOT NULL,
    body             text        NOT NULL,
    status           text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,  -- over the delivery's life
    scheduled        integer     NOT NULL DEFAULT 0,  -- attempts since (re)queued
    next_attempt_at  timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    last_error       text,
    UNIQUE (subscription_id, event_id)
);
CREATE INDEX webhook_deliveries_due
    ON webhook_deliveries (subscription_id, delivery_id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_pending
    ON webhook_deliveries (subscription_id, order_key, delivery_id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at);

-- Every attempt, as the operator and the enterprise need it in a dispute.
CREATE TABLE webhook_attempts (
    delivery_id  bigint      NOT NULL
        REFERENCES webhook_deliveries ON DELETE CASCADE,
    attempt      integer     NOT NULL,
    started_at   timestamptz NOT NULL,
    latency_ms   integer     NOT NULL,
    status_code  integer,
    error        text,
    outcome      text        NOT NULL,
    address      text,
    PRIMARY KEY (delivery_id, attempt)
);
