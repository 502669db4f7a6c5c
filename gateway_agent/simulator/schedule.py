"""When simulated patients measure themselves, and what their devices read: pure and seeded.

:func:`history` produces a realistic window of readings: patients keep habits in their local
wall-clock time (blood pressure about 07:30 and 20:30, weight about 07:00, SpO2 three times a
day, glucose before meals, temperature once a day), with a personal habit shift, jitter,
Gaussian noise around personal baselines, a daily rhythm and about 5 % skipped readings
(2 % of weigh-ins).

Scenarios are placed relative to the **end** of the window: a scenario starts
``scenario.onset_before_end`` before ``end`` and lasts until it, so a window ending now
already holds the readings that must raise flags. Single-reading scenarios start 4-20 h
before the end and the patient, feeling unwell, takes an extra reading of the affected
metric 60-120 minutes after onset; readings of that metric after onset are never skipped.
Weight gain (1.2-1.5 kg a day) starts 3 days 8-14 h before the end, so the last two
weigh-ins differ by more than 0.9 kg and the week's gain exceeds 2.3 kg; missed days
silence every device from 50-72 h before the end on.

:func:`live` continues a window that ended at ``now`` as an endless, much faster stream:
scenario patients stay abnormal and missed-days patients stay silent.

Randomness comes only from :class:`random.Random` instances seeded from the caller's seed,
the patient and the local date, so a patient's day reads the same whatever else is generated.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo

from carewatch_contract.messages import DeviceType
from gateway_agent.simulator.population import (
    SCENARIO_DEVICE,
    ScenarioKind,
    SimulatedDevice,
    SimulatedPatient,
)

SKIP_PROBABILITY = 0.05
"""Chance that a patient skips any one scheduled reading."""
WEIGH_IN_SKIP_PROBABILITY = 0.02
"""Heart-failure patients are coached to weigh every morning: they skip fewer weigh-ins."""

PLAUSIBLE_RANGES: dict[str, tuple[float, float]] = {
    "systolic": (80, 230),
    "diastolic": (40, 140),
    "mean_arterial_pressure": (50, 170),
    "pulse_rate": (40, 160),
    "spo2": (80, 100),
    "mg_dl": (40, 400),
    "celsius": (35.0, 40.5),
    "kg": (40, 180),
}
"""Every simulated value stays inside these ranges (narrower than what ingest accepts)."""


@dataclass(frozen=True, slots=True)
class Measurement:
    """One reading a simulated device takes: what, when, and the values it shows.

    ``values`` keys by device: blood pressure ``systolic``, ``diastolic``,
    ``mean_arterial_pressure``, ``pulse_rate`` (mmHg, bpm); pulse oximeter ``spo2``,
    ``pulse_rate``; scale ``kg``; thermometer ``celsius``; glucose meter ``mg_dl``.
    """

    patient_id: str
    device: SimulatedDevice
    taken_at: datetime
    """Aware, UTC."""
    values: dict[str, float] = field(hash=False)


@dataclass(frozen=True, slots=True)
class _Habit:
    """A reading a patient takes every day at about ``at`` local time."""

    at: time
    jitter_sd_min: float
    skip_probability: float = SKIP_PROBABILITY


_HABITS: dict[DeviceType, tuple[_Habit, ...]] = {
    DeviceType.BLOOD_PRESSURE: (_Habit(time(7, 30), 15), _Habit(time(20, 30), 20)),
    DeviceType.WEIGHT_SCALE: (_Habit(time(7, 0), 10, WEIGH_IN_SKIP_PROBABILITY),),
    DeviceType.PULSE_OXIMETER: (
        _Habit(time(8, 0), 20),
        _Habit(time(13, 30), 30),
        _Habit(time(19, 30), 25),
    ),
    DeviceType.GLUCOSE_METER: (
        _Habit(time(7, 15), 10),
        _Habit(time(12, 15), 15),
        _Habit(time(18, 15), 15),
    ),
    DeviceType.THERMOMETER: (_Habit(time(9, 0), 30),),
}
_JITTER_LIMIT_SD = 2.5
"""Jitter is clipped at this many standard deviations, so habits never swap order."""
_HABIT_SHIFT_LIMIT_MIN = 45.0
"""A patient's personal habit shift (early bird, late riser) is clipped at this many minutes."""
_SYMPTOM_READING_DELAY_MIN = (60.0, 120.0)
"""A patient feeling unwell takes an extra reading this many minutes after onset."""
_WEIGHT_GAIN_DAYS = 4.0
"""Weight gain levels off this long after onset (a live stream runs past the window)."""
_DESATURATION_DRIFT = timedelta(hours=1)
"""SpO2 drifts from baseline to its lowest over this long after onset."""
_LIVE_SCENARIO_DEVICE_SHARE = 0.5
"""In a live stream, a scenario patient uses the scenario's device this often."""
_ONE_DAY = timedelta(days=1)


