"""Flags: the triage queue, one flag's story, and acknowledging it."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, status
from pydantic import BaseModel, Field

from analytics import flag_lifecycle, flag_store
from ingest.api.deps import CallerDep, ConnDep, audited

router = APIRouter(prefix="/api/v1/flags", tags=["flags"])

FlagStatus = Literal["open", "acknowledged", "resolved"]


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
    include_snoozed: bool = False,
    limit: Annotated[int, Query(ge=1, le=2000)] = 500,
) -> list[dict[str, Any]]:
    """Flags by severity (critical first), then age (oldest first). Default: not resolved,
    not snoozed."""
    statuses = tuple(status_) if status_ else ("open", "acknowledged")
    flags = flag_store.list_flags(
        conn,
        statuses=statuses,
        patient_id=patient_id,
        assignee=assignee,
        include_snoozed=include_snoozed,
        limit=limit,
    )
    resource = f"patient/{patient_id}/flags" if patient_id else "flags"
    audited(conn, caller, action="read.flags", resource=resource, outcome="ok")
    return flags


@router.get("/counts")
def counts(conn: ConnDep, caller: CallerDep) -> dict[str, int]:
    """Open and acknowledged flags per severity."""
    return flag_store.counts_by_severity(conn)


@router.get("/{flag_id}")
def get_flag(flag_id: int, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """One flag with the readings that raised it and its history."""
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
    flag = flag_lifecycle.assign_flag(
        conn, flag_id=flag_id, assignee=body.assignee, actor=caller.user
    )
    outcome = "ok" if flag else "not_found"
    audited(conn, caller, action="write.flag.assign", resource=f"flag/{flag_id}", outcome=outcome)
    if flag is None:
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such flag")
    return flag
