"""Home NEWS2 (analytics.news2): the chart at every band edge, sets, partial scores, determinism.

The chart is written out here a second time, from ../shared/CLINICAL.md (RCP NEWS2 2017), and
checked through the vectorised scorer and its scalar twin. A row-by-row reference built from
the scalar helpers checks the whole frame on random readings.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.news2 import (
    BAND_RESPONSES,
    BANDS,
    CONSCIOUSNESS_LOINC,
    LOINC_TO_PARAMETER,
    PARAMETERS,
    SET_COLUMNS,
    ChartRow,
    chart_row,
    empty_sets,
    response_band,
    score_parameter,
    score_parameter_values,
    score_sets,
)

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)
LOINC_OF: dict[str, str] = {name: loinc for loinc, name in LOINC_TO_PARAMETER.items()}
WEIGHT_LOINC = "29463-7"  # not a NEWS2 parameter


def reading(
    parameter_or_loinc: str,
    value: float,
    *,
    minutes: float = 0,
    patient: str = "patient-1",
    reading_id: str | None = None,
) -> dict[str, Any]:
    loinc = LOINC_OF.get(parameter_or_loinc, parameter_or_loinc)
    return {
        "reading_id": reading_id or f"{patient}/{loinc}/{minutes}",
        "patient_id": patient,
        "loinc": loinc,
        "value": float(value),
        "measured_at": T0 + timedelta(minutes=minutes),
    }


def readings_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    frame = pd.DataFrame(
        rows, columns=["reading_id", "patient_id", "loinc", "value", "measured_at"]
    )
    return frame.astype(
        {
            "reading_id": object,
            "patient_id": object,
            "loinc": object,
            "value": "float64",
            "measured_at": "datetime64[ns, UTC]",
        }
    )


def patients_frame(*rows: tuple[str, Any, Any]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["patient_id", "spo2_scale", "on_oxygen"])


def one_set(rows: list[dict[str, Any]], patients: pd.DataFrame | None = None) -> dict[str, Any]:
    result = score_sets(readings_frame(rows), patients)
    assert len(result) == 1
    record: dict[str, Any] = result.to_dict("records")[0]
    return record


def vectorised_score(parameter: str, value: float, *, spo2_scale: int, on_oxygen: bool) -> int:
    """The sub-score one reading gets through score_sets (the whole vectorised path)."""
    patients = patients_frame(("patient-1", spo2_scale, on_oxygen))
    record = one_set([reading(parameter, value)], patients)
    assert record["parameters"] == tuple(
        name for name in PARAMETERS if name in {parameter, "air_or_oxygen"}
    )
    assert record["values"][parameter] == value
    score: int = record["sub_scores"][parameter]
    return score


# --- the chart at every band edge ---------------------------------------------------------------

SCALE_2_ON_AIR: list[tuple[float, int]] = [
    (83, 3),
    (84, 2),
    (85, 2),
    (86, 1),
    (87, 1),
    (88, 0),
    (92, 0),
    (93, 0),
]
SCALE_2_ON_AIR += [(94, 0), (95, 0), (96, 0), (97, 0), (100, 0)]
SCALE_2_ON_OXYGEN: list[tuple[float, int]] = [
    (83, 3),
    (84, 2),
    (85, 2),
    (86, 1),
    (87, 1),
    (88, 0),
    (92, 0),
    (93, 1),
]
SCALE_2_ON_OXYGEN += [(94, 1), (95, 2), (96, 2), (97, 3), (100, 3)]
CHART_EDGES: list[tuple[str, int, bool, list[tuple[float, int]]]] = [
    # (parameter, spo2_scale, on_oxygen, [(value, score), ...]), from ../shared/CLINICAL.md
    ("respiration_rate", 1, False, [(8, 3), (9, 1), (11, 1), (12, 0), (20, 0), (21, 2)]),
    ("respiration_rate", 1, False, [(24, 2), (25, 3), (0, 3), (60, 3)]),
    ("spo2", 1, False, [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]),
    ("spo2", 1, True, [(91, 3), (92, 2), (93, 2), (94, 1), (95, 1), (96, 0), (100, 0)]),
    ("spo2", 2, False, SCALE_2_ON_AIR),
    ("spo2", 2, True, SCALE_2_ON_OXYGEN),
    ("systolic", 1, False, [(90, 3), (91, 2), (100, 2), (101, 1), (110, 1), (111, 0)]),
    ("systolic", 1, False, [(219, 0), (220, 3), (60, 3), (260, 3)]),
    ("pulse", 1, False, [(40, 3), (41, 1), (50, 1), (51, 0), (90, 0), (91, 1), (110, 1)]),
    ("pulse", 1, False, [(111, 2), (130, 2), (131, 3), (30, 3), (200, 3)]),
    ("temperature", 1, False, [(35.0, 3), (35.1, 1), (36.0, 1), (36.1, 0), (38.0, 0)]),
    ("temperature", 1, False, [(38.1, 1), (39.0, 1), (39.1, 2), (34.0, 3), (41.0, 2)]),
    ("consciousness", 1, False, [(0, 0), (1, 3), (2, 3), (3, 3), (4, 3)]),
]
EDGE_CASES = [
    pytest.param(
        parameter, scale, oxygen, value, score, id=f"{parameter}-s{scale}-o{oxygen}-{value}"
    )
    for parameter, scale, oxygen, cases in CHART_EDGES
    for value, score in cases
]


@pytest.mark.parametrize(("parameter", "spo2_scale", "on_oxygen", "value", "expected"), EDGE_CASES)
def test_every_band_edge_scores_as_the_chart_says(
    parameter: str, spo2_scale: int, on_oxygen: bool, value: float, expected: int
) -> None:
    assert (
        vectorised_score(parameter, value, spo2_scale=spo2_scale, on_oxygen=on_oxygen) == expected
    )
    assert score_parameter(parameter, value, spo2_scale=spo2_scale, on_oxygen=on_oxygen) == expected


@pytest.mark.parametrize(("on_oxygen", "expected"), [(False, 0), (True, 2)])
def test_air_or_oxygen_comes_from_the_patient_record(on_oxygen: bool, expected: int) -> None:
    record = one_set([reading("pulse", 70)], patients_frame(("patient-1", 1, on_oxygen)))
    assert record["sub_scores"]["air_or_oxygen"] == expected
    assert record["values"]["air_or_oxygen"] == (1.0 if on_oxygen else 0.0)
    assert score_parameter("air_or_oxygen", 1.0 if on_oxygen else 0.0) == expected


@pytest.mark.parametrize(
    ("parameter", "value", "expected"),
    [
        # Float representation: an edge computed from Fahrenheit still lands on its band.
        ("temperature", (100.4 - 32) * 5 / 9, 0),  # 38.00000000000001 is 38.0
        ("temperature", (95.18 - 32) * 5 / 9, 1),  # 35.10000000000001 is 35.1
        ("temperature", (100.58 - 32) * 5 / 9, 1),  # 38.099999999999994 is 38.1
        ("temperature", (102.38 - 32) * 5 / 9, 2),  # 39.099999999999994 is 39.1
        ("temperature", 36.0 + 1e-12, 1),
        ("temperature", 35.0 + 1e-12, 3),
        ("spo2", 92 - 1e-12, 2),
        ("spo2", 96 - 1e-12, 0),
        ("systolic", 111 - 1e-12, 0),
        ("pulse", 130 + 1e-12, 2),
        # Between the chart's numbers (documented in the module): temperature <= 36.0 -> 1, ...
        ("temperature", 35.05, 1),
        ("temperature", 36.05, 0),
        ("temperature", 38.05, 1),
        ("temperature", 39.05, 2),
        ("respiration_rate", 8.5, 1),
        ("respiration_rate", 20.5, 2),
        ("spo2", 91.5, 3),
        ("spo2", 95.5, 1),
        ("systolic", 90.5, 3),
        ("systolic", 219.5, 0),
        ("pulse", 40.5, 1),
        ("pulse", 130.5, 3),
        ("consciousness", 0.5, 3),
    ],
)
def test_values_off_the_chart_resolution(parameter: str, value: float, expected: int) -> None:
    assert vectorised_score(parameter, value, spo2_scale=1, on_oxygen=False) == expected
    assert score_parameter(parameter, value) == expected


def test_scale_2_applies_only_to_patients_on_it() -> None:
    patients = patients_frame(("on-2", 2, False), ("on-1", 1, False), ("unknown", np.nan, None))
    rows = [reading("spo2", 89, patient=name) for name in ("on-2", "on-1", "unknown", "absent")]
    result = score_sets(readings_frame(rows), patients)
    by_patient = {row["patient_id"]: row for row in result.to_dict("records")}
    assert {name: row["sub_scores"]["spo2"] for name, row in by_patient.items()} == {
        "absent": 3,
        "on-1": 3,
        "on-2": 0,
        "unknown": 3,
    }
    assert {name: row["spo2_scale"] for name, row in by_patient.items()} == {
        "absent": 1,
        "on-1": 1,
        "on-2": 2,
        "unknown": 1,
    }
    assert by_patient["unknown"]["sub_scores"]["air_or_oxygen"] == 0


# --- scalar helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "any_single_3", "expected"),
    [
        (0, False, "none"),
        (1, False, "low"),
        (4, False, "low"),
        (3, True, "low_single_3"),
        (4, True, "low_single_3"),
        (5, False, "medium"),
        (6, False, "medium"),
        (6, True, "medium"),
        (7, False, "high"),
        (7, True, "high"),
        (20, True, "high"),
    ],
)
def test_response_band(score: int, any_single_3: bool, expected: str) -> None:
    assert response_band(score, any_single_3) == expected
    assert expected in BANDS and expected in BAND_RESPONSES


@pytest.mark.parametrize(("score", "any_single_3"), [(-1, False), (2, True), (0, True)])
def test_response_band_refuses_impossible_scores(score: int, any_single_3: bool) -> None:
    with pytest.raises(ValueError, match=r"NEWS2 score|at least 3"):
        response_band(score, any_single_3)


def test_scalar_helpers_refuse_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown NEWS2 parameter"):
        score_parameter("glucose", 5.0)
    with pytest.raises(ValueError, match="NaN"):
        score_parameter("pulse", math.nan)
    with pytest.raises(ValueError, match="spo2_scale"):
        score_parameter("spo2", 95, spo2_scale=3)
    with pytest.raises(ValueError, match="spo2_scale"):
        score_parameter_values("spo2", [95.0], spo2_scale=np.array([0]))
    with pytest.raises(ValueError, match="one more score"):
        ChartRow((1.0, 2.0), (0, 1), "lower")
    with pytest.raises(ValueError, match="ascending"):
        ChartRow((2.0, 1.0), (0, 1, 2), "lower")


def test_chart_rows_name_their_variant() -> None:
    assert chart_row("spo2").edges == (92, 94, 96)
    assert chart_row("spo2", spo2_scale=2).scores == (3, 2, 1, 0)
    assert chart_row("spo2", spo2_scale=2, on_oxygen=True).scores == (3, 2, 1, 0, 1, 2, 3)
    assert CONSCIOUSNESS_LOINC in LOINC_TO_PARAMETER


EDGE_VALUES = sorted(
    {float(value) for _, _, _, cases in CHART_EDGES for value, _ in cases}
    | {83.0, 84.0, 85.0, 86.0, 87.0, 88.0, 92.0, 93.0, 94.0, 95.0, 96.0, 97.0}
)
NEAR_EDGES = st.builds(
    lambda edge, nudge: edge + nudge,
    st.sampled_from(EDGE_VALUES),
    st.sampled_from([0.0, 1e-12, -1e-12, 1e-9, -1e-9, 2e-9, -2e-9, 0.05, -0.05, 0.5, -0.5]),
)
ANY_VALUE = st.one_of(
    NEAR_EDGES,
    st.floats(min_value=-50, max_value=400, allow_nan=False),
    st.floats(allow_nan=False, allow_infinity=True),
)


@settings(max_examples=200, deadline=None)
@given(
    parameter=st.sampled_from(PARAMETERS),
    cases=st.lists(
        st.tuples(ANY_VALUE, st.sampled_from([1, 2]), st.booleans()), min_size=1, max_size=30
    ),
)
def test_vectorised_and_scalar_scores_agree(
    parameter: str, cases: list[tuple[float, int, bool]]
) -> None:
    values = np.array([value for value, _, _ in cases])
    scales = np.array([scale for _, scale, _ in cases])
    oxygen = np.array([on for _, _, on in cases])
    vectorised = score_parameter_values(parameter, values, spo2_scale=scales, on_oxygen=oxygen)
    scalar = [
        score_parameter(parameter, value, spo2_scale=scale, on_oxygen=on)
        for value, scale, on in cases
    ]
    assert vectorised.tolist() == scalar


# --- observation sets ---------------------------------------------------------------------------


def test_readings_29_and_30_minutes_after_the_first_are_in_its_set_31_starts_the_next() -> None:
    rows = [
        reading("pulse", 70, minutes=0),
        reading("spo2", 97, minutes=29),
        reading("systolic", 120, minutes=30),
        reading("temperature", 36.8, minutes=31),
    ]
    result = score_sets(readings_frame(rows))
    assert result["set_start"].tolist() == [
        pd.Timestamp(T0),
        pd.Timestamp(T0 + timedelta(minutes=31)),
    ]
    assert result["at"].tolist() == [
        pd.Timestamp(T0 + timedelta(minutes=30)),
        pd.Timestamp(T0 + timedelta(minutes=31)),
    ]
    assert result["parameters"].tolist() == [
        ("spo2", "air_or_oxygen", "systolic", "pulse"),
        ("air_or_oxygen", "temperature"),
    ]


def test_the_window_is_inclusive_to_the_nanosecond() -> None:
    frame = readings_frame([reading("pulse", 70), reading("spo2", 97), reading("systolic", 120)])
    frame["measured_at"] += pd.to_timedelta([0, 30 * 60 * 10**9, 30 * 60 * 10**9 + 1], unit="ns")
    result = score_sets(frame)
    assert result["parameters"].tolist() == [
        ("spo2", "air_or_oxygen", "pulse"),
        ("air_or_oxygen", "systolic"),
    ]


def test_sets_are_greedy_from_the_earliest_reading() -> None:
    # Every 10 minutes for 3 hours: no gap ends a set, the window does (0-30, 40-70, ...).
    rows = [reading("pulse", 70 + index, minutes=10 * index) for index in range(19)]
    result = score_sets(readings_frame(rows))
    starts = [
        (start - pd.Timestamp(T0)) // pd.Timedelta(minutes=1) for start in result["set_start"]
    ]
    assert starts == [0, 40, 80, 120, 160]
    assert result["values"].map(lambda values: values["pulse"]).tolist() == [73, 77, 81, 85, 88]


def test_greedy_chains_with_windows_of_decades() -> None:
    # Chains whose time line is cut into several blocks inside the scorer.
    frame = readings_frame(
        [
            reading("pulse", 60 + year, minutes=year * 525_960, patient=patient)
            for patient in ("a", "b", "c")
            for year in (-120, -80, -40, 0, 40)
        ]
    )
    result = score_sets(frame, window=pd.Timedelta(days=50 * 365))
    assert result["patient_id"].tolist() == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert result["values"].map(lambda values: values["pulse"]).tolist() == [-20, 60, 100] * 3


def test_two_patients_never_share_a_set() -> None:
    rows = [reading("pulse", 70, patient="b"), reading("spo2", 97, minutes=1, patient="a")]
    result = score_sets(readings_frame(rows))
    assert result["patient_id"].tolist() == ["a", "b"]
    assert result["parameters"].tolist() == [("spo2", "air_or_oxygen"), ("air_or_oxygen", "pulse")]


def test_a_repeated_measurement_supersedes_the_earlier_one() -> None:
    record = one_set(
        [
            reading("pulse", 135, minutes=0, reading_id="early"),
            reading("pulse", 72, minutes=5, reading_id="late"),
        ]
    )
    assert record["values"]["pulse"] == 72.0
    assert record["sub_scores"]["pulse"] == 0
    assert record["reading_ids"] == ("late",)
    assert record["at"] == pd.Timestamp(T0 + timedelta(minutes=5))


def test_readings_at_the_same_instant_rank_by_reading_id_as_text() -> None:
    rows = [
        reading("pulse", 135, reading_id="r10"),
        reading("pulse", 72, reading_id="r9"),  # "r9" > "r10" as text
    ]
    assert one_set(rows)["values"]["pulse"] == 72.0
    assert one_set(rows[::-1])["values"]["pulse"] == 72.0


def test_a_partial_set_lists_what_it_had_and_scores_a_lower_bound() -> None:
    record = one_set(
        [
            reading("spo2", 91, reading_id="b"),
            reading("pulse", 95, minutes=2, reading_id="a"),
            reading(WEIGHT_LOINC, 80.0, minutes=1, reading_id="weight"),
        ]
    )
    assert record == {
        "patient_id": "patient-1",
        "set_start": pd.Timestamp(T0),
        "at": pd.Timestamp(T0 + timedelta(minutes=2)),
        "score": 4,
        "band": "low_single_3",
        "partial": True,
        "parameters": ("spo2", "air_or_oxygen", "pulse"),
        "sub_scores": {"spo2": 3, "air_or_oxygen": 0, "pulse": 1},
        "values": {"spo2": 91.0, "air_or_oxygen": 0.0, "pulse": 95.0},
        "reading_ids": ("a", "b"),
        "spo2_scale": 1,
    }


def test_a_full_set_is_not_partial() -> None:
    rows = [
        reading("respiration_rate", 22, minutes=1),
        reading("spo2", 95, minutes=2),
        reading("systolic", 105, minutes=3),
        reading("pulse", 115, minutes=4),
        reading(CONSCIOUSNESS_LOINC, 0, minutes=5),
        reading("temperature", 38.5, minutes=6),
    ]
    record = one_set(rows, patients_frame(("patient-1", 1, True)))
    assert record["partial"] is False
    assert record["parameters"] == PARAMETERS
    assert record["sub_scores"] == {
        "respiration_rate": 2,
        "spo2": 1,
        "air_or_oxygen": 2,
        "systolic": 1,
        "pulse": 2,
        "consciousness": 0,
        "temperature": 1,
    }
    assert (record["score"], record["band"]) == (9, "high")
    assert len(record["reading_ids"]) == 6


def test_air_or_oxygen_alone_makes_no_set() -> None:
    patients = patients_frame(("patient-1", 2, True))
    rows = [reading(WEIGHT_LOINC, 80.0), reading("pulse", math.nan, minutes=1)]
    result = score_sets(readings_frame(rows), patients)
    pd.testing.assert_frame_equal(result, empty_sets())


def test_no_readings_give_an_empty_frame_with_the_columns_and_dtypes() -> None:
    result = score_sets(readings_frame([]))
    pd.testing.assert_frame_equal(result, empty_sets())
    assert tuple(result.columns) == SET_COLUMNS
    assert result.dtypes.astype(str).to_dict() == {
        "patient_id": "object",
        "set_start": "datetime64[ns, UTC]",
        "at": "datetime64[ns, UTC]",
        "score": "int64",
        "band": "object",
        "partial": "bool",
        "parameters": "object",
        "sub_scores": "object",
        "values": "object",
        "reading_ids": "object",
        "spo2_scale": "int64",
    }


@pytest.mark.parametrize(
    ("rows", "on_oxygen", "score", "band"),
    [
        ([("pulse", 70)], False, 0, "none"),
        ([("pulse", 95)], False, 1, "low"),
        ([("pulse", 70)], True, 2, "low"),
        ([("pulse", 95), ("systolic", 95), ("temperature", 38.5)], False, 4, "low"),
        ([("spo2", 91)], False, 3, "low_single_3"),
        ([("spo2", 91), ("pulse", 95)], False, 4, "low_single_3"),
        ([("pulse", 115), ("systolic", 95), ("temperature", 38.5)], False, 5, "medium"),
        (
            [("pulse", 115), ("systolic", 95), ("temperature", 38.5), ("spo2", 95)],
            False,
            6,
            "medium",
        ),
        ([("pulse", 115), ("systolic", 95), ("temperature", 39.5), ("spo2", 95)], False, 7, "high"),
        ([(CONSCIOUSNESS_LOINC, 1), ("systolic", 90), ("pulse", 95)], False, 7, "high"),
    ],
)
def test_response_bands_of_whole_sets(
    rows: list[tuple[str, float]], on_oxygen: bool, score: int, band: str
) -> None:
    record = one_set(
        [reading(name, value, minutes=index) for index, (name, value) in enumerate(rows)],
        patients_frame(("patient-1", 1, on_oxygen)),
    )
    assert (record["score"], record["band"]) == (score, band)


def test_window_zero_puts_each_instant_in_its_own_set() -> None:
    rows = [reading("pulse", 70), reading("spo2", 97), reading("systolic", 120, minutes=1)]
    result = score_sets(readings_frame(rows), window=pd.Timedelta(0))
    assert result["parameters"].tolist() == [
        ("spo2", "air_or_oxygen", "pulse"),
        ("air_or_oxygen", "systolic"),
    ]


def test_input_is_checked() -> None:
    good = readings_frame([reading("pulse", 70)])
    with pytest.raises(ValueError, match="lack the column"):
        score_sets(good.drop(columns=["loinc"]))
    with pytest.raises(ValueError, match="timezone-aware"):
        score_sets(good.assign(measured_at=good["measured_at"].dt.tz_localize(None)))
    with pytest.raises(ValueError, match="window"):
        score_sets(good, window=pd.Timedelta(minutes=-1))
    with pytest.raises(ValueError, match="spo2_scale"):
        score_sets(good, patients_frame(("patient-1", 3, False)))
    with pytest.raises(ValueError, match="on_oxygen"):
        score_sets(good, patients_frame(("patient-1", 1, "yes")))
    with pytest.raises(ValueError, match="repeats the patient_id"):
        score_sets(good, patients_frame(("patient-1", 1, False), ("patient-1", 2, False)))
    with pytest.raises(ValueError, match="lack the column"):
        score_sets(good, pd.DataFrame({"patient_id": ["patient-1"]}))


def test_times_in_other_zones_and_units_are_read_as_utc() -> None:
    frame = readings_frame([reading("pulse", 70)])
    other = frame.assign(
        measured_at=frame["measured_at"].dt.tz_convert("Europe/Paris").dt.as_unit("us")
    )
    pd.testing.assert_frame_equal(score_sets(other), score_sets(frame))


# --- the whole frame against a row-by-row reference; determinism ---------------------------------


def reference_sets(
    readings: pd.DataFrame, patients: pd.DataFrame | None, window: pd.Timedelta
) -> pd.DataFrame:
    """The module docstring, one reading at a time, with the scalar helpers."""
    settings_of: dict[str, tuple[int, bool]] = {}
    if patients is not None:
        for row in patients.to_dict("records"):
            scale = 1 if pd.isna(row["spo2_scale"]) else int(row["spo2_scale"])
            on_oxygen = False if pd.isna(row["on_oxygen"]) else bool(row["on_oxygen"])
            settings_of[str(row["patient_id"])] = (scale, on_oxygen)
    seen: set[str] = set()
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for row in readings.to_dict("records"):
        if row["reading_id"] in seen:
            continue
        seen.add(row["reading_id"])
        if row["loinc"] in LOINC_TO_PARAMETER and not math.isnan(row["value"]):
            by_patient.setdefault(str(row["patient_id"]), []).append(row)
    records = []
    for patient in sorted(by_patient):
        pending = sorted(by_patient[patient], key=lambda row: row["measured_at"])
        scale, on_oxygen = settings_of.get(patient, (1, False))
        while pending:
            start = pending[0]["measured_at"]
            members = [row for row in pending if row["measured_at"] <= start + window]
            pending = pending[len(members) :]
            latest: dict[str, dict[str, Any]] = {}
            for row in members:
                name = LOINC_TO_PARAMETER[row["loinc"]]
                rank = (row["measured_at"], row["reading_id"], row["value"])
                if name not in latest or rank > (
                    latest[name]["measured_at"],
                    latest[name]["reading_id"],
                    latest[name]["value"],
                ):
                    latest[name] = row
            values = {name: latest[name]["value"] for name in PARAMETERS if name in latest}
            values["air_or_oxygen"] = 1.0 if on_oxygen else 0.0
            used = tuple(name for name in PARAMETERS if name in values)
            sub_scores = {
                name: score_parameter(name, values[name], spo2_scale=scale, on_oxygen=on_oxygen)
                for name in used
            }
            total = sum(sub_scores.values())
            records.append(
                {
                    "patient_id": patient,
                    "set_start": start,
                    "at": max(row["measured_at"] for row in members),
                    "score": total,
                    "band": response_band(total, 3 in sub_scores.values()),
                    "partial": used != PARAMETERS,
                    "parameters": used,
                    "sub_scores": sub_scores,
                    "values": {name: values[name] for name in used},
                    "reading_ids": tuple(sorted(row["reading_id"] for row in latest.values())),
                    "spo2_scale": scale,
                }
            )
    if not records:
        return empty_sets()
    frame = pd.DataFrame.from_records(records, columns=list(SET_COLUMNS))
    return frame.astype(empty_sets().dtypes.to_dict())


VALUE_OF_LOINC = {
    LOINC_OF["respiration_rate"]: st.integers(4, 40).map(float),
    LOINC_OF["spo2"]: st.integers(80, 100).map(float),
    LOINC_OF["systolic"]: st.integers(70, 240).map(float),
    LOINC_OF["pulse"]: st.integers(30, 160).map(float),
    CONSCIOUSNESS_LOINC: st.integers(0, 4).map(float),
    LOINC_OF["temperature"]: st.integers(340, 410).map(lambda tenths: tenths / 10),
    WEIGHT_LOINC: st.floats(40, 150),
}


READING_ROWS = st.lists(
    st.tuples(
        st.integers(0, 10_000),  # reading number: ids "r10" < "r9" as text
        st.sampled_from(["p1", "p2", "p10"]),
        st.integers(0, 150),  # minutes: chains longer than the window, ties at one instant
        st.one_of(
            *(
                st.tuples(st.just(loinc), st.one_of(values, st.just(math.nan)))
                for loinc, values in VALUE_OF_LOINC.items()
            )
        ),
    ),
    max_size=40,
    unique_by=lambda row: row[0],
)


def random_readings() -> st.SearchStrategy[pd.DataFrame]:
    """A few patients, readings minutes apart, some without a value or not NEWS2 at all."""
    return READING_ROWS.map(
        lambda rows: readings_frame(
            [
                {
                    "reading_id": f"r{number}",
                    "patient_id": patient,
                    "loinc": loinc,
                    "value": value,
                    "measured_at": T0 + timedelta(minutes=minutes),
                }
                for number, patient, minutes, (loinc, value) in rows
            ]
        )
    )


PATIENTS = patients_frame(("p2", 2, True), ("p10", 2, None), ("p99", 1, True))


@settings(max_examples=100, deadline=None)
@given(readings=random_readings(), window_minutes=st.sampled_from([0, 10, 30]))
def test_score_sets_matches_the_row_by_row_reference(
    readings: pd.DataFrame, window_minutes: int
) -> None:
    window = pd.Timedelta(minutes=window_minutes)
    expected = reference_sets(readings, PATIENTS, window)
    pd.testing.assert_frame_equal(score_sets(readings, PATIENTS, window=window), expected)


@settings(max_examples=100, deadline=None)
@given(readings=random_readings(), seed=st.integers(0, 2**31))
def test_row_order_and_repeated_rows_do_not_change_the_result(
    readings: pd.DataFrame, seed: int
) -> None:
    repeated = readings.sample(frac=0.5, random_state=seed)
    shuffled = pd.concat([readings, repeated]).sample(frac=1.0, random_state=seed + 1)
    pd.testing.assert_frame_equal(
        score_sets(shuffled.reset_index(drop=True), PATIENTS), score_sets(readings, PATIENTS)
    )
