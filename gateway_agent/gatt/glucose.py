"""0x2A18 Glucose Measurement (notify) and 0x2A52 Record Access Control Point (RACP).

Glucose flags (uint8): b0 time offset present (sint16, minutes); b1 concentration (SFLOAT)
and type/sample location (uint8) present; b2 concentration unit (0 kg/L, 1 mol/L); b3 sensor
status annunciation present (uint16); b4 context information follows in 0x2A34. b5-b7 RFU,
ignored. Mandatory: sequence number (uint16) and base time (Date Time). The user-facing time
is base time + time offset.

RACP (both directions, same characteristic): op code (uint8), operator (uint8), operand.
Requests 1 report stored records, 2 delete stored records, 4 report number of stored records
take an operator and, for operators 2 (<=), 3 (>=) and 4 (range), a filter type followed by
one or two operands; 3 abort takes no operand. Responses: 5 number of stored records (uint16
operand), 6 response code (request op code, response value).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar

from gateway_agent.gatt.date_time import DATE_TIME_SIZE, DateTimeFields, read_date_time
from gateway_agent.gatt.errors import GattDecodeError, Payload, length_mismatch, too_short
from gateway_agent.gatt.ieee11073 import MedFloat, sfloat_from_raw

_HEAD = struct.Struct("<BH")
_UINT16 = struct.Struct("<H")
_SINT16 = struct.Struct("<h")
_CONCENTRATION = struct.Struct("<HB")

_TIME_OFFSET_PRESENT = 0x01
_CONCENTRATION_PRESENT = 0x02
_UNIT_MOL_PER_L = 0x04
_SENSOR_STATUS_PRESENT = 0x08
_CONTEXT_FOLLOWS = 0x10

GLUCOSE_SAMPLE_TYPES: dict[int, str] = {
    1: "capillary whole blood",
    2: "capillary plasma",
    3: "venous whole blood",
    4: "venous plasma",
    5: "arterial whole blood",
    6: "arterial plasma",
    7: "undetermined whole blood",
    8: "undetermined plasma",
    9: "interstitial fluid",
    10: "control solution",
}
"""What was measured, by the low nibble of the type/sample-location byte."""

GLUCOSE_SAMPLE_LOCATIONS: dict[int, str] = {
    1: "finger",
    2: "alternate site test",
    3: "earlobe",
    4: "control solution",
    15: "not available",
}
"""Where the sample came from, by the high nibble of the type/sample-location byte."""

CONTROL_SOLUTION_TYPE = 10
"""Sample type of a meter check with control solution: not a patient measurement."""
CONTROL_SOLUTION_LOCATION = 4
"""Sample location of a meter check with control solution: not a patient measurement."""


@dataclass(slots=True)
class GlucoseMeasurement:
    """0x2A18: one stored glucose-meter record."""

    CHARACTERISTIC: ClassVar[str] = "2A18"

    sequence_number: int
    """The meter's record number (uint16), used by RACP filters."""
    base_time: DateTimeFields
    """The meter's clock for this record, as sent."""
    time_offset_min: int | None
    """Minutes to add to ``base_time`` for the user-facing time; None when not sent."""
    concentration: MedFloat | None
    """Glucose concentration in ``unit`` as sent (111 mg/dL arrives as 0.00111 kg/L)."""
    unit: str | None
    """"kg/L" or "mol/L"; None when no concentration was sent."""
    type: int | None
    """Sample type (low nibble), see GLUCOSE_SAMPLE_TYPES; None without concentration."""
    sample_location: int | None
    """Sample location (high nibble), see GLUCOSE_SAMPLE_LOCATIONS; None without it."""
    sensor_status: int | None
    """Sensor status annunciation bits (b0 battery low ... b11 time fault); None if not sent."""
    context_follows: bool
    """True when a 0x2A34 Glucose Measurement Context with the same sequence number follows."""

    @property
    def is_control_solution(self) -> bool:
        """True for a meter check with control solution (type 10 or location 4)."""
        return (
            self.type == CONTROL_SOLUTION_TYPE or self.sample_location == CONTROL_SOLUTION_LOCATION
        )


def _glucose_size(flags: int) -> int:
    return (
        10
        + (2 if flags & _TIME_OFFSET_PRESENT else 0)
        + (3 if flags & _CONCENTRATION_PRESENT else 0)
        + (2 if flags & _SENSOR_STATUS_PRESENT else 0)
    )


_GLUCOSE_SIZE_BY_FLAGS = tuple(_glucose_size(flags) for flags in range(0x10))
"""The payload size by flags b0-b3 (b4-b7 do not change it)."""


