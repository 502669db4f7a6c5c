"""Properties of the GATT decoders and encoders (hypothesis).

- Any byte string fed to any decoder either decodes to a value with a plain-JSON form or
  raises GattDecodeError, never anything else.
- SFLOAT and FLOAT round-trip: decode(encode(x)) == x for every representable number, and
  arbitrary numbers in range come back within the format's precision.
- Every measurement builder in ``gateway_agent.gatt.encode`` round-trips through its decoder.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway_agent.gatt import (
    SUPPORTED_CHARACTERISTICS,
    BloodPressureMeasurement,
    BodyCompositionMeasurement,
    DateTimeFields,
    GattDecodeError,
    GlucoseMeasurement,
    HeartRateMeasurement,
    IntermediateCuffPressure,
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
    RecordAccessControlPoint,
    SensorContact,
    SpecialValue,
    TemperatureMeasurement,
    WeightMeasurement,
    decode,
    encode,
    to_json_dict,
)
from gateway_agent.gatt.blood_pressure import BloodPressureStatusBits
from gateway_agent.gatt.ieee11073 import (
    decode_float,
    decode_sfloat,
    float_from_raw,
    sfloat_from_raw,
)

NO_DEADLINE = settings(deadline=None)
"""Timing varies on shared CI machines; correctness, not speed, is under test here."""

# --- strategies -------------------------------------------------------------------------

sfloat_values = st.integers(0, 0xFFFF).map(sfloat_from_raw)
"""Every value an SFLOAT can carry, special values included."""
float_values = st.integers(0, 0xFFFFFFFF).map(float_from_raw)
"""Every value a FLOAT can carry, special values included."""
uint8 = st.integers(0, 0xFF)
uint16 = st.integers(0, 0xFFFF)
date_time_fields = st.builds(
    DateTimeFields,
    year=uint16,
    month=uint8,
    day=uint8,
    hours=uint8,
    minutes=uint8,
    seconds=uint8,
)
timestamps = st.one_of(
    st.none(),
    date_time_fields,
    st.datetimes(
        min_value=datetime(1582, 1, 1),  # noqa: DTZ001 - hypothesis takes naive bounds
        timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5))]),
    ),
)
"""Timestamps as builders take them: none, raw fields (any values), or aware datetimes."""


def _sent(timestamp: datetime | DateTimeFields | None) -> DateTimeFields | None:
    """The fields a decoder reports for a timestamp handed to a builder."""
    if isinstance(timestamp, datetime):
        return DateTimeFields.from_datetime(timestamp)
    return timestamp


def _optional(strategy: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(st.none(), strategy)


# --- any bytes into any decoder ---------------------------------------------------------


@pytest.mark.parametrize("characteristic", sorted(SUPPORTED_CHARACTERISTICS))
@NO_DEADLINE
@given(payload=st.binary(max_size=64))
def test_random_bytes_decode_or_raise_gatt_decode_error(
    characteristic: str, payload: bytes
) -> None:
    try:
        decoded = decode(characteristic, payload)
    except GattDecodeError as error:
        assert str(error)
        return
    json.dumps(to_json_dict(decoded), allow_nan=False)


@pytest.mark.parametrize("characteristic", sorted(SUPPORTED_CHARACTERISTICS))
@NO_DEADLINE
@given(flags=uint8, body=st.binary(max_size=40))
def test_random_bodies_behind_every_flag_byte(characteristic: str, flags: int, body: bytes) -> None:
    # Random bytes rarely pair a flags byte with a matching length; this explores the
    # optional fields of each flag combination more evenly.
    payload = bytes((flags,)) + body
    try:
        decoded = decode(characteristic, payload)
    except GattDecodeError:
        return
    json.dumps(to_json_dict(decoded), allow_nan=False)


# --- SFLOAT / FLOAT ---------------------------------------------------------------------


def test_every_sfloat_round_trips() -> None:
    for raw in range(0x10000):
        value = sfloat_from_raw(raw)
        assert sfloat_from_raw(int.from_bytes(encode.encode_sfloat(value), "little")) == value


@NO_DEADLINE
@given(raw=st.integers(0, 0xFFFFFFFF))
def test_every_float_round_trips(raw: int) -> None:
    value = float_from_raw(raw)
    assert float_from_raw(int.from_bytes(encode.encode_float(value), "little")) == value


@NO_DEADLINE
@given(mantissa=st.integers(-2048, 2047), exponent=st.integers(-8, 7))
def test_sfloat_with_a_fixed_exponent_keeps_it(mantissa: int, exponent: int) -> None:
    raw = ((exponent & 0xF) << 12) | (mantissa & 0xFFF)
    value = sfloat_from_raw(raw)
    if isinstance(value, SpecialValue):
        return
    assert encode.encode_sfloat(value, exponent) == raw.to_bytes(2, "little")


@NO_DEADLINE
@given(value=st.floats(min_value=-2045e7, max_value=2045e7, allow_nan=False))
def test_sfloat_of_any_number_in_range_is_within_its_precision(value: float) -> None:
    decoded = sfloat_from_raw(int.from_bytes(encode.encode_sfloat(value), "little"))
    assert isinstance(decoded, float)
    # About three significant digits survive (a coarsened mantissa is still >= 204.5),
    # and nothing below the smallest step 1e-8.
    assert abs(decoded - value) <= abs(value) * 0.0025 + 5e-9


@NO_DEADLINE
@given(value=st.floats(min_value=-8e133, max_value=8e133, allow_nan=False))
def test_float_of_any_number_in_range_is_within_its_precision(value: float) -> None:
    decoded = float_from_raw(int.from_bytes(encode.encode_float(value), "little"))
    assert isinstance(decoded, float)
    assert math.isclose(decoded, value, rel_tol=1e-6, abs_tol=1e-128)


@pytest.mark.parametrize("special", list(SpecialValue))
def test_special_values_round_trip(special: SpecialValue) -> None:
    assert decode_sfloat(encode.encode_sfloat(special)).value is special
    assert decode_float(encode.encode_float(special)).value is special


@pytest.mark.parametrize(
    ("number", "special"),
    [
        (math.nan, SpecialValue.NAN),
        (math.inf, SpecialValue.POSITIVE_INFINITY),
        (-math.inf, SpecialValue.NEGATIVE_INFINITY),
    ],
)
def test_ieee_nan_and_infinities_become_special_values(
    number: float, special: SpecialValue
) -> None:
    assert decode_sfloat(encode.encode_sfloat(number)).value is special
    assert decode_float(encode.encode_float(number)).value is special


@pytest.mark.parametrize(
    ("value", "exponent"), [(2046, 0), (-2048, 0), (1e11, None), (2048, 0), (1.0, 8)]
)
def test_sfloat_refuses_what_it_cannot_carry(value: float, exponent: int | None) -> None:
    with pytest.raises(ValueError, match="SFLOAT"):
        encode.encode_sfloat(value, exponent)


def test_sfloat_encoding_matches_devices() -> None:
    assert encode.encode_sfloat(10.1).hex() == "65f0"
    assert encode.encode_sfloat(120).hex() == "7800"
    assert encode.encode_float(37.6).hex() == "780100ff"
    assert encode.encode_float(12345.67).hex() == "87d612fe"


# --- measurement builders ---------------------------------------------------------------


@NO_DEADLINE
@given(
    systolic=sfloat_values,
    diastolic=sfloat_values,
    mean_arterial_pressure=_optional(sfloat_values),
    unit=st.sampled_from(["mmHg", "kPa"]),
    timestamp=timestamps,
    pulse_rate=_optional(sfloat_values),
    user_id=_optional(uint8),
    measurement_status=_optional(uint16),
)
def test_blood_pressure_round_trip(
    systolic: float | SpecialValue,
    diastolic: float | SpecialValue,
    mean_arterial_pressure: float | SpecialValue | None,
    unit: str,
    timestamp: datetime | DateTimeFields | None,
    pulse_rate: float | SpecialValue | None,
    user_id: int | None,
    measurement_status: int | None,
) -> None:
    payload = encode.blood_pressure_measurement(
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial_pressure=mean_arterial_pressure,
        unit=unit,  # type: ignore[arg-type]
        timestamp=timestamp,
        pulse_rate=pulse_rate,
        user_id=user_id,
        measurement_status=measurement_status,
    )
    assert decode("2A35", payload) == BloodPressureMeasurement(
        unit=unit,
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial_pressure=(
            SpecialValue.NAN if mean_arterial_pressure is None else mean_arterial_pressure
        ),
        timestamp=_sent(timestamp),
        pulse_rate=pulse_rate,
        user_id=user_id,
        measurement_status=measurement_status,
        status_bits=(
            None
            if measurement_status is None
            else BloodPressureStatusBits.from_status(measurement_status)
        ),
    )


@NO_DEADLINE
@given(cuff_pressure=sfloat_values, timestamp=timestamps, pulse_rate=_optional(sfloat_values))
def test_intermediate_cuff_pressure_round_trip(
    cuff_pressure: float | SpecialValue,
    timestamp: datetime | DateTimeFields | None,
    pulse_rate: float | SpecialValue | None,
) -> None:
    payload = encode.intermediate_cuff_pressure(
        cuff_pressure=cuff_pressure, unit="kPa", timestamp=timestamp, pulse_rate=pulse_rate
    )
    decoded = decode("2A36", payload)
    assert isinstance(decoded, IntermediateCuffPressure)
    assert decoded.cuff_pressure == cuff_pressure
    assert decoded.unit == "kPa"
    assert decoded.diastolic is SpecialValue.NAN
    assert decoded.mean_arterial_pressure is SpecialValue.NAN
    assert decoded.timestamp == _sent(timestamp)
    assert decoded.pulse_rate == pulse_rate


@NO_DEADLINE
@given(
    heart_rate=uint16,
    sensor_contact=st.sampled_from(list(SensorContact)),
    energy_expended_kj=_optional(uint16),
    rr_intervals=st.lists(uint16, max_size=9).map(tuple),
    force_uint16=st.booleans(),
)
def test_heart_rate_round_trip(
    heart_rate: int,
    sensor_contact: SensorContact,
    energy_expended_kj: int | None,
    rr_intervals: tuple[int, ...],
    force_uint16: bool,
) -> None:
    payload = encode.heart_rate_measurement(
        heart_rate=heart_rate,
        sensor_contact=sensor_contact,
        energy_expended_kj=energy_expended_kj,
        rr_intervals_1_1024s=rr_intervals,
        uint16_format=True if force_uint16 else None,
    )
    assert decode("2A37", payload) == HeartRateMeasurement(
        heart_rate, sensor_contact, energy_expended_kj, rr_intervals
    )


@NO_DEADLINE
@given(
    temperature=float_values,
    fahrenheit=st.booleans(),
    timestamp=timestamps,
    temperature_type=_optional(uint8),
)
def test_temperature_round_trip(
    temperature: float | SpecialValue,
    fahrenheit: bool,
    timestamp: datetime | DateTimeFields | None,
    temperature_type: int | None,
) -> None:
    if fahrenheit:
        payload = encode.temperature_measurement(
            fahrenheit=temperature, timestamp=timestamp, temperature_type=temperature_type
        )
    else:
        payload = encode.temperature_measurement(
            celsius=temperature, timestamp=timestamp, temperature_type=temperature_type
        )
    assert decode("2A1C", payload) == TemperatureMeasurement(
        "F" if fahrenheit else "C", temperature, _sent(timestamp), temperature_type
    )


@NO_DEADLINE
@given(
    sequence_number=uint16,
    base_time=timestamps,
    concentration=st.one_of(
        st.none(),
        st.tuples(st.just("mg_dl"), st.integers(0, 2047)),
        st.tuples(st.just("mmol_l"), st.integers(0, 2047)),
    ),
    time_offset_min=_optional(st.integers(-32768, 32767)),
    sample_type=st.integers(0, 15),
    sample_location=st.integers(0, 15),
    sensor_status=_optional(uint16),
    context_follows=st.booleans(),
)
def test_glucose_round_trip(
    sequence_number: int,
    base_time: datetime | DateTimeFields | None,
    concentration: tuple[str, int] | None,
    time_offset_min: int | None,
    sample_type: int,
    sample_location: int,
    sensor_status: int | None,
    context_follows: bool,
) -> None:
    mg_dl = mmol_l = None
    expected_concentration = expected_unit = None
    if concentration is not None and concentration[0] == "mg_dl":
        mg_dl = float(concentration[1])
        expected_concentration, expected_unit = concentration[1] / 100_000, "kg/L"
    elif concentration is not None:
        mmol_l = concentration[1] / 10
        expected_concentration, expected_unit = concentration[1] / 10_000, "mol/L"
    payload = encode.glucose_measurement(
        sequence_number=sequence_number,
        base_time=base_time,
        mg_dl=mg_dl,
        mmol_l=mmol_l,
        time_offset_min=time_offset_min,
        type=sample_type,
        sample_location=sample_location,
        sensor_status=sensor_status,
        context_follows=context_follows,
    )
    present = concentration is not None
    assert decode("2A18", payload) == GlucoseMeasurement(
        sequence_number=sequence_number,
        base_time=_sent(base_time) or DateTimeFields(0, 0, 0, 0, 0, 0),
        time_offset_min=time_offset_min,
        concentration=expected_concentration,
        unit=expected_unit,
        type=sample_type if present else None,
        sample_location=sample_location if present else None,
        sensor_status=sensor_status,
        context_follows=context_follows,
    )


def test_glucose_mg_dl_is_sent_as_a_real_meter_does() -> None:
    payload = encode.glucose_measurement(sequence_number=1, base_time=None, mg_dl=111)
    assert payload[10:12].hex() == "6fb0"


_racp_requests = st.one_of(
    st.builds(
        lambda op_code, operator: (op_code, operator, None, ()),
        st.sampled_from([1, 2, 4]),
        st.sampled_from([0, 1, 5, 6]),
    ),
    st.builds(
        lambda op_code, operator, operand: (op_code, operator, 1, operand),
        st.sampled_from([1, 2, 4]),
        st.sampled_from([2, 3]),
        st.tuples(uint16),
    ),
    st.builds(
        lambda op_code, operand: (op_code, 4, 1, operand),
        st.sampled_from([1, 2, 4]),
        st.tuples(uint16, uint16),
    ),
    st.builds(
        lambda op_code, operand: (op_code, 4, 2, operand),
        st.sampled_from([1, 2, 4]),
        st.tuples(date_time_fields, date_time_fields),
    ),
    st.builds(
        lambda op_code, operator, operand: (op_code, operator, 2, operand),
        st.sampled_from([1, 2, 4]),
        st.sampled_from([2, 3]),
        st.tuples(date_time_fields),
    ),
    st.just((3, 0, None, ())),
)


@NO_DEADLINE
@given(request=_racp_requests)
def test_racp_request_round_trip(
    request: tuple[int, int, int | None, tuple[int | DateTimeFields, ...]],
) -> None:
    op_code, operator, filter_type, operand = request
    payload = encode.racp_request(
        op_code=op_code, operator=operator, filter_type=filter_type, operand=operand
    )
    assert decode("2A52", payload) == RecordAccessControlPoint(
        op_code, operator, filter_type, operand, None, None, None
    )


@NO_DEADLINE
@given(request_op_code=uint8, response_code=uint8)
def test_racp_response_round_trip(request_op_code: int, response_code: int) -> None:
    payload = encode.racp_response(request_op_code=request_op_code, response_code=response_code)
    assert decode("2A52", payload) == RecordAccessControlPoint(
        6, 0, None, (), None, request_op_code, response_code
    )


@NO_DEADLINE
@given(number_of_records=uint16)
def test_racp_number_of_records_round_trip(number_of_records: int) -> None:
    payload = encode.racp_number_of_records_response(number_of_records=number_of_records)
    assert decode("2A52", payload) == RecordAccessControlPoint(
        5, 0, None, (), number_of_records, None, None
    )


@NO_DEADLINE
@given(
    imperial=st.booleans(),
    raw_weight=_optional(st.integers(0, 0xFFFE)),
    timestamp=timestamps,
    user_id=_optional(uint8),
    raw_bmi_and_height=_optional(st.tuples(uint16, uint16)),
)
def test_weight_round_trip(
    imperial: bool,
    raw_weight: int | None,
    timestamp: datetime | DateTimeFields | None,
    user_id: int | None,
    raw_bmi_and_height: tuple[int, int] | None,
) -> None:
    mass_per_unit, height_per_unit = (100, 10) if imperial else (200, 1000)
    weight = None if raw_weight is None else raw_weight / mass_per_unit
    bmi = height = None
    if raw_bmi_and_height is not None:
        bmi, height = raw_bmi_and_height[0] / 10, raw_bmi_and_height[1] / height_per_unit
    if imperial:
        payload = encode.weight_measurement(
            lb=weight, timestamp=timestamp, user_id=user_id, bmi=bmi, height_in=height
        )
    else:
        payload = encode.weight_measurement(
            kg=weight, timestamp=timestamp, user_id=user_id, bmi=bmi, height_m=height
        )
    decoded = decode("2A9D", payload)
    # Without any imperial value the builder cannot know the unit of a failed weighing.
    unit_is_imperial = imperial and (weight is not None or height is not None)
    assert decoded == WeightMeasurement(
        unit="lb" if unit_is_imperial else "kg",
        weight=weight,
        measurement_unsuccessful=weight is None,
        timestamp=_sent(timestamp),
        user_id=user_id,
        bmi=bmi,
        height=height,
        height_unit="in" if unit_is_imperial else "m",
    )


_BODY_COMPOSITION_FIELDS: tuple[tuple[str, int | str], ...] = (
    ("basal_metabolism_kj", 1),
    ("muscle_percentage", 10),
    ("muscle_mass", "mass"),
    ("fat_free_mass", "mass"),
    ("soft_lean_mass", "mass"),
    ("body_water_mass", "mass"),
    ("impedance_ohm", 10),
    ("weight", "mass"),
    ("height", "height"),
)


@NO_DEADLINE
@given(
    imperial=st.booleans(),
    raw_body_fat=_optional(st.integers(0, 0xFFFE)),
    timestamp=timestamps,
    user_id=_optional(uint8),
    raw_optional=st.tuples(*(_optional(uint16) for _ in _BODY_COMPOSITION_FIELDS)),
    multiple_packet=st.booleans(),
)
def test_body_composition_round_trip(
    imperial: bool,
    raw_body_fat: int | None,
    timestamp: datetime | DateTimeFields | None,
    user_id: int | None,
    raw_optional: tuple[int | None, ...],
    multiple_packet: bool,
) -> None:
    divisors = {"mass": 100 if imperial else 200, "height": 10 if imperial else 1000}
    values: dict[str, float | int | None] = {}
    for (name, per_unit), raw in zip(_BODY_COMPOSITION_FIELDS, raw_optional, strict=True):
        divisor: int = divisors[per_unit] if isinstance(per_unit, str) else per_unit
        values[name] = None if raw is None else (raw if divisor == 1 else raw / divisor)
    body_fat = None if raw_body_fat is None else raw_body_fat / 10
    payload = encode.body_composition_measurement(
        body_fat_percentage=body_fat,
        unit_system="imperial" if imperial else "SI",
        timestamp=timestamp,
        user_id=user_id,
        multiple_packet=multiple_packet,
        **values,  # type: ignore[arg-type]
    )
    decoded = decode("2A9C", payload)
    assert isinstance(decoded, BodyCompositionMeasurement)
    assert decoded.unit_system == ("imperial" if imperial else "SI")
    assert decoded.body_fat_percentage == body_fat
    assert decoded.measurement_unsuccessful == (body_fat is None)
    assert decoded.timestamp == _sent(timestamp)
    assert decoded.user_id == user_id
    assert decoded.multiple_packet == multiple_packet
    for name, value in values.items():
        assert getattr(decoded, name) == value, name
    raw_view = decoded.raw.as_dict()
    assert raw_view["body_fat_percentage"] == (0xFFFF if raw_body_fat is None else raw_body_fat)


@NO_DEADLINE
@given(
    spo2=sfloat_values,
    pulse_rate=sfloat_values,
    timestamp=timestamps,
    measurement_status=_optional(uint16),
    device_and_sensor_status=_optional(st.integers(0, 0xFFFFFF)),
    pulse_amplitude_index=_optional(sfloat_values),
    device_clock_not_set=st.booleans(),
)
def test_plx_spot_check_round_trip(
    spo2: float | SpecialValue,
    pulse_rate: float | SpecialValue,
    timestamp: datetime | DateTimeFields | None,
    measurement_status: int | None,
    device_and_sensor_status: int | None,
    pulse_amplitude_index: float | SpecialValue | None,
    device_clock_not_set: bool,
) -> None:
    payload = encode.plx_spot_check(
        spo2=spo2,
        pulse_rate=pulse_rate,
        timestamp=timestamp,
        measurement_status=measurement_status,
        device_and_sensor_status=device_and_sensor_status,
        pulse_amplitude_index=pulse_amplitude_index,
        device_clock_not_set=device_clock_not_set,
    )
    assert decode("2A5E", payload) == PlxSpotCheckMeasurement(
        spo2,
        pulse_rate,
        _sent(timestamp),
        measurement_status,
        device_and_sensor_status,
        pulse_amplitude_index,
        device_clock_not_set,
    )


@NO_DEADLINE
@given(
    normal=st.tuples(sfloat_values, sfloat_values),
    fast=_optional(st.tuples(sfloat_values, sfloat_values)),
    slow=_optional(st.tuples(sfloat_values, sfloat_values)),
    measurement_status=_optional(uint16),
    device_and_sensor_status=_optional(st.integers(0, 0xFFFFFF)),
    pulse_amplitude_index=_optional(sfloat_values),
)
def test_plx_continuous_round_trip(
    normal: tuple[float | SpecialValue, float | SpecialValue],
    fast: tuple[float | SpecialValue, float | SpecialValue] | None,
    slow: tuple[float | SpecialValue, float | SpecialValue] | None,
    measurement_status: int | None,
    device_and_sensor_status: int | None,
    pulse_amplitude_index: float | SpecialValue | None,
) -> None:
    spo2_fast, pulse_rate_fast = fast or (None, None)
    spo2_slow, pulse_rate_slow = slow or (None, None)
    payload = encode.plx_continuous(
        spo2=normal[0],
        pulse_rate=normal[1],
        spo2_fast=spo2_fast,
        pulse_rate_fast=pulse_rate_fast,
        spo2_slow=spo2_slow,
        pulse_rate_slow=pulse_rate_slow,
        measurement_status=measurement_status,
        device_and_sensor_status=device_and_sensor_status,
        pulse_amplitude_index=pulse_amplitude_index,
    )
    assert decode("2A5F", payload) == PlxContinuousMeasurement(
        normal[0],
        normal[1],
        spo2_fast,
        pulse_rate_fast,
        spo2_slow,
        pulse_rate_slow,
        measurement_status,
        device_and_sensor_status,
        pulse_amplitude_index,
    )


@pytest.mark.parametrize(
    ("characteristic", "payload", "vector_hex"),
    [
        (
            "2A9D",
            encode.weight_measurement(kg=70.0, user_id=5, bmi=24.5, height_m=1.75),
            "0cb03605f500d606",
        ),
        (
            "2A9C",
            encode.body_composition_measurement(
                body_fat_percentage=8.0,
                fat_free_mass=60.0,
                soft_lean_mass=50.0,
                body_water_mass=40.0,
            ),
            "c0015000e02e1027401f",
        ),
        ("2A52", encode.racp_request(op_code=1), "0101"),
        (
            "2A52",
            encode.racp_request(op_code=1, operator=3, filter_type=1, operand=[10]),
            "0103010a00",
        ),
        ("2A52", encode.racp_response(request_op_code=1, response_code=1), "06000101"),
        (
            "2A37",
            encode.heart_rate_measurement(
                heart_rate=85,
                sensor_contact="detected",
                energy_expended_kj=50,
                rr_intervals_1_1024s=[33],
            ),
            "1e5532002100",
        ),
    ],
)
def test_builders_reproduce_vector_bytes(
    characteristic: str, payload: bytes, vector_hex: str
) -> None:
    assert payload.hex() == vector_hex
    decode(characteristic, payload)


@pytest.mark.parametrize(
    "build",
    [
        lambda: encode.temperature_measurement(celsius=37.0, fahrenheit=98.6),
        lambda: encode.temperature_measurement(),
        lambda: encode.weight_measurement(kg=70.0, height_in=70.0, bmi=22.0),
        lambda: encode.weight_measurement(kg=70.0, bmi=22.0),
        lambda: encode.weight_measurement(kg=400.0),
        lambda: encode.glucose_measurement(sequence_number=1, base_time=None, mg_dl=1, mmol_l=1),
        lambda: encode.plx_continuous(spo2=97, pulse_rate=60, spo2_fast=97),
        lambda: encode.racp_request(op_code=1, operator=3),
        lambda: encode.racp_request(op_code=5),
        lambda: encode.heart_rate_measurement(heart_rate=300, uint16_format=False),
        lambda: encode.blood_pressure_measurement(systolic=120, diastolic=80, user_id=256),
    ],
)
def test_builders_refuse_what_the_layout_cannot_carry(build: object) -> None:
    assert callable(build)
    with pytest.raises(ValueError):
        build()
