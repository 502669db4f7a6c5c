"""Blood-pressure stage from weekly averages (ACC/AHA 2017), at each stage's edges."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from analytics.bp_stage import DIASTOLIC, SYSTOLIC, stage, weekly_stages

MONDAY = datetime(2026, 11, 23, 7, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("systolic", "diastolic", "expected"),
    [
        (119.9, 79.9, "normal"),
        (120, 79, "elevated"),
        (129.9, 79.9, "elevated"),
        (130, 70, "stage 1"),
        (119, 80, "stage 1"),
        (139.9, 89.9, "stage 1"),
        (140, 70, "stage 2"),
        (110, 90, "stage 2"),
    ],
)
def test_stage_at_each_edge(systolic: float, diastolic: float, expected: str) -> None:
    assert stage(systolic, diastolic) == expected


def pairs(*rows: tuple[float, float, float], patient_id: str = "pt-1") -> pd.DataFrame:
    """(hours after Monday 07:00, systolic, diastolic) measurements."""
    records = []
    for hours, sbp, dbp in rows:
        at = MONDAY + timedelta(hours=hours)
        records += [
            {"patient_id": patient_id, "loinc": SYSTOLIC, "value": sbp, "measured_at": at},
            {"patient_id": patient_id, "loinc": DIASTOLIC, "value": dbp, "measured_at": at},
        ]
    return pd.DataFrame(records)


def test_a_week_is_staged_from_its_average_not_from_one_reading() -> None:
    # 150/95 once, then 126/76 and 128/78: the mean 134.7/83 is stage 1, not stage 2
    result = weekly_stages(pairs((0, 150, 95), (24, 126, 76), (48, 128, 78)))
    assert result[["systolic", "diastolic", "readings", "days", "stage"]].values.tolist() == [
        [134.7, 83.0, 3, 3, "stage 1"]
    ]
    assert result.loc[0, "week_start"] == pd.Timestamp("2026-11-23", tz="UTC")


def test_two_readings_on_one_day_are_not_enough_to_stage() -> None:
    result = weekly_stages(pairs((0, 150, 95), (1, 152, 96)))
    assert result.loc[0, "stage"] is None
    assert result.loc[0, "days"] == 1


def test_weeks_and_patients_are_staged_apart() -> None:
    frame = pd.concat(
        [
            pairs((0, 118, 70), (24, 116, 72), (24 * 7, 142, 88), (24 * 8, 144, 86)),
            pairs((0, 125, 75), (24, 127, 77), patient_id="pt-2"),
        ]
    )
    result = weekly_stages(frame)
    assert list(zip(result["patient_id"], result["stage"], strict=True)) == [
        ("pt-1", "normal"),
        ("pt-1", "stage 2"),
        ("pt-2", "elevated"),
    ]
