"""Follow-up requests: what patients asked the care team for on their gateway ("call me back").

Every call is audited, like the flags': listing is a read of patient data, closing a write.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from carewatch_contract.messages import FollowUpKind
from ingest import follow_ups
from ingest.api.deps import (
    CallerDep,
    ConnDep,
    audited,
    not_found_unless_visible,
    require_patient,
    require_permission,
)

router = APIRouter(prefix="/api/v1/follow-ups", tags=["follow-ups"])

StatusFilter = Literal["open", "done", "all"]


class FollowUp(BaseModel):
    """A patient's request to the care team, as it came from their gateway."""

    request_id: str
    gateway_id: str
    patient_id: str
    #: The patient's display name; None when the patient is no longer on record.
    patient_name: str | None
    kind: FollowUpKind
    note: str | None
    #: The inbox message the patient was answering, if any.
    in_reply_to: str | None
    #: When the patient asked, by the gateway's clock.
    requested_at: datetime
    #: When the request reached the care team.
    received_at: datetime
    status: follow_ups.FollowUpStatus
    closed_by: str | None
    closed_at: datetime | None
    close_note: str | None


class CloseNote(BaseModel):
    note: str | None = Field(None, max_length=2000)


@router.get("", response_model=list[FollowUp])
def list_follow_ups(
    conn: ConnDep,
    caller: CallerDep,
    status_: Annotated[StatusFilter, Query(alias="status")] = "open",
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> list[FollowUp]:
    """Follow-up requests, newest first (by when they reached the care team). Default: open."""
    if patient_id is not None:
        resource = f"patient/{patient_id}/follow-ups"
        require_patient(conn, caller, patient_id, action="read.follow_ups", resource=resource)
    statuses = follow_ups.FOLLOW_UP_STATUSES if status_ == "all" else (status_,)
    rows = follow_ups.list_follow_ups(
        conn,
        statuses=statuses,
        patient_id=patient_id,
        patient_ids=caller.patient_ids,
        limit=limit,
    )
    resource = f"patient/{patient_id}/follow-ups" if patient_id else "follow-ups"
    audited(conn, caller, action="read.follow_ups", resource=resource, outcome="ok")
    return [FollowUp(**row) for row in rows]


@router.post("/{request_id}/close", response_model=FollowUp)
def close(
    request_id: uuid.UUID, conn: ConnDep, caller: CallerDep, body: CloseNote | None = None
) -> FollowUp:
    """Mark a request done (the patient was called back), by the caller, with an optional
    note. 404 for an unknown request; 409 when it is done already."""
    resource = f"follow-up/{request_id}"
    action = "write.follow_up.close"
    require_permission(conn, caller, "follow_up", action=action, resource=resource)
    found = follow_ups.get_follow_up(conn, str(request_id))
    not_found_unless_visible(
        conn,
        caller,
        found["patient_id"] if found else None,
        action=action,
        resource=resource,
        what="follow-up request",
    )
    note = (body.note or "").strip() if body else ""
    try:
        row = follow_ups.close_follow_up(
            conn, request_id=str(request_id), actor=caller.user, note=note or None
        )
    except follow_ups.FollowUpClosedError as exc:
        audited(conn, caller, action="write.follow_up.close", resource=resource, outcome="conflict")
        conn.commit()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    outcome = "ok" if row else "not_found"
    audited(conn, caller, action="write.follow_up.close", resource=resource, outcome=outcome)
    if row is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such follow-up request")
    return FollowUp(**row)
