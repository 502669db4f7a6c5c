"""CareWatch rows -> FHIR R4 JSON (ingest.fhir), every resource validated by fhir.resources.

No current fhir.resources release models R4 (4.0.1) with pydantic 2: 6.4.0 was the last R4
one and needs pydantic 1; from 7.0 the root package is R5 and R4 is only there as R4B
(4.3.0). The R4B models of every resource and datatype used here (Observation, Patient,
Bundle, OperationOutcome, Quantity, Coding, CodeableConcept, Reference, Identifier,
HumanName, ContactPoint, Meta) have the same elements as R4's, so R4B validates them. What
fhir.resources does not check (value-set bindings, the vital-signs profiles) is checked here by
hand in ``_assert_vital_signs``.
"""

from __future__ import annotations

import random
import re
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from carewatch_contract.metrics import METRICS, Loinc
from ingest.fhir import (
    FhirMappingError,
    FhirSearchError,
    observations,
    operation_outcome,
    parse_date_filters,
    patient_resource,
    searchset_bundle,
)

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
T0 = datetime(2026, 11, 1, 8, 30, 15, tzinfo=UTC)
SELF_URL = "https://rpm.example.org/fhir/Observation?patient=pt-1"

_ids = iter(range(1, 1_000_000))


def _uuid() -> str:
    return str(uuid.UUID(int=next(_ids)))


def _row(
    loinc: str,
    value: float,
    *,
    measurement_id: str | None = None,
    reading_id: str | None = None,
    at: datetime = T0,
    device_type: str = "blood_pressure",
    device_id: str | None = "A4:C1:38:00:00:01",
    time_source: str = "device",
) -> dict[str, Any]:
    """A row as ingest.readings.patient_readings returns it."""
    return {
        "reading_id": reading_id or _uuid(),
        "measured_at": at,
        "loinc": loinc,
        "unit": METRICS[loinc].unit,
        "value": value,
        "time_source": time_source,
        "device_id": device_id,
        "device_type": device_type,
        "measurement_id": measurement_id or _uuid(),
    }


def _validate(resource: dict[str, Any]) -> None:
    """fhir.resources accepts the resource and gives it back unchanged (nothing dropped or
    coerced on the way)."""
    model = get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert model.model_dump(mode="json", exclude_none=True) == resource


def _codes(concept: dict[str, Any]) -> list[str]:
    return [c["code"] for c in concept["coding"] if c["system"] == LOINC]


def _assert_quantity(quantity: dict[str, Any]) -> None:
    assert set(quantity) == {"value", "unit", "system", "code"}
    assert quantity["system"] == UCUM
    assert isinstance(quantity["value"], int | float)


def _assert_vital_signs(obs: dict[str, Any], *, category: str = "vital-signs") -> None:
    """What the R4 vital-signs profiles ask beyond the base resource."""
    assert obs["status"] == "final"
    assert [c["code"] for cat in obs["category"] for c in cat["coding"]] == [category]
    assert obs["category"][0]["coding"][0]["system"] == CATEGORY
    assert obs["subject"]["reference"].startswith("Patient/")
    effective = datetime.fromisoformat(obs["effectiveDateTime"])
    assert effective.utcoffset() is not None
    assert all(c["display"] for c in obs["code"]["coding"])
    if "component" in obs:  # the bp profile
        assert _codes(obs["code"]) == ["85354-9"]
        assert "valueQuantity" not in obs
        component_codes = [_codes(c["code"]) for c in obs["component"]]
        assert component_codes.count(["8480-6"]) == 1
        assert component_codes.count(["8462-4"]) == 1
        for component in obs["component"]:
            _assert_quantity(component["valueQuantity"])
            assert component["valueQuantity"]["code"] == "mm[Hg]"
    else:
        _assert_quantity(obs["valueQuantity"])
    if "59408-5" in _codes(obs["code"]):  # the oxygensat profile
        assert "2708-6" in _codes(obs["code"])
    assert set(obs["device"]) == {"display", "identifier"}
    assert "reference" not in obs["device"]


