"""A bleak backend whose radio is an in-process Bumble link (tests and demos only).

:class:`VirtualAir` owns one ``bumble.link.LocalLink``: a central Bumble ``Device`` (the
gateway's "adapter") and any number of virtual peripherals (see ``virtual_devices``), each on
its own ``bumble.controller.Controller``. Bytes really cross an ATT bearer: advertising PDUs,
connection, service discovery, CCCD writes, notifications and indications with confirmations.

:class:`BumbleClientBackend` / :class:`BumbleScannerBackend` implement bleak 3.x's
``BaseBleakClient`` / ``BaseBleakScanner`` on that central, so ``BleakClient(address,
backend=BumbleClientBackend)`` and ``BleakScanner(backend=BumbleScannerBackend)`` work with
no radio. The classes find their air through :meth:`VirtualAir.current` (the air entered most
recently with ``async with``), so they can be named in configuration
(``GATEWAY_BLE_BACKEND=gateway_agent.ble.bumble_backend:BUMBLE``); :meth:`VirtualAir.backends`
returns classes bound to one air explicitly.

Everything runs on the caller's asyncio loop; nothing here starts a thread.
"""

from __future__ import annotations

import asyncio
import struct
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Self, TypeVar

from bleak.backends.characteristic import BleakGATTCharacteristic
from bleak.backends.client import BaseBleakClient, NotifyCallback
from bleak.backends.descriptor import BleakGATTDescriptor
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, AdvertisementDataCallback, BaseBleakScanner
from bleak.backends.service import BleakGATTService, BleakGATTServiceCollection
from bleak.exc import BleakDeviceNotFoundError, BleakError, BleakGATTProtocolError
from bumble import att, core
from bumble.controller import Controller
from bumble.device import Advertisement, Connection, Device, Peer
from bumble.gatt import GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR, Characteristic
from bumble.gatt_client import CharacteristicProxy, DescriptorProxy, ServiceProxy
from bumble.hci import Address
from bumble.host import Host
from bumble.link import LocalLink
from bumble.transport.common import AsyncPipeSink

from gateway_agent.ble.backend_config import BleBackends

if TYPE_CHECKING:
    from bleak.args import SizedBuffer
    from bleak.assigned_numbers import CharacteristicPropertyName

    from gateway_agent.ble.virtual_devices import VirtualPeripheral

__all__ = [
    "BUMBLE",
    "BumbleClientBackend",
    "BumbleScannerBackend",
    "VirtualAir",
    "bleak_uuid",
]

_T = TypeVar("_T")
_Peripheral = TypeVar("_Peripheral", bound="VirtualPeripheral")

GATEWAY_ADDRESS = "F0:CA:2E:00:00:01"
"""The central's static random address on the virtual link."""

CONNECT_TIMEOUT_S = 5.0
"""Upper bound for one connection attempt on the in-process link (it takes milliseconds)."""


def bleak_uuid(value: core.UUID) -> str:
    """A Bumble UUID (16-, 32- or 128-bit) as bleak's lower-case 128-bit string."""
    return str(uuid.UUID(bytes=bytes(reversed(value.to_bytes(force_128=True)))))


_PROPERTY_NAMES: tuple[tuple[Characteristic.Properties, CharacteristicPropertyName], ...] = (
    (Characteristic.Properties.BROADCAST, "broadcast"),
    (Characteristic.Properties.READ, "read"),
    (Characteristic.Properties.WRITE_WITHOUT_RESPONSE, "write-without-response"),
    (Characteristic.Properties.WRITE, "write"),
    (Characteristic.Properties.NOTIFY, "notify"),
    (Characteristic.Properties.INDICATE, "indicate"),
    (Characteristic.Properties.AUTHENTICATED_SIGNED_WRITES, "authenticated-signed-writes"),
    (Characteristic.Properties.EXTENDED_PROPERTIES, "extended-properties"),
)


_NOTIFY = Characteristic.Properties.NOTIFY
_INDICATE = Characteristic.Properties.INDICATE


def _property_names(properties: int) -> list[CharacteristicPropertyName]:
    return [name for flag, name in _PROPERTY_NAMES if properties & flag]


