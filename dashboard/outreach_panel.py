"""The patient page's follow-up panel: message the patient (their gateway's inbox, optionally
email), call them (a video room and a ``tel:`` link; outcome and note logged when the call
ends), and what was sent and called before. Through the API only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Final

import pandas as pd
import streamlit as st

from dashboard.api_client import ApiConnector, ApiError, JsonObject, parse_api_time

OWN_TEXT: Final = "Write your own"
OUTCOMES: Final = {
    "reached": "Reached the patient",
    "no_answer": "No answer",
    "voicemail": "Left a voicemail",
    "wrong_number": "Wrong number",
    "declined": "Patient declined",
}
STATUS_TEXT: Final = {
    "queued": "Queued",
    "sent": "Sent to the home box",
    "delivered": "Delivered",
    "read": "Read",
    "email_only": "Email only",
}


def open_call_key(patient_id: str) -> str:
    return f"open-call-{patient_id}"


def message_rows(messages: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The messages as the panel's table: when, who, status (with email), text."""
    rows = []
    for message in messages:
        status = STATUS_TEXT.get(str(message.get("status")), str(message.get("status")))
        if message.get("email_to"):
            status += ", emailed" if message.get("emailed_at") else ", email pending"
        if message.get("publish_error") and message.get("status") == "queued":
            status += f" (retrying: {message['publish_error']})"
        rows.append(
            {
                "Sent": parse_api_time(message.get("created_at")),
                "By": message.get("sender"),
                "Status": status,
                "Message": str(message.get("body") or ""),
            }
        )
    return pd.DataFrame(rows, columns=["Sent", "By", "Status", "Message"])


def call_rows(calls: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    rows = []
    for call in calls:
        duration = call.get("duration_s")
        rows.append(
            {
                "Started": parse_api_time(call.get("started_at")),
                "By": call.get("caller"),
                "Outcome": OUTCOMES.get(str(call.get("outcome")), "In progress"),
                "Minutes": round(duration / 60, 1) if duration is not None else None,
                "Note": call.get("note") or "",
            }
        )
    return pd.DataFrame(rows, columns=["Started", "By", "Outcome", "Minutes", "Note"])


def request_rows(requests: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The patient's "please call me back" requests: when, their note, and what was done."""
    rows = [
        {
            "Asked": parse_api_time(r.get("requested_at")),
            "Note": r.get("note") or "",
            "Status": "done" if r.get("status") == "done" else "open",
            "Done by": r.get("closed_by") or "",
            "Outcome": r.get("close_note") or "",
        }
        for r in requests
    ]
    return pd.DataFrame(rows, columns=["Asked", "Note", "Status", "Done by", "Outcome"])


def render(connect: ApiConnector, patient: Mapping[str, Any]) -> None:
    patient_id = str(patient["patient_id"])
    st.subheader("Follow up")
    message_column, call_column = st.columns(2)
    with connect() as api:
        templates = api.message_templates()
        messages = api.messages(patient_id)
        calls = api.calls(patient_id)
        notes = api.notes(patient_id)
        requests = api.follow_ups("all", patient_id, limit=50)
    with message_column:
        _message_form(connect, patient, templates)
        if messages:
            st.dataframe(message_rows(messages), hide_index=True, use_container_width=True)
        else:
            st.caption("No messages sent yet.")
    with call_column:
        _call_controls(connect, patient)
        if calls:
            st.dataframe(call_rows(calls), hide_index=True, use_container_width=True)
        else:
            st.caption("No calls yet.")
    if requests:
        st.markdown("**Call-back requests from the patient**")
        st.dataframe(request_rows(requests), hide_index=True, use_container_width=True)
    _notes(connect, patient_id, notes)


def _notes(connect: ApiConnector, patient_id: str, notes: Sequence[Mapping[str, Any]]) -> None:
    st.subheader("Notes")
    with st.form(f"note-form-{patient_id}", clear_on_submit=True):
        text = st.text_area("New note", max_chars=4000, key=f"note-text-{patient_id}")
        if st.form_submit_button("Add note", icon=":material/edit_note:") and text.strip():
            try:
                with connect() as api:
                    notes = [api.add_note(patient_id, text), *notes]
            except ApiError as exc:
                st.error(str(exc))
    for note in notes:
        written = parse_api_time(note.get("created_at"))
        when = f"{written:%Y-%m-%d %H:%M} UTC" if written else ""
        st.markdown(f"**{note.get('author')}** · {when}")
        st.text(str(note.get("body") or ""))
    if not notes:
        st.caption("No notes yet.")


def _message_form(
    connect: ApiConnector, patient: Mapping[str, Any], templates: Sequence[JsonObject]
) -> None:
    patient_id = str(patient["patient_id"])
    name = str(patient.get("display_name") or "")
    first_name = name.split(" ")[0] if name else ""
    by_title = {str(t["title"]): t for t in templates}
    choice = st.selectbox("Message", [OWN_TEXT, *by_title], key=f"message-template-{patient_id}")
    template = by_title.get(choice)
    default = str(template["body"]).replace("{name}", first_name) if template else ""
    text = st.text_area(
        "Text", value=default, max_chars=2000, key=f"message-text-{patient_id}-{choice}"
    )
    by_email = st.checkbox("Also by email", key=f"message-email-{patient_id}")
    if st.button("Send message", key=f"message-send-{patient_id}", icon=":material/send:"):
        if not text.strip():
            st.warning("Write the message first.")
            return
        try:
            with connect() as api:
                api.send_message(
                    patient_id,
                    text,
                    template_id=str(template["template_id"]) if template else None,
                    by_email=by_email,
                )
        except ApiError as exc:
            st.error(str(exc))
            return
        st.success("Message queued; its status follows the home box's receipts.")


def _call_controls(connect: ApiConnector, patient: Mapping[str, Any]) -> None:
    patient_id = str(patient["patient_id"])
    key = open_call_key(patient_id)
    call = st.session_state.get(key)
    if call is None:
        if st.button("Start call", key=f"call-start-{patient_id}", icon=":material/call:"):
            with connect() as api:
                st.session_state[key] = api.start_call(patient_id)
            st.rerun()
        return
    started = parse_api_time(call.get("started_at")) or datetime.now(UTC)
    st.markdown(f"**Call in progress** since {started:%H:%M} UTC")
    if call.get("room_url"):
        st.link_button("Open the video room", str(call["room_url"]), icon=":material/videocam:")
    if call.get("tel"):
        st.markdown(f"[Phone {patient.get('phone') or ''}]({call['tel']})")
    else:
        st.caption("No phone number on record.")
    outcome = st.selectbox(
        "Outcome",
        list(OUTCOMES),
        format_func=OUTCOMES.__getitem__,
        key=f"call-outcome-{patient_id}",
    )
    note = st.text_area("Call note", max_chars=4000, key=f"call-note-{patient_id}")
    if st.button("End call", key=f"call-end-{patient_id}", icon=":material/call_end:"):
        with connect() as api:
            ended = api.end_call(str(call["call_id"]), outcome, note.strip() or None)
        del st.session_state[key]
        minutes = (ended.get("duration_s") or 0) / 60
        st.session_state["call-ended-notice"] = (
            f"Call logged: {OUTCOMES[outcome].lower()}, {minutes:.0f} min."
        )
        st.rerun()
