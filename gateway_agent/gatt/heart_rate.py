"""0x2A37 Heart Rate Measurement (notify).

Flags (uint8): b0 heart rate is uint16 (else uint8); b1-b2 sensor contact (0 or 1 = not
supported, 2 = supported but not detected, 3 = detected); b3 energy expended present
(uint16, kJ); b4 RR intervals present (one or more uint16, 1/1024 s). b5-b7 RFU, ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar

from gateway_agent.gatt.errors import GattDecodeError, Payload, length_mismatch, too_short

_UINT16 = struct.Struct("<H")

_HEART_RATE_UINT16 = 0x01
_ENERGY_EXPENDED_PRESENT = 0x08
_RR_INTERVALS_PRESENT = 0x10


class SensorContact(StrEnum):
    """Whether the sensor reports skin contact (flags b1-b2)."""

    NOT_SUPPORTED = "not_supported"
    """The sensor cannot tell (flag values 0 and 1)."""
    NOT_DETECTED = "not_detected"
    """The sensor can tell, and has no contact: the heart rate is not a measurement."""
    DETECTED = "detected"
    """The sensor can tell, and has contact."""


_SENSOR_CONTACT_BY_BITS = (
    SensorContact.NOT_SUPPORTED,
    SensorContact.NOT_SUPPORTED,
    SensorContact.NOT_DETECTED,
    SensorContact.DETECTED,
)


@dataclass(slots=True)
class HeartRateMeasurement:
    """0x2A37: one heart-rate notification from a strap or watch."""

    CHARACTERISTIC: ClassVar[str] = "2A37"

    heart_rate: int
    """Beats per minute."""
    sensor_contact: SensorContact
    """Skin contact as the sensor reports it."""
    energy_expended_kj: int | None
    """Accumulated energy expended in kJ since the last reset; None when not sent."""
    rr_intervals_1_1024s: tuple[int, ...]
    """Beat-to-beat intervals in units of 1/1024 s, oldest first; empty when not sent."""

    @property
    def rr_intervals_s(self) -> tuple[float, ...]:
        """The RR intervals in seconds."""
        return tuple(interval / 1024 for interval in self.rr_intervals_1_1024s)


def _layout(flags: int) -> str:
    parts = ["flags", "uint16 heart rate" if flags & _HEART_RATE_UINT16 else "uint8 heart rate"]
    if flags & _ENERGY_EXPENDED_PRESENT:
        parts.append("energy expended")
    if flags & _RR_INTERVALS_PRESENT:
        parts.append("RR intervals")
    return " + ".join(parts)


def decode_heart_rate_measurement(payload: Payload) -> HeartRateMeasurement:
    """Decode a 0x2A37 value.

    GattDecodeError when too short, when the RR flag is set with no RR interval (as
    Nordic's parser), when an RR interval is cut in half, or when bytes trail.
    """
    size = len(payload)
    if size < 2:
        raise too_short("2A37", size, 2, "flags + uint8 heart rate")
    flags = payload[0]
    fixed = (
        (3 if flags & _HEART_RATE_UINT16 else 2)
        + (2 if flags & _ENERGY_EXPENDED_PRESENT else 0)
        + (2 if flags & _RR_INTERVALS_PRESENT else 0)
    )
    if flags & _RR_INTERVALS_PRESENT:
        if size < fixed:
            if size == fixed - 2:
                raise GattDecodeError(
                    f"2A37: RR-interval flag set but no RR interval follows ({size} bytes)"
                )
            raise too_short("2A37", size, fixed, _layout(flags))
        if (size - fixed) % 2:
            raise GattDecodeError(
                f"2A37: {size} bytes leave an odd number of bytes for the uint16 RR intervals"
            )
    elif size != fixed:
        raise length_mismatch("2A37", size, flags, fixed, _layout(flags))
    if flags & _HEART_RATE_UINT16:
        heart_rate = _UINT16.unpack_from(payload, 1)[0]
        offset = 3
    else:
        heart_rate = payload[1]
        offset = 2
    energy_expended_kj = None
    if flags & _ENERGY_EXPENDED_PRESENT:
        energy_expended_kj = _UINT16.unpack_from(payload, offset)[0]
        offset += 2
    rr_intervals: tuple[int, ...] = ()
    if flags & _RR_INTERVALS_PRESENT:
        rr_intervals = struct.unpack_from(f"<{(size - offset) // 2}H", payload, offset)
    return HeartRateMeasurement(
        heart_rate, _SENSOR_CONTACT_BY_BITS[(flags >> 1) & 0x03], energy_expended_kj, rr_intervals
    )
