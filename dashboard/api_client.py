"""The CareWatch HTTP API as the workspace uses it: one method per call, errors that say what to do.

No Streamlit here: the pages call :class:`CareWatchApi` and show :class:`ApiError` messages as
they are. The workspace logs its user in (:func:`log_in`) and sends their session token as
``Authorization: Bearer``; the API audits every read and write under their name and shows them
only their care teams' patients. Integrations may use the service token
(``CAREWATCH_API_TOKEN``, :meth:`CareWatchApi.from_env`) with ``X-CareWatch-User``. No token
is ever logged, shown, or put into an error message.
"""

from __future__ import annotations

import os
import re
import ssl
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from types import TracebackType
from typing import Any, Final, Literal
from urllib.parse import quote

import httpx

DEFAULT_API_URL: Final = "http://127.0.0.1:8000"
DEFAULT_USER: Final = "clinician"
REQUEST_TIMEOUT_S: Final = 10.0
API_PREFIX: Final = "/api/v1"
USER_HEADER: Final = "X-CareWatch-User"
#: The end user's address, which the API believes from a trusted proxy (this workspace).
CLIENT_HEADER: Final = "X-CareWatch-Client"
#: The API refuses longer user names (``Header(max_length=64)``).
USER_HEADER_MAX_LENGTH: Final = 64

ENV_API_URL: Final = "CAREWATCH_API_URL"
ENV_API_TOKEN: Final = "CAREWATCH_API_TOKEN"  # noqa: S105 - the variable's name, not a secret
ENV_USER: Final = "CAREWATCH_USER"

FlagStatus = Literal["open", "acknowledged", "resolved"]
FLAG_STATUSES: Final[tuple[FlagStatus, ...]] = ("open", "acknowledged", "resolved")
#: Follow-up requests (a patient's "call me back"): ``all`` is both ``open`` and ``done``.
FollowUpStatus = Literal["open", "done", "all"]
JsonObject = dict[str, Any]

#: Opens a client for one run of a page (the caller closes it): pages take one of these rather
#: than a client, so that a fragment's own reruns and button callbacks open their own.
ApiConnector = Callable[[], "CareWatchApi"]

# Printable ASCII except "%": what a user name may contain unescaped in the header.
_HEADER_SAFE: Final = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


class ApiError(RuntimeError):
    """A call to the CareWatch API failed; the message says what happened and what to do."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class ApiUnreachableError(ApiError):
    """The API could not be reached or did not answer in time."""


class ApiAuthError(ApiError):
    """The API refused the token, or no token is configured."""


class ApiNotFoundError(ApiError):
    """The patient, flag or follow-up request asked for does not exist."""


class ApiConflictError(ApiError):
    """The change is not allowed in the resource's state (e.g. acknowledging a resolved flag,
    or marking a follow-up request done twice)."""


def user_from_env(environ: Mapping[str, str] | None = None) -> str:
    """The clinician name to act as by default: ``$CAREWATCH_USER``, else ``clinician``."""
    env = os.environ if environ is None else environ
    return env.get(ENV_USER, "").strip() or DEFAULT_USER


def user_header_value(user: str) -> str:
    """``user`` as it can travel in ``X-CareWatch-User``.

    HTTP header values are ASCII here: characters outside printable ASCII (and "%") are
    percent-encoded as UTF-8 ("Zoë" -> "Zo%C3%AB"), whitespace runs become one space, and the
    result is cut to the API's 64 characters without splitting an escape. Empty -> ``clinician``.
    """
    collapsed = " ".join(user.split()) or DEFAULT_USER
    value = ""
    for char in collapsed:
        piece = quote(char, safe=_HEADER_SAFE)
        if len(value) + len(piece) > USER_HEADER_MAX_LENGTH:
            break
        value += piece
    return value


def parse_api_time(value: str | None) -> datetime | None:
    """An API timestamp (ISO 8601) as an aware datetime; ``None`` stays ``None``.

    The API serialises ``timestamptz`` columns, which always carry an offset; a value without
    one is read as UTC.
    """
    if value is None:
        return None
    parsed = datetime.fromisoformat(value)
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


@cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default TLS context, built once: building one costs ~30 ms, and the pages open
    a client per run."""
    return httpx.create_ssl_context()


@dataclass(frozen=True)
class WorkspaceSession:
    """A logged-in user of the workspace: their session token and who they are."""

    token: str = field(repr=False)
    username: str
    display_name: str
    role: str
    teams: tuple[str, ...]
    idle_timeout_s: int


def api_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    return env.get(ENV_API_URL, "").strip() or DEFAULT_API_URL