def _glucose_layout(flags: int) -> str:
    parts = ["flags", "sequence number", "base time"]
    if flags & _TIME_OFFSET_PRESENT:
        parts.append("time offset")
    if flags & _CONCENTRATION_PRESENT:
        parts.append("concentration + type/location")
    if flags & _SENSOR_STATUS_PRESENT:
        parts.append("sensor status")
    return " + ".join(parts)


def decode_glucose_measurement(payload: Payload) -> GlucoseMeasurement:
    """Decode a 0x2A18 value; GattDecodeError when too short or its length is wrong."""
    size = len(payload)
    if size < 10:
        raise too_short("2A18", size, 10, "flags + sequence number + base time")
    flags, sequence_number = _HEAD.unpack_from(payload, 0)
    expected = _GLUCOSE_SIZE_BY_FLAGS[flags & 0x0F]
    if size != expected:
        raise length_mismatch("2A18", size, flags, expected, _glucose_layout(flags))
    base_time = read_date_time(payload, 3)
    offset = 10
    time_offset_min = None
    if flags & _TIME_OFFSET_PRESENT:
        time_offset_min = _SINT16.unpack_from(payload, offset)[0]
        offset += 2
    concentration = None
    unit = None
    sample_type = None
    sample_location = None
    if flags & _CONCENTRATION_PRESENT:
        raw_concentration, type_and_location = _CONCENTRATION.unpack_from(payload, offset)
        concentration = sfloat_from_raw(raw_concentration)
        unit = "mol/L" if flags & _UNIT_MOL_PER_L else "kg/L"
        sample_type = type_and_location & 0x0F
        sample_location = type_and_location >> 4
        offset += 3
    sensor_status = None
    if flags & _SENSOR_STATUS_PRESENT:
        sensor_status = _UINT16.unpack_from(payload, offset)[0]
    return GlucoseMeasurement(
        sequence_number,
        base_time,
        time_offset_min,
        concentration,
        unit,
        sample_type,
        sample_location,
        sensor_status,
        bool(flags & _CONTEXT_FOLLOWS),
    )


class RacpOpCode(IntEnum):
    """RACP op codes (GLS)."""

    REPORT_STORED_RECORDS = 1
    DELETE_STORED_RECORDS = 2
    ABORT_OPERATION = 3
    REPORT_NUMBER_OF_STORED_RECORDS = 4
    NUMBER_OF_STORED_RECORDS_RESPONSE = 5
    RESPONSE_CODE = 6


class RacpOperator(IntEnum):
    """RACP operators: which records a request applies to."""

    NULL = 0
    ALL_RECORDS = 1
    LESS_THAN_OR_EQUAL_TO = 2
    GREATER_THAN_OR_EQUAL_TO = 3
    WITHIN_RANGE_OF = 4
    FIRST_RECORD = 5
    LAST_RECORD = 6


class RacpFilterType(IntEnum):
    """What the operands of a filtered RACP request are."""

    SEQUENCE_NUMBER = 1
    """Operands are uint16 sequence numbers."""
    USER_FACING_TIME = 2
    """Operands are Date Time values (base time + offset)."""


class RacpResponseCode(IntEnum):
    """The response value in an op code 6 response."""

    SUCCESS = 1
    OP_CODE_NOT_SUPPORTED = 2
    INVALID_OPERATOR = 3
    OPERATOR_NOT_SUPPORTED = 4
    INVALID_OPERAND = 5
    NO_RECORDS_FOUND = 6
    ABORT_UNSUCCESSFUL = 7
    PROCEDURE_NOT_COMPLETED = 8
    OPERAND_NOT_SUPPORTED = 9


# Plain-int keys: the decoder looks raw bytes up without converting them to enums first.
_REQUESTS_WITH_OPERATOR = frozenset(
    {
        int(RacpOpCode.REPORT_STORED_RECORDS),
        int(RacpOpCode.DELETE_STORED_RECORDS),
        int(RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS),
    }
)
OPERAND_COUNT_BY_OPERATOR: dict[int, int] = {
    RacpOperator.LESS_THAN_OR_EQUAL_TO.value: 1,
    RacpOperator.GREATER_THAN_OR_EQUAL_TO.value: 1,
    RacpOperator.WITHIN_RANGE_OF.value: 2,
}
"""How many operands a filtering operator takes; other operators take none."""
OPERAND_SIZE_BY_FILTER: dict[int, int] = {
    RacpFilterType.SEQUENCE_NUMBER.value: 2,
    RacpFilterType.USER_FACING_TIME.value: DATE_TIME_SIZE,
}
"""Bytes per operand, by filter type."""
_NUMBER_OF_RECORDS_RESPONSE = RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE.value
_RESPONSE_CODE = RacpOpCode.RESPONSE_CODE.value
_ABORT_OPERATION = RacpOpCode.ABORT_OPERATION.value
_LAST_OPERATOR = RacpOperator.LAST_RECORD.value
_SEQUENCE_NUMBER_FILTER = RacpFilterType.SEQUENCE_NUMBER.value


