"""CareWatch clinician workspace: ``streamlit run dashboard/app.py``.

Settings come from the environment: ``CAREWATCH_API_URL`` (default http://127.0.0.1:8000),
``CAREWATCH_API_TOKEN`` (the ingest service's token; required) and ``CAREWATCH_USER`` (the
default clinician name in the sidebar). The workspace reads and writes through the API only.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Final

import streamlit as st

from dashboard import patient_page, triage_page
from dashboard.api_client import ApiConnector, ApiError, CareWatchApi, user_from_env

CLINICIAN_KEY: Final = "clinician_name"

# httpx logs every request line at INFO, and the paths name patients: keep them out of logs.
logging.getLogger("httpx").setLevel(logging.WARNING)


def connector_for(clinician: str) -> ApiConnector:
    """Opens clients acting for ``clinician`` (one per page run, fragment rerun or callback);
    raises :class:`ApiError` now when the environment lacks the token or has a bad URL."""
    CareWatchApi.from_env(user=clinician).close()
    return functools.partial(CareWatchApi.from_env, user=clinician)


def show_api_status(api: CareWatchApi) -> None:
    """Whether the API is ready and accepts our token, in the sidebar."""
    try:
        readiness = api.ready()
        api.flag_counts()  # the cheapest call that proves the token
    except ApiError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    if readiness.get("ready"):
        st.success("API ready", icon=":material/check_circle:")
    else:
        failing = [name for name, ok in (readiness.get("checks") or {}).items() if not ok]
        st.warning(
            f"API not ready: {', '.join(failing) or 'unknown'} down", icon=":material/warning:"
        )
    st.caption(f"API: {api.display_url}")


def run_page(render: Callable[..., None], *args: object) -> None:
    """Run a page; an API failure is shown as its message, never as a traceback."""
    try:
        render(*args)
    except ApiError as exc:
        st.error(str(exc))


def main() -> None:
    st.set_page_config(page_title="CareWatch", layout="wide")
    with st.sidebar:
        clinician = st.text_input(
            "Clinician",
            value=user_from_env(),
            max_chars=64,
            key=CLINICIAN_KEY,
            help="Your name. The API records it with every view and acknowledgement.",
        )
    try:
        connect = connector_for(clinician)
    except ApiError as exc:
        st.error(str(exc))
        st.stop()
    with st.sidebar, connect() as api:
        show_api_status(api)

    patient = st.Page(
        functools.partial(run_page, patient_page.render, connect),
        title="Patient",
        icon=":material/person:",
        url_path="patient",
    )

    def open_patient(patient_id: str) -> None:
        st.switch_page(patient, query_params={patient_page.PATIENT_QUERY_PARAM: patient_id})

    triage = st.Page(
        functools.partial(run_page, triage_page.render, connect, open_patient),
        title="Triage queue",
        icon=":material/notifications:",
        url_path="triage",
        default=True,
    )
    st.navigation([triage, patient]).run()


main()
