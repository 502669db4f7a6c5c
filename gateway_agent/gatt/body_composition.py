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
from functools import cache
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

_FLAGS = struct.Struct("<H")

_IMPERIAL = 0x0001
_TIMESTAMP_PRESENT = 0x0002
_USER_ID_PRESENT = 0x0004
_BASAL_METABOLISM_PRESENT = 0x0008
_MUSCLE_PERCENTAGE_PRESENT = 0x0010
_MUSCLE_MASS_PRESENT = 0x0020
_FAT_FREE_MASS_PRESENT = 0x0040
_SOFT_LEAN_MASS_PRESENT = 0x0080
_BODY_WATER_MASS_PRESENT = 0x0100
_IMPEDANCE_PRESENT = 0x0200
_WEIGHT_PRESENT = 0x0400
_HEIGHT_PRESENT = 0x0800
_MULTIPLE_PACKET = 0x1000

# The optional uint16 fields after the user ID, in wire order: (flag bit, raw-view name).
_UINT16_FIELDS = (
    (_BASAL_METABOLISM_PRESENT, "basal_metabolism"),
    (_MUSCLE_PERCENTAGE_PRESENT, "muscle_percentage"),
    (_MUSCLE_MASS_PRESENT, "muscle_mass"),
    (_FAT_FREE_MASS_PRESENT, "fat_free_mass"),
    (_SOFT_LEAN_MASS_PRESENT, "soft_lean_mass"),
    (_BODY_WATER_MASS_PRESENT, "body_water_mass"),
    (_IMPEDANCE_PRESENT, "impedance"),
    (_WEIGHT_PRESENT, "weight"),
    (_HEIGHT_PRESENT, "height"),
)
_UINT16_FIELD_MASK = 0x0FF8
_LAYOUT_FLAGS = _TIMESTAMP_PRESENT | _USER_ID_PRESENT | _UINT16_FIELD_MASK
"""The flag bits that decide which fields are present (units and b12 do not)."""

_DATE_TIME_NAMES = ("year", "month", "day", "hours", "minutes", "seconds")


@dataclass(frozen=True, slots=True)
class _FieldLayout:
    """Where the fields are in a payload with given flags."""

    size: int
    """The payload size, flags included."""
    values: struct.Struct
    """Unpacks every field after the flags as integers, the Date Time as its six parts."""
    names: tuple[str, ...]
    """The raw-view name of each value of ``values``."""
    uint16_start: int
    """The index in ``values`` of the first optional uint16 field (after the user ID)."""


@cache
def _field_layout(flags: int) -> _FieldLayout:
    """The layout for the flag bits ``flags & _LAYOUT_FLAGS`` (2048 combinations at most)."""
    formats = ["<H"]
    names = ["body_fat_percentage"]
    if flags & _TIMESTAMP_PRESENT:
        formats.append("H5B")
        names.extend(_DATE_TIME_NAMES)
    if flags & _USER_ID_PRESENT:
        formats.append("B")
        names.append("user_id")
    uint16_start = len(names)
    for bit, name in _UINT16_FIELDS:
        if flags & bit:
            formats.append("H")
            names.append(name)
    values = struct.Struct("".join(formats))
    return _FieldLayout(2 + values.size, values, tuple(names), uint16_start)


@dataclass(slots=True)
class RawFieldValues:
    """Integer field values before scaling, in wire order, for checking a field layout."""

    items: tuple[tuple[str, int], ...]
    """(field name, raw integer) pairs; the Date Time appears as year, month, ... seconds."""

    def as_dict(self) -> dict[str, int]:
        """The raw values by field name."""
        return dict(self.items)


@dataclass(slots=True)
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
    flags = _FLAGS.unpack_from(payload, 0)[0]
    layout = _field_layout(flags & _LAYOUT_FLAGS)
    if size != layout.size:
        raise length_mismatch("2A9C", size, flags, layout.size, _layout(flags))
    values = layout.values.unpack_from(payload, 2)
    raw = RawFieldValues(tuple(zip(layout.names, values, strict=True)))
    raw_body_fat = values[0]
    unsuccessful = raw_body_fat == MEASUREMENT_UNSUCCESSFUL
    timestamp = None
    offset = 4
    if flags & _TIMESTAMP_PRESENT:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
    user_id = payload[offset] if flags & _USER_ID_PRESENT else None

    imperial = flags & _IMPERIAL
    mass_divisor = LB_PER_RAW_UNIT if imperial else KG_PER_RAW_UNIT
    height_divisor = IN_PER_RAW_UNIT if imperial else M_PER_RAW_UNIT
    # The uint16 fields that are present, taken in wire order.
    uint16_values = iter(values[layout.uint16_start :])
    basal_metabolism_kj = next(uint16_values) if flags & _BASAL_METABOLISM_PRESENT else None
    muscle_percentage = next(uint16_values) / 10 if flags & _MUSCLE_PERCENTAGE_PRESENT else None
    muscle_mass = next(uint16_values) / mass_divisor if flags & _MUSCLE_MASS_PRESENT else None
    fat_free_mass = next(uint16_values) / mass_divisor if flags & _FAT_FREE_MASS_PRESENT else None
    soft_lean_mass = next(uint16_values) / mass_divisor if flags & _SOFT_LEAN_MASS_PRESENT else None
    body_water_mass = (
        next(uint16_values) / mass_divisor if flags & _BODY_WATER_MASS_PRESENT else None
    )
    impedance_ohm = next(uint16_values) / 10 if flags & _IMPEDANCE_PRESENT else None
    weight = next(uint16_values) / mass_divisor if flags & _WEIGHT_PRESENT else None
    height = next(uint16_values) / height_divisor if flags & _HEIGHT_PRESENT else None

    # Positional: with 18 fields, keyword arguments would double the cost of this call.
    return BodyCompositionMeasurement(
        "imperial" if imperial else "SI",
        None if unsuccessful else raw_body_fat / 10,
        unsuccessful,
        timestamp,
        user_id,
        basal_metabolism_kj,
        muscle_percentage,
        muscle_mass,
        fat_free_mass,
        soft_lean_mass,
        body_water_mass,
        impedance_ohm,
        weight,
        height,
        "lb" if imperial else "kg",
        "in" if imperial else "m",
        bool(flags & _MULTIPLE_PACKET),
        raw,
    )
