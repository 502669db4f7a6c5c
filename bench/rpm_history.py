"""Synthetic remote-monitoring histories for the rules benchmark and the backtest.

``generate_history(patients=1000, days=90, seed=7)`` builds, in numpy and pandas with no loop per
reading, what a monitoring programme of that size records over that many days: one row per
reading (LOINC code, value in the canonical UCUM unit of :mod:`carewatch_contract.metrics`,
measured_at in UTC), reproducible from the seed. ``write_csv`` writes the backtest's CSV;
``python -m bench.rpm_history --out FILE.csv`` does both and prints a one-line summary.

The model
=========

Population. Patients ``pt-00001`` ... are split 40 % hypertension, 20 % heart failure, 20 % COPD,
20 % diabetes (largest remainder, then shuffled). COPD patients are on NEWS2 SpO2 scale 2, the
others on scale 1; 30 % of COPD patients are on home oxygen (lower baseline, more exacerbations).

Days and times. The history covers the ``days`` whole UTC days before ``end``'s date (default
:data:`DEFAULT_END`; times are local times treated as UTC). Each scheduled measurement happens
at its nominal time plus the patient's habitual offset (sd 20 min, at most 45 min) plus that
day's jitter (sd 20 min), never more than 1 h from the nominal time; times are whole seconds.

Devices and schedules, per programme (nominal readings per patient-day with every measurement
taken; a cuff measurement is 3 readings with one ``measured_at``, an oximeter one is 2):

=============  ==========================================================  =========
hypertension   cuff 07:00 and 19:30                                         6
heart_failure  cuff 07:00 and 19:30, scale 06:45, oximeter 09:00            9
copd           oximeter 2-4 times (08:00, 21:00, then 12:30, 17:00),        about 10
               thermometer 08:15, cuff 08:30, rare manual respiration rate
diabetes       glucose meter 07:00, 11:45, 17:45 and on some days 22:00,    about 6.5
               cuff 07:25
=============  ==========================================================  =========

Adherence. Each measurement is taken with the patient's probability (85 % of patients draw it
from 0.80-0.98, 15 % from 0.55-0.80), which fades by up to 12 % over the window. Whole days
are missed: 30 % of patients are gap-prone (a gap starts on 1 day in 35 and lasts 1-7 days:
travel, device left at home), the others start one on 1 day in 200. Each device also has its
own outages of 1-6 days (starting on 1 day in 120: flat battery, unpaired). Hospital
admissions (below) are gaps too.

Physiology. Each metric of each patient is a personal baseline, a linear drift over the window,
a day-level AR(1) wobble (persistence 0.5-0.8) and per-reading device noise:

- Systolic baseline: hypertension 142 +- 10 (115-165) drifting down 3 mmHg on average
  (treatment titration), heart failure 122 +- 12 (95-160), COPD 134 +- 14, diabetes
  136 +- 12; morning readings 3 mmHg higher; reading noise 7 mmHg. Diastolic follows systolic
  (0.4-0.5 of its deviations) around 80 + 0.35 (systolic - 135). Pulse 72-84 /min by
  programme, noise 4.5-5 /min. 6 % of hypertension patients hover around 180 (baseline
  170-178), so that hysteresis matters.
- Hypertensive spikes: single cuff measurements lifted to 181-215 mmHg systolic (diastolic by
  0.35 of the lift), probability 0.4 % per hypertension measurement, 0.15 % otherwise.
- Heart failure: weight 84 +- 17 kg, drift sd 0.8 kg, day wobble 0.35 kg, scale noise
  0.25 kg. Fluid-gain episodes, 0.8 per patient-year: weight rises 1-3 kg over 3-7 days,
  stays 2-6 days, comes back over 2-5 days (diuretics); pulse up 4-12 /min and SpO2 down 1-3
  points meanwhile; 25 % end in a 3-7 day admission (no readings). SpO2 baseline 93-98 %.
- COPD: SpO2 baseline 89.5-95 % (on oxygen 88-92 %; 15 % of patients hover at 87-89 %),
  noise 0.9. Exacerbations, 1.2 per patient-year (2.2 on oxygen): onset over 1-3 days, 3-7
  days at worst, recovery over 4-10 days; SpO2 down 2-6 points, pulse up 8-25 /min, fever
  (+0.8-2.2 C) in half of them, respiration rate up 3-8 /min; 20 % end in a 3-8 day
  admission. Temperature 36.6 +- 0.2 C, noise 0.2 C. 30 % of COPD patients type in a
  respiration rate on 1 % of days, up to 16 % at the worst of an exacerbation.
- Diabetes: fasting glucose 132 +- 22 mg/dL (95-200), later measurements x1.08, x1.15, x1.20,
  per-reading log-normal variability (sd 0.15-0.27). 45 % of patients are on insulin or a
  sulfonylurea: 0.8 % of their readings are hypoglycaemic (69.4 minus an exponential of mean
  8 mg/dL, so about 1 in 8 is below 54), 0.08 % for the others. Hyperglycaemic spells
  (illness, missed doses), 4 per patient-year, 1-3 days at x1.4-1.9.

Devices round as they display: blood pressure, pulse, SpO2, glucose and respiration rate to
integers, temperature and weight to 0.1. Values are clipped to device ranges, all inside the
plausible ranges of :mod:`carewatch_contract.metrics`.

What the defaults give (1,000 patients x 90 days, seed 7): 520,146 rows, 5.8 per patient-day
(77 % of the 7.5 nominal; hypertension 4.7, heart failure 6.9, COPD 7.6, diabetes 5.1), in
about 0.5 s. Systolic > 180 in 1 % of systolic readings (296 patients: spikes and hoverers);
glucose < 70 in 1.2 %, < 54 in 0.1 %, > 250 in 3.8 % of glucose readings; COPD SpO2 < 88 in
11 % of theirs; temperature > 38.0 in 1 %; 62 manual respiration rates. 17 heart-failure
patients gain >= 2.3 kg within 7 days, and 123 of 200 gain >= 0.9 kg from one morning to the
next at least once (mostly day-to-day noise, as in real weight monitoring). 7.5 % of
patient-days have no reading at all. The schedule, not a volume, is what is fixed: about 2
million rows take about 3,800 patients (or 345 days).

Reading ids are UUIDv7 strings (as the gateway gives a live measurement): the 48-bit
millisecond time of ``measured_at`` and 74 random bits from the seed.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import numpy as np
import pandas as pd

from carewatch_contract.messages import DeviceType
from carewatch_contract.metrics import METRICS, Loinc

PROGRAMS: Final[tuple[str, ...]] = ("hypertension", "heart_failure", "copd", "diabetes")
PROGRAM_SHARES: Final[tuple[float, ...]] = (0.4, 0.2, 0.2, 0.2)
#: The end (exclusive) of a history when none is given: fixed, so a seed is a history.
DEFAULT_END: Final = pd.Timestamp("2026-12-01T00:00:00", tz="UTC")

#: The backtest CSV's columns, in order.
CSV_COLUMNS: Final[tuple[str, ...]] = ("patient_id", "metric", "value", "unit", "measured_at")
#: Columns of :attr:`History.readings`, in order.
READING_COLUMNS: Final[tuple[str, ...]] = (*CSV_COLUMNS, "reading_id", "device_id")
#: Columns of :attr:`History.patients`, in order.
PATIENT_COLUMNS: Final[tuple[str, ...]] = ("patient_id", "program", "spo2_scale", "on_oxygen")

SYSTOLIC: Final = Loinc.SYSTOLIC.value
DIASTOLIC: Final = Loinc.DIASTOLIC.value
PULSE: Final = Loinc.HEART_RATE.value
SPO2: Final = Loinc.SPO2.value
WEIGHT: Final = Loinc.BODY_WEIGHT.value
TEMPERATURE: Final = Loinc.BODY_TEMPERATURE.value
GLUCOSE: Final = Loinc.GLUCOSE.value
RESPIRATION: Final = Loinc.RESPIRATORY_RATE.value
#: The metrics a history holds, each with its canonical unit.
METRIC_UNITS: Final[dict[str, str]] = {
    code: METRICS[code].unit
    for code in (SYSTOLIC, DIASTOLIC, PULSE, SPO2, WEIGHT, TEMPERATURE, GLUCOSE, RESPIRATION)
}

MANUAL: Final = "manual"
#: Device types (``device_id`` is ``<patient_id>/<device type>``); manual = typed in the app.
DEVICE_TYPES: Final[tuple[str, ...]] = (
    DeviceType.BLOOD_PRESSURE.value,
    DeviceType.WEIGHT_SCALE.value,
    DeviceType.PULSE_OXIMETER.value,
    DeviceType.THERMOMETER.value,
    DeviceType.GLUCOSE_METER.value,
    MANUAL,
)

_DAY_NS: Final = 86_400 * 1_000_000_000
_HOUR_S: Final = 3_600
_MAX_SHIFT_S: Final = 3_600  # never more than 1 h from the nominal time
_EPISODE_LEAD_DAYS: Final = 14  # episodes may have begun this long before the window

# Schedules: nominal local times (hours) of each device's measurements.
CUFF_TWICE: Final = (7.0, 19.5)
SCALE_MORNING: Final = (6.75,)
HF_OXIMETER: Final = (9.0,)
COPD_OXIMETER: Final = (8.0, 21.0, 12.5, 17.0)  # in the order a 2nd, 3rd, 4th is added
COPD_THERMOMETER: Final = (8.25,)
COPD_CUFF: Final = (8.5,)
MANUAL_ENTRY: Final = (11.0,)
GLUCOSE_TIMES: Final = (7.0, 11.75, 17.75, 22.0)
GLUCOSE_SLOT_FACTOR: Final = (1.0, 1.08, 1.15, 1.20)
DIABETES_CUFF: Final = (7.42,)


@dataclass(frozen=True, slots=True, eq=False)
class History:
    """A generated history: the readings and the patients they belong to."""

    readings: pd.DataFrame
    patients: pd.DataFrame


@dataclass(frozen=True, slots=True)
class _Cohort:
    """What every device of a patient shares: the window, adherence and habits."""

    days: int
    day0_ns: int
    present: np.ndarray  # (patients, days): probability a scheduled measurement is taken
    habit_s: np.ndarray  # (patients,): habitual offset from nominal times, seconds


@dataclass(frozen=True, slots=True)
class _Taken:
    """The measurements a schedule produced, one entry each."""

    local: np.ndarray  # index into the programme's patients
    day: np.ndarray
    slot: np.ndarray
    at_ns: np.ndarray


@dataclass(frozen=True, slots=True)
class _Block:
    """Readings of one device type: one entry per measurement, one array per metric."""

    device: str
    patient: np.ndarray  # global patient index
    at_ns: np.ndarray
    values: dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class EpisodeSpec:
    """How often episodes come (Poisson, per patient-year) and their shape in days: a ramp up
    over ``onset``, ``plateau`` at worst, a ramp down over ``recovery``; a share of them end in
    an admission of ``admission_days`` from the day after the worst is reached."""

    per_year: float
    onset: tuple[int, int]
    plateau: tuple[int, int]
    recovery: tuple[int, int]
    admission_p: float = 0.0
    admission_days: tuple[int, int] = (3, 7)


FLUID_GAIN: Final = EpisodeSpec(
    0.8, onset=(3, 7), plateau=(2, 6), recovery=(2, 5), admission_p=0.25, admission_days=(3, 7)
)
COPD_EXACERBATION: Final = EpisodeSpec(
    1.2, onset=(1, 3), plateau=(3, 7), recovery=(4, 10), admission_p=0.2, admission_days=(3, 8)
)
COPD_EXACERBATIONS_ON_OXYGEN_PER_YEAR: Final = 2.2
HYPERGLYCAEMIC_SPELL: Final = EpisodeSpec(4.0, onset=(1, 1), plateau=(1, 3), recovery=(1, 2))


@dataclass(frozen=True, slots=True)
class _Episodes:
    severity: np.ndarray  # (m, K, days) in 0..1; K episodes per patient at most
    admitted: np.ndarray  # (m, days): in hospital, nothing measured


@dataclass(frozen=True, slots=True)
class _ProgramOutput:
    blocks: list[_Block]
    on_oxygen: np.ndarray  # (m,) bool


# ----------------------------------------------------------------------------------------------
# Building blocks


def _clipped_normal(
    rng: np.random.Generator, mean: float, sd: float, low: float, high: float, size: int
) -> np.ndarray:
    return np.clip(rng.normal(mean, sd, size), low, high)


def _ar1(rng: np.random.Generator, m: int, days: int, sd: float, phi: float) -> np.ndarray:
    """(m, days) stationary AR(1) series with marginal sd ``sd``: the day-to-day wobble."""
    out = np.empty((m, days))
    shocks = rng.normal(0.0, sd * np.sqrt(1.0 - phi * phi), (m, days))
    out[:, 0] = rng.normal(0.0, sd, m)
    for day in range(1, days):  # a loop over days, vectorised over patients
        out[:, day] = phi * out[:, day - 1] + shocks[:, day]
    return out


def _level(
    rng: np.random.Generator,
    base: np.ndarray,
    days: int,
    *,
    drift_sd: float,
    day_sd: float,
    phi: float,
    drift_mean: float = 0.0,
) -> np.ndarray:
    """(m, days) daily level: baseline, linear drift over the window, AR(1) wobble."""
    drift = rng.normal(drift_mean, drift_sd, base.size)
    ramp = np.linspace(0.0, 1.0, days)
    return base[:, None] + drift[:, None] * ramp[None, :] + _ar1(rng, base.size, days, day_sd, phi)


def _gaps(
    rng: np.random.Generator, m: int, days: int, rate: float | np.ndarray, max_len: int
) -> np.ndarray:
    """(m, days) bool: runs of 1..max_len days starting on a day with probability ``rate``."""
    rate_array = np.broadcast_to(np.asarray(rate, dtype=float).reshape(-1, 1), (m, 1))
    starts = rng.random((m, days)) < rate_array
    lengths = rng.integers(1, max_len + 1, (m, days))
    out = np.zeros((m, days), dtype=bool)
    for offset in range(min(max_len, days)):
        out[:, offset:] |= starts[:, : days - offset] & (lengths[:, : days - offset] > offset)
    return out


def _episodes(
    rng: np.random.Generator,
    m: int,
    days: int,
    spec: EpisodeSpec,
    *,
    per_year: np.ndarray | None = None,
) -> _Episodes:
    """Episodes of ``spec`` for m patients (``per_year`` overrides its rate per patient)."""
    rate = spec.per_year if per_year is None else per_year
    onset, plateau, recovery = spec.onset, spec.plateau, spec.recovery
    admission_p, admission_days = spec.admission_p, spec.admission_days
    lam = np.broadcast_to(np.asarray(rate, dtype=float), (m,)) / 365.0
    counts = rng.poisson(lam * (days + _EPISODE_LEAD_DAYS))
    k = max(int(counts.max(initial=0)), 1)
    start = rng.integers(-_EPISODE_LEAD_DAYS, days, (m, k))
    up = rng.integers(onset[0], onset[1] + 1, (m, k))
    top = rng.integers(plateau[0], plateau[1] + 1, (m, k))
    down = rng.integers(recovery[0], recovery[1] + 1, (m, k))
    valid = np.arange(k)[None, :] < counts[:, None]
    t = np.arange(days)[None, None, :] - start[:, :, None]
    rising = (t + 1) / up[:, :, None]
    falling = (up + top + down)[:, :, None] - t
    severity = np.clip(np.minimum(rising, falling / down[:, :, None]), 0.0, 1.0)
    severity *= valid[:, :, None]
    admitted = valid & (rng.random((m, k)) < admission_p)
    stay = rng.integers(admission_days[0], admission_days[1] + 1, (m, k))
    in_hospital = np.asarray(
        (admitted[:, :, None] & (t >= up[:, :, None]) & (t < (up + stay)[:, :, None])).any(axis=1)
    )
    return _Episodes(severity=severity, admitted=in_hospital)


def _tenths(values: np.ndarray) -> np.ndarray:
    """Rounded to 0.1 as a display shows it: the double nearest to the decimal (83.7, not
    83.70000000000002)."""
    return np.rint(values * 10.0) / 10.0


def _effect(severity: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """(m, days): the strongest of a patient's episodes, each scaled by its own magnitude."""
    return (severity * magnitude[:, :, None]).max(axis=1)


