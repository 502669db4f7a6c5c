"""POST /api/v1/rules/preview on a real database: a proposed rule set tried on the stored
readings of the last 30 or 90 days, against the rules in force; audited; bad proposals refused
with the reason."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from importlib import resources

import httpx
import psycopg
import pytest

from ingest.readings import StoredReading, insert_readings
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi
from tests.unit.test_contract import a_reading

pytestmark = pytest.mark.db

DEFAULT_RULES = resources.files("analytics").joinpath("thresholds.toml").read_text()


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}", "X-CareWatch-User": "lead"},
        timeout=30,
    ) as test_client:
        yield test_client


@pytest.fixture
def high_but_not_crisis(db: psycopg.Connection) -> None:
    """Two patients, a systolic reading every morning for 20 days: one at 168-175 (above a
    160 limit, below 180), one at 120-127."""
    patients = [PatientRecord("pt-high", "High Pressure"), PatientRecord("pt-fine", "Fine")]
    enroll(db, gateway_id="gw-preview", patients=patients)
    now = datetime.now(UTC)
    stored = [
        StoredReading(
            "gw-preview",
            a_reading(
                patient_id=patient,
                value=float(base + day % 8),
                seq=day,
                measured_at=now - timedelta(days=day, hours=1),
                received_at=now - timedelta(days=day, hours=1) + timedelta(seconds=5),
                device_time=None,
            ),
        )
        for patient, base in (("pt-high", 168), ("pt-fine", 120))
        for day in range(20)
    ]
    insert_readings(db, stored)
    db.commit()


def test_a_stricter_crisis_limit_shows_who_would_be_alerted(
    client: httpx.Client, db: psycopg.Connection, high_but_not_crisis: None
) -> None:
    proposal = DEFAULT_RULES.replace("above = 180", "above = 160").replace(
        'version = "', 'version = "proposal-'
    )
    answer = client.post("/api/v1/rules/preview", json={"rules_toml": proposal, "days": 30})
    assert answer.status_code == 200, answer.text
    preview = answer.json()
    assert preview["readings"] == 40
    assert preview["patients"] == 2
    assert preview["proposed_version"].startswith("proposal-")
    current = preview["current"]["alerts_per_patient_week"]
    proposed = preview["proposed"]["alerts_per_patient_week"]
    assert proposed > current
    assert preview["patients_gaining_alerts"] == ["pt-high"]
    assert preview["patients_losing_alerts"] == []
    by_rule = {row["rule_id"]: row for row in preview["flags_by_rule"]}
    crisis = by_rule["hypertensive-crisis"]
    assert crisis["proposed"] > crisis["current"]
    assert sum(row["proposed"] for row in by_rule.values()) == preview["proposed"]["flags"]
    audit = db.execute(
        "SELECT actor, outcome FROM audit_log WHERE action = 'read.rules_preview'"
        " AND actor = 'lead'"
    ).fetchall()
    assert audit == [("lead", "ok")]


def test_the_same_rules_change_nothing(client: httpx.Client, high_but_not_crisis: None) -> None:
    preview = client.post(
        "/api/v1/rules/preview", json={"rules_toml": DEFAULT_RULES, "days": 90}
    ).json()
    assert preview["current"] == preview["proposed"]
    assert preview["patients_gaining_alerts"] == preview["patients_losing_alerts"] == []


@pytest.mark.parametrize(
    ("proposal", "message"),
    [
        ("version = ", "Invalid"),
        (DEFAULT_RULES.replace('severity = "critical"', 'severity = "urgent"', 1), "urgent"),
    ],
)
def test_a_proposal_that_is_not_a_valid_rules_file_is_refused_with_the_reason(
    client: httpx.Client, proposal: str, message: str
) -> None:
    answer = client.post("/api/v1/rules/preview", json={"rules_toml": proposal})
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_only_30_or_90_days_and_only_with_a_token(client: httpx.Client) -> None:
    assert (
        client.post(
            "/api/v1/rules/preview", json={"rules_toml": DEFAULT_RULES, "days": 365}
        ).status_code
        == 422
    )
    client.headers.pop("Authorization")
    assert (
        client.post("/api/v1/rules/preview", json={"rules_toml": DEFAULT_RULES}).status_code == 401
    )


def test_a_program_version_is_previewed_on_that_programs_patients_only(
    client: httpx.Client, db: psycopg.Connection, high_but_not_crisis: None
) -> None:
    db.execute("UPDATE patients SET program = 'hypertension' WHERE patient_id = 'pt-high'")
    db.commit()
    proposal = {
        "scope": "program",
        "scope_id": "hypertension",
        "overrides": {"hypertensive-crisis": {"when.0.above": 160}},
        "days": 30,
    }
    preview = client.post("/api/v1/rules/preview", json=proposal).json()
    assert (preview["patients"], preview["readings"]) == (1, 20)  # pt-fine is not in it
    assert preview["proposed_version"] == "program:hypertension proposed"
    assert preview["patients_gaining_alerts"] == ["pt-high"]
    bad = client.post(
        "/api/v1/rules/preview",
        json={**proposal, "overrides": {"hypertensive-crisis": {"when.0.above": "x"}}},
    )
    assert bad.status_code == 422 and "finite number" in bad.json()["detail"]
    neither = client.post("/api/v1/rules/preview", json={"days": 30})
    assert neither.status_code == 422
    unknown = client.post("/api/v1/rules/preview", json={**proposal, "scope_id": "vegan"})
    assert unknown.status_code == 422 and "unknown program" in unknown.json()["detail"]
