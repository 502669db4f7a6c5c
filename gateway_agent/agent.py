"""The gateway's core path: device bytes in, numbered readings in the outbox out.

Bluetooth and simulated devices both end here, through the same decoder:
``accept(device, characteristic, payload)`` decodes the characteristic value, turns it into
canonical observations (LOINC, UCUM), stamps each with its clinical time, and stores the
readings of the measurement atomically in the outbox. Bytes that fail to decode are kept for
inspection and never published.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import DeviceStatus, DeviceTime, Reading, TimeSource
from gateway_agent.devices import EnrolledDevice
from gateway_agent.gatt import GattDecodeError, decode
from gateway_agent.gatt.date_time import DateTimeFields
from gateway_agent.observations import measurement_time, observations_from
from gateway_agent.outbox import Outbox

log = logging.getLogger(__name__)

#: Namespace of the ids of stored records (UUIDv5 over device, characteristic and bytes).
STORED_RECORD_NAMESPACE = uuid.UUID("6b1d2c1e-5c1a-4f0e-9d5e-2f3a7c4b8e10")


@dataclass(frozen=True, slots=True)
class ClinicalTime:
    measured_at: datetime
    source: TimeSource


def clinical_time(
    device_time: DateTimeFields | None,
    *,
    received_at: datetime,
    tz: tzinfo,
    max_drift_s: float,
    stored_record: bool,
) -> ClinicalTime:
    """When the measurement was taken, as well as the gateway can tell.

    The device's clock is trusted when it is known and, for a live measurement, within
    ``max_drift_s`` of the gateway's clock. A stored record replayed later keeps its own time
    (it may be days old), unless that time lies in the future. Otherwise the gateway's receive
    time is used and the reading says so.
    """
    device_moment = device_time.to_datetime(tz) if device_time is not None else None
    if device_moment is not None:
        offset_s = (device_moment - received_at).total_seconds()
        trusted = offset_s <= max_drift_s if stored_record else abs(offset_s) <= max_drift_s
        if trusted:
            return ClinicalTime(device_moment.astimezone(UTC), TimeSource.DEVICE)
    return ClinicalTime(received_at.astimezone(UTC), TimeSource.GATEWAY)


def build_readings(
    device: EnrolledDevice,
    characteristic: str,
    payload: bytes,
    *,
    received_at: datetime,
    tz: tzinfo,
    max_drift_s: float,
    stored_record: bool = False,
) -> list[Reading]:
    """The readings of one characteristic value (unnumbered: ``seq`` is 0 until stored).

    A live measurement gets fresh ids. A stored record (a device's memory, sent again on
    every connection until cleared) gets ids derived from the device and the exact bytes, so
    that the same record replayed twice is the same reading and is stored once.

    Raises GattDecodeError when the bytes are not a valid value of the characteristic.
    """
    decoded = decode(characteristic, payload)
    observations = observations_from(decoded)
    if not observations:
        return []
    device_fields = measurement_time(decoded)
    when = clinical_time(
        device_fields,
        received_at=received_at,
        tz=tz,
        max_drift_s=max_drift_s,
        stored_record=stored_record,
    )
    device_time = (
        None
        if device_fields is None
        else DeviceTime(
            device_fields.year,
            device_fields.month,
            device_fields.day,
            device_fields.hours,
            device_fields.minutes,
            device_fields.seconds,
        )
    )
    if stored_record:
        record = f"{device.device_id}|{characteristic.upper()}|{payload.hex()}"
        measurement_id = str(uuid.uuid5(STORED_RECORD_NAMESPACE, record))
    else:
        measurement_id = new_uuid7()
    return [
        Reading(
            reading_id=str(uuid.uuid5(uuid.UUID(measurement_id), obs.loinc))
            if stored_record
            else new_uuid7(),
            measurement_id=measurement_id,
            seq=0,
            patient_id=device.patient_id,
            device_id=device.device_id,
            device_type=device.device_type,
            loinc=obs.loinc,
            unit=obs.unit,
            value=obs.value,
            measured_at=when.measured_at,
            time_source=when.source,
            received_at=received_at.astimezone(UTC),
            characteristic=characteristic.upper(),
            raw_hex=payload.hex(),
            device_time=device_time,
        )
        for obs in observations
    ]


class GatewayAgent:
    """Accepts characteristic values from any source and keeps the devices' liveness."""

    def __init__(
        self,
        outbox: Outbox,
        *,
        tz: tzinfo | None = None,
        max_drift_s: float = 600.0,
        on_new_readings: Callable[[], None] | None = None,
    ) -> None:
        self._outbox = outbox
        self._tz = tz or datetime.now().astimezone().tzinfo or UTC
        self._max_drift_s = max_drift_s
        self._on_new_readings = on_new_readings
        self._devices: dict[str, DeviceStatus] = {}
        self._lock = threading.Lock()

    @property
    def timezone(self) -> tzinfo:
        return self._tz

    def accept(
        self,
        device: EnrolledDevice,
        characteristic: str,
        payload: bytes,
        *,
        received_at: datetime | None = None,
        stored_record: bool = False,
        remember: tuple[str, int] | None = None,
    ) -> list[Reading]:
        """Decode and store one characteristic value; return the readings stored.

        ``remember``: a named progress number (e.g. the last record fetched from a device's
        memory) stored atomically with the readings, or with nothing if the bytes are bad.
        """
        received_at = received_at or datetime.now(UTC)
        try:
            readings = build_readings(
                device,
                characteristic,
                payload,
                received_at=received_at,
                tz=self._tz,
                max_drift_s=self._max_drift_s,
                stored_record=stored_record,
            )
        except GattDecodeError as exc:
            self._seen(device, received_at, with_value=False)
            log.warning(
                "device %s sent an undecodable %s value (%d bytes): %s; kept for inspection",
                device.device_id,
                characteristic,
                len(payload),
                exc,
            )
            self._outbox.record_undecodable(
                device_id=device.device_id,
                characteristic=characteristic,
                payload=payload,
                error=str(exc),
            )
            if remember is not None:
                self._outbox.remember(*remember)
            return []
        stored: list[Reading] = []
        try:
            stored = self._outbox.add(readings, remember=remember)
        finally:  # heard from, even if storing failed; a "value" only when it gave new readings
            self._seen(device, received_at, with_value=bool(stored))
        if stored and self._on_new_readings is not None:
            self._on_new_readings()
        return stored

    def record_battery(self, device: EnrolledDevice, percent: int) -> None:
        """Keep the device's battery level, in memory (heartbeat) and in the outbox (status)."""
        with self._lock:
            current = self._devices.get(device.device_id)
            self._devices[device.device_id] = DeviceStatus(
                device.device_id,
                device.device_type,
                current.last_seen if current else None,
                max(0, min(100, percent)),
            )
        self._persist(self._outbox.record_battery, device.device_id, percent)

    def device_statuses(self) -> tuple[DeviceStatus, ...]:
        with self._lock:
            return tuple(self._devices.values())

    def _seen(self, device: EnrolledDevice, at: datetime, *, with_value: bool) -> None:
        """The device was heard from at ``at``; ``with_value``: its value gave readings."""
        with self._lock:
            current = self._devices.get(device.device_id)
            self._devices[device.device_id] = DeviceStatus(
                device.device_id,
                device.device_type,
                at,
                current.battery_percent if current else None,
            )
        self._persist(self._outbox.record_device_seen, device.device_id, at, with_value=with_value)

    @staticmethod
    def _persist(write: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        """Write a device's status to the outbox; a failure is logged, never raised.

        The status only feeds ``python -m gateway_agent status``: it must never keep a
        clinical reading from being stored (which would fail and raise on its own).
        """
        try:
            write(*args, **kwargs)
        except sqlite3.Error as exc:
            log.warning("could not record a device's status: %s", exc)
