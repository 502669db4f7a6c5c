"""The adherence calendar: one square per day of the period, coloured by how many readings the
patient took that day (grey: none), weeks as columns, so that missed days stand out at a
glance. Days are the clinician's local days (the zone the rest of the page shows)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd


def adherence_frame(
    measured_at: Iterable[datetime], *, days: int, now: datetime, tz: str = "UTC"
) -> pd.DataFrame:
    """Readings per local day for the ``days`` days up to ``now``: ``day`` (a date),
    ``readings``, ``weekday`` (Mon..Sun), ``week`` (the Monday of its week); every day of the
    period is present, with 0 when nothing came."""
    zone = ZoneInfo(tz)
    last = now.astimezone(zone).date()
    first = last - timedelta(days=days - 1)
    counts: dict[date, int] = {}
    for moment in measured_at:
        day = moment.astimezone(zone).date()
        if first <= day <= last:
            counts[day] = counts.get(day, 0) + 1
    span = [first + timedelta(days=n) for n in range(days)]
    return pd.DataFrame(
        {
            "day": span,
            "readings": [counts.get(day, 0) for day in span],
            "weekday": [day.strftime("%a") for day in span],
            "week": [day - timedelta(days=day.weekday()) for day in span],
        }
    )


def days_with_readings(frame: pd.DataFrame) -> int:
    return int((frame["readings"] > 0).sum())


def adherence_chart(frame: pd.DataFrame) -> alt.Chart:
    data = frame.assign(
        day=frame["day"].astype(str),
        week=frame["week"].astype(str),
        measured=frame["readings"].map(lambda n: "none" if n == 0 else "yes"),
    )
    return (
        alt.Chart(data, title="Days with readings")
        .mark_rect(cornerRadius=3, stroke="white", strokeWidth=2)
        .encode(
            x=alt.X("week:O", title="week of", axis=alt.Axis(labelAngle=0)),
            y=alt.Y(
                "weekday:O",
                title=None,
                sort=["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            ),
            color=alt.condition(
                alt.datum.readings > 0,
                alt.Color(
                    "readings:Q",
                    title="readings",
                    scale=alt.Scale(scheme="greens", domainMin=0),
                ),
                alt.value("#e0e0e0"),
            ),
            tooltip=[
                alt.Tooltip("day:N", title="day"),
                alt.Tooltip("readings:Q", title="readings"),
            ],
        )
        .properties(height=170)
    )
