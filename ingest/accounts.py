"""Workspace accounts: users and roles, care teams, login, API sessions.

A **user** has one role: ``clinician``, ``nurse``, ``lead`` (a care-team lead) or ``admin``.
What each role may do is :data:`PERMISSIONS`. A user sees only the patients of their care
teams. Passwords are kept as argon2id hashes; a login gives an opaque session token, stored
only as its SHA-256 digest, that ends after ``idle`` minutes without use (and at the latest
``max_age`` after the login). Failed logins are counted per user name and per client; past the
limit a login is refused before the password is even checked.

Thin shell over PostgreSQL (migration 0009); never commits: the caller's transaction does.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

import psycopg
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

Role = Literal["clinician", "nurse", "lead", "admin"]
ROLES: Final[tuple[str, ...]] = ("clinician", "nurse", "lead", "admin")
#: The role of the service token (trusted integrations): every permission, every patient.
SERVICE_ROLE: Final = "service"

#: Who may do what. Reading patient data is further limited to the user's care teams.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "read_patients": frozenset({"clinician", "nurse", "lead", "admin", SERVICE_ROLE}),
    "triage": frozenset({"clinician", "nurse", "lead", SERVICE_ROLE}),
    "follow_up": frozenset({"clinician", "nurse", "lead", SERVICE_ROLE}),
    "patient_thresholds": frozenset({"clinician", "lead", "admin", SERVICE_ROLE}),
    "program_thresholds": frozenset({"lead", "admin", SERVICE_ROLE}),
    "billing": frozenset({"lead", "admin", SERVICE_ROLE}),
    "accounts": frozenset({"admin", SERVICE_ROLE}),
}

USERNAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{1,63}")
MIN_PASSWORD_LENGTH: Final = 12

_hasher = PasswordHasher()  # argon2id with the library's (RFC 9106 low-memory) parameters
# Verified against when the user does not exist, so that an unknown name costs the same time.
_DUMMY_HASH: Final = _hasher.hash("carewatch: no such user")


class AccountError(ValueError):
    """A request about accounts that cannot be done (the message says why)."""


def can(role: str, permission: str) -> bool:
    return role in PERMISSIONS[permission]


@dataclass(frozen=True, slots=True)
class SessionUser:
    """The user behind a valid session token."""

    user_id: int
    username: str
    display_name: str
    role: str


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def create_user(
    conn: psycopg.Connection[Any],
    *,
    username: str,
    display_name: str,
    role: str,
    password: str,
    created_by: str,
    email: str | None = None,
) -> int:
    """A new active user; their id. Refused: a bad name, role or password, a name taken."""
    if not USERNAME_PATTERN.fullmatch(username):
        raise AccountError(
            "a user name is 2-64 characters: lower-case letters, digits, '.', '_' or '-'"
        )
    if role not in ROLES:
        raise AccountError(f"unknown role {role!r} ({', '.join(ROLES)})")
    if not display_name.strip():
        raise AccountError("a user needs a display name")
    password_hash = hash_password(password)
    try:
        with conn.transaction():
            row = conn.execute(
                "INSERT INTO users (username, display_name, role, password_hash, email,"
                " created_by) VALUES (%s, %s, %s, %s, %s, %s) RETURNING user_id",
                (username, display_name.strip(), role, password_hash, email, created_by),
            ).fetchone()
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"the user name {username!r} is taken") from None
    assert row is not None
    return int(row[0])


def set_password(conn: psycopg.Connection[Any], *, username: str, password: str) -> bool:
    """Change a user's password and end their sessions; False when there is no such user."""
    updated = conn.execute(
        "UPDATE users SET password_hash = %s WHERE username = %s RETURNING user_id",
        (hash_password(password), username),
    ).fetchone()
    if updated is None:
        return False
    conn.execute(
        "UPDATE api_sessions SET ended_at = now() WHERE user_id = %s AND ended_at IS NULL",
        (updated[0],),
    )
    return True


def create_team(conn: psycopg.Connection[Any], *, team_id: str, name: str) -> None:
    if not USERNAME_PATTERN.fullmatch(team_id):
        raise AccountError(
            "a team id is 2-64 characters: lower-case letters, digits, '.', '_' or '-'"
        )
    try:
        with conn.transaction():
            conn.execute(
                "INSERT INTO care_teams (team_id, name) VALUES (%s, %s)", (team_id, name.strip())
            )
    except psycopg.errors.UniqueViolation:
        raise AccountError(f"there already is a team {team_id!r}") from None
    except psycopg.errors.CheckViolation:
        raise AccountError("a team needs a name") from None


def add_members(conn: psycopg.Connection[Any], *, team_id: str, usernames: Iterable[str]) -> int:
    """Put users in a team (already there: no change); how many were added."""
    names = sorted(set(usernames))
    _require_team(conn, team_id)
    found = conn.execute(
        "SELECT username FROM users WHERE username = ANY(%s::text[])", (names,)
    ).fetchall()
    missing = set(names) - {name for (name,) in found}
    if missing:
        raise AccountError(f"no such users: {', '.join(sorted(missing))}")
    cur = conn.execute(
        "INSERT INTO team_members (team_id, user_id) SELECT %s, user_id FROM users"
        " WHERE username = ANY(%s::text[]) ON CONFLICT DO NOTHING",
        (team_id, names),
    )
    return cur.rowcount


