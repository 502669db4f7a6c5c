"""Accounts and care teams, for admins: users with a role, teams, their members and the
patients each team looks after. Every change is audited."""

from __future__ import annotations

from typing import Annotated, Any

import psycopg
from fastapi import APIRouter, HTTPException, Path, status
from pydantic import BaseModel, Field

from ingest import accounts
from ingest.api.deps import Caller, CallerDep, ConnDep, audited, require_permission

router = APIRouter(prefix="/api/v1", tags=["accounts"])

TeamId = Annotated[str, Path(max_length=64)]


class NewUser(BaseModel):
    username: str = Field(min_length=2, max_length=64)
    display_name: str = Field(min_length=1, max_length=120)
    role: accounts.Role
    password: str = Field(min_length=accounts.MIN_PASSWORD_LENGTH, max_length=1024)
    email: str | None = Field(None, max_length=254)


class NewTeam(BaseModel):
    team_id: str = Field(min_length=2, max_length=64)
    name: str = Field(min_length=1, max_length=200)


class Members(BaseModel):
    usernames: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=500)


class TeamPatients(BaseModel):
    patient_ids: list[Annotated[str, Field(max_length=64)]] = Field(min_length=1, max_length=10_000)


def _refuse(
    conn: psycopg.Connection,
    caller: Caller,
    exc: accounts.AccountError,
    *,
    action: str,
    resource: str,
) -> HTTPException:
    """Audit a refused account change; the 422 to raise."""
    audited(conn, caller, action=action, resource=resource, outcome="invalid")
    conn.commit()
    return HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc))


@router.get("/users")
def list_users(conn: ConnDep, caller: CallerDep) -> list[dict[str, Any]]:
    """Every account with its role and teams (never a password hash)."""
    require_permission(conn, caller, "accounts", action="read.users", resource="users")
    rows = conn.execute(
        "SELECT u.username, u.display_name, u.role, u.active, u.created_at,"
        " coalesce(array_agg(m.team_id ORDER BY m.team_id) FILTER (WHERE m.team_id IS NOT NULL),"
        " '{}') FROM users u LEFT JOIN team_members m USING (user_id)"
        " GROUP BY u.user_id ORDER BY u.username"
    ).fetchall()
    audited(conn, caller, action="read.users", resource="users", outcome="ok")
    keys = ("username", "display_name", "role", "active", "created_at", "teams")
    return [dict(zip(keys, row, strict=True)) for row in rows]


@router.post("/users", status_code=status.HTTP_201_CREATED)
def create_user(body: NewUser, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    resource = f"user/{body.username}"
    require_permission(conn, caller, "accounts", action="write.user", resource=resource)
    try:
        accounts.create_user(
            conn,
            username=body.username,
            display_name=body.display_name,
            role=body.role,
            password=body.password,
            email=body.email,
            created_by=caller.user,
        )
    except accounts.AccountError as exc:
        raise _refuse(conn, caller, exc, action="write.user", resource=resource) from None
    audited(conn, caller, action="write.user", resource=resource, outcome="ok")
    return {"username": body.username, "display_name": body.display_name, "role": body.role}


@router.post("/teams", status_code=status.HTTP_201_CREATED)
def create_team(body: NewTeam, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    resource = f"team/{body.team_id}"
    require_permission(conn, caller, "accounts", action="write.team", resource=resource)
    try:
        accounts.create_team(conn, team_id=body.team_id, name=body.name)
    except accounts.AccountError as exc:
        raise _refuse(conn, caller, exc, action="write.team", resource=resource) from None
    audited(conn, caller, action="write.team", resource=resource, outcome="ok")
    return {"team_id": body.team_id, "name": body.name}


@router.post("/teams/{team_id}/members")
def add_members(team_id: TeamId, body: Members, conn: ConnDep, caller: CallerDep) -> dict[str, int]:
    resource = f"team/{team_id}/members"
    require_permission(conn, caller, "accounts", action="write.team.members", resource=resource)
    try:
        added = accounts.add_members(conn, team_id=team_id, usernames=body.usernames)
    except accounts.AccountError as exc:
        raise _refuse(conn, caller, exc, action="write.team.members", resource=resource) from None
    audited(conn, caller, action="write.team.members", resource=resource, outcome="ok")
    return {"added": added}


@router.post("/teams/{team_id}/patients")
def add_patients(
    team_id: TeamId, body: TeamPatients, conn: ConnDep, caller: CallerDep
) -> dict[str, int]:
    resource = f"team/{team_id}/patients"
    action = "write.team.patients"
    require_permission(conn, caller, "accounts", action=action, resource=resource)
    try:
        added = accounts.add_patients(conn, team_id=team_id, patient_ids=body.patient_ids)
    except accounts.AccountError as exc:
        raise _refuse(conn, caller, exc, action=action, resource=resource) from None
    audited(conn, caller, action=action, resource=resource, outcome="ok")
    return {"added": added}
