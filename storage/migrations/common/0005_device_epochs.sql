-- Edge outbox epochs: a device's sequence numbers count within the epoch of the
-- outbox they came from (smartpark.wire, "epoch"). A replaced or deleted outbox
-- starts again at seq 1 under a new epoch; this table records when each epoch of
-- each device was first stored, so a gap or duplicate check reads
-- (device, epoch, seq) and never takes a restart at 1 for a replay or a gap.
-- Written by the sink in the same transaction as the rows, once per new epoch.
CREATE TABLE device_epochs (
    park        text        NOT NULL,
    enterprise  text        NOT NULL,
    device      text        NOT NULL,
    epoch       text        NOT NULL,
    first_seq   bigint      NOT NULL,
    first_time  timestamptz NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (device, epoch, park, enterprise)
);
