-- Readings on TimescaleDB: a hypertable on measured_at (7-day chunks).
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE readings (
    reading_id     uuid NOT NULL,
    measured_at    timestamptz NOT NULL,
    patient_id     text NOT NULL,
    loinc          text NOT NULL,
    unit           text NOT NULL,
    value          double precision NOT NULL,
    time_source    text NOT NULL,
    received_at    timestamptz NOT NULL,
    ingested_at    timestamptz NOT NULL DEFAULT now(),
    gateway_id     text NOT NULL,
    device_id      text NOT NULL,
    device_type    text NOT NULL,
    measurement_id uuid NOT NULL,
    gateway_seq    bigint NOT NULL,
    characteristic text NOT NULL,
    raw_hex        text NOT NULL,
    device_time    jsonb,
    ingest_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (reading_id, measured_at)
);

SELECT create_hypertable('readings', 'measured_at', chunk_time_interval => interval '7 days');

CREATE INDEX readings_patient_metric_time ON readings (patient_id, loinc, measured_at DESC);
CREATE INDEX readings_ingest_xid ON readings (ingest_xid);

-- Kept so that both storage paths expose the same maintenance entry point.
CREATE FUNCTION carewatch_ensure_reading_partitions(months_ahead integer DEFAULT 3)
RETURNS void LANGUAGE sql AS $$ SELECT NULL::void $$;

-- Every reading id ever stored, once: the primary key of a time-partitioned table must hold
-- the time, so this small table is what makes a reading id unique whatever its time says.
CREATE TABLE reading_ids (
    reading_id uuid PRIMARY KEY
);
