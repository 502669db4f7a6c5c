"""Logging in and out of the workspace: a session token per login, ended by logout, by an
idle timeout, or at its maximum age. Failed logins are rate-limited per user name and per
client address (429 with Retry-After); every attempt is audited with where it came from."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials
from pydantic import BaseModel, Field

from ingest import accounts, audit
from ingest.api.deps import CallerDep, ConnDep, SettingsDep, bearer_scheme, client_address

router = APIRouter(prefix="/api/v1/auth", tags=["auth"])


class Credentials(BaseModel):
    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)


@router.post("/login")
def login(
    body: Credentials, request: Request, conn: ConnDep, settings: SettingsDep
) -> dict[str, Any]:
    """A session token for the user, with their role and care teams."""
    client = client_address(request, settings)
    limits = accounts.LoginLimits(
        per_username=settings.login_failures_per_username,
        per_client=settings.login_failures_per_client,
        window=timedelta(minutes=settings.login_window_minutes),
    )

    def record(outcome: str) -> None:
        audit.record(
            conn,
            actor=body.username,
            action="login",
            resource=f"user/{body.username}",
            outcome=outcome,
            client=client,
        )

    try:
        token, user = accounts.login(
            conn,
            username=body.username,
            password=body.password,
            client=client,
            limits=limits,
            max_age=timedelta(hours=settings.api_session_max_hours),
        )
    except accounts.TooManyAttempts as exc:
        record("rate_limited")
        conn.commit()
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            str(exc),
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except accounts.LoginRefused as exc:
        record("denied")
        conn.commit()
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc)) from None
    record("ok")
    return {
        "token": token,
        "username": user.username,
        "display_name": user.display_name,
        "role": user.role,
        "teams": accounts.user_teams(conn, user.user_id),
        "idle_timeout_s": int(settings.api_session_idle_minutes * 60),
    }


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT)
def logout(
    conn: ConnDep,
    caller: CallerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> None:
    """End the caller's session (its token no longer works)."""
    if credentials is not None and caller.user_id is not None:
        accounts.logout(conn, credentials.credentials)


@router.get("/me")
def me(conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """Who the token belongs to, their role, teams and what they may do."""
    teams = accounts.user_teams(conn, caller.user_id) if caller.user_id is not None else []
    return {
        "username": caller.user,
        "role": caller.role,
        "teams": teams,
        "permissions": sorted(p for p in accounts.PERMISSIONS if caller.may(p)),
    }
