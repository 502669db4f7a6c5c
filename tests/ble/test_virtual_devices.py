"""The virtual devices of gateway_agent.ble.virtual_devices, seen through bleak's public API.

Every test talks to the devices with ``BleakClient`` / ``BleakScanner`` and the Bumble
backend, as the gateway would; values are the bytes of the shared GATT vectors (or built with
``gateway_agent.gatt.encode``) and must arrive byte for byte.
"""

from __future__ import annotations

import asyncio
import json
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("bumble", reason="the Bumble test backend needs the 'bumble' package")

from bleak import BleakClient, BleakGATTCharacteristic, BleakScanner
from bleak.exc import BleakError, BleakGATTProtocolError

from gateway_agent.ble.bumble_backend import (
    BumbleClientBackend,
    BumbleScannerBackend,
    VirtualAir,
)
from gateway_agent.ble.virtual_devices import (
    VirtualBloodPressureCuff,
    VirtualBodyCompositionScale,
    VirtualGlucoseMeter,
    VirtualHeartRateMonitor,
    VirtualMemoryDevice,
    VirtualPulseOximeter,
    VirtualThermometer,
    VirtualWeightScale,
)
from gateway_agent.gatt.encode import glucose_measurement
from gateway_agent.gatt.glucose import decode_glucose_measurement

pytestmark = pytest.mark.ble

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "gatt_vectors.json").read_text("utf-8")
)
ADDRESS = "C0:FF:EE:00:07:01"
TIMEOUT_S = 2.0
CLIENT = BumbleClientBackend
SCANNER = BumbleScannerBackend


def vectors(characteristic: str) -> list[bytes]:
    """Every valid vector of ``characteristic`` ("2A9C"), as bytes, in file order."""
    return [
        bytes.fromhex(v["hex"])
        for v in VECTORS
        if v["characteristic_uuid"] == characteristic and not v["expected"].get("invalid")
    ]


def sig(uuid16: int) -> str:
    return f"0000{uuid16:04x}-0000-1000-8000-00805f9b34fb"


