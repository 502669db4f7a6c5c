"""bench/rpm_history.py: synthetic monitoring histories for the rules benchmark and backtest."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bench.rpm_history import (
    CSV_COLUMNS,
    DEFAULT_END,
    PATIENT_COLUMNS,
    PROGRAMS,
    READING_COLUMNS,
    History,
    generate_history,
    main,
    write_csv,
)
from carewatch_contract.metrics import METRICS

SYSTOLIC, DIASTOLIC, PULSE, SPO2 = "8480-6", "8462-4", "8867-4", "59408-5"
WEIGHT, TEMPERATURE, GLUCOSE, RESPIRATION = "29463-7", "8310-5", "41653-7", "9279-1"

# Written out here, not taken from the module: the codes, units and ranges the backtest expects.
UNITS = {
    SYSTOLIC: "mm[Hg]",
    DIASTOLIC: "mm[Hg]",
    PULSE: "/min",
    SPO2: "%",
    WEIGHT: "kg",
    TEMPERATURE: "Cel",
    GLUCOSE: "mg/dL",
    RESPIRATION: "/min",
}
PLAUSIBLE = {
    SYSTOLIC: (30, 320),
    DIASTOLIC: (10, 250),
    PULSE: (10, 350),
    SPO2: (30, 100),
    WEIGHT: (0.5, 700),
    TEMPERATURE: (20, 46),
    GLUCOSE: (5, 2000),
    RESPIRATION: (1, 120),
}
WHOLE_NUMBERS = {SYSTOLIC, DIASTOLIC, PULSE, SPO2, GLUCOSE, RESPIRATION}
TENTHS = {WEIGHT, TEMPERATURE}
PROGRAM_METRICS = {
    "hypertension": {SYSTOLIC, DIASTOLIC, PULSE},
    "heart_failure": {SYSTOLIC, DIASTOLIC, PULSE, WEIGHT, SPO2},
    "copd": {SPO2, PULSE, TEMPERATURE, SYSTOLIC, DIASTOLIC, RESPIRATION},
    "diabetes": {GLUCOSE, SYSTOLIC, DIASTOLIC, PULSE},
}
#: Readings per patient-day with every scheduled measurement taken: on average (COPD 2-4
#: oximeter checks, diabetes 3-4 glucose checks) and at most (+1 manual entry for COPD).
NOMINAL_PER_DAY = {"hypertension": 6.0, "heart_failure": 9.0, "copd": 10.0, "diabetes": 6.5}
MOST_PER_DAY = {"hypertension": 6, "heart_failure": 9, "copd": 13, "diabetes": 7}
PROGRAM_DEVICES = {
    "hypertension": {"blood_pressure"},
    "heart_failure": {"blood_pressure", "weight_scale", "pulse_oximeter"},
    "copd": {"pulse_oximeter", "thermometer", "blood_pressure", "manual"},
    "diabetes": {"glucose_meter", "blood_pressure"},
}
LARGE_PATIENTS, LARGE_DAYS = 400, 90
ISO_WITH_OFFSET = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00")


@pytest.fixture(scope="module")
def small() -> History:
    return generate_history(patients=20, days=14)


@pytest.fixture(scope="module")
def large() -> History:
    return generate_history(patients=LARGE_PATIENTS, days=LARGE_DAYS)


def with_programs(history: History) -> pd.DataFrame:
    return history.readings.merge(history.patients, on="patient_id", validate="many_to_one")


def assert_invariants(history: History, *, patients: int, days: int, end: pd.Timestamp) -> None:
    """What holds for every history: shape, ranges, rounding, ids, order, window."""
    readings, roster = history.readings, history.patients
    assert list(readings.columns) == list(READING_COLUMNS)
    assert list(roster.columns) == list(PATIENT_COLUMNS)
    assert len(roster) == patients
    assert roster["patient_id"].is_unique
    assert set(readings["patient_id"]) <= set(roster["patient_id"])
    assert set(readings["metric"]) <= set(UNITS)
    assert (readings["unit"] == readings["metric"].map(UNITS)).all()
    for metric, (low, high) in PLAUSIBLE.items():
        values = readings.loc[readings["metric"] == metric, "value"]
        assert values.between(low, high).all(), metric
    whole = readings.loc[readings["metric"].isin(WHOLE_NUMBERS), "value"]
    assert (whole == np.rint(whole)).all()
    tenths = readings.loc[readings["metric"].isin(TENTHS), "value"]
    assert (tenths == np.rint(tenths * 10) / 10).all()
    assert readings["reading_id"].is_unique
    resorted = readings.sort_values(["measured_at", "reading_id"], kind="stable")
    assert resorted.index.equals(readings.index)
    last_day = end.normalize()
    assert (readings["measured_at"] >= last_day - pd.Timedelta(days=days)).all()
    assert (readings["measured_at"] < last_day).all()


# ----------------------------------------------------------------------------------------------
# Reproducibility and shape


def test_same_seed_gives_identical_frames(small: History) -> None:
    again = generate_history(patients=20, days=14, seed=7)
    pd.testing.assert_frame_equal(again.readings, small.readings)
    pd.testing.assert_frame_equal(again.patients, small.patients)


def test_other_seed_gives_another_history(small: History) -> None:
    other = generate_history(patients=20, days=14, seed=8)
    assert not other.readings.equals(small.readings)
    assert not set(other.readings["reading_id"]) & set(small.readings["reading_id"])


def test_default_end_is_fixed() -> None:
    history = generate_history(patients=3, days=2)
    assert_invariants(history, patients=3, days=2, end=DEFAULT_END)


def test_columns_and_dtypes(small: History) -> None:
    readings, roster = small.readings, small.patients
    assert list(readings.columns) == [
        "patient_id",
        "metric",
        "value",
        "unit",
        "measured_at",
        "reading_id",
        "device_id",
    ]
    assert str(readings["measured_at"].dtype) == "datetime64[ns, UTC]"
    assert readings["value"].dtype == np.float64
    for column in ("patient_id", "metric", "unit", "reading_id", "device_id"):
        assert readings[column].dtype == object
        assert readings[column].map(type).eq(str).all(), column
    assert list(roster.columns) == ["patient_id", "program", "spo2_scale", "on_oxygen"]
    assert roster["spo2_scale"].dtype == np.int64
    assert roster["on_oxygen"].dtype == bool
    assert roster["program"].map(type).eq(str).all()
    assert list(roster["patient_id"]) == [f"pt-{i:05d}" for i in range(1, 21)]


def test_units_are_the_contracts(large: History) -> None:
    pairs = large.readings[["metric", "unit"]].drop_duplicates()
    assert dict(zip(pairs["metric"], pairs["unit"], strict=True)) == UNITS
    assert all(METRICS[metric].unit == unit for metric, unit in UNITS.items())


def test_invariants_hold_on_a_larger_run(large: History) -> None:
    assert_invariants(large, patients=LARGE_PATIENTS, days=LARGE_DAYS, end=DEFAULT_END)


def test_reading_ids_are_uuid7_of_the_measurement_time(small: History) -> None:
    ids = [uuid.UUID(text) for text in small.readings["reading_id"]]
    assert [str(u) for u in ids] == list(small.readings["reading_id"])
    assert {u.version for u in ids} == {7}
    millis = np.array([u.int >> 80 for u in ids], dtype=np.int64)
    expected = small.readings["measured_at"].astype("int64").to_numpy() // 1_000_000
    assert (millis == expected).all()


@settings(max_examples=25, deadline=None)
@given(
    patients=st.integers(1, 12),
    days=st.integers(1, 10),
    seed=st.integers(0, 2**32 - 1),
    end=st.datetimes(
        min_value=pd.Timestamp("2020-01-01").to_pydatetime(),
        max_value=pd.Timestamp("2030-01-01").to_pydatetime(),
    ),
)
def test_invariants_hold_for_any_size_seed_and_end(
    patients: int, days: int, seed: int, end: pd.Timestamp
) -> None:
    stamp = pd.Timestamp(end, tz="UTC")
    history = generate_history(patients=patients, days=days, seed=seed, end=stamp)
    assert_invariants(history, patients=patients, days=days, end=stamp)


def test_end_is_exclusive_day_and_naive_means_utc() -> None:
    aware = generate_history(patients=5, days=3, end=pd.Timestamp("2026-03-10T15:30", tz="UTC"))
    naive = generate_history(patients=5, days=3, end=pd.Timestamp("2026-03-10"))
    other_zone = generate_history(patients=5, days=3, end=pd.Timestamp("2026-03-10T12:00+05:00"))
    pd.testing.assert_frame_equal(aware.readings, naive.readings)
    pd.testing.assert_frame_equal(aware.readings, other_zone.readings)
    days = set(aware.readings["measured_at"].dt.strftime("%Y-%m-%d"))
    assert days <= {"2026-03-07", "2026-03-08", "2026-03-09"}


@pytest.mark.parametrize(("patients", "days"), [(0, 5), (5, 0), (-1, 5)])
def test_rejects_empty_sizes(patients: int, days: int) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        generate_history(patients=patients, days=days)


# ----------------------------------------------------------------------------------------------
# Patients, devices, schedules


def test_patients_frame_matches_the_readings(large: History) -> None:
    roster, merged = large.patients, with_programs(large)
    assert set(roster["program"]) == set(PROGRAMS)
    assert roster["program"].value_counts().to_dict() == {
        "hypertension": 160,
        "heart_failure": 80,
        "copd": 80,
        "diabetes": 80,
    }
    assert ((roster["spo2_scale"] == 2) == (roster["program"] == "copd")).all()
    assert not roster.loc[roster["program"] != "copd", "on_oxygen"].any()
    assert 0 < roster.loc[roster["program"] == "copd", "on_oxygen"].sum() < 40  # of 80
    assert set(merged["patient_id"]) == set(roster["patient_id"])  # everyone measured something
    for program, metrics in PROGRAM_METRICS.items():
        seen = set(merged.loc[merged["program"] == program, "metric"])
        assert seen <= metrics, program
        assert seen >= metrics - {RESPIRATION}, program


def test_one_device_per_patient_and_device_type(large: History) -> None:
    merged = with_programs(large)
    devices = merged[["patient_id", "program", "device_id"]].drop_duplicates()
    assert devices["device_id"].is_unique  # no device is shared between patients
    parts = devices["device_id"].str.split("/", n=1, expand=True)
    assert (parts[0] == devices["patient_id"]).all()
    for program, kinds in PROGRAM_DEVICES.items():
        assert set(parts.loc[devices["program"] == program, 1]) <= kinds, program


def test_a_cuff_measurement_is_three_readings_at_one_time(large: History) -> None:
    readings = large.readings
    cuff = readings[readings["device_id"].str.endswith("/blood_pressure")]
    assert set(cuff["metric"]) == {SYSTOLIC, DIASTOLIC, PULSE}
    one = cuff.pivot(index=["device_id", "measured_at"], columns="metric", values="value")
    assert one.notna().all().all()  # each measurement has all three (pivot: at most one each)
    assert len(one) * 3 == len(cuff)
    assert (one[DIASTOLIC] < one[SYSTOLIC]).all()
    oximeter = readings[readings["device_id"].str.endswith("/pulse_oximeter")]
    assert set(oximeter["metric"]) == {SPO2, PULSE}
    one = oximeter.pivot(index=["device_id", "measured_at"], columns="metric", values="value")
    assert one.notna().all().all() and len(one) * 2 == len(oximeter)


def test_times_jitter_around_the_schedule(large: History) -> None:
    readings = large.readings
    hours = readings["measured_at"].dt.hour + readings["measured_at"].dt.minute / 60
    scale = hours[readings["metric"] == WEIGHT]
    assert scale.between(5.75, 7.75).all()  # 06:45 +- 1 h
    assert 6.0 < scale.median() < 7.5
    hypertension = with_programs(large)["program"] == "hypertension"
    cuff_hours = hours[hypertension & (readings["metric"] == SYSTOLIC)]
    morning, evening = cuff_hours[cuff_hours < 12], cuff_hours[cuff_hours >= 12]
    assert morning.between(6, 8).all() and evening.between(18.5, 20.5).all()
    assert 0.8 < len(morning) / len(evening) < 1.25
    assert (readings["measured_at"].dt.microsecond == 0).all()
    assert (readings["measured_at"].dt.nanosecond == 0).all()


def test_row_count_per_patient_day(small: History) -> None:
    merged = with_programs(small)
    days = 14
    for program, nominal in NOMINAL_PER_DAY.items():
        count = (small.patients["program"] == program).sum()
        per_day = (merged["program"] == program).sum() / (count * days)
        assert 0.55 * nominal <= per_day <= nominal, (program, per_day)
    overall = len(small.readings) / (20 * days)
    assert 4.5 <= overall <= 7.5


def test_adherence_is_mostly_high_with_some_poor_adherers(large: History) -> None:
    merged = with_programs(large)
    rows = merged.groupby("patient_id").size()
    program = large.patients.set_index("patient_id")["program"]
    assert (rows <= program.map(MOST_PER_DAY) * LARGE_DAYS).all()
    share = rows / (program.map(NOMINAL_PER_DAY) * LARGE_DAYS)
    assert share.median() > 0.75
    assert (share < 0.7).sum() >= 5


# ----------------------------------------------------------------------------------------------
# Episodes that the rules should catch


def test_hypertensive_spikes_and_hoverers(large: History) -> None:
    readings = large.readings
    systolic = readings[readings["metric"] == SYSTOLIC]
    above = systolic[systolic["value"] > 180]
    assert above["patient_id"].nunique() >= 10
    assert len(above) < 0.05 * len(systolic)  # rare
    by_patient = systolic.groupby("patient_id")["value"]
    hovering = by_patient.median().between(168, 190) & (by_patient.max() > 180)
    hovering &= by_patient.min() <= 180
    assert hovering.sum() >= 2


def test_heart_failure_weight_gain(large: History) -> None:
    merged = with_programs(large)
    weights = merged[(merged["metric"] == WEIGHT) & (merged["program"] == "heart_failure")]
    day_gainers, week_gainers = set(), set()
    for patient, rows in weights.groupby("patient_id"):
        at = rows["measured_at"].astype("int64").to_numpy() // 1_000_000_000
        kg = rows["value"].to_numpy()
        elapsed = at[None, :] - at[:, None]  # later minus earlier
        gain = kg[None, :] - kg[:, None]
        if ((elapsed > 0) & (elapsed <= 86_400 + 3_600) & (gain >= 0.9)).any():
            day_gainers.add(patient)
        if ((elapsed > 0) & (elapsed <= 7 * 86_400) & (gain >= 2.3 - 1e-9)).any():
            week_gainers.add(patient)
    assert day_gainers
    assert week_gainers
    assert len(week_gainers) < weights["patient_id"].nunique() / 2  # a few, not most


def test_copd_exacerbations_and_oxygen_scale(large: History) -> None:
    merged = with_programs(large)
    spo2 = merged[merged["metric"] == SPO2]
    copd, heart = spo2[spo2["program"] == "copd"], spo2[spo2["program"] == "heart_failure"]
    assert copd["value"].median() < heart["value"].median()
    assert (copd["value"] < 88).any()  # below a scale 2 target
    assert (heart["value"] < 94).any()  # below a scale 1 target
    temperature = merged.loc[merged["metric"] == TEMPERATURE, "value"]
    assert (temperature > 38.0).any()
    assert (temperature > 38.0).mean() < 0.05
    respiration = merged[merged["metric"] == RESPIRATION]
    assert 0 < len(respiration) < 0.002 * len(merged)  # a few manual entries


def test_glucose_excursions(large: History) -> None:
    glucose = large.readings.loc[large.readings["metric"] == GLUCOSE, "value"]
    assert (glucose < 70).any()
    assert (glucose < 54).any()
    assert (glucose < 54).sum() < (glucose < 70).sum() / 3  # level 2 is rarer
    assert (glucose > 250).any()
    assert (glucose < 70).mean() < 0.05 and (glucose > 250).mean() < 0.1


def test_some_patients_miss_whole_days(large: History) -> None:
    readings = large.readings
    day = (readings["measured_at"] - (DEFAULT_END - pd.Timedelta(days=LARGE_DAYS))).dt.days
    seen = np.zeros((len(large.patients), LARGE_DAYS), dtype=bool)
    patient = large.patients.reset_index().set_index("patient_id")["index"]
    seen[readings["patient_id"].map(patient).to_numpy(), day.to_numpy()] = True
    assert seen.mean() > 0.8  # most patient-days have readings
    runs = [_longest_run(~row) for row in seen]
    assert sum(run >= 3 for run in runs) >= 10  # several-day gaps
    assert sum(run == 0 for run in runs) >= 10  # and patients without any


def _longest_run(flags: np.ndarray) -> int:
    best = current = 0
    for flag in flags:
        current = current + 1 if flag else 0
        best = max(best, current)
    return best


# ----------------------------------------------------------------------------------------------
# CSV and command line


def test_write_csv_round_trips(small: History, tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    write_csv(small, path)
    lines = path.read_text().splitlines()
    assert lines[0] == "patient_id,metric,value,unit,measured_at"
    assert len(lines) == len(small.readings) + 1
    back = pd.read_csv(path, dtype={"patient_id": str, "metric": str, "unit": str})
    assert list(back.columns) == list(CSV_COLUMNS)
    assert back["measured_at"].map(lambda text: bool(ISO_WITH_OFFSET.fullmatch(text))).all()
    back["measured_at"] = pd.to_datetime(back["measured_at"], format="ISO8601", utc=True)
    expected = small.readings.loc[:, list(CSV_COLUMNS)]
    pd.testing.assert_frame_equal(back, expected, check_dtype=False)
    assert back["value"].dtype == np.float64


def test_command_line_writes_and_summarises(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "out.csv"
    argv = ["--patients", "4", "--days", "3", "--seed", "11", "--out", str(path)]
    assert main(argv) == 0
    summary = capsys.readouterr().out.strip().splitlines()
    expected = generate_history(patients=4, days=3, seed=11)
    assert len(summary) == 1
    assert summary[0].startswith(f"{len(expected.readings):,} rows, 4 patients, 3 days")
    assert str(path) in summary[0]
    back = pd.read_csv(path)
    assert len(back) == len(expected.readings)