# --------------------------------------------------------------------------------------------
# Values


def mean_arterial_pressure(systolic: float, diastolic: float) -> float:
    """The usual estimate, diastolic + (systolic - diastolic) / 3, rounded to whole mmHg."""
    return float(round(diastolic + (systolic - diastolic) / 3))


def _clamp(value: float, low: float, high: float) -> float:
    return min(max(value, low), high)


def _noise(rng: random.Random, sd: float, limit_sd: float = 2.5) -> float:
    """Gaussian noise clipped at ``limit_sd`` standard deviations."""
    return _clamp(rng.gauss(0.0, sd), -limit_sd * sd, limit_sd * sd)


def _in_range(key: str, value: float) -> float:
    low, high = PLAUSIBLE_RANGES[key]
    return float(_clamp(value, low, high))


def _active(patient: SimulatedPatient, kind: ScenarioKind, since_onset: timedelta | None) -> bool:
    scenario = patient.scenario
    return (
        scenario is not None
        and scenario.kind is kind
        and since_onset is not None
        and since_onset >= timedelta(0)
    )


def _pulse_rate(
    patient: SimulatedPatient, hour: float, since_onset: timedelta | None, rng: random.Random
) -> float:
    pulse = patient.baseline["pulse_rate"] + _noise(rng, 4.0)
    if hour < 9:
        pulse -= 3  # resting, just up
    elif 12 <= hour < 19:
        pulse += 3
    severity = patient.scenario.severity if patient.scenario else 0.0
    if _active(patient, ScenarioKind.FEVER, since_onset):
        pulse += 12 + 10 * severity
    elif _active(patient, ScenarioKind.DESATURATION, since_onset):
        pulse += 10 + 12 * severity
    return _in_range("pulse_rate", round(pulse))


def _blood_pressure(
    patient: SimulatedPatient, hour: float, since_onset: timedelta | None, rng: random.Random
) -> dict[str, float]:
    # Morning surge: higher on waking, lower in the evening.
    if hour < 11:
        rhythm_systolic, rhythm_diastolic = 6.0, 3.0
    elif hour >= 18:
        rhythm_systolic, rhythm_diastolic = -3.0, -2.0
    else:
        rhythm_systolic, rhythm_diastolic = 0.0, 0.0
    systolic = patient.baseline["systolic"] + rhythm_systolic + _noise(rng, 6.0)
    diastolic = patient.baseline["diastolic"] + rhythm_diastolic + _noise(rng, 4.0)
    if _active(patient, ScenarioKind.HYPERTENSIVE_CRISIS, since_onset):
        severity = patient.scenario.severity if patient.scenario else 0.0
        systolic = _clamp(186 + 30 * severity + _noise(rng, 4.0), 182, 225)
        diastolic = _clamp(108 + 16 * severity + _noise(rng, 3.0), 95, 132)
    systolic = _in_range("systolic", round(systolic))
    diastolic = float(_clamp(round(diastolic), PLAUSIBLE_RANGES["diastolic"][0], systolic - 20))
    return {
        "systolic": systolic,
        "diastolic": diastolic,
        "mean_arterial_pressure": mean_arterial_pressure(systolic, diastolic),
        "pulse_rate": _pulse_rate(patient, hour, since_onset, rng),
    }


