"""The follow-up requests API on a real database: list, close, 404/409, and the audit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import psycopg
import pytest

from carewatch_contract.messages import FollowUpKind, FollowUpRequest
from ingest.follow_ups import StoredRequest, insert_requests
from ingest.registry import PatientRecord, enroll
from tests.conftest import RunningApi

pytestmark = pytest.mark.db

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=3)


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    """A client of the real API, on a database without patients or follow-up requests (the
    ``db`` fixture does not empty the follow-up tables: this one does, before and after)."""
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    db.commit()
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}"},
        timeout=10,
    ) as test_client:
        yield test_client
    db.rollback()
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    db.commit()


def add_request(
    db: psycopg.Connection,
    patient_id: str,
    *,
    minutes_ago: int,
    note: str | None = None,
    gateway_id: str = "gw-fu-api",
) -> str:
    """A request as the consumer stores it, received ``minutes_ago``."""
    request = FollowUpRequest(
        request_id=str(uuid.uuid4()),
        gateway_id=gateway_id,
        patient_id=patient_id,
        kind=FollowUpKind.CALL_BACK,
        at=T0,
        note=note,
    )
    assert insert_requests(db, [StoredRequest(gateway_id, request)]) == {request.request_id}
    db.execute(
        "UPDATE follow_up_requests SET received_at = now() - make_interval(mins => %s)"
        " WHERE request_id = %s",
        (minutes_ago, request.request_id),
    )
    db.commit()
    return request.request_id


def audit_rows(db: psycopg.Connection, count: int) -> list[tuple[str, str, str, str]]:
    db.rollback()
    rows = db.execute(
        "SELECT actor, action, resource, outcome FROM audit_log ORDER BY audit_id DESC LIMIT %s",
        (count,),
    ).fetchall()
    return [tuple(row) for row in reversed(rows)]  # type: ignore[misc]


def test_open_requests_are_listed_newest_first_with_the_patients_name(
    client: httpx.Client, db: psycopg.Connection
) -> None:
    enroll(db, gateway_id="gw-fu-api", patients=[PatientRecord("pt-fu-1", "Ada Api")])
    older = add_request(db, "pt-fu-1", minutes_ago=60, note="Dizzy, please call")
    newer = add_request(db, "pt-fu-1", minutes_ago=5)
    gone = add_request(db, "pt-fu-gone", minutes_ago=30)  # a patient no longer on record
    client.headers["X-CareWatch-User"] = "dr-okafor"

    listed = client.get("/api/v1/follow-ups")

    assert listed.status_code == 200
    assert [(f["request_id"], f["patient_name"]) for f in listed.json()] == [
        (newer, "Ada Api"),
        (gone, None),
        (older, "Ada Api"),
    ]
    first = listed.json()[2]
    assert first == {
        "request_id": older,
        "gateway_id": "gw-fu-api",
        "patient_id": "pt-fu-1",
        "patient_name": "Ada Api",
        "kind": "call_back",
        "note": "Dizzy, please call",
        "in_reply_to": None,
        "requested_at": first["requested_at"],
        "received_at": first["received_at"],
        "status": "open",
        "closed_by": None,
        "closed_at": None,
        "close_note": None,
    }
    assert datetime.fromisoformat(first["requested_at"]) == T0
    only_ada = client.get("/api/v1/follow-ups", params={"patient_id": "pt-fu-1", "limit": 1})
    assert [f["request_id"] for f in only_ada.json()] == [newer]
    assert audit_rows(db, 2) == [
        ("dr-okafor", "read.follow_ups", "follow-ups", "ok"),
        ("dr-okafor", "read.follow_ups", "patient/pt-fu-1/follow-ups", "ok"),
    ]


def test_a_request_is_closed_once_by_the_caller(
    client: httpx.Client, db: psycopg.Connection
) -> None:
    enroll(db, gateway_id="gw-fu-api", patients=[PatientRecord("pt-fu-1", "Ada Api")])
    request_id = add_request(db, "pt-fu-1", minutes_ago=10)
    other = add_request(db, "pt-fu-1", minutes_ago=20)
    client.headers["X-CareWatch-User"] = "Zo%C3%AB"  # "Zoë", percent-encoded

    closed = client.post(
        f"/api/v1/follow-ups/{request_id}/close", json={"note": "  Called, all fine  "}
    )

    assert closed.status_code == 200
    body = closed.json()
    assert (body["status"], body["closed_by"], body["close_note"]) == (
        "done",
        "Zoë",
        "Called, all fine",
    )
    assert datetime.now(UTC) - datetime.fromisoformat(body["closed_at"]) < timedelta(minutes=1)
    again = client.post(f"/api/v1/follow-ups/{request_id}/close", json={"note": "me too"})
    assert again.status_code == 409
    assert "already done (by Zoë" in again.json()["detail"]
    unknown = uuid.uuid4()
    assert client.post(f"/api/v1/follow-ups/{unknown}/close", json={}).status_code == 404
    assert client.post("/api/v1/follow-ups/not-a-uuid/close").status_code == 422
    assert client.post(f"/api/v1/follow-ups/{other}/close").json()["close_note"] is None

    assert [f["request_id"] for f in client.get("/api/v1/follow-ups").json()] == []
    done = client.get("/api/v1/follow-ups", params={"status": "done"}).json()
    assert [(f["request_id"], f["closed_by"]) for f in done] == [
        (request_id, "Zoë"),
        (other, "Zoë"),
    ]
    assert len(client.get("/api/v1/follow-ups", params={"status": "all"}).json()) == 2
    assert client.get("/api/v1/follow-ups", params={"status": "closed"}).status_code == 422
    assert db.execute(
        "SELECT close_note FROM follow_up_requests WHERE request_id = %s", (request_id,)
    ).fetchone() == ("Called, all fine",)
    assert audit_rows(db, 7) == [
        ("Zoë", "write.follow_up.close", f"follow-up/{request_id}", "ok"),
        ("Zoë", "write.follow_up.close", f"follow-up/{request_id}", "conflict"),
        ("Zoë", "write.follow_up.close", f"follow-up/{unknown}", "not_found"),
        ("Zoë", "write.follow_up.close", f"follow-up/{other}", "ok"),
        ("Zoë", "read.follow_ups", "follow-ups", "ok"),
        ("Zoë", "read.follow_ups", "follow-ups", "ok"),
        ("Zoë", "read.follow_ups", "follow-ups", "ok"),
    ]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/api/v1/follow-ups"), ("POST", f"/api/v1/follow-ups/{uuid.uuid4()}/close")],
)
def test_follow_ups_need_the_token(client: httpx.Client, method: str, path: str) -> None:
    client.headers["Authorization"] = "Bearer wrong"
    assert client.request(method, path).status_code == 401
