"""The simulator: seeded populations, realistic schedules, and device bytes that decode."""

from __future__ import annotations

import itertools
import math
import re
from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch_contract.messages import DeviceType
from carewatch_contract.metrics import METRICS, Loinc
from gateway_agent.gatt import decode
from gateway_agent.observations import observations_from
from gateway_agent.simulator.devices import SimulatedHome, characteristic_value
from gateway_agent.simulator.population import (
    FLAG_RAISING_SCENARIOS,
    Program,
    ScenarioKind,
    SimulatedPatient,
    build_population,
    device_address,
    scenario_kinds_for,
)
from gateway_agent.simulator.schedule import (
    PLAUSIBLE_RANGES,
    Measurement,
    history,
    live,
    mean_arterial_pressure,
)

END = datetime(2025, 3, 10, 14, 37, 12, tzinfo=UTC)
WEEK = timedelta(days=7)
DAY = timedelta(days=1)

# Which LOINC code carries each measurement value key, by device.
_LOINC_OF_VALUE: dict[DeviceType, dict[str, str]] = {
    DeviceType.BLOOD_PRESSURE: {
        "systolic": Loinc.SYSTOLIC,
        "diastolic": Loinc.DIASTOLIC,
        "mean_arterial_pressure": Loinc.MEAN_ARTERIAL_PRESSURE,
        "pulse_rate": Loinc.HEART_RATE,
    },
    DeviceType.PULSE_OXIMETER: {"spo2": Loinc.SPO2, "pulse_rate": Loinc.HEART_RATE},
    DeviceType.WEIGHT_SCALE: {"kg": Loinc.BODY_WEIGHT},
    DeviceType.THERMOMETER: {"celsius": Loinc.BODY_TEMPERATURE},
    DeviceType.GLUCOSE_METER: {"mg_dl": Loinc.GLUCOSE},
}


def _week(
    seed: int, *, patients: int = 20, end: datetime = END
) -> tuple[list[SimulatedPatient], list[Measurement]]:
    population = build_population(patients=patients, seed=seed)
    return population, history(population, start=end - WEEK, end=end, seed=seed)


def _payloads(population: list[SimulatedPatient], measurements: Iterable[Measurement]) -> list:
    return list(SimulatedHome(population, tz=ZoneInfo("Europe/Berlin")).samples(measurements))


def _with_scenario(population: list[SimulatedPatient], kind: ScenarioKind) -> SimulatedPatient:
    return next(p for p in population if p.scenario is not None and p.scenario.kind is kind)


def _values(
    measurements: Iterable[Measurement], patient_id: str, key: str, since: datetime
) -> list[float]:
    return [
        m.values[key]
        for m in measurements
        if m.patient_id == patient_id and m.taken_at >= since and key in m.values
    ]


# --------------------------------------------------------------------------------------------
# Population


def test_population_is_reproducible_and_seed_dependent() -> None:
    assert build_population(patients=30, seed=7) == build_population(patients=30, seed=7)
    assert build_population(patients=30, seed=7) != build_population(patients=30, seed=8)


def test_patients_have_stable_identities_and_fictional_contacts() -> None:
    population = build_population(patients=120, seed=1)
    assert [p.patient_id for p in population] == [f"pt-{i:04d}" for i in range(1, 121)]
    for patient in population:
        assert re.fullmatch(r"\+1-555-01\d\d", patient.phone)
        assert re.fullmatch(r"[A-Z][a-z]+ [A-Z][a-z]+", patient.display_name)
        assert date(1930, 1, 1) < patient.birth_date < date(1985, 1, 1)
    addresses = [d.device_id for p in population for d in p.devices]
    assert len(addresses) == len(set(addresses))
    assert all(re.fullmatch(r"C0:FF:EE(:[0-9A-F]{2}){3}", a) for a in addresses)
    assert device_address(1, DeviceType.WEIGHT_SCALE) == "C0:FF:EE:00:01:03"
    assert device_address(300, DeviceType.BLOOD_PRESSURE) == "C0:FF:EE:01:2C:01"