def _spo2(
    patient: SimulatedPatient, hour: float, since_onset: timedelta | None, rng: random.Random
) -> dict[str, float]:
    baseline = patient.baseline["spo2"]
    # A well patient stays within their target: 94-98 % (scale 1) or 88-92 % (scale 2).
    target_floor = 88 if patient.spo2_scale == 2 else 94
    spo2 = _clamp(baseline + _noise(rng, 0.8), max(baseline - 2, target_floor), 100)
    if since_onset is not None and _active(patient, ScenarioKind.DESATURATION, since_onset):
        severity = patient.scenario.severity if patient.scenario else 0.0
        lowest = 91 - 5 * severity  # 86-91 %
        drifted = min(1.0, since_onset / _DESATURATION_DRIFT)
        spo2 = baseline + (lowest - baseline) * drifted + _noise(rng, 0.7)
        spo2 = _clamp(spo2, 86, 91) if drifted >= 1.0 else min(spo2, baseline)
    return {
        "spo2": _in_range("spo2", round(spo2)),
        "pulse_rate": _pulse_rate(patient, hour, since_onset, rng),
    }


def _weight(
    patient: SimulatedPatient, since_onset: timedelta | None, rng: random.Random
) -> dict[str, float]:
    kg = patient.baseline["kg"] + _noise(rng, 0.1)
    if since_onset is not None and _active(
        patient, ScenarioKind.HEART_FAILURE_WEIGHT_GAIN, since_onset
    ):
        severity = patient.scenario.severity if patient.scenario else 0.0
        # 1.2-1.5 kg a day: over the 0.9 kg/24 h default even between weigh-ins a little
        # less than 24 h apart.
        kg_per_day = 1.2 + 0.3 * severity
        days = min(since_onset / _ONE_DAY, _WEIGHT_GAIN_DAYS)
        # Same scale, same time every morning: little day-to-day noise during the gain.
        kg = patient.baseline["kg"] + kg_per_day * days + _noise(rng, 0.03)
    return {"kg": _in_range("kg", round(kg * 20) / 20)}  # the scale shows 0.05 kg steps


def _temperature(
    patient: SimulatedPatient, hour: float, since_onset: timedelta | None, rng: random.Random
) -> dict[str, float]:
    celsius = patient.baseline["celsius"] + (0.2 if hour >= 17 else 0.0) + _noise(rng, 0.12)
    if _active(patient, ScenarioKind.FEVER, since_onset):
        severity = patient.scenario.severity if patient.scenario else 0.0
        celsius = _clamp(38.6 + 0.8 * severity + _noise(rng, 0.12), 38.5, 39.5)
    return {"celsius": _in_range("celsius", round(celsius, 1))}


def _glucose(
    patient: SimulatedPatient, hour: float, since_onset: timedelta | None, rng: random.Random
) -> dict[str, float]:
    # Fasting before breakfast, then higher before lunch and dinner.
    meal_rise = 0.0 if hour < 10 else 8.0 if hour < 16 else 15.0
    mg_dl = _clamp(patient.baseline["mg_dl"] + meal_rise + _noise(rng, 15.0), 75, 240)
    if _active(patient, ScenarioKind.HYPOGLYCAEMIA, since_onset):
        severity = patient.scenario.severity if patient.scenario else 0.0
        mg_dl = _clamp(62 - 14 * severity + _noise(rng, 2.0), 45, 65)
    return {"mg_dl": _in_range("mg_dl", round(mg_dl))}


