"""Pure decoders for the standard Bluetooth LE health characteristics.

Bytes in, dataclass out; no I/O and no third-party imports. Every decoder raises
:class:`GattDecodeError` (and nothing else) for a payload it cannot accept.

- :func:`decode` picks the decoder by characteristic ("2A35", "0x2a35", a full 128-bit SIG
  UUID, or "SFLOAT"/"FLOAT" for a bare IEEE 11073 value).
- :func:`to_json_dict` turns a decoded value into plain JSON types, with the field names of
  ``shared/data/gatt_vectors.json``.
- ``gateway_agent.gatt.encode`` builds characteristic values (the inverse).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from enum import Enum
from types import MappingProxyType
from typing import Any, TypeAlias

from gateway_agent.gatt.blood_pressure import (
    BloodPressureMeasurement,
    BloodPressureStatusBits,
    IntermediateCuffPressure,
    decode_blood_pressure_measurement,
    decode_intermediate_cuff_pressure,
)
from gateway_agent.gatt.body_composition import (
    BodyCompositionMeasurement,
    RawFieldValues,
    decode_body_composition_measurement,
)
from gateway_agent.gatt.date_time import DateTimeFields
from gateway_agent.gatt.errors import GattDecodeError, Payload
from gateway_agent.gatt.glucose import (
    GlucoseMeasurement,
    RecordAccessControlPoint,
    decode_glucose_measurement,
    decode_record_access_control_point,
)
from gateway_agent.gatt.heart_rate import (
    HeartRateMeasurement,
    SensorContact,
    decode_heart_rate_measurement,
)
from gateway_agent.gatt.ieee11073 import (
    FloatValue,
    MedFloat,
    SFloatValue,
    SpecialValue,
    decode_float,
    decode_sfloat,
)
from gateway_agent.gatt.pulse_oximetry import (
    PlxContinuousMeasurement,
    PlxSpotCheckMeasurement,
    decode_plx_continuous,
    decode_plx_spot_check,
)
from gateway_agent.gatt.temperature import TemperatureMeasurement, decode_temperature_measurement
from gateway_agent.gatt.weight import WeightMeasurement, decode_weight_measurement

__all__ = [
    "SUPPORTED_CHARACTERISTICS",
    "BloodPressureMeasurement",
    "BloodPressureStatusBits",
    "BodyCompositionMeasurement",
    "DateTimeFields",
    "DecodedCharacteristic",
    "FloatValue",
    "GattDecodeError",
    "GlucoseMeasurement",
    "HeartRateMeasurement",
    "IntermediateCuffPressure",
    "MedFloat",
    "PlxContinuousMeasurement",
    "PlxSpotCheckMeasurement",
    "RawFieldValues",
    "RecordAccessControlPoint",
    "SFloatValue",
    "SensorContact",
    "SpecialValue",
    "TemperatureMeasurement",
    "WeightMeasurement",
    "decode",
    "normalize_characteristic",
    "to_json_dict",
]

DecodedCharacteristic: TypeAlias = (
    BloodPressureMeasurement
    | IntermediateCuffPressure
    | HeartRateMeasurement
    | TemperatureMeasurement
    | GlucoseMeasurement
    | RecordAccessControlPoint
    | WeightMeasurement
    | BodyCompositionMeasurement
    | PlxSpotCheckMeasurement
    | PlxContinuousMeasurement
    | SFloatValue
    | FloatValue
)
"""Anything :func:`decode` returns."""

SUPPORTED_CHARACTERISTICS: Mapping[str, str] = MappingProxyType(
    {
        "2A35": "Blood Pressure Measurement",
        "2A36": "Intermediate Cuff Pressure",
        "2A37": "Heart Rate Measurement",
        "2A1C": "Temperature Measurement",
        "2A18": "Glucose Measurement",
        "2A52": "Record Access Control Point",
        "2A9D": "Weight Measurement",
        "2A9C": "Body Composition Measurement",
        "2A5E": "PLX Spot-Check Measurement",
        "2A5F": "PLX Continuous Measurement",
        "SFLOAT": "IEEE 11073 16-bit SFLOAT",
        "FLOAT": "IEEE 11073 32-bit FLOAT",
    }
)
"""Canonical characteristic name (16-bit UUID in upper-case hex, or SFLOAT/FLOAT) -> name."""

_DECODERS: dict[str, Callable[[Payload], DecodedCharacteristic]] = {
    "2A35": decode_blood_pressure_measurement,
    "2A36": decode_intermediate_cuff_pressure,
    "2A37": decode_heart_rate_measurement,
    "2A1C": decode_temperature_measurement,
    "2A18": decode_glucose_measurement,
    "2A52": decode_record_access_control_point,
    "2A9D": decode_weight_measurement,
    "2A9C": decode_body_composition_measurement,
    "2A5E": decode_plx_spot_check,
    "2A5F": decode_plx_continuous,
    "SFLOAT": decode_sfloat,
    "FLOAT": decode_float,
}

_SIG_BASE_UUID_SUFFIX = "-0000-1000-8000-00805F9B34FB"


def normalize_characteristic(characteristic: str) -> str | None:
    """The canonical key of SUPPORTED_CHARACTERISTICS for ``characteristic``, or None.

    Accepts "2A35", "2a35", "0x2A35", "00002a35-0000-1000-8000-00805f9b34fb" (full
    Bluetooth SIG UUIDs), and "SFLOAT"/"FLOAT", case-insensitively and ignoring whitespace.
    """
    key = characteristic.strip().upper()
    if key.startswith("0X"):
        key = key[2:]
    if len(key) == 36 and key.endswith(_SIG_BASE_UUID_SUFFIX) and key.startswith("0000"):
        key = key[4:8]
    return key if key in _DECODERS else None


def decode(characteristic: str, payload: Payload) -> DecodedCharacteristic:
    """Decode ``payload`` as a value of ``characteristic``.

    GattDecodeError when the characteristic is not supported or the payload is malformed.
    """
    decoder = _DECODERS.get(characteristic)
    if decoder is None:
        key = normalize_characteristic(characteristic)
        if key is None:
            supported = ", ".join(SUPPORTED_CHARACTERISTICS)
            raise GattDecodeError(
                f"unsupported characteristic {characteristic!r} (supported: {supported})"
            )
        decoder = _DECODERS[key]
    return decoder(payload)


def _json_value(value: object) -> Any:
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, RawFieldValues):
        return value.as_dict()
    if isinstance(value, tuple):
        return [_json_value(item) for item in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: _json_value(getattr(value, field.name))
            for field in dataclasses.fields(value)
        }
    raise TypeError(f"no JSON form for {type(value).__name__}")


def to_json_dict(decoded: DecodedCharacteristic) -> dict[str, Any]:
    """``decoded`` as plain JSON types, with the field names of the vectors file.

    Timestamps become ``{year, month, day, hours, minutes, seconds}``, special values their
    strings ("NaN", "NRes", "+INF", "-INF", "Reserved"), tuples lists, absent fields null.
    The first key, "characteristic", names what was decoded ("2A35", "SFLOAT", ...).
    """
    fields = _json_value(decoded)
    return {"characteristic": decoded.CHARACTERISTIC, **fields}
