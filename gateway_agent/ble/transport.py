"""The gateway's Bluetooth read path: find a device, connect, subscribe, store what it sends.

``await read_device(device, agent, backend=..., progress=outbox)`` reads one enrolled device
once and returns a :class:`ReadResult`; :func:`read_devices` reads several concurrently (one
scan for all, then one task per device; a failing device does not affect the others).

Steps (every wait is bounded):

1. **Find** the device by address: ``BleakScanner.find_device_by_address`` for
   ``read_device``, one shared scan for ``read_devices`` (``scan_timeout_s``) → "not_found".
2. **Connect** through ``bleak_retry_connector.establish_connection`` (up to
   :data:`CONNECT_ATTEMPTS` attempts with its backoff for the transient BlueZ errors, stale
   connections and services cache), all attempts together bounded by ``connect_timeout_s``.
   ``read_devices`` serialises the connect step (BlueZ handles one pending LE connection per
   adapter), transfers then run concurrently.
3. **Battery and clock**, each bounded by ``idle_timeout_s`` and never fatal: Battery Level
   (0x2A19) is read and kept (``GatewayAgent.record_battery``: status and heartbeat); when
   the device has a writable Current Time (0x2A2B), it is set to the gateway's local time, so
   that the times of readings taken later are right. Both happen before subscribing, because
   most devices send their memory as soon as the gateway subscribes and hang up after.
4. **Subscribe** to the characteristics of the device's profile
   (:mod:`gateway_agent.ble.profiles`). Every notification/indication goes, bytes unchanged,
   to ``GatewayAgent.accept`` — the one entry point for device bytes (decode, outbox,
   undecodable bytes kept for inspection).
5. **Collect**:

   - *Glucose meters* (RACP): records are fetched with Report Stored Records, operator ``>=``
     on sequence number (filter 0x01) from one after the last sequence number stored, or
     "all records" when none is known yet. Each 0x2A18 record is decoded here only to read
     its sequence number, and handed to ``accept(..., stored_record=True,
     remember=("racp:<device_id>", sequence_number))``, so the progress is stored in the same
     transaction as the record's readings and survives restarts (read back through
     ``progress.recall``). The RACP request is written *with response*, and the RACP response
     indication is awaited afterwards with a timeout — never inside anything that holds the
     write (see the design doc, pitfall 1). Response 1 (success) and 6 (no records found) are
     success; anything else is an "error" with the response code in the text.
     ``racp_timeout_s`` is an *idle* timeout: every record that arrives restarts it.
     When ">=" finds no records, the last record is asked for: a sequence number below the
     one remembered means the meter's memory was cleared and its numbering restarted, so
     every record is fetched again (those already stored are stored once: ids from bytes).
   - *Other devices*: values are collected until ``idle_timeout_s`` pass without one, the
     device disconnects, or ``max_session_s`` is reached. No value at all within
     ``idle_timeout_s`` → "timeout".

   A device that disconnects once it has sent its values (most cuffs do) ends the session
   normally ("ok"); one that disconnects before sending anything, or during a RACP transfer,
   gives "disconnected_mid_transfer" (the records received before are stored).

**Stored-record rule** (cuffs, scales, thermometers, PLX spot-checks): these devices replay
their memory as soon as the gateway subscribes. A value of a ``replays_stored``
characteristic that arrives within ``stored_window_s`` (default 5 s) of the subscription is
passed with ``stored_record=True``: its ids derive from the bytes, so a replay of the same
record is stored once, and its device time is trusted even when old. Later values (a scale
that stays connected while someone steps on it) and notify-only streams (heart rate, PLX
continuous) are live. Glucose records are always stored records.

**Event loop**: the notification callback is synchronous and calls ``agent.accept`` directly,
which writes SQLite (WAL, synchronous=FULL: one fsync per value). That blocks the loop for
that write — milliseconds at these rates (a few values per connection, a few hundred for a
glucose meter's first download), accepted on purpose so that a value is durable before the
next one is handled. If it ever matters, move ``accept`` to a single worker thread fed by a
queue, keeping the order. Failures inside the callback are caught and end the session with
"error" (they never propagate into the Bluetooth stack).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Literal, Protocol

from bleak import BleakClient, BleakScanner
from bleak.exc import BleakDeviceNotFoundError, BleakError
from bleak_retry_connector import BleakNotFoundError, establish_connection

from gateway_agent.ble.backend_config import PLATFORM, BleBackends
from gateway_agent.ble.profiles import (
    BATTERY_LEVEL,
    CURRENT_TIME,
    GLUCOSE_MEASUREMENT,
    RECORD_ACCESS_CONTROL_POINT,
    DeviceProfile,
    Subscription,
    profile_for,
    sig_uuid,
)
from gateway_agent.gatt import GattDecodeError
from gateway_agent.gatt.encode import encode_current_time, racp_request
from gateway_agent.gatt.glucose import (
    RacpFilterType,
    RacpOpCode,
    RacpOperator,
    RacpResponseCode,
    decode_glucose_measurement,
    decode_record_access_control_point,
)

if TYPE_CHECKING:
    from bleak.backends.characteristic import BleakGATTCharacteristic
    from bleak.backends.device import BLEDevice

    from gateway_agent.agent import GatewayAgent
    from gateway_agent.devices import EnrolledDevice

log = logging.getLogger(__name__)

Outcome = Literal["ok", "not_found", "timeout", "disconnected_mid_transfer", "error"]

SCAN_TIMEOUT_S = 10.0
CONNECT_TIMEOUT_S = 30.0
CONNECT_ATTEMPTS = 3
IDLE_TIMEOUT_S = 5.0
RACP_TIMEOUT_S = 10.0
STORED_WINDOW_S = 5.0
MAX_SESSION_S = 120.0
DISCONNECT_TIMEOUT_S = 5.0

MAX_SEQUENCE_NUMBER = 0xFFFF


def racp_progress_name(device_id: str) -> str:
    """The outbox counter holding the last glucose record fetched from ``device_id``."""
    return f"racp:{device_id}"


class ProgressStore(Protocol):
    """Where remembered progress is read back (``Outbox`` is one)."""

    def recall(self, name: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class ReadResult:
    """What one read of one device did."""

    device_id: str
    outcome: Outcome
    values: int = 0
    """Characteristic values received and handed to ``accept`` (RACP responses excluded)."""
    readings: int = 0
    """Readings ``accept`` stored (0 for undecodable values, duplicates, or values such as a
    glucose record without a concentration)."""
    stored_values: int = 0
    """Of ``values``, how many were passed as stored records."""
    racp_request: str | None = None
    """Hex of the RACP request written (glucose meters)."""
    racp_response_code: int | None = None
    """The RACP response value (1 success, 6 no records found, ...)."""
    last_sequence_number: int | None = None
    """Highest glucose record sequence number stored so far (after this read)."""
    sequence_restarted: bool = False
    """The meter's record numbering restarted (memory cleared): all records were fetched."""
    battery_percent: int | None = None
    """Battery Level read during this connection, if the device has one."""
    clock_set: bool = False
    """The device's Current Time was written."""
    error: str | None = None
    duration_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


