"""Dependencies shared by the routes: settings, a pooled connection, the caller, the audit."""

from __future__ import annotations

import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated
from urllib.parse import unquote

import psycopg
from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ingest import audit
from ingest.settings import IngestSettings

_bearer = HTTPBearer(auto_error=False)


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
    """Who is calling: the service token authenticates the dashboard; the user it acts for is
    named in ``X-CareWatch-User`` (per-user accounts come with the workspace's accounts)."""

    user: str
    client: str | None


def get_caller(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    x_carewatch_user: Annotated[str | None, Header(max_length=64)] = None,
) -> Caller:
    expected = settings.api_token.get_secret_value().encode()
    given = credentials.credentials.encode() if credentials else b""
    if not credentials or not hmac.compare_digest(given, expected):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "a valid bearer token is required (Authorization: Bearer <CAREWATCH_API_TOKEN>)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    client = request.client.host if request.client else None
    # Names travel percent-encoded (HTTP headers are Latin-1): "Zo%C3%AB" is "Zoë".
    user = unquote(x_carewatch_user) if x_carewatch_user else "api"
    return Caller(user=user, client=client)


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