def run(test: Callable[[VirtualAir], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(10), VirtualAir() as air:
            await test(air)

    asyncio.run(main())


@dataclass(frozen=True)
class Received:
    uuid: str
    value: bytes
    at: float


class Inbox:
    """A notify callback that queues what arrives, with the loop time of arrival."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Received] = asyncio.Queue()

    def __call__(self, sender: BleakGATTCharacteristic, data: bytearray) -> None:
        now = asyncio.get_running_loop().time()
        self.queue.put_nowait(Received(sender.uuid, bytes(data), now))

    async def next(self) -> Received:
        async with asyncio.timeout(TIMEOUT_S):
            return await self.queue.get()

    async def take(self, count: int) -> list[Received]:
        return [await self.next() for _ in range(count)]

    async def nothing_for(self, seconds: float) -> bool:
        await asyncio.sleep(seconds)
        return self.queue.empty()


async def eventually(condition: Callable[[], bool]) -> None:
    """Wait (bounded) until ``condition()``: a device learns of a confirmation a few loop
    steps after the client received the value."""
    async with asyncio.timeout(TIMEOUT_S):
        while not condition():
            await asyncio.sleep(0.001)


def disconnection() -> tuple[asyncio.Future[None], Callable[[BleakClient], None]]:
    """A future set by bleak's disconnected callback, and that callback."""
    gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def callback(_client: BleakClient) -> None:
        if not gone.done():
            gone.set_result(None)

    return gone, callback


def service_uuids(client: BleakClient) -> set[str]:
    return {service.uuid for service in client.services}


# Memory devices: stored values indicated once subscribed


@dataclass(frozen=True)
class MemoryCase:
    make: Callable[[list[bytes]], VirtualMemoryDevice]
    service: int
    measurement: int
    feature: int | None
    vector_key: str


FEATURE = b"\x01\x02\x03\x04"
MEMORY_CASES = {
    "weight_scale": MemoryCase(
        lambda values: VirtualWeightScale(ADDRESS, values, feature=FEATURE),
        0x181D,
        0x2A9D,
        0x2A9E,
        "2A9D",
    ),
    "body_composition": MemoryCase(
        lambda values: VirtualBodyCompositionScale(ADDRESS, values, feature=FEATURE),
        0x181B,
        0x2A9C,
        0x2A9B,
        "2A9C",
    ),
    "thermometer": MemoryCase(
        lambda values: VirtualThermometer(ADDRESS, values), 0x1809, 0x2A1C, None, "2A1C"
    ),
    "pulse_oximeter_spot_check": MemoryCase(
        lambda values: VirtualPulseOximeter(ADDRESS, spot_checks=values, features=FEATURE[:2]),
        0x1822,
        0x2A5E,
        0x2A60,
        "2A5E",
    ),
}


@pytest.mark.parametrize("case", MEMORY_CASES.values(), ids=MEMORY_CASES.keys())
def test_memory_devices_indicate_the_vector_bytes_unchanged(case: MemoryCase) -> None:
    values = vectors(case.vector_key)
    assert values

    async def test(air: VirtualAir) -> None:
        device = await air.add(case.make(values))
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            measurement = client.services.get_characteristic(sig(case.measurement))
            assert measurement is not None
            assert measurement.service_uuid == sig(case.service)
            assert measurement.properties == ["indicate"]
            await client.start_notify(measurement, inbox)
            received = await inbox.take(len(values))
            if case.feature is not None:
                feature = await client.read_gatt_char(sig(case.feature))
                assert bytes(feature) == (FEATURE[:2] if case.service == 0x1822 else FEATURE)
        assert [(r.uuid, r.value) for r in received] == [(sig(case.measurement), v) for v in values]
        await eventually(lambda: not device.pending)
        assert device.sent == values

    run(test)


def test_a_body_composition_value_longer_than_20_bytes_arrives_whole() -> None:
    # The default ATT MTU (23) leaves 20 bytes and Bumble truncates silently; the device
    # asks for a larger MTU after connecting.
    longest = max(vectors("2A9C"), key=len)
    assert len(longest) == 30

    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBodyCompositionScale(ADDRESS, [longest]))
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            await client.start_notify(sig(0x2A9C), inbox)
            assert (await inbox.next()).value == longest
            assert client.mtu_size == 247

    run(test)


def test_a_device_that_hangs_up_mid_transfer_resends_the_rest_on_the_next_connection() -> None:
    values = vectors("2A9C")
    assert len(values) == 5

    async def test(air: VirtualAir) -> None:
        scale = await air.add(VirtualBodyCompositionScale(ADDRESS, values, disconnect_after=2))
        seen: list[list[bytes]] = []
        for _ in range(2):
            gone, callback = disconnection()
            inbox = Inbox()
            client = BleakClient(ADDRESS, callback, backend=CLIENT)
            await client.connect()
            await client.start_notify(sig(0x2A9C), inbox)
            async with asyncio.timeout(TIMEOUT_S):
                await gone
            assert not client.is_connected
            seen.append([r.value for r in await inbox.take(2)])
            assert inbox.queue.empty()
        assert seen == [values[0:2], values[2:4]]
        assert scale.sent == values[:4]
        assert scale.pending == values[4:]

        # Third connection: one value left, fewer than disconnect_after: the link stays up.
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            await client.start_notify(sig(0x2A9C), inbox)
            assert (await inbox.next()).value == values[4]
            assert await inbox.nothing_for(0.05)
            assert client.is_connected
        assert scale.sent == values
        assert scale.pending == []

    run(test)


def test_a_cuff_that_disconnects_when_done_still_hangs_up_after_its_last_value() -> None:
    values = vectors("2A35")

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(
            VirtualBloodPressureCuff(ADDRESS, values, disconnect_after=5, disconnect_when_done=True)
        )
        gone, callback = disconnection()
        inbox = Inbox()
        client = BleakClient(ADDRESS, callback, backend=CLIENT)
        await client.connect()
        await client.start_notify(sig(0x2A35), inbox)
        async with asyncio.timeout(TIMEOUT_S):
            await gone
        assert [r.value for r in await inbox.take(len(values))] == values
        assert cuff.pending == []

    run(test)


def test_reading_an_indicate_only_characteristic_is_refused_by_the_att_layer() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualWeightScale(ADDRESS, vectors("2A9D")))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            with pytest.raises(BleakGATTProtocolError) as raised:
                await client.read_gatt_char(sig(0x2A9D))
        assert raised.value.args[0] == 0x02  # Read Not Permitted

    run(test)