def test_devices_follow_the_program() -> None:
    characteristics = {
        DeviceType.BLOOD_PRESSURE: "2A35",
        DeviceType.PULSE_OXIMETER: "2A5E",
        DeviceType.WEIGHT_SCALE: "2A9D",
        DeviceType.THERMOMETER: "2A1C",
        DeviceType.GLUCOSE_METER: "2A18",
    }
    population = build_population(patients=200, seed=3)
    for patient in population:
        kinds = {d.device_type for d in patient.devices}
        assert {DeviceType.BLOOD_PRESSURE, DeviceType.PULSE_OXIMETER} <= kinds
        assert (DeviceType.WEIGHT_SCALE in kinds) == (patient.program is Program.HEART_FAILURE)
        assert (DeviceType.GLUCOSE_METER in kinds) == (patient.program is Program.DIABETES)
        assert patient.spo2_scale == (2 if patient.program is Program.COPD else 1)
        for device in patient.devices:
            assert device.characteristic == characteristics[device.device_type]
    thermometers = sum(p.device(DeviceType.THERMOMETER) is not None for p in population)
    assert 0 < thermometers < len(population)
    assert {p.program for p in population} == set(Program)


@pytest.mark.parametrize("patients", [5, 6, 9, 11, 12, 20, 50, 1000])
def test_flag_raising_scenarios_are_present_from_five_patients(patients: int) -> None:
    population = build_population(patients=patients, seed=patients)
    kinds = Counter(p.scenario.kind for p in population if p.scenario is not None)
    assert set(FLAG_RAISING_SCENARIOS) <= set(kinds)
    if patients >= 12:
        assert set(kinds) == set(ScenarioKind)
    if patients >= 20:
        assert sum(kinds.values()) < patients / 2  # most patients have none


def test_small_populations_get_fewer_scenarios() -> None:
    assert scenario_kinds_for(0) == []
    assert scenario_kinds_for(1) == []
    assert len(scenario_kinds_for(4)) == 2
    assert build_population(patients=0, seed=1) == []
    with pytest.raises(ValueError, match="patients"):
        build_population(patients=-1, seed=1)


def test_scenarios_fit_the_patient() -> None:
    population = build_population(patients=400, seed=11)
    for patient in population:
        if patient.scenario is None:
            continue
        kind = patient.scenario.kind
        assert 0 <= patient.scenario.severity <= 1
        if kind is ScenarioKind.HYPOGLYCAEMIA:
            assert patient.device(DeviceType.GLUCOSE_METER) is not None
        if kind is ScenarioKind.HEART_FAILURE_WEIGHT_GAIN:
            assert patient.program is Program.HEART_FAILURE
        if kind is ScenarioKind.FEVER:
            assert patient.device(DeviceType.THERMOMETER) is not None
        if kind is ScenarioKind.DESATURATION:
            assert patient.spo2_scale == 1
        if kind is ScenarioKind.HYPERTENSIVE_CRISIS:
            assert patient.program is Program.HYPERTENSION


# --------------------------------------------------------------------------------------------
# Bytes


def test_same_seed_gives_identical_bytes() -> None:
    first = _payloads(*_week(5))
    second = _payloads(*_week(5))
    assert first == second
    assert len(first) > 500


def test_different_seed_gives_different_bytes() -> None:
    assert [s[2] for s in _payloads(*_week(5))] != [s[2] for s in _payloads(*_week(6))]


def _check_decodes_to(sample_payload: bytes, measurement: Measurement, tz: tzinfo) -> None:
    decoded = decode(measurement.device.characteristic, sample_payload)
    observed = {o.loinc: o for o in observations_from(decoded)}
    expected = _LOINC_OF_VALUE[measurement.device.device_type]
    assert set(observed) == set(expected.values())
    for key, loinc in expected.items():
        observation = observed[loinc]
        assert observation.unit == METRICS[loinc].unit
        assert math.isclose(observation.value, measurement.values[key], abs_tol=1e-6), key
    stamp = getattr(decoded, "base_time", None) or decoded.timestamp
    wall_clock = measurement.taken_at.astimezone(tz)
    assert stamp.to_datetime(tz) == wall_clock.replace(microsecond=0)


@pytest.mark.parametrize(
    "tz", [UTC, ZoneInfo("America/Chicago"), timezone(timedelta(hours=5, minutes=30))]
)
def test_every_payload_decodes_to_the_measured_values(tz: tzinfo) -> None:
    population, measurements = _week(21)
    samples = list(SimulatedHome(population, tz=tz).samples(measurements))
    assert len(samples) == len(measurements)
    for (device, patient_id, payload, taken_at), measurement in zip(
        samples, measurements, strict=True
    ):
        assert (device, patient_id, taken_at) == (
            measurement.device,
            measurement.patient_id,
            measurement.taken_at,
        )
        _check_decodes_to(payload, measurement, tz)


