"""The workspace's login: user name and password, checked by the API (argon2, rate-limited).

A successful login keeps the session token in this browser session's state only; it is never
written to disk, a URL or a log. When the API says the session ended (idle timeout, logout
elsewhere, password change), the workspace comes back here with a notice.
"""

from __future__ import annotations

from typing import Final

import streamlit as st

from dashboard.api_client import ApiError, WorkspaceSession, log_in

SESSION_KEY: Final = "carewatch_session"
NOTICE_KEY: Final = "carewatch_login_notice"


def current_session() -> WorkspaceSession | None:
    session = st.session_state.get(SESSION_KEY)
    return session if isinstance(session, WorkspaceSession) else None


def end_session(notice: str | None = None) -> None:
    """Forget the session and everything this browser session held (an open call, the last
    patient, notices naming patients): the next user of a shared workstation starts clean."""
    st.session_state.clear()
    if notice:
        st.session_state[NOTICE_KEY] = notice


def browser_address() -> str | None:
    """The user's browser's address as Streamlit saw it (None when it cannot say)."""
    try:
        address = st.context.ip_address
    except Exception:  # outside a browser session: the API uses the workspace's own address
        return None
    return address if isinstance(address, str) else None


def render(api_url: str) -> None:
    st.title("CareWatch")
    notice = st.session_state.pop(NOTICE_KEY, None)
    if notice:
        st.info(notice, icon=":material/lock_clock:")
    with st.form("login", clear_on_submit=False):
        username = st.text_input("User name", max_chars=64, autocomplete="username")
        password = st.text_input(
            "Password", type="password", max_chars=1024, autocomplete="current-password"
        )
        submitted = st.form_submit_button("Log in", type="primary")
    if not submitted:
        st.caption("Ask your administrator for an account. Sessions end after a while unused.")
        return
    try:
        session = log_in(api_url, username, password, client_address=browser_address())
    except ApiError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    st.session_state[SESSION_KEY] = session
    st.rerun()
