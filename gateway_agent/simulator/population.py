"""Simulated patients and their devices: a seeded, reproducible population for demos and tests.

Every patient gets a blood-pressure cuff and a PLX spot-check pulse oximeter; heart-failure
patients also get a weight scale, diabetes patients a glucose meter, and some patients a
thermometer. A few patients carry a :class:`Scenario`, a deterioration that the schedule
(:mod:`gateway_agent.simulator.schedule`) makes visible in their readings; most carry none.

Nothing here is a real person: names come from a small built-in list, phone numbers are in
the fictional +1-555-01xx block and device addresses start with ``C0:FF:EE``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, timedelta
from enum import StrEnum

from carewatch_contract.messages import DeviceType

MAX_PATIENTS = 0xFFFF
"""The patient index is two bytes of the fake Bluetooth address, so at most 65,535 patients."""

SCENARIO_SHARE = 0.15
"""Share of a large population that carries a scenario; the rest carry none."""


class Program(StrEnum):
    """The care program a patient is enrolled in; it decides the devices handed out."""

    HYPERTENSION = "hypertension"
    HEART_FAILURE = "heart_failure"
    COPD = "copd"
    DIABETES = "diabetes"
    GENERAL = "general"


class ScenarioKind(StrEnum):
    """A deterioration (or a silence) that a simulated patient goes through."""

    HYPERTENSIVE_CRISIS = "hypertensive_crisis"
    """Systolic above 180 and diastolic up to 120-plus mmHg."""
    DESATURATION = "desaturation"
    """SpO2 drifting down to 86-91 % (patients on SpO2 scale 1)."""
    HEART_FAILURE_WEIGHT_GAIN = "heart_failure_weight_gain"
    """About +1 kg a day for three days and more (fluid retention)."""
    HYPOGLYCAEMIA = "hypoglycaemia"
    """Glucose readings of 45-65 mg/dL."""
    FEVER = "fever"
    """Body temperature of 38.5-39.5 C."""
    MISSED_DAYS = "missed_days"
    """No readings at all for two days or more."""


FLAG_RAISING_SCENARIOS: tuple[ScenarioKind, ...] = (
    ScenarioKind.HYPERTENSIVE_CRISIS,
    ScenarioKind.DESATURATION,
    ScenarioKind.HYPOGLYCAEMIA,
    ScenarioKind.FEVER,
)
"""Scenarios whose single readings cross a clinical threshold; present whenever patients >= 5."""

ALL_SCENARIOS_FROM = 12
"""Population size from which every scenario kind is present."""

FLAG_SCENARIOS_FROM = 5
"""Population size from which every flag-raising scenario kind is present."""


@dataclass(frozen=True, slots=True)
class Scenario:
    """A deterioration placed relative to the end of a simulated window.

    ``onset_before_end`` is how long before the end of a history window (or before ``now`` of
    a live stream, which continues that window) the scenario starts. ``severity`` in 0..1
    places the values inside the scenario's abnormal range (1 = the most abnormal end).
    """

    kind: ScenarioKind
    onset_before_end: timedelta
    severity: float


@dataclass(frozen=True, slots=True)
class SimulatedDevice:
    """One Bluetooth LE health device in a patient's home."""

    device_id: str
    """A stable fake Bluetooth address, ``C0:FF:EE:<patient index, 2 bytes>:<device kind>``."""
    device_type: DeviceType
    characteristic: str
    """The GATT characteristic the device reports on, e.g. ``"2A35"``."""


@dataclass(frozen=True, slots=True)
class SimulatedPatient:
    """A fake patient: identity, program, devices, personal normal values and scenario."""

    patient_id: str
    display_name: str
    program: Program
    birth_date: date
    phone: str
    spo2_scale: int
    """NEWS2 SpO2 scale: 2 for COPD patients (target 88-92 %), otherwise 1."""
    devices: tuple[SimulatedDevice, ...]
    baseline: dict[str, float] = field(hash=False)
    """Personal normal values, keyed like measurement values: systolic, diastolic,
    pulse_rate, spo2, kg, celsius, mg_dl."""
    scenario: Scenario | None = None

    def device(self, device_type: DeviceType) -> SimulatedDevice | None:
        """This patient's device of ``device_type``, or None when the patient has none."""
        for device in self.devices:
            if device.device_type is device_type:
                return device
        return None


