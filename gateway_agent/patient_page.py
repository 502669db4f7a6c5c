"""The patient's page: a small web page the gateway serves on http://127.0.0.1:<port>/.

It shows the patient the clinicians' messages (unread first, each with an "I have read this"
button), their own recent readings, and a "Please call me back" form whose request reaches
the care team as a follow-up request. Everything lives in the gateway's outbox
(:class:`~gateway_agent.outbox.Outbox`): a message marked read queues its ``read`` receipt in
the same transaction, a call-back request is queued for the care team the same way, and both
survive restarts.

Standard library only (the gateway installs with bleak and paho-mqtt alone): a
:class:`http.server.ThreadingHTTPServer` on a daemon thread, plain server-rendered HTML that
works without JavaScript, large type for older patients.

Routes (``<patient>`` is the patient id, percent-encoded):

- ``GET /``: a chooser when the gateway serves several patients; with one, a redirect to theirs.
- ``GET /p/<patient>``: that patient's messages, readings and call-back form and requests
  (``?reply=<message id>`` fills the form's "about this message"; ``?done=...`` confirms the
  last action).
- ``POST /p/<patient>/read`` (``message_id``): the patient read a message.
- ``POST /p/<patient>/call-back`` (``note``, optional ``in_reply_to``): please call me back.

A successful POST answers 303 (post/redirect/get); a refused note re-renders the page with
the error and the text the patient typed.

Security, although the page is only reachable from the gateway itself: it listens on
127.0.0.1 only; a request whose ``Host`` is not ``127.0.0.1:<port>`` or ``localhost:<port>``
is refused with 400 (DNS rebinding); changes are POST only and carry a per-process random
CSRF token (403 without it), and a foreign ``Origin`` is refused; unknown patients are 404;
responses carry a strict Content-Security-Policy, ``X-Frame-Options: DENY`` and
``Cache-Control: no-store``. Nothing about patients (message texts, notes, readings, patient
ids) is logged at INFO or above: requests are logged at DEBUG with the patient id and the
query string left out. A storage error gives a friendly 503 page; the server keeps running.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import logging
import re
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    MAX_NOTE_LENGTH,
    ContractError,
    FollowUpKind,
    FollowUpRequest,
    Reading,
)
from carewatch_contract.metrics import metric_for
from gateway_agent.outbox import Outbox, StoredFollowUp, StoredInboxMessage
from gateway_agent.registry import RegistryError, load_entries

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
READINGS_SHOWN = 20
"""How many of the patient's latest readings the page lists."""
READ_MESSAGES_SHOWN = 20
"""How many already-read messages are listed under the unread ones."""
FOLLOW_UPS_SHOWN = 10
"""How many of the patient's latest call-back requests are listed."""
DUPLICATE_WINDOW = timedelta(minutes=1)
"""A second identical call-back request within this time (a double click) is not queued."""
MAX_BODY_BYTES = 16 * 1024
"""The largest form accepted (a 500-character note percent-encoded fits many times over)."""
REQUEST_TIMEOUT_S = 15.0
"""A client that sends nothing for this long is disconnected (it cannot hold a thread)."""

PatientsSource = Callable[[], Iterable[str]] | Iterable[str]
"""The patients this gateway serves: a list, or a callable asked on every request."""

_UNITS = {"mm[Hg]": " mmHg", "Cel": " °C", "kg/m2": " kg/m²", "%": "%", "/min": "/min"}
"""How a canonical UCUM unit is shown (with its leading space, if any)."""
_DECIMALS = {"mm[Hg]": 0, "/min": 0, "m": 2}
"""Decimals shown per unit; 1 for the others (trailing zeros dropped)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
"""Control characters a note may not keep (newlines and tabs are kept)."""

_CSS = """
html { font-size: 137.5%; }
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif;
  line-height: 1.5; color: #111; background: #fff; margin: 0; }
