"""Storing readings: one COPY per batch into a staging table, then one idempotent insert.

The insert skips readings whose id was ever stored before (``reading_ids``), so a redelivered
message is harmless; the ids actually inserted come back so that duplicates can be counted.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from carewatch_contract.messages import Reading

_COLUMNS = (
    "reading_id, measured_at, patient_id, loinc, unit, value, time_source, received_at,"
    " gateway_id, device_id, device_type, measurement_id, gateway_seq, characteristic,"
    " raw_hex, device_time"
)

_CREATE_STAGING = (
    "CREATE TEMP TABLE IF NOT EXISTS readings_staging ("
    " reading_id uuid, measured_at timestamptz, patient_id text, loinc text, unit text,"
    " value double precision, time_source text, received_at timestamptz, gateway_id text,"
    " device_id text, device_type text, measurement_id uuid, gateway_seq bigint,"
    " characteristic text, raw_hex text, device_time jsonb) ON COMMIT DELETE ROWS"
)


# Claims the ids first: only readings whose id is new are inserted (once, even if a batch
# holds the same message twice), and their ids come back.
_INSERT_NEW_READINGS = sql.SQL(
    "WITH new_ids AS ("
    " INSERT INTO reading_ids (reading_id) SELECT DISTINCT reading_id FROM readings_staging"
    " ON CONFLICT DO NOTHING RETURNING reading_id)"
    " INSERT INTO readings ({columns}) SELECT DISTINCT ON (reading_id) {columns}"
    " FROM readings_staging JOIN new_ids USING (reading_id) RETURNING reading_id"
).format(columns=sql.SQL(_COLUMNS))


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading to store, with the gateway it came through."""

    gateway_id: str
    reading: Reading


def insert_readings(conn: psycopg.Connection, readings: Sequence[StoredReading]) -> set[str]:
    """Insert within the caller's transaction; return the ids that were new."""
    if not readings:
        return set()
    with conn.cursor() as cur:
        cur.execute(_CREATE_STAGING)
        cur.execute("DELETE FROM readings_staging")  # rows of an earlier call in this transaction
        with cur.copy(f"COPY readings_staging ({_COLUMNS}) FROM STDIN") as copy:
            for stored in readings:
                r = stored.reading
                copy.write_row(
                    (
                        r.reading_id,
                        r.measured_at,
                        r.patient_id,
                        r.loinc,
                        r.unit,
                        r.value,
                        str(r.time_source),
                        r.received_at,
                        stored.gateway_id,
                        r.device_id,
                        str(r.device_type),
                        r.measurement_id,
                        r.seq,
                        r.characteristic,
                        r.raw_hex,
                        None
                        if r.device_time is None
                        else json.dumps(
                            {
                                "year": r.device_time.year,
                                "month": r.device_time.month,
                                "day": r.device_time.day,
                                "hours": r.device_time.hours,
                                "minutes": r.device_time.minutes,
                                "seconds": r.device_time.seconds,
                            }
                        ),
                    )
                )
        cur.execute(_INSERT_NEW_READINGS)
        inserted = {str(row[0]) for row in cur.fetchall()}
        # Keep the device registry's last reading time current (one statement per batch).
        cur.execute(
            "INSERT INTO devices (gateway_id, device_id, device_type, patient_id,"
            " last_reading_at)"
            " SELECT gateway_id, device_id, max(device_type), max(patient_id), max(measured_at)"
            " FROM readings_staging GROUP BY gateway_id, device_id"
            " ON CONFLICT (gateway_id, device_id) DO UPDATE SET"
            " patient_id = excluded.patient_id, device_type = excluded.device_type,"
            " last_reading_at = greatest(devices.last_reading_at, excluded.last_reading_at)"
        )
        cur.execute(
            "UPDATE gateways g SET last_seen_at = now() FROM"
            " (SELECT DISTINCT gateway_id FROM readings_staging) s"
            " WHERE g.gateway_id = s.gateway_id"
        )
    return inserted


def patient_readings(
    conn: psycopg.Connection,
    *,
    patient_id: str,
    since: datetime,
    until: datetime | None = None,
    loinc: str | None = None,
    limit: int = 50_000,
) -> list[dict[str, Any]]:
    """A patient's readings in a time window, oldest first."""
    rows = conn.execute(
        "SELECT reading_id, measured_at, loinc, unit, value, time_source, device_id,"
        " device_type, measurement_id FROM readings"
        " WHERE patient_id = %(p)s AND measured_at >= %(since)s"
        " AND (%(until)s::timestamptz IS NULL OR measured_at < %(until)s)"
        " AND (%(loinc)s::text IS NULL OR loinc = %(loinc)s)"
        " ORDER BY measured_at, reading_id LIMIT %(limit)s",
        {"p": patient_id, "since": since, "until": until, "loinc": loinc, "limit": limit},
    ).fetchall()
    return [
        {
            "reading_id": str(r[0]),
            "measured_at": r[1],
            "loinc": r[2],
            "unit": r[3],
            "value": r[4],
            "time_source": r[5],
            "device_id": r[6],
            "device_type": r[7],
            "measurement_id": str(r[8]),
        }
        for r in rows
    ]