def test_only_the_health_service_is_advertised() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualWeightScale(ADDRESS, [], name="CW-SCALE"))
        found = await BleakScanner.discover(timeout=0.1, return_adv=True, backend=SCANNER)
        _, advertisement = found[ADDRESS]
        assert advertisement.local_name == "CW-SCALE"
        assert advertisement.service_uuids == [sig(0x181D)]
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            assert {sig(0x181D), sig(0x180F), sig(0x1805)} <= service_uuids(client)

    run(test)


# Notifying devices: values at an interval once subscribed


def test_the_heart_rate_monitor_notifies_its_values_at_its_interval() -> None:
    values = vectors("2A37")
    assert len(values) == 3
    interval = 0.05

    async def test(air: VirtualAir) -> None:
        monitor = await air.add(
            VirtualHeartRateMonitor(ADDRESS, values, interval_s=interval, body_sensor_location=2)
        )
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            measurement = client.services.get_characteristic(sig(0x2A37))
            assert measurement is not None
            assert measurement.service_uuid == sig(0x180D)
            assert measurement.properties == ["notify"]
            assert await client.read_gatt_char(sig(0x2A38)) == bytearray(b"\x02")
            await client.start_notify(measurement, inbox)
            received = await inbox.take(3)
            assert await inbox.nothing_for(2 * interval)  # not repeated by default
        assert [(r.uuid, r.value) for r in received] == [(sig(0x2A37), v) for v in values]
        # Two intervals between the first and the last; half of that leaves room for jitter.
        assert received[-1].at - received[0].at >= interval
        assert monitor.stream.notified == values

    run(test)


def test_a_repeating_stream_stops_when_notifications_are_disabled() -> None:
    values = vectors("2A37")[:2]

    async def test(air: VirtualAir) -> None:
        monitor = await air.add(
            VirtualHeartRateMonitor(
                ADDRESS, values, interval_s=0.01, repeat=True, body_sensor_location=None
            )
        )
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            assert client.services.get_characteristic(sig(0x2A38)) is None
            await client.start_notify(sig(0x2A37), inbox)
            received = await inbox.take(5)
            await client.stop_notify(sig(0x2A37))
            sent = len(monitor.stream.notified)
            await asyncio.sleep(0.05)
            assert len(monitor.stream.notified) == sent
        assert [r.value for r in received] == [*values, *values, values[0]]

    run(test)


def test_the_pulse_oximeter_indicates_spot_checks_and_streams_continuous_values() -> None:
    spot_checks = vectors("2A5E")
    continuous = vectors("2A5F")
    assert len(continuous) == 3
    interval = 0.05

    async def test(air: VirtualAir) -> None:
        oximeter = await air.add(
            VirtualPulseOximeter(
                ADDRESS, spot_checks=spot_checks, continuous=continuous, interval_s=interval
            )
        )
        spot_inbox, continuous_inbox = Inbox(), Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            spot = client.services.get_characteristic(sig(0x2A5E))
            stream = client.services.get_characteristic(sig(0x2A5F))
            assert spot is not None and stream is not None
            assert (spot.properties, stream.properties) == (["indicate"], ["notify"])
            await client.start_notify(stream, continuous_inbox)
            await client.start_notify(spot, spot_inbox)
            streamed = await continuous_inbox.take(3)
            assert (await spot_inbox.next()).value == spot_checks[0]
        assert [r.value for r in streamed] == continuous  # 20 bytes: fits even MTU 23
        assert streamed[-1].at - streamed[0].at >= interval  # two intervals, less jitter
        await eventually(lambda: not oximeter.pending)
        assert oximeter.sent == spot_checks
        assert oximeter.continuous_stream.notified == continuous

    run(test)


def test_a_pulse_oximeter_can_have_only_spot_checks_or_only_continuous_values() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualPulseOximeter(ADDRESS, spot_checks=[], has_continuous=False))
        await air.add(
            VirtualPulseOximeter("C0:FF:EE:00:07:02", continuous=[], has_spot_check=False)
        )
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            assert client.services.get_characteristic(sig(0x2A5E)) is not None
            assert client.services.get_characteristic(sig(0x2A5F)) is None
        async with BleakClient("C0:FF:EE:00:07:02", backend=CLIENT) as client:
            assert client.services.get_characteristic(sig(0x2A5E)) is None
            assert client.services.get_characteristic(sig(0x2A5F)) is not None

    run(test)
    with pytest.raises(ValueError, match="spot-check or continuous"):
        VirtualPulseOximeter(ADDRESS, has_spot_check=False, has_continuous=False)
    with pytest.raises(ValueError, match="without 0x2A5F"):
        VirtualPulseOximeter(ADDRESS, continuous=vectors("2A5F"), has_continuous=False)


