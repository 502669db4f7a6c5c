"""The triage queue: patients' open call-back requests, then open and acknowledged flags, most
severe first, then oldest first.

Both sections refresh themselves every :data:`REFRESH_SECONDS` (fragments, so the sidebar and
the rest of the app do not rerun). The flag card (:func:`flag_card`) and the text helpers are
shared with the patient page.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import streamlit as st

from dashboard.api_client import ApiConnector, ApiError, CareWatchApi, FlagStatus, parse_api_time
from dashboard.charts import SEVERITIES, display_unit, format_value, short_metric_name

REFRESH_SECONDS: Final = 15
#: The severities with a tile above the queue (``info`` flags are listed, not counted).
COUNTED_SEVERITIES: Final[tuple[str, ...]] = ("critical", "high", "medium", "low")
QUEUE_STATUSES: Final[tuple[FlagStatus, ...]] = ("open", "acknowledged")
QUEUE_LIMIT: Final = 500
#: The queue's "any" choice of a filter.
ALL: Final = "All"
PROGRAMS: Final = ("general", "hypertension", "heart_failure", "copd", "diabetes")
#: Snooze lengths offered on a flag (the API allows up to 30 days).
SNOOZE_HOURS: Final = (4, 12, 24, 72)
SEVERITY_BADGE_COLOURS: Final[Mapping[str, str]] = {
    "critical": "red",
    "high": "orange",
    "medium": "yellow",
    "low": "blue",
    "info": "gray",
}
#: Session-state key of the message an action left for the next run to show.
NOTICE_KEY: Final = "flag_action_notice"
#: The same for the call-back requests' "Mark done".
CALL_BACK_NOTICE_KEY: Final = "call_back_action_notice"
CALL_BACK_LIMIT: Final = 200

OpenPatient = Callable[[str], None]


# --- text ----------------------------------------------------------------------------------------


def time_ago(then: datetime | None, now: datetime) -> str:
    """How long ago ``then`` was, as a clinician reads it: "just now", "12 min ago", "3 h ago",
    "4 d ago" (hours up to two days). A time in the future (a wrong device clock) is "just now".
    """
    if then is None:
        return "never"
    elapsed = now - then
    if elapsed < timedelta(minutes=1):
        return "just now"
    if elapsed < timedelta(hours=1):
        return f"{int(elapsed.total_seconds() // 60)} min ago"
    if elapsed < timedelta(hours=48):
        return f"{int(elapsed.total_seconds() // 3600)} h ago"
    return f"{elapsed.days} d ago"


def value_with_unit(value: float | None, unit: str | None) -> str:
    """A value and its unit as shown: "192 mm[Hg]", "38.4 °C"."""
    text = format_value(value)
    shown_unit = display_unit(unit)
    return f"{text} {shown_unit}" if shown_unit and value is not None else text


def what_fired(flag: Mapping[str, Any]) -> str:
    """The condition behind a flag with its worst value: "Systolic 192 mm[Hg] > 180".

    When the condition in force is on another metric than the flag's values (a crisis opened by
    systolic and raised by diastolic), the condition's own label is shown instead.
    """
    threshold: Mapping[str, Any] = flag.get("threshold") or {}
    metric = threshold.get("metric", flag.get("loinc"))
    if "above" in threshold:
        operator, limit = ">", threshold["above"]
    elif "below" in threshold:
        operator, limit = "<", threshold["below"]
    else:
        return str(threshold.get("label") or flag.get("title", ""))
    if metric != flag.get("loinc"):
        return str(threshold.get("label") or f"{short_metric_name(metric)} {operator} {limit}")
    worst = value_with_unit(flag.get("worst_value"), flag.get("unit"))
    return f"{short_metric_name(metric)} {worst} {operator} {format_value(limit)}"


def status_text(flag: Mapping[str, Any], now: datetime) -> str:
    """Where a flag stands: "Open", "Acknowledged by Dr Lee 5 min ago", "Resolved by ..."."""
    status = str(flag.get("status", ""))
    if status == "acknowledged":
        by = flag.get("acknowledged_by") or "someone"
        return f"Acknowledged by {by} {time_ago(parse_api_time(flag.get('acknowledged_at')), now)}"
    if status == "resolved":
        by = flag.get("resolved_by") or "someone"
        return f"Resolved by {by} {time_ago(parse_api_time(flag.get('resolved_at')), now)}"
    return status.capitalize()


def readings_text(count: int) -> str:
    """How many readings a flag collected: "1 reading", "3 readings"."""
    return f"{count} reading" if count == 1 else f"{count} readings"


def escape_markdown(text: str) -> str:
    """``text`` shown literally in Streamlit Markdown (names may contain ``*``, ``_``, ``[``)."""
    special = "\\`*_[]<>#|~$"
    return "".join(f"\\{char}" if char in special else char for char in text)


# --- widgets -------------------------------------------------------------------------------------


def show_notice(key: str = NOTICE_KEY) -> None:
    """Show, once, the message the last action (on a flag, or on a call-back request with
    ``key=CALL_BACK_NOTICE_KEY``) left: success or the API's error."""
    notice = st.session_state.pop(key, None)
    if not notice:
        return
    kind, message = notice
    if kind == "error":
        st.error(message)
    else:
        st.success(message)


def _acknowledge(connect: ApiConnector, flag_id: int) -> None:
    """Button callback: acknowledge, and leave a notice for the rerun that follows."""
    try:
        with connect() as api:
            flag = api.acknowledge(flag_id)
    except ApiError as exc:
        st.session_state[NOTICE_KEY] = ("error", f"Could not acknowledge the flag: {exc}")
        return
    who = flag.get("patient_name") or "the patient"
    st.session_state[NOTICE_KEY] = (
        "success",
        f"Acknowledged: {flag.get('title', 'flag')} for {who}.",
    )


def _resolve(connect: ApiConnector, flag_id: int, note_key: str) -> None:
    """Button callback: resolve with the note typed on the card."""
    note = str(st.session_state.get(note_key) or "").strip()
    if not note:
        st.session_state[NOTICE_KEY] = ("error", "Say why the flag is resolved before resolving.")
        return
    try:
        with connect() as api:
            flag = api.resolve(flag_id, note)
    except ApiError as exc:
        st.session_state[NOTICE_KEY] = ("error", f"Could not resolve the flag: {exc}")
        return
    who = flag.get("patient_name") or "the patient"
    st.session_state[NOTICE_KEY] = ("success", f"Resolved: {flag.get('title', 'flag')} for {who}.")


def _assign_to_me(connect: ApiConnector, flag_id: int) -> None:
    """Button callback: take the flag."""
    try:
        with connect() as api:
            me = api.me()["username"]
            flag = api.assign(flag_id, me)
    except ApiError as exc:
        st.session_state[NOTICE_KEY] = ("error", f"Could not take the flag: {exc}")
        return
    st.session_state[NOTICE_KEY] = ("success", f"Flag {flag['flag_id']} is yours.")


def _snooze(
    connect: ApiConnector, flag: Mapping[str, Any], hours_key: str, reason_key: str
) -> None:
    """Button callback: snooze the patient's flags of this rule and direction."""
    reason = str(st.session_state.get(reason_key) or "").strip()
    hours = int(st.session_state.get(hours_key) or SNOOZE_HOURS[0])
    if not reason:
        st.session_state[NOTICE_KEY] = ("error", "Say why before snoozing.")
        return
    try:
        with connect() as api:
            api.snooze(
                str(flag["patient_id"]),
                str(flag["rule_id"]),
                str(flag.get("direction") or "none"),
                hours * 60,
                reason,
            )
    except ApiError as exc:
        st.session_state[NOTICE_KEY] = ("error", f"Could not snooze: {exc}")
        return
    direction = {"high": "high ", "low": "low "}.get(str(flag.get("direction")), "")
    st.session_state[NOTICE_KEY] = (
        "success",
        f"Snoozed {direction}{flag.get('title', 'flags')} for {hours} h; other rules and the "
        "other direction still alert.",
    )


def flag_card(
    connect: ApiConnector,
    flag: Mapping[str, Any],
    *,
    now: datetime,
    key_prefix: str,
    open_patient: OpenPatient | None = None,
) -> None:
    """One flag: severity badge, patient, what fired, worst and last value, readings, age,
    status; "Acknowledge" when open; "Resolve" (with a note) once acknowledged; "Open
    patient" when ``open_patient`` is given.

    Widget keys: ``{key_prefix}-ack-{flag_id}``, ``{key_prefix}-note-{flag_id}``,
    ``{key_prefix}-resolve-{flag_id}`` and ``{key_prefix}-open-{flag_id}``.
    """
    flag_id = int(flag["flag_id"])
    severity = str(flag.get("severity", "info"))
    status = str(flag.get("status", ""))
    unit = flag.get("unit")
    with st.container(border=True, key=f"{key_prefix}-flag-{flag_id}"):
        badge_column, text_column, action_column = st.columns(
            [1.2, 6, 1.8], vertical_alignment="center"
        )
        with badge_column:
            colour: Any = SEVERITY_BADGE_COLOURS.get(severity, "gray")
            st.badge(severity.upper(), color=colour)
            st.caption(status_text(flag, now))
        with text_column:
            name = escape_markdown(str(flag.get("patient_name") or flag.get("patient_id", "")))
            title = escape_markdown(str(flag.get("title", "")))
            st.markdown(f"**{name}** · {title} · {escape_markdown(what_fired(flag))}")
            opened = time_ago(parse_api_time(flag.get("opened_at")), now)
            last_breach = time_ago(parse_api_time(flag.get("last_breach_at")), now)
            st.caption(
                f"worst {value_with_unit(flag.get('worst_value'), unit)} · "
                f"last {value_with_unit(flag.get('last_value'), unit)} · "
                f"{readings_text(int(flag.get('breach_count', 0)))} · "
                f"opened {opened} · last breach {last_breach}"
            )
            why = f"rule {flag.get('rule_id')} · thresholds {flag.get('rules_version')}"
            if flag.get("assignee"):
                why += f" · assigned to {flag['assignee']}"
            st.caption(escape_markdown(why))
        with action_column:
            if status == "open":
                st.button(
                    "Acknowledge",
                    key=f"{key_prefix}-ack-{flag_id}",
                    type="primary",
                    width="stretch",
                    on_click=_acknowledge,
                    args=(connect, flag_id),
                )
            elif status == "acknowledged":
                note_key = f"{key_prefix}-note-{flag_id}"
                with st.popover("Resolve", width="stretch"):
                    st.text_input("Why is it resolved?", key=note_key, max_chars=2000)
                    st.button(
                        "Resolve flag",
                        key=f"{key_prefix}-resolve-{flag_id}",
                        type="primary",
                        on_click=_resolve,
                        args=(connect, flag_id, note_key),
                    )
            if status in ("open", "acknowledged"):
                with st.popover("More", width="stretch"):
                    st.button(
                        "Assign to me",
                        key=f"{key_prefix}-mine-{flag_id}",
                        on_click=_assign_to_me,
                        args=(connect, flag_id),
                    )
                    hours_key = f"{key_prefix}-snooze-hours-{flag_id}"
                    reason_key = f"{key_prefix}-snooze-reason-{flag_id}"
                    st.selectbox("Snooze for (hours)", SNOOZE_HOURS, key=hours_key)
                    st.text_input("Why snooze?", key=reason_key, max_chars=500)
                    st.button(
                        "Snooze this rule",
                        key=f"{key_prefix}-snooze-{flag_id}",
                        on_click=_snooze,
                        args=(connect, flag, hours_key, reason_key),
                    )
            if open_patient is not None and st.button(
                "Open patient", key=f"{key_prefix}-open-{flag_id}", width="stretch"
            ):
                open_patient(str(flag["patient_id"]))


def _mark_done(connect: ApiConnector, request_id: str, note_key: str) -> None:
    """Button callback: mark a call-back request done, with the optional note typed on it."""
    note = str(st.session_state.get(note_key) or "").strip() or None
    try:
        with connect() as api:
            request = api.close_follow_up(request_id, note)
    except ApiError as exc:
        st.session_state[CALL_BACK_NOTICE_KEY] = (
            "error",
            f"Could not mark the call-back request done: {exc}",
        )
        return
    who = request.get("patient_name") or request.get("patient_id") or "the patient"
    st.session_state[CALL_BACK_NOTICE_KEY] = ("success", f"Done: call back for {who}.")


def call_back_card(
    connect: ApiConnector,
    request: Mapping[str, Any],
    *,
    now: datetime,
    open_patient: OpenPatient | None = None,
) -> None:
    """One open call-back request: patient, when they asked, their note; "Mark done" (with an
    optional note) and "Open patient".

    Widget keys: ``callback-note-{request_id}``, ``callback-done-{request_id}`` and
    ``callback-open-{request_id}``.
    """
    request_id = str(request["request_id"])
    with st.container(border=True, key=f"callback-{request_id}"):
        text_column, action_column = st.columns([7.2, 1.8], vertical_alignment="center")
        with text_column:
            name = escape_markdown(str(request.get("patient_name") or request["patient_id"]))
            asked = time_ago(parse_api_time(request.get("requested_at")), now)
            st.markdown(f"**{name}** · asked for a call back {asked}")
            note = request.get("note")
            st.caption(f"“{escape_markdown(str(note))}”" if note else "No note.")
        with action_column:
            note_key = f"callback-note-{request_id}"
            with st.popover("Mark done", width="stretch"):
                st.text_input("Note (optional)", key=note_key, max_chars=2000)
                st.button(
                    "Mark done",
                    key=f"callback-done-{request_id}",
                    type="primary",
                    on_click=_mark_done,
                    args=(connect, request_id, note_key),
                )
            if open_patient is not None and st.button(
                "Open patient", key=f"callback-open-{request_id}", width="stretch"
            ):
                open_patient(str(request["patient_id"]))


# --- the page ------------------------------------------------------------------------------------


def render(connect: ApiConnector, open_patient: OpenPatient) -> None:
    """The triage page. ``open_patient(patient_id)`` switches to that patient's page."""
    st.title("Triage queue")
    st.caption(
        "Call-back requests from patients, newest first; then open and acknowledged flags, most "
        f"severe first, then oldest first. Refreshes every {REFRESH_SECONDS} s."
    )
    _call_backs(connect, open_patient)
    st.subheader("Flags")
    _queue(connect, open_patient)


@st.fragment(run_every=REFRESH_SECONDS)
def _call_backs(connect: ApiConnector, open_patient: OpenPatient) -> None:
    """The patients' open call-back requests; reruns on its own every :data:`REFRESH_SECONDS`."""
    st.subheader("Call-back requests")
    show_notice(CALL_BACK_NOTICE_KEY)
    try:
        with connect() as api:
            requests = api.follow_ups(status="open", limit=CALL_BACK_LIMIT)
    except ApiError as exc:
        st.error(str(exc))
        return
    if not requests:
        st.caption("No open call-back requests.")
        return
    if len(requests) >= CALL_BACK_LIMIT:
        st.caption(f"Showing the newest {CALL_BACK_LIMIT} call-back requests.")
    now = datetime.now(UTC)
    for request in requests:
        call_back_card(connect, request, now=now, open_patient=open_patient)


@st.fragment(run_every=REFRESH_SECONDS)
def _queue(connect: ApiConnector, open_patient: OpenPatient) -> None:
    """Counts, filters and flags; reruns on its own every :data:`REFRESH_SECONDS`."""
    show_notice()
    try:
        with connect() as api:
            counts = api.flag_counts()
            _show_queue(connect, api, counts, open_patient)
    except ApiError as exc:
        st.error(str(exc))


def _show_queue(
    connect: ApiConnector, api: CareWatchApi, counts: Mapping[str, int], open_patient: OpenPatient
) -> None:
    """Severity tiles, the filters, then the flags that pass them (or why there are none)."""
    for column, severity in zip(
        st.columns(len(COUNTED_SEVERITIES)), COUNTED_SEVERITIES, strict=True
    ):
        column.metric(severity.capitalize(), counts.get(severity, 0), border=True)

    severity_column, status_column = st.columns([3, 2])
    with severity_column:
        severities = st.multiselect(
            "Severity",
            SEVERITIES,
            default=list(SEVERITIES),
            format_func=str.capitalize,
            key="triage_severities",
            persist_state="session",
        )
    with status_column:
        statuses = st.segmented_control(
            "Status",
            QUEUE_STATUSES,
            selection_mode="multi",
            default=list(QUEUE_STATUSES),
            format_func=str.capitalize,
            key="triage_statuses",
            persist_state="session",
        )

    me = api.me()
    rule_titles = {str(r["rule_id"]): str(r["title"]) for r in api.rules()["rules"]}
    program_column, team_column, rule_column, assignee_column = st.columns(
        [2, 2, 3, 2], vertical_alignment="bottom"
    )
    with program_column:
        program = st.selectbox(
            "Program",
            [ALL, *PROGRAMS],
            format_func=lambda p: p.replace("_", " ").capitalize(),
            key="triage_program",
            persist_state="session",
        )
    with team_column:
        team = st.selectbox(
            "Care team", [ALL, *me.get("teams", [])], key="triage_team", persist_state="session"
        )
    with rule_column:
        rule = st.selectbox(
            "Rule",
            [ALL, *rule_titles],
            format_func=lambda r: rule_titles.get(r, r),
            key="triage_rule",
            persist_state="session",
        )
    with assignee_column:
        assigned = st.text_input(
            "Assigned to", max_chars=64, key="triage_assignee", placeholder="anyone"
        )
    mine = st.toggle("Mine only", key="triage_mine", persist_state="session")

    if sum(counts.values()) == 0:
        st.success("No open flags. New flags appear here within seconds of the rules raising them.")
        return
    if not severities or not statuses:
        st.info("Choose at least one severity and one status to see flags.")
        return
    flags = api.flags(
        status=list(statuses),
        program=None if program == ALL else program,
        team_id=None if team == ALL else team,
        rule_id=None if rule == ALL else rule,
        assignee=str(me["username"]) if mine else (assigned.strip() or None),
        limit=QUEUE_LIMIT,
    )
    shown = [flag for flag in flags if flag.get("severity") in severities]
    if not shown:
        st.info("No flags match these filters.")
        return
    if len(flags) >= QUEUE_LIMIT:
        st.caption(f"Showing the first {QUEUE_LIMIT} flags of the queue.")
    now = datetime.now(UTC)
    for flag in shown:
        flag_card(connect, flag, now=now, key_prefix="triage", open_patient=open_patient)
