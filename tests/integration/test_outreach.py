"""Messages and calls on the real API, database, broker and a real local SMTP server: a
message reaches the gateway's inbox topic and its status follows the receipts; by email it
reaches the mail server; failures are recorded, not lost; calls give a room and a tel: link
and log outcome and duration, which become care time (live when the patient was reached)."""

from __future__ import annotations

import queue
import socket
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes

import httpx
import paho.mqtt.client as mqtt
import psycopg
import pytest
from aiosmtpd.controller import Controller

from carewatch_contract import topics
from carewatch_contract.messages import InboxReceipt, ReceiptState, parse_inbox_message
from ingest.follow_ups import StoredReceipt, insert_receipts
from ingest.message_dispatch import MessageDispatcher
from ingest.registry import PatientRecord, enroll
from ingest.settings import IngestSettings
from tests.conftest import BrokerInfo, RunningApi
from tests.integration.test_ingest import wait_until

pytestmark = pytest.mark.db

GATEWAY = "gw-outreach"


class MailBox:
    """An aiosmtpd handler keeping every message it is given."""

    def __init__(self) -> None:
        self.received: queue.Queue[tuple[str, list[str], bytes]] = queue.Queue()

    async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
        self.received.put((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return "250 Message accepted for delivery"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def mail_server() -> Iterator[tuple[MailBox, int]]:
    box = MailBox()
    port = free_port()
    controller = Controller(box, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@pytest.fixture
def client(api_server: RunningApi, db: psycopg.Connection) -> Iterator[httpx.Client]:
    enroll(
        db,
        gateway_id=GATEWAY,
        patients=[PatientRecord("pt-msg", "Mia Message", phone="+1 (555) 010-0200")],
    )
    db.execute("UPDATE patients SET email = 'mia@example.test' WHERE patient_id = 'pt-msg'")
    db.execute("INSERT INTO patients (patient_id, display_name) VALUES ('pt-nobox', 'No Box')")
    db.commit()
    with httpx.Client(
        base_url=api_server.url,
        headers={"Authorization": f"Bearer {api_server.token}", "X-CareWatch-User": "dr.msg"},
        timeout=10,
    ) as test_client:
        yield test_client


def dispatcher_for(
    database_url: str, broker: BrokerInfo, *, smtp_port: int | None = None
) -> MessageDispatcher:
    settings = IngestSettings(
        CAREWATCH_ENV="test",
        CAREWATCH_API_TOKEN="test-token",
        DATABASE_URL=database_url,
        MQTT_URL=broker.url,
        MQTT_PROTOCOL=broker.protocol,
        INGEST_CLIENT_ID=f"outreach-test-{uuid.uuid4().hex[:8]}",
        SMTP_HOST="127.0.0.1" if smtp_port else None,
        SMTP_PORT=smtp_port or 25,
        SMTP_STARTTLS=False,
    )
    dispatcher = MessageDispatcher(settings, interval_s=60)
    _made.append(dispatcher)
    return dispatcher


_made: list[MessageDispatcher] = []


@pytest.fixture(autouse=True)
def _close_dispatchers() -> Iterator[None]:
    """Each dispatcher a test made lets go of its database connection afterwards."""
    yield
    while _made:
        _made.pop().close()


@pytest.fixture
def inbox(broker: BrokerInfo) -> Iterator[queue.Queue[bytes]]:
    """What arrives on the outreach gateway's inbox topic."""
    got: queue.Queue[bytes] = queue.Queue()
    host, port = broker.url.removeprefix("mqtt://").split(":")
    listener = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"inbox-{uuid.uuid4()}")
    listener.on_message = lambda c, u, m: got.put(m.payload)
    listener.connect(host, int(port))
    listener.subscribe(topics.gateway_topic(GATEWAY, topics.INBOX), qos=1)
    listener.loop_start()
    try:
        yield got
    finally:
        listener.loop_stop()
        listener.disconnect()


def test_a_message_reaches_the_gateway_inbox_and_its_status_follows_the_receipts(
    client: httpx.Client,
    db: psycopg.Connection,
    database_url: str,
    broker: BrokerInfo,
    inbox: queue.Queue[bytes],
) -> None:
    templates = client.get("/api/v1/message-templates").json()
    repeat = next(t for t in templates if t["template_id"] == "repeat-bp")
    text = repeat["body"].replace("{name}", "Mia")
    sent = client.post(
        "/api/v1/patients/pt-msg/messages", json={"body": text, "template_id": "repeat-bp"}
    )
    assert sent.status_code == 201, sent.text
    message_id = sent.json()["message_id"]
    assert sent.json()["status"] == "queued"

    dispatcher = dispatcher_for(database_url, broker)
    dispatcher.start()
    try:
        assert wait_until(lambda: dispatcher.connected)
        dispatcher.poke()
        assert wait_until(lambda: _status(client) == "sent")
    finally:
        dispatcher.stop()
    arrived = parse_inbox_message(inbox.get(timeout=10))
    assert (arrived.message_id, arrived.text, arrived.patient_id) == (message_id, text, "pt-msg")
    assert arrived.sender == "dr.msg"
    assert _status(client) == "sent"

    for state in (ReceiptState.DELIVERED, ReceiptState.READ):
        receipt = InboxReceipt(message_id, state, datetime.now(UTC), str(uuid.uuid4()))
        insert_receipts(db, [StoredReceipt(GATEWAY, str(receipt.receipt_id), receipt)])
        db.commit()
        assert _status(client) == state.value
    listed = client.get("/api/v1/patients/pt-msg/messages").json()[0]
    assert listed["delivered_at"] and listed["read_at"] and listed["template_id"] == "repeat-bp"


def _status(client: httpx.Client) -> str:
    return str(client.get("/api/v1/patients/pt-msg/messages").json()[0]["status"])


def test_a_message_by_email_reaches_a_real_smtp_server(
    client: httpx.Client,
    database_url: str,
    broker: BrokerInfo,
    mail_server: tuple[MailBox, int],
) -> None:
    box, port = mail_server
    sent = client.post(
        "/api/v1/patients/pt-msg/messages",
        json={"body": "Please weigh yourself tomorrow.", "by_email": True},
    )
    assert sent.status_code == 201
    dispatcher = dispatcher_for(database_url, broker, smtp_port=port)
    assert dispatcher.send_pending() >= 1  # the email (the gateway needs a connected client)
    sender, recipients, content = box.received.get(timeout=10)
    assert sender == "care-team@carewatch.invalid"
    mail = message_from_bytes(content)
    assert recipients == ["mia@example.test"]
    assert mail["Subject"] == "A message from your care team"
    assert "Please weigh yourself tomorrow." in mail.get_payload()
    emailed = client.get("/api/v1/patients/pt-msg/messages").json()[0]
    assert emailed["emailed_at"] is not None and emailed["email_error"] is None


def test_a_mail_server_that_is_down_is_retried_later_not_lost(
    client: httpx.Client,
    db: psycopg.Connection,
    database_url: str,
    broker: BrokerInfo,
    mail_server: tuple[MailBox, int],
) -> None:
    client.post(
        "/api/v1/patients/pt-msg/messages", json={"body": "Hello", "by_email": True}
    ).raise_for_status()
    down = dispatcher_for(database_url, broker, smtp_port=free_port())
    assert down.send_pending() == 0
    assert down.send_pending() == 0  # backing off: not tried again at once
    row = db.execute(
        "SELECT emailed_at, email_attempts, email_error, email_next_at > now()"
        " FROM patient_messages"
    ).fetchone()
    db.commit()
    assert row is not None
    assert (row[0], row[1], row[3]) == (None, 1, True) and "could not be reached" in row[2]
    assert _status(client) == "queued"

    db.execute("UPDATE patient_messages SET email_next_at = now()")  # the pause is over
    db.commit()
    box, port = mail_server
    assert dispatcher_for(database_url, broker, smtp_port=port).send_pending() == 1
    assert box.received.get(timeout=10)[1] == ["mia@example.test"]


def test_a_message_that_cannot_be_mailed_does_not_hold_up_the_others(
    client: httpx.Client,
    db: psycopg.Connection,
    database_url: str,
    broker: BrokerInfo,
    mail_server: tuple[MailBox, int],
) -> None:
    db.execute(
        "UPDATE patients SET email = 'x@example.test' || chr(13) || chr(10) || 'Bcc: a@b.test'"
        " WHERE patient_id = 'pt-nobox'"
    )
    db.commit()
    bad = client.post(
        "/api/v1/patients/pt-nobox/messages", json={"body": "Hello", "by_email": True}
    )
    good = client.post(
        "/api/v1/patients/pt-msg/messages", json={"body": "Hello Mia", "by_email": True}
    )
    assert bad.status_code == good.status_code == 201
    box, port = mail_server
    assert dispatcher_for(database_url, broker, smtp_port=port).send_pending() == 1
    assert box.received.get(timeout=10)[1] == ["mia@example.test"]
    assert box.received.empty()
    failed = db.execute(
        "SELECT email_error FROM patient_messages WHERE patient_id = 'pt-nobox'"
    ).fetchone()
    assert failed is not None and "could not be sent" in failed[0]


@pytest.mark.parametrize(
    ("patient", "body", "message"),
    [
        ("pt-msg", {"body": "   "}, "1-2000 characters"),
        ("pt-nobox", {"body": "Hello"}, "no gateway"),
        ("pt-nobox", {"body": "Hello", "by_email": True}, "no email address"),
    ],
)
def test_a_message_that_cannot_be_sent_is_refused_with_the_reason(
    client: httpx.Client, patient: str, body: dict[str, object], message: str
) -> None:
    answer = client.post(f"/api/v1/patients/{patient}/messages", json=body)
    assert answer.status_code == 422
    assert message in answer.json()["detail"]


def test_a_call_gives_a_room_and_a_tel_link_and_its_time_becomes_care_time(
    client: httpx.Client, db: psycopg.Connection, api_server: RunningApi
) -> None:
    started = client.post("/api/v1/patients/pt-msg/calls")
    assert started.status_code == 201
    call = started.json()
    assert call["tel"] == "tel:+15550100200"
    assert call["ended_at"] is None
    ended = client.post(
        f"/api/v1/calls/{call['call_id']}/end",
        json={"outcome": "reached", "note": "Discussed the readings; repeat tomorrow"},
    )
    assert ended.status_code == 200
    assert ended.json()["duration_s"] >= 0 and ended.json()["outcome"] == "reached"
    again = client.post(f"/api/v1/calls/{call['call_id']}/end", json={"outcome": "reached"})
    assert again.status_code == 409

    missed = client.post("/api/v1/patients/pt-msg/calls").json()
    db.execute(
        "UPDATE calls SET started_at = now() - interval '5 hours' WHERE call_id = %s",
        (missed["call_id"],),
    )
    db.commit()
    client.post(f"/api/v1/calls/{missed['call_id']}/end", json={"outcome": "no_answer"})
    care = db.execute(
        "SELECT activity, live, round(minutes) FROM care_time ORDER BY started_at"
    ).fetchall()
    # The forgotten "end call" counts 120 minutes at most; only the answered call is live.
    assert care[0] == ("call", False, 120)
    assert care[1][:2] == ("call", True)
    assert [c["outcome"] for c in client.get("/api/v1/patients/pt-msg/calls").json()] == [
        "reached",
        "no_answer",
    ]
    unknown = client.post(f"/api/v1/calls/{uuid.uuid4()}/end", json={"outcome": "reached"})
    assert unknown.status_code == 404


def test_calls_have_a_video_room_under_the_configured_base_url(database_url: str) -> None:
    from ingest.calls import start_call

    with psycopg.connect(database_url) as conn:
        enroll(conn, gateway_id=GATEWAY, patients=[PatientRecord("pt-video", "Vi Deo")])
        call = start_call(
            conn,
            patient_id="pt-video",
            caller="dr.msg",
            video_base_url="https://video.clinic.example/rooms/",
        )
        conn.rollback()
    assert call["room_url"] == f"https://video.clinic.example/rooms/{call['call_id']}"
    assert call["tel"] is None  # no phone on record


def test_notes_are_kept_as_written_newest_first(client: httpx.Client) -> None:
    for text in ("Lives alone; daughter visits Sundays", "Prefers calls after 10:00"):
        assert client.post("/api/v1/patients/pt-msg/notes", json={"body": text}).status_code == 201
    notes = client.get("/api/v1/patients/pt-msg/notes").json()
    assert [(n["author"], n["body"]) for n in notes] == [
        ("dr.msg", "Prefers calls after 10:00"),
        ("dr.msg", "Lives alone; daughter visits Sundays"),
    ]
    assert client.post("/api/v1/patients/pt-msg/notes", json={"body": "  "}).status_code == 422
