"""Accounts and access on the real API and database: login and sessions, rate-limited logins,
care-team scoping of every patient route (another team's patient is a 404, audited as denied),
writes checked by role, and an audit log the API's database role can only append to."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from analytics.rules import load_rules
from analytics.worker import run_once
from ingest import accounts
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi
from tests.integration.test_follow_ups_api import add_request

pytestmark = pytest.mark.db

PASSWORD = "correct horse battery staple"
#: username -> (role, team)
STAFF = {
    "nina": ("clinician", "north"),
    "ned": ("nurse", "north"),
    "lena": ("lead", "north"),
    "sam": ("clinician", "south"),
    "adam": ("admin", None),
}


@pytest.fixture(scope="module")
def password_hash() -> str:
    """One argon2id hash for every test user (hashing is slow on purpose)."""
    return accounts.hash_password(PASSWORD)


@pytest.fixture
def world(db: psycopg.Connection, password_hash: str) -> dict[str, int]:
    """Two care teams, each with one patient who has a crisis flag; the staff of STAFF."""
    enroll(db, gateway_id="gw-north", patients=[PatientRecord("pt-north", "Nora North")])
    enroll(db, gateway_id="gw-south", patients=[PatientRecord("pt-south", "Stan South")])
    for team in ("north", "south"):
        accounts.create_team(db, team_id=team, name=f"Team {team}")
    accounts.add_patients(db, team_id="north", patient_ids=["pt-north"])
    accounts.add_patients(db, team_id="south", patient_ids=["pt-south"])
    for username, (role, team) in STAFF.items():
        db.execute(
            "INSERT INTO users (username, display_name, role, password_hash, created_by)"
            " VALUES (%s, %s, %s, %s, 'test')",
            (username, username.title(), role, password_hash),
        )
        if team:
            accounts.add_members(db, team_id=team, usernames=[username])
    now = datetime.now(UTC)
    for patient, gateway in (("pt-north", "gw-north"), ("pt-south", "gw-south")):
        db.execute(
            "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
            " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
            " gateway_seq, characteristic, raw_hex) VALUES (gen_random_uuid(), %s, %s,"
            " '8480-6', 'mm[Hg]', 195, 'device', %s, %s, 'C0:FF:EE:00:00:01',"
            " 'blood_pressure', gen_random_uuid(), 1, '2A35', '00')",
            (now - timedelta(minutes=30), patient, now, gateway),
        )
    db.commit()
    db.autocommit = True
    run_once(db, load_rules())
    db.autocommit = False
    flags = dict(db.execute("SELECT patient_id, flag_id FROM flags").fetchall())
    snooze = db.execute(
        "INSERT INTO flag_snoozes (patient_id, rule_id, direction, until, reason, created_by)"
        " VALUES ('pt-south', 'fever', 'high', now() + interval '1 hour', 'test', 'sam')"
        " RETURNING snooze_id"
    ).fetchone()
    db.commit()
    assert snooze is not None
    return {"north_flag": flags["pt-north"], "south_flag": flags["pt-south"], "snooze": snooze[0]}


@pytest.fixture
def login(api_server: RunningApi) -> Iterator[Callable[[str], httpx.Client]]:
    """Log a user in; a client that sends their session token."""
    clients: list[httpx.Client] = []

    def log_in(username: str) -> httpx.Client:
        answer = httpx.post(
            f"{api_server.url}/api/v1/auth/login",
            json={"username": username, "password": PASSWORD},
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        client = httpx.Client(
            base_url=api_server.url,
            headers={"Authorization": f"Bearer {answer.json()['token']}"},
            timeout=10,
        )
        clients.append(client)
        return client

    yield log_in
    for client in clients:
        client.close()


def audit_rows(db: psycopg.Connection, actor: str) -> list[tuple[str, str, str]]:
    db.rollback()
    return db.execute(
        "SELECT action, resource, outcome FROM audit_log WHERE actor = %s ORDER BY audit_id",
        (actor,),
    ).fetchall()


def test_login_gives_a_session_with_role_and_teams_and_logout_ends_it(
    world: dict[str, int], login: Callable[[str], httpx.Client], db: psycopg.Connection
) -> None:
    nina = login("nina")
    me = nina.get("/api/v1/auth/me").json()
    assert me["username"] == "nina" and me["role"] == "clinician" and me["teams"] == ["north"]
    assert "triage" in me["permissions"] and "program_thresholds" not in me["permissions"]
    assert nina.post("/api/v1/auth/logout").status_code == 204
    assert nina.get("/api/v1/patients").status_code == 401
    stored = db.execute("SELECT token_sha256 FROM api_sessions").fetchall()
    token = nina.headers["Authorization"].removeprefix("Bearer ")
    assert stored == [(accounts.token_digest(token),)]  # the digest is kept, not the token
    assert ("login", "user/nina", "ok") in audit_rows(db, "nina")


def test_a_session_ends_after_the_idle_timeout(
    world: dict[str, int], login: Callable[[str], httpx.Client], db: psycopg.Connection
) -> None:
    nina = login("nina")
    assert nina.get("/api/v1/patients").status_code == 200
    db.execute("UPDATE api_sessions SET last_used_at = now() - interval '29 minutes'")
    db.commit()
    assert nina.get("/api/v1/patients").status_code == 200  # used: the clock starts again
    db.execute("UPDATE api_sessions SET last_used_at = now() - interval '31 minutes'")
    db.commit()
    answer = nina.get("/api/v1/patients")
    assert answer.status_code == 401
    assert "log in again" in answer.json()["detail"]


def test_wrong_passwords_are_refused_then_rate_limited_even_with_the_right_one(
    world: dict[str, int], api_server: RunningApi, db: psycopg.Connection
) -> None:
    url = f"{api_server.url}/api/v1/auth/login"
    for _ in range(5):
        wrong = httpx.post(url, json={"username": "nina", "password": "guess" * 3}, timeout=10)
        assert wrong.status_code == 401
        assert "wrong user name or password" in wrong.json()["detail"]
    limited = httpx.post(url, json={"username": "nina", "password": PASSWORD}, timeout=10)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 15 * 60
    # Another user from the same address is not locked out by nina's failures.
    assert httpx.post(url, json={"username": "ned", "password": PASSWORD}, timeout=10).is_success
    unknown = httpx.post(url, json={"username": "mallory", "password": PASSWORD}, timeout=10)
    assert unknown.status_code == 401
    outcomes = [outcome for (action, _, outcome) in audit_rows(db, "nina") if action == "login"]
    assert outcomes[-6:] == ["denied"] * 5 + ["rate_limited"]


def test_an_inactive_account_cannot_log_in(
    world: dict[str, int], api_server: RunningApi, db: psycopg.Connection
) -> None:
    db.execute("UPDATE users SET active = false WHERE username = 'sam'")
    db.commit()
    answer = httpx.post(
        f"{api_server.url}/api/v1/auth/login",
        json={"username": "sam", "password": PASSWORD},
        timeout=10,
    )
    assert answer.status_code == 401


def test_each_user_sees_only_their_teams_patients_flags_and_counts(
    world: dict[str, int], login: Callable[[str], httpx.Client]
) -> None:
    nina, sam, adam = login("nina"), login("sam"), login("adam")
    assert [p["patient_id"] for p in nina.get("/api/v1/patients").json()] == ["pt-north"]
    assert [p["patient_id"] for p in sam.get("/api/v1/patients").json()] == ["pt-south"]
    assert adam.get("/api/v1/patients").json() == []
    assert [f["patient_id"] for f in nina.get("/api/v1/flags").json()] == ["pt-north"]
    assert nina.get("/api/v1/flags/counts").json()["critical"] == 1
    assert adam.get("/api/v1/flags/counts").json()["critical"] == 0
    by_team = nina.get("/api/v1/flags", params={"team_id": "south"}).json()
    assert by_team == []  # a filter cannot widen what a user sees


CROSS_TEAM_REQUESTS = [
    ("GET", "/api/v1/patients/pt-south", None),
    ("GET", "/api/v1/patients/pt-south/readings", None),
    ("GET", "/api/v1/patients/pt-south/readings/summary", None),
    ("GET", "/api/v1/patients/pt-south/snoozes", None),
    (
        "POST",
        "/api/v1/patients/pt-south/snoozes",
        {"rule_id": "fever", "direction": "high", "minutes": 60, "reason": "r"},
    ),
    ("GET", "/api/v1/thresholds/patient/pt-south", None),
    ("POST", "/api/v1/thresholds/patient/pt-south", {"overrides": {}, "reason": "r"}),
    ("GET", "/api/v1/flags/{south_flag}", None),
    ("POST", "/api/v1/flags/{south_flag}/acknowledge", {}),
    ("POST", "/api/v1/flags/{south_flag}/resolve", {"note": "n"}),
    ("POST", "/api/v1/flags/{south_flag}/assign", {"assignee": "nina"}),
    ("POST", "/api/v1/snoozes/{snooze}/cancel", None),
    ("POST", "/api/v1/follow-ups/{request}/close", {}),
    ("GET", "/api/v1/patients/pt-south/messages", None),
    ("POST", "/api/v1/patients/pt-south/messages", {"body": "Hello"}),
    ("GET", "/api/v1/patients/pt-south/calls", None),
    ("POST", "/api/v1/patients/pt-south/calls", None),
    ("GET", "/api/v1/patients/pt-south/notes", None),
    ("POST", "/api/v1/patients/pt-south/notes", {"body": "a note"}),
    (
        "POST",
        "/api/v1/rules/preview",
        {"scope": "patient", "scope_id": "pt-south", "overrides": {}, "days": 30},
    ),
    ("GET", "/api/v1/flags?patient_id=pt-south", None),
    ("GET", "/api/v1/follow-ups?patient_id=pt-south", None),
]


@pytest.mark.parametrize(("method", "path", "body"), CROSS_TEAM_REQUESTS)
def test_another_teams_patient_is_not_found_and_the_attempt_is_audited(
    world: dict[str, int],
    login: Callable[[str], httpx.Client],
    db: psycopg.Connection,
    method: str,
    path: str,
    body: dict[str, object] | None,
) -> None:
    request_id = add_request(db, "pt-south", minutes_ago=5, gateway_id="gw-south")
    url = path.format(**world, request=request_id)
    answer = login("nina").request(method, url, json=body)
    assert answer.status_code == 404, answer.text
    assert answer.json()["detail"].startswith("no such")
    assert audit_rows(db, "nina")[-1][2] == "denied"
    # The same request by the patient's own team is not refused for access.
    assert login("sam").request(method, url, json=body).status_code not in (401, 403, 404)


def test_an_unknown_patient_is_the_same_404_audited_as_not_found(
    world: dict[str, int], login: Callable[[str], httpx.Client], db: psycopg.Connection
) -> None:
    answer = login("nina").get("/api/v1/patients/pt-nobody")
    assert (answer.status_code, answer.json()) == (404, {"detail": "no such patient"})
    assert audit_rows(db, "nina")[-1] == ("read.patient", "patient/pt-nobody", "not_found")


def test_follow_ups_of_other_teams_are_not_listed(
    world: dict[str, int], login: Callable[[str], httpx.Client], db: psycopg.Connection
) -> None:
    add_request(db, "pt-south", minutes_ago=5, gateway_id="gw-south")
    add_request(db, "pt-north", minutes_ago=4, gateway_id="gw-north")
    listed = login("nina").get("/api/v1/follow-ups").json()
    assert [r["patient_id"] for r in listed] == ["pt-north"]


@pytest.mark.parametrize(
    ("username", "path", "allowed"),
    [
        ("nina", "program/copd", False),
        ("ned", "program/copd", False),
        ("lena", "program/copd", True),
        ("adam", "program/copd", True),
        ("ned", "patient/pt-north", False),
        ("nina", "patient/pt-north", True),
        ("lena", "patient/pt-north", True),
    ],
)
def test_threshold_changes_are_checked_by_role(
    world: dict[str, int],
    login: Callable[[str], httpx.Client],
    db: psycopg.Connection,
    username: str,
    path: str,
    allowed: bool,
) -> None:
    answer = login(username).post(
        f"/api/v1/thresholds/{path}",
        json={"overrides": {"fever": {"when.0.above": 38.2}}, "reason": "test"},
    )
    if allowed:
        assert answer.status_code == 201, answer.text
        assert answer.json()["author"] == username
    else:
        assert answer.status_code == 403
        assert "may not change" in answer.json()["detail"]
        assert audit_rows(db, username)[-1] == ("write.thresholds", path, "denied")


@pytest.mark.parametrize(
    ("username", "status_code"), [("nina", 200), ("ned", 200), ("lena", 200), ("adam", 403)]
)
def test_triage_actions_are_checked_by_role(
    world: dict[str, int],
    login: Callable[[str], httpx.Client],
    db: psycopg.Connection,
    username: str,
    status_code: int,
) -> None:
    if username == "adam":  # an admin in the team still may not triage
        accounts.add_members(db, team_id="north", usernames=["adam"])
        db.commit()
    answer = login(username).post(f"/api/v1/flags/{world['north_flag']}/acknowledge", json={})
    assert answer.status_code == status_code, answer.text


def test_only_admins_manage_accounts_and_teams(
    world: dict[str, int], login: Callable[[str], httpx.Client]
) -> None:
    adam, lena = login("adam"), login("lena")
    new_user = {
        "username": "nico",
        "display_name": "Nico New",
        "role": "nurse",
        "password": PASSWORD,
    }
    assert lena.post("/api/v1/users", json=new_user).status_code == 403
    assert adam.post("/api/v1/users", json=new_user).status_code == 201
    taken = adam.post("/api/v1/users", json=new_user)
    assert taken.status_code == 422 and "taken" in taken.json()["detail"]
    short = adam.post("/api/v1/users", json={**new_user, "username": "x2", "password": "short"})
    assert short.status_code == 422
    assert adam.post("/api/v1/teams", json={"team_id": "east", "name": "East"}).status_code == 201
    members = adam.post("/api/v1/teams/east/members", json={"usernames": ["nico"]})
    assert members.json() == {"added": 1}
    patients = adam.post("/api/v1/teams/east/patients", json={"patient_ids": ["pt-south"]})
    assert patients.json() == {"added": 1}
    nico = login("nico")
    assert [p["patient_id"] for p in nico.get("/api/v1/patients").json()] == ["pt-south"]
    listed = {u["username"]: u for u in adam.get("/api/v1/users").json()}
    assert listed["nico"]["teams"] == ["east"] and "password_hash" not in listed["nico"]


def test_the_api_database_role_can_append_to_the_audit_log_but_never_change_it(
    world: dict[str, int], database_url: str
) -> None:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET ROLE carewatch_app")
        conn.execute(
            "INSERT INTO audit_log (actor, action, resource, outcome) VALUES ('t', 'a', 'r', 'ok')"
        )
        for statement in (
            "UPDATE audit_log SET outcome = 'forged'",
            "DELETE FROM audit_log",
            "TRUNCATE audit_log",
            # nor backdate an entry
            "INSERT INTO audit_log (at, actor, action, resource, outcome)"
            " VALUES ('2020-01-01', 't', 'a', 'r', 'ok')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
        # ... while it can change the clinical tables it works on.
        conn.execute("UPDATE flags SET assignee = NULL")


def test_create_admin_makes_an_argon2id_account_from_the_command_line(
    world: dict[str, int], database_url: str, db: psycopg.Connection
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "MQTT_URL": "mqtt://127.0.0.1:1",
        "CAREWATCH_ENV": "test",
        "CAREWATCH_API_TOKEN": uuid.uuid4().hex,
        "CAREWATCH_ADMIN_PASSWORD": "first admin password",
    }
    done = subprocess.run(
        [sys.executable, "-m", "ingest", "create-admin", "--username", "root.admin"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, done.stderr
    assert "first admin password" not in done.stdout + done.stderr
    row = db.execute(
        "SELECT role, password_hash FROM users WHERE username = 'root.admin'"
    ).fetchone()
    assert row is not None and row[0] == "admin" and row[1].startswith("$argon2id$")
    no_password = {k: v for k, v in env.items() if k != "CAREWATCH_ADMIN_PASSWORD"}
    refused = subprocess.run(
        [sys.executable, "-m", "ingest", "create-admin", "--username", "second"],
        env=no_password,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert refused.returncode != 0 and "CAREWATCH_ADMIN_PASSWORD" in refused.stderr


def test_operations_data_and_whole_rule_files_are_for_admins_and_leads(
    world: dict[str, int], login: Callable[[str], httpx.Client]
) -> None:
    nina, adam = login("nina"), login("adam")
    assert nina.get("/api/v1/quarantine").status_code == 403  # rejected readings name patients
    assert adam.get("/api/v1/quarantine").status_code == 200
    mixed = {"rules_toml": "version = 'x'", "scope": "patient", "scope_id": "pt-north"}
    answer = nina.post("/api/v1/rules/preview", json=mixed)
    assert answer.status_code == 403  # a whole rules file, whatever else the body says


def test_the_workspace_names_the_users_address_for_the_login_limit_and_the_audit(
    world: dict[str, int], api_server: RunningApi, db: psycopg.Connection
) -> None:
    url = f"{api_server.url}/api/v1/auth/login"
    wrong = {"username": "nina", "password": "not her password"}
    for _ in range(3):
        httpx.post(url, json=wrong, headers={"X-CareWatch-Client": "10.1.2.3"}, timeout=10)
    ok = httpx.post(
        url,
        json={"username": "sam", "password": PASSWORD},
        headers={"X-CareWatch-Client": "10.9.9.9"},
        timeout=10,
    )
    assert ok.status_code == 200
    db.rollback()
    clients = db.execute(
        "SELECT username, client, succeeded FROM login_attempts ORDER BY attempt_id"
    ).fetchall()
    # The API is reached from 127.0.0.1, a trusted proxy by default: the named address counts.
    assert clients == [("nina", "10.1.2.3", False)] * 3 + [("sam", "10.9.9.9", True)]
