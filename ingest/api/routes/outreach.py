"""Reaching patients and keeping track: messages (to their gateway's inbox, optionally by
email), calls (a video-room link and a ``tel:`` link; outcome, note and duration logged) and
clinicians' notes. Every read and write is audited; another team's patient is "not found", as
on every patient route."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from ingest import calls, messages
from ingest.api.deps import (
    CallerDep,
    ConnDep,
    audited,
    not_found_unless_visible,
    require_patient,
    require_permission,
)

router = APIRouter(prefix="/api/v1", tags=["outreach"])

PatientId = Annotated[str, Path(max_length=64)]


class NewMessage(BaseModel):
    body: str = Field(min_length=1, max_length=messages.MAX_BODY_LENGTH)
    template_id: str | None = Field(None, max_length=64)
    by_email: bool = False


class NewNote(BaseModel):
    body: str = Field(min_length=1, max_length=4000)


class CallEnd(BaseModel):
    outcome: calls.Outcome
    note: str | None = Field(None, max_length=4000)


@router.get("/message-templates")
def templates(caller: CallerDep) -> list[dict[str, str]]:
    """Common messages; ``{name}`` stands for the patient's name."""
    return [
        {"template_id": t.template_id, "title": t.title, "body": t.body}
        for t in messages.load_templates().values()
    ]


@router.get("/patients/{patient_id}/messages")
def list_messages(patient_id: PatientId, conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """The messages sent to the patient, newest first, with their status."""
    resource = f"patient/{patient_id}/messages"
    require_patient(conn, caller, patient_id, action="read.messages", resource=resource)
    audited(conn, caller, action="read.messages", resource=resource, outcome="ok")
    return messages.patient_messages(conn, patient_id=patient_id)


@router.post("/patients/{patient_id}/messages", status_code=status.HTTP_201_CREATED)
def send_message(
    patient_id: PatientId, body: NewMessage, request: Request, conn: ConnDep, caller: CallerDep
) -> dict[str, Any]:
    """Queue a message for the patient's gateway (and email when ``by_email``); it is sent
    once stored, and its status follows the gateway's receipts."""
    resource = f"patient/{patient_id}/messages"
    action = "write.message"
    require_patient(
        conn, caller, patient_id, action=action, resource=resource, permission="follow_up"
    )
    try:
        message = messages.create_message(
            conn,
            patient_id=patient_id,
            sender=caller.user,
            body=body.body,
            template_id=body.template_id,
            by_email=body.by_email,
        )
    except messages.MessageError as exc:
        audited(conn, caller, action=action, resource=resource, outcome="invalid")
        conn.commit()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audited(conn, caller, action=action, resource=resource, outcome="ok")
    conn.commit()
    dispatcher = getattr(request.app.state, "dispatcher", None)
    if dispatcher is not None:
        dispatcher.poke()
    return message


@router.get("/patients/{patient_id}/calls")
def list_calls(patient_id: PatientId, conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """The patient's calls, newest first."""
    resource = f"patient/{patient_id}/calls"
    require_patient(conn, caller, patient_id, action="read.calls", resource=resource)
    audited(conn, caller, action="read.calls", resource=resource, outcome="ok")
    return calls.patient_calls(conn, patient_id=patient_id)


@router.post("/patients/{patient_id}/calls", status_code=status.HTTP_201_CREATED)
def start_call(
    patient_id: PatientId, request: Request, conn: ConnDep, caller: CallerDep
) -> dict[str, Any]:
    """Start a call: the video room's link and the patient's ``tel:`` link. The call's time
    runs until it is ended."""
    resource = f"patient/{patient_id}/calls"
    action = "write.call.start"
    require_patient(
        conn, caller, patient_id, action=action, resource=resource, permission="follow_up"
    )
    call = calls.start_call(
        conn,
        patient_id=patient_id,
        caller=caller.user,
        video_base_url=request.app.state.settings.video_base_url,
    )
    audited(conn, caller, action=action, resource=resource, outcome="ok")
    return call


@router.post("/calls/{call_id}/end")
def end_call(call_id: uuid.UUID, body: CallEnd, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """End a call with its outcome (``reached`` is a live interaction) and a note."""
    resource = f"call/{call_id}"
    action = "write.call.end"
    require_permission(conn, caller, "follow_up", action=action, resource=resource)
    patient_id = calls.call_patient(conn, str(call_id))
    not_found_unless_visible(
        conn, caller, patient_id, action=action, resource=resource, what="call"
    )
    try:
        call = calls.end_call(conn, call_id=str(call_id), outcome=body.outcome, note=body.note)
    except calls.CallError as exc:
        audited(conn, caller, action=action, resource=resource, outcome="conflict")
        conn.commit()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    audited(conn, caller, action=action, resource=resource, outcome="ok")
    assert call is not None
    return call


@router.get("/patients/{patient_id}/notes")
def list_notes(patient_id: PatientId, conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """Clinicians' notes on the patient, newest first."""
    resource = f"patient/{patient_id}/notes"
    require_patient(conn, caller, patient_id, action="read.notes", resource=resource)
    audited(conn, caller, action="read.notes", resource=resource, outcome="ok")
    rows = conn.execute(
        "SELECT note_id, author, body, created_at FROM patient_notes WHERE patient_id = %s"
        " ORDER BY created_at DESC, note_id DESC LIMIT 200",
        (patient_id,),
    ).fetchall()
    return [dict(zip(("note_id", "author", "body", "created_at"), r, strict=True)) for r in rows]


@router.post("/patients/{patient_id}/notes", status_code=status.HTTP_201_CREATED)
def add_note(
    patient_id: PatientId, body: NewNote, conn: ConnDep, caller: CallerDep
) -> dict[str, Any]:
    """A note on the patient, by the caller (a correction is a new note)."""
    resource = f"patient/{patient_id}/notes"
    action = "write.note"
    require_patient(
        conn, caller, patient_id, action=action, resource=resource, permission="follow_up"
    )
    text = body.body.strip()
    if not text:
        audited(conn, caller, action=action, resource=resource, outcome="invalid")
        conn.commit()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "a note needs some text")
    row = conn.execute(
        "INSERT INTO patient_notes (patient_id, author, body) VALUES (%s, %s, %s)"
        " RETURNING note_id, author, body, created_at",
        (patient_id, caller.user, text),
    ).fetchone()
    assert row is not None
    audited(conn, caller, action=action, resource=resource, outcome="ok")
    return dict(zip(("note_id", "author", "body", "created_at"), row, strict=True))
