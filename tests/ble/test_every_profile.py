"""The production read path against a virtual device of every standard profile: the bytes of
``gatt_vectors.json`` indicated or notified through bleak become the same readings as the
bytes handed straight to the agent; battery and clock; transfers resumed after a hang-up;
a glucose meter whose record numbering restarted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("bumble", reason="the Bumble test backend needs the 'bumble' package")

from carewatch_contract.messages import DeviceType
from gateway_agent.agent import GatewayAgent
from gateway_agent.ble.bumble_backend import VirtualAir
from gateway_agent.ble.transport import racp_progress_name
from gateway_agent.ble.virtual_devices import (
    VirtualBloodPressureCuff,
    VirtualBodyCompositionScale,
    VirtualGlucoseMeter,
    VirtualHeartRateMonitor,
    VirtualPeripheral,
    VirtualPulseOximeter,
    VirtualThermometer,
    VirtualWeightScale,
)
from gateway_agent.devices import EnrolledDevice
from gateway_agent.outbox import Outbox
from tests.ble.test_transport import (
    CUFF,
    METER,
    VECTORS,
    new_record,
    read_fast,
    readings_in,
    run,
)

pytestmark = pytest.mark.ble

ADDRESS = "C0:FF:EE:00:03:01"


def vectors(characteristic: str) -> list[bytes]:
    """Every valid vector of one characteristic."""
    return [
        bytes.fromhex(v["hex"])
        for v in VECTORS
        if v["characteristic_uuid"] == characteristic and not v["expected"].get("invalid")
    ]


PROFILE_CASES: dict[str, tuple[DeviceType, str, Callable[[list[bytes]], VirtualPeripheral]]] = {
    "weight scale": (
        DeviceType.WEIGHT_SCALE,
        "2A9D",
        lambda values: VirtualWeightScale(ADDRESS, values),
    ),
    "body composition scale": (
        DeviceType.BODY_COMPOSITION,
        "2A9C",
        lambda values: VirtualBodyCompositionScale(ADDRESS, values),
    ),
    "thermometer": (
        DeviceType.THERMOMETER,
        "2A1C",
        lambda values: VirtualThermometer(ADDRESS, values),
    ),
    "pulse oximeter, spot-check": (
        DeviceType.PULSE_OXIMETER,
        "2A5E",
        lambda values: VirtualPulseOximeter(ADDRESS, spot_checks=values, has_continuous=False),
    ),
    "pulse oximeter, continuous": (
        DeviceType.PULSE_OXIMETER,
        "2A5F",
        lambda values: VirtualPulseOximeter(ADDRESS, continuous=values, has_spot_check=False),
    ),
    "heart rate monitor": (
        DeviceType.HEART_RATE,
        "2A37",
        lambda values: VirtualHeartRateMonitor(ADDRESS, values),
    ),
}


def direct_readings(device: EnrolledDevice, characteristic: str, tmp_path: Path) -> list[tuple]:
    """What the agent makes of the same bytes handed to it directly (no Bluetooth)."""
    outbox = Outbox(tmp_path / "direct.sqlite")
    agent = GatewayAgent(outbox)
    for value in vectors(characteristic):
        agent.accept(device, characteristic, value, stored_record=True)
    found = sorted((r.loinc, r.value, r.raw_hex) for r in readings_in(outbox))
    outbox.close()
    return found


@pytest.mark.parametrize("case", list(PROFILE_CASES))
def test_every_profile_is_read_through_bleak_into_the_same_readings(
    case: str, tmp_path: Path
) -> None:
    device_type, characteristic, make = PROFILE_CASES[case]
    device = EnrolledDevice(ADDRESS, device_type, "patient-1")
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(make(vectors(characteristic)))
        result = await read_fast(device, agent)
        assert result.outcome == "ok", result
        assert result.values == len(vectors(characteristic))

    run(test)
    stored = sorted((r.loinc, r.value, r.raw_hex) for r in readings_in(outbox))
    assert stored
    assert stored == direct_readings(device, characteristic, tmp_path)
    assert {r.characteristic for r in readings_in(outbox)} == {characteristic}
    assert outbox.undecodable() == []


def test_the_battery_is_read_and_a_wrong_device_clock_is_set(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)
    wrong = datetime(2020, 1, 1, 0, 0)  # noqa: DTZ001 - a device clock is naive local time

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(
            VirtualBloodPressureCuff(
                CUFF.device_id, vectors("2A35"), battery_percent=37, clock=wrong
            )
        )
        result = await read_fast(CUFF, agent)
        assert result.outcome == "ok", result
        assert (result.battery_percent, result.clock_set) == (37, True)
        (written,) = cuff.time_writes
        assert len(written) == 10
        assert abs(cuff.clock - datetime.now()) < timedelta(seconds=5)  # noqa: DTZ005

    run(test)
    assert outbox.device_status_rows()[CUFF.device_id].battery_percent == 37
    assert {s.battery_percent for s in agent.device_statuses()} == {37}


def test_a_read_only_clock_is_left_alone_and_a_device_without_battery_is_read(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(
            VirtualBloodPressureCuff(
                CUFF.device_id,
                vectors("2A35"),
                battery_percent=None,
                current_time_writable=False,
            )
        )
        result = await read_fast(CUFF, agent)
        assert result.outcome == "ok", result
        assert (result.battery_percent, result.clock_set, result.values) == (None, False, 2)
        assert cuff.time_writes == []

    run(test)


def test_a_cuff_that_hangs_up_mid_transfer_sends_the_rest_next_time_stored_once(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)
    memory = vectors("2A35")

    async def test(air: VirtualAir) -> None:
        cuff = await air.add(VirtualBloodPressureCuff(CUFF.device_id, memory, disconnect_after=1))
        first = await read_fast(CUFF, agent)
        assert (first.outcome, first.values) == ("ok", 1)  # hanging up is what cuffs do
        assert len(cuff.pending) == len(memory) - 1
        second = await read_fast(CUFF, agent)
        assert (second.outcome, second.values) == ("ok", 1)
        assert cuff.pending == []

    run(test)
    assert sorted((r.loinc, r.value, r.raw_hex) for r in readings_in(outbox)) == direct_readings(
        CUFF, "2A35", tmp_path
    )


def test_a_meter_that_hangs_up_mid_transfer_is_resumed_after_the_last_record_stored(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        meter = await air.add(
            VirtualGlucoseMeter(
                METER.device_id, [new_record(n, 90 + n) for n in range(1, 6)], disconnect_after=2
            )
        )
        first = await read_fast(METER, agent, progress=outbox)
        assert first.outcome == "disconnected_mid_transfer", first
        assert (first.values, first.last_sequence_number) == (2, 2)
        meter.disconnect_after = None  # the next time it stays in range
        second = await read_fast(METER, agent, progress=outbox)
        assert second.outcome == "ok", second
        assert (second.racp_request, second.values) == ("0103010300", 3)
        assert outbox.recall(racp_progress_name(METER.device_id)) == 5

    run(test)
    glucose = sorted(r.value for r in readings_in(outbox) if r.characteristic == "2A18")
    assert glucose == [91.0, 92.0, 93.0, 94.0, 95.0]


def test_a_meter_whose_record_numbers_restarted_is_read_again_from_its_first_record(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox.sqlite")
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        meter = await air.add(
            VirtualGlucoseMeter(METER.device_id, [new_record(n, 100 + n) for n in range(1, 4)])
        )
        first = await read_fast(METER, agent, progress=outbox)
        assert (first.outcome, first.values, first.last_sequence_number) == ("ok", 3, 3)
        meter.replace_records([new_record(1, 140), new_record(2, 150)])  # memory cleared

        restarted = await read_fast(METER, agent, progress=outbox)
        assert restarted.outcome == "ok", restarted
        assert restarted.sequence_restarted is True
        assert (restarted.values, restarted.last_sequence_number) == (2, 2)
        assert outbox.recall(racp_progress_name(METER.device_id)) == 2

        meter.add_record(new_record(3, 160))
        after = await read_fast(METER, agent, progress=outbox)
        assert (after.racp_request, after.values, after.sequence_restarted) == (
            "0103010300",
            1,
            False,
        )
        assert [r.hex() for r in meter.requests] == [
            "0101",  # first read: everything
            "0103010400",  # nothing after 3 ...
            "0106",  # ... and the last record is number 2: numbering restarted
            "0101",  # so everything again
            "0103010300",
        ]

    run(test)
    glucose = sorted(r.value for r in readings_in(outbox) if r.characteristic == "2A18")
    assert glucose == [101.0, 102.0, 103.0, 140.0, 150.0, 160.0]
