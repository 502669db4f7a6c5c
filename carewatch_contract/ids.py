"""Identifiers chosen by the gateway.

Reading ids are UUID version 7 (RFC 9562): unique without coordination, and ordered by time so
that the database index on them stays compact.
"""

from __future__ import annotations

import os
import time
import uuid


def new_uuid7() -> str:
    """A fresh UUIDv7: 48 bits of Unix milliseconds, then 74 random bits."""
    millis = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10), "big")
    value = (millis & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version
    value |= ((random_bits >> 62) & 0xFFF) << 64  # rand_a, 12 bits
    value |= 0b10 << 62  # variant
    value |= random_bits & ((1 << 62) - 1)  # rand_b, 62 bits
    return str(uuid.UUID(int=value))