class VirtualAir:
    """One in-process Bluetooth LE "air": a Bumble LocalLink, the gateway's central, peripherals.

    Use as ``async with VirtualAir() as air: await air.add(VirtualBloodPressureCuff(...))``.
    Must be created and used on one running asyncio loop.
    """

    _current: ClassVar[VirtualAir | None] = None

    def __init__(self, central_address: str = GATEWAY_ADDRESS) -> None:
        self.link = LocalLink()
        self._central_address = central_address
        self._central: Device | None = None
        self._central_controller: Controller | None = None
        self._connect_lock = asyncio.Lock()
        self.peripherals: dict[str, VirtualPeripheral] = {}

    # Lifecycle

    async def __aenter__(self) -> Self:
        await self.start()
        VirtualAir._current = self
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if VirtualAir._current is self:
            VirtualAir._current = None
        await self.close()

    async def start(self) -> None:
        if self._central is None:
            self._central_controller, self._central = self.new_device(
                "carewatch-gateway", self._central_address
            )
            await self._central.power_on()

    async def close(self) -> None:
        """Disconnect every link and stop the peripherals' background tasks."""
        for peripheral in self.peripherals.values():
            await peripheral.close()
        if self._central is not None:
            for connection in list(self._central.connections.values()):
                await connection.disconnect()

    @classmethod
    def current(cls) -> VirtualAir:
        """The air entered most recently (what configuration-named backends use)."""
        if cls._current is None:
            raise BleakError(
                "no VirtualAir is active: run the gateway inside 'async with VirtualAir()'"
            )
        return cls._current

    # Devices

    def new_device(self, name: str, address: str) -> tuple[Controller, Device]:
        """A Bumble controller + host + device on this link (not powered on)."""
        controller = Controller(name, link=self.link)
        device = Device(
            name=name,
            address=Address(address),
            host=Host(controller, AsyncPipeSink(controller)),
        )
        return controller, device

    @property
    def central(self) -> Device:
        if self._central is None:
            raise BleakError("VirtualAir not started")
        return self._central

    async def add(self, peripheral: _Peripheral) -> _Peripheral:
        """Put ``peripheral`` on the air: power it on and start advertising."""
        _, device = self.new_device(peripheral.name, peripheral.address)
        peripheral.attach(device)
        await device.power_on()
        await peripheral.start_advertising()
        self.peripherals[peripheral.address.upper()] = peripheral
        return peripheral

    async def connect(self, address: str, timeout: float) -> Connection:
        """Connect the central to ``address``; BleakDeviceNotFoundError if nobody answers.

        Bumble's LocalLink controller connects only when it hears the peer advertise, and it
        answers LE Create Connection Cancel without ending the pending connection, so a
        Bumble-level timeout would hang. We bound the wait ourselves and clear the stale
        pending connection on our own controller.
        """
        async with self._connect_lock:
            try:
                async with asyncio.timeout(min(timeout, CONNECT_TIMEOUT_S)):
                    return await self.central.connect(Address(address), timeout=None)
            except TimeoutError:
                assert self._central_controller is not None
                self._central_controller.pending_le_connection = None
                self.central.le_connecting = False
                raise BleakDeviceNotFoundError(address, f"{address} is not advertising") from None

    # Backend classes bound to this air

    def backends(self) -> BleBackends:
        """Backend classes bound to this air (for tests that run several airs)."""
        air = self

        class BoundClient(BumbleClientBackend):
            @classmethod
            def _air(cls) -> VirtualAir:
                return air

        class BoundScanner(BumbleScannerBackend):
            @classmethod
            def _air(cls) -> VirtualAir:
                return air

        BoundClient.__name__ = BoundClient.__qualname__ = BumbleClientBackend.__name__
        BoundScanner.__name__ = BoundScanner.__qualname__ = BumbleScannerBackend.__name__
        return BleBackends(client=BoundClient, scanner=BoundScanner)