# Battery and current time


def test_the_battery_level_is_read_and_notified() -> None:
    async def test(air: VirtualAir) -> None:
        scale = await air.add(VirtualWeightScale(ADDRESS, [], battery_percent=57))
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            level = client.services.get_characteristic(sig(0x2A19))
            assert level is not None
            assert level.service_uuid == sig(0x180F)
            assert level.properties == ["read", "notify"]
            assert await client.read_gatt_char(level) == bytearray([57])
            await client.start_notify(level, inbox)
            await scale.set_battery(12)
            assert (await inbox.next()).value == bytes([12])
            assert await client.read_gatt_char(level) == bytearray([12])

    run(test)
    with pytest.raises(ValueError, match=r"0\.\.100"):
        VirtualWeightScale(ADDRESS, [], battery_percent=101)


def test_battery_and_current_time_services_can_be_left_out() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualThermometer(ADDRESS, [], battery_percent=None, current_time=False))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            uuids = service_uuids(client)
        assert sig(0x1809) in uuids
        assert not {sig(0x180F), sig(0x1805)} & uuids

    run(test)


def current_time(
    clock: datetime, *, day_of_week: int | None = None, fractions256: int = 0, reason: int = 0
) -> bytes:
    """A 0x2A2B value built here, independently of the module under test."""
    weekday = clock.isoweekday() if day_of_week is None else day_of_week
    return struct.pack(
        "<H5B3B",
        clock.year,
        clock.month,
        clock.day,
        clock.hour,
        clock.minute,
        clock.second,
        weekday,
        fractions256,
        reason,
    )


def read_clock(value: bytes) -> tuple[datetime, int, int]:
    """(date and time with fractions, day of week, adjust reason) of a 0x2A2B value."""
    assert len(value) == 10
    year, month, day, hours, minutes, seconds, weekday, fractions, reason = struct.unpack(
        "<H5B3B", value
    )
    moment = datetime(year, month, day, hours, minutes, seconds)  # noqa: DTZ001 - device time
    return moment + timedelta(seconds=fractions / 256), weekday, reason


def test_current_time_reads_the_device_clock_and_a_write_sets_it() -> None:
    initial = datetime(2020, 1, 2, 3, 4, 5)  # noqa: DTZ001 - device local time, a Thursday
    written = datetime(2024, 5, 1, 8, 30, 0, 500_000)  # noqa: DTZ001 - a Wednesday
    value = current_time(written, fractions256=128, reason=0x01)

    async def test(air: VirtualAir) -> None:
        meter = await air.add(VirtualGlucoseMeter(ADDRESS, [], clock=initial))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            characteristic = client.services.get_characteristic(sig(0x2A2B))
            assert characteristic is not None
            assert characteristic.service_uuid == sig(0x1805)
            assert characteristic.properties == ["read", "write", "notify"]

            before, weekday, reason = read_clock(bytes(await client.read_gatt_char(characteristic)))
            assert timedelta(0) <= before - initial < timedelta(seconds=1)
            assert (weekday, reason) == (4, 0)

            await client.write_gatt_char(characteristic, value, response=True)
            assert meter.time_writes == [value]
            assert timedelta(0) <= meter.clock - written < timedelta(seconds=1)

            after, weekday, reason = read_clock(bytes(await client.read_gatt_char(characteristic)))
            assert timedelta(0) <= after - written < timedelta(seconds=1)
            assert (weekday, reason) == (3, 0x01)

    run(test)


@pytest.mark.parametrize(
    ("value", "error_code"),
    [
        (current_time(datetime(2024, 5, 1, 8, 30))[:9], 0x0D),  # noqa: DTZ001 - too short
        (current_time(datetime(2024, 5, 1, 8, 30)) + b"\x00", 0x0D),  # noqa: DTZ001 - too long
        (bytes.fromhex("e8070d01081e00030000"), 0x80),  # month 13: Data Field Ignored (CTS)
    ],
    ids=["9 bytes", "11 bytes", "month 13"],
)
def test_a_current_time_write_that_is_not_a_valid_time_is_refused(
    value: bytes, error_code: int
) -> None:
    initial = datetime(2020, 1, 2, 3, 4, 5)  # noqa: DTZ001 - device local time

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(VirtualBloodPressureCuff(ADDRESS, [], clock=initial))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            with pytest.raises(BleakGATTProtocolError) as raised:
                await client.write_gatt_char(sig(0x2A2B), value, response=True)
        assert raised.value.args[0] == error_code
        assert cuff.time_writes == []
        assert timedelta(0) <= cuff.clock - initial < timedelta(seconds=1)

    run(test)