def _ok(resources: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for resource in resources:
        _validate(resource)
        if resource["resourceType"] == "Observation":
            is_lab = _codes(resource["code"]) == [Loinc.GLUCOSE]
            _assert_vital_signs(resource, category="laboratory" if is_lab else "vital-signs")
    return resources


# --- the validator itself --------------------------------------------------------------------


@pytest.mark.parametrize(
    "broken",
    [
        {"resourceType": "Observation", "code": {"text": "x"}},  # no status
        {"resourceType": "Observation", "status": "final"},  # no code
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "bogus": 1},
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "effectiveDateTime": "2026-11-01 08:30",
        },
        {"resourceType": "Patient", "id": "pt_1"},  # not a FHIR id
        {"resourceType": "Bundle", "total": 0},  # no type
    ],
)
def test_the_validator_rejects_broken_resources(broken: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _validate(broken)


# --- Observations ----------------------------------------------------------------------------

CATALOG_VALUES = {
    Loinc.SYSTOLIC: 128,
    Loinc.DIASTOLIC: 82,
    Loinc.MEAN_ARTERIAL_PRESSURE: 97,
    Loinc.HEART_RATE: 71,
    Loinc.SPO2: 96,
    Loinc.BODY_WEIGHT: 81.4,
    Loinc.BODY_HEIGHT: 1.78,
    Loinc.BMI: 25.7,
    Loinc.BODY_FAT: 24.5,
    Loinc.BODY_TEMPERATURE: 36.8,
    Loinc.RESPIRATORY_RATE: 15,
    Loinc.GLUCOSE: 104,
}


def test_every_catalog_metric_maps_once() -> None:
    assert set(CATALOG_VALUES) == set(METRICS), "a metric was added to the catalog"
    rows = [_row(loinc, value) for loinc, value in CATALOG_VALUES.items()]  # own measurements
    result = _ok(observations(rows, patient_id="pt-1"))
    assert [obs["id"] for obs in result] == [row["reading_id"] for row in rows]
    for obs, row in zip(result, rows, strict=True):
        assert _codes(obs["code"])[0] == row["loinc"]
        assert obs["code"]["text"] == METRICS[row["loinc"]].display
        assert obs["valueQuantity"]["value"] == row["value"]
        assert obs["valueQuantity"]["code"] == row["unit"]
        assert obs["identifier"] == [
            {"system": "urn:carewatch:reading", "value": row["reading_id"]}
        ]
        assert obs["subject"] == {"reference": "Patient/pt-1"}
    categories = {_codes(o["code"])[0]: o["category"][0]["coding"][0]["code"] for o in result}
    assert {code for code, cat in categories.items() if cat != "vital-signs"} == {Loinc.GLUCOSE}


def test_human_units() -> None:
    rows = [_row(loinc, value) for loinc, value in CATALOG_VALUES.items()]
    units = {
        _codes(o["code"])[0]: (o["valueQuantity"]["code"], o["valueQuantity"]["unit"])
        for o in observations(rows, patient_id="pt-1")
    }
    assert units == {
        "8480-6": ("mm[Hg]", "mmHg"),
        "8462-4": ("mm[Hg]", "mmHg"),
        "8478-0": ("mm[Hg]", "mmHg"),
        "8867-4": ("/min", "beats/minute"),
        "59408-5": ("%", "%"),
        "29463-7": ("kg", "kg"),
        "8302-2": ("m", "m"),
        "39156-5": ("kg/m2", "kg/m2"),
        "41982-0": ("%", "%"),
        "8310-5": ("Cel", "°C"),
        "9279-1": ("/min", "breaths/minute"),
        "41653-7": ("mg/dL", "mg/dL"),
    }


def test_one_heart_rate_reading_as_a_whole() -> None:
    row = _row(
        Loinc.HEART_RATE,
        71,
        reading_id="0196f3a2-0000-7000-8000-000000000001",
        at=datetime(2026, 11, 1, 9, 30, 15, tzinfo=timezone(timedelta(hours=1))),
        device_type="pulse_oximeter",
    )
    assert _ok(observations([row], patient_id="pt-1")) == [
        {
            "resourceType": "Observation",
            "id": "0196f3a2-0000-7000-8000-000000000001",
            "identifier": [
                {"system": "urn:carewatch:reading", "value": "0196f3a2-0000-7000-8000-000000000001"}
            ],
            "status": "final",
            "category": [
                {"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}
            ],
            "code": {
                "coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}],
                "text": "Heart rate",
            },
            "subject": {"reference": "Patient/pt-1"},
            "effectiveDateTime": "2026-11-01T09:30:15+01:00",
            "valueQuantity": {"value": 71, "unit": "beats/minute", "system": UCUM, "code": "/min"},
            "device": {
                "identifier": {"system": "urn:carewatch:device", "value": "A4:C1:38:00:00:01"},
                "display": "Pulse oximeter",
            },
        }
    ]


def test_systolic_and_diastolic_of_one_measurement_are_one_panel() -> None:
    m = "0196f3a2-0000-7000-8000-0000000000aa"
    systolic = _row(Loinc.SYSTOLIC, 142, measurement_id=m, reading_id="r-sys")
    diastolic = _row(Loinc.DIASTOLIC, 91, measurement_id=m, reading_id="r-dia")
    pulse = _row(Loinc.HEART_RATE, 77, measurement_id=m, reading_id="r-pulse")
    result = _ok(observations([systolic, diastolic, pulse], patient_id="pt-1"))
    assert result[0] == {
        "resourceType": "Observation",
        "id": m,
        "identifier": [
            {"system": "urn:carewatch:reading", "value": "r-sys"},
            {"system": "urn:carewatch:reading", "value": "r-dia"},
        ],
        "status": "final",
        "category": [
            {"coding": [{"system": CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}
        ],
        "code": {
            "coding": [
                {
                    "system": LOINC,
                    "code": "85354-9",
                    "display": "Blood pressure panel with all children optional",
                }
            ],
            "text": "Blood pressure",
        },
        "subject": {"reference": "Patient/pt-1"},
        "effectiveDateTime": "2026-11-01T08:30:15Z",
        "device": {
            "identifier": {"system": "urn:carewatch:device", "value": "A4:C1:38:00:00:01"},
            "display": "Blood pressure monitor",
        },
        "component": [
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8480-6", "display": "Systolic blood pressure"}
                    ],
                    "text": "Systolic blood pressure",
                },
                "valueQuantity": {"value": 142, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
            {
                "code": {
                    "coding": [
                        {"system": LOINC, "code": "8462-4", "display": "Diastolic blood pressure"}
                    ],
                    "text": "Diastolic blood pressure",
                },
                "valueQuantity": {"value": 91, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
            },
        ],
    }
    # The pulse of the cuff measurement is a heart-rate Observation of its own.
    assert [o["id"] for o in result] == [m, "r-pulse"]
    assert _codes(result[1]["code"]) == ["8867-4"]


def test_the_map_of_a_paired_measurement_is_the_third_component() -> None:
    m = _uuid()
    rows = [
        _row(Loinc.MEAN_ARTERIAL_PRESSURE, 101, measurement_id=m),  # first in the rows
        _row(Loinc.DIASTOLIC, 88, measurement_id=m),
        _row(Loinc.SYSTOLIC, 128, measurement_id=m),
    ]
    (panel,) = _ok(observations(rows, patient_id="pt-1"))
    assert panel["id"] == m
    assert [(_codes(c["code"]), c["valueQuantity"]["value"]) for c in panel["component"]] == [
        (["8480-6"], 128),
        (["8462-4"], 88),
        (["8478-0"], 101),
    ]
    assert [i["value"] for i in panel["identifier"]] == [
        rows[2]["reading_id"],
        rows[1]["reading_id"],
        rows[0]["reading_id"],
    ]


def test_an_unpaired_systolic_is_an_observation_of_its_own() -> None:
    systolic = _row(Loinc.SYSTOLIC, 133)
    diastolic = _row(Loinc.DIASTOLIC, 85)  # another measurement: no pair
    result = _ok(observations([systolic, diastolic], patient_id="pt-1"))
    assert [(o["id"], _codes(o["code"])) for o in result] == [
        (systolic["reading_id"], ["8480-6"]),
        (diastolic["reading_id"], ["8462-4"]),
    ]
    assert result[0]["valueQuantity"] == {
        "value": 133,
        "unit": "mmHg",
        "system": UCUM,
        "code": "mm[Hg]",
    }


def test_a_map_without_a_pair_is_an_observation_of_its_own() -> None:
    m = _uuid()
    rows = [
        _row(Loinc.SYSTOLIC, 120, measurement_id=m),
        _row(Loinc.MEAN_ARTERIAL_PRESSURE, 93, measurement_id=m),
    ]
    result = _ok(observations(rows, patient_id="pt-1"))
    assert [_codes(o["code"]) for o in result] == [["8480-6"], ["8478-0"]]
    assert result[1]["category"][0]["coding"][0]["code"] == "vital-signs"


def test_a_measurement_with_two_systolic_readings_is_not_paired() -> None:
    m = _uuid()
    rows = [
        _row(Loinc.SYSTOLIC, 120, measurement_id=m),
        _row(Loinc.SYSTOLIC, 121, measurement_id=m),
        _row(Loinc.DIASTOLIC, 80, measurement_id=m),
    ]
    result = _ok(observations(rows, patient_id="pt-1"))
    assert [o["id"] for o in result] == [r["reading_id"] for r in rows]


def test_interleaved_measurements_pair_within_each_measurement() -> None:
    a, b = _uuid(), _uuid()
    later = T0 + timedelta(minutes=5)
    rows = [
        _row(Loinc.SYSTOLIC, 150, measurement_id=a),
        _row(Loinc.SYSTOLIC, 118, measurement_id=b, at=later),
        _row(Loinc.DIASTOLIC, 95, measurement_id=a),
        _row(Loinc.DIASTOLIC, 76, measurement_id=b, at=later),
    ]
    result = _ok(observations(rows, patient_id="pt-1"))
    assert [(o["id"], o["effectiveDateTime"]) for o in result] == [
        (a, "2026-11-01T08:30:15Z"),
        (b, "2026-11-01T08:35:15Z"),
    ]
    values = [[c["valueQuantity"]["value"] for c in o["component"]] for o in result]
    assert values == [[150, 95], [118, 76]]


def test_spo2_carries_the_general_oxygen_saturation_code() -> None:
    (obs,) = _ok(observations([_row(Loinc.SPO2, 95, device_type="pulse_oximeter")], patient_id="p"))
    assert obs["code"]["coding"] == [
        {
            "system": LOINC,
            "code": "59408-5",
            "display": "Oxygen saturation in Arterial blood by Pulse oximetry",
        },
        {"system": LOINC, "code": "2708-6", "display": "Oxygen saturation in Arterial blood"},
    ]


def test_glucose_is_a_laboratory_observation() -> None:
    row = _row(Loinc.GLUCOSE, 62, device_type="glucose_meter")
    (obs,) = _ok(observations([row], patient_id="p"))
    assert obs["category"] == [
        {"coding": [{"system": CATEGORY, "code": "laboratory", "display": "Laboratory"}]}
    ]
    assert obs["code"]["coding"][0]["display"] == (
        "Glucose [Mass/volume] in Capillary blood by Glucometer"
    )
    assert obs["device"]["display"] == "Glucose meter"


def test_gateway_time_is_noted() -> None:
    rows = [_row(Loinc.BODY_WEIGHT, 80.2, time_source="gateway"), _row(Loinc.BODY_WEIGHT, 80.0)]
    with_note, without = _ok(observations(rows, patient_id="pt-1"))
    assert with_note["note"] == [
        {"text": "Time of receipt by the gateway: the device gave no usable time of measurement."}
    ]
    assert "note" not in without


def test_effective_time_keeps_the_offset_and_precision() -> None:
    when = datetime(2026, 3, 29, 1, 59, 59, 250_000, tzinfo=ZoneInfo("Europe/Paris"))
    (obs,) = _ok(observations([_row(Loinc.BODY_TEMPERATURE, 37.2, at=when)], patient_id="p"))
    assert obs["effectiveDateTime"] == "2026-03-29T01:59:59.250000+01:00"
    odd = datetime(2026, 1, 1, tzinfo=timezone(timedelta(hours=1, seconds=30)))
    (obs,) = _ok(observations([_row(Loinc.BODY_TEMPERATURE, 37.2, at=odd)], patient_id="p"))
    assert obs["effectiveDateTime"] == "2025-12-31T22:59:30Z"


def test_a_reading_without_device_has_no_device_element() -> None:
    (obs,) = observations([_row(Loinc.BODY_WEIGHT, 80.0, device_id=None)], patient_id="p")
    _validate(obs)
    assert "device" not in obs


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"loinc": "2339-0"}, "LOINC '2339-0'"),
        ({"measured_at": datetime(2026, 11, 1, 8, 30)}, "time zone"),  # noqa: DTZ001
        ({"value": float("nan")}, "not a number"),
        ({"value": True}, "not a number"),
        ({"reading_id": "r_1"}, "not a FHIR id"),
    ],
)
def test_rows_that_cannot_be_fhir_are_refused(change: dict[str, Any], message: str) -> None:
    row = _row(Loinc.HEART_RATE, 70) | change
    with pytest.raises(FhirMappingError, match=message):
        observations([row], patient_id="pt-1")


