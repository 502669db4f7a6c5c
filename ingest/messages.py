"""Messages from the care team to a patient: stored, then sent to the patient's gateway inbox
over MQTT (and by email when asked), with their status from the gateway's receipts.

A message is written in the API's transaction (:func:`create_message`) and sent afterwards by
:class:`ingest.message_dispatch.MessageDispatcher`, so that a message is never sent that was
not stored, and a stored one is sent however often the broker or the mail server fails
(at least once; the gateway shows and receipts a message id once however often it arrives).

Status, as the workspace shows it: ``queued`` (stored, not yet acknowledged by the broker),
``sent`` (the broker has it; the gateway has not said yet), ``delivered`` (the gateway stored
it and shows it), ``read`` (the patient pressed "I have read this"). A patient without a
gateway gets email only (``email_only``). Thin shell over PostgreSQL; never commits.
"""

from __future__ import annotations

import tomllib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

MAX_BODY_LENGTH: Final = 2000
#: Sending retries a failed channel with a doubling pause up to MAX_RETRY_PAUSE, and gives up
#: when the message is older than GIVE_UP_AFTER (its last error stays on record and the
#: workspace shows it as failed): a mail relay down for an hour costs no message.
MAX_RETRY_PAUSE: Final = timedelta(minutes=30)
GIVE_UP_AFTER: Final = timedelta(hours=24)

_SELECT: Final = (
    "SELECT m.message_id::text AS message_id, m.patient_id, m.gateway_id, m.sender,"
    " m.template_id, m.body, m.created_at, m.published_at, m.publish_error, m.email_to,"
    " m.emailed_at, m.email_error,"
    " CASE WHEN r.read_at IS NOT NULL THEN 'read'"
    "  WHEN r.delivered_at IS NOT NULL THEN 'delivered'"
    "  WHEN m.gateway_id IS NULL THEN 'email_only'"
    "  WHEN m.published_at IS NOT NULL THEN 'sent'"
    "  WHEN m.created_at < now() - interval '24 hours' THEN 'failed'"
    "  ELSE 'queued' END AS status,"
    " r.delivered_at, r.read_at"
    " FROM patient_messages m LEFT JOIN LATERAL (SELECT"
    "  min(at) FILTER (WHERE state = 'delivered') AS delivered_at,"
    "  min(at) FILTER (WHERE state = 'read') AS read_at"
    "  FROM inbox_receipts WHERE message_id = m.message_id::text) r ON true"
)
#: The messages waiting on each channel, oldest first, locked for the sender's transaction.
_UNSENT: Final = {
    "gateway": (
        "SELECT m.message_id::text, m.patient_id, m.gateway_id,"
        " coalesce(u.display_name, m.sender), m.body, m.created_at, m.email_to"
        " FROM patient_messages m LEFT JOIN users u ON u.username = m.sender"
        " WHERE m.published_at IS NULL AND m.gateway_id IS NOT NULL"
        " AND m.created_at > now() - %s AND coalesce(m.publish_next_at, '-infinity') <= now()"
        " ORDER BY m.created_at LIMIT %s FOR UPDATE OF m SKIP LOCKED"
    ),
    "email": (
        "SELECT m.message_id::text, m.patient_id, m.gateway_id,"
        " coalesce(u.display_name, m.sender), m.body, m.created_at, m.email_to"
        " FROM patient_messages m LEFT JOIN users u ON u.username = m.sender"
        " WHERE m.emailed_at IS NULL AND m.email_to IS NOT NULL"
        " AND m.created_at > now() - %s AND coalesce(m.email_next_at, '-infinity') <= now()"
        " ORDER BY m.created_at LIMIT %s FOR UPDATE OF m SKIP LOCKED"
    ),
}


class MessageError(ValueError):
    """A message that cannot be sent as asked (the message says why)."""


@dataclass(frozen=True, slots=True)
class MessageTemplate:
    """A common message, offered in the workspace; ``{name}`` is the patient's name."""

    template_id: str
    title: str
    body: str

    def text_for(self, patient_name: str) -> str:
        return self.body.replace("{name}", patient_name)


def load_templates() -> dict[str, MessageTemplate]:
    """The message templates shipped in ``ingest/message_templates.toml``."""
    text = resources.files("ingest").joinpath("message_templates.toml").read_text("utf-8")
    data = tomllib.loads(text)
    return {
        raw["id"]: MessageTemplate(raw["id"], raw["title"], raw["body"].strip())
        for raw in data["templates"]
    }