def add_patients(conn: psycopg.Connection[Any], *, team_id: str, patient_ids: Iterable[str]) -> int:
    """Give a team patients to look after (already theirs: no change); how many were added."""
    ids = sorted(set(patient_ids))
    _require_team(conn, team_id)
    found = conn.execute(
        "SELECT patient_id FROM patients WHERE patient_id = ANY(%s::text[])", (ids,)
    ).fetchall()
    missing = set(ids) - {patient_id for (patient_id,) in found}
    if missing:
        raise AccountError(f"no such patients: {len(missing)} of {len(ids)}")
    cur = conn.execute(
        "INSERT INTO team_patients (team_id, patient_id) SELECT %s, unnest(%s::text[])"
        " ON CONFLICT DO NOTHING",
        (team_id, ids),
    )
    return cur.rowcount


def _require_team(conn: psycopg.Connection[Any], team_id: str) -> None:
    if conn.execute("SELECT 1 FROM care_teams WHERE team_id = %s", (team_id,)).fetchone() is None:
        raise AccountError(f"no team {team_id!r}")


# --- Login and sessions -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoginLimits:
    """Failed logins allowed per user name and per client within ``window``."""

    per_username: int = 5
    per_client: int = 20
    window: timedelta = timedelta(minutes=15)


class LoginRefused(Exception):
    """Wrong name or password (which of the two is not said), or an inactive account."""


class TooManyAttempts(Exception):
    """Too many failed logins lately; try again after ``retry_after_s``."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after_s} s")
        self.retry_after_s = retry_after_s


def login(
    conn: psycopg.Connection[Any],
    *,
    username: str,
    password: str,
    client: str | None,
    limits: LoginLimits,
    max_age: timedelta,
) -> tuple[str, SessionUser]:
    """Check the password and open a session: (token, user). The attempt is recorded either
    way, in the caller's transaction (commit it also when this raises :class:`LoginRefused`).
    Attempts on one user name are taken one at a time (a transaction-scoped advisory lock), so
    parallel guesses cannot all pass the count before any failure is recorded."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('carewatch.login:' || %s))", (username,))
    _refuse_when_over_the_limit(conn, username=username, client=client, limits=limits)
    row = conn.execute(
        "SELECT user_id, username, display_name, role, password_hash, active FROM users"
        " WHERE username = %s",
        (username,),
    ).fetchone()
    ok = False
    try:
        ok = _hasher.verify(row[4] if row else _DUMMY_HASH, password) and bool(row and row[5])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        ok = False
    conn.execute(
        "INSERT INTO login_attempts (username, client, succeeded) VALUES (%s, %s, %s)",
        (username[:64], client, ok),
    )
    if not ok or row is None:
        raise LoginRefused("wrong user name or password, or the account is not active")
    if _hasher.check_needs_rehash(row[4]):
        conn.execute(
            "UPDATE users SET password_hash = %s WHERE user_id = %s",
            (_hasher.hash(password), row[0]),
        )
    token = secrets.token_urlsafe(32)
    conn.execute(
        "INSERT INTO api_sessions (token_sha256, user_id, expires_at, client)"
        " VALUES (%s, %s, now() + %s, %s)",
        (token_digest(token), row[0], max_age, client),
    )
    return token, SessionUser(row[0], row[1], row[2], row[3])


def _refuse_when_over_the_limit(
    conn: psycopg.Connection[Any], *, username: str, client: str | None, limits: LoginLimits
) -> None:
    row = conn.execute(
        "SELECT count(*) FILTER (WHERE username = %(u)s),"
        " count(*) FILTER (WHERE client IS NOT DISTINCT FROM %(c)s),"
        " min(at) FILTER (WHERE username = %(u)s),"
        " min(at) FILTER (WHERE client IS NOT DISTINCT FROM %(c)s),"
        " now()"
        " FROM login_attempts WHERE NOT succeeded AND at > now() - %(w)s"
        " AND (username = %(u)s OR client IS NOT DISTINCT FROM %(c)s)",
        {"u": username, "c": client, "w": limits.window},
    ).fetchone()
    assert row is not None
    by_name, by_client, oldest_by_name, oldest_by_client, now = row
    oldest = None
    if by_name >= limits.per_username:
        oldest = oldest_by_name
    elif by_client >= limits.per_client:
        oldest = oldest_by_client
    if oldest is not None:
        wait = oldest + limits.window - now
        raise TooManyAttempts(max(1, int(wait.total_seconds()) + 1))


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def session_user(
    conn: psycopg.Connection[Any], token: str, *, idle: timedelta
) -> SessionUser | None:
    """The active user behind ``token`` when its session is live (used within ``idle``, not
    past its maximum age, not ended); marks it used now. None otherwise."""
    row = conn.execute(
        "UPDATE api_sessions s SET last_used_at = now() FROM users u"
        " WHERE s.token_sha256 = %s AND u.user_id = s.user_id AND u.active"
        " AND s.ended_at IS NULL AND s.expires_at > now() AND s.last_used_at > now() - %s"
        " RETURNING u.user_id, u.username, u.display_name, u.role",
        (token_digest(token), idle),
    ).fetchone()
    return SessionUser(*row) if row else None


def logout(conn: psycopg.Connection[Any], token: str) -> None:
    conn.execute(
        "UPDATE api_sessions SET ended_at = now() WHERE token_sha256 = %s AND ended_at IS NULL",
        (token_digest(token),),
    )


def visible_patients(conn: psycopg.Connection[Any], user_id: int) -> frozenset[str]:
    """The patients of the user's care teams."""
    rows = conn.execute(
        "SELECT DISTINCT tp.patient_id FROM team_members tm JOIN team_patients tp USING (team_id)"
        " WHERE tm.user_id = %s",
        (user_id,),
    ).fetchall()
    return frozenset(patient_id for (patient_id,) in rows)


def user_teams(conn: psycopg.Connection[Any], user_id: int) -> list[str]:
    rows = conn.execute(
        "SELECT team_id FROM team_members WHERE user_id = %s ORDER BY team_id", (user_id,)
    ).fetchall()
    return [team_id for (team_id,) in rows]