def test_a_read_only_current_time_refuses_writes() -> None:
    initial = datetime(2020, 1, 2, 3, 4, 5)  # noqa: DTZ001 - device local time

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(
            VirtualBloodPressureCuff(ADDRESS, [], clock=initial, current_time_writable=False)
        )
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            characteristic = client.services.get_characteristic(sig(0x2A2B))
            assert characteristic is not None
            assert characteristic.properties == ["read", "notify"]
            value = current_time(datetime(2024, 5, 1, 8, 30))  # noqa: DTZ001
            with pytest.raises(BleakGATTProtocolError) as raised:
                await client.write_gatt_char(characteristic, value, response=True)
            assert isinstance(raised.value, BleakError)
            moment, _, _ = read_clock(bytes(await client.read_gatt_char(characteristic)))
        assert raised.value.args[0] == 0x03  # Write Not Permitted
        assert cuff.time_writes == []
        assert timedelta(0) <= moment - initial < timedelta(seconds=1)

    run(test)


def test_setting_the_clock_on_the_device_notifies_the_client() -> None:
    later = datetime(2025, 3, 4, 5, 6, 7)  # noqa: DTZ001 - device local time, a Tuesday

    async def test(air: VirtualAir) -> None:
        thermometer = await air.add(VirtualThermometer(ADDRESS, []))
        inbox = Inbox()
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            await client.start_notify(sig(0x2A2B), inbox)
            await thermometer.set_clock(later)
            moment, weekday, reason = read_clock((await inbox.next()).value)
        assert timedelta(0) <= moment - later < timedelta(seconds=1)
        assert (weekday, reason) == (2, 0x01)  # manual time update

    run(test)


# Glucose meter: RACP


def record(sequence_number: int, mg_dl: float = 100) -> bytes:
    return glucose_measurement(
        sequence_number=sequence_number,
        base_time=datetime(2024, 5, 1, 8, sequence_number),  # noqa: DTZ001 - device local time
        mg_dl=mg_dl,
    )


GLUCOSE_MEASUREMENT = sig(0x2A18)
RACP = sig(0x2A52)
STORED = [*vectors("2A18"), record(5), record(9)]
"""Sequence numbers 1, 4 (the vectors), 5 and 9."""


def sequence_numbers(received: list[Received]) -> list[int]:
    return [decode_glucose_measurement(r.value).sequence_number for r in received]


async def racp(client: BleakClient, inbox: Inbox, request_hex: str) -> tuple[list[Received], bytes]:
    """Write a RACP request; (the records notified before the response, the response)."""
    await client.write_gatt_char(RACP, bytes.fromhex(request_hex), response=True)
    records: list[Received] = []
    while (item := await inbox.next()).uuid != RACP:
        records.append(item)
    return records, item.value


async def subscribed(client: BleakClient) -> Inbox:
    inbox = Inbox()
    await client.start_notify(GLUCOSE_MEASUREMENT, inbox)
    await client.start_notify(RACP, inbox)
    return inbox


@pytest.mark.parametrize(
    ("request_hex", "sequence", "response_hex"),
    [
        ("0101", [1, 4, 5, 9], "06000101"),  # all records
        ("0103010400", [4, 5, 9], "06000101"),  # >= 4
        ("0103010500", [5, 9], "06000101"),  # >= 5
        ("0103010a00", [], "06000106"),  # >= 10: no records found
        ("0106", [9], "06000101"),  # last record
    ],
)
def test_the_glucose_meter_reports_the_records_a_request_selects(
    request_hex: str, sequence: list[int], response_hex: str
) -> None:
    async def test(air: VirtualAir) -> None:
        meter = await air.add(VirtualGlucoseMeter(ADDRESS, STORED))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            records, response = await racp(client, await subscribed(client), request_hex)
        assert sequence_numbers(records) == sequence
        assert all(r.value in STORED for r in records)
        assert response == bytes.fromhex(response_hex)
        assert meter.requests == [bytes.fromhex(request_hex)]

    run(test)