def create_message(
    conn: psycopg.Connection[Any],
    *,
    patient_id: str,
    sender: str,
    body: str,
    template_id: str | None = None,
    by_email: bool = False,
) -> dict[str, Any]:
    """Store a message for the patient's gateway (and their email address when ``by_email``);
    the dispatcher sends it after the commit. Refused: an empty or overlong text, email asked
    for a patient without an address, or a patient with neither a gateway nor email."""
    text = body.strip()
    if not text or len(text) > MAX_BODY_LENGTH:
        raise MessageError(f"a message is 1-{MAX_BODY_LENGTH} characters")
    row = conn.execute(
        "SELECT p.email, (SELECT gp.gateway_id FROM gateway_patients gp"
        "  WHERE gp.patient_id = p.patient_id ORDER BY gp.gateway_id LIMIT 1)"
        " FROM patients p WHERE p.patient_id = %s",
        (patient_id,),
    ).fetchone()
    if row is None:
        raise MessageError(f"no patient {patient_id!r}")
    email, gateway_id = row
    if by_email and not email:
        raise MessageError("the patient has no email address on record; send it to the gateway")
    if gateway_id is None and not by_email:
        raise MessageError("the patient has no gateway: send it by email, or call them")
    message_id = str(uuid.uuid4())
    conn.execute(
        "INSERT INTO patient_messages (message_id, patient_id, gateway_id, sender, template_id,"
        " body, email_to) VALUES (%s, %s, %s, %s, %s, %s, %s)",
        (
            message_id,
            patient_id,
            gateway_id,
            sender,
            template_id,
            text,
            email if by_email else None,
        ),
    )
    found = get_message(conn, message_id)
    assert found is not None
    return found


def get_message(conn: psycopg.Connection[Any], message_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(_SELECT + " WHERE m.message_id = %s", (message_id,)).fetchone()


def patient_messages(
    conn: psycopg.Connection[Any], *, patient_id: str, limit: int = 200
) -> list[dict[str, Any]]:
    """The patient's messages, newest first, each with its status."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            _SELECT + " WHERE m.patient_id = %s ORDER BY m.created_at DESC LIMIT %s",
            (patient_id, limit),
        ).fetchall()


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A stored message waiting to be sent, as the dispatcher sees it."""

    message_id: str
    patient_id: str
    gateway_id: str | None
    sender_name: str
    body: str
    created_at: datetime
    email_to: str | None


def claim_unsent(
    conn: psycopg.Connection[Any], *, channel: str, limit: int = 50
) -> list[OutgoingMessage]:
    """Messages not yet sent on ``channel`` (``gateway`` or ``email``), locked for this
    transaction (several ingest workers skip each other's)."""
    rows = conn.execute(_UNSENT[channel], (GIVE_UP_AFTER, limit)).fetchall()
    return [OutgoingMessage(*row) for row in rows]


def mark_sent(
    conn: psycopg.Connection[Any], message_id: str, *, channel: str, error: str | None
) -> None:
    """Record a send: done (``error`` None) or one more failed attempt, with its reason and
    the earliest time of the next (2, 4, 8 ... seconds, at most :data:`MAX_RETRY_PAUSE`)."""
    params = {"error": error, "id": message_id, "cap": MAX_RETRY_PAUSE}
    if channel == "gateway":
        conn.execute(
            "UPDATE patient_messages SET publish_attempts = publish_attempts + 1,"
            " published_at = CASE WHEN %(error)s::text IS NULL THEN now() END,"
            " publish_next_at = now() + least(%(cap)s,"
            "  make_interval(secs => 2 ^ least(publish_attempts + 1, 20))),"
            " publish_error = %(error)s WHERE message_id = %(id)s",
            params,
        )
    else:
        conn.execute(
            "UPDATE patient_messages SET email_attempts = email_attempts + 1,"
            " emailed_at = CASE WHEN %(error)s::text IS NULL THEN now() END,"
            " email_next_at = now() + least(%(cap)s,"
            "  make_interval(secs => 2 ^ least(email_attempts + 1, 20))),"
            " email_error = %(error)s WHERE message_id = %(id)s",
            params,
        )
