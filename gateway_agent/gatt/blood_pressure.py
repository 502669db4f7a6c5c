"""0x2A35 Blood Pressure Measurement and 0x2A36 Intermediate Cuff Pressure (same layout).

Flags (uint8): b0 unit (0 mmHg, 1 kPa), b1 timestamp, b2 pulse rate, b3 user ID,
b4 measurement status; b5-b7 are RFU and ignored (real cuffs send flags 0xDE).
Fields: systolic, diastolic, MAP (SFLOAT each), Date Time, pulse rate (SFLOAT, bpm),
user ID (uint8, 0xFF = unknown), measurement status (uint16).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, TypeVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import Payload, length_mismatch, too_short
from gateway_agent.gatt.ieee11073 import MedFloat, sfloat_from_raw

UNKNOWN_USER = 0xFF
"""The user ID a cuff sends when it does not know who was measured."""

_HEAD = struct.Struct("<B3H")
_UINT16 = struct.Struct("<H")

_UNIT_KPA = 0x01
_TIMESTAMP_PRESENT = 0x02
_PULSE_RATE_PRESENT = 0x04
_USER_ID_PRESENT = 0x08
_STATUS_PRESENT = 0x10


# Frozen, unlike the measurements: _status_bits hands the same cached instance to every
# measurement with the same status, so it must not be changed in place.
@dataclass(frozen=True, slots=True)
class BloodPressureStatusBits:
    """The measurement status word (uint16) broken into its defined bits."""

    body_movement_detected: bool
    """b0: the patient moved during the measurement."""
    cuff_too_loose: bool
    """b1: the cuff was not fitted tightly enough."""
    irregular_pulse_detected: bool
    """b2: an irregular pulse was detected."""
    pulse_rate_range: int
    """b3-b4: 0 within range, 1 above the upper limit, 2 below the lower limit, 3 reserved."""
    improper_measurement_position: bool
    """b5: the cuff was not at heart level or the posture was wrong."""

    @classmethod
    def from_status(cls, status: int) -> BloodPressureStatusBits:
        """Split a status word; RFU bits (b6-b15, a real device sets b7) are ignored."""
        return _status_bits(status & _DEFINED_STATUS_BITS)


_DEFINED_STATUS_BITS = 0x3F


@lru_cache(maxsize=_DEFINED_STATUS_BITS + 1)
def _status_bits(status: int) -> BloodPressureStatusBits:
    """Split the defined bits b0-b5; cached, as there are only 64 combinations."""
    return BloodPressureStatusBits(
        body_movement_detected=bool(status & 0x01),
        cuff_too_loose=bool(status & 0x02),
        irregular_pulse_detected=bool(status & 0x04),
        pulse_rate_range=(status >> 3) & 0x03,
        improper_measurement_position=bool(status & 0x20),
    )


@dataclass(slots=True)
class BloodPressureMeasurement:
    """0x2A35: a finished blood-pressure reading (indicated by the cuff)."""

    CHARACTERISTIC: ClassVar[str] = "2A35"

    unit: str
    """"mmHg" or "kPa": the unit of systolic, diastolic and mean arterial pressure."""
    systolic: MedFloat
    """Systolic pressure in ``unit``."""
    diastolic: MedFloat
    """Diastolic pressure in ``unit``."""
    mean_arterial_pressure: MedFloat
    """Mean arterial pressure in ``unit``; many cuffs send NaN."""
    timestamp: DateTimeFields | None
    """The cuff's clock at the measurement, as sent; None when the cuff sent none."""
    pulse_rate: MedFloat | None
    """Pulse rate in beats per minute; None when not sent."""
    user_id: int | None
    """The cuff's user slot (0xFF = unknown user); None when not sent."""
    measurement_status: int | None
    """The raw measurement status word; None when not sent."""
    status_bits: BloodPressureStatusBits | None
    """``measurement_status`` split into its defined bits; None when not sent."""


