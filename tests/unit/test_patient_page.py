"""The patient's page: a real outbox on disk and the real server on a free port, over urllib."""

from __future__ import annotations

import logging
import re
import socket
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from email.message import Message
from pathlib import Path
from urllib.parse import urlencode

import pytest

from carewatch_contract.messages import (
    DeviceType,
    InboxMessage,
    ReceiptState,
    parse_follow_up_request,
    parse_receipt,
)
from carewatch_contract.topics import RECEIPTS, REQUESTS
from gateway_agent.__main__ import patient_page
from gateway_agent.outbox import Outbox
from gateway_agent.patient_page import PatientPage, registry_patients, start_patient_page
from gateway_agent.registry import enroll
from gateway_agent.settings import GatewaySettings
from tests.unit.test_contract import a_reading

P1 = "pt-0001"
P2 = "pt-0002"
SENT = datetime(2025, 3, 4, 15, 0, tzinfo=UTC)
GATEWAY_TZ = timezone(timedelta(hours=-5))
"""The gateway's local zone in these tests: 15:00 UTC is shown as 10:00."""


# --------------------------------------------------------------------------------------------
# Plumbing: urllib without redirects or proxies


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None  # the test looks at the 303 itself


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect)


@dataclass(frozen=True)
class Answer:
    status: int
    headers: Message
    text: str


def fetch(
    url: str, *, form: dict[str, str] | None = None, headers: dict[str, str] | None = None
) -> Answer:
    data = None if form is None else urlencode(form).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=10) as response:
            return Answer(response.status, response.headers, response.read().decode())
    except urllib.error.HTTPError as error:
        with error:
            return Answer(error.code, error.headers, error.read().decode())


def token_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "the page has no CSRF token"
    return match.group(1)


def patient_url(page: PatientPage, patient_id: str = P1) -> str:
    return f"{page.url}p/{patient_id}"


def a_message(
    text: str, *, patient_id: str | None = P1, sender: str = "Dr. Amara Okafor", **changes: object
) -> InboxMessage:
    fields: dict[str, object] = {
        "message_id": f"msg-{abs(hash(text)) % 10**8}",
        "sent_at": SENT,
        "sender": sender,
        "text": text,
        "patient_id": patient_id,
    }
    fields.update(changes)
    return InboxMessage(**fields)  # type: ignore[arg-type]


def drain_delivered(outbox: Outbox) -> None:
    """Acknowledge the ``delivered`` receipts queued with stored messages (as ingest would)."""
    outbox.acknowledge([item.item_id for item in outbox.take_outgoing_due(resend_after_s=0)])


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    box = Outbox(tmp_path / "outbox.sqlite")
    yield box
    box.close()


@pytest.fixture
def page(outbox: Outbox) -> Iterator[PatientPage]:
    running = start_patient_page(
        outbox, patients=[P1, P2], gateway_id="gw-1", port=0, tz=GATEWAY_TZ
    )
    yield running
    running.close()


# --------------------------------------------------------------------------------------------
# Messages


def test_the_page_listens_on_localhost_on_the_port_it_picked(page: PatientPage) -> None:
    assert page.port != 0
    assert page.url == f"http://127.0.0.1:{page.port}/"
    assert fetch(patient_url(page)).status == 200