def test_blood_pressure_layout_has_timestamp_pulse_and_map() -> None:
    _, measurements = _week(2)
    measurement = next(m for m in measurements if m.device.characteristic == "2A35")
    decoded = decode("2A35", characteristic_value(measurement, tz=UTC))
    systolic, diastolic = measurement.values["systolic"], measurement.values["diastolic"]
    assert decoded.unit == "mmHg"
    assert decoded.timestamp is not None and decoded.pulse_rate is not None
    assert decoded.mean_arterial_pressure == round(diastolic + (systolic - diastolic) / 3)
    assert mean_arterial_pressure(120, 80) == 93


def test_thermometer_reports_armpit_and_glucose_meter_numbers_its_records() -> None:
    population, measurements = _week(4, patients=40)
    home = SimulatedHome(population)
    numbers: dict[str, list[int]] = defaultdict(list)
    for device, _, payload, _ in home.samples(measurements):
        decoded = decode(device.characteristic, payload)
        if device.device_type is DeviceType.THERMOMETER:
            assert decoded.temperature_type == 1
            assert decoded.unit == "C"
        if device.device_type is DeviceType.GLUCOSE_METER:
            assert (decoded.type, decoded.sample_location) == (1, 1)
            numbers[device.device_id].append(decoded.sequence_number)
    assert numbers
    for sequence in numbers.values():
        assert sequence == list(range(1, len(sequence) + 1))


def test_sequence_numbers_are_for_glucose_meters_only() -> None:
    _, measurements = _week(4)
    glucose = next(m for m in measurements if m.device.device_type is DeviceType.GLUCOSE_METER)
    other = next(m for m in measurements if m.device.device_type is DeviceType.BLOOD_PRESSURE)
    with pytest.raises(ValueError, match="sequence number"):
        characteristic_value(glucose, tz=UTC)
    with pytest.raises(ValueError, match="sequence number"):
        characteristic_value(other, tz=UTC, sequence_number=1)


def test_home_refuses_a_device_it_does_not_hold() -> None:
    population, measurements = _week(4)
    home = SimulatedHome(population[:1])
    stranger = next(m for m in measurements if m.patient_id != population[0].patient_id)
    with pytest.raises(ValueError, match="does not belong"):
        home.sample(stranger)


# --------------------------------------------------------------------------------------------
# History


def test_history_is_sorted_aware_and_inside_the_window() -> None:
    _, measurements = _week(9)
    assert measurements == sorted(measurements, key=lambda m: (m.taken_at, m.patient_id))
    for measurement in measurements:
        assert measurement.taken_at.utcoffset() == timedelta(0)
        assert END - WEEK <= measurement.taken_at < END


def test_history_rejects_naive_or_empty_windows() -> None:
    population = build_population(patients=3, seed=1)
    with pytest.raises(ValueError, match="aware"):
        history(population, start=END.replace(tzinfo=None), end=END, seed=1)
    with pytest.raises(ValueError, match="after"):
        history(population, start=END, end=END, seed=1)


def test_habits_follow_local_wall_clock() -> None:
    tz = ZoneInfo("America/Chicago")
    population = build_population(patients=30, seed=12)
    measurements = history(population, start=END - WEEK, end=END, seed=12, local_tz=tz)
    hours = Counter(
        m.taken_at.astimezone(tz).hour
        for m in measurements
        if m.device.device_type is DeviceType.BLOOD_PRESSURE
    )
    routine = sum(hours[h] for h in (6, 7, 8, 19, 20, 21))
    assert routine > 0.9 * sum(hours.values())


def test_morning_blood_pressure_runs_higher_than_evening() -> None:
    _, measurements = _week(13, patients=100)
    by_half: dict[bool, list[float]] = {True: [], False: []}
    for m in measurements:
        if m.device.device_type is DeviceType.BLOOD_PRESSURE:
            by_half[m.taken_at.hour < 12].append(m.values["systolic"])
    mean = {k: sum(v) / len(v) for k, v in by_half.items()}
    assert mean[True] > mean[False] + 4


def _full_local_days(end: datetime) -> list[date]:
    first = (end - WEEK).date() + DAY
    return [first + i * DAY for i in range((end.date() - first).days)]