def log_in(
    base_url: str,
    username: str,
    password: str,
    *,
    client_address: str | None = None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> WorkspaceSession:
    """Log a user in (``client_address``: the browser's, for the API's login limit and audit);
    :class:`ApiAuthError` with what to do when refused."""
    if not username.strip() or not password:
        raise ApiAuthError("enter your user name and password")
    with CareWatchApi(
        base_url, None, timeout_s=timeout_s, client_address=client_address
    ) as anonymous:
        answer = anonymous._request(
            "POST",
            f"{API_PREFIX}/auth/login",
            json={"username": username.strip(), "password": password},
            accept_statuses=(401, 429),
            with_status=True,
        )
    status, body = answer
    if status == httpx.codes.UNAUTHORIZED:
        raise ApiAuthError(
            "wrong user name or password, or the account is not active", status_code=status
        )
    if status == httpx.codes.TOO_MANY_REQUESTS:
        raise ApiAuthError(
            f"too many failed logins: {body.get('detail', 'try again later')}", status_code=status
        )
    return WorkspaceSession(
        token=body["token"],
        username=body["username"],
        display_name=body["display_name"],
        role=body["role"],
        teams=tuple(body.get("teams") or ()),
        idle_timeout_s=int(body.get("idle_timeout_s") or 0),
    )


class CareWatchApi:
    """A client of the CareWatch API with a session token (or an integration's token).

    Holds one ``httpx.Client`` (keep-alive, 10 s timeout); close it with :meth:`close` or use
    the client as a context manager. Cheap to open: the workspace opens one per page run.
    Methods return the API's JSON (timestamps as ISO strings, see :func:`parse_api_time`) and
    raise :class:`ApiError` subclasses.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None,
        *,
        user: str | None = None,
        timeout_s: float = REQUEST_TIMEOUT_S,
        client_address: str | None = None,
    ) -> None:
        url = base_url.strip().rstrip("/")
        try:
            parsed = httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ApiError(_bad_url_message(url)) from exc
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ApiError(_bad_url_message(url))
        if token is not None and not token.strip():
            raise ApiAuthError(_missing_token_message())
        if token is not None and not (token.strip().isascii() and token.strip().isprintable()):
            raise ApiAuthError(
                "CAREWATCH_API_TOKEN holds characters a token cannot have; copy the ingest "
                "service's token again"
            )
        self.base_url = url
        #: The URL without credentials, for messages and the sidebar.
        self.display_url = str(parsed.copy_with(username=None, password=None))
        self.user = user_header_value(user) if user is not None else None
        self.timeout_s = timeout_s
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token.strip()}"
        if self.user is not None:
            headers[USER_HEADER] = self.user
        if client_address and client_address.isascii() and client_address.isprintable():
            headers[CLIENT_HEADER] = client_address[:64]
        self._client = httpx.Client(
            base_url=url, timeout=timeout_s, verify=_tls_context(), headers=headers
        )

    @classmethod
    def from_env(
        cls, *, user: str | None = None, environ: Mapping[str, str] | None = None
    ) -> CareWatchApi:
        """A client for ``$CAREWATCH_API_URL`` (default http://127.0.0.1:8000) with
        ``$CAREWATCH_API_TOKEN``, acting as ``user`` (default: :func:`user_from_env`)."""
        env = os.environ if environ is None else environ
        url = api_url_from_env(env)
        token = env.get(ENV_API_TOKEN, "").strip()
        if not token:
            raise ApiAuthError(_missing_token_message())
        return cls(url, token, user=user if user is not None else user_from_env(env))

    def __repr__(self) -> str:
        return f"CareWatchApi({self.display_url!r}, user={self.user!r})"

    def __enter__(self) -> CareWatchApi:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    # --- flags ---------------------------------------------------------------------------------

    def flags(
        self,
        status: FlagStatus | Iterable[FlagStatus] | None = None,
        patient_id: str | None = None,
        *,
        assignee: str | None = None,
        program: str | None = None,
        team_id: str | None = None,
        rule_id: str | None = None,
        limit: int | None = None,
    ) -> list[JsonObject]:
        """Flags in triage order (most severe first, then oldest first).

        ``status``: one status or several; ``None`` asks for the API's default (open and
        acknowledged). ``patient_id``: one patient's flags only; the other filters are the
        triage queue's.
        """
        params: list[tuple[str, str | int]] = []
        if status is not None:
            statuses = (status,) if isinstance(status, str) else tuple(status)
            params.extend(("status", value) for value in statuses)
        for name, value in (
            ("patient_id", patient_id),
            ("assignee", assignee),
            ("program", program),
            ("team_id", team_id),
            ("rule_id", rule_id),
        ):
            if value is not None:
                params.append((name, value))
        if limit is not None:
            params.append(("limit", limit))
        return self._get(f"{API_PREFIX}/flags", params=params)

    def flag(self, flag_id: int) -> JsonObject:
        """One flag with its ``readings`` (the readings that raised it) and ``events``."""
        return self._get(f"{API_PREFIX}/flags/{int(flag_id)}")

    def acknowledge(self, flag_id: int, note: str | None = None) -> JsonObject:
        """Acknowledge a flag as this clinician; returns the flag. Twice is harmless."""
        return self._request(
            "POST", f"{API_PREFIX}/flags/{int(flag_id)}/acknowledge", json={"note": note}
        )

    def resolve(self, flag_id: int, note: str) -> JsonObject:
        """Resolve a flag with a note saying why; returns the flag. Twice is harmless."""
        return self._request(
            "POST", f"{API_PREFIX}/flags/{int(flag_id)}/resolve", json={"note": note}
        )

    def assign(self, flag_id: int, assignee: str | None) -> JsonObject:
        """Give the flag to ``assignee`` (None: to nobody)."""
        return self._request(
            "POST", f"{API_PREFIX}/flags/{int(flag_id)}/assign", json={"assignee": assignee}
        )

    def snooze(
        self, patient_id: str, rule_id: str, direction: str, minutes: int, reason: str
    ) -> JsonObject:
        """Quiet the patient's flags of one rule and direction for ``minutes``."""
        return self._request(
            "POST",
            f"{API_PREFIX}/patients/{_path_segment(patient_id)}/snoozes",
            json={
                "rule_id": rule_id,
                "direction": direction,
                "minutes": minutes,
                "reason": reason,
            },
        )

    def me(self) -> JsonObject:
        """The logged-in user: ``username``, ``role``, ``teams``, ``permissions``."""
        return self._get(f"{API_PREFIX}/auth/me")

    def flag_counts(self) -> dict[str, int]:
        """Open and acknowledged flags per severity (every severity present)."""
        return self._get(f"{API_PREFIX}/flags/counts")

    # --- follow-up requests -------------------------------------------------------------------

    def follow_ups(
        self,
        status: FollowUpStatus = "open",
        patient_id: str | None = None,
        *,
        limit: int | None = None,
    ) -> list[JsonObject]:
        """Patients' follow-up requests (e.g. "call me back"), newest first.

        Each: ``{request_id, patient_id, patient_name, kind, note, in_reply_to,
        requested_at, received_at, status, closed_by, closed_at, close_note, gateway_id}``.
        """
        params: dict[str, str | int] = {"status": status}
        if patient_id is not None:
            params["patient_id"] = patient_id
        if limit is not None:
            params["limit"] = limit
        return self._get(f"{API_PREFIX}/follow-ups", params=params)

    def close_follow_up(self, request_id: str, note: str | None = None) -> JsonObject:
        """Mark a follow-up request done as this clinician, with an optional note; returns
        the request. :class:`ApiConflictError` when it is done already."""
        return self._request(
            "POST",
            f"{API_PREFIX}/follow-ups/{_path_segment(request_id)}/close",
            json={"note": note},
        )

    # --- patients ------------------------------------------------------------------------------

    def patients(self) -> list[JsonObject]:
        """Every patient, by name, with their latest reading time and unresolved flag count."""
        return self._get(f"{API_PREFIX}/patients")

    def patient(self, patient_id: str) -> JsonObject:
        """One patient with their devices (type, last reading, battery, gateway state)."""
        return self._get(f"{API_PREFIX}/patients/{_path_segment(patient_id)}")

    def readings(self, patient_id: str, days: int, loinc: str | None = None) -> list[JsonObject]:
        """The patient's readings of the last ``days`` days (1-366), oldest first."""
        params: dict[str, str | int] = {"days": int(days)}
        if loinc is not None:
            params["loinc"] = loinc
        return self._get(
            f"{API_PREFIX}/patients/{_path_segment(patient_id)}/readings", params=params
        )

    def readings_summary(
        self,
        patient_id: str,
        bucket: Literal["hour", "day"] = "hour",
        *,
        since: datetime | None = None,
        loinc: str | None = None,
    ) -> list[JsonObject]:
        """The patient's readings per UTC hour or day, by metric then time: ``{loinc, unit,
        bucket, n, min_value, max_value, avg_value, last_value, last_at}`` per bucket, from the
        bucket holding ``since`` (the API's default: 7 days back for hours, 90 for days)."""
        params: dict[str, str] = {"bucket": bucket}
        if since is not None:
            params["since"] = since.isoformat()
        if loinc is not None:
            params["loinc"] = loinc
        return self._get(
            f"{API_PREFIX}/patients/{_path_segment(patient_id)}/readings/summary", params=params
        )

    # --- rules and service ---------------------------------------------------------------------

    def thresholds(self, loinc: str | None = None) -> JsonObject:
        """``{"version": ..., "lines": [...]}``: the rule set's limits to draw for ``loinc``.

        Each line: ``{metric, limit, direction, severity, label, rule_id}``.
        """
        params = {"loinc": loinc} if loinc is not None else None
        return self._get(f"{API_PREFIX}/thresholds", params=params)

    # --- outreach: messages and calls ---------------------------------------------------------

    def message_templates(self) -> list[JsonObject]:
        return self._get(f"{API_PREFIX}/message-templates")

    def messages(self, patient_id: str) -> list[JsonObject]:
        """The patient's messages, newest first, each with its ``status``."""
        return self._get(f"{API_PREFIX}/patients/{_path_segment(patient_id)}/messages")

    def send_message(
        self,
        patient_id: str,
        body: str,
        *,
        template_id: str | None = None,
        by_email: bool = False,
    ) -> JsonObject:
        return self._request(
            "POST",
            f"{API_PREFIX}/patients/{_path_segment(patient_id)}/messages",
            json={"body": body, "template_id": template_id, "by_email": by_email},
        )

    def calls(self, patient_id: str) -> list[JsonObject]:
        return self._get(f"{API_PREFIX}/patients/{_path_segment(patient_id)}/calls")

    def start_call(self, patient_id: str) -> JsonObject:
        """A new call: ``room_url`` and ``tel`` links; its time runs until :meth:`end_call`."""
        return self._request("POST", f"{API_PREFIX}/patients/{_path_segment(patient_id)}/calls")

    def end_call(self, call_id: str, outcome: str, note: str | None = None) -> JsonObject:
        return self._request(
            "POST",
            f"{API_PREFIX}/calls/{_path_segment(call_id)}/end",
            json={"outcome": outcome, "note": note},
        )

    # --- thresholds and their tuning ----------------------------------------------------------

    def rules(self) -> JsonObject:
        """The default rules with their tunable values (``{"version", "rules": [...]}``)."""
        return self._get(f"{API_PREFIX}/rules")

    def threshold_versions(self, scope: str, scope_id: str) -> JsonObject:
        """``{"in_force": version or None, "history": [...]}`` of a program or patient."""
        return self._get(
            f"{API_PREFIX}/thresholds/{_path_segment(scope)}/{_path_segment(scope_id)}"
        )

    def preview(
        self, scope: str, scope_id: str, overrides: Mapping[str, Any], days: int
    ) -> JsonObject:
        """Alerts per patient-week now and with ``overrides``, over the last ``days``."""
        return self._request(
            "POST",
            f"{API_PREFIX}/rules/preview",
            json={"scope": scope, "scope_id": scope_id, "overrides": overrides, "days": days},
        )

    def save_thresholds(
        self,
        scope: str,
        scope_id: str,
        overrides: Mapping[str, Any],
        reason: str,
        *,
        locked: Iterable[str] = (),
    ) -> JsonObject:
        """A new version of a program's (with its ``locked`` values) or patient's overrides."""
        return self._request(
            "POST",
            f"{API_PREFIX}/thresholds/{_path_segment(scope)}/{_path_segment(scope_id)}",
            json={"overrides": overrides, "reason": reason, "locked": list(locked)},
        )

    def notes(self, patient_id: str) -> list[JsonObject]:
        return self._get(f"{API_PREFIX}/patients/{_path_segment(patient_id)}/notes")

    def add_note(self, patient_id: str, body: str) -> JsonObject:
        return self._request(
            "POST",
            f"{API_PREFIX}/patients/{_path_segment(patient_id)}/notes",
            json={"body": body},
        )

    # --- billing ---------------------------------------------------------------------------------

    def billing(self, month: str) -> JsonObject:
        """The month's (``YYYY-MM``) billing evidence: ``{"month", "time_zone", "rows"}``."""
        return self._get(f"{API_PREFIX}/billing", params={"month": month})

    def billing_csv(self, month: str) -> str:
        response = self._client.get(
            f"{API_PREFIX}/billing", params={"month": month, "format": "csv"}
        )
        if not response.is_success:
            raise _error_for(response, display_url=self.display_url)
        return response.text

    def logout(self) -> None:
        """End this session on the server (its token stops working)."""
        self._request("POST", f"{API_PREFIX}/auth/logout")

    def ready(self) -> JsonObject:
        """``/readyz``: ``{"ready": bool, "checks": {...}}``, also when the API is not ready."""
        return self._request("GET", "/readyz", accept_statuses=(503,))

    # --- plumbing ------------------------------------------------------------------------------

    def _get(self, path: str, *, params: Any = None) -> Any:
        return self._request("GET", path, params=params)

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Any = None,
        json: Any = None,
        accept_statuses: tuple[int, ...] = (),
        with_status: bool = False,
    ) -> Any:
        try:
            response = self._client.request(method, path, params=params, json=json)
        except httpx.TimeoutException as exc:
            raise ApiUnreachableError(
                f"the CareWatch API at {self.display_url} did not answer within "
                f"{self.timeout_s:g} s: is ingest overloaded, or its database down?"
            ) from exc
        except httpx.ConnectError as exc:
            raise ApiUnreachableError(
                f"cannot reach the CareWatch API at {self.display_url}: is ingest running? "
                f"(set {ENV_API_URL} if it runs elsewhere)"
            ) from exc
        except httpx.HTTPError as exc:
            raise ApiUnreachableError(
                f"the connection to the CareWatch API at {self.display_url} failed "
                f"({type(exc).__name__}): check that {ENV_API_URL} points at the ingest service"
            ) from exc
        if not response.is_success and response.status_code not in accept_statuses:
            raise _error_for(response, display_url=self.display_url)
        if response.status_code == httpx.codes.NO_CONTENT:
            return (response.status_code, None) if with_status else None
        try:
            body = response.json()
            return (response.status_code, body) if with_status else body
        except ValueError as exc:
            raise ApiError(
                f"the server at {self.display_url} answered {method} {path} with something that "
                f"is not JSON: check that {ENV_API_URL} points at the ingest service",
                status_code=response.status_code,
            ) from exc