def test_a_patient_id_that_is_not_a_fhir_id_is_refused() -> None:
    with pytest.raises(FhirMappingError, match="patient id 'pt_1'"):
        observations([], patient_id="pt_1")
    assert observations([], patient_id="pt-1") == []


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(sorted(METRICS)), st.integers(min_value=0, max_value=3)),
        max_size=20,
    ),
    st.randoms(use_true_random=False),
)
def test_every_reading_is_in_exactly_one_resource(
    picks: list[tuple[str, int]], rnd: random.Random
) -> None:
    measurements = [_uuid() for _ in range(4)]
    rows = [
        _row(loinc, CATALOG_VALUES[loinc], measurement_id=measurements[m]) for loinc, m in picks
    ]
    rnd.shuffle(rows)
    result = _ok(observations(rows, patient_id="pt-1"))
    carried = [i["value"] for obs in result for i in obs["identifier"]]
    assert sorted(carried) == sorted(r["reading_id"] for r in rows)
    values = sorted(
        (_codes(q["code"])[0], q["valueQuantity"]["value"])
        for obs in result
        for q in obs.get("component", [obs])
    )
    assert values == sorted((r["loinc"], r["value"]) for r in rows)


# --- Bundle ----------------------------------------------------------------------------------


def test_searchset_bundle() -> None:
    m = _uuid()
    rows = [
        _row(Loinc.SYSTOLIC, 120, measurement_id=m),
        _row(Loinc.DIASTOLIC, 80, measurement_id=m),
        _row(Loinc.SPO2, 97),
    ]
    resources = observations(rows, patient_id="pt-1")
    bundle = searchset_bundle(resources, self_url=SELF_URL)
    _validate(bundle)
    assert {k: v for k, v in bundle.items() if k != "entry"} == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 2,
        "link": [{"relation": "self", "url": SELF_URL}],
    }
    assert [e["fullUrl"] for e in bundle["entry"]] == [
        f"https://rpm.example.org/fhir/Observation/{m}",
        f"https://rpm.example.org/fhir/Observation/{rows[2]['reading_id']}",
    ]
    assert [e["resource"] for e in bundle["entry"]] == resources
    assert {e["search"]["mode"] for e in bundle["entry"]} == {"match"}


