-- Readings on native PostgreSQL: monthly range partitions on measured_at, created ahead of
-- time by carewatch_ensure_reading_partitions(), and a default partition for stragglers
-- (a device clock years off, a record replayed from long ago).

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
    -- The transaction that stored the row: the rules worker reads new rows by the window of
    -- transactions that finished since its last pass, so no concurrent commit is ever skipped.
    ingest_xid     xid8 NOT NULL DEFAULT pg_current_xact_id(),
    PRIMARY KEY (reading_id, measured_at)
) PARTITION BY RANGE (measured_at);

CREATE TABLE readings_default PARTITION OF readings DEFAULT;

CREATE INDEX readings_patient_metric_time ON readings (patient_id, loinc, measured_at DESC);
CREATE INDEX readings_ingest_xid ON readings (ingest_xid);

CREATE FUNCTION carewatch_ensure_reading_partitions(months_ahead integer DEFAULT 3)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month_start date := date_trunc('month', now() - interval '1 month')::date;
    part_name text;
BEGIN
    FOR i IN 0..months_ahead + 1 LOOP
        part_name := format('readings_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(part_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                part_name, month_start, (month_start + interval '1 month')::date);
            EXECUTE format('CREATE INDEX ON %I USING brin (measured_at)', part_name);
        END IF;
        month_start := (month_start + interval '1 month')::date;
    END LOOP;
END $$;

SELECT carewatch_ensure_reading_partitions();