@pytest.mark.parametrize(
    ("records", "request_hex", "response_hex"),
    [
        (STORED, "0401", "05000400"),  # all: 4
        (STORED, "0403010500", "05000200"),  # >= 5: 2
        (STORED, "0403010a00", "05000000"),  # >= 10: 0
        (STORED, "0406", "05000100"),  # last: 1
        ([], "0406", "05000000"),  # last of none: 0
    ],
)
def test_the_glucose_meter_reports_the_number_of_records_a_request_selects(
    records: list[bytes], request_hex: str, response_hex: str
) -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualGlucoseMeter(ADDRESS, records))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            notified, response = await racp(client, await subscribed(client), request_hex)
        assert notified == []
        assert response == bytes.fromhex(response_hex)

    run(test)


@pytest.mark.parametrize(
    ("request_hex", "response_hex"),
    [
        ("0200", "06000202"),  # delete: op code not supported
        ("0105", "06000104"),  # first record: operator not supported
        ("0102010400", "06000104"),  # <=: operator not supported
        ("0100", "06000103"),  # null operator: invalid operator
        ("010101", "06000105"),  # "all" with an operand: invalid operand
        ("01030104", "06000105"),  # >= with a one-byte sequence number: invalid operand
        ("010302e80705010800000000", "06000109"),  # >= user-facing time: operand not supported
    ],
)
def test_the_glucose_meter_refuses_what_it_does_not_support(
    request_hex: str, response_hex: str
) -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualGlucoseMeter(ADDRESS, STORED))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            notified, response = await racp(client, await subscribed(client), request_hex)
        assert notified == []
        assert response == bytes.fromhex(response_hex)

    run(test)


def test_a_glucose_meter_that_hangs_up_mid_transfer_keeps_its_records() -> None:
    async def test(air: VirtualAir) -> None:
        meter = await air.add(VirtualGlucoseMeter(ADDRESS, STORED, disconnect_after=2))
        gone, callback = disconnection()
        client = BleakClient(ADDRESS, callback, backend=CLIENT)
        await client.connect()
        inbox = await subscribed(client)
        await client.write_gatt_char(RACP, bytes.fromhex("0101"), response=True)
        async with asyncio.timeout(TIMEOUT_S):
            await gone
        first = await inbox.take(2)
        assert inbox.queue.empty()  # no third record, no RACP response
        assert sequence_numbers(first) == [1, 4]

        # Next connection: the gateway asks for what follows the last record it got.
        meter.disconnect_after = None
        async with BleakClient(ADDRESS, backend=CLIENT) as again:
            records, response = await racp(again, await subscribed(again), "0103010500")
        assert sequence_numbers(records) == [5, 9]
        assert response == bytes.fromhex("06000101")
        assert meter.records == STORED

    run(test)


def test_a_glucose_meter_can_hang_up_after_its_last_record_before_the_response() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualGlucoseMeter(ADDRESS, STORED[:2], disconnect_after=2))
        gone, callback = disconnection()
        client = BleakClient(ADDRESS, callback, backend=CLIENT)
        await client.connect()
        inbox = await subscribed(client)
        await client.write_gatt_char(RACP, bytes.fromhex("0101"), response=True)
        async with asyncio.timeout(TIMEOUT_S):
            await gone
        assert sequence_numbers(await inbox.take(2)) == [1, 4]
        assert inbox.queue.empty()

    run(test)


def test_replaced_records_restart_the_sequence_numbers() -> None:
    async def test(air: VirtualAir) -> None:
        meter = await air.add(VirtualGlucoseMeter(ADDRESS, STORED))
        async with BleakClient(ADDRESS, backend=CLIENT) as client:
            inbox = await subscribed(client)
            records, _ = await racp(client, inbox, "0106")
            assert sequence_numbers(records) == [9]

            meter.replace_records([record(1, 90), record(2, 95)])
            records, response = await racp(client, inbox, "0106")
            assert sequence_numbers(records) == [2]
            assert records[0].value == record(2, 95)
            assert response == bytes.fromhex("06000101")
            _, count = await racp(client, inbox, "0401")
            assert count == bytes.fromhex("05000200")
            records, response = await racp(client, inbox, "0103010a00")  # >= 10: none now
            assert (records, response) == ([], bytes.fromhex("06000106"))

            meter.add_record(record(3))
            records, _ = await racp(client, inbox, "0103010300")
            assert sequence_numbers(records) == [3]

    run(test)
