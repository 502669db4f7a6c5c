"""The workspace's fixtures: the real ingest API served in-process, and two seeded patients.

The API is ``ingest.api.app.create_app`` on uvicorn in a background thread (one per test
session, on a free port), against the session's migrated database. The seed goes in through
SQL and the flags come from the real rules worker (``analytics.worker.run_once``).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import psycopg
import pytest

from analytics.rules import load_rules
from analytics.worker import DEFAULT_WORKER, run_once
from carewatch_contract.messages import FollowUpKind, FollowUpRequest
from carewatch_contract.metrics import Loinc
from dashboard.api_client import CareWatchApi, WorkspaceSession, log_in
from ingest import accounts
from ingest.follow_ups import StoredRequest, insert_requests
from tests.conftest import RunningApi

APP_PATH = Path(__file__).resolve().parents[2] / "dashboard" / "app.py"
GATEWAY_ID = "gw-dash-01"


@dataclass(frozen=True)
class SeededWorkspace:
    """What the seed put in: two patients and the flags the rules raised for them."""

    crisis_patient_id: str
    crisis_patient_name: str
    spo2_patient_id: str
    spo2_patient_name: str
    crisis_flag_id: int
    spo2_flag_id: int
    fever_flag_id: int
    crisis_reading_ids: frozenset[str]
    spo2_89_reading_id: str


@pytest.fixture
def api(api_server: RunningApi) -> Iterator[CareWatchApi]:
    """A client of the test API acting as "Dr Client"."""
    with CareWatchApi(api_server.url, api_server.token, user="Dr Client") as client:
        yield client


WORKSPACE_USER: Final = "dr.test"
WORKSPACE_PASSWORD: Final = "a workspace test password"


@dataclass(frozen=True)
class WorkspaceLogin:
    """The test API and a clinician account (``dr.test``) of the care team "ward"."""

    api: RunningApi
    database_url: str

    def session(self) -> WorkspaceSession:
        """Log dr.test in, after giving the ward every patient there is now."""
        with psycopg.connect(self.database_url) as conn:
            ids = [patient_id for (patient_id,) in conn.execute("SELECT patient_id FROM patients")]
            if ids:
                accounts.add_patients(conn, team_id="ward", patient_ids=ids)
        return log_in(self.api.url, WORKSPACE_USER, WORKSPACE_PASSWORD)


@pytest.fixture
def workspace_env(
    api_server: RunningApi,
    database_url: str,
    db: psycopg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> WorkspaceLogin:
    """The environment ``dashboard/app.py`` reads, pointing at the test API, and dr.test."""
    monkeypatch.setenv("CAREWATCH_API_URL", api_server.url)
    monkeypatch.delenv("CAREWATCH_API_TOKEN", raising=False)
    accounts.create_team(db, team_id="ward", name="Ward")
    accounts.create_user(
        db,
        username=WORKSPACE_USER,
        display_name="Dr Test",
        role="clinician",
        password=WORKSPACE_PASSWORD,
        created_by="test",
    )
    accounts.add_members(db, team_id="ward", usernames=[WORKSPACE_USER])
    db.commit()
    return WorkspaceLogin(api_server, database_url)


@pytest.fixture
def seeded(db: psycopg.Connection) -> SeededWorkspace:
    """Two patients with a week of readings, and the flags the real rules raise for them.

    - Alice Moreau (hypertension): blood pressure twice a day until a 192/124 crisis two days
      ago (one critical flag linking both readings; no later pressure, so it has not come back
      in range), and a 38.4 C temperature yesterday (medium).
    - Bruno Keller (COPD): SpO2 once a day, 93 % three days ago (high) and 89 % yesterday,
      which raises that flag to critical.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    alice, bruno = "pt-dash-0001", "pt-dash-0002"
    db.execute(
        "INSERT INTO patients (patient_id, display_name, program, spo2_scale) VALUES"
        " (%s, 'Alice Moreau', 'hypertension', 1), (%s, 'Bruno Keller', 'copd', 1)",
        (alice, bruno),
    )
    db.execute(
        "INSERT INTO gateways (gateway_id, state, state_at, last_seen_at)"
        " VALUES (%s, 'online', %s, %s)",
        (GATEWAY_ID, now, now),
    )
    db.execute(
        "INSERT INTO gateway_patients (gateway_id, patient_id) VALUES (%s, %s), (%s, %s)",
        (GATEWAY_ID, alice, GATEWAY_ID, bruno),
    )
    readings: list[tuple[object, ...]] = []
    seq = iter(range(1, 10_000))

    def reading(
        patient_id: str, device: str, loinc: str, unit: str, value: float, at: datetime
    ) -> str:
        reading_id = str(uuid.uuid4())
        device_id, device_type = DEVICES[device]
        readings.append(
            (reading_id, at, patient_id, loinc, unit, value, device_id, device_type, next(seq))
        )
        return reading_id

    for day in range(6, 0, -1):
        if day > 2:  # the crisis two days ago is her latest blood pressure: its flag stays open
            for hour in (8, 20):
                at = now - timedelta(days=day, hours=hour)
                reading(alice, "bp", Loinc.SYSTOLIC, "mm[Hg]", 138 + day, at)
                reading(alice, "bp", Loinc.DIASTOLIC, "mm[Hg]", 86 + day % 3, at)
        # After the 93 % three days ago he stays at 94 %, inside the rule's hysteresis band
        # (back in range from 95 %): the flag stays open until the 89 % raises it.
        spo2 = 94 if day <= 2 else 96 - day % 2
        reading(bruno, "oximeter", Loinc.SPO2, "%", spo2, now - timedelta(days=day, hours=2))
    crisis_at = now - timedelta(days=2)
    # Systolic first: the flag opens on the systolic reading (ties break on the reading id).
    systolic_id, diastolic_id = sorted(str(uuid.uuid4()) for _ in range(2))
    for reading_id, loinc, value in (
        (systolic_id, Loinc.SYSTOLIC, 192.0),
        (diastolic_id, Loinc.DIASTOLIC, 124.0),
    ):
        device_id, device_type = DEVICES["bp"]
        readings.append(
            (
                reading_id,
                crisis_at,
                alice,
                loinc,
                "mm[Hg]",
                value,
                device_id,
                device_type,
                next(seq),
            )
        )
    reading(alice, "thermometer", Loinc.BODY_TEMPERATURE, "Cel", 38.4, now - timedelta(days=1))
    reading(bruno, "oximeter", Loinc.SPO2, "%", 93, now - timedelta(days=3, hours=1))
    spo2_89 = reading(bruno, "oximeter", Loinc.SPO2, "%", 89, now - timedelta(hours=20))

    with db.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
            " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
            " gateway_seq, characteristic, raw_hex)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'device', %s, %s, %s, %s, %s, %s, '2a35', '00')",
            [
                (rid, at, pid, loinc, unit, value, at, GATEWAY_ID, dev, dtype, uuid.uuid4(), n)
                for rid, at, pid, loinc, unit, value, dev, dtype, n in readings
            ],
        )
        cur.execute(
            "INSERT INTO devices (gateway_id, device_id, device_type, patient_id,"
            " last_reading_at, battery_percent)"
            " SELECT gateway_id, device_id, max(device_type), max(patient_id), max(measured_at),"
            " 80 FROM readings GROUP BY gateway_id, device_id"
        )
    db.commit()
    evaluate_every_reading(db)

    flag_ids = dict(db.execute("SELECT rule_id, flag_id FROM flags").fetchall())
    db.commit()
    assert set(flag_ids) == {"hypertensive-crisis", "spo2-below-target", "fever"}, flag_ids
    return SeededWorkspace(
        crisis_patient_id=alice,
        crisis_patient_name="Alice Moreau",
        spo2_patient_id=bruno,
        spo2_patient_name="Bruno Keller",
        crisis_flag_id=flag_ids["hypertensive-crisis"],
        spo2_flag_id=flag_ids["spo2-below-target"],
        fever_flag_id=flag_ids["fever"],
        crisis_reading_ids=frozenset({systolic_id, diastolic_id}),
        spo2_89_reading_id=spo2_89,
    )


