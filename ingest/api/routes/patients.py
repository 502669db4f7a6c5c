"""Patients and their readings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from fastapi import APIRouter, Query
from fastapi.responses import Response

from ingest.api.deps import CallerDep, ConnDep, audited, require_patient
from ingest.readings import patient_readings
from ingest.rollups import Bucket, patient_summary

router = APIRouter(prefix="/api/v1/patients", tags=["patients"])


def json_rows(rows: list[dict[str, Any]]) -> Response:
    """Rows of plain values as JSON, encoded by msgspec: a 90-day timeline has ten thousand
    rows, and FastAPI's generic encoder spends ~20 us on each (bench/workspace.py)."""
    return Response(msgspec.json.encode(rows), media_type="application/json")


@router.get("")
def list_patients(conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """The caller's patients with their latest reading time and open flags."""
    visible = sorted(caller.patient_ids) if caller.patient_ids is not None else None
    rows = conn.execute(
        "SELECT p.patient_id, p.display_name, p.program, p.spo2_scale,"
        " (SELECT max(d.last_reading_at) FROM devices d WHERE d.patient_id = p.patient_id),"
        " (SELECT count(*) FROM flags f WHERE f.patient_id = p.patient_id"
        "  AND f.status <> 'resolved'),"
        " (SELECT string_agg(DISTINCT gp.gateway_id, ',') FROM gateway_patients gp"
        "  WHERE gp.patient_id = p.patient_id)"
        " FROM patients p WHERE (%s::text[] IS NULL OR p.patient_id = ANY(%s::text[]))"
        " ORDER BY p.display_name, p.patient_id",
        (visible, visible),
    ).fetchall()
    audited(conn, caller, action="read.patients", resource="patients", outcome="ok")
    return [
        {
            "patient_id": r[0],
            "display_name": r[1],
            "program": r[2],
            "spo2_scale": r[3],
            "last_reading_at": r[4],
            "open_flags": r[5],
            "gateways": r[6].split(",") if r[6] else [],
        }
        for r in rows
    ]


@router.get("/{patient_id}")
def get_patient(patient_id: str, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """One patient with their devices and gateways."""
    resource = f"patient/{patient_id}"
    row = require_patient(conn, caller, patient_id, action="read.patient", resource=resource)
    devices = conn.execute(
        "SELECT d.device_id, d.device_type, d.gateway_id, d.last_reading_at, d.battery_percent,"
        " g.state, g.last_seen_at FROM devices d JOIN gateways g USING (gateway_id)"
        " WHERE d.patient_id = %s ORDER BY d.device_type, d.device_id",
        (patient_id,),
    ).fetchall()
    audited(conn, caller, action="read.patient", resource=resource, outcome="ok")
    return {
        **row,
        "devices": [
            {
                "device_id": d[0],
                "device_type": d[1],
                "gateway_id": d[2],
                "last_reading_at": d[3],
                "battery_percent": d[4],
                "gateway_state": d[5],
                "gateway_last_seen_at": d[6],
            }
            for d in devices
        ],
    }


@router.get("/{patient_id}/readings", response_model=list[dict[str, Any]])
def get_readings(
    patient_id: str,
    conn: ConnDep,
    caller: CallerDep,
    days: Annotated[int, Query(ge=1, le=366)] = 7,
    loinc: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """The patient's readings over the last ``days`` days, oldest first."""
    resource = f"patient/{patient_id}/readings"
    require_patient(conn, caller, patient_id, action="read.readings", resource=resource)
    since = datetime.now(UTC) - timedelta(days=days)
    rows = patient_readings(conn, patient_id=patient_id, since=since, loinc=loinc)
    audited(conn, caller, action="read.readings", resource=resource, outcome="ok")
    return json_rows(rows)


#: How far back a summary reaches when the caller gives no ``since``.
SUMMARY_DEFAULT_SPAN = {"hour": timedelta(days=7), "day": timedelta(days=90)}


@router.get("/{patient_id}/readings/summary", response_model=list[dict[str, Any]])
def get_readings_summary(
    patient_id: str,
    conn: ConnDep,
    caller: CallerDep,
    bucket: Bucket = "hour",
    since: datetime | None = None,
    loinc: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """The patient's readings per UTC hour or day: ``n``, ``min_value``, ``max_value``,
    ``avg_value``, ``last_value`` and ``last_at`` per metric (``loinc``) and unit, from the
    bucket holding ``since`` (default: 7 days ago for hours, 90 for days), by metric then time.
    Read from the rollups (``readings_hourly`` / ``readings_daily``) on either storage."""
    resource = f"patient/{patient_id}/readings/summary"
    require_patient(conn, caller, patient_id, action="read.readings.summary", resource=resource)
    if since is None:
        since = datetime.now(UTC) - SUMMARY_DEFAULT_SPAN[bucket]
    rows = patient_summary(conn, patient_id=patient_id, bucket=bucket, since=since, loinc=loinc)
    audited(conn, caller, action="read.readings.summary", resource=resource, outcome="ok")
    return json_rows(rows)
