"""0x2A5E PLX Spot-Check Measurement (indicate) and 0x2A5F PLX Continuous Measurement (notify).

Spot-check flags (uint8): b0 timestamp, b1 measurement status, b2 device and sensor status,
b3 pulse amplitude index (PAI), b4 device clock not set; b5-b7 RFU, ignored. Fields: SpO2 and
pulse rate (SFLOAT each), Date Time, measurement status (uint16), device and sensor status
(uint24), PAI (SFLOAT).

Continuous flags (uint8): b0 SpO2/PR-Fast, b1 SpO2/PR-Slow, b2 measurement status, b3 device
and sensor status, b4 PAI; b5-b7 RFU, ignored. Fields: the normal SpO2/PR pair (always),
then the fast pair, the slow pair, status (uint16), device and sensor status (uint24), PAI.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import Payload, length_mismatch, too_short
from gateway_agent.gatt.ieee11073 import MedFloat, sfloat_from_raw

_HEAD = struct.Struct("<BHH")
_PAIR = struct.Struct("<HH")
_UINT16 = struct.Struct("<H")

MEASUREMENT_STATUS_BITS: dict[int, str] = {
    5: "measurement ongoing",
    6: "early estimated data",
    7: "validated data",
    8: "fully qualified data",
    9: "data from measurement storage",
    10: "data for demonstration",
    11: "data for testing",
    12: "calibration ongoing",
    13: "measurement unavailable",
    14: "questionable measurement detected",
    15: "invalid measurement detected",
}
"""The defined bits of the measurement status word (b0-b4 are RFU)."""

DEVICE_AND_SENSOR_STATUS_BITS: dict[int, str] = {
    0: "extended display update ongoing",
    1: "equipment malfunction detected",
    2: "signal processing irregularity detected",
    3: "inadequate signal detected",
    4: "poor signal detected",
    5: "low perfusion detected",
    6: "erratic signal detected",
    7: "nonpulsatile signal detected",
    8: "questionable pulse detected",
    9: "signal analysis ongoing",
    10: "sensor interference detected",
    11: "sensor unconnected to user",
    12: "unknown sensor connected",
    13: "sensor displaced",
    14: "sensor malfunctioning",
    15: "sensor disconnected",
}
"""The defined bits of the device and sensor status (uint24; b16-b23 are RFU)."""


def _read_device_status(payload: Payload, offset: int) -> int:
    """The uint24 device and sensor status at ``offset``."""
    return _UINT16.unpack_from(payload, offset)[0] | payload[offset + 2] << 16


@dataclass(slots=True)
class PlxSpotCheckMeasurement:
    """0x2A5E: one spot-check reading from a pulse oximeter."""

    CHARACTERISTIC: ClassVar[str] = "2A5E"

    spo2: MedFloat
    """Oxygen saturation in %."""
    pulse_rate: MedFloat
    """Pulse rate in beats per minute."""
    timestamp: DateTimeFields | None
    """The oximeter's clock at the measurement; None when not sent."""
    measurement_status: int | None
    """Measurement status bits, see MEASUREMENT_STATUS_BITS; None when not sent."""
    device_and_sensor_status: int | None
    """Device and sensor status bits, see DEVICE_AND_SENSOR_STATUS_BITS; None if not sent."""
    pulse_amplitude_index: MedFloat | None
    """Pulse amplitude index in %; None when not sent."""
    device_clock_not_set: bool
    """True when the oximeter says its clock is not set, so ``timestamp`` means nothing."""


@dataclass(slots=True)
class PlxContinuousMeasurement:
    """0x2A5F: one continuous-monitoring notification from a pulse oximeter."""

    CHARACTERISTIC: ClassVar[str] = "2A5F"

    spo2: MedFloat
    """Oxygen saturation in % (the normal averaging)."""
    pulse_rate: MedFloat
    """Pulse rate in beats per minute (the normal averaging)."""
    spo2_fast: MedFloat | None
    """SpO2 with fast (short) averaging; None when not sent."""
    pulse_rate_fast: MedFloat | None
    """Pulse rate with fast averaging; None when not sent."""
    spo2_slow: MedFloat | None
    """SpO2 with slow (long) averaging; None when not sent."""
    pulse_rate_slow: MedFloat | None
    """Pulse rate with slow averaging; None when not sent."""
    measurement_status: int | None
    """Measurement status bits, see MEASUREMENT_STATUS_BITS; None when not sent."""
    device_and_sensor_status: int | None
    """Device and sensor status bits, see DEVICE_AND_SENSOR_STATUS_BITS; None if not sent."""
    pulse_amplitude_index: MedFloat | None
    """Pulse amplitude index in %; None when not sent."""


_SPOT_TIMESTAMP = 0x01
_SPOT_STATUS = 0x02
_SPOT_DEVICE_STATUS = 0x04
_SPOT_PAI = 0x08
_SPOT_CLOCK_NOT_SET = 0x10

_CONT_FAST = 0x01
_CONT_SLOW = 0x02
_CONT_STATUS = 0x04
_CONT_DEVICE_STATUS = 0x08
_CONT_PAI = 0x10


def _spot_check_size(flags: int) -> int:
    return (
        5
        + (DATE_TIME_SIZE if flags & _SPOT_TIMESTAMP else 0)
        + (2 if flags & _SPOT_STATUS else 0)
        + (3 if flags & _SPOT_DEVICE_STATUS else 0)
        + (2 if flags & _SPOT_PAI else 0)
    )


