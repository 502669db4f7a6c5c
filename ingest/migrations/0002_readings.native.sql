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

-- Month boundaries are computed in UTC and written as timestamptz literals, whatever the
-- session's TimeZone. A month whose rows already sit in the default partition cannot get its
-- own partition any more; that is reported as a warning and its rows stay where they are.
CREATE FUNCTION carewatch_ensure_reading_partitions(months_ahead integer DEFAULT 3)
RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    month_start timestamp := date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month';
    part_name text;
BEGIN
    FOR i IN 0..months_ahead + 1 LOOP
        part_name := format('readings_%s', to_char(month_start, 'YYYY_MM'));
        IF to_regclass(part_name) IS NULL THEN
            BEGIN
                EXECUTE format(
                    'CREATE TABLE %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
                    part_name,
                    month_start AT TIME ZONE 'UTC',
                    (month_start + interval '1 month') AT TIME ZONE 'UTC');
                EXECUTE format('CREATE INDEX ON %I USING brin (measured_at)', part_name);
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'readings of % are in the default partition; % not created',
                    to_char(month_start, 'YYYY-MM'), part_name;
            END;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
END $$;

SELECT carewatch_ensure_reading_partitions();

-- Every reading id ever stored, once: the primary key of a time-partitioned table must hold
-- the time, so this small table is what makes a reading id unique whatever its time says.
CREATE TABLE reading_ids (
    reading_id uuid PRIMARY KEY
);
