"""Threshold sets: a program's or a patient's overrides of the rules, versioned.

``GET /api/v1/thresholds/{program|patient}/{id}`` gives the version in force and the history;
``POST`` saves a new version (with its reason) that is in force at once: the rules worker
evaluates that program's or patient's next readings with it, and each flag records it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import psycopg
from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, Field

from analytics import threshold_store
from analytics.threshold_sets import ThresholdSetError, ThresholdVersion
from ingest.api.deps import (
    Caller,
    CallerDep,
    ConnDep,
    audited,
    require_patient,
    require_permission,
)

router = APIRouter(prefix="/api/v1/thresholds", tags=["thresholds"])

ScopeId = Annotated[str, Path(max_length=64)]
ScopeName = Literal["program", "patient"]


#: An override set or a lock list beyond these is not a threshold change but a mistake.
MAX_OVERRIDDEN_RULES = 200
MAX_LOCKS = 200


class NewVersion(BaseModel):
    overrides: dict[str, dict[str, Any]] = Field(max_length=MAX_OVERRIDDEN_RULES)
    reason: str = Field(min_length=1, max_length=1000)
    locked: list[Annotated[str, Field(max_length=200)]] = Field(
        default_factory=list, max_length=MAX_LOCKS
    )


def _as_json(version: ThresholdVersion) -> dict[str, Any]:
    return {
        "version_id": version.version_id,
        "label": version.label,
        "scope": version.scope,
        "scope_id": version.scope_id,
        "overrides": version.overrides,
        "locked": sorted(version.locked),
        "reason": version.reason,
        "author": version.author,
        "created_at": version.created_at.isoformat(),
    }


@router.get("/{scope}/{scope_id}")
def versions(
    scope: ScopeName, scope_id: ScopeId, conn: ConnDep, caller: CallerDep
) -> dict[str, Any]:
    """The version in force (null: the defaults apply) and every earlier one."""
    if scope == "patient":
        resource = f"patient/{scope_id}"
        require_patient(conn, caller, scope_id, action="read.thresholds", resource=resource)
    audited(conn, caller, action="read.thresholds", resource=f"{scope}/{scope_id}", outcome="ok")
    every = threshold_store.history(conn, scope=scope, scope_id=scope_id)
    return {
        "in_force": _as_json(every[0]) if every else None,
        "history": [_as_json(v) for v in every],
    }


@router.post("/{scope}/{scope_id}", status_code=status.HTTP_201_CREATED)
def save(
    scope: ScopeName,
    scope_id: ScopeId,
    body: NewVersion,
    request: Request,
    conn: ConnDep,
    caller: CallerDep,
) -> dict[str, Any]:
    """A new version of the overrides, in force from now. A program's: care-team leads and
    admins; a patient's: also their clinicians."""
    resource = f"{scope}/{scope_id}"
    may_change(conn, caller, scope, scope_id, action="write.thresholds")
    try:
        version = threshold_store.save_version(
            conn,
            request.app.state.rules,
            scope=scope,
            scope_id=scope_id,
            overrides=body.overrides,
            reason=body.reason,
            author=caller.user,
            locked=frozenset(body.locked),
        )
    except threshold_store.LockedValueError as exc:
        audited(conn, caller, action="write.thresholds", resource=resource, outcome="conflict")
        conn.commit()
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except ThresholdSetError as exc:
        audited(conn, caller, action="write.thresholds", resource=resource, outcome="invalid")
        conn.commit()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audited(conn, caller, action="write.thresholds", resource=resource, outcome="ok")
    return _as_json(version)


def may_change(
    conn: psycopg.Connection, caller: Caller, scope: str, scope_id: str, *, action: str
) -> None:
    """403 unless the caller's role may change this scope's thresholds; 404 for a patient
    who is not theirs."""
    resource = f"{scope}/{scope_id}"
    if scope == "program":
        require_permission(conn, caller, "program_thresholds", action=action, resource=resource)
    else:
        require_patient(
            conn,
            caller,
            scope_id,
            action=action,
            resource=resource,
            permission="patient_thresholds",
        )
