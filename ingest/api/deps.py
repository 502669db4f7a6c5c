"""Dependencies shared by the routes: settings, a pooled connection, the caller, the audit."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import unquote

import psycopg
from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest import accounts, audit
from ingest.accounts import SERVICE_ROLE, can
from ingest.settings import IngestSettings

bearer_scheme = HTTPBearer(auto_error=False)


def get_settings_dep(request: Request) -> IngestSettings:
    return request.app.state.settings


SettingsDep = Annotated[IngestSettings, Depends(get_settings_dep)]


def get_conn(request: Request) -> Iterator[psycopg.Connection]:
    """A pooled connection; committed when the handler succeeds, rolled back otherwise."""
    with request.app.state.pool.connection() as conn:
        yield conn


# scope="function": the commit happens before the response is sent, so a client is never told
# "acknowledged" about a write that then fails to commit.
ConnDep = Annotated[psycopg.Connection, Depends(get_conn, scope="function")]


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling. A workspace user logs in (``POST /api/v1/auth/login``) and sends the
    session token; they see only the patients of their care teams. The service token
    (``CAREWATCH_API_TOKEN``) is for trusted integrations: every patient, every permission,
    audited under the name in ``X-CareWatch-User`` (or "service")."""

    user: str
    client: str | None
    role: str = SERVICE_ROLE
    user_id: int | None = None
    patient_ids: frozenset[str] | None = None  # None: every patient (the service token)

    def sees(self, patient_id: str) -> bool:
        return self.patient_ids is None or patient_id in self.patient_ids

    def may(self, permission: str) -> bool:
        return can(self.role, permission)


def client_address(request: Request, settings: IngestSettings) -> str | None:
    """Where the request comes from: the peer, or, when the peer is a trusted proxy (the
    workspace, which calls the API for its users), the address it names in
    ``X-CareWatch-Client``; the login limit and the audit log use it."""
    peer = request.client.host if request.client else None
    named = request.headers.get(CLIENT_HEADER)
    if peer is not None and named and peer in settings.trusted_proxies:
        return named[:64]
    return peer


CLIENT_HEADER = "X-CareWatch-Client"


def get_caller(
    request: Request,
    settings: SettingsDep,
    conn: ConnDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
    x_carewatch_user: Annotated[str | None, Header(max_length=64)] = None,
) -> Caller:
    client = client_address(request, settings)
    if credentials is None:
        raise _unauthorized(
            "log in first (POST /api/v1/auth/login) and send the session token, or an "
            "integration's CAREWATCH_API_TOKEN, as Authorization: Bearer <token>"
        )
    given = credentials.credentials
    expected = settings.api_token.get_secret_value()
    if hmac.compare_digest(given.encode(), expected.encode()):
        # Names travel percent-encoded (HTTP headers are Latin-1): "Zo%C3%AB" is "Zoë".
        user = unquote(x_carewatch_user) if x_carewatch_user else "service"
        return Caller(user=user, client=client)
    idle = timedelta(minutes=settings.api_session_idle_minutes)
    found = accounts.session_user(conn, given, idle=idle)
    # Commit the session's "last used" at once: its row lock must not last the whole request
    # (a slow preview in one tab would hold up the user's every other request).
    conn.commit()
    if found is None:
        raise _unauthorized(
            "the token is unknown or its session has ended: log in again (an integration: "
            "check CAREWATCH_API_TOKEN)"
        )
    return Caller(
        user=found.username,
        client=client,
        role=found.role,
        user_id=found.user_id,
        patient_ids=accounts.visible_patients(conn, found.user_id),
    )


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, message, headers={"WWW-Authenticate": "Bearer"}
    )


CallerDep = Annotated[Caller, Depends(get_caller)]


def audited(
    conn: psycopg.Connection, caller: Caller, *, action: str, resource: str, outcome: str
) -> None:
    """Record an access to patient data; committed with the request's transaction."""
    audit.record(
        conn,
        actor=caller.user,
        action=action,
        resource=resource,
        outcome=outcome,
        client=caller.client,
    )


#: What a permission lets one do, for the 403's message.
PERMISSION_WORDS = {
    "read_patients": "read patient data",
    "triage": "work the triage queue",
    "follow_up": "follow patients up",
    "patient_thresholds": "change a patient's thresholds",
    "program_thresholds": "change a program's thresholds (care-team leads and admins)",
    "billing": "see billing evidence (care-team leads and admins)",
    "accounts": "manage accounts (admins)",
}


def require_permission(
    conn: psycopg.Connection, caller: Caller, permission: str, *, action: str, resource: str
) -> None:
    """403 (audited as denied) unless the caller's role has ``permission``."""
    if caller.may(permission):
        return
    audited(conn, caller, action=action, resource=resource, outcome="denied")
    conn.commit()
    raise HTTPException(
        status.HTTP_403_FORBIDDEN,
        f"your role ({caller.role}) may not {PERMISSION_WORDS[permission]}",
    )


def require_patient(
    conn: psycopg.Connection,
    caller: Caller,
    patient_id: str,
    *,
    action: str,
    resource: str,
    permission: str | None = None,
) -> dict[str, Any]:
    """The patient's row when they exist and are one of the caller's; else 404 "no such
    patient", audited as ``not_found`` or, for another team's patient, ``denied`` (the answer
    is the same, so that it does not tell whether the patient exists). With ``permission``,
    a caller whose role lacks it gets the 403 of :func:`require_permission` first."""
    if permission is not None:
        require_permission(conn, caller, permission, action=action, resource=resource)
    row = conn.execute(
        "SELECT patient_id, display_name, program, spo2_scale, birth_date, phone"
        " FROM patients WHERE patient_id = %s",
        (patient_id,),
    ).fetchone()
    if row is None or not caller.sees(patient_id):
        outcome = "not_found" if row is None else "denied"
        audited(conn, caller, action=action, resource=resource, outcome=outcome)
        conn.commit()
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such patient")
    keys = ("patient_id", "display_name", "program", "spo2_scale", "birth_date", "phone")
    return dict(zip(keys, row, strict=True))


def not_found_unless_visible(
    conn: psycopg.Connection,
    caller: Caller,
    patient_id: str | None,
    *,
    action: str,
    resource: str,
    what: str,
) -> None:
    """404 "no such <what>" (audited) when the object does not exist (``patient_id`` None) or
    belongs to a patient of another team."""
    if patient_id is not None and caller.sees(patient_id):
        return
    outcome = "not_found" if patient_id is None else "denied"
    audited(conn, caller, action=action, resource=resource, outcome=outcome)
    conn.commit()
    raise HTTPException(status.HTTP_404_NOT_FOUND, f"no such {what}")
