-- Storage on TimescaleDB: compression, retention (off unless configured), and hourly and
-- daily rollups as continuous aggregates. The native variant has the same names and columns,
-- so the same queries serve both (ingest/rollups.py). Small statements only: this file also
-- runs on PGlite (tests/timescale), whose socket server dislikes large messages.

-- Compression: chunks older than 30 days become columnar, one segment per patient and metric,
-- newest first inside it (what the dashboard reads). ingest_xid second in the order gives each
-- compressed batch a min/max of it: the rules worker reads new readings by ingest_xid, and
-- with that metadata TimescaleDB skips the compressed batches instead of decompressing every
-- old chunk on each pass (a btree index does not survive compression).
ALTER TABLE readings SET (
    timescaledb.compress,
    timescaledb.compress_segmentby = 'patient_id, loinc',
    timescaledb.compress_orderby = 'measured_at DESC, ingest_xid'
);
SELECT add_compression_policy('readings', compress_after => interval '30 days');

-- Retention: none by default, clinical data is kept. carewatch_set_retention('10 years') adds
-- retention policies (jobs) that drop the chunks whose readings are all older than that, and
-- the rollup buckets that old too (they are the patient's data as well); NULL removes them.
-- Returns the job id of the readings' policy, or NULL when retention is off.
CREATE FUNCTION carewatch_set_retention(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    relation text;
BEGIN
    IF keep IS NOT NULL AND keep <= interval '0' THEN
        RAISE EXCEPTION 'retention must be a positive interval, not %', keep
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH relation IN ARRAY ARRAY['readings_hourly', 'readings_daily', 'readings'] LOOP
        PERFORM remove_retention_policy(relation::regclass, if_exists => true);
        IF keep IS NOT NULL AND relation <> 'readings' THEN
            PERFORM add_retention_policy(relation::regclass, drop_after => keep);
        END IF;
    END LOOP;
    IF keep IS NULL THEN
        RETURN NULL;
    END IF;
    RETURN add_retention_policy('readings', drop_after => keep);
END $$;

-- Rollups for the dashboard: per patient, metric and unit, UTC hours and days. Real-time
-- (materialized_only = false): buckets the refresh policy has not reached yet are computed
-- from the readings at query time.
CREATE MATERIALIZED VIEW readings_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT patient_id, loinc, unit,
       time_bucket(interval '1 hour', measured_at) AS bucket,
       count(*) AS n,
       min(value) AS min_value,
       max(value) AS max_value,
       avg(value) AS avg_value,
       last(value, measured_at) AS last_value,
       max(measured_at) AS last_at
FROM readings
GROUP BY patient_id, loinc, unit, time_bucket(interval '1 hour', measured_at)
WITH NO DATA;

CREATE MATERIALIZED VIEW readings_daily
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT patient_id, loinc, unit,
       time_bucket(interval '1 day', measured_at) AS bucket,
       count(*) AS n,
       min(value) AS min_value,
       max(value) AS max_value,
       avg(value) AS avg_value,
       last(value, measured_at) AS last_value,
       max(measured_at) AS last_at
FROM readings
GROUP BY patient_id, loinc, unit, time_bucket(interval '1 day', measured_at)
WITH NO DATA;

-- Refresh policies. start_offset NULL: every change since the last run is folded in, also a
-- reading that arrives late for an old bucket (TimescaleDB tracks what was invalidated).
SELECT add_continuous_aggregate_policy('readings_hourly',
    start_offset => NULL, end_offset => interval '1 hour',
    schedule_interval => interval '30 minutes');
SELECT add_continuous_aggregate_policy('readings_daily',
    start_offset => NULL, end_offset => interval '1 day',
    schedule_interval => interval '1 hour');

-- Kept so that both storage paths expose the same maintenance entry point; on TimescaleDB
-- the policies refresh the rollups (ingest.db.refresh_rollups can also refresh them now).
CREATE FUNCTION carewatch_refresh_rollups(
    rebuild boolean DEFAULT false,
    OUT new_readings bigint, OUT hourly_buckets bigint, OUT daily_buckets bigint)
LANGUAGE sql AS $$ SELECT NULL::bigint, NULL::bigint, NULL::bigint $$;
