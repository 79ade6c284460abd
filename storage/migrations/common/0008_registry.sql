-- The registry: parks, enterprises, outlets and devices (the platform API, api/).
--
-- The source of truth the rest of the platform reads (coverage, Grafana, MQTT
-- credentials). Rows are retired, never deleted: telemetry, alerts and audit
-- entries keep naming them. Ids follow the wire's id rule (smartpark.wire.valid_id),
-- checked by the API. Enterprise, outlet and device ids are unique platform-wide
-- (telemetry's device ids are); outlets and devices carry their enterprise's park
-- (an enterprise never changes park) so every tenant filter is one column.
CREATE TABLE parks (
    id          text        PRIMARY KEY,
    name        text        NOT NULL,
    timezone    text        NOT NULL,  -- IANA, checked by the API with zoneinfo
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);

-- Energy (tce) and water (m3) quotas per day / month / year: {"day": 12.5, ...},
-- the keys absent where there is no quota; dated by quotas_from.
CREATE TABLE enterprises (
    id              text        PRIMARY KEY,
    park            text        NOT NULL REFERENCES parks (id),
    name            text        NOT NULL,
    industry        text,
    permits         text[]      NOT NULL DEFAULT '{}',
    energy_quota_tce jsonb      NOT NULL DEFAULT '{}',
    water_quota_m3  jsonb       NOT NULL DEFAULT '{}',
    quotas_from     date,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    retired_at      timestamptz
);
CREATE INDEX enterprises_park ON enterprises (park, id);

-- Permit limits per pollutant metric, in the catalogue unit: {"so2": 35.0}.
CREATE TABLE outlets (
    id            text        PRIMARY KEY,
    park          text        NOT NULL REFERENCES parks (id),
    enterprise    text        NOT NULL REFERENCES enterprises (id),
    kind          text        NOT NULL CHECK (kind IN ('stack', 'wastewater_outfall')),
    name          text        NOT NULL,
    reference_o2  double precision CHECK (reference_o2 >= 0 AND reference_o2 < 21),
    limits        jsonb       NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    retired_at    timestamptz,
    CHECK (kind = 'stack' OR reference_o2 IS NULL)
);
CREATE INDEX outlets_enterprise ON outlets (park, enterprise, id);

CREATE TABLE devices (
    id          text        PRIMARY KEY,
    park        text        NOT NULL REFERENCES parks (id),
    enterprise  text        NOT NULL REFERENCES enterprises (id),
    outlet      text        REFERENCES outlets (id),
    protocol    text        NOT NULL
        CHECK (protocol IN ('modbus_tcp', 'modbus_rtu', 'hj212')),
    interval_s  integer     NOT NULL CHECK (interval_s > 0),
    metrics     text[]      NOT NULL DEFAULT '{}',
    mn          text,       -- the HJ 212 data logger's MN, if any
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    retired_at  timestamptz
);
CREATE INDEX devices_enterprise ON devices (park, enterprise, id);
CREATE UNIQUE INDEX devices_mn ON devices (mn) WHERE mn IS NOT NULL;
