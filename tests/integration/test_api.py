"""The HTTP API on a real database: authorisation, audit, flags, thresholds, health."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest
from pydantic import ValidationError

from analytics.rules import load_rules
from analytics.worker import run_once
from ingest.registry import PatientRecord, enroll
from ingest.settings import IngestSettings
from tests.conftest import RunningApi

pytestmark = pytest.mark.db


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    """A client of the real API (served by the session's uvicorn), on an emptied database."""
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}"},
        timeout=10,
    ) as test_client:
        yield test_client


@pytest.fixture
def crisis_flag(db: psycopg.Connection) -> int:
    """A patient with a systolic of 192, flagged by the real rules worker."""
    enroll(db, gateway_id="gw-api", patients=[PatientRecord("pt-api", "Ada Api")])
    db.execute(
        "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
        " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
        " gateway_seq, characteristic, raw_hex) VALUES (gen_random_uuid(), %s, 'pt-api',"
        " '8480-6', 'mm[Hg]', 192, 'device', %s, 'gw-api', 'C0:FF:EE:00:00:01',"
        " 'blood_pressure', gen_random_uuid(), 1, '2A35', '00')",
        (datetime.now(UTC) - timedelta(hours=1), datetime.now(UTC)),
    )
    db.commit()
    db.autocommit = True
    run_once(db, load_rules())
    (flag_id,) = db.execute("SELECT flag_id FROM flags").fetchone()  # type: ignore[misc]
    return int(flag_id)


def test_health_and_readiness_need_no_token(client: httpx.Client) -> None:
    client.headers.pop("Authorization")
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["database"] is True
    assert "carewatch_ingest_readings_committed_total 0" in client.get("/metrics").text


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic abc"])
def test_patient_data_needs_the_token(client: httpx.Client, header: str | None) -> None:
    client.headers.pop("Authorization")
    if header:
        client.headers["Authorization"] = header
    response = client.get("/api/v1/flags")
    assert response.status_code == 401
    assert "CAREWATCH_API_TOKEN" in response.json()["detail"]


def test_every_look_at_patient_data_is_audited_even_when_it_finds_nothing(
    client: httpx.Client, db: psycopg.Connection, crisis_flag: int
) -> None:
    client.headers["X-CareWatch-User"] = "Zo%C3%AB"  # "Zoë", percent-encoded
    assert client.get("/api/v1/patients/pt-api").status_code == 200
    assert client.get("/api/v1/patients/pt-nobody").status_code == 404
    assert client.get("/api/v1/patients/pt-api/readings?days=7").json()[0]["value"] == 192
    rows = db.execute(
        "SELECT actor, action, resource, outcome FROM audit_log ORDER BY audit_id"
    ).fetchall()
    assert rows[-3:] == [
        ("Zoë", "read.patient", "patient/pt-api", "ok"),
        ("Zoë", "read.patient", "patient/pt-nobody", "not_found"),
        ("Zoë", "read.readings", "patient/pt-api/readings", "ok"),
    ]
    with pytest.raises(psycopg.errors.RaiseException, match="append-only"):
        db.execute("DELETE FROM audit_log")


def test_a_flag_is_explained_acknowledged_and_resolved(
    client: httpx.Client, crisis_flag: int
) -> None:
    queue = client.get("/api/v1/flags").json()
    assert [(f["flag_id"], f["severity"], f["status"]) for f in queue] == [
        (crisis_flag, "critical", "open")
    ]
    detail = client.get(f"/api/v1/flags/{crisis_flag}").json()
    assert detail["rule_id"] == "hypertensive-crisis"
    assert detail["threshold"]["above"] == 180
    assert [r["value"] for r in detail["readings"]] == [192]
    client.headers["X-CareWatch-User"] = "dr-okafor"
    acked = client.post(f"/api/v1/flags/{crisis_flag}/acknowledge", json={"note": "calling"})
    assert (acked.json()["status"], acked.json()["acknowledged_by"]) == (
        "acknowledged",
        "dr-okafor",
    )
    assert client.post(f"/api/v1/flags/{crisis_flag}/resolve", json={}).status_code == 422
    resolved = client.post(f"/api/v1/flags/{crisis_flag}/resolve", json={"note": "seen, fine"})
    assert resolved.json()["status"] == "resolved"
    assert client.get("/api/v1/flags").json() == []
    assert client.get("/api/v1/flags/999999").status_code == 404
    again = client.post(f"/api/v1/flags/{crisis_flag}/acknowledge")
    assert again.status_code == 409


def test_thresholds_list_every_line_of_the_rule_set(client: httpx.Client) -> None:
    every = client.get("/api/v1/thresholds").json()
    systolic = client.get("/api/v1/thresholds?loinc=8480-6").json()
    assert every["version"] == systolic["version"]
    assert {(line["metric"], line["limit"]) for line in systolic["lines"]} == {
        ("8480-6", 180),
        ("8480-6", 91),
    }
    assert {line["metric"] for line in every["lines"]} >= {"8480-6", "59408-5", "41653-7"}


def test_production_refuses_the_development_token() -> None:
    with pytest.raises(ValidationError, match="CAREWATCH_API_TOKEN"):
        IngestSettings(
            CAREWATCH_ENV="production", DATABASE_URL="postgresql://x", MQTT_URL="mqtt://x"
        )
