"""The FHIR export on the real API and database: a searchset Bundle of a patient's vital
signs (a cuff measurement as one blood-pressure panel) and the Patient, both valid FHIR;
the date filter; access control and audit as for every patient route."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from fhir.resources.R4B import get_fhir_model_class

from ingest import accounts
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi

pytestmark = pytest.mark.db

NOW = datetime.now(UTC).replace(microsecond=0)


def add_reading(
    db: psycopg.Connection, loinc: str, unit: str, value: float, at: datetime, measurement: str
) -> None:
    db.execute(
        "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
        " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
        " gateway_seq, characteristic, raw_hex) VALUES (gen_random_uuid(), %s, 'pt-fhir',"
        " %s, %s, %s, 'device', %s, 'gw-fhir', 'C0:FF:EE:00:00:07', 'blood_pressure', %s, 1,"
        " '2A35', '00')",
        (at, loinc, unit, value, at, measurement),
    )


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    enroll(
        db,
        gateway_id="gw-fhir",
        patients=[
            PatientRecord("pt-fhir", "Fiona Hir", phone="+15550100"),
            PatientRecord("pt-other", "Otto Other"),
        ],
    )
    cuff = str(uuid.uuid4())
    for loinc, unit, value in (("8480-6", "mm[Hg]", 142), ("8462-4", "mm[Hg]", 91)):
        add_reading(db, loinc, unit, value, NOW - timedelta(days=2), cuff)
    add_reading(db, "8867-4", "/min", 71, NOW - timedelta(days=2), cuff)
    add_reading(db, "59408-5", "%", 96, NOW - timedelta(days=20), str(uuid.uuid4()))
    db.commit()
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}"},
        timeout=10,
    ) as test_client:
        yield test_client


def validated(body: dict[str, object]) -> dict[str, object]:
    model = get_fhir_model_class(str(body["resourceType"])).model_validate(body)
    return model.model_dump(mode="json", exclude_none=True)


def test_observations_are_a_valid_searchset_bundle_with_one_bp_panel(
    client: httpx.Client,
) -> None:
    answer = client.get("/fhir/Observation", params={"patient": "pt-fhir"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/fhir+json")
    bundle = answer.json()
    validated(bundle)
    assert (bundle["type"], bundle["total"]) == ("searchset", 3)
    by_code = {
        entry["resource"]["code"]["coding"][0]["code"]: entry["resource"]
        for entry in bundle["entry"]
    }
    assert set(by_code) == {"85354-9", "8867-4", "59408-5"}
    panel = by_code["85354-9"]
    components = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in panel["component"]}
    assert components["8480-6"] == {
        "value": 142,
        "unit": "mmHg",
        "system": "http://unitsofmeasure.org",
        "code": "mm[Hg]",
    }
    assert components["8462-4"]["value"] == 91
    assert panel["subject"] == {"reference": "Patient/pt-fhir"}
    assert panel["device"]["identifier"]["value"] == "C0:FF:EE:00:00:07"
    assert datetime.fromisoformat(panel["effectiveDateTime"]) == NOW - timedelta(days=2)
    for entry in bundle["entry"]:
        assert entry["fullUrl"].startswith(f"{client.base_url}/fhir/Observation/")


def test_the_date_filter_narrows_the_search_and_a_bad_date_is_an_operation_outcome(
    client: httpx.Client,
) -> None:
    since = (NOW - timedelta(days=7)).date().isoformat()
    recent = client.get("/fhir/Observation", params={"patient": "pt-fhir", "date": f"ge{since}"})
    assert recent.json()["total"] == 2  # the panel and the pulse; not the SpO2 of 20 days ago
    older = client.get(
        "/fhir/Observation", params=[("patient", "Patient/pt-fhir"), ("date", f"lt{since}")]
    )
    assert [e["resource"]["code"]["coding"][0]["code"] for e in older.json()["entry"]] == [
        "59408-5"
    ]
    bad = client.get("/fhir/Observation", params={"patient": "pt-fhir", "date": "ne2026"})
    assert bad.status_code == 400
    outcome = validated(bad.json())
    assert outcome["issue"][0]["code"] == "invalid" and "ne2026" in bad.text


def test_the_patient_is_a_valid_patient_resource(client: httpx.Client) -> None:
    patient = client.get("/fhir/Patient/pt-fhir").json()
    validated(patient)
    assert patient["name"] == [{"text": "Fiona Hir"}]
    assert patient["telecom"] == [{"system": "phone", "value": "+15550100"}]


def test_another_teams_patient_is_not_found_and_audited_as_denied(
    client: httpx.Client, db: psycopg.Connection, api_server: RunningApi
) -> None:
    accounts.create_team(db, team_id="other-team", name="Other")
    accounts.add_patients(db, team_id="other-team", patient_ids=["pt-other"])
    accounts.create_user(
        db,
        username="olga",
        display_name="Olga",
        role="clinician",
        password="olga's long password",
        created_by="test",
    )
    accounts.add_members(db, team_id="other-team", usernames=["olga"])
    db.commit()
    token = httpx.post(
        f"{api_server.url}/api/v1/auth/login",
        json={"username": "olga", "password": "olga's long password"},
    ).json()["token"]
    olga = {"Authorization": f"Bearer {token}"}
    for path in ("/fhir/Patient/pt-fhir", "/fhir/Observation?patient=pt-fhir"):
        answer = client.get(path, headers=olga)
        assert answer.status_code == 404
        assert validated(answer.json())["issue"][0]["code"] == "not-found"
    assert client.get("/fhir/Patient/pt-other", headers=olga).status_code == 200
    rows = db.execute(
        "SELECT action, outcome FROM audit_log WHERE actor = 'olga' AND action LIKE 'read.fhir%%'"
        " ORDER BY audit_id"
    ).fetchall()
    assert rows == [
        ("read.fhir.patient", "denied"),
        ("read.fhir.observations", "denied"),
        ("read.fhir.patient", "ok"),
    ]
