"""The clinical metrics CareWatch carries: LOINC code, canonical UCUM unit, plausible range.

Every reading on the wire names its metric by LOINC code and its value in the canonical UCUM
unit listed here (see ../shared/CLINICAL.md, FHIR R4 vital-signs profile). The gateway converts
device units (kPa, lb, degF, kg/L, mol/L) before publishing, so the server and the rules only
ever see one unit per metric.

The plausible range is physiological possibility, not normality: a value outside it cannot be a
real measurement of a living patient and is quarantined by ingest rather than stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


@dataclass(frozen=True, slots=True)
class Metric:
    loinc: str
    key: str
    display: str
    unit: str
    plausible_min: float
    plausible_max: float


class Loinc(StrEnum):
    SYSTOLIC = "8480-6"
    DIASTOLIC = "8462-4"
    MEAN_ARTERIAL_PRESSURE = "8478-0"
    HEART_RATE = "8867-4"
    SPO2 = "59408-5"
    BODY_WEIGHT = "29463-7"
    BODY_HEIGHT = "8302-2"
    BMI = "39156-5"
    BODY_FAT = "41982-0"
    BODY_TEMPERATURE = "8310-5"
    RESPIRATORY_RATE = "9279-1"
    GLUCOSE = "41653-7"


METRICS: dict[str, Metric] = {
    m.loinc: m
    for m in (
        Metric(Loinc.SYSTOLIC, "systolic", "Systolic blood pressure", "mm[Hg]", 30, 320),
        Metric(Loinc.DIASTOLIC, "diastolic", "Diastolic blood pressure", "mm[Hg]", 10, 250),
        Metric(Loinc.MEAN_ARTERIAL_PRESSURE, "map", "Mean arterial pressure", "mm[Hg]", 20, 280),
        Metric(Loinc.HEART_RATE, "heart_rate", "Heart rate", "/min", 10, 350),
        Metric(Loinc.SPO2, "spo2", "Oxygen saturation (SpO2)", "%", 30, 100),
        Metric(Loinc.BODY_WEIGHT, "weight", "Body weight", "kg", 0.5, 700),
        Metric(Loinc.BODY_HEIGHT, "height", "Body height", "m", 0.2, 2.8),
        Metric(Loinc.BMI, "bmi", "Body mass index", "kg/m2", 5, 250),
        Metric(Loinc.BODY_FAT, "body_fat", "Body fat percentage", "%", 1, 90),
        Metric(Loinc.BODY_TEMPERATURE, "temperature", "Body temperature", "Cel", 20, 46),
        Metric(Loinc.RESPIRATORY_RATE, "respiratory_rate", "Respiratory rate", "/min", 1, 120),
        Metric(Loinc.GLUCOSE, "glucose", "Glucose (capillary, glucometer)", "mg/dL", 5, 2000),
    )
}


def metric_for(loinc: str) -> Metric | None:
    """The metric with this LOINC code, or None when CareWatch does not carry it."""
    return METRICS.get(loinc)