class _Failed(Exception):
    """Ends a session with an outcome other than "ok"."""

    def __init__(self, outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.outcome = outcome


@dataclass(slots=True)
class _Counters:
    values: int = 0
    readings: int = 0
    stored_values: int = 0


@dataclass(slots=True)
class DeviceSession:
    """One connection to one device: state shared by the bleak callbacks and the read task.

    Use :func:`read_device`; the session is public for callers that need its callbacks
    (e.g. to test the stored-record rule without Bluetooth).
    """

    device: EnrolledDevice
    agent: GatewayAgent
    progress: ProgressStore | None = None
    stored_window_s: float = STORED_WINDOW_S
    profile: DeviceProfile = field(init=False)
    counters: _Counters = field(init=False, default_factory=_Counters)
    last_sequence_number: int | None = field(init=False, default=None)
    racp_response_code: int | None = field(init=False, default=None)
    sequence_restarted: bool = field(init=False, default=False)
    battery_percent: int | None = field(init=False, default=None)
    clock_set: bool = field(init=False, default=False)
    _probing: bool = field(init=False, default=False)
    _probed_sequence_number: int | None = field(init=False, default=None)
    _subscribed_at: float | None = field(init=False, default=None)
    _changed: asyncio.Event = field(init=False, default_factory=asyncio.Event)
    _disconnected: bool = field(init=False, default=False)
    _racp_response: asyncio.Future[bytes] | None = field(init=False, default=None)
    _callback_error: BaseException | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self.profile = profile_for(self.device.device_type)
        if self.profile.uses_racp:
            if self.progress is None:
                raise ValueError(
                    f"{self.device.device_id}: reading a glucose meter needs progress= "
                    "(the outbox) to recall the last record fetched"
                )
            self.last_sequence_number = self.progress.recall(
                racp_progress_name(self.device.device_id)
            )

    # Callbacks (synchronous, on the event loop; never raise into the Bluetooth stack)

    def on_disconnected(self, _client: BleakClient | None = None) -> None:
        self._disconnected = True
        self._changed.set()

    def on_value(self, subscription: Subscription, _sender: object, data: bytearray) -> None:
        payload = bytes(data)
        try:
            if subscription.uuid16 == RECORD_ACCESS_CONTROL_POINT:
                self._on_racp(payload)
            elif subscription.uuid16 == GLUCOSE_MEASUREMENT:
                self._on_glucose_record(subscription, payload)
            else:
                stored = subscription.replays_stored and self._within_stored_window()
                self._accept(subscription, payload, stored_record=stored)
        except Exception as exc:  # e.g. the outbox's disk is full
            log.exception("%s: could not store a value", self.device.device_id)
            if self._callback_error is None:
                self._callback_error = exc
        self._changed.set()

    def _within_stored_window(self) -> bool:
        if self._subscribed_at is None:
            return True
        elapsed = asyncio.get_running_loop().time() - self._subscribed_at
        return elapsed <= self.stored_window_s

    def _accept(
        self,
        subscription: Subscription,
        payload: bytes,
        *,
        stored_record: bool,
        remember: tuple[str, int] | None = None,
    ) -> None:
        self.counters.values += 1
        if stored_record:
            self.counters.stored_values += 1
        readings = self.agent.accept(
            self.device,
            subscription.key,
            payload,
            stored_record=stored_record,
            remember=remember,
        )
        self.counters.readings += len(readings)

    def _on_glucose_record(self, subscription: Subscription, payload: bytes) -> None:
        remember = None
        try:
            sequence_number = decode_glucose_measurement(payload).sequence_number
        except GattDecodeError:
            sequence_number = None  # accept keeps the bytes; progress cannot move
        if self._probing:  # the meter's last record, asked for its number only
            if sequence_number is not None:
                self._probed_sequence_number = sequence_number
            return
        if sequence_number is not None and (
            self.last_sequence_number is None or sequence_number > self.last_sequence_number
        ):
            remember = (racp_progress_name(self.device.device_id), sequence_number)
            self.last_sequence_number = sequence_number
        self._accept(subscription, payload, stored_record=True, remember=remember)

    def _on_racp(self, payload: bytes) -> None:
        future = self._racp_response
        if future is None or future.done():
            log.warning("%s: unexpected RACP indication %s", self.device.device_id, payload.hex())
            return
        future.set_result(payload)

    # The read

    async def run(
        self,
        *,
        backend: BleBackends | None = None,
        ble_device: BLEDevice | None = None,
        scan_timeout_s: float = SCAN_TIMEOUT_S,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        racp_timeout_s: float = RACP_TIMEOUT_S,
        max_session_s: float = MAX_SESSION_S,
        connect_lock: asyncio.Lock | None = None,
    ) -> ReadResult:
        backends = backend or PLATFORM
        loop = asyncio.get_running_loop()
        started = loop.time()
        outcome: Outcome = "ok"
        error: str | None = None
        request: bytes | None = None
        client: BleakClient | None = None
        try:
            if ble_device is None:
                ble_device = await _find_by_address(self.device.device_id, backends, scan_timeout_s)
                if ble_device is None:
                    raise _Failed(
                        "not_found",
                        f"{self.device.device_id} not seen advertising within {scan_timeout_s} s",
                    )
            client = await self._connect(ble_device, backends, connect_timeout_s, connect_lock)
            await self._read_battery(client, idle_timeout_s)
            await self._set_clock(client, idle_timeout_s)
            await self._subscribe(client)
            if self.profile.uses_racp:
                request = self._racp_request()
                await self._fetch_stored_records(client, request, racp_timeout_s)
            else:
                await self._collect(idle_timeout_s, max_session_s)
            self._raise_callback_error()
        except _Failed as failed:
            outcome, error = failed.outcome, str(failed)
        except BleakError as exc:
            if self._disconnected:
                outcome = "disconnected_mid_transfer"
                error = f"device disconnected: {exc}"
            else:
                outcome, error = "error", f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("%s: read failed", self.device.device_id)
            outcome, error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            if client is not None:
                await _disconnect_quietly(client, self.device.device_id)
        if outcome == "ok" and self._callback_error is not None:  # raced with the last value
            outcome = "error"
            error = f"storing a value failed: {self._callback_error!r}"
        if outcome != "ok":
            log.warning("%s: read %s: %s", self.device.device_id, outcome, error)
        return ReadResult(
            device_id=self.device.device_id,
            outcome=outcome,
            values=self.counters.values,
            readings=self.counters.readings,
            stored_values=self.counters.stored_values,
            racp_request=None if request is None else request.hex(),
            racp_response_code=self.racp_response_code,
            last_sequence_number=self.last_sequence_number,
            sequence_restarted=self.sequence_restarted,
            battery_percent=self.battery_percent,
            clock_set=self.clock_set,
            error=error,
            duration_s=loop.time() - started,
        )

    async def _connect(
        self,
        ble_device: BLEDevice,
        backends: BleBackends,
        timeout_s: float,
        lock: asyncio.Lock | None,
    ) -> BleakClient:
        options = {} if backends.client is None else {"backend": backends.client}
        async with lock if lock is not None else contextlib.nullcontext():
            try:
                # Each attempt is bounded by bleak (timeout=); the outer bound covers all
                # attempts with their backoff, and backends that do not bound themselves.
                async with asyncio.timeout(timeout_s):
                    return await establish_connection(
                        BleakClient,
                        ble_device,
                        self.device.device_id,
                        disconnected_callback=self.on_disconnected,
                        max_attempts=CONNECT_ATTEMPTS,
                        timeout=timeout_s,
                        **options,
                    )
            except TimeoutError:
                raise _Failed("timeout", f"connecting took longer than {timeout_s} s") from None
            except (BleakNotFoundError, BleakDeviceNotFoundError) as exc:
                raise _Failed("not_found", f"could not connect: {exc}") from None

    async def _read_battery(self, client: BleakClient, timeout_s: float) -> None:
        characteristic = client.services.get_characteristic(sig_uuid(BATTERY_LEVEL))
        if characteristic is None or "read" not in characteristic.properties:
            return
        try:
            async with asyncio.timeout(timeout_s):
                value = await client.read_gatt_char(characteristic)
        except (TimeoutError, BleakError) as exc:
            log.warning("%s: battery level not read: %r", self.device.device_id, exc)
            return
        if len(value) != 1 or value[0] > 100:
            log.warning("%s: battery level %s is not a percentage", self.device.device_id, value)
            return
        self.battery_percent = value[0]
        self.agent.record_battery(self.device, value[0])

    async def _set_clock(self, client: BleakClient, timeout_s: float) -> None:
        characteristic = client.services.get_characteristic(sig_uuid(CURRENT_TIME))
        if characteristic is None or "write" not in characteristic.properties:
            return  # many devices keep their clock read-only or have none
        value = encode_current_time(datetime.now(self.agent.timezone))
        try:
            async with asyncio.timeout(timeout_s):
                await client.write_gatt_char(characteristic, value, response=True)
        except (TimeoutError, BleakError) as exc:
            log.warning("%s: device clock not set: %r", self.device.device_id, exc)
            return
        self.clock_set = True

    async def _subscribe(self, client: BleakClient) -> None:
        services = client.services
        self._subscribed_at = asyncio.get_running_loop().time()
        subscribed = 0
        for subscription in self.profile.subscriptions:
            characteristic = services.get_characteristic(subscription.uuid)
            if characteristic is None:
                if subscription.required:
                    raise _Failed("error", f"device has no characteristic {subscription.key}")
                continue
            self._check_delivery(subscription, characteristic)
            await client.start_notify(
                characteristic, functools.partial(self.on_value, subscription)
            )
            subscribed += 1
        if subscribed == 0:
            keys = ", ".join(s.key for s in self.profile.subscriptions)
            raise _Failed("error", f"device has none of the characteristics {keys}")

    def _check_delivery(
        self, subscription: Subscription, characteristic: BleakGATTCharacteristic
    ) -> None:
        if subscription.delivery.value not in characteristic.properties:
            log.warning(
                "%s: %s should %s but has properties %s; subscribing anyway",
                self.device.device_id,
                subscription.key,
                subscription.delivery.value,
                characteristic.properties,
            )

    def _racp_request(self) -> bytes:
        last = self.last_sequence_number
        if last is None or last >= MAX_SEQUENCE_NUMBER:
            # Nothing fetched yet (or the uint16 is exhausted): all records. Replays of records
            # still in the outbox are stored once (stored-record ids derive from the bytes).
            return racp_request(op_code=RacpOpCode.REPORT_STORED_RECORDS)
        return racp_request(
            op_code=RacpOpCode.REPORT_STORED_RECORDS,
            operator=RacpOperator.GREATER_THAN_OR_EQUAL_TO,
            filter_type=RacpFilterType.SEQUENCE_NUMBER,
            operand=[last + 1],
        )

    async def _fetch_stored_records(
        self, client: BleakClient, request: bytes, timeout_s: float
    ) -> None:
        code = await self._racp_procedure(client, request, timeout_s)
        remembered = self.last_sequence_number
        if code != RacpResponseCode.NO_RECORDS_FOUND or remembered is None:
            return
        # Nothing after the last record stored. Ask for the meter's last record (its number
        # only: it is not stored again); a lower number means the numbering restarted.
        self._probing = True
        try:
            last_record = racp_request(
                op_code=RacpOpCode.REPORT_STORED_RECORDS, operator=RacpOperator.LAST_RECORD
            )
            await self._racp_procedure(client, last_record, timeout_s)
        except _Failed as failed:  # the read itself succeeded: nothing to lose here
            log.warning(
                "%s: could not check the meter's record numbering: %s",
                self.device.device_id,
                failed,
            )
            return
        finally:
            self._probing = False
        newest = self._probed_sequence_number
        if newest is None or newest >= remembered:
            return
        log.warning(
            "%s: the meter's records restart at %d (was %d): its memory was cleared;"
            " fetching every record",
            self.device.device_id,
            newest,
            remembered,
        )
        self.sequence_restarted = True
        self.last_sequence_number = None  # progress follows the new numbering from here
        await self._racp_procedure(
            client, racp_request(op_code=RacpOpCode.REPORT_STORED_RECORDS), timeout_s
        )

    async def _racp_procedure(self, client: BleakClient, request: bytes, timeout_s: float) -> int:
        """Write one Report Stored Records request and wait for its response (records arrive
        through ``on_value`` meanwhile); the response code, success or no records found."""
        # The future exists before the write: the response may be indicated before the
        # write's coroutine resumes.
        response = asyncio.get_running_loop().create_future()
        self._racp_response = response
        try:
            async with asyncio.timeout(timeout_s):
                await client.write_gatt_char(
                    sig_uuid(RECORD_ACCESS_CONTROL_POINT), request, response=True
                )
        except TimeoutError:
            raise _Failed("timeout", f"RACP write not answered within {timeout_s} s") from None
        received_before = self.counters.values
        while not response.done():
            self._raise_callback_error()
            if self._disconnected:
                raise _Failed(
                    "disconnected_mid_transfer",
                    f"device disconnected before the RACP response "
                    f"({self.counters.values - received_before} records received)",
                )
            if not await self._wait_for_change(timeout_s):
                raise _Failed(
                    "timeout",
                    f"no RACP response or record for {timeout_s} s "
                    f"({self.counters.values - received_before} records received)",
                )
        return self._check_racp_response(response.result())

    def _check_racp_response(self, payload: bytes) -> int:
        try:
            decoded = decode_record_access_control_point(payload)
        except GattDecodeError as exc:
            raise _Failed("error", f"undecodable RACP response {payload.hex()}: {exc}") from None
        if (
            decoded.op_code != RacpOpCode.RESPONSE_CODE
            or decoded.request_op_code != RacpOpCode.REPORT_STORED_RECORDS
        ):
            raise _Failed("error", f"unexpected RACP response {payload.hex()}")
        code = decoded.response_code
        if not self._probing:
            self.racp_response_code = code
        if code not in (RacpResponseCode.SUCCESS, RacpResponseCode.NO_RECORDS_FOUND):
            name = RacpResponseCode(code).name if code in set(RacpResponseCode) else "unknown"
            raise _Failed("error", f"RACP response code {code} ({name.lower()})")
        return code

    async def _collect(self, idle_timeout_s: float, max_session_s: float) -> None:
        deadline = asyncio.get_running_loop().time() + max_session_s
        while True:
            self._raise_callback_error()
            if self._disconnected:
                if self.counters.values == 0:
                    raise _Failed(
                        "disconnected_mid_transfer", "device disconnected before sending a value"
                    )
                return  # normal: many devices hang up once they have sent their memory
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            if not await self._wait_for_change(min(idle_timeout_s, remaining)):
                break
        if self.counters.values == 0:
            raise _Failed("timeout", f"no value within {idle_timeout_s} s of subscribing")

    async def _wait_for_change(self, timeout_s: float) -> bool:
        """True when a value arrived or the device disconnected within ``timeout_s``."""
        self._changed.clear()
        try:
            async with asyncio.timeout(timeout_s):
                await self._changed.wait()
        except TimeoutError:
            return False
        return True

    def _raise_callback_error(self) -> None:
        if self._callback_error is not None:
            raise _Failed("error", f"storing a value failed: {self._callback_error!r}")


async def _find_by_address(
    address: str, backends: BleBackends, timeout_s: float
) -> BLEDevice | None:
    # bleak types ``backend=`` as a class, not Optional: leave it out for the platform's.
    if backends.scanner is None:
        return await BleakScanner.find_device_by_address(address, timeout=timeout_s)
    return await BleakScanner.find_device_by_address(
        address, timeout=timeout_s, backend=backends.scanner
    )


async def _disconnect_quietly(client: BleakClient, device_id: str) -> None:
    try:
        async with asyncio.timeout(DISCONNECT_TIMEOUT_S):
            await client.disconnect()
    except (TimeoutError, BleakError, OSError) as exc:
        log.warning("%s: disconnect failed: %r", device_id, exc)


async def read_device(
    device: EnrolledDevice,
    agent: GatewayAgent,
    *,
    backend: BleBackends | None = None,
    progress: ProgressStore | None = None,
    ble_device: BLEDevice | None = None,
    scan_timeout_s: float = SCAN_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    racp_timeout_s: float = RACP_TIMEOUT_S,
    stored_window_s: float = STORED_WINDOW_S,
    max_session_s: float = MAX_SESSION_S,
    connect_lock: asyncio.Lock | None = None,
) -> ReadResult:
    """Read ``device`` once; never raises for device or radio failures (see ReadResult).

    ``backend``: the bleak backend classes (``backend_config.backends_from_env``); None =
    bleak's platform backend. ``progress``: where remembered progress is read back (the
    outbox behind ``agent``); required for glucose meters. ``ble_device``: skip the scan.
    """
    session = DeviceSession(device, agent, progress=progress, stored_window_s=stored_window_s)
    return await session.run(
        backend=backend,
        ble_device=ble_device,
        scan_timeout_s=scan_timeout_s,
        connect_timeout_s=connect_timeout_s,
        idle_timeout_s=idle_timeout_s,
        racp_timeout_s=racp_timeout_s,
        max_session_s=max_session_s,
        connect_lock=connect_lock,
    )


async def find_devices(
    addresses: Iterable[str], *, backend: BleBackends | None = None, timeout_s: float
) -> dict[str, BLEDevice]:
    """One scan for several addresses (upper-case keys); stops early when all are seen."""
    wanted = {address.upper() for address in addresses}
    found: dict[str, BLEDevice] = {}
    all_seen = asyncio.Event()

    def on_advertisement(ble_device: BLEDevice, _advertisement: object) -> None:
        key = ble_device.address.upper()
        if key in wanted and key not in found:
            found[key] = ble_device
            if len(found) == len(wanted):
                all_seen.set()

    if not wanted:
        return found
    scanner_backend = (backend or PLATFORM).scanner
    async with BleakScanner(on_advertisement, backend=scanner_backend):
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await all_seen.wait()
    return found


async def read_devices(
    devices: Sequence[EnrolledDevice],
    agent: GatewayAgent,
    *,
    backend: BleBackends | None = None,
    progress: ProgressStore | None = None,
    scan_timeout_s: float = SCAN_TIMEOUT_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    idle_timeout_s: float = IDLE_TIMEOUT_S,
    racp_timeout_s: float = RACP_TIMEOUT_S,
    stored_window_s: float = STORED_WINDOW_S,
    max_session_s: float = MAX_SESSION_S,
) -> list[ReadResult]:
    """Read several devices concurrently; one result per device, in the order given.

    One scan finds them all; then each found device is read in its own task (connections
    one at a time, transfers concurrently). A device that fails gets its own result and does
    not affect the others.
    """
    try:
        found = await find_devices(
            (d.device_id for d in devices), backend=backend, timeout_s=scan_timeout_s
        )
    except Exception as exc:
        log.exception("scan failed")
        return [ReadResult(d.device_id, "error", error=f"scan failed: {exc!r}") for d in devices]
    connect_lock = asyncio.Lock()

    async def read_one(device: EnrolledDevice) -> ReadResult:
        ble_device = found.get(device.device_id.upper())
        if ble_device is None:
            return ReadResult(
                device.device_id,
                "not_found",
                error=f"{device.device_id} not seen advertising within {scan_timeout_s} s",
            )
        return await read_device(
            device,
            agent,
            backend=backend,
            progress=progress,
            ble_device=ble_device,
            connect_timeout_s=connect_timeout_s,
            idle_timeout_s=idle_timeout_s,
            racp_timeout_s=racp_timeout_s,
            stored_window_s=stored_window_s,
            max_session_s=max_session_s,
            connect_lock=connect_lock,
        )

    outcomes = await asyncio.gather(*(read_one(d) for d in devices), return_exceptions=True)
    results: list[ReadResult] = []
    for device, outcome in zip(devices, outcomes, strict=True):
        if isinstance(outcome, ReadResult):
            results.append(outcome)
        elif isinstance(outcome, Exception):
            results.append(ReadResult(device.device_id, "error", error=repr(outcome)))
        else:  # CancelledError, KeyboardInterrupt...: not ours to swallow
            raise outcome
    return results
