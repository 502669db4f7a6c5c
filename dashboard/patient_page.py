"""One patient: who they are, their devices, their vitals over 7 / 30 / 90 days, their flags.

The patient shown follows the ``patient`` query parameter (``?patient=<id>``), so the triage
queue opens a patient with ``st.switch_page(..., query_params={"patient": id})`` and the URL
can be shared; the picker keeps the parameter in step when the clinician picks someone else.

API calls per run: patients, patient, readings (all metrics at once), flags of the patient
(every status), one ``thresholds`` per charted metric, and one ``flag`` per flag with a breach
inside the period (for the readings it links). Nothing is cached across runs: every view goes
through the API, which authorises and audits it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import streamlit as st

from dashboard import charts, outreach_panel
from dashboard.adherence_chart import adherence_chart, adherence_frame, days_with_readings
from dashboard.api_client import (
    ApiConnector,
    ApiNotFoundError,
    CareWatchApi,
    JsonObject,
    parse_api_time,
)
from dashboard.triage_page import escape_markdown, flag_card, show_notice, time_ago

PERIOD_DAYS: Final[tuple[int, ...]] = (7, 30, 90)
PATIENT_QUERY_PARAM: Final = "patient"
PICKER_KEY: Final = "patient_picker"
PERIOD_KEY: Final = "patient_period_days"
#: From this period on, the charts draw hourly averages (and the flagged readings themselves)
#: rather than every reading.
HOURLY_FROM_DAYS: Final = 90
#: A device with nothing for this long is shown as silent (the rules' device-silent default).
SILENT_AFTER: Final = timedelta(hours=48)
FLAG_HISTORY_STATUSES: Final = ("open", "acknowledged", "resolved")
PROGRAM_NAMES: Final[Mapping[str, str]] = {
    "general": "General",
    "hypertension": "Hypertension",
    "heart_failure": "Heart failure",
    "copd": "COPD",
    "diabetes": "Diabetes",
}
DEVICE_TYPE_NAMES: Final[Mapping[str, str]] = {
    "blood_pressure": "Blood-pressure cuff",
    "pulse_oximeter": "Pulse oximeter",
    "weight_scale": "Scale",
    "body_composition": "Body-composition scale",
    "thermometer": "Thermometer",
    "glucose_meter": "Glucose meter",
    "heart_rate": "Heart-rate strap",
}


def display_timezone() -> str | None:
    """The clinician's browser timezone (``st.context.timezone``), the zone the charts show
    times in; ``None`` when the browser did not say or named no known zone."""
    name = st.context.timezone
    if not name:
        return None
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return None
    return name


def flagged_readings(
    api: CareWatchApi, flags: Iterable[Mapping[str, Any]], *, since: datetime
) -> list[JsonObject]:
    """The readings linked to ``flags`` (id, time, metric, value), asking only for flags with
    a breach at or after ``since`` (older flags cannot have a reading inside the period)."""
    readings: list[JsonObject] = []
    for flag in flags:
        last_breach = parse_api_time(flag.get("last_breach_at"))
        if last_breach is not None and last_breach < since:
            continue
        readings.extend(api.flag(int(flag["flag_id"])).get("readings", ()))
    return readings


def flagged_reading_ids(
    api: CareWatchApi, flags: Iterable[Mapping[str, Any]], *, since: datetime
) -> set[str]:
    """The ids of the readings linked to ``flags`` (see :func:`flagged_readings`)."""
    return {str(reading["reading_id"]) for reading in flagged_readings(api, flags, since=since)}


def hourly_points(summary: Iterable[Mapping[str, Any]]) -> list[JsonObject]:
    """Hourly rollup rows as points to draw: each hour's average of a metric, at the middle
    of its hour (the long views draw these, not every reading: a busy patient has ten
    thousand readings in 90 days)."""
    points = []
    for row in summary:
        start = parse_api_time(row.get("bucket"))
        if start is None or row.get("avg_value") is None:
            continue
        points.append(
            {
                "reading_id": f"hour:{row['loinc']}:{row['bucket']}",
                "loinc": row["loinc"],
                "unit": row.get("unit"),
                "value": float(row["avg_value"]),
                "measured_at": (start + timedelta(minutes=30)).isoformat(),
            }
        )
    return points


def device_status(device: Mapping[str, Any], now: datetime) -> str:
    """ "silent" when the device has sent nothing for :data:`SILENT_AFTER` while its gateway
    is online (the device, not the home, needs a look), "gateway offline", or "ok"."""
    if device.get("gateway_state") == "offline":
        return "gateway offline"
    last = parse_api_time(device.get("last_reading_at"))
    if last is None or now - last > SILENT_AFTER:
        return "silent"
    return "ok"


def device_rows(devices: Sequence[Mapping[str, Any]], now: datetime) -> pd.DataFrame:
    """The patient's devices as a table: type, status (silent?), last reading, battery,
    gateway and its state."""
    return pd.DataFrame(
        [
            {
                "Device": DEVICE_TYPE_NAMES.get(
                    str(device.get("device_type")), device.get("device_type")
                ),
                "Status": device_status(device, now),
                "Last reading": time_ago(parse_api_time(device.get("last_reading_at")), now),
                "Battery": (
                    f"{device['battery_percent']} %"
                    if device.get("battery_percent") is not None
                    else "unknown"
                ),
                "Gateway": device.get("gateway_id"),
                "Gateway state": (
                    f"{device.get('gateway_state', 'unknown')}, seen "
                    f"{time_ago(parse_api_time(device.get('gateway_last_seen_at')), now)}"
                ),
            }
            for device in devices
        ],
        columns=["Device", "Status", "Last reading", "Battery", "Gateway", "Gateway state"],
    )


# --- the page ------------------------------------------------------------------------------------


def render(connect: ApiConnector) -> None:
    """The patient page."""
    st.title("Patient")
    show_notice()
    with connect() as api:
        _render(connect, api)


def _render(connect: ApiConnector, api: CareWatchApi) -> None:
    """Picker, header, period, charts and flags, all through one client for this run."""
    patients = api.patients()
    if not patients:
        st.info("No patients are enrolled yet.")
        return
    patient_id = _pick_patient(patients)
    if patient_id is None:
        st.info("Choose a patient to see their readings and flags.")
        return
    try:
        patient = api.patient(patient_id)
    except ApiNotFoundError:
        st.warning("This patient is no longer enrolled; choose another one.")
        return
    now = datetime.now(UTC)
    summary = next(p for p in patients if str(p["patient_id"]) == patient_id)
    _header(patient, summary, now)

    days = st.radio(
        "Period",
        PERIOD_DAYS,
        format_func=lambda value: f"{value} days",
        horizontal=True,
        key=PERIOD_KEY,
        persist_state="session",
    )
    since = now - timedelta(days=days)
    flags = api.flags(status=FLAG_HISTORY_STATUSES, patient_id=patient_id)
    if days >= HOURLY_FROM_DAYS:
        marked = [r for r in flagged_readings(api, flags, since=since) if _in(r, since)]
        readings = hourly_points(api.readings_summary(patient_id, "hour", since=since)) + marked
        flagged = {str(r["reading_id"]) for r in marked}
    else:
        readings = api.readings(patient_id, days)
        flagged = flagged_reading_ids(api, flags, since=since)

    _vitals(
        api,
        readings,
        flagged_ids=flagged,
        spo2_scale=int(patient.get("spo2_scale") or 1),
        now=now,
        days=days,
    )
    if days >= HOURLY_FROM_DAYS:
        st.caption(
            f"Over {days} days the lines join hourly averages; the red points are the flagged "
            "readings themselves."
        )
    _adherence(readings, days=days, now=now)
    _flags(connect, flags, now=now)
    notice = st.session_state.pop("call-ended-notice", None)
    if notice:
        st.success(notice)
    outreach_panel.render(connect, patient)


def _in(reading: Mapping[str, Any], since: datetime) -> bool:
    measured = parse_api_time(reading.get("measured_at"))
    return measured is not None and measured >= since


def _pick_patient(patients: Sequence[JsonObject]) -> str | None:
    """The picker, in step with ``?patient=``: a new id in the URL selects that patient; a
    pick updates the URL (in its callback, before the run reads the URL)."""
    names = {str(p["patient_id"]): str(p.get("display_name") or p["patient_id"]) for p in patients}
    requested = st.query_params.get(PATIENT_QUERY_PARAM)
    if requested is not None and requested not in names:
        st.warning("The patient in the link was not found; choose one below.")
    elif requested is not None and requested != st.session_state.get(PICKER_KEY):
        st.session_state[PICKER_KEY] = requested
    selected = st.selectbox(
        "Patient",
        list(names),
        index=None,
        format_func=lambda patient_id: f"{names.get(patient_id, patient_id)} ({patient_id})",
        placeholder="Choose a patient",
        key=PICKER_KEY,
        on_change=_picked,
        persist_state="session",
    )
    if selected is not None and requested != selected:
        st.query_params[PATIENT_QUERY_PARAM] = selected
    return selected


def _picked() -> None:
    selected = st.session_state.get(PICKER_KEY)
    if selected is None:
        st.query_params.pop(PATIENT_QUERY_PARAM, None)
    else:
        st.query_params[PATIENT_QUERY_PARAM] = selected


def _header(patient: Mapping[str, Any], summary: Mapping[str, Any], now: datetime) -> None:
    """Name, program, SpO2 scale, last reading, unresolved flags, and the devices."""
    st.header(str(patient.get("display_name") or patient["patient_id"]))
    program = PROGRAM_NAMES.get(str(patient.get("program")), str(patient.get("program")))
    last_reading = time_ago(parse_api_time(summary.get("last_reading_at")), now)
    open_flags = int(summary.get("open_flags") or 0)
    st.caption(
        f"Program: {escape_markdown(program)} · SpO2 scale {patient.get('spo2_scale', 1)} · "
        f"last reading {last_reading} · "
        f"{open_flags} unresolved flag{'' if open_flags == 1 else 's'} · "
        f"id {escape_markdown(str(patient['patient_id']))}"
    )
    devices = patient.get("devices") or []
    if devices:
        st.dataframe(device_rows(devices, now), hide_index=True, width="stretch")
    else:
        st.caption("No devices have sent readings yet.")


def _vitals(
    api: CareWatchApi,
    readings: Sequence[Mapping[str, Any]],
    *,
    flagged_ids: set[str],
    spo2_scale: int,
    now: datetime,
    days: int,
) -> None:
    """One chart per vital with readings in the period, with the thresholds that apply to the
    patient (rules for everyone and those of their SpO2 scale) and the flagged points."""
    st.subheader("Vitals")
    frame = charts.readings_frame(readings, flagged_reading_ids=flagged_ids)
    if frame.empty:
        st.info(f"No readings in the last {days} days.")
        return
    window = (now - timedelta(days=days), now)
    panels = charts.panels_for(frame["loinc"])
    threshold_lines: list[Mapping[str, Any]] = []
    for panel in panels:
        for loinc in panel.loincs:
            lines = api.thresholds(loinc).get("lines", [])
            threshold_lines.extend(charts.applicable_threshold_lines(lines, spo2_scale))
    thresholds = charts.thresholds_frame(threshold_lines)
    for panel in panels:
        chart = charts.vital_chart(
            frame.loc[frame["loinc"].isin(panel.loincs)],
            thresholds.loc[thresholds["metric"].isin(panel.loincs)],
            title=panel.title,
            unit=panel.unit,
            window=window,
        )
        st.altair_chart(chart, width="stretch", key=f"chart-{panel.key}")
    timezone = display_timezone() or "your browser's timezone"
    st.caption(
        f"Times in {timezone}. Dashed lines: thresholds of the "
        f"rules in force for this patient (SpO2 scale {spo2_scale}), coloured by severity. "
        "Red points: readings that raised or joined a flag."
    )


def _adherence(readings: Sequence[Mapping[str, Any]], *, days: int, now: datetime) -> None:
    """The adherence calendar of the period (one reading a day counts)."""
    st.subheader("Adherence")
    moments = [t for t in (parse_api_time(r.get("measured_at")) for r in readings) if t]
    frame = adherence_frame(moments, days=days, now=now, tz=display_timezone() or "UTC")
    st.caption(f"Readings on {days_with_readings(frame)} of the last {days} days.")
    st.altair_chart(adherence_chart(frame), width="stretch", key="adherence")


def _flags(connect: ApiConnector, flags: Sequence[Mapping[str, Any]], *, now: datetime) -> None:
    """The patient's open and acknowledged flags, then the resolved ones folded away."""
    st.subheader("Flags")
    active = [flag for flag in flags if flag.get("status") != "resolved"]
    resolved = [flag for flag in flags if flag.get("status") == "resolved"]
    if not active:
        st.caption("No open or acknowledged flags.")
    for flag in active:
        flag_card(connect, flag, now=now, key_prefix="patient")
    if resolved:
        with st.expander(f"Resolved flags ({len(resolved)})"):
            for flag in resolved:
                flag_card(connect, flag, now=now, key_prefix="patient-resolved")
