"""Vital-sign charts: API records in, pandas frames, Altair charts out. No Streamlit, no I/O.

Times: the API gives UTC, and a chart keeps it: :func:`readings_frame` adds ``measured_utc``,
the instant as an ISO 8601 string ending in ``Z``, and :func:`vital_chart` draws it on a plain
(local) time scale whose domain is given as such strings too. The browser then shows axis and
tooltips in the viewer's own timezone, which Streamlit reports as ``st.context.timezone``.

Never give a temporal scale domain as epoch milliseconds: Vega-Lite compiles each domain value
to ``datetime(value)``, and Streamlit evaluates Vega expressions with ``vega-interpreter``,
whose ``datetime`` takes a lone number as a *year*. The domain then is an invalid date and every
point collapses onto the left edge with no x axis, while the spec looks right.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

import altair as alt
import pandas as pd

from carewatch_contract.metrics import Loinc, metric_for

#: Most severe first, as the API ranks them.
SEVERITIES: Final[tuple[str, ...]] = ("critical", "high", "medium", "low", "info")
SEVERITY_COLOURS: Final[Mapping[str, str]] = {
    "critical": "#b91c1c",
    "high": "#ea580c",
    "medium": "#ca8a04",
    "low": "#2563eb",
    "info": "#6b7280",
}
FLAGGED_COLOUR: Final = "#dc2626"
SERIES_COLOURS: Final[tuple[str, ...]] = ("#1d4ed8", "#0ea5e9", "#7c3aed", "#059669")
CHART_HEIGHT_PX: Final = 220

#: Short names for the metrics clinicians read most ("Systolic 192 mm[Hg] > 180").
SHORT_METRIC_NAMES: Final[Mapping[str, str]] = {
    Loinc.SYSTOLIC: "Systolic",
    Loinc.DIASTOLIC: "Diastolic",
    Loinc.MEAN_ARTERIAL_PRESSURE: "MAP",
    Loinc.HEART_RATE: "Heart rate",
    Loinc.SPO2: "SpO2",
    Loinc.BODY_WEIGHT: "Weight",
    Loinc.BODY_TEMPERATURE: "Temperature",
    Loinc.GLUCOSE: "Glucose",
    Loinc.RESPIRATORY_RATE: "Respiratory rate",
}
#: UCUM units shown differently to people; the others are shown as they are.
UNIT_DISPLAY: Final[Mapping[str, str]] = {"Cel": "°C", "[degF]": "°F", "[lb_av]": "lb"}

READINGS_FRAME_COLUMNS: Final[tuple[str, ...]] = (
    "reading_id",
    "loinc",
    "series",
    "value",
    "unit",
    "measured_at",
    "measured_utc",
    "flagged",
)
THRESHOLDS_FRAME_COLUMNS: Final[tuple[str, ...]] = (
    "metric",
    "series",
    "limit",
    "direction",
    "severity",
    "label",
)
#: d3 time formats, applied by the browser in the viewer's timezone.
_WHEN_FORMAT: Final = "%a %d %b %H:%M"
_DAY_FORMAT: Final = "%d %b"
#: At most about this many dated ticks on an x axis (one a day for a week).
_DAY_TICKS: Final = 8


@dataclass(frozen=True, slots=True)
class VitalPanel:
    """One chart of the patient page: the metrics drawn together and their unit."""

    key: str
    title: str
    loincs: tuple[str, ...]
    unit: str


#: The standard panels, in page order; blood pressure draws systolic and diastolic together.
VITAL_PANELS: Final[tuple[VitalPanel, ...]] = (
    VitalPanel("blood_pressure", "Blood pressure", (Loinc.SYSTOLIC, Loinc.DIASTOLIC), "mm[Hg]"),
    VitalPanel("spo2", "SpO2", (Loinc.SPO2,), "%"),
    VitalPanel("heart_rate", "Heart rate", (Loinc.HEART_RATE,), "/min"),
    VitalPanel("weight", "Weight", (Loinc.BODY_WEIGHT,), "kg"),
    VitalPanel("temperature", "Temperature", (Loinc.BODY_TEMPERATURE,), "Cel"),
    VitalPanel("glucose", "Glucose", (Loinc.GLUCOSE,), "mg/dL"),
)


def short_metric_name(loinc: str) -> str:
    """What a clinician calls the metric: "Systolic", "SpO2"; else its display name or code."""
    if loinc in SHORT_METRIC_NAMES:
        return SHORT_METRIC_NAMES[loinc]
    metric = metric_for(loinc)
    return metric.display if metric else loinc


def display_unit(unit: str | None) -> str:
    """A UCUM unit as shown to people ("Cel" -> "°C"); ``None`` -> ``""``."""
    if not unit:
        return ""
    return UNIT_DISPLAY.get(unit, unit)


def format_value(value: float | None) -> str:
    """A reading's value: whole numbers without decimals, others to one decimal; "–" for none."""
    if value is None:
        return "–"
    number = float(value)
    if number.is_integer():
        return str(int(number))
    return f"{number:.1f}"