def _path_segment(value: str) -> str:
    return quote(str(value), safe="")


def _bad_url_message(url: str) -> str:
    shown = re.sub(r"//[^/@]*@", "//***@", url)  # never echo credentials in the URL
    return f"{ENV_API_URL} must be an http(s) URL such as {DEFAULT_API_URL}, not {shown!r}"


def _missing_token_message() -> str:
    return (
        f"{ENV_API_TOKEN} is not set: set it to the ingest service's token "
        "(the value ingest runs with)"
    )


def _error_for(response: httpx.Response, *, display_url: str) -> ApiError:
    """The :class:`ApiError` for an unsuccessful answer, with what to do about it."""
    status = response.status_code
    detail = _detail(response)
    if status == httpx.codes.UNAUTHORIZED:
        return ApiAuthError(
            "your session has ended or the token is not valid: log in again",
            status_code=status,
        )
    if status == httpx.codes.FORBIDDEN:
        return ApiAuthError(
            f"the API refused access ({detail or 'forbidden'}): ask an administrator",
            status_code=status,
        )
    if status == httpx.codes.NOT_FOUND:
        return ApiNotFoundError(f"not found: {detail or 'no such resource'}", status_code=status)
    if status == httpx.codes.CONFLICT:
        return ApiConflictError(
            detail or "the change conflicts with the current state", status_code=status
        )
    if status == httpx.codes.UNPROCESSABLE_ENTITY:
        return ApiError(
            f"the API rejected the request ({detail}): this is a workspace bug, please report it",
            status_code=status,
        )
    if status == httpx.codes.SERVICE_UNAVAILABLE:
        return ApiUnreachableError(
            f"the CareWatch API at {display_url} is not ready (HTTP 503): its database may be "
            "down; see the ingest service's /readyz and log",
            status_code=status,
        )
    if status >= httpx.codes.INTERNAL_SERVER_ERROR:
        return ApiError(
            f"the CareWatch API at {display_url} failed (HTTP {status}): see the ingest "
            "service's log",
            status_code=status,
        )
    return ApiError(
        f"unexpected answer from the CareWatch API at {display_url} (HTTP {status})"
        + (f": {detail}" if detail else ""),
        status_code=status,
    )


def _detail(response: httpx.Response) -> str:
    """FastAPI's ``detail`` as one line (validation errors joined), or ``""``."""
    try:
        body = response.json()
    except ValueError:
        return ""
    detail = body.get("detail") if isinstance(body, dict) else None
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        messages = [
            f"{'.'.join(str(part) for part in item.get('loc', ()))}: {item.get('msg', '')}"
            for item in detail
            if isinstance(item, dict)
        ]
        return "; ".join(messages)
    return ""