@dataclass(slots=True)
class RecordAccessControlPoint:
    """0x2A52: one RACP request (written by the gateway) or response (indicated by the meter).

    Fields that do not apply to the op code are None (or an empty ``operand``).
    """

    CHARACTERISTIC: ClassVar[str] = "2A52"

    op_code: int
    """See RacpOpCode: 1-4 requests, 5 and 6 responses."""
    operator: int
    """See RacpOperator; 0 (null) in responses and in abort."""
    filter_type: int | None
    """See RacpFilterType; None when the operator takes no operand."""
    operand: tuple[int | DateTimeFields, ...]
    """Filter operands: one for <= and >=, two for a range; sequence numbers or Date Times."""
    number_of_records: int | None
    """Op code 5: how many records match the request; otherwise None."""
    request_op_code: int | None
    """Op code 6: the op code of the request this answers; otherwise None."""
    response_code: int | None
    """Op code 6: the outcome, see RacpResponseCode; otherwise None."""

    @property
    def is_response(self) -> bool:
        """True for op codes 5 and 6 (sent by the meter)."""
        return self.op_code in (
            RacpOpCode.NUMBER_OF_STORED_RECORDS_RESPONSE,
            RacpOpCode.RESPONSE_CODE,
        )


def _wrong_size(size: int, expected: int, what: str) -> GattDecodeError:
    return GattDecodeError(f"2A52: {size} bytes, {what} needs exactly {expected}")


def decode_record_access_control_point(payload: Payload) -> RecordAccessControlPoint:
    """Decode a 0x2A52 request or response.

    GattDecodeError for unknown op codes, operators or filter types, and for operands whose
    length does not match the operator and filter type.
    """
    size = len(payload)
    if size < 2:
        raise too_short("2A52", size, 2, "op code + operator")
    op_code = payload[0]
    operator = payload[1]
    if op_code == _NUMBER_OF_RECORDS_RESPONSE:
        if size != 4:
            raise _wrong_size(size, 4, "number-of-records response (op code 5, operator, uint16)")
        number = _UINT16.unpack_from(payload, 2)[0]
        return RecordAccessControlPoint(op_code, operator, None, (), number, None, None)
    if op_code == _RESPONSE_CODE:
        if size != 4:
            raise _wrong_size(size, 4, "response code (op code 6, operator, request op, value)")
        return RecordAccessControlPoint(op_code, operator, None, (), None, payload[2], payload[3])
    if op_code == _ABORT_OPERATION:
        if size != 2:
            raise _wrong_size(size, 2, "abort (op code 3, operator)")
        return RecordAccessControlPoint(op_code, operator, None, (), None, None, None)
    if op_code not in _REQUESTS_WITH_OPERATOR:
        raise GattDecodeError(f"2A52: unknown op code {op_code} (known: 1-6)")
    if operator > _LAST_OPERATOR:
        raise GattDecodeError(f"2A52: unknown operator {operator} (known: 0-6)")
    operand_count = OPERAND_COUNT_BY_OPERATOR.get(operator, 0)
    if operand_count == 0:
        if size != 2:
            raise _wrong_size(size, 2, f"op code {op_code} with operator {operator} (no operand)")
        return RecordAccessControlPoint(op_code, operator, None, (), None, None, None)
    if size < 3:
        raise too_short("2A52", size, 3, f"op code + operator {operator} + filter type")
    filter_type = payload[2]
    operand_size = OPERAND_SIZE_BY_FILTER.get(filter_type)
    if operand_size is None:
        raise GattDecodeError(f"2A52: unknown filter type {filter_type} (known: 1, 2)")
    expected = 3 + operand_count * operand_size
    if size != expected:
        raise _wrong_size(
            size,
            expected,
            f"operator {operator} with filter type {filter_type} "
            f"({operand_count} operand{'s' if operand_count > 1 else ''} of {operand_size} bytes)",
        )
    operand: tuple[int | DateTimeFields, ...]
    if filter_type == _SEQUENCE_NUMBER_FILTER:
        operand = struct.unpack_from(f"<{operand_count}H", payload, 3)
    else:
        operand = tuple(
            read_date_time(payload, 3 + index * DATE_TIME_SIZE) for index in range(operand_count)
        )
    return RecordAccessControlPoint(op_code, operator, filter_type, operand, None, None, None)
