"""The billing evidence through the API, from stored readings and logged calls: codes per
patient, reasons, the CSV export, role checks and care-team scoping."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from ingest import accounts
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi

pytestmark = pytest.mark.db

SEPTEMBER = datetime(2026, 9, 1, 14, 0, tzinfo=UTC)


def reading_on(db: psycopg.Connection, patient: str, day: int) -> None:
    db.execute(
        "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
        " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
        " gateway_seq, characteristic, raw_hex) VALUES (gen_random_uuid(), %s, %s, '29463-7',"
        " 'kg', 80, 'device', %s, 'gw-bill', 'C0:FF:EE:00:00:09', 'weight_scale',"
        " gen_random_uuid(), 1, '2A9D', '00')",
        (SEPTEMBER + timedelta(days=day), patient, SEPTEMBER + timedelta(days=day)),
    )


def call(db: psycopg.Connection, patient: str, day: int, minutes: int, outcome: str) -> None:
    start = SEPTEMBER + timedelta(days=day)
    db.execute(
        "INSERT INTO calls (call_id, patient_id, caller, started_at, ended_at, outcome)"
        " VALUES (%s, %s, 'dr.bill', %s, %s, %s)",
        (str(uuid.uuid4()), patient, start, start + timedelta(minutes=minutes), outcome),
    )


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    enroll(
        db,
        gateway_id="gw-bill",
        patients=[PatientRecord("pt-full", "Full Month"), PatientRecord("pt-few", "Few Days")],
    )
    db.execute("UPDATE patients SET monitoring_started_on = '2026-09-01'")
    for day in range(0, 30, 2):  # 15 days...
        reading_on(db, "pt-full", day)
        reading_on(db, "pt-full", day)  # ... twice a day counts once
    reading_on(db, "pt-full", 29)  # ... and a 16th day: 99454
    for day in (3, 4, 9):
        reading_on(db, "pt-few", day)  # 3 days: 99445
    call(db, "pt-full", 5, 25, "reached")
    call(db, "pt-full", 20, 20, "voicemail")  # 45 minutes in all: 99457 + 99458
    call(db, "pt-few", 7, 15, "no_answer")  # time, but nobody reached: no code
    db.commit()
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}", "X-CareWatch-User": "lead.bill"},
        timeout=30,
    ) as test_client:
        yield test_client


def test_the_evidence_is_computed_from_readings_and_calls(client: httpx.Client) -> None:
    answer = client.get("/api/v1/billing", params={"month": "2026-09"})
    assert answer.status_code == 200, answer.text
    rows = {row["patient_id"]: row for row in answer.json()["rows"]}
    full, few = rows["pt-full"], rows["pt-few"]
    assert (full["device_days"], full["device_code"]) == (16, "99454")
    assert (full["management_minutes"], full["live_interactions"]) == (45, 1)
    assert full["management_codes"] == "99457+99458"
    assert (full["period_start"], full["period_end"]) == ("2026-09-01", "2026-09-30")
    assert full["reason"] == ""
    assert (few["device_days"], few["device_code"], few["management_codes"]) == (3, "99445", "")
    assert "no live interaction" in few["reason"]


def test_the_csv_export_opens_in_a_spreadsheet(client: httpx.Client) -> None:
    answer = client.get("/api/v1/billing", params={"month": "2026-09", "format": "csv"})
    assert answer.headers["content-type"].startswith("text/csv")
    assert "rpm-evidence-2026-09.csv" in answer.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(answer.text)))
    assert {row["patient_id"]: row["device_code"] for row in table} == {
        "pt-full": "99454",
        "pt-few": "99445",
    }


def test_a_bad_month_or_time_zone_is_refused(client: httpx.Client) -> None:
    assert client.get("/api/v1/billing", params={"month": "2026-13"}).status_code == 422
    unknown = client.get("/api/v1/billing", params={"month": "2026-09", "tz": "Mars/Base"})
    assert unknown.status_code == 422 and "time zone" in unknown.json()["detail"]


def test_billing_is_for_leads_and_shows_only_their_teams_patients(
    client: httpx.Client, db: psycopg.Connection, api_server: RunningApi
) -> None:
    accounts.create_team(db, team_id="billing-team", name="Billing")
    accounts.add_patients(db, team_id="billing-team", patient_ids=["pt-few"])
    for username, role in (("nora.nurse", "nurse"), ("lea.lead", "lead")):
        accounts.create_user(
            db,
            username=username,
            display_name=username,
            role=role,
            password="a billing test password",
            created_by="test",
        )
    accounts.add_members(db, team_id="billing-team", usernames=["nora.nurse", "lea.lead"])
    db.commit()

    def as_user(username: str) -> httpx.Response:
        token = httpx.post(
            f"{api_server.url}/api/v1/auth/login",
            json={"username": username, "password": "a billing test password"},
        ).json()["token"]
        return httpx.get(
            f"{api_server.url}/api/v1/billing",
            params={"month": "2026-09"},
            headers={"Authorization": f"Bearer {token}"},
        )

    assert as_user("nora.nurse").status_code == 403
    lead = as_user("lea.lead")
    assert [row["patient_id"] for row in lead.json()["rows"]] == ["pt-few"]