def _check_week(seed: int, end: datetime) -> None:
    population, measurements = _week(seed, end=end)
    by_id = {p.patient_id: p for p in population}
    last_day = end - DAY

    # Values stay physiologically plausible: on the measurement and through the decoder.
    for measurement in measurements:
        for key, value in measurement.values.items():
            low, high = PLAUSIBLE_RANGES[key]
            assert low <= value <= high, (key, value)
    for device, _, payload, _ in _payloads(population, measurements):
        for observation in observations_from(decode(device.characteristic, payload)):
            metric = METRICS[observation.loinc]
            assert metric.plausible_min <= observation.value <= metric.plausible_max

    # Habits: blood pressure twice a day on most days, heart-failure patients weigh daily.
    silent = {
        p.patient_id
        for p in population
        if p.scenario is not None and p.scenario.kind is ScenarioKind.MISSED_DAYS
    }
    days = _full_local_days(end)
    bp_per_day = Counter(
        (m.patient_id, m.taken_at.date())
        for m in measurements
        if m.device.device_type is DeviceType.BLOOD_PRESSURE
    )
    regular = [p.patient_id for p in population if p.patient_id not in silent]
    twice = sum(bp_per_day[(pid, day)] >= 2 for pid in regular for day in days)
    assert twice >= 0.75 * len(regular) * len(days)
    weigh_days = {
        (m.patient_id, m.taken_at.date())
        for m in measurements
        if m.device.device_type is DeviceType.WEIGHT_SCALE
    }
    heart_failure = [pid for pid in regular if by_id[pid].program is Program.HEART_FAILURE]
    assert heart_failure
    for pid in heart_failure:  # about 5 % of readings are skipped
        assert sum((pid, day) in weigh_days for day in days) >= len(days) - 2

    # Each flag-raising scenario shows in the last 24 hours, on its patient.
    crisis = _with_scenario(population, ScenarioKind.HYPERTENSIVE_CRISIS).patient_id
    assert any(
        m.values["systolic"] > 180 or m.values["diastolic"] > 120
        for m in measurements
        if m.patient_id == crisis and m.taken_at >= last_day and "systolic" in m.values
    )
    desaturating = _with_scenario(population, ScenarioKind.DESATURATION).patient_id
    assert min(_values(measurements, desaturating, "spo2", last_day)) < 92
    hypo = _with_scenario(population, ScenarioKind.HYPOGLYCAEMIA).patient_id
    assert min(_values(measurements, hypo, "mg_dl", last_day)) < 70
    febrile = _with_scenario(population, ScenarioKind.FEVER).patient_id
    assert max(_values(measurements, febrile, "celsius", last_day)) > 38.0

    # Heart-failure weight gain: >= 0.9 kg between the last two daily weigh-ins, >= 2.3 kg
    # over the week.
    gaining = _with_scenario(population, ScenarioKind.HEART_FAILURE_WEIGHT_GAIN).patient_id
    weighings = [m for m in measurements if m.patient_id == gaining and "kg" in m.values]
    previous, latest = weighings[-2], weighings[-1]
    assert latest.taken_at >= end - timedelta(hours=26)
    assert latest.taken_at - previous.taken_at <= timedelta(hours=26)
    assert latest.values["kg"] - previous.values["kg"] >= 0.9
    assert latest.values["kg"] - min(m.values["kg"] for m in weighings) >= 2.3

    # Missed days: silent for 48 hours or more at the end of the window.
    (missing,) = silent
    last_seen = max(m.taken_at for m in measurements if m.patient_id == missing)
    assert end - last_seen >= timedelta(hours=48)

    # Patients without a scenario raise none of those flags.
    for m in measurements:
        patient = by_id[m.patient_id]
        if patient.scenario is not None:
            continue
        values = m.values
        assert values.get("systolic", 0) <= 180 and values.get("diastolic", 0) <= 120
        assert values.get("mg_dl", 100) >= 70
        assert values.get("celsius", 37) <= 38.0
        assert values.get("spo2", 100) >= (94 if patient.spo2_scale == 1 else 88)


@settings(max_examples=20, deadline=None, derandomize=True)
@given(
    seed=st.integers(min_value=0, max_value=2**32),
    end=st.datetimes(
        min_value=datetime(2024, 1, 1),  # noqa: DTZ001 - hypothesis wants naive bounds
        max_value=datetime(2027, 12, 31),  # noqa: DTZ001
        timezones=st.just(UTC),
    ),
)
def test_a_week_of_twenty_patients_is_realistic_and_shows_every_scenario(
    seed: int, end: datetime
) -> None:
    _check_week(seed, end)