@dataclass(slots=True)
class IntermediateCuffPressure:
    """0x2A36: the cuff pressure while inflating/deflating; not a result.

    Same layout as 0x2A35. ``systolic`` carries the current cuff pressure; diastolic and
    MAP are normally NaN.
    """

    CHARACTERISTIC: ClassVar[str] = "2A36"

    unit: str
    """"mmHg" or "kPa"."""
    systolic: MedFloat
    """The current cuff pressure in ``unit``."""
    diastolic: MedFloat
    """Unused by the profile; normally NaN."""
    mean_arterial_pressure: MedFloat
    """Unused by the profile; normally NaN."""
    timestamp: DateTimeFields | None
    """The cuff's clock, as sent; None when the cuff sent none."""
    pulse_rate: MedFloat | None
    """Pulse rate in beats per minute; None when not sent."""
    user_id: int | None
    """The cuff's user slot (0xFF = unknown user); None when not sent."""
    measurement_status: int | None
    """The raw measurement status word; None when not sent."""
    status_bits: BloodPressureStatusBits | None
    """``measurement_status`` split into its defined bits; None when not sent."""

    @property
    def cuff_pressure(self) -> MedFloat:
        """The current cuff pressure in ``unit`` (the ``systolic`` field of this layout)."""
        return self.systolic


_Measurement = TypeVar("_Measurement", BloodPressureMeasurement, IntermediateCuffPressure)


def _expected_size(flags: int) -> int:
    return (
        7
        + (DATE_TIME_SIZE if flags & _TIMESTAMP_PRESENT else 0)
        + (2 if flags & _PULSE_RATE_PRESENT else 0)
        + (1 if flags & _USER_ID_PRESENT else 0)
        + (2 if flags & _STATUS_PRESENT else 0)
    )


_SIZE_BY_FLAGS = tuple(_expected_size(flags) for flags in range(0x20))
"""The payload size by flags b0-b4 (b5-b7 are ignored)."""


def _layout(flags: int) -> str:
    parts = ["flags", "3 SFLOAT"]
    if flags & _TIMESTAMP_PRESENT:
        parts.append("timestamp")
    if flags & _PULSE_RATE_PRESENT:
        parts.append("pulse rate")
    if flags & _USER_ID_PRESENT:
        parts.append("user ID")
    if flags & _STATUS_PRESENT:
        parts.append("status")
    return " + ".join(parts)


def _decode(payload: Payload, measurement: type[_Measurement]) -> _Measurement:
    characteristic = measurement.CHARACTERISTIC
    size = len(payload)
    if size < 7:
        raise too_short(characteristic, size, 7, "flags + 3 SFLOAT")
    flags, systolic, diastolic, mean_arterial_pressure = _HEAD.unpack_from(payload, 0)
    expected = _SIZE_BY_FLAGS[flags & 0x1F]
    if size != expected:
        raise length_mismatch(characteristic, size, flags, expected, _layout(flags))
    offset = 7
    timestamp = None
    if flags & _TIMESTAMP_PRESENT:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
    pulse_rate = None
    if flags & _PULSE_RATE_PRESENT:
        pulse_rate = sfloat_from_raw(_UINT16.unpack_from(payload, offset)[0])
        offset += 2
    user_id = None
    if flags & _USER_ID_PRESENT:
        user_id = payload[offset]
        offset += 1
    measurement_status = None
    status_bits = None
    if flags & _STATUS_PRESENT:
        measurement_status = _UINT16.unpack_from(payload, offset)[0]
        status_bits = _status_bits(measurement_status & _DEFINED_STATUS_BITS)
    return measurement(
        "kPa" if flags & _UNIT_KPA else "mmHg",
        sfloat_from_raw(systolic),
        sfloat_from_raw(diastolic),
        sfloat_from_raw(mean_arterial_pressure),
        timestamp,
        pulse_rate,
        user_id,
        measurement_status,
        status_bits,
    )


def decode_blood_pressure_measurement(payload: Payload) -> BloodPressureMeasurement:
    """Decode a 0x2A35 value; GattDecodeError when it is too short or its length is wrong."""
    return _decode(payload, BloodPressureMeasurement)


def decode_intermediate_cuff_pressure(payload: Payload) -> IntermediateCuffPressure:
    """Decode a 0x2A36 value (same layout as 0x2A35)."""
    return _decode(payload, IntermediateCuffPressure)
