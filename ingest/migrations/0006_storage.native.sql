-- Storage on native PostgreSQL: one BRIN index on time for the whole partitioned table, and
-- hourly and daily rollups as tables refreshed incrementally. The TimescaleDB variant has the
-- same names and columns (continuous aggregates there), so the same queries serve both
-- (ingest/rollups.py).

-- BRIN on measured_at, declared once on the partitioned table: PostgreSQL attaches the
-- equivalent index each monthly partition already has (0002 created one per partition),
-- builds one on the default partition, and creates one with every new partition.
CREATE INDEX readings_measured_at_brin ON readings USING brin (measured_at);

-- Partitions ahead of time, as in 0002, without creating the BRIN index by hand any more.
CREATE OR REPLACE FUNCTION carewatch_ensure_reading_partitions(months_ahead integer DEFAULT 3)
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
            EXCEPTION WHEN check_violation THEN
                RAISE WARNING 'readings of % are in the default partition; % not created',
                    to_char(month_start, 'YYYY-MM'), part_name;
            END;
        END IF;
        month_start := month_start + interval '1 month';
    END LOOP;
END $$;

-- Retention is a TimescaleDB policy. Native storage keeps every reading: "off" is accepted,
-- anything else is refused with what to do instead.
CREATE FUNCTION carewatch_set_retention(keep interval) RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    IF keep IS NULL THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'retention policies need TimescaleDB; native storage keeps every reading'
        USING ERRCODE = 'feature_not_supported',
              HINT = 'drop a whole month by hand: DROP TABLE readings_YYYY_MM';
END $$;

-- Rollups per patient, metric and unit over UTC hours and days: the same columns as the
-- continuous aggregates of the TimescaleDB variant.
CREATE TABLE readings_hourly (
    patient_id text NOT NULL,
    loinc      text NOT NULL,
    unit       text NOT NULL,
    bucket     timestamptz NOT NULL,
    n          bigint NOT NULL,
    min_value  double precision NOT NULL,
    max_value  double precision NOT NULL,
    avg_value  double precision NOT NULL,
    last_value double precision NOT NULL,  -- the value of the latest reading in the bucket
    last_at    timestamptz NOT NULL,       -- when that reading was measured
    PRIMARY KEY (patient_id, loinc, bucket, unit)
);
CREATE TABLE readings_daily (LIKE readings_hourly INCLUDING ALL);

-- How far the rollups have read: every reading stored by a transaction whose id is below
-- processed_below is folded in. Advanced in the same transaction as the rollups it wrote.
CREATE TABLE rollup_watermark (
    name            text PRIMARY KEY,
    processed_below xid8 NOT NULL,
    refreshed_at    timestamptz NOT NULL DEFAULT now()
);

-- Incremental refresh, the rules worker's way (analytics/worker.py): the readings stored by
-- transactions in [watermark, xmin of the current snapshot) name the buckets they touch, and
-- only those buckets are computed again, from all their readings. A transaction still running
-- has an id at or above that xmin, so its readings wait for the next run, never skipped; a
-- reading that arrives late for an old bucket recomputes that bucket. Concurrent runs queue on
-- the watermark row. rebuild => true empties the rollups and computes every bucket (after
-- readings were deleted, which an incremental run does not see).
-- Returns the readings folded in and the hourly and daily buckets written.
CREATE FUNCTION carewatch_refresh_rollups(
    rebuild boolean DEFAULT false,
    OUT new_readings bigint, OUT hourly_buckets bigint, OUT daily_buckets bigint)
LANGUAGE plpgsql AS $$
DECLARE
    lower_xid xid8;
    upper_xid xid8;
BEGIN
    INSERT INTO rollup_watermark AS w (name, processed_below) VALUES ('readings', '0')
    ON CONFLICT (name) DO UPDATE SET name = w.name
    RETURNING w.processed_below INTO lower_xid;
    IF rebuild THEN
        DELETE FROM readings_hourly;
        DELETE FROM readings_daily;
        lower_xid := '0';
    END IF;
    upper_xid := pg_snapshot_xmin(pg_current_snapshot());
    new_readings := 0;
    hourly_buckets := 0;
    daily_buckets := 0;
    IF upper_xid <= lower_xid THEN
        RETURN;
    END IF;

    SELECT count(*) INTO new_readings FROM readings r
    WHERE r.ingest_xid >= lower_xid AND r.ingest_xid < upper_xid;

    IF new_readings > 0 THEN
        WITH touched AS (
            SELECT DISTINCT r.patient_id, r.loinc, date_trunc('hour', r.measured_at, 'UTC') AS bucket
            FROM readings r
            WHERE r.ingest_xid >= lower_xid AND r.ingest_xid < upper_xid)
        INSERT INTO readings_hourly AS h (patient_id, loinc, unit, bucket, n, min_value,
                                          max_value, avg_value, last_value, last_at)
        SELECT r.patient_id, r.loinc, r.unit, t.bucket, count(*), min(r.value), max(r.value),
               avg(r.value), (array_agg(r.value ORDER BY r.measured_at DESC))[1],
               max(r.measured_at)
        FROM touched t
        JOIN readings r ON r.patient_id = t.patient_id AND r.loinc = t.loinc
             AND r.measured_at >= t.bucket AND r.measured_at < t.bucket + interval '1 hour'
        GROUP BY r.patient_id, r.loinc, r.unit, t.bucket
        ON CONFLICT (patient_id, loinc, bucket, unit) DO UPDATE SET
            n = excluded.n, min_value = excluded.min_value, max_value = excluded.max_value,
            avg_value = excluded.avg_value, last_value = excluded.last_value,
            last_at = excluded.last_at;
        GET DIAGNOSTICS hourly_buckets = ROW_COUNT;

        -- '24 hours', not '1 day': a day added to a timestamptz follows the session's time
        -- zone across daylight-saving changes; the buckets are UTC days.
        WITH touched AS (
            SELECT DISTINCT r.patient_id, r.loinc, date_trunc('day', r.measured_at, 'UTC') AS bucket
            FROM readings r
            WHERE r.ingest_xid >= lower_xid AND r.ingest_xid < upper_xid)
        INSERT INTO readings_daily AS d (patient_id, loinc, unit, bucket, n, min_value,
                                         max_value, avg_value, last_value, last_at)
        SELECT r.patient_id, r.loinc, r.unit, t.bucket, count(*), min(r.value), max(r.value),
               avg(r.value), (array_agg(r.value ORDER BY r.measured_at DESC))[1],
               max(r.measured_at)
        FROM touched t
        JOIN readings r ON r.patient_id = t.patient_id AND r.loinc = t.loinc
             AND r.measured_at >= t.bucket AND r.measured_at < t.bucket + interval '24 hours'
        GROUP BY r.patient_id, r.loinc, r.unit, t.bucket
        ON CONFLICT (patient_id, loinc, bucket, unit) DO UPDATE SET
            n = excluded.n, min_value = excluded.min_value, max_value = excluded.max_value,
            avg_value = excluded.avg_value, last_value = excluded.last_value,
            last_at = excluded.last_at;
        GET DIAGNOSTICS daily_buckets = ROW_COUNT;
    END IF;

    UPDATE rollup_watermark SET processed_below = upper_xid, refreshed_at = now()
    WHERE name = 'readings';
END $$;
