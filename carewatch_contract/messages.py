"""Messages of the wire contract, version 1, and their strict JSON codec.

Both sides use these classes: the gateway builds and encodes them, ingest parses and
validates them. Parsing never trusts its input: every field is checked for presence, type and
range, and a violation raises :class:`ContractError` with a short machine-readable ``reason``
(it becomes the quarantine reason) and a human ``detail``.

A readings message carries one reading or a batch of them (``readings`` holds 1 to
:data:`MAX_READINGS_PER_MESSAGE`). One bad reading does not spoil its batch:
:func:`parse_reading_batch` returns the good readings and the rejected ones separately.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from carewatch_contract.metrics import metric_for
from carewatch_contract.topics import GATEWAY_ID_PATTERN

VERSION = 1
#: No clinical reading of CareWatch's is older or later than this; no zone is further off.
EARLIEST_TIME = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_TIME = datetime(2100, 1, 1, tzinfo=UTC)
MAX_UTC_OFFSET = timedelta(hours=14)
#: How far a reading's time may lie after the gateway received it (clock skew, not more).
MAX_MEASURED_AFTER_RECEIVED = timedelta(minutes=10)
MAX_READINGS_PER_MESSAGE = 500
MAX_ID_LENGTH = 64
MAX_RAW_HEX_LENGTH = 1024  # 512 bytes: no health characteristic comes close


class DeviceType(StrEnum):
    BLOOD_PRESSURE = "blood_pressure"
    PULSE_OXIMETER = "pulse_oximeter"
    WEIGHT_SCALE = "weight_scale"
    BODY_COMPOSITION = "body_composition"
    THERMOMETER = "thermometer"
    GLUCOSE_METER = "glucose_meter"
    HEART_RATE = "heart_rate"


class TimeSource(StrEnum):
    """Where a reading's ``measured_at`` came from."""

    DEVICE = "device"  # the device's own clock, trusted
    GATEWAY = "gateway"  # device time absent, not known, or too far off: gateway receive time


class ContractError(ValueError):
    """A message or reading that does not satisfy the wire contract."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class DeviceTime:
    """The device's own timestamp exactly as it sent it (GATT Date Time; 0 = not known)."""

    year: int
    month: int
    day: int
    hours: int
    minutes: int
    seconds: int


@dataclass(frozen=True, slots=True)
class Reading:
    """One observation of one metric for one patient, as the gateway received it."""

    reading_id: str  # UUID chosen by the gateway when the reading enters its outbox
    measurement_id: str  # readings decoded from the same characteristic value share it
    seq: int  # the gateway's outbox sequence number: increasing, for order and gap checks
    patient_id: str
    device_id: str  # the device's Bluetooth address (or another stable id)
    device_type: DeviceType
    loinc: str
    unit: str  # the canonical UCUM unit of the metric
    value: float
    measured_at: datetime  # the reading's clinical time (see time_source)
    time_source: TimeSource
    received_at: datetime  # when the gateway received the bytes
    characteristic: str  # the GATT characteristic, e.g. "2A35"
    raw_hex: str  # the characteristic value as the device sent it
    device_time: DeviceTime | None = None


@dataclass(frozen=True, slots=True)
class ReadingBatch:
    gateway_id: str
    sent_at: datetime
    readings: tuple[Reading, ...]


@dataclass(frozen=True, slots=True)
class RejectedReading:
    reading_id: str | None
    reason: str
    detail: str
    raw: Any  # the reading as it arrived, for the quarantine record


@dataclass(frozen=True, slots=True)
class ParsedBatch:
    gateway_id: str
    sent_at: datetime
    readings: tuple[Reading, ...]
    rejected: tuple[RejectedReading, ...]


@dataclass(frozen=True, slots=True)
class AckRejection:
    reading_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ack:
    """Sent by ingest after the readings are committed (or quarantined for good).

    ``committed`` names reading ids, and also the ``receipt_id`` / ``request_id`` of inbox
    receipts and follow-up requests once they are stored."""

    gateway_id: str
    committed: tuple[str, ...]
    rejected: tuple[AckRejection, ...] = ()


class GatewayState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    device_id: str
    device_type: DeviceType
    last_seen: datetime | None = None
    battery_percent: int | None = None


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    gateway_id: str
    state: GatewayState
    at: datetime | None = None
    software: str | None = None
    outbox_pending: int | None = None
    devices: tuple[DeviceStatus, ...] = ()
    #: Conditions the care team's operators should see, e.g. "outbox_near_bound".
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class InboxMessage:
    """A clinician's message for a patient, shown on the gateway's page."""

    message_id: str
    sent_at: datetime
    sender: str
    text: str
    #: The patient it is for; None = everyone the gateway serves (e.g. a one-person home).
    patient_id: str | None = None


