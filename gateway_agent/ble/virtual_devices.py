"""Virtual Bluetooth LE health devices on a Bumble link, speaking the standard profiles.

Each virtual device is a Bumble GATT server with the SIG service and characteristic UUIDs,
properties and procedures of a real one; the values it sends are bytes given by the test
(normally from ``shared/data/gatt_vectors.json``), sent unchanged. Put one on the air with
``await air.add(VirtualBloodPressureCuff(address, measurements=[...]))``.

Rule for every write callback here: return ``None`` and run the procedure in a background
task. Bumble awaits whatever a write callback returns before it sends the ATT Write
Response, so returning the task would hold the response back until the whole procedure has
been sent (and a procedure that waits on the client deadlocks).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Sequence
from typing import Any

from bumble import att
from bumble.core import UUID, AdvertisingData
from bumble.device import Connection, Device
from bumble.gatt import Characteristic, CharacteristicValue, Service

from gateway_agent.gatt.encode import racp_number_of_records_response, racp_response
from gateway_agent.gatt.glucose import RacpOpCode, RacpOperator, RacpResponseCode

logger = logging.getLogger(__name__)

BLOOD_PRESSURE_SERVICE = 0x1810
BLOOD_PRESSURE_MEASUREMENT = 0x2A35
BLOOD_PRESSURE_FEATURE = 0x2A49
GLUCOSE_SERVICE = 0x1808
GLUCOSE_MEASUREMENT = 0x2A18
GLUCOSE_FEATURE = 0x2A51
RECORD_ACCESS_CONTROL_POINT = 0x2A52

ADVERTISING_INTERVAL_MS = 20.0
"""Short, so that scans and connections on the in-process link take milliseconds."""

_P = Characteristic.Properties
_NO_ACCESS = Characteristic.Permissions(0)
"""Notify/indicate-only values: not readable or writable by ATT requests."""


def _uuid16(value: int) -> UUID:
    return UUID.from_16_bits(value)


class VirtualPeripheral:
    """Base: a named, addressed Bumble peripheral that advertises its primary service."""

    def __init__(self, address: str, name: str, service_uuid: int) -> None:
        self.address = address
        self.name = name
        self.service_uuid = service_uuid
        self._device: Device | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def device(self) -> Device:
        if self._device is None:
            raise RuntimeError(f"{self.name} is not on the air yet")
        return self._device

    def attach(self, device: Device) -> None:
        """Called by VirtualAir.add: install the GATT database on ``device``."""
        self._device = device
        device.add_services(self.services())

    def services(self) -> list[Service]:
        raise NotImplementedError

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

    def spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        """Run a procedure in the background, keeping a reference and logging its failure."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("%s: procedure failed: %r", self.name, error)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)


class VirtualBloodPressureCuff(VirtualPeripheral):
    """Blood Pressure Service: indicates its stored measurements once 0x2A35 is subscribed.

    Like a real cuff, it sends every stored 0x2A35 value (each one confirmed by the client)
    as soon as the client enables indications, then optionally drops the link.
    """

    def __init__(
        self,
        address: str,
        measurements: Sequence[bytes],
        *,
        name: str = "CW-BPM",
        feature: bytes = b"\x00\x00",
        disconnect_when_done: bool = False,
    ) -> None:
        super().__init__(address, name, BLOOD_PRESSURE_SERVICE)
        self.pending: list[bytes] = list(measurements)
        self.sent: list[bytes] = []
        self.disconnect_when_done = disconnect_when_done
        self.measurement = Characteristic(
            _uuid16(BLOOD_PRESSURE_MEASUREMENT), _P.INDICATE, _NO_ACCESS, b""
        )
        self.feature = Characteristic(
            _uuid16(BLOOD_PRESSURE_FEATURE), _P.READ, Characteristic.READABLE, feature
        )
        self.measurement.on(Characteristic.EVENT_SUBSCRIPTION, self._on_subscription)

    def services(self) -> list[Service]:
        return [Service(_uuid16(BLOOD_PRESSURE_SERVICE), [self.measurement, self.feature])]

    def _on_subscription(self, connection: Connection, notify: bool, indicate: bool) -> None:
        if indicate:
            self.spawn(self._send_stored(connection))

    async def _send_stored(self, connection: Connection) -> None:
        while self.pending:
            value = self.pending[0]
            await self.device.indicate_subscriber(connection, self.measurement, value)
            self.sent.append(self.pending.pop(0))  # removed only once confirmed
        if self.disconnect_when_done:
            await connection.disconnect()


