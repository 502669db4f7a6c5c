"""FHIR R4 export: a patient's vital-signs Observations as a searchset Bundle, and the Patient.

``GET /fhir/Observation?patient=<id>&date=ge2026-11-01`` and ``GET /fhir/Patient/<id>``,
``application/fhir+json``. The same authentication, care-team scoping and audit as the rest
of the API: another team's patient is "not found", recorded as denied. Errors are
OperationOutcomes. The mapping itself is :mod:`ingest.fhir`.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import JSONResponse

from ingest import fhir
from ingest.api.deps import CallerDep, ConnDep, audited, require_patient
from ingest.readings import patient_readings

router = APIRouter(prefix="/fhir", tags=["fhir"])

FHIR_JSON = "application/fhir+json"
#: Without a lower ``date`` bound, a search reaches back this far.
DEFAULT_SPAN = timedelta(days=90)
#: The most Observations one search returns (a narrower ``date`` gets the rest).
MAX_READINGS = 50_000


def _fhir(body: dict[str, Any], status_code: int = 200) -> JSONResponse:
    return JSONResponse(body, status_code=status_code, media_type=FHIR_JSON)


def _outcome(status_code: int, code: str, message: str) -> JSONResponse:
    return _fhir(fhir.operation_outcome("error", code, message), status_code)


@router.get("/Observation")
def search_observations(
    request: Request,
    conn: ConnDep,
    caller: CallerDep,
    patient: Annotated[str, Query(max_length=64)],
    date: Annotated[list[str] | None, Query(max_length=4)] = None,
) -> JSONResponse:
    """The patient's Observations in the ``date`` window (default: the last 90 days)."""
    patient_id = patient.removeprefix("Patient/")
    resource = f"patient/{patient_id}/fhir/observations"
    try:
        since, until = fhir.parse_date_filters(date or [])
    except fhir.FhirSearchError as exc:
        return _outcome(400, "invalid", str(exc))
    try:
        require_patient(
            conn, caller, patient_id, action="read.fhir.observations", resource=resource
        )
    except HTTPException:
        return _outcome(404, "not-found", f"no patient {patient_id!r}")
    if since is None:
        since = (until or datetime.now(UTC)) - DEFAULT_SPAN
    rows = patient_readings(
        conn, patient_id=patient_id, since=since, until=until, limit=MAX_READINGS
    )
    audited(conn, caller, action="read.fhir.observations", resource=resource, outcome="ok")
    try:
        resources = fhir.observations(rows, patient_id=patient_id)
    except fhir.FhirMappingError as exc:
        return _outcome(500, "exception", str(exc))
    return _fhir(fhir.searchset_bundle(resources, self_url=str(request.url)))


@router.get("/Patient/{patient_id}")
def read_patient(patient_id: str, conn: ConnDep, caller: CallerDep) -> JSONResponse:
    resource = f"patient/{patient_id}/fhir"
    try:
        row = require_patient(
            conn, caller, patient_id, action="read.fhir.patient", resource=resource
        )
    except HTTPException:
        return _outcome(404, "not-found", f"no patient {patient_id!r}")
    audited(conn, caller, action="read.fhir.patient", resource=resource, outcome="ok")
    try:
        return _fhir(fhir.patient_resource(row))
    except fhir.FhirMappingError as exc:
        return _outcome(500, "exception", str(exc))