def panels_for(loincs: Iterable[str]) -> list[VitalPanel]:
    """The panels to draw for metrics that have readings: standard panels first, in their
    order, then one panel per other metric (e.g. mean arterial pressure, BMI)."""
    present = set(loincs)
    panels = [panel for panel in VITAL_PANELS if present.intersection(panel.loincs)]
    covered = {loinc for panel in VITAL_PANELS for loinc in panel.loincs}
    for loinc in sorted(present - covered):
        metric = metric_for(loinc)
        panels.append(
            VitalPanel(
                key=f"metric-{loinc}",
                title=metric.display if metric else loinc,
                loincs=(loinc,),
                unit=metric.unit if metric else "",
            )
        )
    return panels


def readings_frame(
    readings: Iterable[Mapping[str, Any]],
    *,
    flagged_reading_ids: Collection[str] = (),
) -> pd.DataFrame:
    """The API's readings as a frame of :data:`READINGS_FRAME_COLUMNS`, oldest first.

    ``measured_at`` stays aware (UTC); ``measured_utc`` is the same instant as an ISO 8601
    string in UTC ("2026-11-22T07:00:00.000Z"), what :func:`vital_chart` draws; ``flagged``
    says whether the reading is one of ``flagged_reading_ids`` (readings linked to a flag).
    """
    records = [
        {
            "reading_id": str(reading["reading_id"]),
            "loinc": str(reading["loinc"]),
            "value": float(reading["value"]),
            "unit": reading.get("unit"),
            "measured_at": reading["measured_at"],
        }
        for reading in readings
    ]
    if not records:
        return _empty_readings_frame()
    frame = pd.DataFrame.from_records(records)
    measured_at = pd.to_datetime(frame["measured_at"], utc=True, format="ISO8601")
    flagged = {str(reading_id) for reading_id in flagged_reading_ids}
    frame = frame.assign(
        series=frame["loinc"].map(short_metric_name),
        measured_at=measured_at,
        measured_utc=measured_at.map(_iso_utc),
        flagged=frame["reading_id"].isin(flagged),
    )
    frame = frame.sort_values(["measured_at", "reading_id"], kind="stable")
    return frame.loc[:, list(READINGS_FRAME_COLUMNS)].reset_index(drop=True)


def _empty_readings_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reading_id": pd.Series(dtype=object),
            "loinc": pd.Series(dtype=object),
            "series": pd.Series(dtype=object),
            "value": pd.Series(dtype="float64"),
            "unit": pd.Series(dtype=object),
            "measured_at": pd.Series(dtype="datetime64[ns, UTC]"),
            "measured_utc": pd.Series(dtype=object),
            "flagged": pd.Series(dtype=bool),
        }
    )


def _iso_utc(moment: datetime) -> str:
    """An aware time as the ISO 8601 string every browser parses as that instant:
    "2026-11-22T07:00:00.000Z" (UTC, milliseconds, ``Z``)."""
    if moment.tzinfo is None:
        raise ValueError(f"a chart time must be timezone-aware, not {moment!r}")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def applicable_threshold_lines(
    lines: Iterable[Mapping[str, Any]], spo2_scale: int
) -> list[Mapping[str, Any]]:
    """The threshold lines that apply to a patient on NEWS2 SpO2 scale ``spo2_scale``: those
    of rules for every patient (``spo2_scale`` null or absent) and those of the patient's scale.
    """
    return [
        line
        for line in lines
        if line.get("spo2_scale") is None or int(line["spo2_scale"]) == int(spo2_scale)
    ]