def _schedule(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    hours: Sequence[float],
    *,
    blocked: np.ndarray | None = None,
    active: np.ndarray | None = None,
    outage_rate: float = 1 / 120,
) -> _Taken:
    """The measurements of one device per patient: nominal ``hours`` each day, taken with the
    patient's adherence, not on gap or ``blocked`` days nor during the device's own outages,
    only where ``active`` (m, days, slots) allows; times jittered around the nominal hour."""
    m, days, slots = pidx.size, cohort.days, len(hours)
    present = cohort.present[pidx]
    outage = _gaps(rng, m, days, outage_rate, max_len=6)
    available = ~outage if blocked is None else ~(outage | blocked)
    taken = (rng.random((m, days, slots)) < present[:, :, None]) & available[:, :, None]
    if active is not None:
        taken &= active
    local, day, slot = np.nonzero(taken)
    nominal = np.asarray(hours, dtype=float)[slot] * _HOUR_S
    shift = cohort.habit_s[pidx[local]] + rng.normal(0.0, 20 * 60, local.size)
    seconds = nominal + np.clip(shift, -_MAX_SHIFT_S, _MAX_SHIFT_S)
    seconds = np.clip(np.rint(seconds), 0, 86_399).astype(np.int64)
    at_ns = cohort.day0_ns + day.astype(np.int64) * _DAY_NS + seconds * 1_000_000_000
    return _Taken(local=local, day=day, slot=slot, at_ns=at_ns)


