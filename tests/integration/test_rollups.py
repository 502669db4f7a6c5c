"""Native storage on a real PostgreSQL: the BRIN index, and the hourly and daily rollups that
``carewatch_refresh_rollups()`` keeps incrementally, as the summary endpoint reads them."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import httpx
import psycopg
import pytest

from dashboard.api_client import ApiNotFoundError, CareWatchApi
from ingest.db import ensure_partitions, migrated_storage, refresh_rollups
from ingest.registry import PatientRecord, enroll
from ingest.rollups import patient_summary
from tests.conftest import RunningApi
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

pytestmark = pytest.mark.db

PATIENTS = ("pt-roll-a", "pt-roll-b")


@pytest.fixture
def rollup_db(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The session database with no readings, empty rollups and no rollup watermark."""
    if migrated_storage(db) != "native":
        pytest.skip("the session database uses TimescaleDB; tests/timescale covers that path")
    db.execute("TRUNCATE readings_hourly, readings_daily, rollup_watermark")
    db.commit()
    yield db


def _refresh(
    conn: psycopg.Connection, *, rebuild: bool = False, settle: bool = True
) -> tuple[int, int, int]:
    if settle:
        wait_for_horizon(conn)
    result = refresh_rollups(conn, rebuild=rebuild)
    conn.commit()
    assert result.storage == "native"
    assert result.refreshed
    assert result.new_readings is not None
    assert result.hourly_buckets is not None
    assert result.daily_buckets is not None
    return result.new_readings, result.hourly_buckets, result.daily_buckets


def _row_versions(conn: psycopg.Connection, rollup: str) -> dict[tuple[str, str, datetime], str]:
    """Each rollup row's xmin: unchanged while the row is not written again."""
    rows = conn.execute(f"SELECT patient_id, loinc, bucket, xmin::text FROM {rollup}").fetchall()
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def test_the_time_index_is_one_brin_index_on_every_partition(rollup_db: psycopg.Connection) -> None:
    ensure_partitions(rollup_db)
    rollup_db.execute("SELECT carewatch_ensure_reading_partitions(6)")
    partitions = rollup_db.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings'::regclass"
    ).fetchone()
    attached = rollup_db.execute(
        "SELECT count(*) FROM pg_inherits WHERE inhparent = 'readings_measured_at_brin'::regclass"
    ).fetchone()
    assert partitions == attached
    # Exactly one BRIN index per partition (none added by hand next to the attached one).
    per_partition = rollup_db.execute(
        "SELECT c.relname, count(*) FROM pg_inherits h JOIN pg_class c ON c.oid = h.inhrelid"
        " JOIN pg_index x ON x.indrelid = c.oid JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_am am ON am.oid = i.relam"
        " WHERE h.inhparent = 'readings'::regclass AND am.amname = 'brin' GROUP BY c.relname"
    ).fetchall()
    assert partitions is not None and len(per_partition) == partitions[0]
    assert {count for _, count in per_partition} == {1}
    rollup_db.rollback()


def test_rollups_equal_a_direct_group_by_over_the_readings(
    rollup_db: psycopg.Connection,
) -> None:
    samples = sample_readings(PATIENTS, utc_midnight_days_ago(4))
    insert(rollup_db, samples)
    rollup_db.commit()
    new_readings, hourly, daily = _refresh(rollup_db)
    assert new_readings == len(samples)
    assert hourly == len(expected_rollup(samples, "hour"))
    assert daily == len(expected_rollup(samples, "day"))
    for bucket in ("hour", "day"):
        expected = expected_rollup(samples, bucket)
        assert_same_rows(rollup_rows(rollup_db, bucket, PATIENTS), expected)
        # ... and what SQL computes from the readings themselves.
        direct = rollup_db.execute(
            "SELECT patient_id, loinc, unit, date_trunc(%s, measured_at, 'UTC'), count(*),"
            " min(value), max(value), avg(value),"
            " (array_agg(value ORDER BY measured_at DESC))[1], max(measured_at)"
            " FROM readings GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
            (bucket,),
        ).fetchall()
        assert_same_rows(direct, expected)
    rollup_db.rollback()


