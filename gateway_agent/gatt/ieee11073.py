"""IEEE 11073-20601 medical floats: SFLOAT (16 bit) and FLOAT (32 bit).

SFLOAT: the upper 4 bits are the exponent, the lower 12 bits the mantissa, both two's
complement; value = mantissa x 10^exponent. FLOAT: an 8-bit signed exponent above a 24-bit
signed mantissa. A handful of mantissa values with exponent 0 are special values (NaN, NRes,
+INF, -INF, reserved); with any other exponent the same mantissa is an ordinary number.

Decoded values are either a ``float`` or a :class:`SpecialValue`. The float is the double
nearest to the exact decimal ``mantissa x 10^exponent`` (``0xF065`` is exactly ``10.1``, as
``float("10.1")`` is), so JSON output shows the digits the device meant.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import StrEnum
from typing import ClassVar, TypeAlias

from gateway_agent.gatt.errors import GattDecodeError, Payload


class SpecialValue(StrEnum):
    """The IEEE 11073 special values. The string forms are the ones the vectors file uses."""

    NAN = "NaN"
    """Not a number: the device has no value (e.g. MAP not computed, measurement failed)."""
    NRES = "NRes"
    """Not at this resolution: the value cannot be represented with the available digits."""
    POSITIVE_INFINITY = "+INF"
    """Above the measurable range."""
    NEGATIVE_INFINITY = "-INF"
    """Below the measurable range."""
    RESERVED = "Reserved"
    """Reserved for future use; carries no value."""


MedFloat: TypeAlias = float | SpecialValue
"""A decoded SFLOAT or FLOAT: a number, or one of the special values."""

SFLOAT_SPECIAL_RAW: dict[SpecialValue, int] = {
    SpecialValue.NAN: 0x07FF,
    SpecialValue.NRES: 0x0800,
    SpecialValue.POSITIVE_INFINITY: 0x07FE,
    SpecialValue.NEGATIVE_INFINITY: 0x0802,
    SpecialValue.RESERVED: 0x0801,
}
"""The 16-bit raw value of each special value (exponent 0)."""

FLOAT_SPECIAL_RAW: dict[SpecialValue, int] = {
    SpecialValue.NAN: 0x007FFFFF,
    SpecialValue.NRES: 0x00800000,
    SpecialValue.POSITIVE_INFINITY: 0x007FFFFE,
    SpecialValue.NEGATIVE_INFINITY: 0x00800002,
    SpecialValue.RESERVED: 0x00800001,
}
"""The 32-bit raw value of each special value (exponent 0)."""

_SFLOAT_SPECIAL_BY_RAW = {raw: special for special, raw in SFLOAT_SPECIAL_RAW.items()}
_FLOAT_SPECIAL_BY_RAW = {raw: special for special, raw in FLOAT_SPECIAL_RAW.items()}

# Exact integer powers of ten: int / int true division in Python is correctly rounded, so
# mantissa / 10**k is the double nearest to the decimal value, for any k.
_POWERS_OF_TEN: tuple[int, ...] = tuple(10**k for k in range(129))

# The SFLOAT power of ten by the exponent's 4 bits, as a float: 10**e for 0..7 (multiply), and
# 10**(16-e) for 8..15, i.e. exponents -8..-1 (divide). These are exact doubles, and so is a
# 12-bit mantissa times 10**7, so float arithmetic gives exactly the doubles that integer
# arithmetic (as in float_from_raw) gives: exact products, correctly rounded quotients.
_SFLOAT_POWERS_OF_TEN: tuple[float, ...] = tuple(
    float(10**exponent if exponent < 8 else 10 ** (16 - exponent)) for exponent in range(16)
)

_UINT16 = struct.Struct("<H")
_UINT32 = struct.Struct("<I")


def sfloat_from_raw(raw: int) -> MedFloat:
    """Decode a 16-bit SFLOAT given as an unsigned integer (0..0xFFFF)."""
    if 0x07FE <= raw <= 0x0802:
        return _SFLOAT_SPECIAL_BY_RAW[raw]
    mantissa = raw & 0x0FFF
    if mantissa >= 0x0800:
        mantissa -= 0x1000
    exponent = raw >> 12
    if exponent >= 8:
        return mantissa / _SFLOAT_POWERS_OF_TEN[exponent]
    return mantissa * _SFLOAT_POWERS_OF_TEN[exponent]


def float_from_raw(raw: int) -> MedFloat:
    """Decode a 32-bit FLOAT given as an unsigned integer (0..0xFFFFFFFF)."""
    if 0x007FFFFE <= raw <= 0x00800002:
        return _FLOAT_SPECIAL_BY_RAW[raw]
    mantissa = raw & 0x00FFFFFF
    if mantissa >= 0x00800000:
        mantissa -= 0x01000000
    exponent = raw >> 24
    if exponent >= 128:
        return mantissa / _POWERS_OF_TEN[256 - exponent]
    return float(mantissa * _POWERS_OF_TEN[exponent])


@dataclass(slots=True)
class SFloatValue:
    """A bare SFLOAT (2 bytes), as decoded on its own for tests and tools."""

    CHARACTERISTIC: ClassVar[str] = "SFLOAT"

    value: MedFloat
    """The number, or the special value the bytes encode."""


@dataclass(slots=True)
class FloatValue:
    """A bare FLOAT (4 bytes), as decoded on its own for tests and tools."""

    CHARACTERISTIC: ClassVar[str] = "FLOAT"

    value: MedFloat
    """The number, or the special value the bytes encode."""


def decode_sfloat(payload: Payload) -> SFloatValue:
    """Decode exactly two bytes (little-endian) as an SFLOAT."""
    if len(payload) != 2:
        raise GattDecodeError(f"SFLOAT: {len(payload)} bytes, need exactly 2")
    return SFloatValue(sfloat_from_raw(_UINT16.unpack(payload)[0]))


def decode_float(payload: Payload) -> FloatValue:
    """Decode exactly four bytes (little-endian) as a FLOAT."""
    if len(payload) != 4:
        raise GattDecodeError(f"FLOAT: {len(payload)} bytes, need exactly 4")
    return FloatValue(float_from_raw(_UINT32.unpack(payload)[0]))
