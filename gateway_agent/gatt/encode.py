"""Builders for characteristic values: the inverse of the decoders.

Used by simulated devices and virtual Bluetooth peripherals, and by the property tests that
check every builder round-trips through its decoder. All builders take keyword-only
arguments named like the decoded fields and raise ``ValueError`` for values that the layout
cannot carry (out of range, half of a pair missing, both units given).

Numbers are rounded to the field's resolution with round-half-even on their decimal value
(0.005 kg for SI weights, 0.1 for BMI, ...). Timestamps are sent as the wall-clock fields of
the datetime given, in its own zone: convert to the device's zone first.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Literal, TypeAlias

from gateway_agent.gatt.date_time import NOT_KNOWN, DateTimeFields, pack_date_time
from gateway_agent.gatt.glucose import (
    OPERAND_COUNT_BY_OPERATOR,
    OPERAND_SIZE_BY_FILTER,
    RacpFilterType,
    RacpOpCode,
    RacpOperator,
)
from gateway_agent.gatt.heart_rate import SensorContact
from gateway_agent.gatt.ieee11073 import FLOAT_SPECIAL_RAW, SFLOAT_SPECIAL_RAW, SpecialValue
from gateway_agent.gatt.weight import (
    IN_PER_RAW_UNIT,
    KG_PER_RAW_UNIT,
    LB_PER_RAW_UNIT,
    M_PER_RAW_UNIT,
    MEASUREMENT_UNSUCCESSFUL,
)

MedFloatInput: TypeAlias = float | SpecialValue
"""A value for an SFLOAT/FLOAT field: a number (NaN and infinities map to the specials)."""

Timestamp: TypeAlias = datetime | DateTimeFields | None
"""A Date Time to send: a datetime (its wall-clock fields), fields as-is, or None."""

__all__ = [
    "MedFloatInput",
    "Timestamp",
    "blood_pressure_measurement",
    "body_composition_measurement",
    "encode_date_time",
    "encode_float",
    "encode_sfloat",
    "glucose_measurement",
    "heart_rate_measurement",
    "intermediate_cuff_pressure",
    "plx_continuous",
    "plx_spot_check",
    "racp_number_of_records_response",
    "racp_request",
    "racp_response",
    "temperature_measurement",
    "weight_measurement",
]


@dataclass(frozen=True, slots=True)
class _MedFloatFormat:
    """The parameters that distinguish SFLOAT from FLOAT."""

    name: str
    mantissa_bits: int
    exponent_bits: int
    specials: dict[SpecialValue, int]
    packer: struct.Struct

    @property
    def mantissa_max(self) -> int:
        return (1 << (self.mantissa_bits - 1)) - 1

    @property
    def exponent_min(self) -> int:
        return -(1 << (self.exponent_bits - 1))

    @property
    def exponent_max(self) -> int:
        return (1 << (self.exponent_bits - 1)) - 1

    def fits(self, mantissa: int, exponent: int) -> bool:
        """Whether ``mantissa`` x 10^``exponent`` is an ordinary number of this format.

        The two largest and three smallest mantissas are special values at exponent 0
        (and only there).
        """
        top = self.mantissa_max
        if exponent == 0:
            return -top + 2 <= mantissa <= top - 2
        return -top - 1 <= mantissa <= top

    def pack(self, mantissa: int, exponent: int) -> bytes:
        mask = (1 << self.mantissa_bits) - 1
        exponent_mask = (1 << self.exponent_bits) - 1
        return self.packer.pack(
            ((exponent & exponent_mask) << self.mantissa_bits) | (mantissa & mask)
        )


_SFLOAT = _MedFloatFormat("SFLOAT", 12, 4, SFLOAT_SPECIAL_RAW, struct.Struct("<H"))
_FLOAT = _MedFloatFormat("FLOAT", 24, 8, FLOAT_SPECIAL_RAW, struct.Struct("<I"))


def _special_for(value: MedFloatInput) -> SpecialValue | None:
    if isinstance(value, SpecialValue):
        return value
    if math.isnan(value):
        return SpecialValue.NAN
    if math.isinf(value):
        return SpecialValue.POSITIVE_INFINITY if value > 0 else SpecialValue.NEGATIVE_INFINITY
    return None


def _round_to_integer(value: Decimal) -> int:
    return int(value.to_integral_value(rounding=ROUND_HALF_EVEN))


def _encode_medfloat(
    value: MedFloatInput | Decimal, exponent: int | None, number_format: _MedFloatFormat
) -> bytes:
    if not isinstance(value, Decimal):
        special = _special_for(value)
        if special is not None:
            return number_format.packer.pack(number_format.specials[special])
        value = Decimal(repr(float(value)))
    if exponent is not None:
        if not number_format.exponent_min <= exponent <= number_format.exponent_max:
            raise ValueError(
                f"{number_format.name} exponent {exponent} outside "
                f"{number_format.exponent_min}..{number_format.exponent_max}"
            )
        mantissa = _round_to_integer(value.scaleb(-exponent))
        if not number_format.fits(mantissa, exponent):
            raise ValueError(
                f"{number_format.name}: {value} needs mantissa {mantissa} at exponent "
                f"{exponent}, outside the representable range"
            )
        return number_format.pack(mantissa, exponent)
    # Choose the exponent: start from the number of decimals the value has (0 for whole
    # numbers, so 120 stays 120e0) and coarsen until the mantissa fits.
    decimals = value.normalize().as_tuple().exponent
    assert isinstance(decimals, int)  # finite by construction
    start = max(min(decimals, 0), number_format.exponent_min)
    for candidate in range(start, number_format.exponent_max + 1):
        mantissa = _round_to_integer(value.scaleb(-candidate))
        if number_format.fits(mantissa, candidate):
            return number_format.pack(mantissa, candidate)
    raise ValueError(f"{number_format.name}: {value} is too large to represent")


def encode_sfloat(value: MedFloatInput, exponent: int | None = None) -> bytes:
    """Two bytes (little-endian) of the SFLOAT nearest to ``value``.

    ``exponent`` fixes the decimal exponent (-8..7), e.g. -1 for one decimal; by default the
    most precise exponent whose mantissa fits is used (whole numbers keep exponent 0).
    Special values, NaN and infinities encode as the SFLOAT special values. ValueError when
    the value does not fit.
    """
    return _encode_medfloat(value, exponent, _SFLOAT)


def encode_float(value: MedFloatInput, exponent: int | None = None) -> bytes:
    """Four bytes (little-endian) of the FLOAT nearest to ``value``; see encode_sfloat.

    ``exponent`` may be -128..127.
    """
    return _encode_medfloat(value, exponent, _FLOAT)


CURRENT_TIME_ADJUST_EXTERNAL_REFERENCE = 0x02
"""Current Time "adjust reason" bit: set from an external reference time (the gateway)."""


def encode_current_time(
    now: datetime, *, adjust_reason: int = CURRENT_TIME_ADJUST_EXTERNAL_REFERENCE
) -> bytes:
    """The 10-byte Current Time (0x2A2B) value a gateway writes to set a device's clock.

    Exact Time 256 = Date Time (7 bytes, wall clock of ``now``) + day of week (1 = Monday)
    + fractions of a second in 1/256 s; then the adjust reason flags.
    """
    fractions = now.microsecond * 256 // 1_000_000
    return (
        encode_date_time(now) + bytes([now.isoweekday(), fractions]) + bytes([adjust_reason & 0xFF])
    )


def encode_date_time(dt: Timestamp) -> bytes:
    """The 7-byte Date Time of ``dt``; None gives all zeros ("not known").

    A datetime contributes its wall-clock fields (no zone conversion, seconds truncated);
    DateTimeFields are sent as they are, so a wrong or unknown clock can be simulated.
    """
    if dt is None:
        return pack_date_time(NOT_KNOWN)
    if isinstance(dt, datetime):
        return pack_date_time(DateTimeFields.from_datetime(dt))
    return pack_date_time(dt)


def _uint8(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} {value} does not fit a uint8 (0..255)")
    return bytes((value,))


def _uint16(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} {value} does not fit a uint16 (0..65535)")
    return value.to_bytes(2, "little")


def _sint16(name: str, value: int) -> bytes:
    if not -0x8000 <= value <= 0x7FFF:
        raise ValueError(f"{name} {value} does not fit a sint16 (-32768..32767)")
    return value.to_bytes(2, "little", signed=True)


def _uint24(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFFFF:
        raise ValueError(f"{name} {value} does not fit a uint24")
    return value.to_bytes(3, "little")


def _scaled_uint16(name: str, value: float, per_unit: int, maximum: int = 0xFFFF) -> bytes:
    """``value`` in units of 1/per_unit as a uint16, rounded half-even on its decimal form."""
    raw = _round_to_integer(Decimal(repr(float(value))) * per_unit)
    if not 0 <= raw <= maximum:
        raise ValueError(f"{name} {value} is outside 0..{maximum / per_unit}")
    return raw.to_bytes(2, "little")


def _blood_pressure_layout(
    *,
    systolic: MedFloatInput,
    diastolic: MedFloatInput,
    mean_arterial_pressure: MedFloatInput | None,
    unit: Literal["mmHg", "kPa"],
    timestamp: Timestamp,
    pulse_rate: MedFloatInput | None,
    user_id: int | None,
    measurement_status: int | None,
) -> bytes:
    if unit not in ("mmHg", "kPa"):
        raise ValueError(f"unit must be 'mmHg' or 'kPa', not {unit!r}")
    flags = 0x01 if unit == "kPa" else 0
    parts = [
        encode_sfloat(systolic),
        encode_sfloat(diastolic),
        encode_sfloat(
            SpecialValue.NAN if mean_arterial_pressure is None else mean_arterial_pressure
        ),
    ]
    if timestamp is not None:
        flags |= 0x02
        parts.append(encode_date_time(timestamp))
    if pulse_rate is not None:
        flags |= 0x04
        parts.append(encode_sfloat(pulse_rate))
    if user_id is not None:
        flags |= 0x08
        parts.append(_uint8("user_id", user_id))
    if measurement_status is not None:
        flags |= 0x10
        parts.append(_uint16("measurement_status", measurement_status))
    return bytes((flags,)) + b"".join(parts)


def blood_pressure_measurement(
    *,
    systolic: MedFloatInput,
    diastolic: MedFloatInput,
    mean_arterial_pressure: MedFloatInput | None = None,
    unit: Literal["mmHg", "kPa"] = "mmHg",
    timestamp: Timestamp = None,
    pulse_rate: MedFloatInput | None = None,
    user_id: int | None = None,
    measurement_status: int | None = None,
) -> bytes:
    """A 0x2A35 value. A missing MAP is sent as NaN, as real cuffs do.

    The timestamp is included only when given (pass ``date_time.NOT_KNOWN`` to send the
    all-zero "not known" Date Time).
    """
    return _blood_pressure_layout(
        systolic=systolic,
        diastolic=diastolic,
        mean_arterial_pressure=mean_arterial_pressure,
        unit=unit,
        timestamp=timestamp,
        pulse_rate=pulse_rate,
        user_id=user_id,
        measurement_status=measurement_status,
    )


def intermediate_cuff_pressure(
    *,
    cuff_pressure: MedFloatInput,
    unit: Literal["mmHg", "kPa"] = "mmHg",
    timestamp: Timestamp = None,
    pulse_rate: MedFloatInput | None = None,
    user_id: int | None = None,
    measurement_status: int | None = None,
) -> bytes:
    """A 0x2A36 value: the current cuff pressure in the systolic field, diastolic/MAP NaN."""
    return _blood_pressure_layout(
        systolic=cuff_pressure,
        diastolic=SpecialValue.NAN,
        mean_arterial_pressure=SpecialValue.NAN,
        unit=unit,
        timestamp=timestamp,
        pulse_rate=pulse_rate,
        user_id=user_id,
        measurement_status=measurement_status,
    )


_SENSOR_CONTACT_BITS = {
    SensorContact.NOT_SUPPORTED: 0x00,
    SensorContact.NOT_DETECTED: 0x04,
    SensorContact.DETECTED: 0x06,
}


def heart_rate_measurement(
    *,
    heart_rate: int,
    sensor_contact: SensorContact | str = SensorContact.NOT_SUPPORTED,
    energy_expended_kj: int | None = None,
    rr_intervals_1_1024s: Sequence[int] = (),
    uint16_format: bool | None = None,
) -> bytes:
    """A 0x2A37 value.

    ``uint16_format`` forces the 16-bit heart-rate field; by default it is used only when
    the heart rate exceeds 255. RR intervals are in units of 1/1024 s.
    """
    contact = SensorContact(sensor_contact)
    wide = heart_rate > 0xFF if uint16_format is None else uint16_format
    flags = _SENSOR_CONTACT_BITS[contact] | (0x01 if wide else 0)
    parts = [_uint16("heart_rate", heart_rate) if wide else _uint8("heart_rate", heart_rate)]
    if energy_expended_kj is not None:
        flags |= 0x08
        parts.append(_uint16("energy_expended_kj", energy_expended_kj))
    if rr_intervals_1_1024s:
        flags |= 0x10
        parts.extend(_uint16("RR interval", interval) for interval in rr_intervals_1_1024s)
    return bytes((flags,)) + b"".join(parts)


def temperature_measurement(
    *,
    celsius: MedFloatInput | None = None,
    fahrenheit: MedFloatInput | None = None,
    timestamp: Timestamp = None,
    temperature_type: int | None = None,
) -> bytes:
    """A 0x2A1C value; give exactly one of ``celsius`` and ``fahrenheit``."""
    if (celsius is None) == (fahrenheit is None):
        raise ValueError("give exactly one of celsius and fahrenheit")
    flags = 0 if fahrenheit is None else 0x01
    value = celsius if celsius is not None else fahrenheit
    assert value is not None
    parts = [encode_float(value)]
    if timestamp is not None:
        flags |= 0x02
        parts.append(encode_date_time(timestamp))
    if temperature_type is not None:
        flags |= 0x04
        parts.append(_uint8("temperature_type", temperature_type))
    return bytes((flags,)) + b"".join(parts)


def glucose_measurement(
    *,
    sequence_number: int,
    base_time: Timestamp,
    mg_dl: float | None = None,
    mmol_l: float | None = None,
    time_offset_min: int | None = None,
    type: int = 1,  # named as the decoded field; shadows the builtin in this body only
    sample_location: int = 1,
    sensor_status: int | None = None,
    context_follows: bool = False,
) -> bytes:
    """A 0x2A18 value.

    ``mg_dl`` is sent as kg/L with exponent -5 (111 mg/dL -> ``6f b0``, as an Accu-Chek
    does), rounded to a whole mg/dL; ``mmol_l`` as mol/L with exponent -4 (0.1 mmol/L).
    Give at most one; with neither, no concentration (nor type/location) is sent.
    """
    if mg_dl is not None and mmol_l is not None:
        raise ValueError("give at most one of mg_dl and mmol_l")
    if not 0 <= type <= 0x0F or not 0 <= sample_location <= 0x0F:
        raise ValueError("type and sample_location are 4-bit values (0..15)")
    flags = 0x10 if context_follows else 0
    parts = [_uint16("sequence_number", sequence_number), encode_date_time(base_time)]
    if time_offset_min is not None:
        flags |= 0x01
        parts.append(_sint16("time_offset_min", time_offset_min))
    if mg_dl is not None or mmol_l is not None:
        flags |= 0x02
        if mg_dl is not None:
            concentration = _encode_medfloat(Decimal(repr(float(mg_dl))).scaleb(-5), -5, _SFLOAT)
        else:
            flags |= 0x04
            assert mmol_l is not None
            concentration = _encode_medfloat(Decimal(repr(float(mmol_l))).scaleb(-3), -4, _SFLOAT)
        parts.append(concentration + bytes((sample_location << 4 | type,)))
    if sensor_status is not None:
        flags |= 0x08
        parts.append(_uint16("sensor_status", sensor_status))
    return bytes((flags,)) + b"".join(parts)


def racp_request(
    *,
    op_code: int,
    operator: int = RacpOperator.ALL_RECORDS,
    filter_type: int | None = None,
    operand: Iterable[int | datetime | DateTimeFields] = (),
) -> bytes:
    """A 0x2A52 request: op code 1 (report), 2 (delete), 3 (abort) or 4 (report number).

    Operators 2 (<=) and 3 (>=) need one operand, 4 (range) two, others none; operands are
    sequence numbers (filter type 1) or times (filter type 2). Abort always uses the null
    operator. The default ``op_code=1`` with all records is ``01 01``.
    """
    operands = list(operand)
    if op_code == RacpOpCode.ABORT_OPERATION:
        if operands or filter_type is not None:
            raise ValueError("abort takes no operand")
        return bytes((op_code, RacpOperator.NULL))
    if op_code not in (
        RacpOpCode.REPORT_STORED_RECORDS,
        RacpOpCode.DELETE_STORED_RECORDS,
        RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
    ):
        raise ValueError(f"op code {op_code} is not a request (1-4)")
    if not 0 <= operator <= RacpOperator.LAST_RECORD:
        raise ValueError(f"unknown operator {operator}")
    needed = OPERAND_COUNT_BY_OPERATOR.get(operator, 0)
    if len(operands) != needed:
        raise ValueError(f"operator {operator} takes {needed} operand(s), got {len(operands)}")
    if needed == 0:
        if filter_type is not None:
            raise ValueError(f"operator {operator} takes no filter type")
        return bytes((op_code, operator))
    if filter_type not in OPERAND_SIZE_BY_FILTER:
        raise ValueError(f"filter type must be 1 or 2 for operator {operator}")
    parts = [bytes((op_code, operator, filter_type))]
    for value in operands:
        if filter_type == RacpFilterType.SEQUENCE_NUMBER:
            if not isinstance(value, int):
                raise ValueError("sequence-number operands are integers")
            parts.append(_uint16("sequence number", value))
        else:
            if isinstance(value, int):
                raise ValueError("user-facing-time operands are datetimes or DateTimeFields")
            parts.append(encode_date_time(value))
    return b"".join(parts)


def racp_response(*, request_op_code: int, response_code: int) -> bytes:
    """A 0x2A52 response code (op code 6): ``06 00 <request op code> <response value>``."""
    return bytes(
        (
            RacpOpCode.RESPONSE_CODE,
            RacpOperator.NULL,
            _uint8("request_op_code", request_op_code)[0],
            _uint8("response_code", response_code)[0],
        )
    )


def racp_number_of_records_response(*, number_of_records: int) -> bytes:
    """A 0x2A52 number-of-stored-records response (op code 5, uint16 count)."""
    return bytes((RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE, RacpOperator.NULL)) + _uint16(
        "number_of_records", number_of_records
    )


def weight_measurement(
    *,
    kg: float | None = None,
    lb: float | None = None,
    timestamp: Timestamp = None,
    user_id: int | None = None,
    bmi: float | None = None,
    height_m: float | None = None,
    height_in: float | None = None,
) -> bytes:
    """A 0x2A9D value.

    SI with ``kg``/``height_m`` (0.005 kg, 0.001 m), imperial with ``lb``/``height_in``
    (0.01 lb, 0.1 in); do not mix. With neither ``kg`` nor ``lb`` the weight is 0xFFFF,
    "measurement unsuccessful". BMI (0.1 kg/m2) and height travel together: give both or
    neither.
    """
    imperial = lb is not None or height_in is not None
    if imperial and (kg is not None or height_m is not None):
        raise ValueError("give SI (kg, height_m) or imperial (lb, height_in) values, not both")
    height = height_in if imperial else height_m
    if (bmi is None) != (height is None):
        raise ValueError("BMI and height are sent together: give both or neither")
    flags = 0x01 if imperial else 0
    weight = lb if imperial else kg
    if weight is None:
        parts = [MEASUREMENT_UNSUCCESSFUL.to_bytes(2, "little")]
    else:
        per_unit = LB_PER_RAW_UNIT if imperial else KG_PER_RAW_UNIT
        parts = [_scaled_uint16("weight", weight, per_unit, MEASUREMENT_UNSUCCESSFUL - 1)]
    if timestamp is not None:
        flags |= 0x02
        parts.append(encode_date_time(timestamp))
    if user_id is not None:
        flags |= 0x04
        parts.append(_uint8("user_id", user_id))
    if bmi is not None and height is not None:
        flags |= 0x08
        parts.append(_scaled_uint16("bmi", bmi, 10))
        parts.append(
            _scaled_uint16("height", height, IN_PER_RAW_UNIT if imperial else M_PER_RAW_UNIT)
        )
    return bytes((flags,)) + b"".join(parts)


def body_composition_measurement(
    *,
    body_fat_percentage: float | None,
    unit_system: Literal["SI", "imperial"] = "SI",
    timestamp: Timestamp = None,
    user_id: int | None = None,
    basal_metabolism_kj: int | None = None,
    muscle_percentage: float | None = None,
    muscle_mass: float | None = None,
    fat_free_mass: float | None = None,
    soft_lean_mass: float | None = None,
    body_water_mass: float | None = None,
    impedance_ohm: float | None = None,
    weight: float | None = None,
    height: float | None = None,
    multiple_packet: bool = False,
) -> bytes:
    """A 0x2A9C value. Masses and height are in the units of ``unit_system`` (kg and m, or
    lb and in); ``body_fat_percentage=None`` sends 0xFFFF, "measurement unsuccessful"."""
    if unit_system not in ("SI", "imperial"):
        raise ValueError(f"unit_system must be 'SI' or 'imperial', not {unit_system!r}")
    imperial = unit_system == "imperial"
    mass_per_unit = LB_PER_RAW_UNIT if imperial else KG_PER_RAW_UNIT
    flags = 0x0001 if imperial else 0
    if multiple_packet:
        flags |= 0x1000
    if body_fat_percentage is None:
        parts = [MEASUREMENT_UNSUCCESSFUL.to_bytes(2, "little")]
    else:
        parts = [
            _scaled_uint16(
                "body_fat_percentage", body_fat_percentage, 10, MEASUREMENT_UNSUCCESSFUL - 1
            )
        ]
    if timestamp is not None:
        flags |= 0x0002
        parts.append(encode_date_time(timestamp))
    if user_id is not None:
        flags |= 0x0004
        parts.append(_uint8("user_id", user_id))
    optional: tuple[tuple[int, str, float | None, int], ...] = (
        (0x0008, "basal_metabolism_kj", basal_metabolism_kj, 1),
        (0x0010, "muscle_percentage", muscle_percentage, 10),
        (0x0020, "muscle_mass", muscle_mass, mass_per_unit),
        (0x0040, "fat_free_mass", fat_free_mass, mass_per_unit),
        (0x0080, "soft_lean_mass", soft_lean_mass, mass_per_unit),
        (0x0100, "body_water_mass", body_water_mass, mass_per_unit),
        (0x0200, "impedance_ohm", impedance_ohm, 10),
        (0x0400, "weight", weight, mass_per_unit),
        (0x0800, "height", height, IN_PER_RAW_UNIT if imperial else M_PER_RAW_UNIT),
    )
    for bit, name, value, per_unit in optional:
        if value is not None:
            flags |= bit
            parts.append(_scaled_uint16(name, value, per_unit))
    return flags.to_bytes(2, "little") + b"".join(parts)


def plx_spot_check(
    *,
    spo2: MedFloatInput,
    pulse_rate: MedFloatInput,
    timestamp: Timestamp = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: MedFloatInput | None = None,
    device_clock_not_set: bool = False,
) -> bytes:
    """A 0x2A5E value (SpO2 in %, pulse rate in bpm, PAI in %)."""
    flags = 0x10 if device_clock_not_set else 0
    parts = [encode_sfloat(spo2), encode_sfloat(pulse_rate)]
    if timestamp is not None:
        flags |= 0x01
        parts.append(encode_date_time(timestamp))
    if measurement_status is not None:
        flags |= 0x02
        parts.append(_uint16("measurement_status", measurement_status))
    if device_and_sensor_status is not None:
        flags |= 0x04
        parts.append(_uint24("device_and_sensor_status", device_and_sensor_status))
    if pulse_amplitude_index is not None:
        flags |= 0x08
        parts.append(encode_sfloat(pulse_amplitude_index))
    return bytes((flags,)) + b"".join(parts)


def _pair(name: str, spo2: MedFloatInput | None, pulse_rate: MedFloatInput | None) -> bytes | None:
    if spo2 is None and pulse_rate is None:
        return None
    if spo2 is None or pulse_rate is None:
        raise ValueError(f"SpO2/PR-{name} is a pair: give both values or neither")
    return encode_sfloat(spo2) + encode_sfloat(pulse_rate)


def plx_continuous(
    *,
    spo2: MedFloatInput,
    pulse_rate: MedFloatInput,
    spo2_fast: MedFloatInput | None = None,
    pulse_rate_fast: MedFloatInput | None = None,
    spo2_slow: MedFloatInput | None = None,
    pulse_rate_slow: MedFloatInput | None = None,
    measurement_status: int | None = None,
    device_and_sensor_status: int | None = None,
    pulse_amplitude_index: MedFloatInput | None = None,
) -> bytes:
    """A 0x2A5F value; the fast and slow SpO2/PR pairs are each all-or-nothing."""
    flags = 0
    parts = [encode_sfloat(spo2), encode_sfloat(pulse_rate)]
    fast = _pair("Fast", spo2_fast, pulse_rate_fast)
    if fast is not None:
        flags |= 0x01
        parts.append(fast)
    slow = _pair("Slow", spo2_slow, pulse_rate_slow)
    if slow is not None:
        flags |= 0x02
        parts.append(slow)
    if measurement_status is not None:
        flags |= 0x04
        parts.append(_uint16("measurement_status", measurement_status))
    if device_and_sensor_status is not None:
        flags |= 0x08
        parts.append(_uint24("device_and_sensor_status", device_and_sensor_status))
    if pulse_amplitude_index is not None:
        flags |= 0x10
        parts.append(encode_sfloat(pulse_amplitude_index))
    return bytes((flags,)) + b"".join(parts)