def test_empty_searchset_bundle() -> None:
    bundle = searchset_bundle([], self_url=SELF_URL)
    _validate(bundle)
    assert bundle == {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": 0,
        "link": [{"relation": "self", "url": SELF_URL}],
    }


def test_bundle_base_url() -> None:
    patient = patient_resource({"patient_id": "pt-1", "display_name": "A"})
    posted = searchset_bundle([patient], self_url="https://h.example/fhir/Patient/_search")
    assert posted["entry"][0]["fullUrl"] == "https://h.example/fhir/Patient/pt-1"
    given_base = searchset_bundle(
        [patient],
        self_url="https://h.example/fhir/Patient/pt-1/$everything",
        base_url="https://h.example/fhir/",
    )
    _validate(given_base)
    assert given_base["entry"][0]["fullUrl"] == "https://h.example/fhir/Patient/pt-1"
    with pytest.raises(ValueError, match="absolute"):
        searchset_bundle([], self_url="/fhir/Observation?patient=pt-1")


# --- Patient ---------------------------------------------------------------------------------


def test_patient_with_everything() -> None:
    row = {
        "patient_id": "pt-1",
        "display_name": " Ana María de la Cruz ",
        "birth_date": date(1951, 2, 28),
        "phone": "+1 555 0100",
        "program": "heart-failure",
    }
    patient = patient_resource(row)
    _validate(patient)
    assert patient == {
        "resourceType": "Patient",
        "id": "pt-1",
        "meta": {"tag": [{"system": "urn:carewatch:program", "code": "heart-failure"}]},
        "identifier": [{"system": "urn:carewatch:patient", "value": "pt-1"}],
        "name": [{"text": "Ana María de la Cruz"}],
        "telecom": [{"system": "phone", "value": "+1 555 0100"}],
        "birthDate": "1951-02-28",
    }


