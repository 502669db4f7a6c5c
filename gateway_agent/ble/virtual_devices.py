"""Virtual Bluetooth LE health devices on a Bumble link, speaking the standard profiles.

Each virtual device is a Bumble GATT server with the SIG service and characteristic UUIDs,
properties and procedures of a real one; the values it sends are bytes given by the test
(normally from ``tests/data/gatt_vectors.json``), sent unchanged. Put one on the air with
``await air.add(VirtualBloodPressureCuff(address, measurements=[...]))``.

- :class:`VirtualPeripheral`, the base: name, address, advertising of the primary health
  service only; besides the health services of a subclass (:meth:`health_services`) it
  exposes the Battery Service (0x180F) and the Current Time Service (0x1805) unless told not
  to, enforces the ATT read/write permissions of its characteristics (Bumble 0.0.236 does
  not), and asks for a larger ATT MTU right after each connection so that long values (body
  composition) are not truncated at 20 bytes.
- :class:`VirtualMemoryDevice`: devices that indicate their stored measurements as soon as
  the client enables indications, dropping each one only once confirmed:
  :class:`VirtualBloodPressureCuff`, :class:`VirtualWeightScale`,
  :class:`VirtualBodyCompositionScale`, :class:`VirtualThermometer` and the spot-checks of
  :class:`VirtualPulseOximeter`.
- :class:`NotificationStream`: values notified at an interval while subscribed
  (:class:`VirtualHeartRateMonitor`, PLX continuous measurements).
- :class:`VirtualGlucoseMeter`: records fetched with the Record Access Control Point.

Rule for every write callback here: return ``None`` and run the procedure in a background
task. Bumble awaits whatever a write callback returns before it sends the ATT Write
Response, so returning the task would hold the response back until the whole procedure has
been sent (and a procedure that waits on the client deadlocks).

Procedures that belong to a connection (:meth:`VirtualPeripheral.start_procedure`) are
cancelled when it ends. Bumble never resolves an indication that was in flight when the link
dropped (its waiter would sit there for the 30 s GATT timeout), so the device fails it with
:class:`Disconnected`; and a confirmation that did arrive still counts when the procedure is
cancelled before it could run again (the memory devices record it in a shielded task).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn, TypedDict, Unpack

from bumble import att
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device, Peer
from bumble.gatt import Characteristic, CharacteristicValue, Service

from gateway_agent.gatt.date_time import read_date_time
from gateway_agent.gatt.encode import (
    encode_date_time,
    racp_number_of_records_response,
    racp_response,
)
from gateway_agent.gatt.errors import GattDecodeError
from gateway_agent.gatt.glucose import (
    RacpFilterType,
    RacpOpCode,
    RacpOperator,
    RacpResponseCode,
    decode_glucose_measurement,
)

logger = logging.getLogger(__name__)

# Health services and their characteristics (16-bit SIG numbers).
BLOOD_PRESSURE_SERVICE = 0x1810
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
BLOOD_PRESSURE_FEATURE = 0x2A49
GLUCOSE_SERVICE = 0x1808
GLUCOSE_MEASUREMENT = 0x2A18
GLUCOSE_FEATURE = 0x2A51
RECORD_ACCESS_CONTROL_POINT = 0x2A52
WEIGHT_SCALE_SERVICE = 0x181D
WEIGHT_MEASUREMENT = 0x2A9D
WEIGHT_SCALE_FEATURE = 0x2A9E
BODY_COMPOSITION_SERVICE = 0x181B
BODY_COMPOSITION_MEASUREMENT = 0x2A9C
BODY_COMPOSITION_FEATURE = 0x2A9B
HEALTH_THERMOMETER_SERVICE = 0x1809
TEMPERATURE_MEASUREMENT = 0x2A1C
PULSE_OXIMETER_SERVICE = 0x1822
PLX_SPOT_CHECK_MEASUREMENT = 0x2A5E
PLX_CONTINUOUS_MEASUREMENT = 0x2A5F
PLX_FEATURES = 0x2A60
HEART_RATE_SERVICE = 0x180D
HEART_RATE_MEASUREMENT = 0x2A37
BODY_SENSOR_LOCATION = 0x2A38

# Services every device may have.
BATTERY_SERVICE = 0x180F
BATTERY_LEVEL = 0x2A19
CURRENT_TIME_SERVICE = 0x1805
CURRENT_TIME = 0x2A2B

CURRENT_TIME_SIZE = 10
"""Current Time: Date Time (7), day of week, fractions256, adjust reason."""
CTS_DATA_FIELD_IGNORED = 0x80
"""CTS application error: the server ignored a field it cannot accept (here: a date or time
that does not exist)."""
ADJUST_REASON_MANUAL = 0x01
"""Current Time adjust reason bit 0: manual time update."""

ADVERTISING_INTERVAL_MS = 20.0
"""Short, so that scans and connections on the in-process link take milliseconds."""
DEFAULT_ATT_MTU = 247
"""The ATT MTU a device asks for after connecting (a common choice of nRF-based devices)."""
DEFAULT_NOTIFY_INTERVAL_S = 0.1
"""Between two streamed notifications (real heart-rate monitors: about 1 s)."""

_P = Characteristic.Properties
_NO_ACCESS = Characteristic.Permissions(0)
"""Notify/indicate-only values: not readable or writable by ATT requests."""
_READABLE = Characteristic.Permissions.READABLE
_WRITEABLE = Characteristic.Permissions.WRITEABLE
_CCCD_NOTIFY = 0x0001
_CCCD_INDICATE = 0x0002


def _uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


def _local_now() -> datetime:
    return datetime.now()  # noqa: DTZ005 - a device clock is naive local time


class Disconnected(Exception):
    """Ends a procedure quietly because its link is gone.

    Raised after the device hung up (:meth:`VirtualPeripheral.hang_up`), and into an
    indication still waiting for its confirmation when the link dropped.
    """


class _PermissionCheckedValue(CharacteristicValue[bytes]):
    """A characteristic's value behind the ATT read/write permission check Bumble skips.

    Bumble 0.0.236 does not check ``Attribute.Permissions.READABLE/WRITEABLE`` ("TODO: check
    permissions" in ``gatt_server``): a write to a read-only bytes value silently replaces
    it, a write to a read-only callback value gets no response at all (the client waits for
    the 30 s GATT timeout), and a notify-only value reads as empty. Real stacks answer Read
    / Write Not Permitted (0x02 / 0x03); so do we.
    """

    def __init__(self, characteristic: Characteristic[bytes]) -> None:
        self._inner: Any = characteristic.value
        self._permissions = characteristic.permissions
        # Bumble's hints say "returns bytes" or "returns an awaitable", not "either".
        super().__init__(read=self._read_checked, write=self._write_checked)  # type: ignore[arg-type]

    def _read_checked(self, connection: Connection) -> bytes | Awaitable[bytes]:
        if not self._permissions & _READABLE:
            raise att.ATT_Error(att.ErrorCode.READ_NOT_PERMITTED)
        if isinstance(self._inner, att.AttributeValue):
            return self._inner.read(connection)
        return bytes(self._inner)

    def _write_checked(self, connection: Connection, value: bytes) -> Awaitable[None] | None:
        if not self._permissions & _WRITEABLE:
            raise att.ATT_Error(att.ErrorCode.WRITE_NOT_PERMITTED)
        if isinstance(self._inner, att.AttributeValue):
            return self._inner.write(connection, value)
        self._inner = bytes(value)
        return None


class PeripheralOptions(TypedDict, total=False):
    """Keyword options of every virtual device (see :class:`VirtualPeripheral`)."""

    battery_percent: int | None
    current_time: bool
    current_time_writable: bool
    clock: datetime | None
    att_mtu: int | None


class VirtualPeripheral:
    """Base: a named, addressed Bumble peripheral that advertises its primary service.

    Subclasses provide :meth:`health_services`; the base adds the Battery Service (0x180F,
    Battery Level 0x2A19 read/notify, one byte percent) unless ``battery_percent`` is None,
    and the Current Time Service (0x1805, Current Time 0x2A2B read/write/notify, or
    read/notify when ``current_time_writable`` is False) unless ``current_time`` is False.

    The device's clock is naive local device time, kept as an offset from the host's clock:
    :attr:`clock` starts at ``clock`` (None = the host's local time) and runs on; a write of
    0x2A2B sets it (date, time, fractions256 and adjust reason; the day of week read back is
    computed from the date) and is kept in :attr:`time_writes`. A write of the wrong length
    gets the ATT error Invalid Attribute Value Length (0x0D), one that is not a real date and
    time the CTS error Data Field Ignored (0x80); neither is kept.

    ATT permissions are enforced for every characteristic of :meth:`services` (Bumble
    0.0.236 does not): reading a notify/indicate-only value is Read Not Permitted (0x02),
    writing a value without the WRITEABLE permission Write Not Permitted (0x03).

    With ``att_mtu`` (default 247) the device asks the central for that ATT MTU right after
    each connection, before it sends anything; None = it never asks (23 unless the central
    does). Bumble truncates longer notifications and indications to MTU - 3 bytes silently.
    """

    def __init__(
        self,
        address: str,
        name: str,
        service_uuid: int,
        *,
        battery_percent: int | None = 100,
        current_time: bool = True,
        current_time_writable: bool = True,
        clock: datetime | None = None,
        att_mtu: int | None = DEFAULT_ATT_MTU,
    ) -> None:
        if att_mtu is not None and not att.ATT_DEFAULT_MTU <= att_mtu <= 517:
            raise ValueError(f"att_mtu {att_mtu} is outside 23..517")
        self.address = address
        self.name = name
        self.service_uuid = service_uuid
        self.att_mtu = att_mtu
        self._device: Device | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._connections: dict[Connection, dict[str, asyncio.Task[None]]] = {}
        """The live connections, each with its running procedures by key."""
        self._mtu_exchanges: dict[Connection, asyncio.Task[None]] = {}

        self._battery_percent = 0
        self.battery_level: Characteristic[bytes] | None = None
        if battery_percent is not None:
            self.battery_percent = battery_percent
            self.battery_level = Characteristic(
                _uuid16(BATTERY_LEVEL),
                _P.READ | _P.NOTIFY,
                _READABLE,
                CharacteristicValue[bytes](read=lambda _: self.battery_value()),
            )

        self._clock_offset = timedelta(0)
        self.clock = clock if clock is not None else _local_now()
        self.adjust_reason = 0
        self.time_writes: list[bytes] = []
        self.current_time: Characteristic[bytes] | None = None
        if current_time:
            self.current_time = Characteristic(
                _uuid16(CURRENT_TIME),
                _P.READ | _P.NOTIFY | (_P.WRITE if current_time_writable else _P(0)),
                _READABLE | (_WRITEABLE if current_time_writable else _NO_ACCESS),
                CharacteristicValue[bytes](
                    read=lambda _: self.current_time_value(), write=self._on_current_time_write
                ),
            )

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError(f"{self.name} is not on the air yet")
        return self._device

    # GATT database

    def attach(self, device: Device) -> None:
        """Called by VirtualAir.add: install the GATT database on ``device``."""
        self._device = device
        services = self.services()
        for service in services:
            for characteristic in service.characteristics:
                if isinstance(characteristic.value, bytes | att.AttributeValue) and not isinstance(
                    characteristic.value, _PermissionCheckedValue
                ):
                    characteristic.value = _PermissionCheckedValue(characteristic)
        device.add_services(services)
        device.on(Device.EVENT_CONNECTION, self._on_connection)

    def services(self) -> list[Service]:
        """The whole GATT database: the health services, then battery and current time."""
        return [*self.health_services(), *self.common_services()]

    def health_services(self) -> list[Service]:
        """The device's own services (subclasses)."""
        raise NotImplementedError

    def common_services(self) -> list[Service]:
        """Battery and Current Time services, as configured."""
        services = []
        if self.battery_level is not None:
            services.append(Service(_uuid16(BATTERY_SERVICE), [self.battery_level]))
        if self.current_time is not None:
            services.append(Service(_uuid16(CURRENT_TIME_SERVICE), [self.current_time]))
        return services

    # Advertising

    def advertising_data(self) -> bytes:
        return bytes(
            AdvertisingData(
                [
                    (AdvertisingData.FLAGS, bytes([0x06])),  # LE general discoverable, no BR/EDR
                    (AdvertisingData.COMPLETE_LOCAL_NAME, self.name.encode()),
                    (
                        AdvertisingData.INCOMPLETE_LIST_OF_16_BIT_SERVICE_CLASS_UUIDS,
                        _uuid16(self.service_uuid).to_bytes(),
                    ),
                ]
            )
        )

    async def start_advertising(self) -> None:
        await self.device.start_advertising(
            auto_restart=True,  # advertise again after each disconnection, as devices do
            advertising_data=self.advertising_data(),
            advertising_interval_min=ADVERTISING_INTERVAL_MS,
            advertising_interval_max=ADVERTISING_INTERVAL_MS,
        )

    # Battery

    @property
    def battery_percent(self) -> int | None:
        """The Battery Level in percent; None when the device has no battery service."""
        return None if self.battery_level is None else self._battery_percent

    @battery_percent.setter
    def battery_percent(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise ValueError(f"battery level {percent} is outside 0..100 %")
        self._battery_percent = percent

    def battery_value(self) -> bytes:
        """The 0x2A19 value: one byte, percent."""
        return bytes((self._battery_percent,))

    async def set_battery(self, percent: int) -> None:
        """Change the battery level and notify the subscribed clients."""
        if self.battery_level is None:
            raise RuntimeError(f"{self.name} has no battery service")
        self.battery_percent = percent
        await self.device.notify_subscribers(self.battery_level, self.battery_value())

    # Current time

    @property
    def clock(self) -> datetime:
        """The device's clock now: naive local device time."""
        return _local_now() + self._clock_offset

    @clock.setter
    def clock(self, value: datetime) -> None:
        if value.tzinfo is not None:
            raise ValueError("a device clock is naive local time: give a naive datetime")
        self._clock_offset = value - _local_now()

    def current_time_value(self) -> bytes:
        """The 0x2A2B value of :attr:`clock`: Date Time, day of week (1 = Monday),
        fractions256, adjust reason."""
        now = self.clock
        fractions256 = now.microsecond * 256 // 1_000_000
        return encode_date_time(now) + bytes((now.isoweekday(), fractions256, self.adjust_reason))

    async def set_clock(
        self, clock: datetime, *, adjust_reason: int = ADJUST_REASON_MANUAL
    ) -> None:
        """Set the clock as the device's user would, notifying the subscribed clients."""
        if self.current_time is None:
            raise RuntimeError(f"{self.name} has no current time service")
        self.clock = clock
        self.adjust_reason = adjust_reason
        await self.device.notify_subscribers(self.current_time, self.current_time_value())

    def _on_current_time_write(self, connection: Connection, value: bytes) -> None:
        if len(value) != CURRENT_TIME_SIZE:
            raise att.ATT_Error(att.ErrorCode.INVALID_ATTRIBUTE_LENGTH)
        written = read_date_time(value, 0).to_datetime(UTC)
        if written is None:
            raise att.ATT_Error(CTS_DATA_FIELD_IGNORED)
        microsecond = value[8] * 1_000_000 // 256
        self.clock = written.replace(tzinfo=None, microsecond=microsecond)
        self.adjust_reason = value[9]
        self.time_writes.append(bytes(value))

    # Connections and procedures

    def _cccd(self, connection: Connection, characteristic: Characteristic[bytes]) -> int:
        value = self.device.gatt_server.read_cccd(connection, characteristic)
        return int.from_bytes(value, "little")

    def is_subscribed(
        self, connection: Connection, characteristic: Characteristic[bytes], *, indicate: bool
    ) -> bool:
        """Whether the client on ``connection`` enabled indications (or notifications)."""
        bit = _CCCD_INDICATE if indicate else _CCCD_NOTIFY
        return bool(self._cccd(connection, characteristic) & bit)

    def _on_connection(self, connection: Connection) -> None:
        self._connections[connection] = {}
        connection.on(
            connection.EVENT_DISCONNECTION, lambda _reason: self._on_disconnection(connection)
        )
        if self.att_mtu is not None and self.att_mtu > att.ATT_DEFAULT_MTU:
            self._mtu_exchanges[connection] = self.spawn(self._exchange_mtu(connection))

    async def _exchange_mtu(self, connection: Connection) -> None:
        assert self.att_mtu is not None
        await Peer(connection).request_mtu(self.att_mtu)

    async def mtu_exchanged(self, connection: Connection) -> None:
        """Wait until the MTU exchange this device started on ``connection`` has ended."""
        exchange = self._mtu_exchanges.get(connection)
        if exchange is not None:
            await asyncio.wait([exchange])

    def _on_disconnection(self, connection: Connection) -> None:
        # Bumble drops an indication still waiting for its confirmation without resolving
        # it (the waiter would sit there for the 30 s GATT timeout): fail it now. This
        # event comes before Bumble's gatt_server forgets the connection.
        in_flight = self.device.gatt_server.pending_confirmations.get(connection)
        if in_flight is not None and not in_flight.done():
            in_flight.set_exception(Disconnected(self.name))
        running = self._connections.pop(connection, {})
        exchange = self._mtu_exchanges.pop(connection, None)
        loop = asyncio.get_running_loop()
        # Soon, not now: other listeners of this event (Bumble's own disconnect() among
        # them) must see it before a task awaiting it is cancelled.
        for task in [*running.values(), *([exchange] if exchange else [])]:
            loop.call_soon(task.cancel)

    def start_procedure(
        self, connection: Connection, key: str, coroutine: Coroutine[Any, Any, None]
    ) -> bool:
        """Run ``coroutine`` as ``connection``'s procedure ``key``, cancelled when the
        connection ends.

        False (and the coroutine is not run) when that procedure is already running or the
        connection is gone.
        """
        running = self._connections.get(connection)
        # A finished task stays listed until its done callback runs (one loop step later).
        if running is None or (key in running and not running[key].done()):
            coroutine.close()
            return False
        task = self.spawn(coroutine)
        running[key] = task
        task.add_done_callback(lambda done: running.pop(key) if running.get(key) is done else None)
        return True

    def stop_procedure(self, connection: Connection, key: str) -> None:
        """Cancel ``connection``'s procedure ``key`` if it is running."""
        task = self._connections.get(connection, {}).get(key)
        if task is not None:
            asyncio.get_running_loop().call_soon(task.cancel)

    async def hang_up(self, connection: Connection) -> NoReturn:
        """Drop the link as the device does (if it is still up), ending the calling procedure."""
        if connection in self._connections:
            await connection.disconnect()
        raise Disconnected(self.name)

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run a procedure in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        error = task.exception()
        if error is not None and not isinstance(error, Disconnected):
            logger.error("%s: procedure failed: %r", self.name, error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


class VirtualMemoryDevice(VirtualPeripheral):
    """A device that indicates its stored measurements as soon as the client subscribes.

    Like real cuffs and scales: when the client enables indications on the measurement
    characteristic, the device indicates every value in :attr:`pending`, moving each one to
    :attr:`sent` only once the client confirmed it. With ``disconnect_after`` it hangs up as
    soon as that many values were confirmed on one connection (a device dropping the link
    mid-transfer: the rest stays pending and goes out on the next connection); with
    ``disconnect_when_done`` it hangs up once its memory is empty.
    """

    def __init__(
        self,
        address: str,
        name: str,
        service_uuid: int,
        measurement_uuid: int,
        measurements: Sequence[bytes],
        *,
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(address, name, service_uuid, **options)
        if disconnect_after is not None and disconnect_after < 0:
            raise ValueError(f"disconnect_after must be >= 0, not {disconnect_after}")
        self.pending: list[bytes] = list(measurements)
        self.sent: list[bytes] = []
        self.disconnect_when_done = disconnect_when_done
        self.disconnect_after = disconnect_after
        self.measurement: Characteristic[bytes] = Characteristic(
            _uuid16(measurement_uuid), _P.INDICATE, _NO_ACCESS, b""
        )
        self.measurement.on(Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)

    def add_measurement(self, value: bytes) -> None:
        """Store a new measurement (sent with the others on the next subscription)."""
        self.pending.append(value)

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if indicate:
            self.start_procedure(connection, "memory", self._send_stored(connection))
        else:
            self.stop_procedure(connection, "memory")

    async def _send_stored(self, connection: Connection) -> None:
        await self.mtu_exchanged(connection)
        confirmed = 0
        while True:
            if self.disconnect_after is not None and confirmed >= self.disconnect_after:
                await self.hang_up(connection)
            if not self.pending or not self.is_subscribed(
                connection, self.measurement, indicate=True
            ):
                break
            # Shielded: a confirmation that arrived counts even when the link ends (and
            # this procedure is cancelled) before this task gets to run again.
            await asyncio.shield(self.spawn(self._indicate_oldest(connection)))
            confirmed += 1
        if self.disconnect_when_done and not self.pending:
            await self.hang_up(connection)

    async def _indicate_oldest(self, connection: Connection) -> None:
        await self.device.indicate_subscriber(connection, self.measurement, self.pending[0])
        self.sent.append(self.pending.pop(0))  # removed only once confirmed


class VirtualBloodPressureCuff(VirtualMemoryDevice):
    """Blood Pressure Service 0x1810: 0x2A35 (indicate, from memory) and 0x2A49 (read)."""

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-BPM",
        feature: bytes = b"\x00\x00",
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(
            address,
            name,
            BLOOD_PRESSURE_SERVICE,
            BLOOD_PRESSURE_MEASUREMENT,
            measurements,
            disconnect_when_done=disconnect_when_done,
            disconnect_after=disconnect_after,
            **options,
        )
        self.feature = Characteristic(_uuid16(BLOOD_PRESSURE_FEATURE), _P.READ, _READABLE, feature)

    def health_services(self) -> list[Service]:
        return [Service(_uuid16(BLOOD_PRESSURE_SERVICE), [self.measurement, self.feature])]


class VirtualWeightScale(VirtualMemoryDevice):
    """Weight Scale Service 0x181D: 0x2A9D (indicate, from memory) and 0x2A9E (read, uint32)."""

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-WSC",
        feature: bytes = b"\x00\x00\x00\x00",
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(
            address,
            name,
            WEIGHT_SCALE_SERVICE,
            WEIGHT_MEASUREMENT,
            measurements,
            disconnect_when_done=disconnect_when_done,
            disconnect_after=disconnect_after,
            **options,
        )
        self.feature = Characteristic(_uuid16(WEIGHT_SCALE_FEATURE), _P.READ, _READABLE, feature)

    def health_services(self) -> list[Service]:
        return [Service(_uuid16(WEIGHT_SCALE_SERVICE), [self.measurement, self.feature])]


class VirtualBodyCompositionScale(VirtualMemoryDevice):
    """Body Composition Service 0x181B: 0x2A9C (indicate, from memory), 0x2A9B (read, uint32).

    Values up to MTU - 3 bytes go out whole (see ``att_mtu``); the device does not split a
    long measurement into the multi-packet form (flag b12) by itself.
    """

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-BCS",
        feature: bytes = b"\x00\x00\x00\x00",
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(
            address,
            name,
            BODY_COMPOSITION_SERVICE,
            BODY_COMPOSITION_MEASUREMENT,
            measurements,
            disconnect_when_done=disconnect_when_done,
            disconnect_after=disconnect_after,
            **options,
        )
        self.feature = Characteristic(
            _uuid16(BODY_COMPOSITION_FEATURE), _P.READ, _READABLE, feature
        )

    def health_services(self) -> list[Service]:
        return [Service(_uuid16(BODY_COMPOSITION_SERVICE), [self.measurement, self.feature])]


class VirtualThermometer(VirtualMemoryDevice):
    """Health Thermometer Service 0x1809: 0x2A1C Temperature Measurement (indicate, memory)."""

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-THM",
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(
            address,
            name,
            HEALTH_THERMOMETER_SERVICE,
            TEMPERATURE_MEASUREMENT,
            measurements,
            disconnect_when_done=disconnect_when_done,
            disconnect_after=disconnect_after,
            **options,
        )

    def health_services(self) -> list[Service]:
        return [Service(_uuid16(HEALTH_THERMOMETER_SERVICE), [self.measurement])]


class NotificationStream:
    """Notifies ``values`` on ``characteristic``, one every ``interval_s``, while subscribed.

    Each time a client enables notifications the stream starts again from the first value
    (the first one goes out at once), and stops after the last unless ``repeat``; disabling
    notifications or disconnecting stops it. Notifications are not confirmed: :attr:`notified`
    lists what was sent.
    """

    def __init__(
        self,
        peripheral: VirtualPeripheral,
        characteristic: Characteristic[bytes],
        values: Sequence[bytes],
        *,
        interval_s: float = DEFAULT_NOTIFY_INTERVAL_S,
        repeat: bool = False,
    ) -> None:
        if interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, not {interval_s}")
        self.peripheral = peripheral
        self.characteristic = characteristic
        self.values: list[bytes] = list(values)
        self.interval_s = interval_s
        self.repeat = repeat
        self.notified: list[bytes] = []
        self._key = f"notify {characteristic.uuid}"
        characteristic.on(Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if notify:
            self.peripheral.start_procedure(connection, self._key, self._run(connection))
        else:
            self.peripheral.stop_procedure(connection, self._key)

    async def _run(self, connection: Connection) -> None:
        peripheral = self.peripheral
        await peripheral.mtu_exchanged(connection)
        first = True
        while self.values:
            for value in list(self.values):
                if not first:
                    await asyncio.sleep(self.interval_s)
                first = False
                if not peripheral.is_subscribed(connection, self.characteristic, indicate=False):
                    return
                await peripheral.device.notify_subscriber(connection, self.characteristic, value)
                self.notified.append(value)
            if not self.repeat:
                return


class VirtualPulseOximeter(VirtualMemoryDevice):
    """Pulse Oximeter Service 0x1822: spot-checks and/or continuous measurements.

    0x2A5E PLX Spot-check Measurement (indicate; ``spot_checks`` sent from memory as
    :class:`VirtualMemoryDevice` does, when ``has_spot_check``), 0x2A5F PLX Continuous
    Measurement (notify; ``continuous`` streamed by :attr:`continuous_stream` every
    ``interval_s`` once subscribed, when ``has_continuous``), 0x2A60 PLX Features (read).
    """

    def __init__(
        self,
        address: str,
        *,
        spot_checks: Sequence[bytes] = (),
        continuous: Sequence[bytes] = (),
        has_spot_check: bool = True,
        has_continuous: bool = True,
        features: bytes = b"\x00\x00",
        interval_s: float = DEFAULT_NOTIFY_INTERVAL_S,
        repeat: bool = False,
        name: str = "CW-PLX",
        disconnect_when_done: bool = False,
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        if not (has_spot_check or has_continuous):
            raise ValueError("a PLX device has spot-check or continuous measurements, or both")
        if spot_checks and not has_spot_check:
            raise ValueError("spot_checks given to a device without 0x2A5E")
        if continuous and not has_continuous:
            raise ValueError("continuous values given to a device without 0x2A5F")
        super().__init__(
            address,
            name,
            PULSE_OXIMETER_SERVICE,
            PLX_SPOT_CHECK_MEASUREMENT,
            spot_checks,
            disconnect_when_done=disconnect_when_done,
            disconnect_after=disconnect_after,
            **options,
        )
        self.has_spot_check = has_spot_check
        self.has_continuous = has_continuous
        self.spot_check = self.measurement
        self.continuous_measurement: Characteristic[bytes] = Characteristic(
            _uuid16(PLX_CONTINUOUS_MEASUREMENT), _P.NOTIFY, _NO_ACCESS, b""
        )
        self.continuous_stream = NotificationStream(
            self, self.continuous_measurement, continuous, interval_s=interval_s, repeat=repeat
        )
        self.features = Characteristic(_uuid16(PLX_FEATURES), _P.READ, _READABLE, features)

    def health_services(self) -> list[Service]:
        characteristics = [
            *([self.spot_check] if self.has_spot_check else []),
            *([self.continuous_measurement] if self.has_continuous else []),
            self.features,
        ]
        return [Service(_uuid16(PULSE_OXIMETER_SERVICE), characteristics)]


class VirtualHeartRateMonitor(VirtualPeripheral):
    """Heart Rate Service 0x180D: 0x2A37 notified every ``interval_s`` once subscribed
    (:attr:`stream`), and 0x2A38 Body Sensor Location (read) unless it is None."""

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-HRM",
        body_sensor_location: int | None = 1,
        interval_s: float = DEFAULT_NOTIFY_INTERVAL_S,
        repeat: bool = False,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(address, name, HEART_RATE_SERVICE, **options)
        self.measurement: Characteristic[bytes] = Characteristic(
            _uuid16(HEART_RATE_MEASUREMENT), _P.NOTIFY, _NO_ACCESS, b""
        )
        self.body_sensor_location = (
            None
            if body_sensor_location is None
            else Characteristic(
                _uuid16(BODY_SENSOR_LOCATION), _P.READ, _READABLE, bytes((body_sensor_location,))
            )
        )
        self.stream = NotificationStream(
            self, self.measurement, measurements, interval_s=interval_s, repeat=repeat
        )

    def health_services(self) -> list[Service]:
        location = [self.body_sensor_location] if self.body_sensor_location else []
        return [Service(_uuid16(HEART_RATE_SERVICE), [self.measurement, *location])]


class VirtualGlucoseMeter(VirtualPeripheral):
    """Glucose Service with the Record Access Control Point procedure of the Glucose Profile.

    0x2A18 (notify), 0x2A51 (read), 0x2A52 RACP (write + indicate). Supported: Report Stored
    Records and Report Number of Stored Records with the operators All Records, Greater Than
    or Equal To (filter type 0x01, sequence number, uint16 LE) and Last Record (the most
    recently stored record). Matching records go out as 0x2A18 notifications, then the RACP
    response is indicated. Sequence numbers are read from the record bytes; records that do
    not decode never match a filter.

    Other op codes: Op Code Not Supported; Null or missing operator: Invalid Operator; other
    operators: Operator Not Supported; a malformed operand: Invalid Operand; a filter type
    other than sequence number: Operand Not Supported. A RACP write without indications
    enabled is ATT error 0xFD, one during a running procedure 0xFE.

    With ``disconnect_after`` the meter hangs up as soon as it has notified that many records
    in one procedure, without a RACP response. :meth:`replace_records` simulates a meter
    whose memory was cleared and whose sequence numbers restarted.
    """

    def __init__(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        name: str = "CW-GLU",
        feature: bytes = b"\x00\x00",
        disconnect_after: int | None = None,
        **options: Unpack[PeripheralOptions],
    ) -> None:
        super().__init__(address, name, GLUCOSE_SERVICE, **options)
        if disconnect_after is not None and disconnect_after < 0:
            raise ValueError(f"disconnect_after must be >= 0, not {disconnect_after}")
        self.records: list[bytes] = list(records)
        self.requests: list[bytes] = []
        self.disconnect_after = disconnect_after
        self._busy = False
        self.measurement: Characteristic[bytes] = Characteristic(
            _uuid16(GLUCOSE_MEASUREMENT), _P.NOTIFY, _NO_ACCESS, b""
        )
        self.feature = Characteristic(_uuid16(GLUCOSE_FEATURE), _P.READ, _READABLE, feature)
        self.racp: Characteristic[bytes] = Characteristic(
            _uuid16(RECORD_ACCESS_CONTROL_POINT),
            _P.WRITE | _P.INDICATE,
            _WRITEABLE,
            CharacteristicValue[bytes](write=self._on_racp_write),
        )

    def health_services(self) -> list[Service]:
        return [Service(_uuid16(GLUCOSE_SERVICE), [self.measurement, self.feature, self.racp])]

    def add_record(self, record: bytes) -> None:
        """Store a new record (the meter took a measurement)."""
        self.records.append(record)

    def replace_records(self, records: Sequence[bytes]) -> None:
        """Replace the whole memory: a meter that was cleared (or replaced) and whose
        sequence numbers restarted."""
        self.records = list(records)

    def _on_racp_write(self, connection: Connection, value: bytes) -> None:
        """Validate synchronously (ATT errors), then run the procedure in the background.

        Returns None on purpose: see the module docstring.
        """
        if not self._cccd(connection, self.racp) & _CCCD_INDICATE:
            raise att.ATT_Error(att.ErrorCode.CCCD_IMPROPERLY_CONFIGURED)
        if self._busy:
            raise att.ATT_Error(att.ErrorCode.PROCEDURE_ALREADY_IN_PROGRESS)
        self.requests.append(bytes(value))
        self._busy = True
        # One key per request: the previous one may still await its response's confirmation.
        key = f"racp {len(self.requests)}"
        if not self.start_procedure(connection, key, self._run_racp(connection, bytes(value))):
            self._busy = False

    async def _run_racp(self, connection: Connection, request: bytes) -> None:
        try:
            response = await self._answer(connection, request)
        finally:
            # The procedure ends with its response: the client may write the next request
            # as soon as it has it, possibly before the confirmation reaches this task.
            self._busy = False
        await self._indicate(connection, response)

    async def _answer(self, connection: Connection, request: bytes) -> bytes:
        """Notify the records ``request`` asks for; return the RACP response to indicate."""
        op_code = request[0] if request else 0
        if op_code not in (
            RacpOpCode.REPORT_STORED_RECORDS,
            RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS,
        ):
            return racp_response(
                request_op_code=op_code, response_code=RacpResponseCode.OP_CODE_NOT_SUPPORTED
            )
        selected = self._select(request)
        if isinstance(selected, RacpResponseCode):
            return racp_response(request_op_code=op_code, response_code=selected)
        if op_code == RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            return racp_number_of_records_response(number_of_records=len(selected))
        if not selected:
            return racp_response(
                request_op_code=op_code, response_code=RacpResponseCode.NO_RECORDS_FOUND
            )
        await self._notify_records(connection, selected)
        return racp_response(request_op_code=op_code, response_code=RacpResponseCode.SUCCESS)

    def _select(self, request: bytes) -> list[bytes] | RacpResponseCode:
        """The stored records a report request applies to, or the response code refusing it."""
        if len(request) < 2 or request[1] == RacpOperator.NULL:
            return RacpResponseCode.INVALID_OPERATOR
        operator = request[1]
        if operator in (RacpOperator.ALL_RECORDS, RacpOperator.LAST_RECORD):
            if len(request) != 2:
                return RacpResponseCode.INVALID_OPERAND
            if operator == RacpOperator.ALL_RECORDS:
                return list(self.records)
            return self.records[-1:]
        if operator != RacpOperator.GREATER_THAN_OR_EQUAL_TO:
            return RacpResponseCode.OPERATOR_NOT_SUPPORTED
        if len(request) < 3:
            return RacpResponseCode.INVALID_OPERAND
        if request[2] != RacpFilterType.SEQUENCE_NUMBER:
            return RacpResponseCode.OPERAND_NOT_SUPPORTED
        if len(request) != 5:
            return RacpResponseCode.INVALID_OPERAND
        start = int.from_bytes(request[3:5], "little")
        return [
            r
            for r in self.records
            if (number := _sequence_number(r)) is not None and number >= start
        ]

    async def _notify_records(self, connection: Connection, records: Sequence[bytes]) -> None:
        await self.mtu_exchanged(connection)
        for count, record in enumerate(records):
            if self.disconnect_after is not None and count >= self.disconnect_after:
                await self.hang_up(connection)
            await self.device.notify_subscriber(connection, self.measurement, record)
        if self.disconnect_after is not None and len(records) >= self.disconnect_after:
            await self.hang_up(connection)

    async def _indicate(self, connection: Connection, value: bytes) -> None:
        await self.device.indicate_subscriber(connection, self.racp, value)


def _sequence_number(record: bytes) -> int | None:
    """A glucose record's sequence number; None when the record does not decode."""
    try:
        return decode_glucose_measurement(record).sequence_number
    except GattDecodeError:
        return None
