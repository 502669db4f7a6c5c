"""Canonical observations from decoded characteristics: LOINC code, UCUM unit, number.

The gateway publishes each reading as one metric in the canonical unit of
``carewatch_contract.metrics`` (mm[Hg], /min, %, Cel, kg, m, kg/m2, mg/dL), converting from
whatever the device sent (kPa, degF, lb, in, kg/L, mol/L).

What never becomes an observation:
- a special value (NaN, NRes, +INF, -INF, Reserved) or an absent field: a cuff that sends
  MAP as NaN yields no MAP, never 2047;
- a "measurement unsuccessful" weight or body fat (0xFFFF), and the BMI sent with it;
- 0x2A36 intermediate cuff pressure (inflation progress, not a result) and RACP traffic;
- a heart rate from a strap that reports no skin contact;
- a glucose meter check with control solution (sample type 10 or location 4);
- PLX readings whose measurement status says invalid, unavailable, demonstration, testing
  or calibration ongoing;
- the PLX continuous fast/slow pairs (only the normal SpO2/PR pair is used), and the
  weight/height fields of 0x2A9C (those scales also indicate 0x2A9D with the same weight;
  publishing both would double-count).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, timedelta

from carewatch_contract.metrics import METRICS, Loinc
from gateway_agent.gatt import (
    BloodPressureMeasurement,
    BodyCompositionMeasurement,
    DecodedCharacteristic,
    FloatValue,
    GlucoseMeasurement,
    HeartRateMeasurement,
    IntermediateCuffPressure,
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
    RecordAccessControlPoint,
    SensorContact,
    SFloatValue,
    SpecialValue,
    TemperatureMeasurement,
    WeightMeasurement,
)
from gateway_agent.gatt.date_time import DateTimeFields
from gateway_agent.gatt.ieee11073 import MedFloat

MMHG_PER_KPA = 7.50062
"""mm[Hg] per kPa."""
KG_PER_LB = 0.45359237
"""kg per international avoirdupois pound (exact)."""
M_PER_IN = 0.0254
"""m per inch (exact)."""
MG_DL_PER_KG_L = 100_000
"""mg/dL per kg/L."""
MG_DL_PER_MMOL_L_GLUCOSE = 18.016
"""mg/dL per mmol/L of glucose (molar mass 180.16 g/mol)."""

PLX_STATUS_NOT_A_RESULT = (1 << 10) | (1 << 11) | (1 << 12) | (1 << 13) | (1 << 15)
"""PLX measurement status bits that make a reading unusable: demonstration (b10), testing
(b11), calibration ongoing (b12), measurement unavailable (b13), invalid (b15)."""


@dataclass(frozen=True, slots=True)
class Observation:
    """One clinical value in CareWatch's canonical form."""

    loinc: str
    """The metric's LOINC code (a key of carewatch_contract.metrics.METRICS)."""
    unit: str
    """The metric's canonical UCUM unit (METRICS[loinc].unit)."""
    value: float
    """The value in ``unit``."""


def _observation(loinc: Loinc, value: float) -> Observation:
    return Observation(str(loinc), METRICS[loinc].unit, value)


def _number(value: MedFloat | None) -> float | None:
    """``value`` when it is a number; None for absent fields and special values."""
    if value is None or isinstance(value, SpecialValue):
        return None
    return value


def _blood_pressure(decoded: BloodPressureMeasurement) -> list[Observation]:
    observations = []
    for loinc, pressure in (
        (Loinc.SYSTOLIC, decoded.systolic),
        (Loinc.DIASTOLIC, decoded.diastolic),
        (Loinc.MEAN_ARTERIAL_PRESSURE, decoded.mean_arterial_pressure),
    ):
        value = _number(pressure)
        if value is None:
            continue
        if decoded.unit == "kPa":
            value = round(value * MMHG_PER_KPA, 1)
        observations.append(_observation(loinc, value))
    pulse_rate = _number(decoded.pulse_rate)
    if pulse_rate is not None:
        observations.append(_observation(Loinc.HEART_RATE, pulse_rate))
    return observations


def _heart_rate(decoded: HeartRateMeasurement) -> list[Observation]:
    if decoded.sensor_contact == SensorContact.NOT_DETECTED:
        return []
    return [_observation(Loinc.HEART_RATE, float(decoded.heart_rate))]