def test_patient_without_birth_date_or_phone() -> None:
    row = {
        "patient_id": "pt-2",
        "display_name": "B",
        "birth_date": None,
        "phone": None,
        "program": None,
    }
    patient = patient_resource(row)
    _validate(patient)
    assert patient == {
        "resourceType": "Patient",
        "id": "pt-2",
        "identifier": [{"system": "urn:carewatch:patient", "value": "pt-2"}],
        "name": [{"text": "B"}],
    }


def test_patient_rows_that_cannot_be_fhir_are_refused() -> None:
    with pytest.raises(FhirMappingError, match="not a date"):
        patient_resource({"patient_id": "pt-1", "birth_date": T0})
    with pytest.raises(FhirMappingError, match="not a FHIR id"):
        patient_resource({"patient_id": "pt 1"})


# --- OperationOutcome ------------------------------------------------------------------------


def test_operation_outcome() -> None:
    outcome = operation_outcome("error", "invalid", "date: 'ne2026' is not supported")
    _validate(outcome)
    assert outcome == {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "error",
                "code": "invalid",
                "diagnostics": "date: 'ne2026' is not supported",
            }
        ],
    }
    _validate(operation_outcome("information", "not-found", ""))
    with pytest.raises(ValueError, match="severity"):
        operation_outcome("bad", "invalid", "x")
    with pytest.raises(ValueError, match="IssueType"):
        operation_outcome("error", "no-such-code", "x")