def test_messages_are_shown_unread_first_highlighted_with_sender_and_local_time(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(
        a_message("Please weigh yourself daily", message_id="m-unread", sender="Nurse Lee")
    )
    outbox.store_inbox_message(
        a_message("Clinic closed Monday", patient_id=None, message_id="m-all")
    )
    outbox.store_inbox_message(a_message("For the other patient", patient_id=P2, message_id="m-p2"))
    outbox.store_inbox_message(a_message("Newest but already read", message_id="m-read"))
    outbox.mark_read("m-read")  # the newest: it would lead without the unread-first order

    html = fetch(patient_url(page)).text

    assert "For the other patient" not in html
    unread_at = html.index("Please weigh yourself daily")
    everyone_at = html.index("Clinic closed Monday")
    read_at = html.index("Newest but already read")
    assert max(unread_at, everyone_at) < read_at
    articles = re.findall(r'<article class="([^"]+)">(.*?)</article>', html, re.S)
    highlighted = {text for cls, text in articles if "unread" in cls}
    assert any("Please weigh yourself daily" in text for text in highlighted)
    assert not any("Newest but already read" in text for text in highlighted)
    assert len(re.findall(r">I have read this<", html)) == 2  # the two unread ones only
    assert "Nurse Lee" in html
    assert "Tuesday 4 March 2025 at 10:00" in html  # 15:00 UTC in the gateway's zone (UTC-5)
    assert "2 new messages" in html
    # A message for everyone is shown to the other patient too; theirs only to them.
    other = fetch(patient_url(page, P2)).text
    assert "Clinic closed Monday" in other and "For the other patient" in other
    assert "Please weigh yourself daily" not in other


def test_the_read_button_marks_read_queues_a_read_receipt_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    outbox = Outbox(path)
    outbox.store_inbox_message(a_message("Take the new tablets with food", message_id="m-1"))
    drain_delivered(outbox)
    page = start_patient_page(outbox, patients=[P1], gateway_id="gw-1", port=0)
    try:
        token = token_of(fetch(patient_url(page)).text)
        answer = fetch(f"{patient_url(page)}/read", form={"csrf": token, "message_id": "m-1"})
        assert answer.status == 303
        assert answer.headers["Location"] == f"/p/{P1}?done=read#messages"

        (item,) = outbox.take_outgoing_due(resend_after_s=0)
        receipt = parse_receipt(item.body.encode())
        assert (item.topic, receipt.message_id, receipt.state) == (
            RECEIPTS,
            "m-1",
            ReceiptState.READ,
        )
        (stored,) = outbox.inbox_messages()
        assert stored.read_at is not None
        after = fetch(patient_url(page) + "?done=read").text
        assert "I have read this" not in after
        assert "You read this" in after and "will see that you have read" in after
    finally:
        page.close()
        outbox.close()

    reopened = Outbox(path)  # the gateway restarts
    try:
        (kept,) = reopened.inbox_messages()
        assert kept.message.text == "Take the new tablets with food"
        assert kept.read_at == stored.read_at
        page = start_patient_page(reopened, patients=[P1], gateway_id="gw-1", port=0)
        try:
            html = fetch(patient_url(page)).text
            assert "Take the new tablets with food" in html
            assert "I have read this" not in html
        finally:
            page.close()
    finally:
        reopened.close()


def test_a_patient_cannot_mark_another_patients_message_read(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(a_message("Private to patient two", patient_id=P2, message_id="m-2"))
    drain_delivered(outbox)
    token = token_of(fetch(patient_url(page)).text)
    answer = fetch(f"{patient_url(page, P1)}/read", form={"csrf": token, "message_id": "m-2"})
    assert answer.status == 404
    assert outbox.inbox_messages()[0].read_at is None
    assert outbox.take_outgoing_due(resend_after_s=0) == []


# --------------------------------------------------------------------------------------------
# Readings


def test_recent_readings_are_the_patients_own_with_labels_and_units(
    outbox: Outbox, page: PatientPage
) -> None:
    taken = datetime(2025, 3, 4, 13, 5, tzinfo=UTC)
    stored = outbox.add(
        [
            a_reading(patient_id=P1, value=128.0, measured_at=taken),
            a_reading(
                patient_id=P1,
                loinc="8310-5",
                unit="Cel",
                value=36.6,
                device_type=DeviceType.THERMOMETER,
                measured_at=taken,
            ),
            a_reading(
                patient_id=P2,
                loinc="29463-7",
                unit="kg",
                value=81.4,
                device_type=DeviceType.WEIGHT_SCALE,
            ),
        ]
    )
    outbox.acknowledge([r.reading_id for r in stored])  # delivered readings are still shown

    html = fetch(patient_url(page)).text
    section = html[html.index('id="readings"') :]
    assert "Systolic blood pressure" in section and "128 mmHg" in section
    assert "Body temperature" in section and "36.6 °C" in section
    assert "Tuesday 4 March 2025 at 08:05" in section
    assert "81.4" not in html and "Body weight" not in html
    other = fetch(patient_url(page, P2)).text
    assert "81.4 kg" in other and "128 mmHg" not in other


def test_only_the_last_twenty_readings_are_listed_newest_first(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.add([a_reading(patient_id=P1, value=100.0 + i) for i in range(25)])
    html = fetch(patient_url(page)).text
    values = re.findall(r'<td class="value">(\d+) mmHg</td>', html)
    assert values == [str(124 - i) for i in range(20)]


# --------------------------------------------------------------------------------------------
# Call back


def test_a_call_back_request_is_queued_and_shown_until_the_care_team_has_it(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(a_message("How is the swelling?", message_id="m-ask"))
    drain_delivered(outbox)
    replying = fetch(f"{patient_url(page)}?reply=m-ask").text
    assert '<input type="hidden" name="in_reply_to" value="m-ask">' in replying
    note = "Ankles <swollen> & short of breath"

    answer = fetch(
        f"{patient_url(page)}/call-back",
        form={"csrf": token_of(replying), "note": note, "in_reply_to": "m-ask"},
    )

    assert answer.status == 303
    assert answer.headers["Location"] == f"/p/{P1}?done=call-back#call-back"
    (stored,) = outbox.follow_ups(P1)
    request = stored.request
    assert (request.patient_id, request.gateway_id, request.note, request.in_reply_to) == (
        P1,
        "gw-1",
        note,
        "m-ask",
    )
    (item,) = outbox.take_outgoing_due(resend_after_s=0)
    assert item.topic == REQUESTS
    assert parse_follow_up_request(item.body.encode()) == request
    html = fetch(f"{patient_url(page)}?done=call-back").text
    assert "has been sent to your care team" in html
    assert "Ankles &lt;swollen&gt; &amp; short of breath" in html
    assert "Sent — waiting to reach your care team" in html
    assert "Your care team has it" not in html

    outbox.acknowledge([request.request_id])

    html = fetch(patient_url(page)).text
    assert "Your care team has it" in html
    assert "waiting to reach your care team" not in html


def test_a_request_ingest_refuses_tells_the_patient_to_phone(
    outbox: Outbox, page: PatientPage
) -> None:
    token = token_of(fetch(patient_url(page)).text)
    fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": "Please call"})
    (stored,) = outbox.follow_ups(P1)

    outbox.acknowledge([], [(stored.request.request_id, "patient_not_bound")])

    (refused,) = outbox.follow_ups(P1)
    assert (refused.refused, refused.confirmed_at) == ("patient_not_bound", None)
    assert outbox.take_outgoing_due(resend_after_s=0) == []  # not resent for ever
    html = fetch(patient_url(page)).text
    assert "could not reach your care team. Please phone them instead." in html
    assert "waiting to reach your care team" not in html
    # Asking again is not taken for a double click of the refused request.
    fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": "Please call"})
    assert len(outbox.follow_ups(P1)) == 2


def test_a_double_click_sends_one_request_but_a_different_one_is_sent(
    outbox: Outbox, page: PatientPage
) -> None:
    token = token_of(fetch(patient_url(page)).text)
    for note in ("Please call", "Please call", "Something else"):
        answer = fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": note})
        assert answer.status == 303
    assert sorted(f.request.note or "" for f in outbox.follow_ups(P1)) == [
        "Please call",
        "Something else",
    ]


def test_a_call_back_without_a_note_is_fine(outbox: Outbox, page: PatientPage) -> None:
    token = token_of(fetch(patient_url(page)).text)
    answer = fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": "  "})
    assert answer.status == 303
    (stored,) = outbox.follow_ups(P1)
    assert (stored.request.note, stored.request.in_reply_to) == (None, None)


def test_an_over_long_note_is_refused_with_a_clear_error_and_nothing_queued(
    outbox: Outbox, page: PatientPage
) -> None:
    token = token_of(fetch(patient_url(page)).text)
    too_long = "a" * 501

    answer = fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": too_long})

    assert answer.status == 400
    assert "501 characters long; it can be up to 500" in answer.text
    assert f">{too_long}</textarea>" in answer.text  # what the patient typed is kept
    assert outbox.follow_ups() == []
    assert outbox.take_outgoing_due(resend_after_s=0) == []
    # Exactly the limit goes through; a browser's CRLF line breaks count as one character.
    fits = "b" * 249 + "\r\n" + "c" * 250
    answer = fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": fits})
    assert answer.status == 303
    (stored,) = outbox.follow_ups(P1)
    assert stored.request.note == fits.replace("\r\n", "\n")


def test_answering_a_message_that_is_not_the_patients_is_refused(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(a_message("For two", patient_id=P2, message_id="m-two"))
    drain_delivered(outbox)
    token = token_of(fetch(patient_url(page)).text)
    answer = fetch(
        f"{patient_url(page)}/call-back",
        form={"csrf": token, "note": "hello", "in_reply_to": "m-two"},
    )
    assert answer.status == 400
    assert "That message is not here" in answer.text
    assert outbox.follow_ups() == []


# --------------------------------------------------------------------------------------------
# Security


@pytest.mark.parametrize("action", ["read", "call-back"])
@pytest.mark.parametrize(
    ("token", "origin"),
    [(None, None), ("wrong-token", None), ("VALID", "http://evil.example")],
    ids=["missing", "wrong", "foreign-origin"],
)
def test_a_form_without_the_right_token_is_forbidden_and_changes_nothing(
    outbox: Outbox, page: PatientPage, action: str, token: str | None, origin: str | None
) -> None:
    outbox.store_inbox_message(a_message("Token test", message_id="m-1"))
    drain_delivered(outbox)
    valid = token_of(fetch(patient_url(page)).text)
    form = {"message_id": "m-1", "note": "call me"}
    if token is not None:
        form["csrf"] = valid if token == "VALID" else token
    headers = {} if origin is None else {"Origin": origin}

    answer = fetch(f"{patient_url(page)}/{action}", form=form, headers=headers)

    assert answer.status == 403
    assert "This form has expired" in answer.text
    assert outbox.inbox_messages()[0].read_at is None
    assert outbox.follow_ups() == []
    assert outbox.take_outgoing_due(resend_after_s=0) == []
    # The same form with the token (and our own origin, as a browser sends it) goes through.
    form["csrf"] = valid
    own = {"Origin": f"http://127.0.0.1:{page.port}"}
    assert fetch(f"{patient_url(page)}/{action}", form=form, headers=own).status == 303


@pytest.mark.parametrize(
    "host",
    ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1.evil.example:{port}"],
)
def test_a_foreign_host_header_is_refused(outbox: Outbox, page: PatientPage, host: str) -> None:
    outbox.store_inbox_message(a_message("Rebinding test", message_id="m-1"))
    drain_delivered(outbox)
    token = token_of(fetch(patient_url(page)).text)
    headers = {"Host": host.format(port=page.port)}

    assert fetch(patient_url(page), headers=headers).status == 400
    assert fetch(page.url, headers=headers).status == 400
    posted = fetch(
        f"{patient_url(page)}/read", form={"csrf": token, "message_id": "m-1"}, headers=headers
    )
    assert posted.status == 400
    assert "Rebinding test" not in posted.text
    assert outbox.inbox_messages()[0].read_at is None
    # The names a browser on the gateway uses are accepted.
    assert fetch(patient_url(page), headers={"Host": f"localhost:{page.port}"}).status == 200


def test_unknown_patients_and_paths_are_not_found(outbox: Outbox, page: PatientPage) -> None:
    assert fetch(patient_url(page, "pt-9999")).status == 404
    assert fetch(f"{page.url}p/").status == 404
    assert fetch(f"{page.url}elsewhere").status == 404
    assert fetch(f"{patient_url(page)}/read").status == 404  # GET never changes anything
    token = token_of(fetch(patient_url(page)).text)
    answer = fetch(f"{patient_url(page, 'pt-9999')}/call-back", form={"csrf": token, "note": "hi"})
    assert answer.status == 404
    assert outbox.follow_ups() == []


def test_text_from_messages_is_escaped(outbox: Outbox, page: PatientPage) -> None:
    outbox.store_inbox_message(
        a_message(
            '<script>alert("gotcha")</script>',
            sender='<img src=x onerror="alert(1)">',
            message_id="m-<b>",
        )
    )
    html = fetch(patient_url(page)).text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&quot;gotcha&quot;)&lt;/script&gt;" in html
    assert "<img" not in html
    assert 'value="m-&lt;b&gt;"' in html  # in attributes too
    assert "<script" not in html.lower()


def test_security_headers_are_sent_on_every_answer(page: PatientPage) -> None:
    for answer in (
        fetch(patient_url(page)),
        fetch(patient_url(page, "pt-9999")),
        fetch(page.url, headers={"Host": "evil.example"}),
    ):
        csp = answer.headers["Content-Security-Policy"]
        assert csp.startswith("default-src 'none'; style-src 'sha256-")
        assert "script-src" not in csp
        assert answer.headers["X-Frame-Options"] == "DENY"
        assert "no-store" in answer.headers["Cache-Control"]
        assert answer.headers["X-Content-Type-Options"] == "nosniff"
        assert "Python" not in answer.headers["Server"]


def test_nothing_about_patients_is_logged_at_info(
    outbox: Outbox,
    page: PatientPage,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    secret_text = "Your potassium is low"
    secret_note = "Worried about my heart"
    outbox.store_inbox_message(a_message(secret_text, message_id="m-log"))
    outbox.add([a_reading(patient_id=P1, value=187.0)])
    caplog.set_level(logging.DEBUG)
    html = fetch(f"{patient_url(page)}?reply=m-log").text
    token = token_of(html)
    fetch(f"{patient_url(page)}/read", form={"csrf": token, "message_id": "m-log"})
    fetch(f"{patient_url(page)}/call-back", form={"csrf": token, "note": secret_note})
    fetch(f"{patient_url(page)}/call-back", form={"csrf": "bad", "note": secret_note})
    fetch(patient_url(page, "pt-9999"))

    page_records = [r for r in caplog.records if r.name == "gateway_agent.patient_page"]
    requests = [r for r in page_records if "/p/*" in r.getMessage()]
    assert any("/p/*/call-back" in r.getMessage() for r in requests)  # requests are logged,
    assert all(r.levelno == logging.DEBUG for r in requests)  # at DEBUG
    assert any(r.levelno >= logging.INFO for r in page_records)  # and the actions
    secrets = (secret_text, secret_note, P1, "pt-9999", "187", "Okafor", "m-log", token)
    for record in caplog.records:
        text = record.getMessage()
        if record.levelno >= logging.INFO:
            assert not any(s in text for s in secrets), text
    # Request lines are not logged as they arrived (patient id and query string left out).
    assert not any(P1 in r.getMessage() or "reply=" in r.getMessage() for r in page_records)
    captured = capsys.readouterr()
    assert P1 not in captured.err and "HTTP/1" not in captured.err  # no stderr access log


def test_a_storage_error_gives_a_friendly_503_and_the_page_keeps_serving(
    tmp_path: Path, outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(a_message("Still here afterwards", message_id="m-1"))
    with sqlite3.connect(tmp_path / "outbox.sqlite") as other:
        other.execute("ALTER TABLE inbox RENAME TO inbox_away")

    broken = fetch(patient_url(page))

    assert broken.status == 503
    assert "Please try again in a few minutes" in broken.text
    assert "Still here" not in broken.text and "sqlite" not in broken.text.lower()
    with sqlite3.connect(tmp_path / "outbox.sqlite") as other:
        other.execute("ALTER TABLE inbox_away RENAME TO inbox")
    recovered = fetch(patient_url(page))
    assert recovered.status == 200
    assert "Still here afterwards" in recovered.text


# --------------------------------------------------------------------------------------------
# Which patients


def test_with_several_patients_the_start_page_lets_them_choose(
    outbox: Outbox, page: PatientPage
) -> None:
    outbox.store_inbox_message(a_message("One for two", patient_id=P2, message_id="m-2"))
    html = fetch(page.url).text
    links = re.findall(r'<a href="(/p/[^"]+)">([^<]+)</a>', html)
    assert links == [(f"/p/{P1}", P1), (f"/p/{P2}", P2)]
    assert "1 new message" in html


def test_with_one_patient_the_start_page_leads_to_theirs(outbox: Outbox) -> None:
    page = start_patient_page(outbox, patients=["o'brien/<1>"], gateway_id="gw-1", port=0)
    try:
        answer = fetch(page.url)
        assert answer.status == 303
        location = answer.headers["Location"]
        assert location == "/p/o%27brien%2F%3C1%3E"
        html = fetch(page.url + location.lstrip("/")).text
        assert "o&#x27;brien/&lt;1&gt;" in html
        assert 'action="/p/o%27brien%2F%3C1%3E/call-back"' in html
    finally:
        page.close()


def test_the_registry_decides_the_patients_and_an_enrolment_shows_without_restart(
    tmp_path: Path, outbox: Outbox
) -> None:
    registry = tmp_path / "devices.toml"
    enroll(registry, address="C0:FF:EE:00:01:01", device_type="blood_pressure", patient_id=P1)
    page = start_patient_page(
        outbox, patients=registry_patients(registry), gateway_id="gw-1", port=0
    )
    try:
        assert fetch(patient_url(page)).status == 200
        assert fetch(patient_url(page, P2)).status == 404
        enroll(registry, address="C0:FF:EE:00:01:02", device_type="weight_scale", patient_id=P2)
        assert fetch(patient_url(page, P2)).status == 200
        registry.write_text("not toml [", encoding="utf-8")  # an edit gone wrong
        assert fetch(patient_url(page, P2)).status == 200  # the last valid list is kept
    finally:
        page.close()


# --------------------------------------------------------------------------------------------
# Started by `run`


def _settings(tmp_path: Path, port: int) -> GatewaySettings:
    return GatewaySettings.from_env(
        {
            "GATEWAY_ID": "gw-1",
            "MQTT_URL": "mqtt://127.0.0.1:1",
            "GATEWAY_OUTBOX_PATH": str(tmp_path / "outbox.sqlite"),
            "GATEWAY_PAGE_PORT": str(port),
        }
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_run_serves_the_page_while_running_and_logs_where(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = _free_port()
    caplog.set_level(logging.INFO)
    with patient_page(_settings(tmp_path, port), [P1]):
        assert f"patient page on http://127.0.0.1:{port}/" in caplog.text
        assert fetch(f"http://127.0.0.1:{port}/p/{P1}").status == 200
    with pytest.raises(urllib.error.URLError):
        fetch(f"http://127.0.0.1:{port}/")  # closed on shutdown


def test_run_keeps_going_without_the_page_when_the_port_is_taken(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = int(taken.getsockname()[1])
        ran = False
        with patient_page(_settings(tmp_path, port), [P1]):
            ran = True
        assert ran
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any(f"127.0.0.1:{port} cannot be used" in w for w in warnings), warnings
    assert "patient page on" not in caplog.text


def test_port_zero_means_no_page(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    with patient_page(_settings(tmp_path, 0), [P1]):
        pass
    assert "patient page" not in caplog.text
    assert not (tmp_path / "outbox.sqlite").exists()  # not even opened
