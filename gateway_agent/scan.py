"""Finding nearby health devices: a scan that keeps those advertising a health service.

Used by ``python -m gateway_agent scan`` before enrolling a device. A device is kept when one
of its advertised service UUIDs is the primary service of a profile the gateway reads
(:data:`gateway_agent.ble.profiles.PROFILES`). Many devices advertise only while in pairing
mode or just after a measurement, so the scan lasts ``timeout_s`` and merges everything each
device advertised in that time.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bleak import BleakScanner

from carewatch_contract.messages import DeviceType
from gateway_agent.ble.backend_config import PLATFORM, BleBackends
from gateway_agent.ble.profiles import (
    BLOOD_PRESSURE_SERVICE,
    BODY_COMPOSITION_SERVICE,
    GLUCOSE_SERVICE,
    HEALTH_THERMOMETER_SERVICE,
    HEART_RATE_SERVICE,
    PROFILES,
    PULSE_OXIMETER_SERVICE,
    WEIGHT_SCALE_SERVICE,
    short_uuid,
)

if TYPE_CHECKING:
    from bleak.backends.device import BLEDevice
    from bleak.backends.scanner import AdvertisementData

log = logging.getLogger(__name__)

SERVICE_NAMES: dict[int, str] = {
    BLOOD_PRESSURE_SERVICE: "Blood Pressure",
    HEALTH_THERMOMETER_SERVICE: "Health Thermometer",
    GLUCOSE_SERVICE: "Glucose",
    HEART_RATE_SERVICE: "Heart Rate",
    BODY_COMPOSITION_SERVICE: "Body Composition",
    WEIGHT_SCALE_SERVICE: "Weight Scale",
    PULSE_OXIMETER_SERVICE: "Pulse Oximeter",
}
"""SIG names of the health services the gateway reads (a test checks none is missing)."""

HEALTH_SERVICES: dict[int, tuple[DeviceType, ...]] = {}
"""Each health service's 16-bit UUID and the device types whose profile advertises it."""
for _profile in PROFILES.values():
    for _service in _profile.services:
        HEALTH_SERVICES[_service] = (*HEALTH_SERVICES.get(_service, ()), _profile.device_type)


def service_label(uuid16: int) -> str:
    """ "Blood Pressure (0x1810)"."""
    return f"{SERVICE_NAMES.get(uuid16, 'Unknown service')} (0x{uuid16:04X})"


@dataclass(frozen=True, slots=True)
class FoundDevice:
    """A nearby device advertising at least one health service."""

    address: str
    """Upper case, as the registry keeps it."""
    name: str | None
    services: list[str]
    """The health services it advertises, e.g. ["Blood Pressure (0x1810)"]."""
    rssi: int | None
    """Strongest signal seen during the scan (dBm), when the platform reports one."""
    device_types: list[DeviceType] = field(default_factory=list)
    """The device types those services suggest (the ``--type`` to enroll it with)."""


def health_services(service_uuids: list[str]) -> list[int]:
    """The 16-bit health services among advertised 128-bit UUID strings, in order, once."""
    found: list[int] = []
    for uuid in service_uuids:
        short = short_uuid(uuid)
        if short is None:
            continue
        value = int(short, 16)
        if value in HEALTH_SERVICES and value not in found:
            found.append(value)
    return found


@dataclass(slots=True)
class _Seen:
    name: str | None = None
    services: list[int] = field(default_factory=list)
    rssi: int | None = None


async def scan_health_devices(
    *, timeout_s: float, backend: BleBackends | None = None
) -> list[FoundDevice]:
    """Scan for ``timeout_s`` seconds; the devices that advertised a health service.

    Strongest signal first. ``backend``: the bleak backend classes
    (``backend_config.backends_from_env``); None = the platform's. Bluetooth failures (no
    adapter, adapter off) raise bleak's errors: the caller reports them.
    """
    seen: dict[str, _Seen] = {}

    def on_advertisement(device: BLEDevice, advertisement: AdvertisementData) -> None:
        services = health_services(advertisement.service_uuids)
        key = device.address.upper()
        entry = seen.get(key)
        if entry is None:
            if not services:
                return
            entry = seen[key] = _Seen()
        entry.name = advertisement.local_name or device.name or entry.name
        entry.services += [s for s in services if s not in entry.services]
        rssi = advertisement.rssi
        if rssi is not None and (entry.rssi is None or rssi > entry.rssi):
            entry.rssi = rssi

    scanner_backend = (backend or PLATFORM).scanner
    async with BleakScanner(on_advertisement, backend=scanner_backend):
        await asyncio.sleep(timeout_s)
    found = [
        FoundDevice(
            address=address,
            name=entry.name,
            services=[service_label(s) for s in entry.services],
            rssi=entry.rssi,
            device_types=list(dict.fromkeys(t for s in entry.services for t in HEALTH_SERVICES[s])),
        )
        for address, entry in seen.items()
    ]
    found.sort(key=lambda d: (d.rssi is None, -(d.rssi or 0), d.address))
    log.info("scan: %d health device(s) seen in %.1f s", len(found), timeout_s)
    return found
