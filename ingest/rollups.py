"""Hourly and daily rollups of readings: what the dashboard's summaries read.

Both storage paths have ``readings_hourly`` and ``readings_daily`` with the same columns
(migration 0006): continuous aggregates on TimescaleDB (real-time: buckets the refresh policy
has not reached yet are computed from the readings at query time), tables on native
PostgreSQL refreshed incrementally by ``carewatch_refresh_rollups()`` (as fresh as its last
run, see :func:`ingest.db.refresh_rollups`). One query serves both.

Buckets are UTC hours and UTC days. Per patient, metric (LOINC) and unit: ``n`` readings,
``min_value``, ``max_value``, ``avg_value``, ``last_value`` (the latest reading's value) and
``last_at`` (when it was measured).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, get_args

import psycopg
from psycopg import sql

Bucket = Literal["hour", "day"]
BUCKETS: Final[tuple[Bucket, ...]] = get_args(Bucket)
ROLLUP_RELATIONS: Final[Mapping[Bucket, str]] = {
    "hour": "readings_hourly",
    "day": "readings_daily",
}
BUCKET_WIDTHS: Final[Mapping[Bucket, timedelta]] = {
    "hour": timedelta(hours=1),
    "day": timedelta(days=1),
}
SUMMARY_COLUMNS: Final = (
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
DEFAULT_LIMIT: Final = 50_000


def summary_query(bucket: Bucket) -> sql.Composed:
    """The summary query on the rollup of ``bucket``: parameters ``patient_id``, ``since``
    (a bucket start), ``until`` (exclusive, or NULL), ``loinc`` (or NULL for every metric) and
    ``limit``. Ordered by metric, then time."""
    return sql.SQL(
        "SELECT {columns} FROM {rollup}"
        " WHERE patient_id = %(patient_id)s AND bucket >= %(since)s"
        " AND (%(until)s::timestamptz IS NULL OR bucket < %(until)s)"
        " AND (%(loinc)s::text IS NULL OR loinc = %(loinc)s)"
        " ORDER BY loinc, bucket, unit LIMIT %(limit)s"
    ).format(
        columns=sql.SQL(", ").join(sql.Identifier(c) for c in SUMMARY_COLUMNS),
        rollup=sql.Identifier(ROLLUP_RELATIONS[bucket]),
    )


def bucket_start(moment: datetime, bucket: Bucket) -> datetime:
    """The start of the UTC bucket holding ``moment`` (a naive time is read as UTC)."""
    utc = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    start = utc.replace(minute=0, second=0, microsecond=0)
    return start.replace(hour=0) if bucket == "day" else start


def patient_summary(
    conn: psycopg.Connection,
    *,
    patient_id: str,
    bucket: Bucket,
    since: datetime,
    until: datetime | None = None,
    loinc: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> list[dict[str, Any]]:
    """A patient's buckets from the one holding ``since`` up to ``until`` (exclusive)."""
    rows = conn.execute(
        summary_query(bucket),
        {
            "patient_id": patient_id,
            "since": bucket_start(since, bucket),
            "until": until,
            "loinc": loinc,
            "limit": limit,
        },
    ).fetchall()
    return [dict(zip(SUMMARY_COLUMNS, row, strict=True)) for row in rows]
