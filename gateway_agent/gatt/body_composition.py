"""0x2A9C Body Composition Measurement (indicate).

Flags (uint16): b0 units (0 SI, 1 imperial), b1 timestamp, b2 user ID, b3 basal metabolism,
b4 muscle percentage, b5 muscle mass, b6 fat-free mass, b7 soft lean mass, b8 body water
mass, b9 impedance, b10 weight, b11 height, b12 multiple-packet measurement; b13-b15 RFU,
ignored. Fields in that order after the mandatory body fat percentage (uint16 x 0.1 %;
0xFFFF = measurement unsuccessful): Date Time, user ID (uint8), basal metabolism (uint16 kJ),
muscle percentage (uint16 x 0.1 %), then muscle mass, fat-free mass, soft lean mass, body
water mass (uint16 x 0.005 kg or x 0.01 lb each), impedance (uint16 x 0.1 ohm), weight
(as the masses) and height (uint16 x 0.001 m or x 0.1 in).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import Payload, length_mismatch, too_short
from gateway_agent.gatt.weight import (
    IN_PER_RAW_UNIT,
    KG_PER_RAW_UNIT,
    LB_PER_RAW_UNIT,
    M_PER_RAW_UNIT,
    MEASUREMENT_UNSUCCESSFUL,
)

_HEAD = struct.Struct("<HH")

_IMPERIAL = 0x0001
_TIMESTAMP_PRESENT = 0x0002
_USER_ID_PRESENT = 0x0004
_MULTIPLE_PACKET = 0x1000

# The optional uint16 fields after the user ID, in wire order: (flag bit, raw-view name).
_UINT16_FIELDS = (
    (0x0008, "basal_metabolism"),
    (0x0010, "muscle_percentage"),
    (0x0020, "muscle_mass"),
    (0x0040, "fat_free_mass"),
    (0x0080, "soft_lean_mass"),
    (0x0100, "body_water_mass"),
    (0x0200, "impedance"),
    (0x0400, "weight"),
    (0x0800, "height"),
)
_UINT16_FIELD_MASK = 0x0FF8

_DATE_TIME_NAMES = ("year", "month", "day", "hours", "minutes", "seconds")
_DATE_TIME_RAW = struct.Struct("<H5B")


@lru_cache(maxsize=_UINT16_FIELD_MASK // 8 + 1)
def _optional_fields(
    present: int,
) -> tuple[struct.Struct, tuple[int, ...], tuple[str, ...]]:
    """For the optional-field flag bits ``present``: an unpacker for those uint16 fields,
    their indices in _UINT16_FIELDS and their names (cached: 512 combinations at most)."""
    indices = tuple(index for index, (bit, _) in enumerate(_UINT16_FIELDS) if present & bit)
    names = tuple(_UINT16_FIELDS[index][1] for index in indices)
    return struct.Struct(f"<{len(indices)}H"), indices, names


@dataclass(frozen=True, slots=True)
class RawFieldValues:
    """Integer field values before scaling, in wire order, for checking a field layout."""

    items: tuple[tuple[str, int], ...]
    """(field name, raw integer) pairs; the Date Time appears as year, month, ... seconds."""

    def as_dict(self) -> dict[str, int]:
        """The raw values by field name."""
        return dict(self.items)


@dataclass(frozen=True, slots=True)
class BodyCompositionMeasurement:
    """0x2A9C: one body-composition analysis (usually from a bio-impedance scale)."""

    CHARACTERISTIC: ClassVar[str] = "2A9C"

    unit_system: str
    """"SI" (masses in kg, height in m) or "imperial" (masses in lb, height in in)."""
    body_fat_percentage: float | None
    """Body fat in %; None when the scale reported the measurement unsuccessful."""
    measurement_unsuccessful: bool
    """True when the scale sent 0xFFFF as the body fat percentage."""
    timestamp: DateTimeFields | None
    """The scale's clock at the measurement; None when not sent."""
    user_id: int | None
    """The scale's user slot (0xFF = unknown user); None when not sent."""
    basal_metabolism_kj: int | None
    """Basal metabolism in kJ; None when not sent."""
    muscle_percentage: float | None
    """Muscle as a percentage of body weight; None when not sent."""
    muscle_mass: float | None
    """Muscle mass in ``mass_unit``; None when not sent."""
    fat_free_mass: float | None
    """Fat-free mass in ``mass_unit``; None when not sent."""
    soft_lean_mass: float | None
    """Soft lean mass in ``mass_unit``; None when not sent."""
    body_water_mass: float | None
    """Body water mass in ``mass_unit``; None when not sent."""
    impedance_ohm: float | None
    """Measured bio-impedance in ohm; None when not sent."""
    weight: float | None
    """Body weight in ``mass_unit``; None when not sent."""
    height: float | None
    """Height in ``height_unit``; None when not sent."""
    mass_unit: str
    """"kg" or "lb"."""
    height_unit: str
    """"m" or "in"."""
    multiple_packet: bool
    """True when this is one packet of a measurement split over several indications."""
    raw: RawFieldValues
    """The present fields as raw integers before scaling."""


