"""Readings for the rollup tests of both storage paths, and what their rollups must hold.

Inserted one small INSERT at a time (no COPY, no pipeline): PGlite's server runs the same
helper as PostgreSQL 15 does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from psycopg import sql

from ingest.rollups import ROLLUP_RELATIONS, Bucket, bucket_start

HEART_RATE = ("8867-4", "/min")
SYSTOLIC = ("8480-6", "mm[Hg]")
ROLLUP_COLUMNS = (
    "patient_id",
    "loinc",
    "unit",
    "bucket",
    "n",
    "min_value",
    "max_value",
    "avg_value",
    "last_value",
    "last_at",
)

_INSERT = (
    "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
    " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
    " gateway_seq, characteristic, raw_hex) VALUES (gen_random_uuid(), %s, %s, %s, %s, %s,"
    " 'device', now(), 'gw-rollups', 'C0:FF:EE:00:00:02', 'blood_pressure',"
    " gen_random_uuid(), 1, '2A35', '00')"
)


@dataclass(frozen=True, slots=True)
class Sample:
    patient_id: str
    loinc: str
    unit: str
    measured_at: datetime
    value: float


def utc_midnight_days_ago(days: int) -> datetime:
    return bucket_start(datetime.now(UTC) - timedelta(days=days), "day")


def sample_readings(patients: Sequence[str], day0: datetime, *, days: int = 3) -> list[Sample]:
    """Per patient and metric, four readings a day (two in one hour) over ``days`` UTC days
    from ``day0``; no two readings of a series share a time, values are exact in binary."""
    samples: list[Sample] = []
    offsets = [
        timedelta(hours=7, minutes=5),
        timedelta(hours=7, minutes=40),
        timedelta(hours=13, minutes=10),
        timedelta(hours=21, minutes=55),
    ]
    for p, patient in enumerate(patients):
        for m, (loinc, unit) in enumerate((HEART_RATE, SYSTOLIC)):
            for day in range(days):
                for k, offset in enumerate(offsets):
                    i = ((p * 2 + m) * days + day) * len(offsets) + k
                    base = 60 if loinc == HEART_RATE[0] else 120
                    value = base + (i * 7) % 23 + (0.5 if k % 2 else 0.0)
                    at = day0 + timedelta(days=day) + offset + timedelta(minutes=p)
                    samples.append(Sample(patient, loinc, unit, at, value))
    return samples


def insert(conn: psycopg.Connection, samples: Iterable[Sample]) -> None:
    """One INSERT per reading, in the caller's transaction."""
    for s in samples:
        conn.execute(_INSERT, (s.measured_at, s.patient_id, s.loinc, s.unit, s.value))


def expected_rollup(samples: Iterable[Sample], bucket: Bucket) -> list[tuple[Any, ...]]:
    """The rollup rows ``samples`` make, computed here, in ROLLUP_COLUMNS order, sorted."""
    groups: dict[tuple[str, str, str, datetime], list[Sample]] = {}
    for s in samples:
        key = (s.patient_id, s.loinc, s.unit, bucket_start(s.measured_at, bucket))
        groups.setdefault(key, []).append(s)
    rows = []
    for key, members in sorted(groups.items()):
        values = [m.value for m in members]
        latest = max(members, key=lambda m: m.measured_at)
        rows.append(
            (
                *key,
                len(members),
                min(values),
                max(values),
                sum(values) / len(values),
                latest.value,
                latest.measured_at,
            )
        )
    return rows


def rollup_rows(
    conn: psycopg.Connection, bucket: Bucket, patients: Sequence[str]
) -> list[tuple[Any, ...]]:
    """What the rollup of ``bucket`` holds for ``patients``, in ROLLUP_COLUMNS order, sorted."""
    query = sql.SQL(
        "SELECT {columns} FROM {rollup} WHERE patient_id = ANY(%s)"
        " ORDER BY patient_id, loinc, unit, bucket"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in ROLLUP_COLUMNS),
        rollup=sql.Identifier(ROLLUP_RELATIONS[bucket]),
    )
    return [tuple(row) for row in conn.execute(query, (list(patients),)).fetchall()]


def wait_for_horizon(conn: psycopg.Connection, timeout_s: float = 30.0) -> None:
    """Wait until every committed reading lies below the snapshot horizon (what an incremental
    refresh folds in): a transaction open anywhere on the server (another test run,
    autovacuum) holds it back for a moment. Ends the connection's transaction."""
    deadline = time.monotonic() + timeout_s
    while True:
        row = conn.execute(
            "SELECT pg_snapshot_xmin(pg_current_snapshot()) > coalesce(max(ingest_xid), '0')"
            " FROM readings"
        ).fetchone()
        conn.commit()
        if row is not None and row[0]:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"a transaction on the server held the horizon {timeout_s} s")
        time.sleep(0.05)


def assert_same_rows(actual: Sequence[Sequence[Any]], expected: Sequence[Sequence[Any]]) -> None:
    """Equal row for row; floats to 1e-9 relative (sums may be added in another order)."""
    assert len(actual) == len(expected), (actual, expected)
    for got, want in zip(actual, expected, strict=True):
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            if isinstance(w, float):
                assert g == pytest.approx(w, rel=1e-9), (got, want)
            else:
                assert g == w, (got, want)