@dataclass(frozen=True)
class CallBacks:
    """The follow-up requests :func:`call_backs` stored, newest first."""

    bruno_request_id: str  # open, received 10 min ago, asked 2 h ago, with a note
    alice_request_id: str  # open, received 1 h ago, no note
    done_request_id: str  # Alice's earlier one, done


@pytest.fixture
def call_backs(db: psycopg.Connection, seeded: SeededWorkspace) -> Iterator[CallBacks]:
    """Call-back requests of the seeded patients, as the consumer stores them; removed after
    the test (the ``db`` fixture does not empty the follow-up tables)."""
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    now = datetime.now(UTC).replace(microsecond=0)
    ids = []
    for patient_id, asked, received, note in (
        (seeded.spo2_patient_id, timedelta(hours=2), timedelta(minutes=10), "Short of breath*"),
        (seeded.crisis_patient_id, timedelta(hours=1), timedelta(hours=1), None),
        (seeded.crisis_patient_id, timedelta(days=3), timedelta(days=3), "Old one"),
    ):
        request = FollowUpRequest(
            request_id=str(uuid.uuid4()),
            gateway_id=GATEWAY_ID,
            patient_id=patient_id,
            kind=FollowUpKind.CALL_BACK,
            at=now - asked,
            note=note,
        )
        insert_requests(db, [StoredRequest(GATEWAY_ID, request)])
        db.execute(
            "UPDATE follow_up_requests SET received_at = %s WHERE request_id = %s",
            (now - received, request.request_id),
        )
        ids.append(request.request_id)
    db.execute(
        "UPDATE follow_up_requests SET status = 'done', closed_by = 'Dr Earlier',"
        " closed_at = now() WHERE request_id = %s",
        (ids[2],),
    )
    db.commit()
    yield CallBacks(*ids)
    db.rollback()
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    db.commit()


def evaluate_every_reading(db: psycopg.Connection, *, timeout_s: float = 30.0) -> None:
    """Run the real rules worker until it has evaluated every stored reading.

    A pass covers the transactions that finished before the oldest one still running on the
    whole server (transaction ids are server-wide), so a transaction open elsewhere, e.g. a
    concurrent test run on the same PostgreSQL, can hold a pass back for a while.
    """
    rules = load_rules()
    newest = db.execute("SELECT max(ingest_xid)::text FROM readings").fetchone()
    db.commit()
    if newest is None or newest[0] is None:
        return
    deadline = time.monotonic() + timeout_s
    while True:
        run_once(db, rules, worker=DEFAULT_WORKER)
        row = db.execute(
            "SELECT processed_below::text FROM rules_watermark WHERE worker = %s",
            (DEFAULT_WORKER,),
        ).fetchone()
        db.commit()
        if row is not None and int(row[0]) > int(newest[0]):
            return
        if time.monotonic() > deadline:
            pytest.fail(
                f"the rules worker did not get past the seeded readings in {timeout_s:g} s: "
                "a transaction stays open on the PostgreSQL server"
            )
        time.sleep(0.1)


DEVICES = {
    "bp": ("C4:7C:8D:00:00:01", "blood_pressure"),
    "thermometer": ("C4:7C:8D:00:00:02", "thermometer"),
    "oximeter": ("C4:7C:8D:00:00:03", "pulse_oximeter"),
}