class BumbleClientBackend(BaseBleakClient):
    """bleak client backend on the central of a :class:`VirtualAir`."""

    @classmethod
    def _air(cls) -> VirtualAir:
        return VirtualAir.current()

    def __init__(
        self,
        address_or_ble_device: BLEDevice | str,
        *,
        disconnected_callback: Callable[[], None] | None,
        timeout: float,
        services: set[str] | None = None,
        **kwargs: Any,
    ) -> None:
        # bleak also passes bluez= and winrt= (platform options); they do not apply here.
        super().__init__(
            address_or_ble_device, disconnected_callback=disconnected_callback, timeout=timeout
        )
        self._service_filter = services
        self._connection: Connection | None = None
        self._peer: Peer | None = None
        self._disconnecting = False
        self._subscribers: dict[int, Callable[[bytes], None]] = {}
        self._name = (
            address_or_ble_device.name if isinstance(address_or_ble_device, BLEDevice) else None
        )

    # Connectivity

    @property
    def name(self) -> str:
        return self._name or self.address.replace(":", "-")

    @property
    def mtu_size(self) -> int:
        return self._require_connection().att_mtu

    @property
    def is_connected(self) -> bool:
        return self._connection is not None

    async def connect(self, pair: bool, **kwargs: Any) -> None:
        if pair:
            raise BleakError("pairing is not implemented by the Bumble test backend yet")
        air = self._air()
        connection = await air.connect(self.address, self._timeout)
        self._connection = connection
        connection.on(connection.EVENT_DISCONNECTION, self._on_disconnection)
        self._peer = Peer(connection)
        try:
            self.services = await self._discover()
        except BaseException:
            await self.disconnect()
            raise

    async def disconnect(self) -> None:
        connection = self._connection
        if connection is None:
            return
        self._disconnecting = True
        try:
            await connection.disconnect()
        finally:
            self._forget_connection()

    async def pair(self, *args: Any, **kwargs: Any) -> None:
        raise BleakError("pairing is not implemented by the Bumble test backend yet")

    async def unpair(self) -> None:
        raise BleakError("pairing is not implemented by the Bumble test backend yet")

    def _on_disconnection(self, reason: int) -> None:
        solicited = self._disconnecting
        self._forget_connection()
        if not solicited and self._disconnected_callback is not None:
            self._disconnected_callback()

    def _forget_connection(self) -> None:
        self._connection = None
        self._peer = None
        self._subscribers.clear()
        self.services = None
        self._disconnecting = False

    def _require_connection(self) -> Connection:
        if self._connection is None:
            raise BleakError("Not connected")
        return self._connection

    def _require_peer(self) -> Peer:
        if self._peer is None:
            raise BleakError("Not connected")
        return self._peer

    # Service discovery

    async def _discover(self) -> BleakGATTServiceCollection:
        peer = self._require_peer()
        await peer.discover_services()
        collection = BleakGATTServiceCollection()
        for service_proxy in peer.services:
            service_uuid = bleak_uuid(service_proxy.uuid)
            if self._service_filter is not None and service_uuid not in self._service_filter:
                continue
            service = BleakGATTService(service_proxy, service_proxy.handle, service_uuid)
            collection.add_service(service)
            await self._discover_characteristics(peer, service_proxy, service, collection)
        return collection

    async def _discover_characteristics(
        self,
        peer: Peer,
        service_proxy: ServiceProxy,
        service: BleakGATTService,
        collection: BleakGATTServiceCollection,
    ) -> None:
        for proxy in await peer.discover_characteristics(service=service_proxy):
            characteristic = BleakGATTCharacteristic(
                proxy,
                proxy.handle,
                bleak_uuid(proxy.uuid),
                _property_names(proxy.properties),
                lambda: self.mtu_size - 3,
                service,
            )
            collection.add_characteristic(characteristic)
            for descriptor in await peer.discover_descriptors(proxy):
                collection.add_descriptor(
                    BleakGATTDescriptor(
                        descriptor, descriptor.handle, bleak_uuid(descriptor.type), characteristic
                    )
                )

    # I/O

    async def read_gatt_char(
        self, characteristic: BleakGATTCharacteristic, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        if use_cached and (cached := peer.gatt_client.cached_values.get(characteristic.handle)):
            return bytearray(cached[1])
        return bytearray(await _att(peer.read_value(_characteristic_proxy(characteristic))))

    async def read_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, *, use_cached: bool = False, **kwargs: Any
    ) -> bytearray:
        peer = self._require_peer()
        return bytearray(await _att(peer.read_value(_descriptor_proxy(descriptor))))

    async def write_gatt_char(
        self, characteristic: BleakGATTCharacteristic, data: SizedBuffer, response: bool
    ) -> None:
        peer = self._require_peer()
        proxy = _characteristic_proxy(characteristic)
        await _att(peer.write_value(proxy, bytes(data), with_response=response))

    async def write_gatt_descriptor(
        self, descriptor: BleakGATTDescriptor, data: SizedBuffer
    ) -> None:
        peer = self._require_peer()
        proxy = _descriptor_proxy(descriptor)
        await _att(peer.write_value(proxy, bytes(data), with_response=True))

    async def start_notify(
        self, characteristic: BleakGATTCharacteristic, callback: NotifyCallback, **kwargs: Any
    ) -> None:
        peer = self._require_peer()
        proxy = _characteristic_proxy(characteristic)
        if not proxy.properties & (_NOTIFY | _INDICATE):
            raise BleakError(f"{characteristic.uuid} supports neither notify nor indicate")
        if not any(
            d.type == GATT_CLIENT_CHARACTERISTIC_CONFIGURATION_DESCRIPTOR for d in proxy.descriptors
        ):
            # Bumble only logs a warning and returns; a real stack fails, so do we.
            raise BleakError(f"{characteristic.uuid} has no CCCD (0x2902)")

        def subscriber(value: bytes) -> None:
            callback(bytearray(value))

        self._subscribers[characteristic.handle] = subscriber
        # prefer_notify=True: bleak's contract is "notify over indicate when both exist".
        await _att(peer.subscribe(proxy, subscriber, prefer_notify=True))

    async def stop_notify(self, characteristic: BleakGATTCharacteristic) -> None:
        peer = self._require_peer()
        subscriber = self._subscribers.pop(characteristic.handle, None)
        await _att(peer.unsubscribe(_characteristic_proxy(characteristic), subscriber))


