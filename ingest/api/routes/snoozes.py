"""Snoozes: a quiet period for one patient's flags of one rule and direction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from analytics import flag_lifecycle
from ingest.api.deps import (
    CallerDep,
    ConnDep,
    audited,
    not_found_unless_visible,
    require_patient,
    require_permission,
)

router = APIRouter(prefix="/api/v1", tags=["snoozes"])

PatientId = Annotated[str, Path(max_length=64)]


class NewSnooze(BaseModel):
    rule_id: str = Field(min_length=1, max_length=100)
    direction: Literal["high", "low", "none"]
    minutes: int = Field(ge=1, le=int(flag_lifecycle.MAX_SNOOZE.total_seconds() // 60))
    reason: str = Field(min_length=1, max_length=500)


@router.post("/patients/{patient_id}/snoozes", status_code=status.HTTP_201_CREATED)
def create(
    patient_id: PatientId, body: NewSnooze, request: Request, conn: ConnDep, caller: CallerDep
) -> dict[str, Any]:
    """Snooze the patient's flags of one rule and direction for ``minutes``."""
    resource = f"patient/{patient_id}/snoozes"
    require_patient(
        conn, caller, patient_id, action="write.snooze", resource=resource, permission="triage"
    )
    now = datetime.now(UTC)
    try:
        request.app.state.rules.rule(body.rule_id)
    except KeyError:
        audited(conn, caller, action="write.snooze", resource=resource, outcome="invalid")
        conn.commit()
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"no rule {body.rule_id!r} to snooze"
        ) from None
    try:
        snooze = flag_lifecycle.snooze(
            conn,
            patient_id=patient_id,
            rule_id=body.rule_id,
            direction=body.direction,
            until=now + timedelta(minutes=body.minutes),
            reason=body.reason,
            actor=caller.user,
            now=now,
        )
    except flag_lifecycle.SnoozeError as exc:
        audited(conn, caller, action="write.snooze", resource=resource, outcome="invalid")
        conn.commit()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audited(conn, caller, action="write.snooze", resource=resource, outcome="ok")
    return snooze


@router.get("/patients/{patient_id}/snoozes")
def active(patient_id: PatientId, conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """The patient's snoozes in force."""
    resource = f"patient/{patient_id}/snoozes"
    require_patient(conn, caller, patient_id, action="read.snoozes", resource=resource)
    audited(conn, caller, action="read.snoozes", resource=resource, outcome="ok")
    return flag_lifecycle.active_snoozes(conn, patient_id=patient_id)


@router.post("/snoozes/{snooze_id}/cancel")
def cancel(snooze_id: int, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """End a snooze now (the flags it hid come back to the queue)."""
    resource = f"snooze/{snooze_id}"
    action = "write.snooze.cancel"
    require_permission(conn, caller, "triage", action=action, resource=resource)
    owner = conn.execute(
        "SELECT patient_id FROM flag_snoozes WHERE snooze_id = %s", (snooze_id,)
    ).fetchone()
    not_found_unless_visible(
        conn, caller, owner[0] if owner else None, action=action, resource=resource, what="snooze"
    )
    snooze = flag_lifecycle.cancel_snooze(conn, snooze_id=snooze_id, actor=caller.user)
    outcome = "ok" if snooze else "not_found"
    audited(
        conn, caller, action="write.snooze.cancel", resource=f"snooze/{snooze_id}", outcome=outcome
    )
    if snooze is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such snooze")
    return snooze