# --- the date search parameter ---------------------------------------------------------------


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


@pytest.mark.parametrize(
    ("values", "window"),
    [
        ([], (None, None)),
        # A day: each prefix.
        (["2026-11-01"], (_utc(2026, 11, 1), _utc(2026, 11, 2))),
        (["eq2026-11-01"], (_utc(2026, 11, 1), _utc(2026, 11, 2))),
        (["ge2026-11-01"], (_utc(2026, 11, 1), None)),
        (["gt2026-11-01"], (_utc(2026, 11, 2), None)),
        (["le2026-11-01"], (None, _utc(2026, 11, 2))),
        (["lt2026-11-01"], (None, _utc(2026, 11, 1))),
        # A year and a month.
        (["2026"], (_utc(2026, 1, 1), _utc(2027, 1, 1))),
        (["gt2026"], (_utc(2027, 1, 1), None)),
        (["eq2026-11"], (_utc(2026, 11, 1), _utc(2026, 12, 1))),
        (["eq2026-12"], (_utc(2026, 12, 1), _utc(2027, 1, 1))),
        (["le2026-02"], (None, _utc(2026, 3, 1))),
        (["lt2026-02"], (None, _utc(2026, 2, 1))),
        (["2024-02-29"], (_utc(2024, 2, 29), _utc(2024, 3, 1))),
        # dateTimes: minute, second, fraction; offsets.
        (["ge2026-11-01T10:00+01:00"], (_utc(2026, 11, 1, 9), None)),
        (["eq2026-11-01T10:00Z"], (_utc(2026, 11, 1, 10), _utc(2026, 11, 1, 10, 1))),
        (["le2026-11-01T10:00:00Z"], (None, _utc(2026, 11, 1, 10, 0, 1))),
        (["gt2026-11-01T10:00:00-05:00"], (_utc(2026, 11, 1, 15, 0, 1), None)),
        (["lt2026-11-01T10:00:00.5Z"], (None, datetime(2026, 11, 1, 10, 0, 0, 500_000, UTC))),
        (
            ["eq2026-11-01T10:00:00.25Z"],
            (
                datetime(2026, 11, 1, 10, 0, 0, 250_000, UTC),
                datetime(2026, 11, 1, 10, 0, 0, 260_000, UTC),
            ),
        ),
        (["ge2026-11-01T23:30:00+14:00"], (_utc(2026, 11, 1, 9, 30), None)),
        # A '+' that the query string decoded as a space.
        (["ge2026-11-01T10:00:00 01:00"], (_utc(2026, 11, 1, 9), None)),
        # Several values: their intersection.
        (["ge2026-11-01", "lt2026-11-08"], (_utc(2026, 11, 1), _utc(2026, 11, 8))),
        (
            ["ge2026-11", "gt2026-11-03", "le2026-11-30", "lt2026-12"],
            (_utc(2026, 11, 4), _utc(2026, 12, 1)),
        ),
        (["2026-11", "2026-11-05"], (_utc(2026, 11, 5), _utc(2026, 11, 6))),
        # Contradictory: an empty window, not an error.
        (["ge2026-12-01", "lt2026-11-01"], (_utc(2026, 12, 1), _utc(2026, 11, 1))),
    ],
)
def test_date_filters(values: list[str], window: tuple[datetime | None, datetime | None]) -> None:
    assert parse_date_filters(values) == window


