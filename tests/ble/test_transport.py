"""The production read path (gateway_agent.ble.transport) against virtual devices.

The code under test runs unchanged: the real GatewayAgent, a real Outbox in a temporary
folder, and the Bumble backend chosen through configuration (``GATEWAY_BLE_BACKEND``'s
resolver), handed in through the ``backend`` argument. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

pytest.importorskip("bumble", reason="the Bumble test backend needs the 'bumble' package")

from bumble.device import Connection

from carewatch_contract.messages import DeviceType
from gateway_agent.agent import GatewayAgent
from gateway_agent.ble.backend_config import BleBackends, backends_from_env
from gateway_agent.ble.bumble_backend import VirtualAir
from gateway_agent.ble.profiles import PROFILES, profile_for, short_uuid, sig_uuid
from gateway_agent.ble.transport import (
    ReadResult,
    racp_progress_name,
    read_device,
    read_devices,
)
from gateway_agent.ble.virtual_devices import VirtualBloodPressureCuff, VirtualGlucoseMeter
from gateway_agent.devices import EnrolledDevice
from gateway_agent.gatt.encode import glucose_measurement
from gateway_agent.gatt.glucose import (
    RacpResponseCode,
)
from gateway_agent.outbox import Outbox

pytestmark = pytest.mark.ble

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "gatt_vectors.json").read_text("utf-8")
)

# Configuration, as a gateway started with GATEWAY_BLE_BACKEND=... would resolve it.
BACKEND: BleBackends = backends_from_env(
    {"GATEWAY_BLE_BACKEND": "gateway_agent.ble.bumble_backend:BUMBLE"}
)

CUFF = EnrolledDevice("C0:FF:EE:00:01:03", DeviceType.BLOOD_PRESSURE, "patient-1")
CUFF_2 = EnrolledDevice("C0:FF:EE:00:01:04", DeviceType.BLOOD_PRESSURE, "patient-2")
METER = EnrolledDevice("C0:FF:EE:00:02:01", DeviceType.GLUCOSE_METER, "patient-1")
ABSENT = EnrolledDevice("C0:FF:EE:00:09:09", DeviceType.BLOOD_PRESSURE, "patient-3")


async def read_fast(
    device: EnrolledDevice, agent: GatewayAgent, *, progress: Outbox | None = None
) -> ReadResult:
    """read_device with the Bumble backend and short timeouts (the link takes milliseconds)."""
    return await read_device(
        device,
        agent,
        backend=BACKEND,
        progress=progress,
        scan_timeout_s=2.0,
        connect_timeout_s=2.0,
        idle_timeout_s=0.3,
        racp_timeout_s=2.0,
    )


def vector(characteristic: str, index: int = 0, *, invalid: bool = False) -> bytes:
    found = [
        bytes.fromhex(v["hex"])
        for v in VECTORS
        if v["characteristic_uuid"] == characteristic
        and bool(v["expected"].get("invalid")) == invalid
    ]
    return found[index]


def run(test: Callable[[VirtualAir], Awaitable[None]]) -> None:
    async def main() -> None:
        async with asyncio.timeout(30), VirtualAir() as air:
            await test(air)

    asyncio.run(main())


@pytest.fixture
def outbox_path(tmp_path: Path) -> Path:
    return tmp_path / "outbox.sqlite"


@pytest.fixture
def outbox(outbox_path: Path) -> Iterator[Outbox]:
    box = Outbox(outbox_path)
    yield box
    box.close()


@dataclass(frozen=True)
class Stored:
    """The fields of an outbox reading these tests look at."""

    device_id: str
    loinc: str
    value: float
    characteristic: str
    raw_hex: str


def readings_in(outbox: Outbox) -> list[Stored]:
    """Every reading in the outbox, from its contract JSON.

    Not through ``parse_reading``: that also applies ingest's plausibility limits, and the
    first glucose vector (Nordic's, 30 kg/L) is far outside them; see the report.
    """
    bodies = [json.loads(p.body) for p in outbox.take_due(limit=1000, resend_after_s=0)]
    return [
        Stored(
            b["device"]["id"], b["loinc"], b["value"], b["raw"]["characteristic"], b["raw"]["hex"]
        )
        for b in bodies
    ]


class HangingUpGlucoseMeter(VirtualGlucoseMeter):
    """Sends its first record, then drops the link without a RACP response."""

    async def _answer(self, connection: Connection, request: bytes) -> bytes:
        await self.device.notify_subscriber(connection, self.measurement, self.records[0])
        await connection.disconnect()
        await asyncio.Event().wait()  # never answers; cancelled when the air closes
        raise AssertionError("unreachable")


def new_record(sequence_number: int, mg_dl: float) -> bytes:
    return glucose_measurement(
        sequence_number=sequence_number,
        base_time=datetime(2024, 5, 1, 8, sequence_number),  # noqa: DTZ001 - device local time
        mg_dl=mg_dl,
    )


# Profiles


def test_every_device_type_has_a_profile_and_uuid_helpers_round_trip() -> None:
    assert set(PROFILES) == set(DeviceType)
    assert sig_uuid(0x2A35) == "00002a35-0000-1000-8000-00805f9b34fb"
    assert short_uuid("00002A35-0000-1000-8000-00805F9B34FB") == "2A35"
    assert short_uuid("ecbe3980-c9a2-11e1-b1bd-0002a5d5c51b") is None
    deliveries = {s.key: s.delivery.value for p in PROFILES.values() for s in p.subscriptions}
    assert deliveries == {
        "2A35": "indicate",
        "2A1C": "indicate",
        "2A9D": "indicate",
        "2A9C": "indicate",
        "2A5E": "indicate",
        "2A52": "indicate",
        "2A37": "notify",
        "2A5F": "notify",
        "2A18": "notify",
    }
    assert profile_for(DeviceType.GLUCOSE_METER).service_uuids == (sig_uuid(0x1808),)


# (1) cuff


def test_the_cuffs_indication_ends_up_in_the_outbox_as_readings(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(
            VirtualBloodPressureCuff(CUFF.device_id, [vector("2A35")], disconnect_when_done=True)
        )
        result = await read_fast(CUFF, agent)
        assert result.outcome == "ok", result
        assert result.error is None
        assert (result.values, result.readings, result.stored_values) == (1, 4, 1)
        assert cuff.sent == [vector("2A35")]

    run(test)
    readings = readings_in(outbox)
    values = {r.loinc: r.value for r in readings}
    assert values == {"8480-6": 138.0, "8462-4": 88.0, "8478-0": 120.0, "8867-4": 60.0}
    assert {r.characteristic for r in readings} == {"2A35"}
    assert {r.device_id for r in readings} == {CUFF.device_id}
    assert outbox.undecodable() == []


def test_a_cuff_that_stays_connected_is_read_until_idle(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF.device_id, [vector("2A35"), vector("2A35", 1)]))
        result = await read_fast(CUFF, agent)
        assert result.outcome == "ok", result
        assert (result.values, result.readings) == (2, 7)

    run(test)
    assert outbox.pending_count() == 7


# (2) glucose meter and RACP progress across reads and restarts


def test_glucose_records_are_fetched_once_across_reads_and_restarts(outbox_path: Path) -> None:
    first_outbox = Outbox(outbox_path)
    agent = GatewayAgent(first_outbox)
    progress = racp_progress_name(METER.device_id)
    results: list[ReadResult] = []

    async def test(air: VirtualAir) -> None:
        meter = await air.add(
            VirtualGlucoseMeter(METER.device_id, [vector("2A18", 0), vector("2A18", 1)])
        )

        async def read(agent: GatewayAgent, outbox: Outbox) -> ReadResult:
            result = await read_fast(METER, agent, progress=outbox)
            results.append(result)
            assert result.outcome == "ok", result
            return result

        first = await read(agent, first_outbox)
        assert (first.values, first.racp_request, first.racp_response_code) == (2, "0101", 1)
        assert first.readings == 1  # record 4 carries no concentration, hence no reading
        assert first_outbox.recall(progress) == 4 == first.last_sequence_number

        meter.add_record(new_record(5, 104))
        second = await read(agent, first_outbox)
        assert (second.values, second.readings, second.racp_request) == (1, 1, "0103010500")
        assert first_outbox.recall(progress) == 5

        # Gateway restart: a new agent and outbox on the same file.
        first_outbox.close()
        second_outbox = Outbox(outbox_path)
        try:
            again = GatewayAgent(second_outbox)
            meter.add_record(new_record(6, 98))
            third = await read(again, second_outbox)
            assert (third.values, third.readings, third.racp_request) == (1, 1, "0103010600")
            assert second_outbox.recall(progress) == 6

            # Nothing new: "no records found" (6) is success. The meter's last record is then
            # asked for its number only (numbering not restarted): nothing stored again.
            fourth = await read(again, second_outbox)
            assert (fourth.values, fourth.racp_request) == (0, "0103010700")
            assert fourth.racp_response_code == RacpResponseCode.NO_RECORDS_FOUND
            assert fourth.sequence_restarted is False

            glucose = [r for r in readings_in(second_outbox) if r.characteristic == "2A18"]
            assert len(glucose) == 3
            assert second_outbox.undecodable() == []
        finally:
            second_outbox.close()

        assert meter.requests == [
            bytes.fromhex(h) for h in ("0101", "0103010500", "0103010600", "0103010700", "0106")
        ]

    run(test)
    assert [r.stored_values for r in results] == [2, 1, 1, 0]


def test_a_meter_that_hangs_up_mid_transfer_keeps_what_it_sent(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(
            HangingUpGlucoseMeter(METER.device_id, [vector("2A18", 0), vector("2A18", 1)])
        )
        result = await read_fast(METER, agent, progress=outbox)
        assert result.outcome == "disconnected_mid_transfer", result
        assert result.values == 1
        assert result.error is not None and "disconnected" in result.error

    run(test)
    assert outbox.recall(racp_progress_name(METER.device_id)) == 1


def test_reading_a_meter_without_a_progress_store_is_a_programming_error(
    outbox: Outbox,
) -> None:
    async def main() -> None:
        await read_device(METER, GatewayAgent(outbox), backend=BACKEND)

    with pytest.raises(ValueError, match="progress="):
        asyncio.run(main())


# (3) silent device, (4) absent device


def test_a_device_that_never_indicates_times_out(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF.device_id, []))
        loop = asyncio.get_running_loop()
        started = loop.time()
        result = await read_device(
            CUFF,
            agent,
            backend=BACKEND,
            scan_timeout_s=2.0,
            connect_timeout_s=2.0,
            idle_timeout_s=0.5,
        )
        elapsed = loop.time() - started
        assert result.outcome == "timeout", result
        assert result.error is not None and "0.5 s" in result.error
        assert 0.5 <= elapsed < 1.5
        assert result.values == 0

    run(test)
    assert outbox.pending_count() == 0


def test_an_address_that_does_not_advertise_is_not_found(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF.device_id, [vector("2A35")]))
        result = await read_device(ABSENT, agent, backend=BACKEND, scan_timeout_s=0.3)
        assert result.outcome == "not_found", result
        assert result.error is not None and ABSENT.device_id in result.error

    run(test)


# (5) undecodable bytes


def test_undecodable_bytes_are_kept_for_inspection_and_give_no_reading(outbox: Outbox) -> None:
    agent = GatewayAgent(outbox)
    bad = vector("2A35", invalid=True)
    assert bad.hex() == "010203040506"

    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF.device_id, [bad], disconnect_when_done=True))
        result = await read_fast(CUFF, agent)
        assert result.outcome == "ok", result
        assert (result.values, result.readings) == (1, 0)

    run(test)
    assert outbox.pending_count() == 0
    [(device_id, characteristic, hex_, error)] = outbox.undecodable()
    assert (device_id, characteristic, hex_) == (CUFF.device_id, "2A35", "010203040506")
    assert error


# (6) several devices concurrently


def test_devices_are_read_concurrently_and_one_failure_does_not_affect_others(
    outbox: Outbox,
) -> None:
    agent = GatewayAgent(outbox)
    devices: Sequence[EnrolledDevice] = (CUFF, METER, ABSENT, CUFF_2)

    async def test(air: VirtualAir) -> None:
        await air.add(
            VirtualBloodPressureCuff(CUFF.device_id, [vector("2A35")], disconnect_when_done=True)
        )
        await air.add(VirtualGlucoseMeter(METER.device_id, [vector("2A18", 0)]))
        await air.add(VirtualBloodPressureCuff(CUFF_2.device_id, []))  # never indicates
        results = await read_devices(
            devices,
            agent,
            backend=BACKEND,
            progress=outbox,
            scan_timeout_s=0.5,
            connect_timeout_s=2.0,
            idle_timeout_s=0.3,
            racp_timeout_s=2.0,
        )
        assert [r.device_id for r in results] == [d.device_id for d in devices]
        assert [r.outcome for r in results] == ["ok", "ok", "not_found", "timeout"], results
        assert [r.readings for r in results] == [4, 1, 0, 0]

    run(test)
    by_device: dict[str, int] = {}
    for reading in readings_in(outbox):
        by_device[reading.device_id] = by_device.get(reading.device_id, 0) + 1
    assert by_device == {CUFF.device_id: 4, METER.device_id: 1}
