"""What the gateway subscribes to on each kind of device: pure data, no Bluetooth import.

One :class:`DeviceProfile` per :class:`~carewatch_contract.messages.DeviceType`: the primary
service UUIDs the device advertises, and the characteristics the gateway subscribes to, with
how the standard profile delivers them (indicate or notify). Sources: ``/work/shared/GATT.md``
and the SIG profiles (BLS, WSS, BCS, HTS, GLS, PLXS, HRS).

UUIDs are kept as 16-bit SIG numbers; :func:`sig_uuid` gives bleak's lower-case 128-bit form
and :func:`short_uuid` turns a 128-bit SIG UUID back into the decoder's key ("2A35").
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from carewatch_contract.messages import DeviceType

SIG_BASE_UUID_SUFFIX = "-0000-1000-8000-00805f9b34fb"
"""The Bluetooth Base UUID after the 16-bit field: 0000xxxx-0000-1000-8000-00805f9b34fb."""


def sig_uuid(uuid16: int) -> str:
    """The full 128-bit form of a 16-bit SIG UUID, lower case as bleak reports it."""
    if not 0 <= uuid16 <= 0xFFFF:
        raise ValueError(f"not a 16-bit UUID: {uuid16!r}")
    return f"0000{uuid16:04x}{SIG_BASE_UUID_SUFFIX}"


def short_uuid(uuid: str) -> str | None:
    """ "2A35" for "00002a35-0000-1000-8000-00805f9b34fb" (any case); None if not a SIG UUID."""
    value = uuid.strip().lower()
    if len(value) == 36 and value.startswith("0000") and value.endswith(SIG_BASE_UUID_SUFFIX):
        return value[4:8].upper()
    return None


def uuid16_hex(uuid16: int) -> str:
    """The decoder's key for a 16-bit UUID: 0x2A35 -> "2A35"."""
    return f"{uuid16:04X}"


class Delivery(StrEnum):
    """How the standard profile sends a characteristic's values."""

    INDICATE = "indicate"
    """Acknowledged by the gateway's stack; devices keep the value until confirmed."""
    NOTIFY = "notify"
    """Unacknowledged; a value lost on the air is gone."""


@dataclass(frozen=True, slots=True)
class Subscription:
    """One characteristic the gateway subscribes to."""

    uuid16: int
    delivery: Delivery
    required: bool = True
    """False: subscribed when the device has it (e.g. PLX devices have spot-check,
    continuous or both)."""
    replays_stored: bool = False
    """True for measurement characteristics a device sends from its memory as soon as the
    gateway subscribes (cuffs, scales, thermometers, PLX spot-checks)."""

    @property
    def uuid(self) -> str:
        return sig_uuid(self.uuid16)

    @property
    def key(self) -> str:
        """The key the decoder and ``GatewayAgent.accept`` use ("2A35")."""
        return uuid16_hex(self.uuid16)


@dataclass(frozen=True, slots=True)
class DeviceProfile:
    device_type: DeviceType
    services: tuple[int, ...]
    """16-bit UUIDs of the primary services the device advertises."""
    subscriptions: tuple[Subscription, ...]
    uses_racp: bool = False
    """True when stored records are fetched with the Record Access Control Point (0x2A52)."""

    @property
    def service_uuids(self) -> tuple[str, ...]:
        return tuple(sig_uuid(u) for u in self.services)

    def subscription(self, uuid16: int) -> Subscription | None:
        return next((s for s in self.subscriptions if s.uuid16 == uuid16), None)


# 16-bit SIG numbers used here.
BLOOD_PRESSURE_SERVICE = 0x1810
HEALTH_THERMOMETER_SERVICE = 0x1809
GLUCOSE_SERVICE = 0x1808
HEART_RATE_SERVICE = 0x180D
BODY_COMPOSITION_SERVICE = 0x181B
WEIGHT_SCALE_SERVICE = 0x181D
PULSE_OXIMETER_SERVICE = 0x1822

BLOOD_PRESSURE_MEASUREMENT = 0x2A35
TEMPERATURE_MEASUREMENT = 0x2A1C
GLUCOSE_MEASUREMENT = 0x2A18
RECORD_ACCESS_CONTROL_POINT = 0x2A52
HEART_RATE_MEASUREMENT = 0x2A37
WEIGHT_MEASUREMENT = 0x2A9D
BODY_COMPOSITION_MEASUREMENT = 0x2A9C
PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
BATTERY_LEVEL = 0x2A19
CURRENT_TIME = 0x2A2B
"""Read (battery) and written (clock) on any device that has them; not subscribed to."""

_INDICATE = Delivery.INDICATE
_NOTIFY = Delivery.NOTIFY

PROFILES: dict[DeviceType, DeviceProfile] = {
    DeviceType.BLOOD_PRESSURE: DeviceProfile(
        DeviceType.BLOOD_PRESSURE,
        (BLOOD_PRESSURE_SERVICE,),
        (Subscription(BLOOD_PRESSURE_MEASUREMENT, _INDICATE, replays_stored=True),),
    ),
    DeviceType.WEIGHT_SCALE: DeviceProfile(
        DeviceType.WEIGHT_SCALE,
        (WEIGHT_SCALE_SERVICE,),
        (Subscription(WEIGHT_MEASUREMENT, _INDICATE, replays_stored=True),),
    ),
    DeviceType.BODY_COMPOSITION: DeviceProfile(
        DeviceType.BODY_COMPOSITION,
        (BODY_COMPOSITION_SERVICE,),
        (Subscription(BODY_COMPOSITION_MEASUREMENT, _INDICATE, replays_stored=True),),
    ),
    DeviceType.THERMOMETER: DeviceProfile(
        DeviceType.THERMOMETER,
        (HEALTH_THERMOMETER_SERVICE,),
        (Subscription(TEMPERATURE_MEASUREMENT, _INDICATE, replays_stored=True),),
    ),
    DeviceType.PULSE_OXIMETER: DeviceProfile(
        DeviceType.PULSE_OXIMETER,
        (PULSE_OXIMETER_SERVICE,),
        (
            Subscription(
                PLX_SPOT_CHECK_MEASUREMENT, _INDICATE, required=False, replays_stored=True
            ),
            Subscription(PLX_CONTINUOUS_MEASUREMENT, _NOTIFY, required=False),
        ),
    ),
    DeviceType.GLUCOSE_METER: DeviceProfile(
        DeviceType.GLUCOSE_METER,
        (GLUCOSE_SERVICE,),
        (
            Subscription(GLUCOSE_MEASUREMENT, _NOTIFY),
            Subscription(RECORD_ACCESS_CONTROL_POINT, _INDICATE),
        ),
        uses_racp=True,
    ),
    DeviceType.HEART_RATE: DeviceProfile(
        DeviceType.HEART_RATE,
        (HEART_RATE_SERVICE,),
        (Subscription(HEART_RATE_MEASUREMENT, _NOTIFY),),
    ),
}
"""Every DeviceType's profile (a test checks that none is missing)."""


def profile_for(device_type: DeviceType) -> DeviceProfile:
    try:
        return PROFILES[device_type]
    except KeyError:
        raise ValueError(f"no Bluetooth profile for device type {device_type!r}") from None
