-- Grafana's database roles (storage/grafana_roles.py, api/grafana/): one LOGIN
-- role per Grafana organisation, each enterprise's, each park's operators', the
-- regulators'. Grafana OSS lets any user of an organisation send any query to its
-- data sources, so the data source itself must be unable to read beyond its scope.
--
-- A role is granted SELECT on the ``grafana_*`` views below and nothing else (no
-- table, so no api_keys, webhooks, audit, secrets). Each view is a security
-- barrier that keeps the rows of the scope recorded for ``current_user`` in
-- ``grafana_roles``: park NULL is every park (regulators), enterprise NULL every
-- enterprise of the park (operators). A role not recorded there sees no row. The
-- views read the tables with their owner's rights, so the platform's own access
-- is untouched (no row-level security policy on the tables: the sink, the API
-- and the rules runner keep their plans and rights).
--
-- The role's password is stored sealed (AES-256-GCM under the webhook secret key,
-- storage.secretbox, the role's name as associated data) so provisioning can give
-- it to Grafana's data source; rotating it is ``grafana_roles.rotate``.
CREATE TABLE grafana_roles (
    role             text        PRIMARY KEY,
    kind             text        NOT NULL
        CHECK (kind IN ('enterprise', 'operator', 'regulator')),
    park             text,
    enterprise       text,
    password_sealed  text        NOT NULL,
    password_kid     text        NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (
        (kind = 'enterprise' AND park IS NOT NULL AND enterprise IS NOT NULL)
        OR (kind = 'operator' AND park IS NOT NULL AND enterprise IS NULL)
        OR (kind = 'regulator' AND park IS NULL AND enterprise IS NULL)
    )
);

CREATE VIEW grafana_series WITH (security_barrier) AS
SELECT s.id, s.park, s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit
FROM series s
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR s.park = g.park)
  AND (g.enterprise IS NULL OR s.enterprise = g.enterprise);

-- Raw readings with their series' identity, for the panels that need every step
-- (counters' consumption, the latest value).
CREATE VIEW grafana_telemetry WITH (security_barrier) AS
SELECT t.time, t.value, t.quality, t.reset, s.id AS series_id, s.park,
       s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit
FROM telemetry t
JOIN series s ON s.id = t.series_id
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR s.park = g.park)
  AND (g.enterprise IS NULL OR s.enterprise = g.enterprise);

CREATE VIEW grafana_telemetry_1m WITH (security_barrier) AS
SELECT r.bucket, r.n, r.sum, r.min, r.max, s.id AS series_id, s.park,
       s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit
FROM telemetry_1m r
JOIN series s ON s.id = r.series_id
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR s.park = g.park)
  AND (g.enterprise IS NULL OR s.enterprise = g.enterprise);

CREATE VIEW grafana_telemetry_1h WITH (security_barrier) AS
SELECT r.bucket, r.n, r.sum, r.min, r.max, s.id AS series_id, s.park,
       s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit
FROM telemetry_1h r
JOIN series s ON s.id = r.series_id
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR s.park = g.park)
  AND (g.enterprise IS NULL OR s.enterprise = g.enterprise);

CREATE VIEW grafana_telemetry_1d WITH (security_barrier) AS
SELECT r.bucket, r.n, r.sum, r.min, r.max, s.id AS series_id, s.park,
       s.enterprise, s.device, s.metric, s.data_type, s.stat, s.unit
FROM telemetry_1d r
JOIN series s ON s.id = r.series_id
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR s.park = g.park)
  AND (g.enterprise IS NULL OR s.enterprise = g.enterprise);

CREATE VIEW grafana_alerts WITH (security_barrier) AS
SELECT a.alert_id, a.pack, a.rule_id, a.severity, a.park, a.enterprise,
       a.device, a.metric, a.status, a.opened_at, a.resolved_at, a.acknowledged_at
FROM alerts a
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR a.park = g.park)
  AND (g.enterprise IS NULL OR a.enterprise = g.enterprise);

-- The registry: no quota or product is secret to its own enterprise, but only
-- the scope's rows are shown.
CREATE VIEW grafana_parks WITH (security_barrier) AS
SELECT p.id, p.name, p.timezone
FROM parks p
JOIN grafana_roles g ON g.role = current_user
WHERE g.park IS NULL OR p.id = g.park;

CREATE VIEW grafana_enterprises WITH (security_barrier) AS
SELECT e.id, e.park, e.name, e.industry, e.energy_quota_tce, e.water_quota_m3,
       e.product, e.retired_at
FROM enterprises e
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR e.park = g.park)
  AND (g.enterprise IS NULL OR e.id = g.enterprise);

CREATE VIEW grafana_outlets WITH (security_barrier) AS
SELECT o.id, o.park, o.enterprise, o.kind, o.name, o.reference_o2, o.limits,
       o.retired_at
FROM outlets o
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR o.park = g.park)
  AND (g.enterprise IS NULL OR o.enterprise = g.enterprise);

CREATE VIEW grafana_devices WITH (security_barrier) AS
SELECT d.id, d.park, d.enterprise, d.outlet, d.protocol, d.interval_s, d.metrics,
       d.retired_at
FROM devices d
JOIN grafana_roles g ON g.role = current_user
WHERE (g.park IS NULL OR d.park = g.park)
  AND (g.enterprise IS NULL OR d.enterprise = g.enterprise);
