"""bleak's public API against virtual devices on an in-process Bumble link (no radio).

Everything goes through ``BleakClient`` / ``BleakScanner`` with ``backend=`` the Bumble
backend, as production code would be configured; nothing is patched. Values are the bytes of
the shared GATT vectors, and they must arrive byte for byte.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("bumble", reason="the Bumble test backend needs the 'bumble' package")

from bleak import BleakClient, BleakGATTCharacteristic, BleakScanner
from bleak.exc import BleakDeviceNotFoundError, BleakGATTProtocolError

from gateway_agent.ble.backend_config import (
    PLATFORM,
    backends_from_env,
    resolve_backends,
)
from gateway_agent.ble.bumble_backend import (
    BUMBLE,
    BumbleClientBackend,
    BumbleScannerBackend,
    VirtualAir,
)
from gateway_agent.ble.virtual_devices import (
    VirtualBloodPressureCuff,
    VirtualGlucoseMeter,
)
from gateway_agent.gatt import BloodPressureMeasurement, GlucoseMeasurement, decode

pytestmark = pytest.mark.ble

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "gatt_vectors.json").read_text("utf-8")
)


def vector(characteristic: str, index: int = 0) -> bytes:
    """The ``index``-th valid vector of ``characteristic`` ("2A35"), as bytes."""
    found = [
        bytes.fromhex(v["hex"])
        for v in VECTORS
        if v["characteristic_uuid"] == characteristic and not v["expected"].get("invalid")
    ]
    return found[index]


def sig(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


BPM = sig(0x2A35)
GLUCOSE_MEASUREMENT = sig(0x2A18)
RACP = sig(0x2A52)
CUFF = "C0:FF:EE:00:01:03"
METER = "C0:FF:EE:00:02:01"
TIMEOUT_S = 5.0


def run(test: Callable[[VirtualAir], Awaitable[None]]) -> None:
    """Run ``test`` on a fresh loop inside a fresh VirtualAir (no pytest-asyncio needed)."""

    async def main() -> None:
        async with asyncio.timeout(30), VirtualAir() as air:
            await test(air)

    asyncio.run(main())


class Inbox:
    """A notify callback that queues what arrives."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    def __call__(self, sender: BleakGATTCharacteristic, data: bytearray) -> None:
        self.queue.put_nowait((sender.uuid, bytes(data)))

    async def next(self) -> tuple[str, bytes]:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.queue.get()


def test_the_cuff_indicates_the_vector_bytes_through_bleak() -> None:
    expected = vector("2A35")
    assert expected.hex() == "1e8a00580078000000041114293b3c00012700"

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(VirtualBloodPressureCuff(CUFF, [expected]))
        inbox = Inbox()
        async with BleakClient(CUFF, backend=BumbleClientBackend, timeout=TIMEOUT_S) as client:
            assert client.backend_id == "BumbleClientBackend"
            characteristic = client.services.get_characteristic(BPM)
            assert characteristic is not None
            assert characteristic.service_uuid == sig(0x1810)
            assert characteristic.properties == ["indicate"]
            assert [d.uuid for d in characteristic.descriptors] == [sig(0x2902)]
            await client.start_notify(BPM, inbox)
            sender, value = await inbox.next()
            assert await client.read_gatt_char(sig(0x2A49)) == bytearray(b"\x00\x00")
            await client.stop_notify(BPM)

        assert (sender, value) == (BPM, expected)
        assert cuff.sent == [expected]
        reading = decode(sender, value)
        assert isinstance(reading, BloodPressureMeasurement)
        assert reading.systolic == 138

    run(test)


def test_the_scanner_sees_the_advertisement_and_its_device_connects() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF, [vector("2A35", 1)], name="A&D UA-651"))
        device = await BleakScanner.find_device_by_address(
            CUFF, timeout=TIMEOUT_S, backend=BumbleScannerBackend
        )
        assert device is not None
        found = await BleakScanner.discover(
            timeout=0.2, return_adv=True, backend=BumbleScannerBackend, service_uuids=[sig(0x1810)]
        )
        _, advertisement = found[CUFF]
        assert advertisement.local_name == "A&D UA-651"
        assert advertisement.service_uuids == [sig(0x1810)]

        inbox = Inbox()
        async with BleakClient(device, backend=BumbleClientBackend) as client:
            assert client.name == "A&D UA-651"
            await client.start_notify(BPM, inbox)
            assert await inbox.next() == (BPM, vector("2A35", 1))

    run(test)


