"""Blood-pressure stage from weekly averages (ACC/AHA 2017): information, never an alert.

ACC/AHA 2017 (Whelton et al., Hypertension 2018;71:1269) stages blood pressure from the
average of at least two readings on at least two occasions, not from one reading:

| stage | systolic | | diastolic |
|---|---|---|---|
| normal | < 120 | and | < 80 |
| elevated | 120-129 | and | < 80 |
| stage 1 | 130-139 | or | 80-89 |
| stage 2 | >= 140 | or | >= 90 |

A crisis (> 180 and/or > 120) is a threshold rule's business: it alerts on one reading.
:func:`weekly_stages` gives, per patient and week, the averages and the stage, for the patient
page. Pure: a frame in, a frame out.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pandas as pd

SYSTOLIC: Final = "8480-6"
DIASTOLIC: Final = "8462-4"
STAGES: Final[tuple[str, ...]] = ("normal", "elevated", "stage 1", "stage 2")
#: ACC/AHA: at least two readings on at least two occasions (days, here).
MIN_READINGS: Final = 2
MIN_DAYS: Final = 2


def stage(systolic: float, diastolic: float) -> str:
    """The ACC/AHA 2017 stage of one pair of (average) pressures."""
    if systolic >= 140 or diastolic >= 90:
        return "stage 2"
    if systolic >= 130 or diastolic >= 80:
        return "stage 1"
    if systolic >= 120:
        return "elevated"
    return "normal"


def weekly_stages(readings: pd.DataFrame) -> pd.DataFrame:
    """Per patient and week (Monday to Sunday, UTC): mean systolic and diastolic, the number
    of readings and of days they came from, and the stage (None with fewer than two readings
    on two days). Columns: patient_id, week_start, systolic, diastolic, readings, days, stage.
    Readings: ``patient_id``, ``loinc``, ``value``, ``measured_at`` (timezone-aware), each
    reading id once when a ``reading_id`` column is given."""
    frame = readings
    if "reading_id" in frame.columns:
        frame = frame.drop_duplicates("reading_id")
    frame = frame.loc[frame["loinc"].isin((SYSTOLIC, DIASTOLIC))]
    columns = ["patient_id", "week_start", "systolic", "diastolic", "readings", "days", "stage"]
    if frame.empty:
        return pd.DataFrame(columns=columns)
    at = pd.to_datetime(frame["measured_at"], utc=True)
    day = at.dt.floor("D")
    week_start = day - pd.to_timedelta(day.dt.weekday, unit="D")
    keyed = pd.DataFrame(
        {
            "patient_id": frame["patient_id"].astype(str).to_numpy(),
            "week_start": week_start.to_numpy(),
            "day": day.to_numpy(),
            "loinc": frame["loinc"].to_numpy(),
            "value": frame["value"].astype("float64").to_numpy(),
        }
    )
    grouped = keyed.groupby(["patient_id", "week_start", "loinc"])
    means = grouped["value"].mean().unstack("loinc")
    systolic_rows = keyed.loc[keyed["loinc"] == SYSTOLIC].groupby(["patient_id", "week_start"])
    result = pd.DataFrame(
        {
            "systolic": means.get(SYSTOLIC),
            "diastolic": means.get(DIASTOLIC),
            "readings": systolic_rows.size(),
            "days": systolic_rows["day"].nunique(),
        }
    ).reset_index()
    result["readings"] = result["readings"].fillna(0).astype("int64")
    result["days"] = result["days"].fillna(0).astype("int64")
    enough = (
        (result["readings"] >= MIN_READINGS)
        & (result["days"] >= MIN_DAYS)
        & result["systolic"].notna()
        & result["diastolic"].notna()
    )
    result["stage"] = [
        stage(s, d) if ok else None
        for s, d, ok in zip(result["systolic"], result["diastolic"], enough, strict=True)
    ]
    result["systolic"] = np.round(result["systolic"], 1)
    result["diastolic"] = np.round(result["diastolic"], 1)
    return result.loc[:, columns].sort_values(["patient_id", "week_start"]).reset_index(drop=True)