def _characteristic_proxy(characteristic: BleakGATTCharacteristic) -> CharacteristicProxy[bytes]:
    proxy = characteristic.obj
    if not isinstance(proxy, CharacteristicProxy):
        raise BleakError(f"{characteristic} was not discovered by the Bumble backend")
    return proxy


def _descriptor_proxy(descriptor: BleakGATTDescriptor) -> DescriptorProxy:
    proxy = descriptor.obj
    if not isinstance(proxy, DescriptorProxy):
        raise BleakError(f"{descriptor} was not discovered by the Bumble backend")
    return proxy


async def _att(operation: Awaitable[_T]) -> _T:
    """Await a Bumble GATT operation, turning an ATT error response into bleak's error."""
    try:
        result = await operation
    except att.ATT_Error as error:
        raise BleakGATTProtocolError(int(error.error_code)) from error
    return result


class BumbleScannerBackend(BaseBleakScanner):
    """bleak scanner backend: the central of a :class:`VirtualAir` scans the link."""

    @classmethod
    def _air(cls) -> VirtualAir:
        return VirtualAir.current()

    def __init__(
        self,
        detection_callback: AdvertisementDataCallback | None,
        service_uuids: list[str] | None,
        scanning_mode: Literal["active", "passive"] = "active",
        **kwargs: Any,
    ) -> None:
        # bleak also passes bluez= and cb= (platform options); they do not apply here.
        super().__init__(detection_callback, service_uuids)
        self._active = scanning_mode == "active"
        self._central: Device | None = None

    async def start(self) -> None:
        self.seen_devices = {}
        central = self._air().central
        self._central = central
        central.on(central.EVENT_ADVERTISEMENT, self._on_advertisement)
        await central.start_scanning(active=self._active, filter_duplicates=False)

    async def stop(self) -> None:
        central = self._central
        if central is None:
            return
        self._central = None
        central.remove_listener(central.EVENT_ADVERTISEMENT, self._on_advertisement)
        await central.stop_scanning()

    def _on_advertisement(self, advertisement: Advertisement) -> None:
        data = advertisement_data(advertisement)
        if not self.is_allowed_uuid(data.service_uuids):
            return
        address = advertisement.address.to_string(with_type_qualifier=False)
        device = self.create_or_update_device(
            address, address, data.local_name, advertisement, data
        )
        self.call_detection_callbacks(device, data)


def advertisement_data(advertisement: Advertisement) -> AdvertisementData:
    """bleak's AdvertisementData from a Bumble advertisement (AD structures parsed here)."""
    local_name: str | None = None
    manufacturer_data: dict[int, bytes] = {}
    service_data: dict[str, bytes] = {}
    service_uuids: list[str] = []
    tx_power: int | None = None
    for ad_type, value in advertisement.data.ad_structures:
        match int(ad_type):
            case 0x02 | 0x03:  # incomplete / complete list of 16-bit service UUIDs
                service_uuids += [
                    bleak_uuid(core.UUID.from_bytes(value[i : i + 2]))
                    for i in range(0, len(value) - 1, 2)
                ]
            case 0x06 | 0x07:  # incomplete / complete list of 128-bit service UUIDs
                service_uuids += [
                    bleak_uuid(core.UUID.from_bytes(value[i : i + 16]))
                    for i in range(0, len(value) - 15, 16)
                ]
            case 0x08 if local_name is None:  # shortened local name
                local_name = value.decode("utf-8", errors="replace")
            case 0x09:  # complete local name
                local_name = value.decode("utf-8", errors="replace")
            case 0x0A if len(value) == 1:  # TX power level
                tx_power = struct.unpack("<b", value)[0]
            case 0x16 if len(value) >= 2:  # service data, 16-bit UUID
                service_data[bleak_uuid(core.UUID.from_bytes(value[:2]))] = value[2:]
            case 0xFF if len(value) >= 2:  # manufacturer specific data
                manufacturer_data[struct.unpack_from("<H", value)[0]] = value[2:]
            case _:
                pass
    return AdvertisementData(
        local_name=local_name,
        manufacturer_data=manufacturer_data,
        service_data=service_data,
        service_uuids=list(dict.fromkeys(service_uuids)),
        tx_power=tx_power,
        rssi=advertisement.rssi,
        platform_data=(advertisement,),
    )


BUMBLE = BleBackends(client=BumbleClientBackend, scanner=BumbleScannerBackend)
"""For ``GATEWAY_BLE_BACKEND=gateway_agent.ble.bumble_backend:BUMBLE`` (uses the current air)."""
