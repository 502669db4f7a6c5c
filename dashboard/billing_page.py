"""Billing evidence, for care-team leads: per patient and period, the device days and the
management minutes of a month with the codes they earn and why a code is missing, computed by
the API from readings and logged calls; a CSV for the billing office."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any, Final

import pandas as pd
import streamlit as st

from dashboard.api_client import ApiConnector

MONTHS_BACK: Final = 12
COLUMNS: Final = {
    "patient_id": "Patient",
    "period_start": "Period from",
    "period_end": "to",
    "device_days": "Device days",
    "device_code": "Device code",
    "management_minutes": "Minutes",
    "live_interactions": "Live",
    "management_codes": "Management codes",
    "reason": "Why not (yet)",
}


def recent_months(today: date, count: int = MONTHS_BACK) -> list[str]:
    """``YYYY-MM`` of this month and the ``count - 1`` before it, newest first."""
    months = []
    year, month = today.year, today.month
    for _ in range(count):
        months.append(f"{year:04d}-{month:02d}")
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
    return months


def summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many rows earn each device code and how many a management code."""
    return {
        "99454": sum(1 for r in rows if r.get("device_code") == "99454"),
        "99445": sum(1 for r in rows if r.get("device_code") == "99445"),
        "management": sum(1 for r in rows if r.get("management_codes")),
    }


def render(connect: ApiConnector) -> None:
    st.title("Billing evidence")
    month = st.selectbox("Month", recent_months(datetime.now(UTC).date()), key="billing_month")
    with connect() as api:
        evidence = api.billing(month)
        csv_text = api.billing_csv(month)
        names = {str(p["patient_id"]): str(p["display_name"]) for p in api.patients()}
    rows = evidence["rows"]
    counts = summary(rows)
    first, second, third = st.columns(3)
    first.metric("99454 (16+ device days)", counts["99454"], border=True)
    second.metric("99445 (2-15 device days)", counts["99445"], border=True)
    third.metric("Management codes", counts["management"], border=True)
    st.caption(
        f"Days and months in {evidence['time_zone']}. Device days count per 30-day period from "
        "each patient's monitoring start; minutes are logged call time in the calendar month, "
        "with a live interaction (an answered call). Nothing here is typed in."
    )
    if not rows:
        st.info("No patients in your care teams.")
        return
    table = pd.DataFrame(rows)[list(COLUMNS)].rename(columns=COLUMNS)
    table.insert(1, "Name", [names.get(str(r["patient_id"]), "") for r in rows])
    st.dataframe(table, hide_index=True, use_container_width=True)
    st.download_button(
        "Download CSV",
        csv_text,
        file_name=f"rpm-evidence-{month}.csv",
        mime="text/csv",
        icon=":material/download:",
        key="billing_csv",
    )