class ReceiptState(StrEnum):
    DELIVERED = "delivered"
    READ = "read"


@dataclass(frozen=True, slots=True)
class InboxReceipt:
    message_id: str
    state: ReceiptState
    at: datetime
    #: The gateway's id for this receipt; ingest names it in an ack once stored.
    receipt_id: str | None = None


class FollowUpKind(StrEnum):
    CALL_BACK = "call_back"


MAX_NOTE_LENGTH = 500


@dataclass(frozen=True, slots=True)
class FollowUpRequest:
    """A patient's request to the care team, made on the gateway's page (e.g. "call me")."""

    request_id: str
    gateway_id: str
    patient_id: str
    kind: FollowUpKind
    at: datetime
    note: str | None = None
    #: The inbox message the patient was answering, if any.
    in_reply_to: str | None = None


# --------------------------------------------------------------------------------------------
# Encoding


def _iso(value: datetime) -> str:
    if value.tzinfo is None:
        raise ValueError("datetimes on the wire must be timezone-aware")
    return value.isoformat()


def _dumps(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def reading_to_dict(reading: Reading) -> dict[str, Any]:
    return {
        "reading_id": reading.reading_id,
        "measurement_id": reading.measurement_id,
        "seq": reading.seq,
        "patient_id": reading.patient_id,
        "device": {"id": reading.device_id, "type": str(reading.device_type)},
        "loinc": reading.loinc,
        "unit": reading.unit,
        "value": reading.value,
        "measured_at": _iso(reading.measured_at),
        "time_source": str(reading.time_source),
        "received_at": _iso(reading.received_at),
        "device_time": None
        if reading.device_time is None
        else {
            "year": reading.device_time.year,
            "month": reading.device_time.month,
            "day": reading.device_time.day,
            "hours": reading.device_time.hours,
            "minutes": reading.device_time.minutes,
            "seconds": reading.device_time.seconds,
        },
        "raw": {"characteristic": reading.characteristic, "hex": reading.raw_hex},
    }


def encode_reading(reading: Reading) -> str:
    """One reading as compact JSON, as it sits in the gateway's outbox until acked."""
    return json.dumps(reading_to_dict(reading), separators=(",", ":"), allow_nan=False)


def encode_reading_batch(batch: ReadingBatch) -> bytes:
    return encode_reading_batch_json(
        batch.gateway_id, batch.sent_at, [encode_reading(r) for r in batch.readings]
    )


def encode_reading_batch_json(
    gateway_id: str, sent_at: datetime, readings_json: Sequence[str]
) -> bytes:
    """A readings message from readings already encoded with :func:`encode_reading`."""
    if not 1 <= len(readings_json) <= MAX_READINGS_PER_MESSAGE:
        raise ValueError(f"a message carries 1-{MAX_READINGS_PER_MESSAGE} readings")
    head = _dumps({"v": VERSION, "gateway_id": gateway_id, "sent_at": _iso(sent_at)})
    return head[:-1] + b',"readings":[' + ",".join(readings_json).encode() + b"]}"


def encode_ack(ack: Ack) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "gateway_id": ack.gateway_id,
            "committed": list(ack.committed),
            "rejected": [{"reading_id": r.reading_id, "reason": r.reason} for r in ack.rejected],
        }
    )


def encode_status(status: GatewayStatus) -> bytes:
    body: dict[str, Any] = {
        "v": VERSION,
        "gateway_id": status.gateway_id,
        "state": str(status.state),
    }
    if status.at is not None:
        body["at"] = _iso(status.at)
    if status.software is not None:
        body["software"] = status.software
    if status.outbox_pending is not None:
        body["outbox_pending"] = status.outbox_pending
    if status.warnings:
        body["warnings"] = list(status.warnings)
    body["devices"] = [
        {
            "id": d.device_id,
            "type": str(d.device_type),
            "last_seen": None if d.last_seen is None else _iso(d.last_seen),
            "battery_percent": d.battery_percent,
        }
        for d in status.devices
    ]
    return _dumps(body)


def encode_inbox_message(message: InboxMessage) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "message_id": message.message_id,
            "sent_at": _iso(message.sent_at),
            "sender": message.sender,
            "text": message.text,
        }
        | ({} if message.patient_id is None else {"patient_id": message.patient_id})
    )


