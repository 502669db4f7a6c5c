"""CareWatch clinician workspace: ``streamlit run dashboard/app.py``.

Settings come from the environment: ``CAREWATCH_API_URL`` (default http://127.0.0.1:8000).
Users log in with their own account; the workspace reads and writes through the API only,
with their session token, so every view is authorised (their care teams' patients only) and
audited under their name.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Final

import streamlit as st

from dashboard import billing_page, login_page, patient_page, triage_page, tuning_page
from dashboard.api_client import (
    ApiAuthError,
    ApiConnector,
    ApiError,
    CareWatchApi,
    WorkspaceSession,
    api_url_from_env,
)

SESSION_ENDED: Final = "Your session has ended: log in again."
#: Roles that see the lead's pages (billing, threshold tuning); the API checks again.
LEAD_ROLES: Final = frozenset({"lead", "admin"})

# httpx logs every request line at INFO, and the paths name patients: keep them out of logs.
logging.getLogger("httpx").setLevel(logging.WARNING)


def connector_for(api_url: str, session: WorkspaceSession) -> ApiConnector:
    """Opens clients with the user's session token (one per page run, fragment rerun or
    callback); raises :class:`ApiError` now when the URL is bad."""
    address = login_page.browser_address()
    CareWatchApi(api_url, session.token).close()
    return functools.partial(CareWatchApi, api_url, session.token, client_address=address)


def show_api_status(api: CareWatchApi) -> None:
    """Whether the API is ready and accepts our token, in the sidebar."""
    try:
        readiness = api.ready()
        api.flag_counts()  # the cheapest call that proves the token
    except ApiAuthError:
        raise
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
    except ApiAuthError as exc:
        if exc.status_code == 401:
            login_page.end_session(SESSION_ENDED)
            st.rerun()
        st.error(str(exc))
    except ApiError as exc:
        st.error(str(exc))


def show_user(session: WorkspaceSession, connect: ApiConnector) -> None:
    """Who is logged in, and the way out."""
    teams = ", ".join(session.teams) or "no care team yet"
    st.markdown(f"**{session.display_name}** · {session.role}")
    st.caption(f"Care teams: {teams}")
    if st.button("Log out", icon=":material/logout:", key="logout"):
        try:
            with connect() as api:
                api.logout()
        except ApiError:
            pass  # the session is forgotten here either way
        login_page.end_session("You have logged out.")
        st.rerun()


def main() -> None:
    st.set_page_config(page_title="CareWatch", layout="wide")
    api_url = api_url_from_env()
    session = login_page.current_session()
    if session is None:
        login_page.render(api_url)
        return
    try:
        connect = connector_for(api_url, session)
    except ApiError as exc:
        st.error(str(exc))
        st.stop()
    with st.sidebar:
        show_user(session, connect)
        try:
            with connect() as api:
                show_api_status(api)
        except ApiAuthError:
            login_page.end_session(SESSION_ENDED)
            st.rerun()

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
    pages = [triage, patient]
    if session.role in LEAD_ROLES:
        pages.append(
            st.Page(
                functools.partial(run_page, tuning_page.render, connect),
                title="Threshold tuning",
                icon=":material/tune:",
                url_path="tuning",
            )
        )
        pages.append(
            st.Page(
                functools.partial(run_page, billing_page.render, connect),
                title="Billing evidence",
                icon=":material/receipt_long:",
                url_path="billing",
            )
        )
    st.navigation(pages).run()


main()
