"""Threshold sets through the API and the rules worker: a program's overrides change what its
patients' readings raise (and the flag names the version), a lead's lock holds against a
patient override, a bad override is refused with its reason."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from analytics.rules import load_rules
from analytics.threshold_sets import load_program_templates
from analytics.threshold_store import (
    TEMPLATE_AUTHOR,
    current_versions,
    save_version,
    seed_program_templates,
)
from analytics.worker import run_once
from ingest.readings import StoredReading, insert_readings
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi
from tests.unit.test_contract import a_reading

pytestmark = pytest.mark.db


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}", "X-CareWatch-User": "lead.ana"},
        timeout=10,
    ) as test_client:
        yield test_client


@pytest.fixture
def two_patients(db: psycopg.Connection) -> None:
    enroll(
        db,
        gateway_id="gw-sets",
        patients=[
            PatientRecord("pt-htn", "Hyper Tension", program="hypertension"),
            PatientRecord("pt-gen", "Gene Ral", program="general"),
            PatientRecord("pt-copd", "Co Pd", program="copd", spo2_scale=2),
        ],
    )
    db.commit()


def systolic_175_for_both(db: psycopg.Connection) -> None:
    now = datetime.now(UTC)
    insert_readings(
        db,
        [
            StoredReading(
                "gw-sets",
                a_reading(
                    patient_id=patient,
                    value=175.0,
                    seq=seq,
                    measured_at=now - timedelta(minutes=1),
                    received_at=now - timedelta(seconds=50),
                    device_time=None,
                ),
            )
            for seq, patient in enumerate(("pt-htn", "pt-gen"))
        ],
    )
    db.commit()


def test_a_program_override_changes_what_its_patients_raise(
    client: httpx.Client, db: psycopg.Connection, two_patients: None
) -> None:
    saved = client.post(
        "/api/v1/thresholds/program/hypertension",
        json={
            "overrides": {"hypertensive-crisis": {"when.0.above": 170}},
            "reason": "program protocol: act from 170",
        },
    )
    assert saved.status_code == 201, saved.text
    version = saved.json()
    assert (version["author"], version["label"]) == (
        "lead.ana",
        f"program:hypertension@{version['version_id']}",
    )
    shown = client.get("/api/v1/thresholds/program/hypertension").json()
    assert shown["in_force"]["version_id"] == version["version_id"]

    systolic_175_for_both(db)
    db.autocommit = True
    run_once(db, load_rules())
    flags = db.execute(
        "SELECT patient_id, rules_version FROM flags WHERE rule_id = 'hypertensive-crisis'"
    ).fetchall()
    assert flags == [("pt-htn", f"{load_rules().version}+{version['label']}")]


def test_a_locked_program_value_holds_against_a_patient_override(
    client: httpx.Client, db: psycopg.Connection, two_patients: None
) -> None:
    lock = "spo2-below-target-scale-2.when.0.below"
    assert (
        client.post(
            "/api/v1/thresholds/program/copd",
            json={
                "overrides": {},
                "reason": "scale 2 floor set by the COPD lead",
                "locked": [lock],
            },
        ).status_code
        == 201
    )
    refused = client.post(
        "/api/v1/thresholds/patient/pt-copd",
        json={"overrides": {"spo2-below-target-scale-2": {"when.0.below": 85}}, "reason": "r"},
    )
    assert refused.status_code == 409
    assert lock in refused.json()["detail"]
    allowed = client.post(
        "/api/v1/thresholds/patient/pt-copd",
        json={"overrides": {"fever": {"when.0.above": 38.5}}, "reason": "runs warm"},
    )
    assert allowed.status_code == 201
    outcomes = db.execute(
        "SELECT outcome FROM audit_log WHERE action = 'write.thresholds'"
        " AND resource LIKE '%%copd' AND actor = 'lead.ana' ORDER BY audit_id"
    ).fetchall()
    assert outcomes == [("ok",), ("conflict",), ("ok",)]


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        (
            "program/hypertension",
            {"overrides": {"nope": {"k": 1}}, "reason": "r"},
            "no rule 'nope'",
        ),
        (
            "program/hypertension",
            {"overrides": {"fever": {"when.0.above": "hot"}}, "reason": "r"},
            "finite number",
        ),
        ("program/vegan", {"overrides": {}, "reason": "r"}, "unknown program"),
        ("patient/pt-gen", {"overrides": {}, "reason": "r", "locked": ["fever.x"]}, "locks"),
        ("program/copd", {"overrides": {}, "reason": "r", "locked": ["fever.x"]}, "lock"),
    ],
)
def test_a_bad_version_is_refused_with_its_reason(
    client: httpx.Client, two_patients: None, path: str, body: dict[str, object], message: str
) -> None:
    answer = client.post(f"/api/v1/thresholds/{path}", json=body)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_thresholds_of_an_unknown_patient_are_not_found(
    client: httpx.Client, two_patients: None
) -> None:
    answer = client.post("/api/v1/thresholds/patient/nobody", json={"overrides": {}, "reason": "r"})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "no such patient"


def test_a_program_version_that_would_break_a_patients_override_is_refused(
    client: httpx.Client, two_patients: None
) -> None:
    assert (
        client.post(
            "/api/v1/thresholds/patient/pt-htn",
            json={"overrides": {"fever": {"when.1.above": 39.5}}, "reason": "runs warm"},
        ).status_code
        == 201
    )
    breaking = client.post(
        "/api/v1/thresholds/program/hypertension",
        json={"overrides": {"fever": {"when": [{"metric": "8310-5", "above": 38.5,
              "severity": "medium", "label": "fever"}]}}, "reason": "one fever limit"},
    )  # fmt: skip
    assert breaking.status_code == 422
    assert "'1' is not an index" in breaking.json()["detail"]


def test_ingest_stores_the_program_templates_once_and_never_over_a_leads_version(
    db: psycopg.Connection,
) -> None:
    templates = load_program_templates(load_rules())
    save_version(
        db,
        load_rules(),
        scope="program",
        scope_id="copd",
        overrides={},
        reason="our own COPD thresholds",
        author="lead.ana",
    )
    assert seed_program_templates(db, templates) == ["diabetes", "heart_failure", "hypertension"]
    assert seed_program_templates(db, templates) == []
    db.commit()
    in_force = current_versions(db, scope="program")
    assert in_force["copd"].author == "lead.ana"
    hypertension = in_force["hypertension"]
    assert hypertension.author == TEMPLATE_AUTHOR
    assert "ACC/AHA" in hypertension.reason
    assert hypertension.locked == templates["hypertension"].locked
    assert dict(hypertension.overrides) == dict(templates["hypertension"].overrides)