def test_a_refresh_computes_only_the_buckets_new_readings_touch(
    rollup_db: psycopg.Connection,
) -> None:
    day0 = utc_midnight_days_ago(4)
    samples = sample_readings(PATIENTS, day0)
    insert(rollup_db, samples)
    rollup_db.commit()
    _refresh(rollup_db)
    hourly_before = _row_versions(rollup_db, "readings_hourly")
    daily_before = _row_versions(rollup_db, "readings_daily")
    rollup_db.commit()

    # Nothing new: nothing written.
    assert _refresh(rollup_db) == (0, 0, 0)
    assert _row_versions(rollup_db, "readings_hourly") == hourly_before

    # Two readings in a new hour of the last day, and one late reading for the first hour.
    loinc, unit = HEART_RATE
    new_hour = day0 + timedelta(days=2, hours=18, minutes=30)
    late = day0 + timedelta(hours=7, minutes=20)
    added = [
        Sample(PATIENTS[0], loinc, unit, new_hour, 90.0),
        Sample(PATIENTS[0], loinc, unit, new_hour + timedelta(minutes=5), 91.0),
        Sample(PATIENTS[0], loinc, unit, late, 140.0),
    ]
    insert(rollup_db, added)
    rollup_db.commit()
    assert _refresh(rollup_db) == (3, 2, 2)  # hours: the new one and the late one's; 2 days

    hourly_after = _row_versions(rollup_db, "readings_hourly")
    rewritten = {key for key, version in hourly_after.items() if hourly_before.get(key) != version}
    assert rewritten == {
        (PATIENTS[0], loinc, new_hour.replace(minute=0)),
        (PATIENTS[0], loinc, late.replace(minute=0)),
    }
    daily_after = _row_versions(rollup_db, "readings_daily")
    assert {k for k, v in daily_after.items() if daily_before.get(k) != v} == {
        (PATIENTS[0], loinc, day0),
        (PATIENTS[0], loinc, day0 + timedelta(days=2)),
    }
    everything = samples + added
    for bucket in ("hour", "day"):
        assert_same_rows(
            rollup_rows(rollup_db, bucket, PATIENTS), expected_rollup(everything, bucket)
        )
    late_hour = rollup_db.execute(
        "SELECT n, max_value, last_value FROM readings_hourly"
        " WHERE patient_id = %s AND loinc = %s AND bucket = %s",
        (PATIENTS[0], loinc, late.replace(minute=0)),
    ).fetchone()
    assert late_hour == (3, 140.0, 67.5)  # 07:05, 07:20 (late), 07:40: the last is 07:40's
    rollup_db.rollback()


