"""Flags: the triage queue, one flag's story, and acknowledging it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from analytics import flag_lifecycle, flag_store
from ingest.api.deps import (
    Caller,
    CallerDep,
    ConnDep,
    audited,
    not_found_unless_visible,
    require_patient,
    require_permission,
)

router = APIRouter(prefix="/api/v1/flags", tags=["flags"])

FlagStatus = Literal["open", "acknowledged", "resolved"]
Severity = Literal["critical", "high", "medium", "low", "info"]


class FlagNote(BaseModel):
    note: str | None = Field(None, max_length=2000)


class Resolution(BaseModel):
    note: str = Field(min_length=1, max_length=2000)


class Assignment(BaseModel):
    """Whom the flag goes to; ``null`` takes it off everyone. "Assign to me" sends the
    caller's own name."""

    assignee: str | None = Field(max_length=64)


@router.get("")
def list_flags(
    conn: ConnDep,
    caller: CallerDep,
    status_: Annotated[list[FlagStatus] | None, Query(alias="status")] = None,
    patient_id: Annotated[str | None, Query(max_length=64)] = None,
    assignee: Annotated[str | None, Query(max_length=64)] = None,
    severity: Annotated[list[Severity] | None, Query()] = None,
    rule_id: Annotated[str | None, Query(max_length=100)] = None,
    program: Annotated[str | None, Query(max_length=32)] = None,
    team_id: Annotated[str | None, Query(max_length=64)] = None,
    include_snoozed: bool = False,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> list[dict[str, Any]]:
    """The caller's patients' flags by severity (critical first), then age (oldest first).
    Default: not resolved, not snoozed. Filters: status, patient, assignee, severity, rule,
    program, care team."""
    if patient_id is not None:
        resource = f"patient/{patient_id}/flags"
        require_patient(conn, caller, patient_id, action="read.flags", resource=resource)
    statuses = tuple(status_) if status_ else ("open", "acknowledged")
    flags = flag_store.list_flags(
        conn,
        statuses=statuses,
        patient_id=patient_id,
        patient_ids=caller.patient_ids,
        assignee=assignee,
        severities=severity,
        rule_id=rule_id,
        program=program,
        team_id=team_id,
        include_snoozed=include_snoozed,
        limit=limit,
    )
    resource = f"patient/{patient_id}/flags" if patient_id else "flags"
    audited(conn, caller, action="read.flags", resource=resource, outcome="ok")
    return flags


@router.get("/counts")
def counts(conn: ConnDep, caller: CallerDep) -> dict[str, int]:
    """The caller's patients' open and acknowledged flags per severity."""
    return flag_store.counts_by_severity(conn, patient_ids=caller.patient_ids)


@router.get("/{flag_id}")
def get_flag(flag_id: int, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """One flag with the readings that raised it and its history."""
    _visible_flag(conn, caller, flag_id, action="read.flag")
    flag = flag_store.get_flag(conn, flag_id=flag_id)
    outcome = "ok" if flag else "not_found"
    audited(conn, caller, action="read.flag", resource=f"flag/{flag_id}", outcome=outcome)
    if flag is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flag")
    return flag


@router.post("/{flag_id}/acknowledge")
def acknowledge(
    flag_id: int, conn: ConnDep, caller: CallerDep, body: FlagNote | None = None
) -> dict[str, Any]:
    """Mark a flag as seen by the caller. Acknowledging twice is harmless."""
    _visible_flag(conn, caller, flag_id, action="write.flag.acknowledge", permission="triage")
    try:
        flag = flag_store.acknowledge_flag(
            conn, flag_id=flag_id, actor=caller.user, note=body.note if body else None
        )
    except flag_store.FlagStateError as exc:
        audited(
            conn,
            caller,
            action="write.flag.acknowledge",
            resource=f"flag/{flag_id}",
            outcome="conflict",
        )
        conn.commit()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from exc
    outcome = "ok" if flag else "not_found"
    audited(
        conn, caller, action="write.flag.acknowledge", resource=f"flag/{flag_id}", outcome=outcome
    )
    if flag is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flag")
    return flag


@router.post("/{flag_id}/resolve")
def resolve(flag_id: int, body: Resolution, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """Close a flag with a note saying why. Resolving twice is harmless; a new breach
    afterwards opens a new flag."""
    resource = f"flag/{flag_id}"
    _visible_flag(conn, caller, flag_id, action="write.flag.resolve", permission="triage")
    flag = flag_store.resolve_flag(conn, flag_id=flag_id, actor=caller.user, note=body.note)
    outcome = "ok" if flag else "not_found"
    audited(conn, caller, action="write.flag.resolve", resource=resource, outcome=outcome)
    if flag is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flag")
    return flag


@router.post("/{flag_id}/assign")
def assign(flag_id: int, body: Assignment, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """Give the flag to someone (or to nobody)."""
    _visible_flag(conn, caller, flag_id, action="write.flag.assign", permission="triage")
    flag = flag_lifecycle.assign_flag(
        conn, flag_id=flag_id, assignee=body.assignee, actor=caller.user
    )
    outcome = "ok" if flag else "not_found"
    audited(conn, caller, action="write.flag.assign", resource=f"flag/{flag_id}", outcome=outcome)
    if flag is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flag")
    return flag


def _visible_flag(
    conn: psycopg.Connection,
    caller: Caller,
    flag_id: int,
    *,
    action: str,
    permission: str | None = None,
) -> None:
    """403 without the permission; 404 (audited) for no such flag or another team's."""
    resource = f"flag/{flag_id}"
    if permission is not None:
        require_permission(conn, caller, permission, action=action, resource=resource)
    patient_id = flag_store.flag_patient(conn, flag_id=flag_id)
    not_found_unless_visible(
        conn, caller, patient_id, action=action, resource=resource, what="flag"
    )
