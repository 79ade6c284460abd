-- HJ 212 forwarding to regulator platforms (upstream/): the durable outbox of
-- every upstream platform.
--
-- One row is one data packet for one upstream: (outlet MN, CN, DataTime) with the
-- pollutant values it carries, ``fields``: {"a21026": {"Rtd": ["12.5", "N"]}}
-- (code → HJ 212 field → [value text, data flag]). Rows are written by the feed in
-- the same transaction as its Kafka offsets, so a restart never loses or repeats
-- one. A row never sent (``attempts`` = 0) takes the later readings of its key;
-- once sent, later readings of the key make a row of their own (a supplement
-- packet with the same DataTime). The sender sends each upstream's pending rows
-- in ``id`` order and marks a row ``acked`` only on the platform's 9014 reply: a
-- row is never dropped.
CREATE TABLE upstream_outbox (
    id             bigserial   PRIMARY KEY,
    upstream       text        NOT NULL,
    outlet         text        NOT NULL,
    mn             text        NOT NULL,
    cn             text        NOT NULL CHECK (cn IN ('2011', '2051', '2061', '2031')),
    data_time      text        NOT NULL,  -- yyyyMMddHHmmss in the outlet's zone
    fields         jsonb       NOT NULL,
    status         text        NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'acked')),
    attempts       integer     NOT NULL DEFAULT 0,  -- frames sent, resends included
    qn             text,                            -- QN of the last frame sent
    created_at     timestamptz NOT NULL DEFAULT now(),
    first_sent_at  timestamptz,
    acked_at       timestamptz,
    last_error     text
);
CREATE INDEX upstream_outbox_pending
    ON upstream_outbox (upstream, id) WHERE status = 'pending';
CREATE INDEX upstream_outbox_key ON upstream_outbox (upstream, mn, cn, data_time);