def encode_receipt(receipt: InboxReceipt) -> bytes:
    return _dumps(
        {
            "v": VERSION,
            "message_id": receipt.message_id,
            "state": str(receipt.state),
            "at": _iso(receipt.at),
        }
        | ({} if receipt.receipt_id is None else {"receipt_id": receipt.receipt_id})
    )


def encode_follow_up_request(request: FollowUpRequest) -> bytes:
    body: dict[str, Any] = {
        "v": VERSION,
        "request_id": request.request_id,
        "gateway_id": request.gateway_id,
        "patient_id": request.patient_id,
        "kind": str(request.kind),
        "at": _iso(request.at),
    }
    if request.note is not None:
        body["note"] = request.note
    if request.in_reply_to is not None:
        body["in_reply_to"] = request.in_reply_to
    return _dumps(body)


# --------------------------------------------------------------------------------------------
# Parsing


def _load_object(payload: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(payload)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, integers of 4300+ digits
        raise ContractError("bad_json", f"payload is not JSON: {exc}") from None
    except RecursionError:
        raise ContractError("bad_json", "payload nests too deeply") from None
    if not isinstance(obj, dict):
        raise ContractError("bad_json", "payload is not a JSON object")
    version = obj.get("v")
    if version != VERSION or isinstance(version, bool):
        raise ContractError("unknown_version", f"schema version {version!r}, expected {VERSION}")
    return obj


def _field(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], where: str) -> Any:
    if name not in obj:
        raise ContractError("missing_field", f"{where}: {name} is missing")
    value = obj[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ContractError("bad_field", f"{where}: {name} has the wrong type")
    return value


def _text(obj: dict[str, Any], name: str, where: str, max_length: int = 10_000) -> str:
    """A string that any database and log can hold: no NUL, no lone surrogate, bounded."""
    value = _field(obj, name, str, where)
    if len(value) > max_length or "\x00" in value:
        raise ContractError("bad_field", f"{where}: {name} is too long or holds a NUL")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ContractError("bad_field", f"{where}: {name} is not valid Unicode") from None
    return value


def _identifier(obj: dict[str, Any], name: str, where: str) -> str:
    value = _field(obj, name, str, where)
    if not value or len(value) > MAX_ID_LENGTH or not value.isprintable():
        raise ContractError("bad_field", f"{where}: {name} must be 1-{MAX_ID_LENGTH} printable")
    return value


def _uuid(obj: dict[str, Any], name: str, where: str) -> str:
    value = _field(obj, name, str, where)
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ContractError("bad_field", f"{where}: {name} is not a UUID") from None


def _timestamp(obj: dict[str, Any], name: str, where: str) -> datetime:
    """An ISO 8601 time with an offset of at most 14 h, between 2000 and 2100."""
    value = _field(obj, name, str, where)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ContractError("bad_time", f"{where}: {name} is not ISO 8601") from None
    offset = parsed.utcoffset()
    if offset is None:
        raise ContractError("bad_time", f"{where}: {name} has no UTC offset")
    if abs(offset) > MAX_UTC_OFFSET:
        raise ContractError("bad_time", f"{where}: {name} has an offset beyond 14 hours")
    if not EARLIEST_TIME <= parsed <= LATEST_TIME:
        raise ContractError("bad_time", f"{where}: {name} is not between 2000 and 2100")
    return parsed


def _device_time(value: Any, where: str) -> DeviceTime | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ContractError("bad_field", f"{where}: device_time must be an object or null")
    parts = []
    for name, upper in (
        ("year", 9999),
        ("month", 12),
        ("day", 31),
        ("hours", 23),
        ("minutes", 59),
        ("seconds", 59),
    ):
        part = _field(value, name, int, f"{where}.device_time")
        if not 0 <= part <= upper:
            raise ContractError("bad_field", f"{where}: device_time.{name} out of range")
        parts.append(part)
    return DeviceTime(*parts)


def parse_reading(obj: Any, where: str = "reading") -> Reading:
    """One reading dict from a batch, fully validated, including its clinical plausibility."""
    if not isinstance(obj, dict):
        raise ContractError("bad_field", f"{where} is not an object")
    device = _field(obj, "device", dict, where)
    try:
        device_type = DeviceType(_field(device, "type", str, f"{where}.device"))
    except ValueError:
        raise ContractError("bad_field", f"{where}: unknown device type") from None
    try:
        time_source = TimeSource(_field(obj, "time_source", str, where))
    except ValueError:
        raise ContractError("bad_field", f"{where}: unknown time_source") from None
    raw = _field(obj, "raw", dict, where)
    raw_hex = _field(raw, "hex", str, f"{where}.raw")
    if len(raw_hex) > MAX_RAW_HEX_LENGTH:
        raise ContractError("bad_field", f"{where}: raw.hex longer than {MAX_RAW_HEX_LENGTH}")
    try:
        bytes.fromhex(raw_hex)
    except ValueError:
        raise ContractError("bad_field", f"{where}: raw.hex is not hexadecimal") from None
    seq = _field(obj, "seq", int, where)
    if seq < 0 or seq >= 2**63:
        raise ContractError("bad_field", f"{where}: seq out of range")

    loinc = _field(obj, "loinc", str, where)
    metric = metric_for(loinc)
    if metric is None:
        raise ContractError("unknown_metric", f"{where}: LOINC {loinc[:16]!r} is not carried")
    unit = _field(obj, "unit", str, where)
    if unit != metric.unit:
        raise ContractError(
            "unit_mismatch", f"{where}: {metric.key} must be in {metric.unit}, not {unit[:16]!r}"
        )
    value = _field(obj, "value", (int, float), where)
    try:
        value = float(value)
    except OverflowError:  # an integer beyond any float
        raise ContractError("not_finite", f"{where}: value is not a finite number") from None
    if not math.isfinite(value):
        raise ContractError("not_finite", f"{where}: value is not a finite number")
    if not metric.plausible_min <= value <= metric.plausible_max:
        raise ContractError(
            "implausible_value",
            f"{where}: {metric.key} {value} {unit} outside "
            f"{metric.plausible_min}-{metric.plausible_max}",
        )
    measured_at = _timestamp(obj, "measured_at", where)
    received_at = _timestamp(obj, "received_at", where)
    if measured_at > received_at + MAX_MEASURED_AFTER_RECEIVED:
        raise ContractError("bad_time", f"{where}: measured_at is after received_at")
    return Reading(
        reading_id=_uuid(obj, "reading_id", where),
        measurement_id=_uuid(obj, "measurement_id", where),
        seq=seq,
        patient_id=_identifier(obj, "patient_id", where),
        device_id=_identifier(device, "id", f"{where}.device"),
        device_type=device_type,
        loinc=loinc,
        unit=unit,
        value=value,
        measured_at=measured_at,
        time_source=time_source,
        received_at=received_at,
        characteristic=_identifier(raw, "characteristic", f"{where}.raw"),
        raw_hex=raw_hex.lower(),
        device_time=_device_time(obj.get("device_time"), where),
    )


def parse_reading_batch(payload: bytes) -> ParsedBatch:
    """A readings message. Raises ContractError when the envelope itself is unusable; bad
    readings inside a good envelope come back in ``rejected``."""
    obj = _load_object(payload)
    gateway_id = _field(obj, "gateway_id", str, "message")
    if not GATEWAY_ID_PATTERN.fullmatch(gateway_id):
        raise ContractError("bad_field", "message: gateway_id is not a valid gateway id")
    sent_at = _timestamp(obj, "sent_at", "message")
    items = _field(obj, "readings", list, "message")
    if not 1 <= len(items) <= MAX_READINGS_PER_MESSAGE:
        raise ContractError(
            "bad_batch", f"message: readings must hold 1-{MAX_READINGS_PER_MESSAGE} items"
        )
    readings: list[Reading] = []
    rejected: list[RejectedReading] = []
    seen: set[str] = set()
    for index, item in enumerate(items):
        where = f"readings[{index}]"
        try:
            reading = parse_reading(item, where)
        except ContractError as exc:
            claimed = item.get("reading_id") if isinstance(item, dict) else None
            rejected.append(
                RejectedReading(
                    reading_id=_claimed_uuid(claimed),
                    reason=exc.reason,
                    detail=exc.detail,
                    raw=item,
                )
            )
            continue
        if reading.reading_id in seen:
            continue  # the same reading twice in one message counts once
        seen.add(reading.reading_id)
        readings.append(reading)
    return ParsedBatch(gateway_id, sent_at, tuple(readings), tuple(rejected))


def claimed_reading_ids(payload: bytes) -> list[str]:
    """The reading ids a message that failed to parse claims to carry (never raises).

    Lets ingest tell a gateway that readings it will never accept may leave its outbox.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return []
    items = obj.get("readings") if isinstance(obj, dict) else None
    if not isinstance(items, list):
        return []
    claimed = (_claimed_uuid(i.get("reading_id")) for i in items if isinstance(i, dict))
    return [reading_id for reading_id in claimed if reading_id]


def _claimed_uuid(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


def parse_ack(payload: bytes) -> Ack:
    obj = _load_object(payload)
    committed = _field(obj, "committed", list, "ack")
    rejected = _field(obj, "rejected", list, "ack")
    if not all(isinstance(i, str) for i in committed):
        raise ContractError("bad_field", "ack: committed must be a list of ids")
    rejections = []
    for item in rejected:
        if not isinstance(item, dict):
            raise ContractError("bad_field", "ack: rejected items must be objects")
        rejections.append(
            AckRejection(_text(item, "reading_id", "ack", 64), _text(item, "reason", "ack", 64))
        )
    return Ack(_identifier(obj, "gateway_id", "ack"), tuple(committed), tuple(rejections))


def _warnings(value: Any) -> tuple[str, ...]:
    """Optional status warnings: short identifiers; anything else is dropped."""
    if not isinstance(value, list):
        return ()
    return tuple(w for w in value[:16] if isinstance(w, str) and GATEWAY_ID_PATTERN.fullmatch(w))


def _count_or_none(value: Any, upper: int) -> int | None:
    """An optional informative count: kept when it is an integer in 0..upper, else dropped."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= upper:
        return value
    return None


def parse_status(payload: bytes) -> GatewayStatus:
    obj = _load_object(payload)
    try:
        state = GatewayState(_field(obj, "state", str, "status"))
    except ValueError:
        raise ContractError("bad_field", "status: unknown state") from None
    items = obj.get("devices") or []
    if not isinstance(items, list):
        raise ContractError("bad_field", "status: devices must be a list")
    devices = []
    for item in items:
        if not isinstance(item, dict):
            raise ContractError("bad_field", "status: devices must be objects")
        try:
            device_type = DeviceType(_field(item, "type", str, "status.device"))
        except ValueError:
            raise ContractError("bad_field", "status: unknown device type") from None
        last_seen = item.get("last_seen")
        battery = item.get("battery_percent")
        devices.append(
            DeviceStatus(
                device_id=_identifier(item, "id", "status.device"),
                device_type=device_type,
                last_seen=None if last_seen is None else _timestamp(item, "last_seen", "status"),
                battery_percent=_count_or_none(battery, 100),
            )
        )
    pending = obj.get("outbox_pending")
    return GatewayStatus(
        gateway_id=_identifier(obj, "gateway_id", "status"),
        state=state,
        at=_timestamp(obj, "at", "status") if "at" in obj else None,
        software=_text(obj, "software", "status", 100) if "software" in obj else None,
        outbox_pending=_count_or_none(pending, 2**31 - 1),
        warnings=_warnings(obj.get("warnings")),
        devices=tuple(devices),
    )


def parse_inbox_message(payload: bytes) -> InboxMessage:
    obj = _load_object(payload)
    return InboxMessage(
        message_id=_identifier(obj, "message_id", "inbox"),
        sent_at=_timestamp(obj, "sent_at", "inbox"),
        sender=_text(obj, "sender", "inbox", 200),
        text=_text(obj, "text", "inbox"),
        patient_id=_optional(obj, "patient_id", "inbox", _identifier),
    )


def parse_receipt(payload: bytes) -> InboxReceipt:
    obj = _load_object(payload)
    try:
        state = ReceiptState(_field(obj, "state", str, "receipt"))
    except ValueError:
        raise ContractError("bad_field", "receipt: unknown state") from None
    return InboxReceipt(
        message_id=_identifier(obj, "message_id", "receipt"),
        state=state,
        at=_timestamp(obj, "at", "receipt"),
        receipt_id=_optional(obj, "receipt_id", "receipt", _uuid),
    )


def parse_follow_up_request(payload: bytes) -> FollowUpRequest:
    obj = _load_object(payload)
    try:
        kind = FollowUpKind(_field(obj, "kind", str, "request"))
    except ValueError:
        raise ContractError("bad_field", "request: unknown kind") from None
    note = obj.get("note")
    return FollowUpRequest(
        request_id=_uuid(obj, "request_id", "request"),
        gateway_id=_identifier(obj, "gateway_id", "request"),
        patient_id=_identifier(obj, "patient_id", "request"),
        kind=kind,
        at=_timestamp(obj, "at", "request"),
        note=None if note is None else _text(obj, "note", "request", MAX_NOTE_LENGTH),
        in_reply_to=_optional(obj, "in_reply_to", "request", _identifier),
    )


def _optional(
    obj: dict[str, Any], name: str, where: str, parse: Callable[[dict[str, Any], str, str], str]
) -> str | None:
    """An optional field: absent or null is None, anything else must parse."""
    if obj.get(name) is None:
        return None
    return parse(obj, name, where)