def test_date_filters_in_a_time_zone() -> None:
    paris = ZoneInfo("Europe/Paris")
    # 2026-10-25 lasts 25 hours in Paris (summer time ends).
    assert parse_date_filters(["2026-10-25"], tz=paris) == (
        _utc(2026, 10, 24, 22),
        _utc(2026, 10, 25, 23),
    )
    assert parse_date_filters(["eq2026-03"], tz=paris) == (
        _utc(2026, 2, 28, 23),
        _utc(2026, 3, 31, 22),
    )
    # A value without offset is in tz; a value with one is not.
    assert parse_date_filters(["ge2026-07-01T12:00"], tz=paris) == (_utc(2026, 7, 1, 10), None)
    assert parse_date_filters(["ge2026-07-01T12:00Z"], tz=paris) == (_utc(2026, 7, 1, 12), None)
    since, until = parse_date_filters(["2026-07-01"], tz=paris)
    assert since is not None and until is not None
    assert since.tzinfo is UTC and until.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        "",
        "ge",
        "26-11-01",
        "2026-1-1",
        "2026/11/01",
        "2026-11-01T10",  # an hour needs minutes
        "2026-11-01 10:00",
        "2026-11-01T10:00:00+0100",
        "GE2026",
        " ge2026",
        "2026-11-01T10:00:00.0000001Z",  # beyond microseconds
        "２０２６",  # fullwidth digits
    ],
)
def test_malformed_date_values_are_refused(value: str) -> None:
    with pytest.raises(FhirSearchError, match="date: ") as caught:
        parse_date_filters([value])
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize("prefix", ["ne", "sa", "eb", "ap", "xx"])
def test_unsupported_prefixes_are_refused(prefix: str) -> None:
    with pytest.raises(FhirSearchError, match=f"prefix '{prefix}' of '{prefix}2026-11-01'"):
        parse_date_filters(["ge2026-01-01", f"{prefix}2026-11-01"])


@pytest.mark.parametrize(
    "value",
    [
        "2026-13",
        "2026-00",
        "2026-02-29",
        "2026-11-31",
        "0000",
        "2026-11-01T24:00Z",
        "2026-11-01T10:60Z",
        "2026-11-01T10:00:60Z",  # a leap second: no datetime can hold it
        "2026-11-01T10:00+14:30",
        "2026-11-01T10:00+01:60",
        "9999",  # its end is out of range
    ],
)
def test_impossible_dates_are_refused(value: str) -> None:
    with pytest.raises(FhirSearchError, match=re.escape(repr(value))):
        parse_date_filters([value])


def test_date_filters_take_a_list() -> None:
    with pytest.raises(TypeError):
        parse_date_filters("ge2026-11-01")
    assert issubclass(FhirSearchError, ValueError)