def _layout(flags: int) -> str:
    parts = ["flags", "body fat"]
    if flags & _TIMESTAMP_PRESENT:
        parts.append("timestamp")
    if flags & _USER_ID_PRESENT:
        parts.append("user ID")
    parts.extend(name for bit, name in _UINT16_FIELDS if flags & bit)
    return " + ".join(parts)


def decode_body_composition_measurement(payload: Payload) -> BodyCompositionMeasurement:
    """Decode a 0x2A9C value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 4:
        raise too_short("2A9C", size, 4, "uint16 flags + body fat")
    flags, raw_body_fat = _HEAD.unpack_from(payload, 0)
    expected = (
        4
        + (DATE_TIME_SIZE if flags & _TIMESTAMP_PRESENT else 0)
        + (1 if flags & _USER_ID_PRESENT else 0)
        + 2 * (flags & _UINT16_FIELD_MASK).bit_count()
    )
    if size != expected:
        raise length_mismatch("2A9C", size, flags, expected, _layout(flags))
    raw: list[tuple[str, int]] = [("body_fat_percentage", raw_body_fat)]
    offset = 4
    timestamp = None
    if flags & _TIMESTAMP_PRESENT:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
        raw.extend(zip(_DATE_TIME_NAMES, _DATE_TIME_RAW.unpack_from(payload, 4), strict=True))
    user_id = None
    if flags & _USER_ID_PRESENT:
        user_id = payload[offset]
        offset += 1
        raw.append(("user_id", user_id))
    unpacker, indices, names = _optional_fields(flags & _UINT16_FIELD_MASK)
    raw_values = unpacker.unpack_from(payload, offset)
    raw.extend(zip(names, raw_values, strict=True))
    optional: list[int | None] = [None] * len(_UINT16_FIELDS)
    for index, value in zip(indices, raw_values, strict=True):
        optional[index] = value
    (
        basal_metabolism,
        muscle_percentage,
        muscle_mass,
        fat_free_mass,
        soft_lean_mass,
        body_water_mass,
        impedance,
        weight,
        height,
    ) = optional

    imperial = flags & _IMPERIAL
    mass_divisor = LB_PER_RAW_UNIT if imperial else KG_PER_RAW_UNIT
    height_divisor = IN_PER_RAW_UNIT if imperial else M_PER_RAW_UNIT
    unsuccessful = raw_body_fat == MEASUREMENT_UNSUCCESSFUL
    return BodyCompositionMeasurement(
        "imperial" if imperial else "SI",
        None if unsuccessful else raw_body_fat / 10,
        unsuccessful,
        timestamp,
        user_id,
        basal_metabolism,
        None if muscle_percentage is None else muscle_percentage / 10,
        None if muscle_mass is None else muscle_mass / mass_divisor,
        None if fat_free_mass is None else fat_free_mass / mass_divisor,
        None if soft_lean_mass is None else soft_lean_mass / mass_divisor,
        None if body_water_mass is None else body_water_mass / mass_divisor,
        None if impedance is None else impedance / 10,
        None if weight is None else weight / mass_divisor,
        None if height is None else height / height_divisor,
        "lb" if imperial else "kg",
        "in" if imperial else "m",
        bool(flags & _MULTIPLE_PACKET),
        RawFieldValues(tuple(raw)),
    )