# Device kind: (the last byte of the fake address, the GATT characteristic it reports on).
DEVICE_KINDS: dict[DeviceType, tuple[int, str]] = {
    DeviceType.BLOOD_PRESSURE: (0x01, "2A35"),
    DeviceType.PULSE_OXIMETER: (0x02, "2A5E"),
    DeviceType.WEIGHT_SCALE: (0x03, "2A9D"),
    DeviceType.THERMOMETER: (0x04, "2A1C"),
    DeviceType.GLUCOSE_METER: (0x05, "2A18"),
}

SCENARIO_DEVICE: dict[ScenarioKind, DeviceType | None] = {
    ScenarioKind.HYPERTENSIVE_CRISIS: DeviceType.BLOOD_PRESSURE,
    ScenarioKind.DESATURATION: DeviceType.PULSE_OXIMETER,
    ScenarioKind.HEART_FAILURE_WEIGHT_GAIN: DeviceType.WEIGHT_SCALE,
    ScenarioKind.HYPOGLYCAEMIA: DeviceType.GLUCOSE_METER,
    ScenarioKind.FEVER: DeviceType.THERMOMETER,
    ScenarioKind.MISSED_DAYS: None,
}
"""The device whose readings show each scenario (missed days shows on none: it is silence)."""

_FIRST_NAMES = (
    "Ada", "Bernard", "Carmen", "Dmitri", "Elena", "Farid", "Greta", "Hiroshi", "Ines", "Jonas",
    "Keiko", "Luis", "Marta", "Nadia", "Oscar", "Priya", "Quentin", "Rosa", "Samuel", "Tamar",
    "Ulla", "Victor", "Wanda", "Xavier", "Yusuf", "Zofia",
)  # fmt: skip
_LAST_NAMES = (
    "Abbott", "Brennan", "Castillo", "Dubois", "Eriksen", "Fischer", "Gallagher", "Haddad",
    "Ivanova", "Jensen", "Kowalski", "Lindqvist", "Moreau", "Novak", "Okafor", "Petrov",
    "Quinn", "Rossi", "Schmidt", "Tanaka", "Ueda", "Varga", "Weber", "Yilmaz", "Zimmermann",
)  # fmt: skip

# Program mix of patients without a scenario.
_PROGRAM_WEIGHTS: dict[Program, float] = {
    Program.HYPERTENSION: 0.35,
    Program.HEART_FAILURE: 0.20,
    Program.COPD: 0.15,
    Program.DIABETES: 0.20,
    Program.GENERAL: 0.10,
}
_THERMOMETER_SHARE = 0.25
"""Share of patients outside COPD (who all get one) handed a thermometer."""

# The youngest and oldest simulated patient, in years, on the reference date.
_AGE_RANGE = (45, 90)
_AGE_REFERENCE = date(2025, 1, 1)
_ONSET_HOURS = (4.0, 20.0)
"""Single-reading scenarios start this many hours before the end: inside the last 24 h, early
enough for at least one symptom-driven reading before the end."""


def device_address(patient_index: int, device_type: DeviceType) -> str:
    """The fake Bluetooth address of a patient's device, e.g. ``C0:FF:EE:00:01:03``."""
    if not 1 <= patient_index <= MAX_PATIENTS:
        raise ValueError(f"patient index {patient_index} outside 1-{MAX_PATIENTS}")
    kind, _ = DEVICE_KINDS[device_type]
    high, low = divmod(patient_index, 0x100)
    return f"C0:FF:EE:{high:02X}:{low:02X}:{kind:02X}"


