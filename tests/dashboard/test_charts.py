"""The vital charts' Vega-Lite specs, without a browser.

The patient page once drew every point of a week at the left edge with no x axis, from a spec
that looked right: the window domain was epoch milliseconds. Vega-Lite compiles a temporal
domain value to ``datetime(value)`` and Streamlit evaluates it with ``vega-interpreter``, whose
``datetime`` reads a lone number as a year, so the domain was an invalid date. These tests pin
what the fix relies on: UTC ISO strings for the data and for the domain, on a plain time scale.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from dashboard import charts

WEEK_START = datetime(2026, 11, 22, 7, 30, tzinfo=UTC)
WEEK_END = WEEK_START + timedelta(days=7)


def week_of_heart_rates() -> pd.DataFrame:
    """Twice a day from 2026-11-22 to 2026-11-29, as the API sends them; r3 is flagged."""
    return charts.readings_frame(
        [
            {
                "reading_id": f"r{index}",
                "loinc": "8867-4",
                "value": 60 + index,
                "unit": "/min",
                "measured_at": (WEEK_START + timedelta(hours=12 * index)).isoformat(),
            }
            for index in range(15)
        ],
        flagged_reading_ids={"r3"},
    )


def high_heart_rate() -> pd.DataFrame:
    return charts.thresholds_frame(
        [{"metric": "8867-4", "limit": 110, "severity": "high", "label": "HR > 110"}]
    )


def x_encodings(spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(layer name, x encoding) of every layer that positions marks by a field on x."""
    for layer in spec.get("layer", [spec]):
        x = layer.get("encoding", {}).get("x")
        if x is not None and "field" in x:
            yield layer.get("name", ""), x


def test_every_layer_draws_utc_iso_strings_on_a_time_scale_with_an_iso_domain() -> None:
    chart = charts.vital_chart(
        week_of_heart_rates(),
        high_heart_rate(),
        title="Heart rate",
        unit="/min",
        window=(WEEK_START, WEEK_END),
    )
    spec = chart.to_dict()

    encodings = dict(x_encodings(spec))
    assert set(encodings) == {"readings", "flagged"}  # rules and labels span the width
    for name, x in encodings.items():
        assert (x["field"], x["type"]) == ("measured_utc", "temporal"), name
        # A plain (local) time scale: the browser shows the viewer's own timezone.
        assert x["scale"]["type"] == "time", name
        # Strings, never epoch numbers: Streamlit's Vega would read a number as a year.
        assert x["scale"]["domain"] == ["2026-11-22T07:30:00.000Z", "2026-11-29T07:30:00.000Z"]
        assert x["axis"]["tickCount"] == {"interval": "day", "step": 1}
    for layer in spec["layer"]:
        if layer["name"] in {"readings", "flagged"}:
            rows = spec["datasets"][layer["data"]["name"]]
            times = [datetime.fromisoformat(row["measured_utc"]) for row in rows]
            assert all(row["measured_utc"].endswith("Z") for row in rows)
            assert all(WEEK_START <= moment <= WEEK_END for moment in times)
    readings_rows = spec["datasets"][spec["layer"][0]["data"]["name"]]
    assert len({row["measured_utc"] for row in readings_rows}) == 15  # spread, not stacked
    tooltip = spec["layer"][0]["encoding"]["tooltip"][0]
    assert (tooltip["field"], tooltip["type"]) == ("measured_utc", "temporal")
    assert spec["layer"][-1]["name"] == "flagged"  # red points on top


