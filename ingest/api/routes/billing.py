"""The monthly RPM billing evidence of the caller's patients, computed from stored readings and
logged call time (:mod:`analytics.billing`), never typed in: JSON, or CSV for the billing
office. Care-team leads and admins; audited."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd
import psycopg
from fastapi import APIRouter, HTTPException, Query, status
from fastapi.responses import Response

from analytics.billing import BillingInputError, billing_evidence, evidence_csv
from ingest.api.deps import Caller, CallerDep, ConnDep, SettingsDep, audited, require_permission

router = APIRouter(prefix="/api/v1/billing", tags=["billing"])

MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


def evidence_inputs(
    conn: psycopg.Connection, caller: Caller, *, first_day: date, tz: str
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Episodes, one reading per patient and local day, and care time of the caller's
    patients, from the earliest period the month's report can need."""
    ids = sorted(caller.patient_ids) if caller.patient_ids is not None else None
    episodes = pd.DataFrame(
        conn.execute(
            "SELECT patient_id, monitoring_started_on FROM patients"
            " WHERE %(ids)s::text[] IS NULL OR patient_id = ANY(%(ids)s::text[])",
            {"ids": ids},
        ).fetchall(),
        columns=["patient_id", "episode_start"],
    )
    # A period ending in the month began at most 30 days before it; nothing after the month
    # counts toward it.
    zone = ZoneInfo(tz)
    since = datetime.combine(first_day, datetime.min.time(), zone) - pd.Timedelta(days=31)
    next_month = (first_day + pd.Timedelta(days=32)).replace(day=1)
    until = datetime.combine(next_month, datetime.min.time(), zone)
    readings = pd.DataFrame(
        conn.execute(
            "SELECT DISTINCT ON (patient_id, (measured_at AT TIME ZONE %(tz)s)::date)"
            " patient_id, measured_at FROM readings WHERE measured_at >= %(since)s"
            " AND measured_at < %(until)s"
            " AND (%(ids)s::text[] IS NULL OR patient_id = ANY(%(ids)s::text[]))"
            " ORDER BY patient_id, (measured_at AT TIME ZONE %(tz)s)::date, measured_at",
            {"tz": tz, "since": since, "until": until, "ids": ids},
        ).fetchall(),
        columns=["patient_id", "measured_at"],
    )
    care = pd.DataFrame(
        conn.execute(
            "SELECT patient_id, started_at, minutes::float8, live FROM care_time"
            " WHERE started_at >= %(since)s AND started_at < %(until)s"
            " AND (%(ids)s::text[] IS NULL OR patient_id = ANY(%(ids)s::text[]))",
            {"since": since, "until": until, "ids": ids},
        ).fetchall(),
        columns=["patient_id", "started_at", "minutes", "live"],
    )
    readings["measured_at"] = pd.to_datetime(readings["measured_at"], utc=True)
    care["started_at"] = pd.to_datetime(care["started_at"], utc=True)
    care["live"] = care["live"].astype(bool)
    return episodes, readings, care


@router.get("")
def evidence(
    conn: ConnDep,
    caller: CallerDep,
    settings: SettingsDep,
    month: Annotated[str, Query(description="YYYY-MM")],
    tz: Annotated[str | None, Query(max_length=64)] = None,
    format: Literal["json", "csv"] = "json",
) -> Any:
    """Per patient and 30-day period ending in ``month``: device days and code, management
    minutes and live interactions of the month and their codes, and why a code is missing."""
    resource = f"billing/{month}"
    require_permission(conn, caller, "billing", action="read.billing", resource=resource)
    matched = MONTH.fullmatch(month)
    if matched is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, "month is YYYY-MM")
    zone = tz or settings.clinic_tz
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, f"unknown time zone {zone!r}"
        ) from None
    first_day = date(int(matched[1]), int(matched[2]), 1)
    episodes, readings, care = evidence_inputs(conn, caller, first_day=first_day, tz=zone)
    try:
        frame = billing_evidence(episodes, readings, care, month=first_day, tz=zone)
    except BillingInputError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audited(conn, caller, action="read.billing", resource=resource, outcome="ok")
    if format == "csv":
        return Response(
            evidence_csv(frame),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="rpm-evidence-{month}.csv"'},
        )
    rows = frame.astype(object).where(frame.notna(), None).to_dict("records")
    return {"month": month, "time_zone": zone, "rows": rows}