def _bp_levels(
    rng: np.random.Generator, sys_base: np.ndarray, days: int, *, drift_mean: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """(m, days) systolic and diastolic daily levels; diastolic follows systolic."""
    m = sys_base.size
    systolic = _level(rng, sys_base, days, drift_sd=5.0, day_sd=4.0, phi=0.7, drift_mean=drift_mean)
    dia_base = np.clip(80.0 + 0.35 * (sys_base - 135.0) + rng.normal(0.0, 5.0, m), 55.0, 105.0)
    diastolic = (
        dia_base[:, None] + 0.5 * (systolic - sys_base[:, None]) + _ar1(rng, m, days, 2.0, 0.6)
    )
    return systolic, diastolic


def _pulse_level(rng: np.random.Generator, base: np.ndarray, days: int) -> np.ndarray:
    return _level(rng, base, days, drift_sd=2.0, day_sd=3.0, phi=0.6)


# ----------------------------------------------------------------------------------------------
# Devices


def _cuff(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    hours: Sequence[float],
    *,
    systolic: np.ndarray,
    diastolic: np.ndarray,
    pulse: np.ndarray,
    spike_p: float,
    blocked: np.ndarray | None = None,
) -> _Block:
    """Blood-pressure cuff: systolic, diastolic and pulse of one measurement; rare spikes."""
    taken = _schedule(rng, cohort, pidx, hours, blocked=blocked)
    local, day, n = taken.local, taken.day, taken.local.size
    morning = (np.asarray(hours)[taken.slot] < 12).astype(float)
    sys_level = systolic[local, day]
    sys_value = sys_level + 3.0 * morning + rng.normal(0.0, 7.0, n)
    dia_value = (
        diastolic[local, day]
        + 0.4 * (sys_value - sys_level)
        + 2.0 * morning
        + rng.normal(0.0, 4.5, n)
    )
    pulse_value = pulse[local, day] + rng.normal(0.0, 4.5, n)
    spike = rng.random(n) < spike_p
    lift = np.where(spike, np.maximum(rng.uniform(181.0, 215.0, n) - sys_value, 0.0), 0.0)
    sys_value = np.clip(np.rint(sys_value + lift), 70, 250)
    dia_value = np.clip(np.rint(dia_value + 0.35 * lift), 35, sys_value - 10)
    pulse_value = np.clip(np.rint(pulse_value + spike * rng.uniform(0.0, 8.0, n)), 35, 180)
    return _Block(
        device=DeviceType.BLOOD_PRESSURE.value,
        patient=pidx[local],
        at_ns=taken.at_ns,
        values={SYSTOLIC: sys_value, DIASTOLIC: dia_value, PULSE: pulse_value},
    )


def _scale(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    *,
    weight: np.ndarray,
    blocked: np.ndarray | None = None,
) -> _Block:
    """Weight scale, every morning."""
    taken = _schedule(rng, cohort, pidx, SCALE_MORNING, blocked=blocked)
    value = weight[taken.local, taken.day] + rng.normal(0.0, 0.25, taken.local.size)
    return _Block(
        device=DeviceType.WEIGHT_SCALE.value,
        patient=pidx[taken.local],
        at_ns=taken.at_ns,
        values={WEIGHT: np.clip(_tenths(value), 20.0, 300.0)},
    )


def _oximeter(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    hours: Sequence[float],
    *,
    spo2: np.ndarray,
    pulse: np.ndarray,
    blocked: np.ndarray | None = None,
    active: np.ndarray | None = None,
) -> _Block:
    """Pulse oximeter: SpO2 and pulse of one spot check."""
    taken = _schedule(rng, cohort, pidx, hours, blocked=blocked, active=active)
    local, day, n = taken.local, taken.day, taken.local.size
    spo2_value = np.clip(np.rint(spo2[local, day] + rng.normal(0.0, 0.9, n)), 70, 100)
    pulse_value = np.clip(np.rint(pulse[local, day] + rng.normal(0.0, 5.0, n)), 35, 180)
    return _Block(
        device=DeviceType.PULSE_OXIMETER.value,
        patient=pidx[local],
        at_ns=taken.at_ns,
        values={SPO2: spo2_value, PULSE: pulse_value},
    )


def _thermometer(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    *,
    temperature: np.ndarray,
    blocked: np.ndarray | None = None,
) -> _Block:
    """Thermometer, once a day."""
    taken = _schedule(rng, cohort, pidx, COPD_THERMOMETER, blocked=blocked)
    value = temperature[taken.local, taken.day] + rng.normal(0.0, 0.2, taken.local.size)
    return _Block(
        device=DeviceType.THERMOMETER.value,
        patient=pidx[taken.local],
        at_ns=taken.at_ns,
        values={TEMPERATURE: np.clip(_tenths(value), 32.0, 43.0)},
    )


def _glucose_meter(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    *,
    log_glucose: np.ndarray,
    log_sd: np.ndarray,
    hypo_p: np.ndarray,
    fourth_p: np.ndarray,
) -> _Block:
    """Glucose meter: fasting, before lunch, before dinner, and at bedtime on some days."""
    m, days = pidx.size, cohort.days
    active = np.ones((m, days, len(GLUCOSE_TIMES)), dtype=bool)
    active[:, :, 3] = rng.random((m, days)) < fourth_p[:, None]
    taken = _schedule(rng, cohort, pidx, GLUCOSE_TIMES, active=active)
    local, n = taken.local, taken.local.size
    factor = np.log(np.asarray(GLUCOSE_SLOT_FACTOR))[taken.slot]
    value = np.exp(log_glucose[local, taken.day] + factor + rng.normal(0.0, 1.0, n) * log_sd[local])
    hypo = rng.random(n) < hypo_p[local]
    value = np.where(hypo, np.maximum(69.4 - rng.exponential(8.0, n), 30.0), value)
    return _Block(
        device=DeviceType.GLUCOSE_METER.value,
        patient=pidx[local],
        at_ns=taken.at_ns,
        values={GLUCOSE: np.clip(np.rint(value), 20, 600)},
    )


def _manual_respiration(
    rng: np.random.Generator,
    cohort: _Cohort,
    pidx: np.ndarray,
    *,
    respiration: np.ndarray,
    entry_p: np.ndarray,
    blocked: np.ndarray | None = None,
) -> _Block:
    """A respiration rate typed into the app: rare, more often when breathless."""
    active = (rng.random(entry_p.shape) < entry_p)[:, :, None]
    taken = _schedule(rng, cohort, pidx, MANUAL_ENTRY, blocked=blocked, active=active)
    value = respiration[taken.local, taken.day] + rng.normal(0.0, 1.5, taken.local.size)
    return _Block(
        device=MANUAL,
        patient=pidx[taken.local],
        at_ns=taken.at_ns,
        values={RESPIRATION: np.clip(np.rint(value), 8, 40)},
    )


# ----------------------------------------------------------------------------------------------
# Programmes


def _hypertension(rng: np.random.Generator, cohort: _Cohort, pidx: np.ndarray) -> _ProgramOutput:
    """Cuff twice a day; 6 % of patients hover around 180 systolic; spikes 0.4 %."""
    m, days = pidx.size, cohort.days
    sys_base = _clipped_normal(rng, 142.0, 10.0, 115.0, 165.0, m)
    hover = rng.random(m) < 0.06
    sys_base = np.where(hover, rng.uniform(170.0, 178.0, m), sys_base)
    systolic, diastolic = _bp_levels(rng, sys_base, days, drift_mean=-3.0)
    pulse = _pulse_level(rng, _clipped_normal(rng, 72.0, 8.0, 52.0, 100.0, m), days)
    cuff = _cuff(
        rng,
        cohort,
        pidx,
        CUFF_TWICE,
        systolic=systolic,
        diastolic=diastolic,
        pulse=pulse,
        spike_p=0.004,
    )
    return _ProgramOutput(blocks=[cuff], on_oxygen=np.zeros(m, dtype=bool))


def _heart_failure(rng: np.random.Generator, cohort: _Cohort, pidx: np.ndarray) -> _ProgramOutput:
    """Cuff twice a day, scale every morning, oximeter once; fluid-gain episodes."""
    m, days = pidx.size, cohort.days
    fluid = _episodes(rng, m, days, FLUID_GAIN)
    k = fluid.severity.shape[1]
    sys_base = _clipped_normal(rng, 122.0, 12.0, 95.0, 160.0, m)
    systolic, diastolic = _bp_levels(rng, sys_base, days)
    pulse = _pulse_level(rng, _clipped_normal(rng, 74.0, 9.0, 55.0, 100.0, m), days)
    pulse += _effect(fluid.severity, rng.uniform(4.0, 12.0, (m, k)))
    weight_base = _clipped_normal(rng, 84.0, 17.0, 45.0, 160.0, m)
    weight = _level(rng, weight_base, days, drift_sd=0.8, day_sd=0.35, phi=0.8)
    weight += _effect(fluid.severity, rng.uniform(1.0, 3.0, (m, k)))
    spo2 = _level(rng, rng.uniform(93.0, 98.0, m), days, drift_sd=0.5, day_sd=0.6, phi=0.6)
    spo2 -= _effect(fluid.severity, rng.uniform(1.0, 3.0, (m, k)))
    blocked = fluid.admitted
    blocks = [
        _cuff(
            rng,
            cohort,
            pidx,
            CUFF_TWICE,
            systolic=systolic,
            diastolic=diastolic,
            pulse=pulse,
            spike_p=0.0015,
            blocked=blocked,
        ),
        _scale(rng, cohort, pidx, weight=weight, blocked=blocked),
        _oximeter(rng, cohort, pidx, HF_OXIMETER, spo2=spo2, pulse=pulse, blocked=blocked),
    ]
    return _ProgramOutput(blocks=blocks, on_oxygen=np.zeros(m, dtype=bool))


def _copd(rng: np.random.Generator, cohort: _Cohort, pidx: np.ndarray) -> _ProgramOutput:
    """Oximeter 2-4 times a day, thermometer and cuff once; exacerbations; manual RR."""
    m, days = pidx.size, cohort.days
    on_oxygen = rng.random(m) < 0.3
    flare = _episodes(
        rng,
        m,
        days,
        COPD_EXACERBATION,
        per_year=np.where(
            on_oxygen, COPD_EXACERBATIONS_ON_OXYGEN_PER_YEAR, COPD_EXACERBATION.per_year
        ),
    )
    severity, k = flare.severity, flare.severity.shape[1]
    spo2_base = np.where(on_oxygen, rng.uniform(88.0, 92.0, m), rng.uniform(89.5, 95.0, m))
    spo2_base = np.where(rng.random(m) < 0.15, rng.uniform(87.0, 89.0, m), spo2_base)
    spo2 = _level(rng, spo2_base, days, drift_sd=0.8, day_sd=0.7, phi=0.6)
    spo2 -= _effect(severity, rng.uniform(2.0, 6.0, (m, k)))
    pulse = _pulse_level(rng, _clipped_normal(rng, 84.0, 9.0, 60.0, 105.0, m), days)
    pulse += _effect(severity, rng.uniform(8.0, 25.0, (m, k)))
    fever = rng.uniform(0.8, 2.2, (m, k)) * (rng.random((m, k)) < 0.5)
    temperature = _level(
        rng,
        _clipped_normal(rng, 36.6, 0.2, 36.0, 37.2, m),
        days,
        drift_sd=0.05,
        day_sd=0.15,
        phi=0.5,
    ) + _effect(severity, fever)
    respiration = _level(
        rng,
        _clipped_normal(rng, 18.0, 2.0, 13.0, 24.0, m),
        days,
        drift_sd=0.5,
        day_sd=1.0,
        phi=0.6,
    ) + _effect(severity, rng.uniform(3.0, 8.0, (m, k)))
    sys_base = _clipped_normal(rng, 134.0, 14.0, 110.0, 165.0, m)
    systolic, diastolic = _bp_levels(rng, sys_base, days)

    # 2 + Binomial(2, q) spot checks a day: morning, evening, then midday, afternoon.
    checks = 2 + rng.binomial(2, rng.uniform(0.2, 0.8, m)[:, None], (m, days))
    active = np.arange(len(COPD_OXIMETER))[None, None, :] < checks[:, :, None]
    worst = severity.max(axis=1)
    entry_p = (rng.random(m) < 0.3)[:, None] * (0.01 + 0.15 * worst)
    blocked = flare.admitted
    blocks = [
        _oximeter(
            rng,
            cohort,
            pidx,
            COPD_OXIMETER,
            spo2=spo2,
            pulse=pulse,
            blocked=blocked,
            active=active,
        ),
        _thermometer(rng, cohort, pidx, temperature=temperature, blocked=blocked),
        _cuff(
            rng,
            cohort,
            pidx,
            COPD_CUFF,
            systolic=systolic,
            diastolic=diastolic,
            pulse=pulse,
            spike_p=0.0015,
            blocked=blocked,
        ),
        _manual_respiration(
            rng, cohort, pidx, respiration=respiration, entry_p=entry_p, blocked=blocked
        ),
    ]
    return _ProgramOutput(blocks=blocks, on_oxygen=on_oxygen)


def _diabetes(rng: np.random.Generator, cohort: _Cohort, pidx: np.ndarray) -> _ProgramOutput:
    """Glucose meter 3-4 times a day, cuff once; hypos on insulin, hyperglycaemic spells."""
    m, days = pidx.size, cohort.days
    on_insulin = rng.random(m) < 0.45
    spells = _episodes(rng, m, days, HYPERGLYCAEMIC_SPELL)
    fasting = _clipped_normal(rng, 132.0, 22.0, 95.0, 200.0, m)
    log_glucose = _level(rng, np.log(fasting), days, drift_sd=0.05, day_sd=0.08, phi=0.5)
    k = spells.severity.shape[1]
    log_glucose += np.log1p(_effect(spells.severity, rng.uniform(0.4, 0.9, (m, k))))
    glucose = _glucose_meter(
        rng,
        cohort,
        pidx,
        log_glucose=log_glucose,
        log_sd=rng.uniform(0.15, 0.27, m),
        hypo_p=np.where(on_insulin, 0.008, 0.0008),
        fourth_p=rng.uniform(0.2, 0.8, m),
    )
    sys_base = _clipped_normal(rng, 136.0, 12.0, 115.0, 165.0, m)
    systolic, diastolic = _bp_levels(rng, sys_base, days)
    pulse = _pulse_level(rng, _clipped_normal(rng, 76.0, 9.0, 52.0, 100.0, m), days)
    cuff = _cuff(
        rng,
        cohort,
        pidx,
        DIABETES_CUFF,
        systolic=systolic,
        diastolic=diastolic,
        pulse=pulse,
        spike_p=0.0015,
    )
    return _ProgramOutput(blocks=[glucose, cuff], on_oxygen=np.zeros(m, dtype=bool))


_PROGRAM_BUILDERS: Final[
    tuple[Callable[[np.random.Generator, _Cohort, np.ndarray], _ProgramOutput], ...]
] = (_hypertension, _heart_failure, _copd, _diabetes)


# ----------------------------------------------------------------------------------------------
# Assembly


def _assign_programs(rng: np.random.Generator, patients: int) -> np.ndarray:
    """Programme index per patient: shares by largest remainder, then shuffled."""
    shares = np.asarray(PROGRAM_SHARES) * patients
    counts = np.floor(shares).astype(int)
    remainder = patients - int(counts.sum())
    counts[np.argsort(-(shares - counts), kind="stable")[:remainder]] += 1
    return rng.permutation(np.repeat(np.arange(len(PROGRAMS)), counts))


def _cohort(rng: np.random.Generator, patients: int, days: int, day0: pd.Timestamp) -> _Cohort:
    """Adherence (with fatigue over the window), whole-day gaps and habitual times."""
    good = rng.random(patients) < 0.85
    adherence = np.where(good, rng.uniform(0.80, 0.98, patients), rng.uniform(0.55, 0.80, patients))
    fatigue = rng.uniform(0.0, 0.12, patients)
    gap_prone = rng.random(patients) < 0.3
    away = _gaps(rng, patients, days, np.where(gap_prone, 1 / 35, 1 / 200), max_len=7)
    fade = 1.0 - fatigue[:, None] * np.linspace(0.0, 1.0, days)[None, :]
    present = adherence[:, None] * fade * ~away
    habit_s = np.clip(rng.normal(0.0, 20 * 60, patients), -45 * 60, 45 * 60)
    return _Cohort(days=days, day0_ns=int(day0.value), present=present, habit_s=habit_s)


def _uuid7(rng: np.random.Generator, at_ns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """UUIDv7 as two uint64 halves: millisecond time, version 7, variant 10, seeded bits."""
    n = at_ns.size
    millis = (at_ns // 1_000_000).astype(np.uint64)
    rand_a = rng.integers(0, 1 << 12, n, dtype=np.uint64)
    rand_b = rng.integers(0, 1 << 62, n, dtype=np.uint64)
    high = (millis << np.uint64(16)) | np.uint64(0x7000) | rand_a
    low = (np.uint64(0b10) << np.uint64(62)) | rand_b
    return high, low


_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def _uuid_strings(high: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Canonical 8-4-4-4-12 lowercase strings of (high, low) UUID halves, as an object array."""
    n = high.size
    raw = np.empty((n, 2), dtype=">u8")
    raw[:, 0], raw[:, 1] = high, low
    octets = raw.view(np.uint8).reshape(n, 16)
    digits = np.empty((n, 32), dtype=np.uint8)
    digits[:, 0::2] = _HEX[octets >> 4]
    digits[:, 1::2] = _HEX[octets & 0x0F]
    text = np.full((n, 36), ord("-"), dtype=np.uint8)
    for start, stop, at in ((0, 8, 0), (8, 12, 9), (12, 16, 14), (16, 20, 19), (20, 32, 24)):
        text[:, at : at + stop - start] = digits[:, start:stop]
    return np.ascontiguousarray(text).view("S36").ravel().astype("U36").astype(object)


def _readings_frame(
    blocks: Sequence[_Block], patient_ids: np.ndarray, rng: np.random.Generator
) -> pd.DataFrame:
    """One row per reading, sorted by measured_at then reading_id."""
    metric_codes = list(METRIC_UNITS)
    columns: list[tuple[np.ndarray, ...]] = [
        (
            block.patient,
            block.at_ns,
            np.full(values.size, metric_codes.index(metric)),
            values.astype(np.float64),
            np.full(values.size, DEVICE_TYPES.index(block.device)),
        )
        for block in blocks
        for metric, values in block.values.items()
    ]
    patient, at_ns, metric, value, device = (
        np.concatenate([row[i] for row in columns]) for i in range(5)
    )
    high, low = _uuid7(rng, at_ns)
    order = np.lexsort((low, high, at_ns))
    patient, at_ns, metric, device = patient[order], at_ns[order], metric[order], device[order]
    device_ids = np.array(
        [f"{pid}/{kind}" for pid in patient_ids for kind in DEVICE_TYPES], dtype=object
    )
    return pd.DataFrame(
        {
            "patient_id": patient_ids[patient],
            "metric": np.array(metric_codes, dtype=object)[metric],
            "value": value[order].astype(np.float64),
            "unit": np.array([METRIC_UNITS[c] for c in metric_codes], dtype=object)[metric],
            "measured_at": pd.DatetimeIndex(at_ns.view("M8[ns]")).tz_localize("UTC"),
            "reading_id": _uuid_strings(high[order], low[order]),
            "device_id": device_ids[patient * len(DEVICE_TYPES) + device],
        },
        columns=list(READING_COLUMNS),
    )


def _as_utc(end: pd.Timestamp | None) -> pd.Timestamp:
    if end is None:
        return DEFAULT_END
    stamp = pd.Timestamp(end)
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def generate_history(
    *, patients: int = 1000, days: int = 90, seed: int = 7, end: pd.Timestamp | None = None
) -> History:
    """A reproducible monitoring history of ``patients`` patients over the ``days`` whole UTC
    days before ``end``'s date (default :data:`DEFAULT_END`; a naive ``end`` is UTC).

    The same arguments give identical frames. The model and its rates are in the module
    docstring.
    """
    if patients < 1:
        raise ValueError(f"patients must be at least 1, not {patients}")
    if days < 1:
        raise ValueError(f"days must be at least 1, not {days}")
    day0 = _as_utc(end).normalize() - pd.Timedelta(days=days)
    streams = np.random.SeedSequence(seed).spawn(2 + len(PROGRAMS))
    population_rng = np.random.default_rng(streams[0])
    program = _assign_programs(population_rng, patients)
    cohort = _cohort(population_rng, patients, days, day0)

    width = max(5, len(str(patients)))
    patient_ids = np.array([f"pt-{i:0{width}d}" for i in range(1, patients + 1)], dtype=object)
    on_oxygen = np.zeros(patients, dtype=bool)
    blocks: list[_Block] = []
    for code, build in enumerate(_PROGRAM_BUILDERS):
        pidx = np.flatnonzero(program == code)
        if pidx.size == 0:
            continue
        output = build(np.random.default_rng(streams[2 + code]), cohort, pidx)
        blocks.extend(output.blocks)
        on_oxygen[pidx] = output.on_oxygen

    copd = PROGRAMS.index("copd")
    patients_frame = pd.DataFrame(
        {
            "patient_id": patient_ids,
            "program": np.array(PROGRAMS, dtype=object)[program],
            "spo2_scale": np.where(program == copd, 2, 1).astype(np.int64),
            "on_oxygen": on_oxygen,
        },
        columns=list(PATIENT_COLUMNS),
    )
    readings = _readings_frame(blocks, patient_ids, np.random.default_rng(streams[1]))
    return History(readings=readings, patients=patients_frame)


def write_csv(history: History, path: str | Path) -> None:
    """Write the backtest CSV: ``patient_id, metric, value, unit, measured_at``, one row per
    reading, measured_at as ISO 8601 with its offset (``2026-09-01T07:31:12+00:00``)."""
    readings = history.readings
    naive = readings["measured_at"].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    stamps = pd.Series(np.datetime_as_string(naive, unit="s"), index=readings.index, dtype=object)
    frame = readings.loc[:, list(CSV_COLUMNS)].assign(measured_at=stamps + "+00:00")
    frame.to_csv(path, index=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.rpm_history",
        description="Generate a synthetic remote-monitoring history and write the backtest CSV.",
    )
    parser.add_argument("--patients", type=int, default=1000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--end", type=pd.Timestamp, default=None, help="exclusive end day (default 2026-12-01)"
    )
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    history = generate_history(patients=args.patients, days=args.days, seed=args.seed, end=args.end)
    generated = time.perf_counter()
    write_csv(history, args.out)
    finished = time.perf_counter()
    print(
        f"{len(history.readings):,} rows, {args.patients:,} patients, {args.days} days, "
        f"seed {args.seed}: generated in {generated - started:.2f} s, "
        f"written in {finished - generated:.2f} s to {args.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