@pytest.mark.parametrize(
    ("days", "tick_count"),
    [
        (7, {"interval": "day", "step": 1}),
        (30, {"interval": "week", "step": 1}),
        (90, {"interval": "week", "step": 2}),
    ],
)
def test_the_period_sets_the_domain_and_dated_ticks(days: int, tick_count: dict[str, Any]) -> None:
    chart = charts.vital_chart(
        week_of_heart_rates(),
        high_heart_rate(),
        title="Heart rate",
        unit="/min",
        window=(WEEK_END - timedelta(days=days), WEEK_END),
    )

    x = dict(x_encodings(chart.to_dict()))["readings"]
    start = (WEEK_END - timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    assert x["scale"]["domain"] == [start, "2026-11-29T07:30:00.000Z"]
    assert x["axis"]["tickCount"] == tick_count
    assert x["axis"]["format"] == "%d %b"


def test_without_a_window_the_scale_fits_the_readings() -> None:
    chart = charts.vital_chart(
        week_of_heart_rates(), charts.thresholds_frame([]), title="Heart rate", unit="/min"
    )

    x = dict(x_encodings(chart.to_dict()))["readings"]
    assert x["scale"] == {"type": "time"}


def test_a_window_must_be_timezone_aware() -> None:
    naive = WEEK_START.replace(tzinfo=None)
    with pytest.raises(ValueError, match="timezone-aware"):
        charts.vital_chart(
            week_of_heart_rates(),
            high_heart_rate(),
            title="Heart rate",
            unit="/min",
            window=(naive, naive + timedelta(days=7)),
        )


def test_readings_keep_the_instant_in_utc_whatever_offset_the_api_used() -> None:
    frame = charts.readings_frame(
        [
            {
                "reading_id": "r1",
                "loinc": "8867-4",
                "value": 72,
                "unit": "/min",
                "measured_at": "2026-11-22T08:30:15.123456+01:00",
            }
        ]
    )

    assert frame["measured_utc"].tolist() == ["2026-11-22T07:30:15.123Z"]
    assert frame["measured_at"].iloc[0] == pd.Timestamp("2026-11-22T07:30:15.123456Z")
    assert tuple(frame.columns) == charts.READINGS_FRAME_COLUMNS
    assert tuple(charts.readings_frame([]).columns) == charts.READINGS_FRAME_COLUMNS


@pytest.mark.parametrize(
    ("patient_scale", "rule_ids"),
    [(1, ["everyone", "unset", "scale-1"]), (2, ["everyone", "unset", "scale-2"])],
)
def test_threshold_lines_apply_to_everyone_or_to_the_patients_spo2_scale(
    patient_scale: int, rule_ids: list[str]
) -> None:
    lines = [
        {"rule_id": "everyone", "metric": "59408-5", "limit": 85, "spo2_scale": None},
        {"rule_id": "unset", "metric": "59408-5", "limit": 80},
        {"rule_id": "scale-1", "metric": "59408-5", "limit": 94, "spo2_scale": 1},
        {"rule_id": "scale-2", "metric": "59408-5", "limit": 88, "spo2_scale": 2},
    ]

    applicable = charts.applicable_threshold_lines(lines, patient_scale)

    assert [line["rule_id"] for line in applicable] == rule_ids


def test_the_adherence_calendar_counts_local_days_and_keeps_the_empty_ones() -> None:
    from dashboard.adherence_chart import adherence_chart, adherence_frame, days_with_readings

    now = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
    moments = [
        datetime(2026, 11, 29, 8, 0, tzinfo=UTC),
        datetime(2026, 11, 29, 9, 0, tzinfo=UTC),
        # 03:30 UTC on the 27th is still the 26th in New York
        datetime(2026, 11, 27, 3, 30, tzinfo=UTC),
        datetime(2026, 10, 1, 9, 0, tzinfo=UTC),  # before the period: not counted
    ]
    frame = adherence_frame(moments, days=7, now=now, tz="America/New_York")
    assert len(frame) == 7 and str(frame["day"].iloc[-1]) == "2026-11-29"
    counts = dict(zip(frame["day"].astype(str), frame["readings"], strict=True))
    assert counts["2026-11-29"] == 2 and counts["2026-11-26"] == 1 and counts["2026-11-27"] == 0
    assert days_with_readings(frame) == 2
    assert set(frame["weekday"]) == {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"}
    assert all(week.weekday() == 0 for week in frame["week"])  # weeks start on Monday
    spec = adherence_chart(frame).to_dict()
    assert spec["mark"]["type"] == "rect" and spec["title"] == "Days with readings"