def thresholds_frame(lines: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """The API's threshold lines as a frame of :data:`THRESHOLDS_FRAME_COLUMNS`.

    A limit that several rules share at the same severity is drawn once.
    """
    records = [
        {
            "metric": str(line["metric"]),
            "series": short_metric_name(str(line["metric"])),
            "limit": float(line["limit"]),
            "direction": str(line.get("direction", "")),
            "severity": str(line.get("severity", "info")),
            "label": str(line.get("label", "")),
        }
        for line in lines
    ]
    if not records:
        return pd.DataFrame(
            {
                column: pd.Series(dtype="float64" if column == "limit" else object)
                for column in THRESHOLDS_FRAME_COLUMNS
            }
        )
    frame = pd.DataFrame.from_records(records, columns=list(THRESHOLDS_FRAME_COLUMNS))
    return frame.drop_duplicates(["metric", "limit", "severity"]).reset_index(drop=True)


def vital_chart(
    readings: pd.DataFrame,
    thresholds: pd.DataFrame,
    *,
    title: str,
    unit: str,
    window: tuple[datetime, datetime] | None = None,
    height: int = CHART_HEIGHT_PX,
) -> alt.LayerChart:
    """One vital's chart: readings as lines with points (one colour per series), thresholds
    as dashed rules coloured by severity with their labels, flagged readings as red points.

    ``readings``: a frame of :func:`readings_frame` (only this panel's metrics).
    ``thresholds``: a frame of :func:`thresholds_frame` (only this panel's metrics).
    ``window``: the period shown, as aware times (``start``, ``end``); ``None`` fits the
    readings. Times show in the viewer's (browser's) timezone. Layers are named ``readings``,
    ``thresholds``, ``threshold_labels`` and ``flagged``; the last three only when they have
    rows.
    """
    series = _series_order(readings)
    if window is not None:
        # ISO strings, never epoch milliseconds: see the module docstring.
        x_scale = alt.Scale(type="time", domain=[_iso_utc(moment) for moment in window])
        span = window[1] - window[0]
    else:
        x_scale = alt.Scale(type="time")
        span = readings["measured_at"].max() - readings["measured_at"].min()
    span_days = span.total_seconds() / 86_400 if pd.notna(span) else 0.0
    x = alt.X(
        "measured_utc:T",
        title=None,
        scale=x_scale,
        axis=alt.Axis(
            format=_DAY_FORMAT,
            tickCount=_date_ticks(span_days),
            labelOverlap=True,
            grid=False,
        ),
    )
    y = alt.Y("value:Q", title=display_unit(unit) or None, scale=alt.Scale(zero=False))
    tooltip = [
        alt.Tooltip("measured_utc:T", title="Measured", format=_WHEN_FORMAT),
        alt.Tooltip("series:N", title="Metric"),
        alt.Tooltip("value:Q", title=display_unit(unit) or "Value"),
    ]
    readings_layer = (
        alt.Chart(readings)
        .mark_line(point=alt.OverlayMarkDef(size=30), strokeWidth=1.5)
        .encode(
            x=x,
            y=y,
            color=alt.Color(
                "series:N",
                scale=alt.Scale(domain=series, range=list(SERIES_COLOURS[: max(len(series), 1)])),
                legend=alt.Legend(title=None, orient="top") if len(series) > 1 else None,
            ),
            tooltip=tooltip,
        )
        .properties(name="readings")
    )
    layers: list[alt.Chart] = [readings_layer]

    if not thresholds.empty:
        severities = [s for s in SEVERITIES if s in set(thresholds["severity"])]
        severity_colour = alt.Scale(
            domain=severities, range=[SEVERITY_COLOURS[s] for s in severities]
        )
        rules = (
            alt.Chart(thresholds)
            .mark_rule(strokeDash=[6, 4], strokeWidth=1.5)
            .encode(
                y=alt.Y("limit:Q"),
                color=alt.Color(
                    "severity:N",
                    scale=severity_colour,
                    legend=alt.Legend(title="Threshold", orient="top"),
                ),
                tooltip=[
                    alt.Tooltip("label:N", title="Threshold"),
                    alt.Tooltip("severity:N", title="Severity"),
                    alt.Tooltip("limit:Q", title="Limit"),
                ],
            )
            .properties(name="thresholds")
        )
        labels = (
            alt.Chart(thresholds)
            .mark_text(align="right", baseline="bottom", dx=-2, dy=-2, fontSize=10)
            .encode(
                x=alt.value("width"),
                y=alt.Y("limit:Q"),
                text=alt.Text("label:N"),
                color=alt.Color("severity:N", scale=severity_colour, legend=None),
            )
            .properties(name="threshold_labels")
        )
        layers.extend([rules, labels])

    flagged = readings.loc[readings["flagged"]]
    if not flagged.empty:
        layers.append(
            alt.Chart(flagged)
            .mark_point(
                filled=True,
                size=110,
                color=FLAGGED_COLOUR,
                opacity=1,
                stroke="white",
                strokeWidth=1,
            )
            .encode(x=x, y=y, tooltip=tooltip)
            .properties(name="flagged")
        )

    return (
        alt.layer(*layers).resolve_scale(color="independent").properties(title=title, height=height)
    )


def _date_ticks(span_days: float) -> alt.TimeIntervalStep:
    """About :data:`_DAY_TICKS` ticks at local midnights: every day (or few days) up to two
    weeks, else every week or few weeks (counted from the epoch, so evenly spaced)."""
    if span_days <= 14:
        return alt.TimeIntervalStep(interval="day", step=max(1, math.ceil(span_days / _DAY_TICKS)))
    return alt.TimeIntervalStep(interval="week", step=math.ceil(span_days / 7 / _DAY_TICKS))


def _series_order(readings: pd.DataFrame) -> list[str]:
    """The series in ``readings`` in panel order (systolic before diastolic), so that a
    series keeps its colour whatever order the readings come in."""
    canonical = [loinc for panel in VITAL_PANELS for loinc in panel.loincs]
    loincs = sorted(
        set(readings["loinc"]),
        key=lambda loinc: (canonical.index(loinc) if loinc in canonical else len(canonical), loinc),
    )
    return [short_metric_name(loinc) for loinc in loincs]
