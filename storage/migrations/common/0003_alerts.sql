-- Alerts raised by the rule engine (rules/), and the engine's checkpoints.
--
-- alert_events: every event of every alert (opened, resolved, revised,
-- insufficient_data), keyed by its deterministic event_id, so a batch processed
-- twice stores nothing twice. ``body`` is the event exactly as produced to the
-- alerts topic; ``produced`` is the transactional outbox flag: an event is written
-- here in the same transaction as the checkpoint that follows it, then produced,
-- then marked; a runner restarted in between produces it again (the consumer
-- de-duplicates by event_id).
CREATE TABLE alert_events (
    event_id      text        PRIMARY KEY,
    alert_id      text        NOT NULL,
    kind          text        NOT NULL
        CHECK (kind IN ('opened', 'resolved', 'revised', 'insufficient_data')),
    pack          text        NOT NULL,
    rule_id       text        NOT NULL,
    rule_version  text        NOT NULL,
    severity      text        NOT NULL,
    park          text        NOT NULL,
    enterprise    text,
    device        text,
    metric        text,
    at            timestamptz NOT NULL,
    body          jsonb       NOT NULL,
    produced      boolean     NOT NULL DEFAULT false,
    stored_at     timestamptz NOT NULL DEFAULT now(),
    seq           bigserial   NOT NULL  -- the order events were stored in
);
CREATE INDEX alert_events_alert ON alert_events (alert_id, seq);
CREATE INDEX alert_events_unproduced ON alert_events (seq) WHERE NOT produced;

-- alerts: one row per alert, its current state. The engine opens and resolves;
-- acknowledging is a person's act (the API), kept apart from the engine's fields.
CREATE TABLE alerts (
    alert_id         text        PRIMARY KEY,
    pack             text        NOT NULL,
    rule_id          text        NOT NULL,
    rule_version     text        NOT NULL,
    severity         text        NOT NULL,
    park             text        NOT NULL,
    enterprise       text,
    device           text,
    metric           text,
    status           text        NOT NULL
        CHECK (status IN ('open', 'acknowledged', 'resolved')),
    opened_at        timestamptz NOT NULL,
    resolved_at      timestamptz,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    last_event_id    text        NOT NULL
);
CREATE INDEX alerts_open ON alerts (park, enterprise) WHERE status <> 'resolved';

-- The engine's state per consumed partition, with the next offset it covers:
-- written in the same transaction as the alert events of the batch, so a crash or a
-- partition moving to another runner resumes without missing or repeating an event.
CREATE TABLE rule_state (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    pack            text        NOT NULL,
    pack_version    text        NOT NULL,
    next_offset     bigint      NOT NULL CHECK (next_offset >= 0),
    snapshot        jsonb       NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
