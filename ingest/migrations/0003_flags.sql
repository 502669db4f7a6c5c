-- Flags: what a clinician must look at. One open flag per patient, rule and direction; every
-- breaching reading is linked to it, and every change of state is an event.

CREATE TABLE flags (
    flag_id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    patient_id       text NOT NULL REFERENCES patients ON DELETE CASCADE,
    rule_id          text NOT NULL,
    kind             text NOT NULL DEFAULT 'threshold',
    direction        text NOT NULL CHECK (direction IN ('high', 'low', 'none')),
    loinc            text NOT NULL,
    title            text NOT NULL,
    severity         text NOT NULL
                     CHECK (severity IN ('critical', 'high', 'medium', 'low', 'info')),
    status           text NOT NULL DEFAULT 'open'
                     CHECK (status IN ('open', 'acknowledged', 'resolved')),
    -- The condition that fired, as it stood in the rules version that evaluated it.
    threshold        jsonb NOT NULL,
    rules_version    text NOT NULL,
    opened_at        timestamptz NOT NULL,  -- measured_at of the first breaching reading
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_breach_at   timestamptz NOT NULL,
    breach_count     integer NOT NULL DEFAULT 1,
    first_value      double precision NOT NULL,
    last_value       double precision NOT NULL,
    worst_value      double precision NOT NULL,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    resolved_by      text,
    resolution_note  text
);
CREATE UNIQUE INDEX flags_one_open_per_patient_rule_direction
    ON flags (patient_id, rule_id, direction) WHERE status <> 'resolved';
CREATE INDEX flags_open_by_severity ON flags (status, severity, opened_at) WHERE status <> 'resolved';
CREATE INDEX flags_patient ON flags (patient_id, opened_at DESC);

CREATE TABLE flag_readings (
    flag_id     bigint NOT NULL REFERENCES flags ON DELETE CASCADE,
    reading_id  uuid NOT NULL,
    measured_at timestamptz NOT NULL,
    loinc       text NOT NULL,
    value       double precision NOT NULL,
    severity    text NOT NULL,
    PRIMARY KEY (flag_id, reading_id)
);
CREATE INDEX flag_readings_reading ON flag_readings (reading_id);

CREATE TABLE flag_events (
    event_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    flag_id bigint NOT NULL REFERENCES flags ON DELETE CASCADE,
    at      timestamptz NOT NULL DEFAULT now(),
    event   text NOT NULL CHECK (event IN ('opened', 'breach', 'severity_raised',
                                           'acknowledged', 'resolved')),
    actor   text NOT NULL,   -- 'rules' or the user who acted
    detail  jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX flag_events_flag ON flag_events (flag_id, event_id);

-- How far the rules worker has read: every reading stored by a transaction whose id is below
-- processed_below has been evaluated. Advanced in the same transaction as the flags it wrote.
CREATE TABLE rules_watermark (
    worker          text PRIMARY KEY,
    processed_below xid8 NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now()
);