class VirtualGlucoseMeter(VirtualPeripheral):
    """Glucose Service with the Record Access Control Point procedure of the Glucose Profile.

    Supported: Report Stored Records and Report Number of Stored Records with operator
    All Records. Records go out as 0x2A18 notifications, then the RACP response is indicated.
    Other op codes/operators get the standard RACP response codes.
    """

    def __init__(
        self,
        address: str,
        records: Sequence[bytes],
        *,
        name: str = "CW-GLU",
        feature: bytes = b"\x00\x00",
    ) -> None:
        super().__init__(address, name, GLUCOSE_SERVICE)
        self.records: list[bytes] = list(records)
        self.requests: list[bytes] = []
        self._busy = False
        self.measurement = Characteristic(_uuid16(GLUCOSE_MEASUREMENT), _P.NOTIFY, _NO_ACCESS, b"")
        self.feature = Characteristic(
            _uuid16(GLUCOSE_FEATURE), _P.READ, Characteristic.READABLE, feature
        )
        self.racp: Characteristic[bytes] = Characteristic(
            _uuid16(RECORD_ACCESS_CONTROL_POINT),
            _P.WRITE | _P.INDICATE,
            Characteristic.WRITEABLE,
            CharacteristicValue[bytes](write=self._on_racp_write),
        )

    def services(self) -> list[Service]:
        return [Service(_uuid16(GLUCOSE_SERVICE), [self.measurement, self.feature, self.racp])]

    def _cccd(self, connection: Connection, characteristic: Characteristic) -> int:
        value = self.device.gatt_server.read_cccd(connection, characteristic)
        return int.from_bytes(value, "little")

    def _on_racp_write(self, connection: Connection, value: bytes) -> None:
        """Validate synchronously (ATT errors), then run the procedure in the background.

        Returns None on purpose: see the module docstring.
        """
        if not self._cccd(connection, self.racp) & 0x02:
            raise att.ATT_Error(att.ErrorCode.CCCD_IMPROPERLY_CONFIGURED)
        if self._busy:
            raise att.ATT_Error(att.ErrorCode.PROCEDURE_ALREADY_IN_PROGRESS)
        self.requests.append(bytes(value))
        self._busy = True
        self.spawn(self._run_racp(connection, bytes(value)))

    async def _run_racp(self, connection: Connection, request: bytes) -> None:
        try:
            await self._indicate(connection, await self._answer(connection, request))
        finally:
            self._busy = False

    async def _answer(self, connection: Connection, request: bytes) -> bytes:
        op_code = request[0] if request else 0
        operator = request[1] if len(request) > 1 else None
        if op_code == RacpOpCode.REPORT_STORED_RECORDS:
            if operator != RacpOperator.ALL_RECORDS:
                return racp_response(
                    request_op_code=op_code,
                    response_code=RacpResponseCode.OPERATOR_NOT_SUPPORTED,
                )
            if not self.records:
                return racp_response(
                    request_op_code=op_code, response_code=RacpResponseCode.NO_RECORDS_FOUND
                )
            for record in self.records:
                await self.device.notify_subscriber(connection, self.measurement, record)
            return racp_response(request_op_code=op_code, response_code=RacpResponseCode.SUCCESS)
        if op_code == RacpOpCode.REPORT_NUMBER_OF_STORED_RECORDS:
            if operator != RacpOperator.ALL_RECORDS:
                return racp_response(
                    request_op_code=op_code,
                    response_code=RacpResponseCode.OPERATOR_NOT_SUPPORTED,
                )
            return racp_number_of_records_response(number_of_records=len(self.records))
        return racp_response(
            request_op_code=op_code, response_code=RacpResponseCode.OP_CODE_NOT_SUPPORTED
        )

    async def _indicate(self, connection: Connection, value: bytes) -> None:
        await self.device.indicate_subscriber(connection, self.racp, value)