def test_the_glucose_meter_answers_racp_report_all_records() -> None:
    records = [vector("2A18", 0), vector("2A18", 1)]

    async def test(air: VirtualAir) -> None:
        meter = await air.add(VirtualGlucoseMeter(METER, records))
        inbox = Inbox()
        async with BleakClient(METER, backend=BumbleClientBackend) as client:
            await client.start_notify(GLUCOSE_MEASUREMENT, inbox)
            await client.start_notify(RACP, inbox)
            await client.write_gatt_char(RACP, bytes.fromhex("0101"), response=True)
            received = [await inbox.next() for _ in range(3)]
        assert received == [
            (GLUCOSE_MEASUREMENT, records[0]),
            (GLUCOSE_MEASUREMENT, records[1]),
            (RACP, bytes.fromhex("06000101")),
        ]
        assert meter.requests == [bytes.fromhex("0101")]
        decoded = [decode(uuid, value) for uuid, value in received[:2]]
        assert all(isinstance(record, GlucoseMeasurement) for record in decoded)
        assert [record.sequence_number for record in decoded] == [1, 4]  # type: ignore[union-attr]

    run(test)


@pytest.mark.parametrize(
    ("records", "request_hex", "response_hex"),
    [
        ([], "0101", "06000106"),  # report all, none stored: no records found
        (["2A18"], "0401", "05000100"),  # number of stored records: 1
        (["2A18"], "0105", "06000104"),  # "first record" operator: not supported
        (["2A18"], "0200", "06000202"),  # delete: op code not supported
    ],
)
def test_the_glucose_meter_answers_other_racp_requests(
    records: list[str], request_hex: str, response_hex: str
) -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualGlucoseMeter(METER, [vector(uuid) for uuid in records]))
        inbox = Inbox()
        async with BleakClient(METER, backend=BumbleClientBackend) as client:
            await client.start_notify(RACP, inbox)
            await client.write_gatt_char(RACP, bytes.fromhex(request_hex), response=True)
            assert await inbox.next() == (RACP, bytes.fromhex(response_hex))

    run(test)


def test_racp_without_indications_enabled_is_an_att_error() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualGlucoseMeter(METER, [vector("2A18")]))
        async with BleakClient(METER, backend=BumbleClientBackend) as client:
            with pytest.raises(BleakGATTProtocolError) as raised:
                await client.write_gatt_char(RACP, bytes.fromhex("0101"), response=True)
        assert raised.value.args[0] == 0xFD  # CCCD improperly configured (GLS)

    run(test)


def test_a_device_that_hangs_up_calls_the_disconnected_callback() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF, [vector("2A35")], disconnect_when_done=True))
        gone: asyncio.Future[BleakClient] = asyncio.get_running_loop().create_future()
        client = BleakClient(CUFF, gone.set_result, backend=BumbleClientBackend)
        await client.connect()
        await client.start_notify(BPM, Inbox())
        async with asyncio.timeout(TIMEOUT_S):
            assert await gone is client
        assert not client.is_connected

    run(test)


def test_connecting_to_a_device_that_is_not_advertising_fails_fast() -> None:
    async def test(air: VirtualAir) -> None:
        client = BleakClient(CUFF, backend=BumbleClientBackend, timeout=0.3)
        with pytest.raises(BleakDeviceNotFoundError):
            await client.connect()
        # The central is usable again afterwards.
        await air.add(VirtualBloodPressureCuff(CUFF, [vector("2A35")]))
        async with BleakClient(CUFF, backend=BumbleClientBackend) as again:
            assert again.is_connected

    run(test)


def test_backends_bound_to_an_air_work_without_the_current_air() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF, [vector("2A35")]))
        backends = air.backends()
        VirtualAir._current = None  # as if another air had been entered and left
        assert backends.client is not None
        async with BleakClient(CUFF, backend=backends.client) as client:
            assert client.backend_id == "BumbleClientBackend"
            assert client.is_connected

    run(test)


def test_the_backend_is_chosen_by_configuration() -> None:
    assert backends_from_env({}) == PLATFORM
    assert PLATFORM.client is None and PLATFORM.scanner is None  # bleak picks BlueZ etc.
    spec = "gateway_agent.ble.bumble_backend:BUMBLE"
    assert backends_from_env({"GATEWAY_BLE_BACKEND": spec}) == BUMBLE
    assert resolve_backends(spec).client is BumbleClientBackend


@pytest.mark.parametrize(
    "spec",
    [
        "gateway_agent.ble.bumble_backend",
        "no_such_module:X",
        "gateway_agent.ble.bumble_backend:Nope",
    ],
)
def test_a_wrong_backend_setting_is_a_clear_error(spec: str) -> None:
    with pytest.raises(ValueError, match="GATEWAY_BLE_BACKEND"):
        resolve_backends(spec)


def test_without_an_air_the_backend_says_what_to_do() -> None:
    async def main() -> Any:
        return await BleakClient(CUFF, backend=BumbleClientBackend).connect()

    with pytest.raises(Exception, match="no VirtualAir is active"):
        asyncio.run(main())
