"""The TimescaleDB storage path on real TimescaleDB (PGlite): every migration applied by the
real runner, the hypertable, compression, retention, the continuous aggregates, and the
dashboard's queries. Small statements only; jobs run through ``CALL run_job`` because PGlite
has no background workers. Each test uses patients of its own."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from analytics.rules import load_rules
from analytics.worker import run_once
from ingest.db import migrate, migrated_storage, refresh_rollups
from ingest.readings import patient_readings
from ingest.registry import PatientRecord, enroll
from ingest.rollups import BUCKETS, patient_summary
from tests.timescale.sample import (
    HEART_RATE,
    SYSTOLIC,
    Sample,
    assert_same_rows,
    expected_rollup,
    insert,
    rollup_rows,
    sample_readings,
    utc_midnight_days_ago,
    wait_for_horizon,
)

pytestmark = pytest.mark.timescale


def _job(conn: psycopg.Connection, proc: str, relation: str) -> tuple[int, dict[str, Any]]:
    rows = conn.execute(
        "SELECT job_id, config FROM timescaledb_information.jobs"
        " WHERE proc_name = %s AND hypertable_name = %s",
        (proc, relation),
    ).fetchall()
    assert len(rows) == 1, (proc, relation, rows)
    return int(rows[0][0]), rows[0][1]


def _run_job(conn: psycopg.Connection, proc: str, relation: str) -> None:
    job_id, _ = _job(conn, proc, relation)
    conn.execute(f"CALL run_job({job_id})")


def _retention_jobs(conn: psycopg.Connection) -> dict[str, str]:
    rows = conn.execute(
        "SELECT hypertable_name, config->>'drop_after' FROM timescaledb_information.jobs"
        " WHERE proc_name = 'policy_retention'"
    ).fetchall()
    return dict(rows)


def _materialized_until(conn: psycopg.Connection, view: str) -> datetime:
    """The continuous aggregate's watermark: buckets before it are read from what the refresh
    stored, later ones are computed from the readings at query time."""
    row = conn.execute(
        "SELECT _timescaledb_functions.to_timestamp(_timescaledb_functions.cagg_watermark("
        " mat_hypertable_id)) FROM _timescaledb_catalog.continuous_agg WHERE user_view_name = %s",
        (view,),
    ).fetchone()
    assert row is not None
    return row[0]


def test_the_runner_applied_every_migration_for_timescale(timescale_url: str) -> None:
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert migrated_storage(conn) == "timescale"
        rows = conn.execute("SELECT version, storage FROM schema_migrations ORDER BY 1").fetchall()
    assert {storage for _, storage in rows} == {"timescale"}
    assert "0006_storage" in {version for version, _ in rows}
    assert migrate(timescale_url) == []  # a second run applies nothing


def test_readings_is_a_hypertable_with_weekly_chunks(ts: psycopg.Connection) -> None:
    hypertables = ts.execute(
        "SELECT hypertable_schema, hypertable_name, compression_enabled"
        " FROM timescaledb_information.hypertables"
    ).fetchall()
    assert ("public", "readings", True) in hypertables
    interval = ts.execute(
        "SELECT time_interval FROM timescaledb_information.dimensions"
        " WHERE hypertable_name = 'readings' AND column_name = 'measured_at'"
    ).fetchone()
    assert interval == (timedelta(days=7),)


def test_compression_is_segmented_by_patient_and_metric_newest_first(
    ts: psycopg.Connection,
) -> None:
    settings = ts.execute(
        "SELECT attname, segmentby_column_index, orderby_column_index, orderby_asc"
        " FROM timescaledb_information.compression_settings WHERE hypertable_name = 'readings'"
    ).fetchall()
    segmentby = sorted((index, name) for name, index, _, _ in settings if index is not None)
    orderby = sorted((index, name, asc) for name, _, index, asc in settings if index is not None)
    assert segmentby == [(1, "patient_id"), (2, "loinc")]
    assert orderby == [(1, "measured_at", False), (2, "ingest_xid", True)]
    _, config = _job(ts, "policy_compression", "readings")
    assert config["compress_after"] == "30 days"


def test_retention_is_off_by_default_and_set_through_the_function(
    ts: psycopg.Connection,
) -> None:
    assert _retention_jobs(ts) == {}
    try:
        job = ts.execute("SELECT carewatch_set_retention('10 years')").fetchone()
        assert job is not None and job[0] == _job(ts, "policy_retention", "readings")[0]
        every = {"readings", "readings_hourly", "readings_daily"}
        assert _retention_jobs(ts) == dict.fromkeys(every, "10 years")
        ts.execute("SELECT carewatch_set_retention('7 years')")  # replaces, never adds
        assert _retention_jobs(ts) == dict.fromkeys(every, "7 years")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            ts.execute("SELECT carewatch_set_retention('-1 day')")
        assert _retention_jobs(ts) == dict.fromkeys(every, "7 years")
    finally:
        assert ts.execute("SELECT carewatch_set_retention(NULL)").fetchone() == (None,)
    assert _retention_jobs(ts) == {}


def test_retention_drops_old_chunks_and_their_rollup_buckets(ts: psycopg.Connection) -> None:
    loinc, unit = HEART_RATE
    old = Sample("pt-ts-retention", loinc, unit, utc_midnight_days_ago(400), 70.0)
    recent = Sample("pt-ts-retention", loinc, unit, utc_midnight_days_ago(10), 71.0)
    insert(ts, [old, recent])
    refresh_rollups(ts, force=True)
    patients = [old.patient_id]
    assert len(rollup_rows(ts, "hour", patients)) == 2
    try:
        ts.execute("SELECT carewatch_set_retention('300 days')")
        for relation in ("readings", "readings_hourly", "readings_daily"):
            _run_job(ts, "policy_retention", relation)
    finally:
        ts.execute("SELECT carewatch_set_retention(NULL)")
    left = ts.execute(
        "SELECT measured_at FROM readings WHERE patient_id = %s", (old.patient_id,)
    ).fetchall()
    assert left == [(recent.measured_at,)]
    for bucket in BUCKETS:
        assert [row[3] for row in rollup_rows(ts, bucket, patients)] == [
            recent.measured_at  # a UTC midnight: the start of its hour and of its day
        ]


def test_the_continuous_aggregates_are_real_time_with_refresh_policies(
    ts: psycopg.Connection,
) -> None:
    views = ts.execute(
        "SELECT view_name, materialized_only FROM timescaledb_information.continuous_aggregates"
        " ORDER BY view_name"
    ).fetchall()
    assert views == [("readings_daily", False), ("readings_hourly", False)]
    _, hourly = _job(ts, "policy_refresh_continuous_aggregate", "readings_hourly")
    _, daily = _job(ts, "policy_refresh_continuous_aggregate", "readings_daily")
    assert (hourly["start_offset"], hourly["end_offset"]) == (None, "01:00:00")
    assert (daily["start_offset"], daily["end_offset"]) == (None, "1 day")


def test_the_refresh_policies_materialize_the_right_numbers(ts: psycopg.Connection) -> None:
    patients = ("pt-ts-agg-a", "pt-ts-agg-b")
    day0 = utc_midnight_days_ago(5)
    samples = sample_readings(patients, day0)
    insert(ts, samples)
    for view in ("readings_hourly", "readings_daily"):
        _run_job(ts, "policy_refresh_continuous_aggregate", view)
        assert _materialized_until(ts, view) > max(s.measured_at for s in samples)
    for bucket in BUCKETS:
        assert_same_rows(rollup_rows(ts, bucket, patients), expected_rollup(samples, bucket))

    # A reading that comes late for an old, materialized bucket: stale until the next refresh.
    loinc, unit = SYSTOLIC
    late = Sample(patients[1], loinc, unit, day0 + timedelta(hours=13, minutes=30), 200.0)
    insert(ts, [late])
    assert_same_rows(rollup_rows(ts, "hour", patients), expected_rollup(samples, "hour"))
    assert refresh_rollups(ts).refreshed is False  # left to the policies ...
    assert refresh_rollups(ts, force=True).refreshed is True  # ... unless asked
    for bucket in BUCKETS:
        assert_same_rows(
            rollup_rows(ts, bucket, patients), expected_rollup([*samples, late], bucket)
        )


def test_compressed_chunks_are_queried_and_take_late_readings(ts: psycopg.Connection) -> None:
    patients = ("pt-ts-compressed",)
    day0 = utc_midnight_days_ago(45)
    samples = sample_readings(patients, day0, days=2)
    insert(ts, samples)
    refresh_rollups(ts, force=True)
    before = {b: rollup_rows(ts, b, patients) for b in BUCKETS}

    _run_job(ts, "policy_compression", "readings")  # chunks older than 30 days
    compressed = ts.execute(
        "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_name = 'readings'"
        " AND is_compressed AND range_start <= %s AND range_end > %s",
        (day0, day0),
    ).fetchone()
    assert compressed == (1,)
    # A recent chunk can be compressed by hand as well.
    recent = ts.execute(
        "SELECT c FROM show_chunks('readings', newer_than => now() - interval '7 days') c LIMIT 1"
    ).fetchone()
    if recent is not None:
        ts.execute("SELECT compress_chunk(%s, if_not_compressed => true)", (recent[0],))

    got = patient_readings(ts, patient_id=patients[0], since=day0 - timedelta(days=1))
    assert sorted((r["measured_at"], r["loinc"], r["value"]) for r in got) == sorted(
        (s.measured_at, s.loinc, s.value) for s in samples
    )
    for bucket in BUCKETS:
        assert rollup_rows(ts, bucket, patients) == before[bucket]

    loinc, unit = HEART_RATE
    late = Sample(patients[0], loinc, unit, day0 + timedelta(hours=7, minutes=50), 99.0)
    insert(ts, [late])  # into the compressed chunk
    refresh_rollups(ts, force=True)
    for bucket in BUCKETS:
        assert_same_rows(
            rollup_rows(ts, bucket, patients), expected_rollup([*samples, late], bucket)
        )


def test_new_readings_are_found_by_transaction_id_without_decompressing(
    ts: psycopg.Connection,
) -> None:
    """The rules worker reads new readings by ``ingest_xid``; compressed batches carry its
    min/max (second order-by column), so old compressed batches are skipped, not unpacked."""
    loinc, unit = HEART_RATE
    insert(ts, [Sample("pt-ts-xid", loinc, unit, utc_midnight_days_ago(50), 80.0)])
    _run_job(ts, "policy_compression", "readings")
    row = ts.execute("SELECT pg_current_xact_id()::text").fetchone()
    assert row is not None
    plan = "\n".join(
        r[0]
        for r in ts.execute(
            f"EXPLAIN SELECT reading_id FROM readings WHERE ingest_xid >= '{row[0]}'::xid8"
        ).fetchall()
    )
    assert "_ts_meta_max_2 >=" in plan, plan


def test_the_rules_worker_runs_on_timescale(ts: psycopg.Connection) -> None:
    enroll(ts, gateway_id="gw-ts-rules", patients=[PatientRecord("pt-ts-rules", "Tia Rules")])
    loinc, unit = SYSTOLIC
    at = datetime.now(UTC) - timedelta(hours=1)
    insert(ts, [Sample("pt-ts-rules", loinc, unit, at, 192.0)])
    result = run_once(ts, load_rules(), worker="rules-timescale")
    assert result.readings >= 1
    flags = ts.execute(
        "SELECT rule_id, status FROM flags WHERE patient_id = 'pt-ts-rules'"
    ).fetchall()
    assert flags and {status for _, status in flags} == {"open"}


def test_the_summary_query_returns_the_same_rows_as_native_storage(
    ts: psycopg.Connection, db: psycopg.Connection
) -> None:
    if migrated_storage(db) != "native":
        pytest.skip("the session's PostgreSQL uses TimescaleDB, not native storage")
    patients = ("pt-ts-same-a", "pt-ts-same-b")
    day0 = utc_midnight_days_ago(6)
    samples = sample_readings(patients, day0, days=4)

    insert(ts, samples)
    refresh_rollups(ts, force=True)

    db.execute("TRUNCATE readings_hourly, readings_daily, rollup_watermark")
    insert(db, samples)
    wait_for_horizon(db)
    refresh_rollups(db)
    db.commit()

    compared = 0
    for bucket in BUCKETS:
        for loinc in (None, HEART_RATE[0]):
            for since in (day0, day0 + timedelta(days=1, hours=13, minutes=7)):
                for patient in patients:
                    args = {"patient_id": patient, "bucket": bucket, "since": since}
                    timescale = patient_summary(ts, loinc=loinc, **args)
                    native = patient_summary(db, loinc=loinc, **args)
                    assert timescale, args
                    assert_same_rows(
                        [tuple(r.values()) for r in timescale],
                        [tuple(r.values()) for r in native],
                    )
                    compared += len(native)
    assert compared > 100
    db.rollback()