# --------------------------------------------------------------------------------------------
# Live


def _live(seed: int, count: int, population: list[SimulatedPatient]) -> list[Measurement]:
    stream = live(population, seed=seed, now=END, rate_per_patient_per_minute=2.0)
    return list(itertools.islice(stream, count))


def test_live_is_deterministic_and_paced_from_now() -> None:
    population = build_population(patients=20, seed=1)
    first = _live(1, 1000, population)
    assert first == _live(1, 1000, population)
    assert first != _live(2, 1000, population)
    times = [m.taken_at for m in first]
    assert times == sorted(times) and times[0] > END
    active = sum(
        1
        for p in population
        if p.scenario is None or p.scenario.kind is not ScenarioKind.MISSED_DAYS
    )
    mean_gap_s = (times[-1] - END).total_seconds() / len(times)
    expected_gap_s = 60 / (2.0 * active)
    assert expected_gap_s / 1.5 < mean_gap_s < expected_gap_s * 1.5


def test_live_keeps_scenario_patients_abnormal() -> None:
    population = build_population(patients=20, seed=4)
    measurements = _live(4, 3000, population)
    seen = {m.patient_id for m in measurements}
    missing = _with_scenario(population, ScenarioKind.MISSED_DAYS).patient_id
    assert missing not in seen
    assert len(seen) == len(population) - 1
    crisis = _with_scenario(population, ScenarioKind.HYPERTENSIVE_CRISIS).patient_id
    assert min(_values(measurements, crisis, "systolic", END)) > 180
    desaturating = _with_scenario(population, ScenarioKind.DESATURATION).patient_id
    assert max(_values(measurements, desaturating, "spo2", END)) < 92
    hypo = _with_scenario(population, ScenarioKind.HYPOGLYCAEMIA).patient_id
    assert max(_values(measurements, hypo, "mg_dl", END)) < 70
    febrile = _with_scenario(population, ScenarioKind.FEVER)
    assert min(_values(measurements, febrile.patient_id, "celsius", END)) > 38.0
    gaining = _with_scenario(population, ScenarioKind.HEART_FAILURE_WEIGHT_GAIN)
    gain = min(_values(measurements, gaining.patient_id, "kg", END)) - gaining.baseline["kg"]
    assert gain >= 2.3
    for measurement in measurements:
        for key, value in measurement.values.items():
            low, high = PLAUSIBLE_RANGES[key]
            assert low <= value <= high
    home = SimulatedHome(population)
    for (_, _, payload, _), measurement in zip(
        home.samples(measurements[:300]), measurements[:300], strict=True
    ):
        _check_decodes_to(payload, measurement, UTC)


def test_live_rejects_bad_arguments_and_ends_without_readers() -> None:
    population = build_population(patients=3, seed=1)
    naive = datetime(2025, 1, 1)  # noqa: DTZ001 - the mistake under test
    with pytest.raises(ValueError, match="positive"):
        next(live(population, seed=1, now=END, rate_per_patient_per_minute=0))
    with pytest.raises(ValueError, match="aware"):
        next(live(population, seed=1, now=naive, rate_per_patient_per_minute=1))
    assert list(live([], seed=1, now=END, rate_per_patient_per_minute=1)) == []


def test_well_patients_raise_no_flag_under_the_default_rules() -> None:
    """The demo's own population, a week of it, through the real decoder and rules."""
    import pandas as pd

    from analytics.rules import evaluate_thresholds, load_rules

    population = build_population(patients=20, seed=7)
    well = {p.patient_id: p for p in population if p.scenario is None}
    end = datetime(2026, 11, 29, 8, 0, tzinfo=UTC)
    home = SimulatedHome(population, tz=UTC)
    rows = []
    for device, patient_id, payload, taken_at in home.samples(
        history(population, start=end - timedelta(days=7), end=end, seed=7)
    ):
        if patient_id not in well:
            continue
        for obs in observations_from(decode(device.characteristic, payload)):
            rows.append(
                {
                    "reading_id": f"{patient_id}-{len(rows)}",
                    "patient_id": patient_id,
                    "loinc": obs.loinc,
                    "value": obs.value,
                    "measured_at": taken_at,
                    "spo2_scale": well[patient_id].spo2_scale,
                }
            )
    breaches = evaluate_thresholds(pd.DataFrame(rows), load_rules())
    assert len(rows) > 1000
    assert breaches[["patient_id", "rule_id", "value"]].to_dict("records") == []
