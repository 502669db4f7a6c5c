"""0x2A1C Temperature Measurement (indicate).

Flags (uint8): b0 unit (0 °C, 1 °F), b1 timestamp present, b2 temperature type present;
b3-b7 RFU, ignored. Fields: temperature (FLOAT), Date Time, type (uint8).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import Payload, length_mismatch, too_short
from gateway_agent.gatt.ieee11073 import MedFloat, float_from_raw

_HEAD = struct.Struct("<BI")

_UNIT_FAHRENHEIT = 0x01
_TIMESTAMP_PRESENT = 0x02
_TYPE_PRESENT = 0x04

TEMPERATURE_TYPES: dict[int, str] = {
    1: "armpit",
    2: "body",
    3: "ear",
    4: "finger",
    5: "gastrointestinal tract",
    6: "mouth",
    7: "rectum",
    8: "toe",
    9: "tympanum",
}
"""Where the temperature was taken, by the value of the type field."""


@dataclass(slots=True)
class TemperatureMeasurement:
    """0x2A1C: one thermometer reading."""

    CHARACTERISTIC: ClassVar[str] = "2A1C"

    unit: str
    """"C" (degrees Celsius) or "F" (degrees Fahrenheit)."""
    temperature: MedFloat
    """The temperature in ``unit``."""
    timestamp: DateTimeFields | None
    """The thermometer's clock at the measurement; None when not sent."""
    temperature_type: int | None
    """Body site, see TEMPERATURE_TYPES (4 = finger); None when not sent."""


def _expected_size(flags: int) -> int:
    return (
        5
        + (DATE_TIME_SIZE if flags & _TIMESTAMP_PRESENT else 0)
        + (1 if flags & _TYPE_PRESENT else 0)
    )


_SIZE_BY_FLAGS = tuple(_expected_size(flags) for flags in range(0x08))
"""The payload size by flags b0-b2 (b3-b7 are RFU)."""


def _layout(flags: int) -> str:
    parts = ["flags", "FLOAT"]
    if flags & _TIMESTAMP_PRESENT:
        parts.append("timestamp")
    if flags & _TYPE_PRESENT:
        parts.append("temperature type")
    return " + ".join(parts)


def decode_temperature_measurement(payload: Payload) -> TemperatureMeasurement:
    """Decode a 0x2A1C value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 5:
        raise too_short("2A1C", size, 5, "flags + FLOAT")
    flags, temperature = _HEAD.unpack_from(payload, 0)
    expected = _SIZE_BY_FLAGS[flags & 0x07]
    if size != expected:
        raise length_mismatch("2A1C", size, flags, expected, _layout(flags))
    timestamp = None
    offset = 5
    if flags & _TIMESTAMP_PRESENT:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
    return TemperatureMeasurement(
        "F" if flags & _UNIT_FAHRENHEIT else "C",
        float_from_raw(temperature),
        timestamp,
        payload[offset] if flags & _TYPE_PRESENT else None,
    )