def reading_values(
    patient: SimulatedPatient,
    device_type: DeviceType,
    local_time: datetime,
    since_onset: timedelta | None,
    rng: random.Random,
) -> dict[str, float]:
    """What ``patient``'s device of ``device_type`` reads at ``local_time`` (patient's zone).

    ``since_onset`` is the time since the patient's scenario started (negative or None
    before it, or without one).
    """
    hour = local_time.hour + local_time.minute / 60
    if device_type is DeviceType.BLOOD_PRESSURE:
        return _blood_pressure(patient, hour, since_onset, rng)
    if device_type is DeviceType.PULSE_OXIMETER:
        return _spo2(patient, hour, since_onset, rng)
    if device_type is DeviceType.WEIGHT_SCALE:
        return _weight(patient, since_onset, rng)
    if device_type is DeviceType.THERMOMETER:
        return _temperature(patient, hour, since_onset, rng)
    if device_type is DeviceType.GLUCOSE_METER:
        return _glucose(patient, hour, since_onset, rng)
    raise ValueError(f"the simulator has no readings for {device_type}")


# --------------------------------------------------------------------------------------------
# History


def _require_aware(name: str, moment: datetime) -> None:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware")


def _habit_shift(seed: int, patient: SimulatedPatient) -> timedelta:
    rng = random.Random(f"{seed}:{patient.patient_id}:habits")  # noqa: S311 - simulation
    minutes = _clamp(rng.gauss(0.0, 20.0), -_HABIT_SHIFT_LIMIT_MIN, _HABIT_SHIFT_LIMIT_MIN)
    return timedelta(minutes=round(minutes))


def _scenario_device(patient: SimulatedPatient) -> SimulatedDevice | None:
    if patient.scenario is None:
        return None
    device_type = SCENARIO_DEVICE[patient.scenario.kind]
    return None if device_type is None else patient.device(device_type)


def _local_days(start: datetime, end: datetime, local_tz: tzinfo) -> Iterator[date]:
    """Every local date that overlaps [start, end]: habits never leave their own local day
    (the earliest falls after 05:45, the latest before 22:15)."""
    day = start.astimezone(local_tz).date()
    last = end.astimezone(local_tz).date()
    while day <= last:
        yield day
        day += _ONE_DAY


def _patient_history(
    patient: SimulatedPatient, start: datetime, end: datetime, seed: int, local_tz: tzinfo
) -> list[Measurement]:
    scenario = patient.scenario
    onset = None if scenario is None else end - scenario.onset_before_end
    silent_from = (
        onset if scenario is not None and scenario.kind is ScenarioKind.MISSED_DAYS else None
    )
    scenario_device = _scenario_device(patient)
    shift = _habit_shift(seed, patient)
    measurements: list[Measurement] = []

    def since_onset(taken_at: datetime) -> timedelta | None:
        return None if onset is None else taken_at - onset

    for day in _local_days(start, end, local_tz):
        day_seed = f"{seed}:{patient.patient_id}:{day.isoformat()}"
        rng = random.Random(day_seed)  # noqa: S311 - simulation
        for device in patient.devices:
            for habit in _HABITS[device.device_type]:
                jitter = _noise(rng, habit.jitter_sd_min, _JITTER_LIMIT_SD)
                local = datetime.combine(day, habit.at, tzinfo=local_tz) + shift
                local += timedelta(seconds=round(jitter * 60 + rng.uniform(-30, 30)))
                taken_at = local.astimezone(UTC)
                skipped = rng.random() < habit.skip_probability
                values = reading_values(
                    patient, device.device_type, local, since_onset(taken_at), rng
                )
                if not start <= taken_at < end:
                    continue
                if silent_from is not None and taken_at >= silent_from:
                    continue
                unwell = device == scenario_device and onset is not None and taken_at >= onset
                if skipped and not unwell:
                    continue
                measurements.append(Measurement(patient.patient_id, device, taken_at, values))

    if onset is not None and scenario_device is not None:
        rng = random.Random(f"{seed}:{patient.patient_id}:symptoms")  # noqa: S311 - simulation
        delay = timedelta(minutes=rng.uniform(*_SYMPTOM_READING_DELAY_MIN))
        taken_at = (onset + delay).astimezone(UTC).replace(microsecond=0)
        if start <= taken_at < end:
            local = taken_at.astimezone(local_tz)
            values = reading_values(
                patient, scenario_device.device_type, local, since_onset(taken_at), rng
            )
            measurements.append(Measurement(patient.patient_id, scenario_device, taken_at, values))
    return measurements