def _temperature(decoded: TemperatureMeasurement) -> list[Observation]:
    value = _number(decoded.temperature)
    if value is None:
        return []
    celsius = (value - 32) * 5 / 9 if decoded.unit == "F" else value
    return [_observation(Loinc.BODY_TEMPERATURE, round(celsius, 2))]


def _glucose(decoded: GlucoseMeasurement) -> list[Observation]:
    value = _number(decoded.concentration)
    if value is None or decoded.is_control_solution:
        return []
    if decoded.unit == "mol/L":
        mg_dl = value * 1000 * MG_DL_PER_MMOL_L_GLUCOSE
    else:
        mg_dl = value * MG_DL_PER_KG_L
    return [_observation(Loinc.GLUCOSE, round(mg_dl, 1))]


def _weight(decoded: WeightMeasurement) -> list[Observation]:
    observations = []
    if decoded.weight is not None:
        kg = decoded.weight
        if decoded.unit == "lb":
            kg = round(kg * KG_PER_LB, 3)
        observations.append(_observation(Loinc.BODY_WEIGHT, kg))
        if decoded.bmi is not None:
            observations.append(_observation(Loinc.BMI, decoded.bmi))
    if decoded.height is not None:
        metres = decoded.height
        if decoded.height_unit == "in":
            metres = round(metres * M_PER_IN, 3)
        observations.append(_observation(Loinc.BODY_HEIGHT, metres))
    return observations


def _body_composition(decoded: BodyCompositionMeasurement) -> list[Observation]:
    if decoded.body_fat_percentage is None:
        return []
    return [_observation(Loinc.BODY_FAT, decoded.body_fat_percentage)]


def _pulse_oximetry(
    decoded: PlxSpotCheckMeasurement | PlxContinuousMeasurement,
) -> list[Observation]:
    status = decoded.measurement_status
    if status is not None and status & PLX_STATUS_NOT_A_RESULT:
        return []
    observations = []
    spo2 = _number(decoded.spo2)
    if spo2 is not None:
        observations.append(_observation(Loinc.SPO2, spo2))
    pulse_rate = _number(decoded.pulse_rate)
    if pulse_rate is not None:
        observations.append(_observation(Loinc.HEART_RATE, pulse_rate))
    return observations


def observations_from(decoded: DecodedCharacteristic) -> list[Observation]:
    """The canonical observations in ``decoded``; empty when it carries no clinical result."""
    match decoded:
        case BloodPressureMeasurement():
            return _blood_pressure(decoded)
        case HeartRateMeasurement():
            return _heart_rate(decoded)
        case TemperatureMeasurement():
            return _temperature(decoded)
        case GlucoseMeasurement():
            return _glucose(decoded)
        case WeightMeasurement():
            return _weight(decoded)
        case BodyCompositionMeasurement():
            return _body_composition(decoded)
        case PlxSpotCheckMeasurement() | PlxContinuousMeasurement():
            return _pulse_oximetry(decoded)
        case IntermediateCuffPressure() | RecordAccessControlPoint() | SFloatValue() | FloatValue():
            return []
    raise TypeError(f"not a decoded characteristic: {type(decoded).__name__}")


def measurement_time(decoded: DecodedCharacteristic) -> DateTimeFields | None:
    """The device's own time for ``decoded``, as wall-clock fields; None when it has none.

    - Glucose: the user-facing time, base time + time offset. When an offset is present but
      the base time is not known or not a valid time, the offset cannot be applied: None.
    - PLX spot-check: None when the oximeter flags its clock as not set.
    - Heart rate, PLX continuous, RACP and bare numbers carry no time: None.
    Other timestamps are returned exactly as sent (year 0 included); use
    ``DateTimeFields.to_datetime`` to get a datetime (None when not known or invalid).
    """
    match decoded:
        case GlucoseMeasurement(base_time=base_time, time_offset_min=offset):
            if not offset:
                return base_time
            # Wall-clock arithmetic: UTC only because it has no DST jumps; no zone is implied.
            start = base_time.to_datetime(UTC)
            if start is None:
                return None
            try:
                return DateTimeFields.from_datetime(start + timedelta(minutes=offset))
            except OverflowError:
                return None
        case PlxSpotCheckMeasurement(device_clock_not_set=True):
            return None
        case (
            BloodPressureMeasurement()
            | IntermediateCuffPressure()
            | TemperatureMeasurement()
            | WeightMeasurement()
            | BodyCompositionMeasurement()
            | PlxSpotCheckMeasurement()
        ):
            return decoded.timestamp
    return None
