"""0x2A9D Weight Measurement (indicate).

Flags (uint8): b0 units (0 SI, 1 imperial), b1 timestamp present, b2 user ID present,
b3 BMI and height present; b4-b7 RFU, ignored. Fields: weight (uint16; x 0.005 kg or
x 0.01 lb; 0xFFFF = measurement unsuccessful), Date Time, user ID (uint8, 0xFF = unknown),
BMI (uint16 x 0.1 kg/m2), height (uint16; x 0.001 m or x 0.1 in).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import Payload, length_mismatch, too_short

MEASUREMENT_UNSUCCESSFUL = 0xFFFF
"""The raw weight (and body-fat) value a scale sends when it could not measure."""

KG_PER_RAW_UNIT = 200
"""Raw SI masses are in units of 1/200 kg (0.005 kg)."""
LB_PER_RAW_UNIT = 100
"""Raw imperial masses are in units of 1/100 lb."""
M_PER_RAW_UNIT = 1000
"""Raw SI heights are in units of 1/1000 m."""
IN_PER_RAW_UNIT = 10
"""Raw imperial heights are in units of 1/10 in."""

_HEAD = struct.Struct("<BH")
_BMI_AND_HEIGHT = struct.Struct("<HH")

_IMPERIAL = 0x01
_TIMESTAMP_PRESENT = 0x02
_USER_ID_PRESENT = 0x04
_BMI_AND_HEIGHT_PRESENT = 0x08


@dataclass(slots=True)
class WeightMeasurement:
    """0x2A9D: one weighing."""

    CHARACTERISTIC: ClassVar[str] = "2A9D"

    unit: str
    """"kg" (SI) or "lb" (imperial): the unit of ``weight``."""
    weight: float | None
    """The weight in ``unit``; None when the scale reported the measurement unsuccessful."""
    measurement_unsuccessful: bool
    """True when the scale sent 0xFFFF instead of a weight."""
    timestamp: DateTimeFields | None
    """The scale's clock at the weighing; None when not sent."""
    user_id: int | None
    """The scale's user slot (0xFF = unknown user); None when not sent."""
    bmi: float | None
    """Body mass index in kg/m2, as computed by the scale; None when not sent."""
    height: float | None
    """The user's height in ``height_unit``, usually entered on the scale; None if not sent."""
    height_unit: str
    """"m" (SI) or "in" (imperial)."""


def _expected_size(flags: int) -> int:
    return (
        3
        + (DATE_TIME_SIZE if flags & _TIMESTAMP_PRESENT else 0)
        + (1 if flags & _USER_ID_PRESENT else 0)
        + (4 if flags & _BMI_AND_HEIGHT_PRESENT else 0)
    )


_SIZE_BY_FLAGS = tuple(_expected_size(flags) for flags in range(0x10))
"""The payload size by flags b0-b3 (b4-b7 are RFU)."""


def _layout(flags: int) -> str:
    parts = ["flags", "weight"]
    if flags & _TIMESTAMP_PRESENT:
        parts.append("timestamp")
    if flags & _USER_ID_PRESENT:
        parts.append("user ID")
    if flags & _BMI_AND_HEIGHT_PRESENT:
        parts.append("BMI + height")
    return " + ".join(parts)


def decode_weight_measurement(payload: Payload) -> WeightMeasurement:
    """Decode a 0x2A9D value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 3:
        raise too_short("2A9D", size, 3, "flags + weight")
    flags, raw_weight = _HEAD.unpack_from(payload, 0)
    expected = _SIZE_BY_FLAGS[flags & 0x0F]
    if size != expected:
        raise length_mismatch("2A9D", size, flags, expected, _layout(flags))
    imperial = flags & _IMPERIAL
    offset = 3
    timestamp = None
    if flags & _TIMESTAMP_PRESENT:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
    user_id = None
    if flags & _USER_ID_PRESENT:
        user_id = payload[offset]
        offset += 1
    bmi = None
    height = None
    if flags & _BMI_AND_HEIGHT_PRESENT:
        raw_bmi, raw_height = _BMI_AND_HEIGHT.unpack_from(payload, offset)
        bmi = raw_bmi / 10
        height = raw_height / (IN_PER_RAW_UNIT if imperial else M_PER_RAW_UNIT)
    unsuccessful = raw_weight == MEASUREMENT_UNSUCCESSFUL
    return WeightMeasurement(
        "lb" if imperial else "kg",
        None if unsuccessful else raw_weight / (LB_PER_RAW_UNIT if imperial else KG_PER_RAW_UNIT),
        unsuccessful,
        timestamp,
        user_id,
        bmi,
        height,
        "in" if imperial else "m",
    )