def _order(measurement: Measurement) -> tuple[datetime, str, str]:
    return (measurement.taken_at, measurement.patient_id, measurement.device.device_id)


def history(
    population: Iterable[SimulatedPatient],
    *,
    start: datetime,
    end: datetime,
    seed: int,
    local_tz: tzinfo = UTC,
) -> list[Measurement]:
    """Every reading the population takes in [start, end), sorted by time then patient.

    Habits are in ``local_tz`` wall-clock time (the patients' homes); ``taken_at`` is UTC.
    Scenarios are placed relative to ``end`` (see the module docstring). The same arguments
    give the same list; nothing reads the clock or the global random generator.
    """
    _require_aware("start", start)
    _require_aware("end", end)
    if end <= start:
        raise ValueError("end must be after start")
    start, end = start.astimezone(UTC), end.astimezone(UTC)
    measurements: list[Measurement] = []
    for patient in population:
        measurements.extend(_patient_history(patient, start, end, seed, local_tz))
    measurements.sort(key=_order)
    return measurements


# --------------------------------------------------------------------------------------------
# Live


def _live_device(
    patient: SimulatedPatient, rng: random.Random, scenario_device: SimulatedDevice | None
) -> SimulatedDevice:
    if scenario_device is not None and rng.random() < _LIVE_SCENARIO_DEVICE_SHARE:
        return scenario_device
    return rng.choice(patient.devices)


def live(
    population: Sequence[SimulatedPatient],
    *,
    seed: int,
    now: datetime,
    rate_per_patient_per_minute: float,
    local_tz: tzinfo = UTC,
) -> Iterator[Measurement]:
    """An endless, deterministic stream of readings starting just after ``now``.

    Each patient who is not in a missed-days scenario reads a device about
    ``rate_per_patient_per_minute`` times a minute (exponential gaps from the seeded
    generator); ``taken_at`` is ``now`` plus the accumulated gaps, so the caller paces
    items by wall clock (nothing here sleeps). The stream continues a :func:`history`
    window that ended at ``now``: scenarios are as far along as they would be there, and
    scenario patients use their scenario's device half of the time, so flags keep coming.
    Stops only if no patient can read anything.
    """
    _require_aware("now", now)
    if not (math.isfinite(rate_per_patient_per_minute) and rate_per_patient_per_minute > 0):
        raise ValueError("rate_per_patient_per_minute must be a positive number")
    readers = [
        patient
        for patient in population
        if patient.devices
        and not (patient.scenario and patient.scenario.kind is ScenarioKind.MISSED_DAYS)
    ]
    if not readers:
        return
    now = now.astimezone(UTC)
    rng = random.Random(f"{seed}:live")  # noqa: S311 - simulation
    readings_per_second = rate_per_patient_per_minute * len(readers) / 60
    scenario_devices = {p.patient_id: _scenario_device(p) for p in readers}
    elapsed_s = 0.0
    while True:
        elapsed_s += rng.expovariate(readings_per_second)
        patient = rng.choice(readers)
        device = _live_device(patient, rng, scenario_devices[patient.patient_id])
        taken_at = now + timedelta(seconds=elapsed_s)
        since_onset = (
            None
            if patient.scenario is None
            else patient.scenario.onset_before_end + (taken_at - now)
        )
        values = reading_values(
            patient, device.device_type, taken_at.astimezone(local_tz), since_onset, rng
        )
        yield Measurement(patient.patient_id, device, taken_at, values)
