"""Flag lifecycle on a real database and the real API: assignment, snoozes per rule and
direction with an expiry, and escalation of urgent flags nobody acknowledged (recorded once
per severity, notified through the hook after the commit, never for late or snoozed flags)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import httpx
import psycopg
import pytest

from analytics.escalation import LogNotifier, WebhookNotifier, escalate_due, notify_all
from analytics.rules import load_rules
from analytics.worker import escalate, run_once
from ingest.readings import StoredReading, insert_readings
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi
from tests.unit.test_contract import a_reading

pytestmark = pytest.mark.db

SPO2, SYSTOLIC = "59408-5", "8480-6"


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}", "X-CareWatch-User": "nurse.kim"},
        timeout=10,
    ) as test_client:
        yield test_client


def flag_readings(db: psycopg.Connection, *readings: tuple[str, str, float]) -> dict[str, int]:
    """Store (patient, loinc, value) readings taken a minute ago, run the rules; the flag id of
    each rule that opened one."""
    patients = sorted({patient for patient, _, _ in readings})
    enroll(db, gateway_id="gw-life", patients=[PatientRecord(p, p.title()) for p in patients])
    now = datetime.now(UTC)
    unit = {SPO2: "%", SYSTOLIC: "mm[Hg]"}
    insert_readings(
        db,
        [
            StoredReading(
                "gw-life",
                a_reading(
                    patient_id=patient,
                    loinc=loinc,
                    unit=unit[loinc],
                    value=value,
                    seq=seq,
                    measured_at=now - timedelta(minutes=1),
                    received_at=now - timedelta(seconds=50),
                    device_time=None,
                ),
            )
            for seq, (patient, loinc, value) in enumerate(readings)
        ],
    )
    db.commit()
    db.autocommit = True
    run_once(db, load_rules())
    rows = db.execute("SELECT patient_id || '/' || rule_id, flag_id FROM flags").fetchall()
    return {key: flag_id for key, flag_id in rows}


def test_a_flag_is_assigned_and_the_queue_filters_by_assignee(
    client: httpx.Client, db: psycopg.Connection
) -> None:
    flags = flag_readings(db, ("ann", SPO2, 91), ("bob", SYSTOLIC, 190))
    ann = flags["ann/spo2-below-target"]
    assert (
        client.post(f"/api/v1/flags/{ann}/assign", json={"assignee": "nurse.kim"}).json()[
            "assignee"
        ]
        == "nurse.kim"
    )
    mine = client.get("/api/v1/flags", params={"assignee": "nurse.kim"}).json()
    assert [flag["flag_id"] for flag in mine] == [ann]
    events = client.get(f"/api/v1/flags/{ann}").json()["events"]
    assert events[-1]["event"] == "assigned"
    assert events[-1]["detail"] == {"from": None, "to": "nurse.kim"}
    assert client.post("/api/v1/flags/999999/assign", json={"assignee": None}).status_code == 404
    audit = db.execute(
        "SELECT outcome FROM audit_log WHERE action = 'write.flag.assign'"
        " AND actor = 'nurse.kim' ORDER BY audit_id"
    ).fetchall()
    assert audit == [("ok",), ("not_found",)]


def test_a_snooze_hides_one_rule_and_direction_until_it_ends(
    client: httpx.Client, db: psycopg.Connection
) -> None:
    flags = flag_readings(db, ("ann", SPO2, 91), ("ann", SYSTOLIC, 190))
    made = client.post(
        "/api/v1/patients/ann/snoozes",
        json={"rule_id": "spo2-below-target", "direction": "low", "minutes": 120,
              "reason": "known, oxygen being adjusted"},
    )  # fmt: skip
    assert made.status_code == 201, made.text
    queue = client.get("/api/v1/flags").json()
    assert [flag["rule_id"] for flag in queue] == ["hypertensive-crisis"]
    snoozed = client.get("/api/v1/flags", params={"include_snoozed": True}).json()
    assert {flag["rule_id"]: flag["snoozed_until"] is not None for flag in snoozed} == {
        "hypertensive-crisis": False,
        "spo2-below-target": True,
    }
    assert client.get("/api/v1/flags/counts").json()["critical"] == 1  # only the crisis shows
    # The other direction of the same rule is not snoozed: a high flag of it stays in view.
    db.execute(
        "INSERT INTO flags (patient_id, rule_id, direction, loinc, title, severity, threshold,"
        " rules_version, opened_at, last_breach_at, first_value, last_value, worst_value)"
        " VALUES ('ann', 'spo2-below-target', 'high', %s, 'SpO2 high', 'low', '{}', 't',"
        " now(), now(), 100, 100, 100)",
        (SPO2,),
    )
    queue = client.get("/api/v1/flags").json()
    assert sorted((f["rule_id"], f["direction"]) for f in queue) == [
        ("hypertensive-crisis", "high"),
        ("spo2-below-target", "high"),
    ]
    db.execute("DELETE FROM flags WHERE direction = 'high' AND rule_id = 'spo2-below-target'")
    cancelled = client.post(f"/api/v1/snoozes/{made.json()['snooze_id']}/cancel").json()
    assert cancelled["cancelled_by"] == "nurse.kim"
    assert len(client.get("/api/v1/flags").json()) == 2
    assert client.get("/api/v1/patients/ann/snoozes").json() == []
    assert flags  # both flags were raised and recorded throughout


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"rule_id": "x", "direction": "low", "minutes": 0, "reason": "r"}, 422),
        ({"rule_id": "x", "direction": "low", "minutes": 60 * 24 * 31, "reason": "r"}, 422),
        ({"rule_id": "x", "direction": "sideways", "minutes": 60, "reason": "r"}, 422),
        ({"rule_id": "x", "direction": "low", "minutes": 60, "reason": ""}, 422),
    ],
)
def test_a_snooze_needs_a_direction_a_reason_and_at_most_30_days(
    client: httpx.Client, db: psycopg.Connection, body: dict[str, Any], status: int
) -> None:
    flag_readings(db, ("ann", SPO2, 91))
    assert client.post("/api/v1/patients/ann/snoozes", json=body).status_code == status
    valid = {"rule_id": "x", "direction": "low", "minutes": 60, "reason": "r"}
    assert client.post("/api/v1/patients/nobody/snoozes", json=valid).status_code == 404
    assert "no rule 'x'" in client.post("/api/v1/patients/ann/snoozes", json=valid).text


# --- escalation ----------------------------------------------------------------------------------


def at_severity_for(db: psycopg.Connection, flag_id: int, minutes: float) -> None:
    db.execute(
        "UPDATE flags SET severity_since = now() - make_interval(mins => %s) WHERE flag_id = %s",
        (minutes, flag_id),
    )


def test_an_unacknowledged_critical_flag_is_escalated_once(db: psycopg.Connection) -> None:
    flags = flag_readings(db, ("ann", SYSTOLIC, 190), ("bob", SPO2, 93))  # critical, high
    crisis, spo2 = flags["ann/hypertensive-crisis"], flags["bob/spo2-below-target"]
    rules = load_rules()
    now = datetime.now(UTC)
    assert escalate_due(db, rules, now=now) == []  # both fresh
    at_severity_for(db, crisis, 16)  # critical waits 15 min
    at_severity_for(db, spo2, 59)  # high waits 60 min
    escalated = escalate_due(db, rules, now=now)
    assert [(e.flag_id, e.severity, e.rule_id) for e in escalated] == [
        (crisis, "critical", "hypertensive-crisis")
    ]
    assert escalated[0].waited > timedelta(minutes=15)
    assert escalate_due(db, rules, now=now) == []  # once per flag and severity
    event = db.execute(
        "SELECT event, detail->>'severity' FROM flag_events WHERE flag_id = %s"
        " ORDER BY event_id DESC LIMIT 1",
        (crisis,),
    ).fetchone()
    assert event == ("escalated", "critical")


def test_acknowledged_late_or_snoozed_flags_are_not_escalated(db: psycopg.Connection) -> None:
    flags = flag_readings(db, ("ann", SYSTOLIC, 190), ("bob", SYSTOLIC, 195), ("cy", SYSTOLIC, 200))
    rules = load_rules()
    for flag_id in flags.values():
        at_severity_for(db, flag_id, 30)
    db.execute("UPDATE flags SET status = 'acknowledged' WHERE patient_id = 'ann'")
    db.execute("UPDATE flags SET late = true WHERE patient_id = 'bob'")
    db.execute(
        "INSERT INTO flag_snoozes (patient_id, rule_id, direction, until, reason, created_by)"
        " VALUES ('cy', 'hypertensive-crisis', 'high', now() + interval '1 hour', 'r', 'x')"
    )
    assert escalate_due(db, rules, now=datetime.now(UTC)) == []
    db.execute("DELETE FROM flag_snoozes")
    assert [e.flag_id for e in escalate_due(db, rules, now=datetime.now(UTC))] == [
        flags["cy/hypertensive-crisis"]
    ]


class Receiver(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []
    status: ClassVar[int] = 204

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(Receiver.status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received, Receiver.status = [], 204
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/page"
    server.shutdown()
    server.server_close()


def test_the_webhook_hears_of_each_escalation_without_patient_data(
    db: psycopg.Connection, receiver: str
) -> None:
    flags = flag_readings(db, ("ann", SYSTOLIC, 190))
    at_severity_for(db, flags["ann/hypertensive-crisis"], 20)
    assert escalate(db, load_rules(), WebhookNotifier(receiver)) == 1
    [payload] = Receiver.received
    assert payload["flag_id"] == flags["ann/hypertensive-crisis"]
    assert payload["severity"] == "critical"
    assert "ann" not in json.dumps(payload)
    notified = db.execute("SELECT notified_at IS NOT NULL, notify_error FROM flag_escalations")
    assert notified.fetchall() == [(True, None)]


def test_a_failing_receiver_is_recorded_and_the_escalation_stays(
    db: psycopg.Connection, receiver: str
) -> None:
    Receiver.status = 503
    flags = flag_readings(db, ("ann", SYSTOLIC, 190))
    at_severity_for(db, flags["ann/hypertensive-crisis"], 20)
    assert escalate(db, load_rules(), WebhookNotifier(receiver)) == 1
    row = db.execute("SELECT notified_at, notify_error FROM flag_escalations").fetchone()
    assert row is not None and row[0] is None and "503" in row[1]


def test_stepping_up_to_critical_restarts_the_clock(db: psycopg.Connection) -> None:
    flags = flag_readings(db, ("ann", SPO2, 93))  # high
    flag_id = flags["ann/spo2-below-target"]
    at_severity_for(db, flag_id, 61)
    rules = load_rules()
    with db.transaction():
        assert [e.severity for e in escalate_due(db, rules, now=datetime.now(UTC))] == ["high"]
    flag_readings(db, ("ann", SPO2, 90))  # critical now: the critical wait starts over
    assert escalate_due(db, rules, now=datetime.now(UTC)) == []
    at_severity_for(db, flag_id, 16)
    escalations = escalate_due(db, rules, now=datetime.now(UTC))
    assert [e.severity for e in escalations] == ["critical"]
    notify_all(db, escalations, LogNotifier())