main { max-width: 46rem; margin: 0 auto; padding: 1rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin: 0.5rem 0; }
h2 { font-size: 1.3rem; margin: 2rem 0 0.75rem; border-bottom: 3px solid #1d4f91; }
h3 { font-size: 1.1rem; margin: 1.5rem 0 0.5rem; }
a { color: #1d4f91; }
a:focus, button:focus, textarea:focus { outline: 4px solid #f9a825; outline-offset: 2px; }
.who { color: #333; margin: 0; }
.notice { background: #e6f4ea; border-left: 8px solid #1e7d32; padding: 0.75rem 1rem; }
.error { background: #fdecea; border-left: 8px solid #b71c1c; padding: 0.75rem 1rem; }
.message { border: 2px solid #bbb; border-radius: 0.5rem; padding: 0.75rem 1rem;
  margin: 0 0 1rem; }
.message.unread { border: 4px solid #1d4f91; background: #fff8d6; }
.badge { display: inline-block; background: #1d4f91; color: #fff; font-weight: bold;
  padding: 0 0.6rem; border-radius: 0.4rem; margin: 0 0 0.25rem; }
.from { margin: 0 0 0.5rem; color: #333; }
.text { white-space: pre-wrap; overflow-wrap: anywhere; margin: 0 0 0.75rem;
  font-size: 1.1rem; }
.state { font-weight: bold; }
form { margin: 0.5rem 0; }
button { font: inherit; font-weight: bold; color: #fff; background: #1d4f91;
  border: 0; border-radius: 0.5rem; padding: 0.6rem 1.4rem; min-height: 3rem;
  cursor: pointer; }
textarea { font: inherit; width: 100%; box-sizing: border-box; border: 2px solid #555;
  border-radius: 0.4rem; padding: 0.5rem; }
label { display: block; margin: 0 0 0.25rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 0.4rem 0.5rem; border-bottom: 1px solid #ccc;
  vertical-align: top; }
td.value { white-space: nowrap; font-weight: bold; }
ul.people { list-style: none; padding: 0; }
ul.people li { margin: 0 0 0.75rem; font-size: 1.2rem; }
ul.requests { padding-left: 1.2rem; }
ul.requests li { margin: 0 0 0.75rem; }
"""

_STYLE_HASH = base64.b64encode(hashlib.sha256(_CSS.encode()).digest()).decode()

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store, max-age=0",
    "Pragma": "no-cache",
}
"""Sent with every answer: no script, no frames, nothing of a patient kept in a cache."""


class PatientPage:
    """The running page: :attr:`url`, :attr:`port`, and :meth:`close` to stop it."""

    def __init__(self, server: _PageServer, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self._closed = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def close(self) -> None:
        """Stop serving and release the port (the outbox stays open: it is the caller's)."""
        if self._closed:
            return
        self._closed = True
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def start_patient_page(
    outbox: Outbox,
    *,
    patients: PatientsSource,
    gateway_id: str,
    port: int,
    tz: tzinfo | None = None,
) -> PatientPage:
    """Serve the patient's page on 127.0.0.1:``port`` (0 = any free port) from a daemon thread.

    ``patients``: the patient ids this gateway serves (a list, or a callable asked on every
    request, e.g. :func:`registry_patients`). ``tz``: the time zone times are shown in (None =
    the system's). Raises OSError when the port cannot be bound (e.g. it is taken).
    """
    server = _PageServer((HOST, port), _Handler)
    server.site = _Site(
        outbox=outbox,
        patients=_as_callable(patients),
        gateway_id=gateway_id,
        port=int(server.server_address[1]),
        tz=tz,
    )
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.2},
        name="patient-page",
        daemon=True,
    )
    thread.start()
    return PatientPage(server, thread)


def registry_patients(path: Path) -> Callable[[], list[str]]:
    """The patients of the devices enrolled in the registry at ``path``, read again on every
    call (an ``enroll`` shows without a restart). While the file is invalid, the last valid
    list is kept (the gateway's read loop reports the problem)."""
    last: list[str] = []

    def patients() -> list[str]:
        nonlocal last
        try:
            entries = load_entries(path)
        except RegistryError:
            return last
        last = sorted({entry.patient_id for entry in entries})
        return last

    return patients


def _as_callable(source: PatientsSource) -> Callable[[], Iterable[str]]:
    if callable(source):
        return source
    fixed = tuple(source)
    return lambda: fixed


# --------------------------------------------------------------------------------------------
# The server and its handler


class _PageServer(ThreadingHTTPServer):
    daemon_threads = True
    site: _Site


@dataclass(frozen=True, slots=True)
class _Response:
    status: int
    body: bytes = b""
    location: str | None = None


class _Handler(BaseHTTPRequestHandler):
    server: _PageServer
    server_version = "CareWatch-gateway"
    timeout = REQUEST_TIMEOUT_S

    def version_string(self) -> str:
        return self.server_version  # no Python version

    def do_GET(self) -> None:
        self._serve(post=False)

    def do_POST(self) -> None:
        self._serve(post=True)

    def _serve(self, *, post: bool) -> None:
        site = self.server.site
        if not site.host_allowed(self.headers.get("Host")):
            response = _error_page(HTTPStatus.BAD_REQUEST, "This address is not served here.")
        elif post:
            response = self._post(site)
        else:
            response = site.get(self.path)
        self._send(response)

    def _post(self, site: _Site) -> _Response:
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
        if content_type != "application/x-www-form-urlencoded":
            return _error_page(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Please use the page's forms.")
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            return _error_page(HTTPStatus.LENGTH_REQUIRED, "Please use the page's forms.")
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True  # the body is not read
            return _error_page(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"That was too much text: a note can be up to {MAX_NOTE_LENGTH} characters.",
            )
        body = self.rfile.read(length)
        try:
            form = parse_qs(
                body.decode("utf-8"),
                keep_blank_values=True,
                encoding="utf-8",
                errors="strict",
                max_num_fields=10,
            )
        except (UnicodeDecodeError, ValueError):
            return _error_page(HTTPStatus.BAD_REQUEST, "Please use the page's forms.")
        return site.post(self.path, form, origin=self.headers.get("Origin"))

    def _send(self, response: _Response) -> None:
        self.send_response(response.status)
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        if response.location is not None:
            self.send_header("Location", response.location)
        if response.body:
            self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(response.body)))
        self.end_headers()
        self.wfile.write(response.body)

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        # Not the request line: it holds the patient id and the query string.
        self.log_message("%s %s -> %s", self.command, _redacted(self.path), code)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("patient page: " + format, *args)


def _redacted(path: str) -> str:
    """The request path without its query string and with the patient id left out."""
    route = urlsplit(path).path
    return re.sub(r"^/p/[^/]*", "/p/*", route)


# --------------------------------------------------------------------------------------------
# What the page does


@dataclass
class _Site:
    outbox: Outbox
    patients: Callable[[], Iterable[str]]
    gateway_id: str
    port: int
    tz: tzinfo | None
    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(32))

    def host_allowed(self, host: str | None) -> bool:
        """Only the names a browser on the gateway itself uses (no DNS rebinding)."""
        if host is None:
            return False
        allowed = {f"{HOST}:{self.port}", f"localhost:{self.port}"}
        if self.port == 80:
            allowed |= {HOST, "localhost"}
        return host.strip().lower() in allowed

    def _origin_allowed(self, origin: str | None) -> bool:
        """A form posted from another site carries its Origin; ours (or none) is accepted."""
        if origin is None:
            return True
        return origin.strip().lower() in {
            f"http://{HOST}:{self.port}",
            f"http://localhost:{self.port}",
        } | ({f"http://{HOST}", "http://localhost"} if self.port == 80 else set())

    def get(self, target: str) -> _Response:
        return self._guarded(lambda: self._get(target))

    def post(self, target: str, form: dict[str, list[str]], *, origin: str | None) -> _Response:
        return self._guarded(lambda: self._post(target, form, origin))

    def _guarded(self, action: Callable[[], _Response]) -> _Response:
        try:
            return action()
        except (sqlite3.Error, ContractError) as exc:
            # The exception's class and SQLite's message only: never a patient's data.
            detail = type(exc).__name__
            if isinstance(exc, sqlite3.Error):
                detail += f": {exc}"
            log.warning("patient page: the outbox could not be read or written (%s)", detail)
            return _error_page(
                HTTPStatus.SERVICE_UNAVAILABLE,
                "Sorry, this page cannot be shown just now. Your readings are still being "
                "taken and kept. Please try again in a few minutes.",
            )
        except Exception as exc:
            log.error("patient page: unexpected %s", type(exc).__name__)
            log.debug("patient page: unexpected error", exc_info=True)
            return _error_page(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "Sorry, something went wrong. Please try again in a few minutes.",
            )

    def _served(self) -> list[str]:
        return sorted(set(self.patients()))

    def _route(self, target: str) -> tuple[str | None, str, dict[str, list[str]]] | None:
        """(patient id or None for "/", action, query) of a path this page serves."""
        parts = urlsplit(target)
        query = parse_qs(parts.query, max_num_fields=10)
        if parts.path == "/":
            return None, "", query
        segments = parts.path.split("/")
        if len(segments) < 3 or segments[:2] != ["", "p"] or not segments[2]:
            return None
        try:
            patient_id = unquote(segments[2], encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            return None
        rest = [s for s in segments[3:] if s]
        if len(rest) > 1:
            return None
        return patient_id, (rest[0] if rest else ""), query

    # -- GET ---------------------------------------------------------------------------------

    def _get(self, target: str) -> _Response:
        route = self._route(target)
        if route is None:
            return _not_found()
        patient_id, action, query = route
        served = self._served()
        if patient_id is None:
            if len(served) == 1:
                return _Response(HTTPStatus.SEE_OTHER, location=_patient_url(served[0]))
            return _Response(HTTPStatus.OK, self._chooser(served))
        if patient_id not in served or action:
            return _not_found()
        done = (query.get("done") or [""])[0]
        reply = (query.get("reply") or [""])[0] or None
        return _Response(
            HTTPStatus.OK,
            self._patient_page(patient_id, served, done=done, reply_to=reply, note="", error=None),
        )

    # -- POST --------------------------------------------------------------------------------

    def _post(self, target: str, form: dict[str, list[str]], origin: str | None) -> _Response:
        token = _one(form, "csrf")
        if not self._origin_allowed(origin) or not hmac.compare_digest(
            token.encode(), self.csrf_token.encode()
        ):
            log.info("patient page: a form without a valid token was refused")
            return _error_page(
                HTTPStatus.FORBIDDEN,
                "This form has expired. Please go back, reload the page and try again.",
            )
        route = self._route(target)
        if route is None or route[0] is None:
            return _not_found()
        patient_id, action, _query = route
        served = self._served()
        if patient_id not in served:
            return _not_found()
        if action == "read":
            return self._mark_read(patient_id, _one(form, "message_id"))
        if action == "call-back":
            return self._call_back(
                patient_id, served, _one(form, "note"), _one(form, "in_reply_to") or None
            )
        return _not_found()

    def _mark_read(self, patient_id: str, message_id: str) -> _Response:
        if message_id not in {m.message.message_id for m in self._messages(patient_id)}:
            return _not_found()
        if self.outbox.mark_read(message_id):
            log.info("patient page: a message was marked read")
        return _Response(
            HTTPStatus.SEE_OTHER, location=_patient_url(patient_id, done="read") + "#messages"
        )

    def _call_back(
        self, patient_id: str, served: list[str], raw_note: str, in_reply_to: str | None
    ) -> _Response:
        note = _CONTROL.sub("", raw_note.replace("\r\n", "\n").replace("\r", "\n")).strip()
        error = None
        if len(note) > MAX_NOTE_LENGTH:
            error = (
                f"Your note is {len(note)} characters long; it can be up to {MAX_NOTE_LENGTH}. "
                "Please shorten it and press the button again."
            )
        elif in_reply_to is not None and in_reply_to not in {
            m.message.message_id for m in self._messages(patient_id)
        }:
            error = "That message is not here any more. Please ask for a call back below."
            in_reply_to = None
        if error is not None:
            page = self._patient_page(
                patient_id, served, done="", reply_to=in_reply_to, note=note, error=error
            )
            return _Response(HTTPStatus.BAD_REQUEST, page)
        if not self._already_asked(patient_id, note or None, in_reply_to):
            self.outbox.request_follow_up(
                FollowUpRequest(
                    request_id=new_uuid7(),
                    gateway_id=self.gateway_id,
                    patient_id=patient_id,
                    kind=FollowUpKind.CALL_BACK,
                    at=datetime.now(UTC),
                    note=note or None,
                    in_reply_to=in_reply_to,
                )
            )
            log.info("patient page: a call-back request was queued for the care team")
        return _Response(
            HTTPStatus.SEE_OTHER,
            location=_patient_url(patient_id, done="call-back") + "#call-back",
        )

    def _already_asked(self, patient_id: str, note: str | None, in_reply_to: str | None) -> bool:
        """The same request, made moments ago and still on its way (a double click)."""
        since = datetime.now(UTC) - DUPLICATE_WINDOW
        return any(
            f.confirmed_at is None
            and f.refused is None
            and f.request.at >= since
            and f.request.note == note
            and f.request.in_reply_to == in_reply_to
            for f in self.outbox.follow_ups(patient_id)
        )

    # -- rendering ---------------------------------------------------------------------------

    def _messages(self, patient_id: str) -> list[StoredInboxMessage]:
        """The patient's messages and those for everyone here, newest first."""
        return [
            m for m in self.outbox.inbox_messages() if m.message.patient_id in (None, patient_id)
        ]

    def _chooser(self, served: Sequence[str]) -> bytes:
        if not served:
            return _page(
                "CareWatch",
                "<h1>CareWatch</h1><p>No one has been set up on this gateway yet. "
                "Your care team will do this for you.</p>",
            )
        unread: dict[str, int] = dict.fromkeys(served, 0)
        for stored in self.outbox.inbox_messages():
            if stored.read_at is None:
                addressed = stored.message.patient_id
                for patient_id in served if addressed is None else [addressed]:
                    if patient_id in unread:
                        unread[patient_id] += 1
        items = "".join(
            f'<li><a href="{_e(_patient_url(p))}">{_e(p)}</a>'
            + (f" — {_count(unread[p], 'new message')}" if unread[p] else "")
            + "</li>"
            for p in served
        )
        return _page(
            "CareWatch",
            "<h1>Who are you?</h1><p>Please choose your name to see your messages and "
            f'readings.</p><ul class="people">{items}</ul>',
        )

    def _patient_page(
        self,
        patient_id: str,
        served: Sequence[str],
        *,
        done: str,
        reply_to: str | None,
        note: str,
        error: str | None,
    ) -> bytes:
        messages = self._messages(patient_id)
        readings = self.outbox.recent_readings(patient_id, limit=READINGS_SHOWN)
        follow_ups = self.outbox.follow_ups(patient_id)[:FOLLOW_UPS_SHOWN]
        now = datetime.now(UTC)
        parts = [
            "<header><h1>Your care team</h1>",
            f'<p class="who">For {_e(patient_id)}',
            ' — <a href="/">not you?</a>' if len(served) > 1 else "",
            "</p></header>",
        ]
        if done == "read":
            parts.append(
                '<p class="notice" role="status">Thank you. Your care team will see '
                "that you have read the message.</p>"
            )
        elif done == "call-back":
            parts.append(
                '<p class="notice" role="status">Thank you. Your request for a call '
                "back has been sent to your care team.</p>"
            )
        parts.append(self._messages_html(patient_id, messages, now))
        parts.append(self._readings_html(readings, now))
        replying = next((m for m in messages if m.message.message_id == reply_to), None)
        parts.append(self._call_back_html(patient_id, follow_ups, replying, note, error, now))
        return _page("Your messages and readings", "".join(parts))

    def _messages_html(
        self, patient_id: str, messages: Sequence[StoredInboxMessage], now: datetime
    ) -> str:
        unread = [m for m in messages if m.read_at is None]
        read = [m for m in messages if m.read_at is not None][:READ_MESSAGES_SHOWN]
        heading = "Messages from your care team"
        if unread:
            heading += f" ({_count(len(unread), 'new message')})"
        out = [f'<section id="messages"><h2>{_e(heading)}</h2>']
        if not unread and not read:
            out.append("<p>There are no messages for you.</p>")
        for stored in [*unread, *read]:
            message = stored.message
            new = stored.read_at is None
            out.append(f'<article class="message{" unread" if new else ""}">')
            if new:
                out.append('<p class="badge">New</p>')
            out.append(
                f'<p class="from">From <strong>{_e(message.sender)}</strong>, '
                f"{self._time(message.sent_at, now)}</p>"
                f'<p class="text">{_e(message.text)}</p>'
            )
            if new:
                out.append(
                    f'<form method="post" action="{_e(_patient_url(patient_id, "read"))}">'
                    f"{self._token_field()}"
                    f'<input type="hidden" name="message_id" value="{_e(message.message_id)}">'
                    '<button type="submit">I have read this</button></form>'
                )
            elif stored.read_at is not None:
                out.append(f"<p>You read this {self._time(stored.read_at, now, lower=True)}.</p>")
            reply = _patient_url(patient_id, reply=message.message_id) + "#call-back"
            out.append(
                f'<p><a href="{_e(reply)}">Ask for a call back about this message</a></p></article>'
            )
        out.append("</section>")
        return "".join(out)

    def _readings_html(self, readings: Sequence[Reading], now: datetime) -> str:
        out = ['<section id="readings"><h2>Your recent readings</h2>']
        if not readings:
            out.append("<p>No readings yet. They appear here after you use your devices.</p>")
        else:
            rows = "".join(
                f"<tr><td>{self._time(r.measured_at, now)}</td><td>{_e(_what(r))}</td>"
                f'<td class="value">{_e(_value(r.value, r.unit))}</td></tr>'
                for r in readings
            )
            out.append(
                "<table><thead><tr><th>When</th><th>What</th><th>Value</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"
            )
        out.append("</section>")
        return "".join(out)

    def _call_back_html(
        self,
        patient_id: str,
        follow_ups: Sequence[StoredFollowUp],
        replying: StoredInboxMessage | None,
        note: str,
        error: str | None,
        now: datetime,
    ) -> str:
        out = ['<section id="call-back"><h2>Would you like a call?</h2>']
        if error is not None:
            out.append(f'<p class="error" role="alert">{_e(error)}</p>')
        out.append(
            f'<form method="post" action="{_e(_patient_url(patient_id, "call-back"))}">'
            f"{self._token_field()}"
        )
        if replying is not None:
            out.append(
                f'<input type="hidden" name="in_reply_to" '
                f'value="{_e(replying.message.message_id)}">'
                f"<p>About the message from <strong>{_e(replying.message.sender)}</strong>, "
                f"{self._time(replying.message.sent_at, now, lower=True)} "
                f'(<a href="{_e(_patient_url(patient_id))}#call-back">not about this '
                "message</a>)</p>"
            )
        out.append(
            f'<label for="note">Anything you would like to tell them? (optional, up to '
            f"{MAX_NOTE_LENGTH} characters)</label>"
            f'<textarea id="note" name="note" rows="4" maxlength="{MAX_NOTE_LENGTH}">'
            f"{_e(note)}</textarea>"
            '<p><button type="submit">Please call me back</button></p></form>'
        )
        if follow_ups:
            out.append('<h3>Your call-back requests</h3><ul class="requests">')
            for stored in follow_ups:
                request = stored.request
                if stored.refused is not None:
                    state = (
                        "This request could not reach your care team. Please phone them instead."
                    )
                elif stored.confirmed_at is None:
                    state = "Sent — waiting to reach your care team"
                else:
                    state = "Your care team has it"
                out.append(f"<li>Asked {self._time(request.at, now, lower=True)}")
                if request.note:
                    out.append(f': <q class="text">{_e(request.note)}</q>')
                out.append(f'<br><span class="state">{state}</span></li>')
            out.append("</ul>")
        out.append("</section>")
        return "".join(out)

    def _token_field(self) -> str:
        return f'<input type="hidden" name="csrf" value="{_e(self.csrf_token)}">'

    def _time(self, when: datetime, now: datetime, *, lower: bool = False) -> str:
        """``when`` in the gateway's local time, for people: "Today at 08:30", "Yesterday at
        18:05", "Sunday 29 November 2026 at 08:30"."""
        local = when.astimezone(self.tz) if self.tz is not None else when.astimezone()
        today = now.astimezone(self.tz) if self.tz is not None else now.astimezone()
        clock = f"{local:%H:%M}"
        if local.date() == today.date():
            text = f"today at {clock}"
        elif local.date() == today.date() - timedelta(days=1):
            text = f"yesterday at {clock}"
        else:
            text = f"on {local:%A} {local.day} {local:%B} {local.year} at {clock}"
            if not lower:
                text = text.removeprefix("on ")
        if not lower:
            text = text[0].upper() + text[1:]
        return f'<time datetime="{_e(local.isoformat())}">{_e(text)}</time>'


# --------------------------------------------------------------------------------------------
# Small helpers


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _one(form: dict[str, list[str]], name: str) -> str:
    values = form.get(name) or [""]
    return values[0]


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _patient_url(patient_id: str, action: str = "", **query: str) -> str:
    url = "/p/" + quote(patient_id, safe="") + (f"/{action}" if action else "")
    if query:
        url += "?" + "&".join(f"{k}={quote(v, safe='')}" for k, v in query.items())
    return url


def _what(reading: Reading) -> str:
    metric = metric_for(reading.loinc)
    return metric.display if metric is not None else f"LOINC {reading.loinc}"


def _value(value: float, unit: str) -> str:
    """e.g. "128 mmHg", "36.8 °C", "97%", "72/min", "81.4 kg"."""
    decimals = _DECIMALS.get(unit, 1)
    number = f"{value:.{decimals}f}"
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number + _UNITS.get(unit, f" {unit}")


def _page(title: str, body: str) -> bytes:
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body><main>{body}</main></body></html>"
    ).encode()


def _error_page(status: HTTPStatus, text: str) -> _Response:
    body = _page(
        status.phrase,
        f'<h1>{_e(status.phrase)}</h1><p class="error">{_e(text)}</p>'
        '<p><a href="/">Back to the start</a></p>',
    )
    return _Response(int(status), body)


def _not_found() -> _Response:
    return _error_page(HTTPStatus.NOT_FOUND, "There is no such page here.")
