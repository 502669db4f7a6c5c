"""The GATT Date Time structure (7 bytes), kept exactly as the device sent it.

uint16 year, then month, day, hours, minutes and seconds as one uint8 each, little-endian.
Year 0, month 0 or day 0 mean "not known". The fields are the device's own wall clock, in
whatever zone (if any) the device was set to; the caller decides which zone that is.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import datetime
from datetime import tzinfo as TzInfo

from gateway_agent.gatt.errors import Payload

DATE_TIME_SIZE = 7
"""Bytes a Date Time occupies in a characteristic value."""

EARLIEST_YEAR = 1582
"""The first year the GATT Date Time allows (Gregorian calendar); 0 means "not known"."""

_DATE_TIME = struct.Struct("<H5B")


@dataclass(slots=True)
class DateTimeFields:
    """A Date Time as sent: no field is validated, so a wrong clock stays visible."""

    year: int
    """Calendar year, 1582..9999; 0 = not known."""
    month: int
    """1..12; 0 = not known."""
    day: int
    """Day of the month, 1..31; 0 = not known."""
    hours: int
    """0..23."""
    minutes: int
    """0..59."""
    seconds: int
    """0..59."""

    @property
    def is_known(self) -> bool:
        """False when the device said it does not know the date (year, month or day is 0)."""
        return self.year != 0 and self.month != 0 and self.day != 0

    def to_datetime(self, tzinfo: TzInfo) -> datetime | None:
        """This wall-clock time in zone ``tzinfo``; None when not known or not a valid time.

        Never raises: month 13, 25 o'clock, 30 February or a year before 1582 give None.
        """
        if not self.is_known or self.year < EARLIEST_YEAR:
            return None
        try:
            return datetime(
                self.year,
                self.month,
                self.day,
                self.hours,
                self.minutes,
                self.seconds,
                tzinfo=tzinfo,
            )
        except ValueError:
            return None

    @classmethod
    def from_datetime(cls, moment: datetime) -> DateTimeFields:
        """The wall-clock fields of ``moment`` (its own zone; no conversion, no microseconds)."""
        return cls(moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)


NOT_KNOWN = DateTimeFields(0, 0, 0, 0, 0, 0)
"""The all-zero Date Time a device sends when its clock has never been set (shared: do not
change its fields)."""


def read_date_time(payload: Payload, offset: int) -> DateTimeFields:
    """The Date Time at ``offset``; the caller has checked that 7 bytes are there."""
    return DateTimeFields(*_DATE_TIME.unpack_from(payload, offset))


def pack_date_time(fields: DateTimeFields) -> bytes:
    """The 7 bytes of ``fields``; ValueError when a field does not fit its integer size."""
    try:
        return _DATE_TIME.pack(
            fields.year, fields.month, fields.day, fields.hours, fields.minutes, fields.seconds
        )
    except struct.error as error:
        raise ValueError(f"Date Time {fields} does not fit the 7-byte layout: {error}") from None
