"""Decoded characteristics -> canonical observations (LOINC, UCUM unit, value)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from carewatch_contract.metrics import METRICS, Loinc
from gateway_agent.gatt import (
    DateTimeFields,
    DecodedCharacteristic,
    SpecialValue,
    decode,
    encode,
)
from gateway_agent.gatt.ieee11073 import sfloat_from_raw
from gateway_agent.observations import Observation, measurement_time, observations_from

NO_DEADLINE = settings(deadline=None)
"""Timing varies on shared CI machines; correctness, not speed, is under test here."""

WHEN = datetime(2026, 11, 29, 7, 30, 15, tzinfo=UTC)


def _decode(characteristic: str, payload: bytes | str) -> DecodedCharacteristic:
    """Decode bytes, or hex as the vectors spell it."""
    return decode(characteristic, bytes.fromhex(payload) if isinstance(payload, str) else payload)


def _observations(characteristic: str, payload: bytes | str) -> dict[str, Observation]:
    observations = observations_from(_decode(characteristic, payload))
    by_code = {observation.loinc: observation for observation in observations}
    assert len(by_code) == len(observations), "one observation per metric"
    return by_code


def _values(characteristic: str, payload: bytes | str) -> dict[str, float]:
    return {
        code: observation.value
        for code, observation in _observations(characteristic, payload).items()
    }


def test_every_observation_uses_the_catalog_unit() -> None:
    payloads = [
        (
            "2A35",
            encode.blood_pressure_measurement(
                systolic=16, diastolic=10.7, mean_arterial_pressure=12.5, unit="kPa"
            ),
        ),
        ("2A37", encode.heart_rate_measurement(heart_rate=72)),
        ("2A1C", encode.temperature_measurement(fahrenheit=98.6)),
        ("2A18", encode.glucose_measurement(sequence_number=1, base_time=WHEN, mmol_l=6.2)),
        ("2A9D", encode.weight_measurement(lb=150.0, bmi=22.1, height_in=68.0)),
        ("2A9C", encode.body_composition_measurement(body_fat_percentage=21.5)),
        ("2A5E", encode.plx_spot_check(spo2=97, pulse_rate=61)),
        ("2A5F", encode.plx_continuous(spo2=96, pulse_rate=62)),
    ]
    seen = set()
    for characteristic, payload in payloads:
        for observation in observations_from(_decode(characteristic, payload)):
            assert observation.unit == METRICS[observation.loinc].unit
            assert isinstance(observation.value, float)
            seen.add(observation.loinc)
    assert seen == set(METRICS) - {Loinc.RESPIRATORY_RATE}


def test_blood_pressure_in_mmhg_is_kept() -> None:
    assert _values("2A35", "1e8a00580078000000041114293b3c00012700") == {
        Loinc.SYSTOLIC: 138.0,
        Loinc.DIASTOLIC: 88.0,
        Loinc.MEAN_ARTERIAL_PRESSURE: 120.0,
        Loinc.HEART_RATE: 60.0,
    }
    assert _observations("2A35", "00bdf00b009ff0")[Loinc.SYSTOLIC] == Observation(
        "8480-6", "mm[Hg]", 18.9
    )


def test_blood_pressure_in_kpa_is_converted_to_mmhg() -> None:
    payload = encode.blood_pressure_measurement(
        systolic=16.0, diastolic=10.7, mean_arterial_pressure=12.5, unit="kPa", pulse_rate=64
    )
    assert _values("2A35", payload) == {
        Loinc.SYSTOLIC: 120.0,  # 16.0 kPa x 7.50062 = 120.00992
        Loinc.DIASTOLIC: 80.3,  # 10.7 kPa x 7.50062 = 80.2566
        Loinc.MEAN_ARTERIAL_PRESSURE: 93.8,  # 12.5 kPa x 7.50062 = 93.75775
        Loinc.HEART_RATE: 64.0,  # pulse rate is not a pressure: unchanged
    }


def test_nan_map_is_absent_not_2047() -> None:
    # A real cuff error: everything NaN (0x07FF) except the timestamp.
    cuff_error = bytes([22, 255, 7, 255, 7, 255, 7, 232, 7, 6, 23, 14, 35, 10, 255, 7, 0, 0])
    assert observations_from(_decode("2A35", cuff_error)) == []
    no_map = encode.blood_pressure_measurement(systolic=128, diastolic=82)
    assert _values("2A35", no_map) == {Loinc.SYSTOLIC: 128.0, Loinc.DIASTOLIC: 82.0}


@NO_DEADLINE
@given(
    systolic=st.sampled_from(list(SpecialValue)),
    diastolic=st.integers(0, 0xFFFF).map(sfloat_from_raw),
    pulse_rate=st.sampled_from(list(SpecialValue)),
)
def test_special_values_never_become_numbers(
    systolic: SpecialValue, diastolic: float | SpecialValue, pulse_rate: SpecialValue
) -> None:
    payload = encode.blood_pressure_measurement(
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial_pressure=systolic,
        pulse_rate=pulse_rate,
    )
    values = _values("2A35", payload)
    expected = {} if isinstance(diastolic, SpecialValue) else {Loinc.DIASTOLIC: diastolic}
    assert values == expected


@pytest.mark.parametrize("special", list(SpecialValue))
def test_special_values_yield_nothing_for_any_device(special: SpecialValue) -> None:
    payloads = [
        ("2A1C", encode.temperature_measurement(celsius=special)),
        ("2A18", encode.glucose_measurement(sequence_number=1, base_time=None, mg_dl=100)),
        ("2A5E", encode.plx_spot_check(spo2=special, pulse_rate=special)),
        ("2A5F", encode.plx_continuous(spo2=special, pulse_rate=special)),
    ]
    # The glucose builder takes a number; put the special value in its SFLOAT by hand.
    glucose = bytearray(payloads[1][1])
    glucose[10:12] = encode.encode_sfloat(special)
    payloads[1] = ("2A18", bytes(glucose))
    for characteristic, payload in payloads:
        assert observations_from(_decode(characteristic, payload)) == [], characteristic


def test_intermediate_cuff_pressure_is_not_a_result() -> None:
    payload = encode.intermediate_cuff_pressure(cuff_pressure=152, pulse_rate=70)
    assert observations_from(_decode("2A36", payload)) == []


@pytest.mark.parametrize(
    ("contact", "expected"),
    [
        ("not_supported", {Loinc.HEART_RATE: 72.0}),
        ("detected", {Loinc.HEART_RATE: 72.0}),
        ("not_detected", {}),
    ],
)
def test_heart_rate_strap_needs_skin_contact(contact: str, expected: dict[str, float]) -> None:
    payload = encode.heart_rate_measurement(heart_rate=72, sensor_contact=contact)
    assert _values("2A37", payload) == expected


def test_temperature_celsius_and_fahrenheit() -> None:
    assert _values("2A1C", "06b00e00fedc070c050b321b04") == {Loinc.BODY_TEMPERATURE: 37.6}
    assert _values("2A1C", encode.temperature_measurement(fahrenheit=98.6)) == {
        Loinc.BODY_TEMPERATURE: 37.0
    }
    assert _values("2A1C", encode.temperature_measurement(fahrenheit=100.4)) == {
        Loinc.BODY_TEMPERATURE: 38.0
    }
    assert _values("2A1C", encode.temperature_measurement(fahrenheit=99.5)) == {
        Loinc.BODY_TEMPERATURE: 37.5
    }


def test_glucose_kg_per_litre_as_an_accu_chek_sends_it() -> None:
    # 6f b0 = 111e-5 kg/L = 111 mg/dL, what the meter displayed.
    payload = encode.glucose_measurement(sequence_number=7, base_time=WHEN, mg_dl=111)
    assert payload[10:12] == bytes.fromhex("6fb0")
    assert _observations("2A18", payload) == {Loinc.GLUCOSE: Observation("41653-7", "mg/dL", 111.0)}


def test_glucose_mol_per_litre_is_converted_to_mg_dl() -> None:
    payload = encode.glucose_measurement(sequence_number=7, base_time=WHEN, mmol_l=6.2)
    assert _values("2A18", payload) == {Loinc.GLUCOSE: 111.7}  # 6.2 x 18.016 = 111.6992


def test_glucose_control_solution_is_not_a_patient_reading() -> None:
    for sample_type, location in ((10, 1), (1, 4)):
        payload = encode.glucose_measurement(
            sequence_number=8,
            base_time=WHEN,
            mg_dl=120,
            type=sample_type,
            sample_location=location,
        )
        assert observations_from(_decode("2A18", payload)) == []


def test_glucose_without_concentration_yields_nothing() -> None:
    assert observations_from(_decode("2A18", "080400d00701020304055705")) == []


def test_weight_in_kg_and_lb() -> None:
    assert _values("2A9D", "0cb03605f500d606") == {
        Loinc.BODY_WEIGHT: 70.0,
        Loinc.BMI: 24.5,
        Loinc.BODY_HEIGHT: 1.75,
    }
    imperial = encode.weight_measurement(lb=154.32, bmi=22.8, height_in=68.9)
    assert _values("2A9D", imperial) == {
        Loinc.BODY_WEIGHT: 69.998,  # 154.32 lb x 0.45359237 = 69.9984
        Loinc.BMI: 22.8,
        Loinc.BODY_HEIGHT: 1.75,  # 68.9 in x 0.0254 = 1.75006
    }


def test_unsuccessful_weighing_is_absent_not_327_kg() -> None:
    payload = encode.weight_measurement(kg=None, bmi=22.0, height_m=1.8)
    decoded = _decode("2A9D", payload)
    assert payload[1:3] == b"\xff\xff"
    assert decoded.weight is None  # type: ignore[union-attr]
    assert decoded.measurement_unsuccessful  # type: ignore[union-attr]
    # No weight, and no BMI computed from it; the height is still the user's height.
    assert _values("2A9D", payload) == {Loinc.BODY_HEIGHT: 1.8}


def test_body_composition_gives_body_fat_only() -> None:
    payload = encode.body_composition_measurement(
        body_fat_percentage=23.4, weight=81.2, height=1.8, muscle_mass=30.0
    )
    assert _values("2A9C", payload) == {Loinc.BODY_FAT: 23.4}
    unsuccessful = encode.body_composition_measurement(body_fat_percentage=None)
    assert observations_from(_decode("2A9C", unsuccessful)) == []


def test_pulse_oximetry_spot_check_and_continuous() -> None:
    assert _values("2A5E", "0facf3bef5e8070b1d170839204022000066e3") == {
        Loinc.SPO2: 94.0,
        Loinc.HEART_RATE: 147.0,
    }
    # Continuous: only the normal pair, never the fast or slow ones.
    assert _values("2A5F", "1fdef3caf3caf35af5d4f3b2f220010000007ae3") == {
        Loinc.SPO2: 99.0,
        Loinc.HEART_RATE: 97.0,
    }


@pytest.mark.parametrize("status_bit", [10, 11, 12, 13, 15])
def test_pulse_oximetry_status_that_is_not_a_result(status_bit: int) -> None:
    for payload, characteristic in (
        (encode.plx_spot_check(spo2=97, pulse_rate=60, measurement_status=1 << status_bit), "2A5E"),
        (encode.plx_continuous(spo2=97, pulse_rate=60, measurement_status=1 << status_bit), "2A5F"),
    ):
        assert observations_from(_decode(characteristic, payload)) == []


def test_no_observations_from_racp_or_bare_numbers() -> None:
    for characteristic, payload in (("2A52", "0101"), ("SFLOAT", "65f0"), ("FLOAT", "87d612fe")):
        assert observations_from(_decode(characteristic, bytes.fromhex(payload))) == []


def test_measurement_time_is_the_device_clock_as_sent() -> None:
    bp = _decode("2A35", "1e8a00580078000000041114293b3c00012700")
    assert measurement_time(bp) == DateTimeFields(0, 4, 17, 20, 41, 59)
    assert measurement_time(bp).to_datetime(UTC) is None  # type: ignore[union-attr]
    weight = _decode("2A9D", encode.weight_measurement(kg=70.0, timestamp=WHEN))
    assert measurement_time(weight) == DateTimeFields(2026, 11, 29, 7, 30, 15)
    assert measurement_time(_decode("2A9D", "008c3c")) is None
    assert measurement_time(_decode("2A37", "0055")) is None


def test_glucose_measurement_time_is_base_time_plus_offset() -> None:
    # Nordic asserts user-facing minute 5: 11:10:30 + (-5 min).
    glucose = _decode("2A18", "1b0100e307021b0b0a1efbff1e00120501")
    assert measurement_time(glucose) == DateTimeFields(2019, 2, 27, 11, 5, 30)
    across_midnight = _decode(
        "2A18",
        encode.glucose_measurement(
            sequence_number=1,
            base_time=DateTimeFields(2024, 12, 31, 23, 50, 0),
            time_offset_min=15,
        ),
    )
    assert measurement_time(across_midnight) == DateTimeFields(2025, 1, 1, 0, 5, 0)
    unknown_base = _decode(
        "2A18",
        encode.glucose_measurement(sequence_number=1, base_time=None, time_offset_min=15),
    )
    assert measurement_time(unknown_base) is None


def test_plx_clock_not_set_means_no_time() -> None:
    payload = encode.plx_spot_check(
        spo2=97, pulse_rate=60, timestamp=WHEN, device_clock_not_set=True
    )
    assert measurement_time(_decode("2A5E", payload)) is None


@pytest.mark.parametrize(
    "fields",
    [
        DateTimeFields(0, 4, 17, 20, 41, 59),
        DateTimeFields(2024, 0, 17, 20, 41, 59),
        DateTimeFields(2024, 13, 1, 0, 0, 0),
        DateTimeFields(2024, 2, 30, 0, 0, 0),
        DateTimeFields(2024, 2, 1, 24, 0, 0),
        DateTimeFields(1027, 5, 6, 7, 8, 9),
        DateTimeFields(65535, 255, 255, 255, 255, 255),
    ],
)
def test_to_datetime_never_raises(fields: DateTimeFields) -> None:
    assert fields.to_datetime(UTC) is None


def test_to_datetime_of_a_valid_time() -> None:
    assert DateTimeFields(2012, 12, 5, 11, 50, 27).to_datetime(UTC) == datetime(
        2012, 12, 5, 11, 50, 27, tzinfo=UTC
    )
