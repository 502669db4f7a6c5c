-- Who is who: patients, their home gateways, and the devices the gateways read.

CREATE TABLE patients (
    patient_id   text PRIMARY KEY,
    display_name text NOT NULL,
    birth_date   date,
    program      text NOT NULL DEFAULT 'general'
                 CHECK (program IN ('general', 'hypertension', 'heart_failure', 'copd', 'diabetes')),
    spo2_scale   smallint NOT NULL DEFAULT 1 CHECK (spo2_scale IN (1, 2)),
    phone        text,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE gateways (
    gateway_id   text PRIMARY KEY,
    created_at   timestamptz NOT NULL DEFAULT now(),
    state        text NOT NULL DEFAULT 'unknown' CHECK (state IN ('unknown', 'online', 'offline')),
    state_at     timestamptz,
    last_seen_at timestamptz,
    software     text,
    outbox_pending integer,
    warnings     text[] NOT NULL DEFAULT '{}'  -- from the gateway's status, e.g. outbox_near_bound
);

-- A gateway may publish only for the patients bound to it (a home may have two).
CREATE TABLE gateway_patients (
    gateway_id text NOT NULL REFERENCES gateways ON DELETE CASCADE,
    patient_id text NOT NULL REFERENCES patients ON DELETE CASCADE,
    PRIMARY KEY (gateway_id, patient_id)
);
CREATE INDEX gateway_patients_patient ON gateway_patients (patient_id);

CREATE TABLE devices (
    gateway_id      text NOT NULL REFERENCES gateways ON DELETE CASCADE,
    device_id       text NOT NULL,
    device_type     text NOT NULL,
    patient_id      text NOT NULL REFERENCES patients ON DELETE CASCADE,
    first_seen_at   timestamptz NOT NULL DEFAULT now(),
    last_reading_at timestamptz,
    battery_percent smallint,
    PRIMARY KEY (gateway_id, device_id)
);
CREATE INDEX devices_patient ON devices (patient_id);

-- Messages and readings that broke the contract or the bindings: kept for inspection,
-- never part of the clinical data.
CREATE TABLE quarantine (
    quarantine_id  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    topic          text NOT NULL,
    gateway_id     text,          -- as claimed by the topic; not trusted
    reading_id     uuid,          -- when one reading of a batch was rejected
    reason         text NOT NULL, -- short machine reason, e.g. implausible_value
    detail         text NOT NULL, -- what exactly was wrong
    payload        bytea NOT NULL,-- the raw payload (or the rejected reading), truncated
    payload_size   integer NOT NULL,
    truncated      boolean NOT NULL DEFAULT false
);
CREATE INDEX quarantine_received ON quarantine (received_at DESC);
CREATE INDEX quarantine_reason ON quarantine (reason, received_at DESC);