def test_refreshing_again_or_rebuilding_changes_nothing(rollup_db: psycopg.Connection) -> None:
    samples = sample_readings(PATIENTS, utc_midnight_days_ago(3), days=2)
    insert(rollup_db, samples[: len(samples) // 2])
    rollup_db.commit()
    _refresh(rollup_db)
    insert(rollup_db, samples[len(samples) // 2 :])
    rollup_db.commit()
    _refresh(rollup_db)
    incremental = {b: rollup_rows(rollup_db, b, PATIENTS) for b in ("hour", "day")}
    assert _refresh(rollup_db) == (0, 0, 0)
    new_readings, hourly, daily = _refresh(rollup_db, rebuild=True)
    assert (new_readings, hourly, daily) == (
        len(samples),
        len(incremental["hour"]),
        len(incremental["day"]),
    )
    for bucket in ("hour", "day"):
        assert rollup_rows(rollup_db, bucket, PATIENTS) == incremental[bucket]
        assert_same_rows(incremental[bucket], expected_rollup(samples, bucket))
    rollup_db.rollback()


def test_a_transaction_still_running_is_folded_in_once_it_commits(
    rollup_db: psycopg.Connection, database_url: str
) -> None:
    loinc, unit = SYSTOLIC
    at = utc_midnight_days_ago(1) + timedelta(hours=9)
    with psycopg.connect(database_url) as slow:
        insert(slow, [Sample(PATIENTS[1], loinc, unit, at, 150.0)])  # not committed yet
        insert(rollup_db, [Sample(PATIENTS[1], loinc, unit, at + timedelta(minutes=1), 151.0)])
        rollup_db.commit()  # committed after the slow one began: behind it in the horizon
        assert _refresh(rollup_db, settle=False) == (0, 0, 0)
        slow.commit()
    assert _refresh(rollup_db) == (2, 1, 1)
    row = rollup_db.execute(
        "SELECT n, min_value, max_value, last_value FROM readings_hourly WHERE patient_id = %s",
        (PATIENTS[1],),
    ).fetchone()
    assert row == (2, 150.0, 151.0, 151.0)
    rollup_db.rollback()


def test_native_storage_refuses_a_retention_policy(rollup_db: psycopg.Connection) -> None:
    assert rollup_db.execute("SELECT carewatch_set_retention(NULL)").fetchone() == (None,)
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="need TimescaleDB"):
        rollup_db.execute("SELECT carewatch_set_retention('5 years')")
    rollup_db.rollback()


def test_the_summary_endpoint_reads_the_rollups_and_is_audited(
    rollup_db: psycopg.Connection, api_server: RunningApi
) -> None:
    enroll(rollup_db, gateway_id="gw-rollups", patients=[PatientRecord(PATIENTS[0], "Ada Roll")])
    day0 = utc_midnight_days_ago(3)
    samples = sample_readings(PATIENTS[:1], day0)
    insert(rollup_db, samples)
    rollup_db.commit()
    _refresh(rollup_db)

    with CareWatchApi(api_server.url, api_server.token, user="Zoë") as api:
        hours = api.readings_summary(PATIENTS[0], "hour", since=day0, loinc=HEART_RATE[0])
        days = api.readings_summary(PATIENTS[0], "day", since=day0 + timedelta(hours=12))
        default_days = api.readings_summary(PATIENTS[0], "day")
        with pytest.raises(ApiNotFoundError):
            api.readings_summary("pt-nobody", "day")

    expected_hours = [
        r for r in expected_rollup(samples, "hour") if r[1] == HEART_RATE[0] and r[3] >= day0
    ]
    assert [(h["loinc"], h["unit"], h["n"], h["min_value"], h["max_value"]) for h in hours] == [
        (r[1], r[2], r[4], r[5], r[6]) for r in expected_hours
    ]
    assert [datetime.fromisoformat(h["bucket"]) for h in hours] == [r[3] for r in expected_hours]
    assert [datetime.fromisoformat(h["last_at"]) for h in hours] == [r[9] for r in expected_hours]
    # The bucket holding `since` is included; ordered by metric, then time.
    assert [(d["loinc"], datetime.fromisoformat(d["bucket"])) for d in days] == sorted(
        (r[1], r[3]) for r in expected_rollup(samples, "day")
    )
    assert default_days == days
    # The endpoint's query is the module's: the same rows straight from the database.
    direct = patient_summary(rollup_db, patient_id=PATIENTS[0], bucket="day", since=day0)
    assert [(r["loinc"], r["bucket"], r["n"]) for r in direct] == [
        (d["loinc"], datetime.fromisoformat(d["bucket"]), d["n"]) for d in days
    ]
    audit = rollup_db.execute(
        "SELECT actor, action, resource, outcome FROM audit_log"
        " WHERE action = 'read.readings.summary' ORDER BY audit_id DESC LIMIT 4"
    ).fetchall()
    assert audit[::-1] == [
        ("Zoë", "read.readings.summary", f"patient/{PATIENTS[0]}/readings/summary", "ok"),
        ("Zoë", "read.readings.summary", f"patient/{PATIENTS[0]}/readings/summary", "ok"),
        ("Zoë", "read.readings.summary", f"patient/{PATIENTS[0]}/readings/summary", "ok"),
        ("Zoë", "read.readings.summary", "patient/pt-nobody/readings/summary", "not_found"),
    ]
    rollup_db.rollback()


def test_the_summary_endpoint_refuses_an_unknown_bucket(api_server: RunningApi) -> None:
    response = httpx.get(
        f"{api_server.url}/api/v1/patients/{PATIENTS[0]}/readings/summary",
        params={"bucket": "week"},
        headers={"Authorization": f"Bearer {api_server.token}"},
    )
    assert response.status_code == 422