def scenario_kinds_for(patients: int) -> list[ScenarioKind]:
    """Which scenario kinds a population of ``patients`` carries, one entry per patient.

    - patients >= 12: every kind, then more in turn up to 15 % of the population;
    - 5 <= patients < 12: the four flag-raising kinds;
    - fewer than 5: one flag-raising kind per two patients.
    """
    if patients >= ALL_SCENARIOS_FROM:
        required = list(ScenarioKind)
    elif patients >= FLAG_SCENARIOS_FROM:
        required = list(FLAG_RAISING_SCENARIOS)
    else:
        return list(FLAG_RAISING_SCENARIOS[: patients // 2])
    count = max(len(required), round(patients * SCENARIO_SHARE))
    kinds = list(ScenarioKind)
    return required + [kinds[i % len(kinds)] for i in range(count - len(required))]


def build_population(*, patients: int, seed: int) -> list[SimulatedPatient]:
    """``patients`` simulated patients, ``pt-0001`` onwards; the same seed gives the same list."""
    if not 0 <= patients <= MAX_PATIENTS:
        raise ValueError(f"patients must be 0-{MAX_PATIENTS}, not {patients}")
    rng = random.Random(f"carewatch-population:{seed}")  # noqa: S311 - simulation
    kinds = scenario_kinds_for(patients)
    holders = rng.sample(range(patients), len(kinds))
    scenario_of: dict[int, ScenarioKind] = dict(zip(holders, kinds, strict=True))
    return [_patient(index + 1, scenario_of.get(index), rng) for index in range(patients)]


def _patient(index: int, kind: ScenarioKind | None, rng: random.Random) -> SimulatedPatient:
    program = _program_for(kind, rng)
    has_thermometer = (
        kind is ScenarioKind.FEVER or program is Program.COPD or rng.random() < _THERMOMETER_SHARE
    )
    device_types = [DeviceType.BLOOD_PRESSURE, DeviceType.PULSE_OXIMETER]
    if program is Program.HEART_FAILURE:
        device_types.append(DeviceType.WEIGHT_SCALE)
    if has_thermometer:
        device_types.append(DeviceType.THERMOMETER)
    if program is Program.DIABETES:
        device_types.append(DeviceType.GLUCOSE_METER)
    devices = tuple(
        SimulatedDevice(device_address(index, t), t, DEVICE_KINDS[t][1]) for t in device_types
    )
    age_days = rng.randint(_AGE_RANGE[0] * 365, _AGE_RANGE[1] * 365)
    return SimulatedPatient(
        patient_id=f"pt-{index:04d}",
        display_name=f"{rng.choice(_FIRST_NAMES)} {rng.choice(_LAST_NAMES)}",
        program=program,
        birth_date=_AGE_REFERENCE - timedelta(days=age_days),
        phone=f"+1-555-01{(index - 1) % 100:02d}",
        spo2_scale=2 if program is Program.COPD else 1,
        devices=devices,
        baseline=_baseline(program, rng),
        scenario=None if kind is None else _scenario(kind, rng),
    )


def _program_for(kind: ScenarioKind | None, rng: random.Random) -> Program:
    """A program that fits the scenario: its device must be handed out, its threshold apply."""
    if kind is ScenarioKind.HYPERTENSIVE_CRISIS:
        return Program.HYPERTENSION
    if kind is ScenarioKind.HEART_FAILURE_WEIGHT_GAIN:
        return Program.HEART_FAILURE
    if kind is ScenarioKind.HYPOGLYCAEMIA:
        return Program.DIABETES
    if kind is ScenarioKind.DESATURATION:
        # Not COPD: on SpO2 scale 2, 88-91 % is the target, not a desaturation.
        return rng.choice((Program.HEART_FAILURE, Program.HYPERTENSION, Program.GENERAL))
    programs = list(_PROGRAM_WEIGHTS)
    return rng.choices(programs, weights=list(_PROGRAM_WEIGHTS.values()))[0]


def _baseline(program: Program, rng: random.Random) -> dict[str, float]:
    """Personal normal values, shaped by the program (treated hypertension runs higher...)."""
    if program is Program.HYPERTENSION:
        systolic = rng.uniform(132, 148)
        diastolic = rng.uniform(80, 90)
    else:
        systolic = rng.uniform(112, 135)
        diastolic = rng.uniform(68, 84)
    # COPD patients live lower (scale 2 target 88-92 %); diabetes patients fast higher.
    spo2 = float(rng.randint(89, 93) if program is Program.COPD else rng.randint(95, 98))
    glucose = rng.uniform(105, 150) if program is Program.DIABETES else rng.uniform(82, 100)
    return {
        "systolic": round(systolic, 1),
        "diastolic": round(diastolic, 1),
        "pulse_rate": round(rng.uniform(60, 84), 1),
        "spo2": spo2,
        "kg": round(rng.uniform(52, 125), 1),
        "celsius": round(rng.uniform(36.3, 36.9), 1),
        "mg_dl": round(glucose, 1),
    }


def _scenario(kind: ScenarioKind, rng: random.Random) -> Scenario:
    """A scenario of ``kind`` with its onset placed so its readings fall near the end."""
    if kind is ScenarioKind.HEART_FAILURE_WEIGHT_GAIN:
        # The gain starts 3 days 8-14 hours before the end, so that even when the last
        # weigh-in is nearly a day old it shows more than two days of gain.
        onset = timedelta(days=3, hours=rng.uniform(8.0, 14.0))
    elif kind is ScenarioKind.MISSED_DAYS:
        # Silent for the last 2.1 to 3 days of the window.
        onset = timedelta(hours=rng.uniform(50.0, 72.0))
    else:
        onset = timedelta(hours=rng.uniform(*_ONSET_HOURS))
    return Scenario(kind=kind, onset_before_end=onset, severity=round(rng.random(), 3))
