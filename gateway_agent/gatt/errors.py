"""The one error every GATT decoder raises, and the payload type decoders accept."""

from __future__ import annotations

from typing import TypeAlias

Payload: TypeAlias = bytes | bytearray
"""A characteristic value as received: bleak hands over ``bytearray``, tests use ``bytes``."""


class GattDecodeError(ValueError):
    """A characteristic value that cannot be decoded: too short, too long, or not meaningful.

    The message names the characteristic and says what is wrong, for example
    ``"2A35: 6 bytes, need at least 7 (flags + 3 SFLOAT)"``. It is a ``ValueError`` so that
    callers that only care about "bad input" can catch that, but callers should prefer this
    class: any other exception out of a decoder is a bug.
    """


def too_short(characteristic: str, size: int, needed: int, layout: str) -> GattDecodeError:
    """The error for a payload of ``size`` bytes that is shorter than its fixed part.

    ``layout`` names what the ``needed`` bytes hold, for the message.
    """
    return GattDecodeError(f"{characteristic}: {size} bytes, need at least {needed} ({layout})")


def length_mismatch(
    characteristic: str, size: int, flags: int, expected: int, layout: str
) -> GattDecodeError:
    """The error for a payload whose size differs from what its flags announce.

    ``flags`` is printed in hex; ``layout`` lists the fields those flags make present.
    Trailing bytes are rejected as well as missing ones: no device we know of sends them,
    and an unexpected length usually means the flags were not what the sender meant.
    """
    difference = abs(expected - size)
    problem = "missing" if size < expected else "trailing"
    plural = "s" if difference != 1 else ""
    return GattDecodeError(
        f"{characteristic}: {size} bytes, flags 0x{flags:02X} need exactly {expected} "
        f"({layout}); {difference} byte{plural} {problem}"
    )
