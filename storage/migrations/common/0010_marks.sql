-- Data marks: periods of a device's data marked by the monitoring practice
-- (calibration, maintenance, fault, start-up, shutdown, ...), as evidence.
--
-- Automatic marks come from the data itself (HJ 212 flags and equipment states,
-- derived from stored telemetry, never written here); manual marks are entered
-- through the API by the enterprise or an operator, and reviewed by a regulator.
--
-- Append-only. A mark is never edited in place: a correction is a new mark that
-- supersedes the old one (``supersedes``), and a regulator's review is a new row in
-- ``mark_reviews``. Nothing updates or deletes either table; what a mark means now
-- is read from ``marks_current``.
--
-- ``invalid``: data in the period is not used to judge an exceedance, to count
-- compliant hours, or in coverage's validity rate. A manual mark counts once it is
-- in force: entered and not superseded, and not rejected by a regulator (a mark
-- awaiting review counts; a rejected one does not, and its period is judged as if
-- unmarked).
CREATE TABLE marks (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    park         text        NOT NULL,
    enterprise   text        NOT NULL,
    device       text        NOT NULL,
    metric       text,       -- NULL: every metric of the device
    start_at     timestamptz NOT NULL,
    end_at       timestamptz NOT NULL,
    kind         text        NOT NULL CHECK (kind IN (
        'startup', 'shutdown', 'planned_maintenance', 'maintenance',
        'calibration', 'fault', 'out_of_range', 'comms_fault', 'stopped', 'other'
    )),
    invalid      boolean     NOT NULL,
    reason       text        NOT NULL,
    attachment   text,       -- a reference to a document kept elsewhere
    origin       text        NOT NULL CHECK (origin IN ('enterprise', 'operator')),
    created_by   text        NOT NULL,  -- the API key id
    created_at   timestamptz NOT NULL DEFAULT now(),
    supersedes   bigint      REFERENCES marks (id),
    withdrawn    boolean     NOT NULL DEFAULT false,  -- supersedes with nothing
    CHECK (end_at > start_at),
    CHECK (NOT withdrawn OR supersedes IS NOT NULL)
);
CREATE INDEX marks_device ON marks (device, start_at);
CREATE INDEX marks_enterprise ON marks (park, enterprise, start_at);
-- one successor per mark: a second correction supersedes the first correction
CREATE UNIQUE INDEX marks_supersedes ON marks (supersedes) WHERE supersedes IS NOT NULL;

CREATE TABLE mark_reviews (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    mark_id      bigint      NOT NULL REFERENCES marks (id),
    verdict      text        NOT NULL CHECK (verdict IN ('accepted', 'rejected')),
    reason       text        NOT NULL,
    reviewed_by  text        NOT NULL,  -- the regulator's API key id
    reviewed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mark_reviews_mark ON mark_reviews (mark_id, id);

-- Marks as they stand: not superseded, not withdrawn, with their latest review.
-- ``in_force``: counts as a mark (not rejected).
CREATE VIEW marks_current AS
SELECT m.*,
       r.verdict     AS review,
       r.reviewed_by AS reviewed_by,
       r.reviewed_at AS reviewed_at,
       (r.verdict IS DISTINCT FROM 'rejected') AS in_force
FROM marks m
LEFT JOIN LATERAL (
    SELECT verdict, reviewed_by, reviewed_at FROM mark_reviews
    WHERE mark_id = m.id ORDER BY id DESC LIMIT 1
) r ON true
WHERE NOT m.withdrawn
  AND NOT EXISTS (SELECT 1 FROM marks s WHERE s.supersedes = m.id);