_SPOT_CHECK_SIZE_BY_FLAGS = tuple(_spot_check_size(flags) for flags in range(0x10))
"""The payload size by flags b0-b3 (b4-b7 do not change it)."""


def _spot_check_layout(flags: int) -> str:
    parts = ["flags", "SpO2", "PR"]
    if flags & _SPOT_TIMESTAMP:
        parts.append("timestamp")
    if flags & _SPOT_STATUS:
        parts.append("measurement status")
    if flags & _SPOT_DEVICE_STATUS:
        parts.append("device and sensor status")
    if flags & _SPOT_PAI:
        parts.append("PAI")
    return " + ".join(parts)


def decode_plx_spot_check(payload: Payload) -> PlxSpotCheckMeasurement:
    """Decode a 0x2A5E value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 5:
        raise too_short("2A5E", size, 5, "flags + SpO2 + PR")
    flags, spo2, pulse_rate = _HEAD.unpack_from(payload, 0)
    expected = _SPOT_CHECK_SIZE_BY_FLAGS[flags & 0x0F]
    if size != expected:
        raise length_mismatch("2A5E", size, flags, expected, _spot_check_layout(flags))
    offset = 5
    timestamp = None
    if flags & _SPOT_TIMESTAMP:
        timestamp = read_date_time(payload, offset)
        offset += DATE_TIME_SIZE
    measurement_status = None
    if flags & _SPOT_STATUS:
        measurement_status = _UINT16.unpack_from(payload, offset)[0]
        offset += 2
    device_and_sensor_status = None
    if flags & _SPOT_DEVICE_STATUS:
        device_and_sensor_status = _read_device_status(payload, offset)
        offset += 3
    pulse_amplitude_index = None
    if flags & _SPOT_PAI:
        pulse_amplitude_index = sfloat_from_raw(_UINT16.unpack_from(payload, offset)[0])
    return PlxSpotCheckMeasurement(
        sfloat_from_raw(spo2),
        sfloat_from_raw(pulse_rate),
        timestamp,
        measurement_status,
        device_and_sensor_status,
        pulse_amplitude_index,
        bool(flags & _SPOT_CLOCK_NOT_SET),
    )


def _continuous_size(flags: int) -> int:
    return (
        5
        + (4 if flags & _CONT_FAST else 0)
        + (4 if flags & _CONT_SLOW else 0)
        + (2 if flags & _CONT_STATUS else 0)
        + (3 if flags & _CONT_DEVICE_STATUS else 0)
        + (2 if flags & _CONT_PAI else 0)
    )


_CONTINUOUS_SIZE_BY_FLAGS = tuple(_continuous_size(flags) for flags in range(0x20))
"""The payload size by flags b0-b4 (b5-b7 are RFU)."""


def _continuous_layout(flags: int) -> str:
    parts = ["flags", "SpO2", "PR"]
    if flags & _CONT_FAST:
        parts.append("SpO2/PR-Fast")
    if flags & _CONT_SLOW:
        parts.append("SpO2/PR-Slow")
    if flags & _CONT_STATUS:
        parts.append("measurement status")
    if flags & _CONT_DEVICE_STATUS:
        parts.append("device and sensor status")
    if flags & _CONT_PAI:
        parts.append("PAI")
    return " + ".join(parts)


def decode_plx_continuous(payload: Payload) -> PlxContinuousMeasurement:
    """Decode a 0x2A5F value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 5:
        raise too_short("2A5F", size, 5, "flags + SpO2 + PR")
    flags, spo2, pulse_rate = _HEAD.unpack_from(payload, 0)
    expected = _CONTINUOUS_SIZE_BY_FLAGS[flags & 0x1F]
    if size != expected:
        raise length_mismatch("2A5F", size, flags, expected, _continuous_layout(flags))
    offset = 5
    spo2_fast = pulse_rate_fast = spo2_slow = pulse_rate_slow = None
    if flags & _CONT_FAST:
        raw_spo2, raw_pulse_rate = _PAIR.unpack_from(payload, offset)
        spo2_fast, pulse_rate_fast = sfloat_from_raw(raw_spo2), sfloat_from_raw(raw_pulse_rate)
        offset += 4
    if flags & _CONT_SLOW:
        raw_spo2, raw_pulse_rate = _PAIR.unpack_from(payload, offset)
        spo2_slow, pulse_rate_slow = sfloat_from_raw(raw_spo2), sfloat_from_raw(raw_pulse_rate)
        offset += 4
    measurement_status = None
    if flags & _CONT_STATUS:
        measurement_status = _UINT16.unpack_from(payload, offset)[0]
        offset += 2
    device_and_sensor_status = None
    if flags & _CONT_DEVICE_STATUS:
        device_and_sensor_status = _read_device_status(payload, offset)
        offset += 3
    pulse_amplitude_index = None
    if flags & _CONT_PAI:
        pulse_amplitude_index = sfloat_from_raw(_UINT16.unpack_from(payload, offset)[0])
    return PlxContinuousMeasurement(
        sfloat_from_raw(spo2),
        sfloat_from_raw(pulse_rate),
        spo2_fast,
        pulse_rate_fast,
        spo2_slow,
        pulse_rate_slow,
        measurement_status,
        device_and_sensor_status,
        pulse_amplitude_index,
    )
