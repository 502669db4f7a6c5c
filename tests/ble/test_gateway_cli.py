"""Enrolment end to end: scan, enroll, status and the Bluetooth run loop.

The scan and the read go through the production code with the Bumble backend resolved from
``GATEWAY_BLE_BACKEND``'s setting, against virtual devices; the CLI runs in-process through
``gateway_agent.__main__.main`` with its registry and outbox in a temporary folder, named by
environment variables. Nothing is patched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

pytest.importorskip("bumble", reason="the Bumble test backend needs the 'bumble' package")

from bumble.core import UUID
from bumble.gatt import Characteristic, Service

from carewatch_contract.messages import DeviceType
from gateway_agent.__main__ import main
from gateway_agent.agent import GatewayAgent
from gateway_agent.ble.backend_config import BleBackends, backends_from_env
from gateway_agent.ble.bumble_backend import VirtualAir
from gateway_agent.ble.profiles import PROFILES
from gateway_agent.ble.transport import read_devices
from gateway_agent.ble.virtual_devices import VirtualBloodPressureCuff, VirtualPeripheral
from gateway_agent.ble_runner import read_cycles, run_bluetooth
from gateway_agent.outbox import Outbox
from gateway_agent.registry import enroll, load_registry
from gateway_agent.scan import SERVICE_NAMES, scan_health_devices
from gateway_agent.settings import GatewaySettings

pytestmark = pytest.mark.ble

BACKEND_SPEC = "gateway_agent.ble.bumble_backend:BUMBLE"
BACKEND: BleBackends = backends_from_env({"GATEWAY_BLE_BACKEND": BACKEND_SPEC})
CUFF_ADDRESS = "C0:FF:EE:00:01:03"
TAG_ADDRESS = "C0:FF:EE:00:0F:01"

VECTORS = json.loads(
    (Path(__file__).resolve().parents[1] / "data" / "gatt_vectors.json").read_text("utf-8")
)
CUFF_VALUE = next(
    bytes.fromhex(v["hex"])
    for v in VECTORS
    if v["characteristic_uuid"] == "2A35" and not v["expected"].get("invalid")
)


class VirtualBatteryTag(VirtualPeripheral):
    """A device that advertises only the Battery Service (0x180F): not a health device."""

    def __init__(self, address: str) -> None:
        super().__init__(address, "CW-TAG", 0x180F)

    def services(self) -> list[Service]:
        level = Characteristic(
            UUID.from_16_bits(0x2A19), Characteristic.Properties.READ, Characteristic.READABLE, b"d"
        )
        return [Service(UUID.from_16_bits(0x180F), [level])]


def run(test: Callable[[VirtualAir], Awaitable[None]]) -> None:
    async def main_() -> None:
        async with asyncio.timeout(30), VirtualAir() as air:
            await test(air)

    asyncio.run(main_())


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(registry, outbox) in a temporary folder, named by the environment as in production."""
    registry = tmp_path / "conf" / "devices.toml"
    outbox = tmp_path / "data" / "outbox.sqlite"
    monkeypatch.setenv("GATEWAY_REGISTRY_PATH", str(registry))
    monkeypatch.setenv("GATEWAY_OUTBOX_PATH", str(outbox))
    monkeypatch.setenv("GATEWAY_BLE_BACKEND", BACKEND_SPEC)
    return registry, outbox


def status_line(out: str, address: str) -> list[str]:
    """The columns of ``address``'s row in the status table (split on 2+ spaces)."""
    line = next(line for line in out.splitlines() if line.startswith(address))
    return re.split(r"\s{2,}", line)


# Scan


def test_every_health_service_has_a_name() -> None:
    assert {s for p in PROFILES.values() for s in p.services} == set(SERVICE_NAMES)


def test_scan_finds_the_virtual_cuff_and_skips_other_devices() -> None:
    async def test(air: VirtualAir) -> None:
        await air.add(VirtualBloodPressureCuff(CUFF_ADDRESS, [CUFF_VALUE], name="CW-BPM"))
        await air.add(VirtualBatteryTag(TAG_ADDRESS))
        found = await scan_health_devices(timeout_s=0.5, backend=BACKEND)
        assert [d.address for d in found] == [CUFF_ADDRESS]
        (cuff,) = found
        assert cuff.name == "CW-BPM"
        assert cuff.services == ["Blood Pressure (0x1810)"]
        assert cuff.device_types == [DeviceType.BLOOD_PRESSURE]
        assert isinstance(cuff.rssi, int)

    run(test)


def test_scan_with_nothing_advertising_finds_nothing() -> None:
    async def test(_air: VirtualAir) -> None:
        assert await scan_health_devices(timeout_s=0.2, backend=BACKEND) == []

    run(test)


def test_the_scan_command_reports_a_bluetooth_failure_with_exit_code_1(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # No VirtualAir is active: to the backend this is a gateway without a working adapter.
    assert main(["scan", "--timeout", "0.1"]) == 1
    assert "Bluetooth scan failed: no VirtualAir is active" in capsys.readouterr().err


# Enroll, read, status


def test_enroll_then_status_shows_never_then_the_last_reading_after_a_read(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, outbox_path = paths
    assert (
        main(
            [
                "enroll",
                "--address",
                CUFF_ADDRESS.lower(),
                "--type",
                "blood_pressure",
                "--patient",
                "patient-1",
                "--name",
                "Kitchen cuff",
            ]
        )
        == 0
    )
    assert f"Enrolled {CUFF_ADDRESS} (Kitchen cuff)" in capsys.readouterr().out

    assert main(["status"]) == 0
    assert status_line(capsys.readouterr().out, CUFF_ADDRESS) == [
        CUFF_ADDRESS,
        "Kitchen cuff",
        "blood_pressure",
        "patient-1",
        "never",
        "never",
        "never",
    ]
    assert not outbox_path.exists()  # status does not create an outbox

    devices = load_registry(registry)
    outbox = Outbox(outbox_path)
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(
            VirtualBloodPressureCuff(CUFF_ADDRESS, [CUFF_VALUE], disconnect_when_done=True)
        )
        (result,) = await read_devices(
            devices,
            agent,
            backend=BACKEND,
            progress=outbox,
            scan_timeout_s=2.0,
            connect_timeout_s=2.0,
            idle_timeout_s=0.3,
        )
        assert result.outcome == "ok", result
        assert result.readings == 4

    before = time.time()
    run(test)
    agent.record_battery(devices[0], 80)
    outbox.close()

    assert main(["status"]) == 0
    columns = status_line(capsys.readouterr().out, CUFF_ADDRESS)
    assert columns[:4] == [CUFF_ADDRESS, "Kitchen cuff", "blood_pressure", "patient-1"]
    last_reading, battery, last_seen = columns[4:]
    assert last_reading != "never" and last_seen != "never"
    assert battery == "80%"
    statuses = Outbox(outbox_path)
    try:
        row = statuses.device_status_rows()[CUFF_ADDRESS]
    finally:
        statuses.close()
    assert row.last_value_at is not None and row.last_value_at >= before - 1
    assert row.last_seen == row.last_value_at


def test_an_undecodable_value_counts_as_seen_but_not_as_a_reading(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, outbox_path = paths
    enroll(registry, address=CUFF_ADDRESS, device_type="blood_pressure", patient_id="p1")
    outbox = Outbox(outbox_path)
    agent = GatewayAgent(outbox)
    agent.accept(load_registry(registry)[0], "2A35", b"\x00")
    outbox.close()
    assert main(["status"]) == 0
    columns = status_line(capsys.readouterr().out, CUFF_ADDRESS)
    assert columns[4] == "never" and columns[6] != "never"


def test_enroll_and_status_through_the_cli(
    paths: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    registry, _outbox = paths
    assert main(["status"]) == 0
    assert "No devices enrolled" in capsys.readouterr().out
    args = ["enroll", "--address", "C0:FF:EE:00:02:01", "--type", "glucose_meter"]
    assert main([*args, "--patient", "patient-7"]) == 0
    assert main([*args, "--patient", "patient-8"]) == 2
    assert "C0:FF:EE:00:02:01 is already enrolled" in capsys.readouterr().err
    assert main(["enroll", "--address", "nope", "--type", "thermometer", "--patient", "p"]) == 2
    assert "field 'address': 'nope' is not a Bluetooth address" in capsys.readouterr().err
    assert main(["status"]) == 0
    out = capsys.readouterr().out
    assert status_line(out, "C0:FF:EE:00:02:01")[2:4] == ["glucose_meter", "patient-7"]
    assert registry.exists()
    assert main(["unenroll", "--address", "c0:ff:ee:00:02:01"]) == 0
    assert "Removed C0:FF:EE:00:02:01" in capsys.readouterr().out
    assert main(["unenroll", "--address", "C0:FF:EE:00:02:01"]) == 2
    assert "no device with address C0:FF:EE:00:02:01 is enrolled" in capsys.readouterr().err
    assert main(["status"]) == 0
    assert "No devices enrolled" in capsys.readouterr().out


def test_the_registry_defaults_to_the_outbox_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("GATEWAY_REGISTRY_PATH", raising=False)
    monkeypatch.setenv("GATEWAY_OUTBOX_PATH", str(tmp_path / "box" / "outbox.sqlite"))
    assert (
        main(["enroll", "--address", CUFF_ADDRESS, "--type", "thermometer", "--patient", "p"]) == 0
    )
    assert (tmp_path / "box" / "devices.toml").exists()
    capsys.readouterr()


@pytest.mark.parametrize("command", [["status"], ["run"]])
def test_a_malformed_registry_gives_exit_code_2_and_says_where(
    paths: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: list[str],
) -> None:
    registry, outbox_path = paths
    monkeypatch.setenv("GATEWAY_ID", "gw-test")
    monkeypatch.setenv("MQTT_URL", "mqtt://127.0.0.1:1")
    registry.parent.mkdir(parents=True)
    registry.write_text(
        '[[devices]]\naddress = "C0:FF:EE:00:01:03"\ntype = "toaster"\npatient_id = "p"\n',
        encoding="utf-8",
    )
    assert main(command) == 2
    err = capsys.readouterr().err
    assert str(registry) in err
    assert "device entry 1 (C0:FF:EE:00:01:03): field 'type': unknown device type 'toaster'" in err
    assert not outbox_path.exists()  # nothing was started


def test_a_bad_backend_setting_gives_exit_code_2(
    paths: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("GATEWAY_BLE_BACKEND", "no-colon")
    assert main(["scan", "--timeout", "0.1"]) == 2
    assert "GATEWAY_BLE_BACKEND must look like" in capsys.readouterr().err


# The run loop


def test_run_bluetooth_cycles_reloads_the_registry_and_stops(
    paths: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    registry, outbox_path = paths
    settings = GatewaySettings.from_env(
        {
            "GATEWAY_ID": "gw-test",
            "MQTT_URL": "mqtt://127.0.0.1:1",
            "GATEWAY_OUTBOX_PATH": str(outbox_path),
        }
    )
    stop = threading.Event()
    caplog.set_level(logging.INFO, logger="gateway_agent.ble_runner")

    def logged(text: str) -> bool:
        return any(text in r.getMessage() for r in caplog.records)

    def wait_for(text: str) -> None:
        deadline = time.monotonic() + 15
        while not logged(text):
            assert time.monotonic() < deadline, f"never logged {text!r}"
            time.sleep(0.05)

    runner = threading.Thread(
        target=run_bluetooth,
        args=(settings,),
        kwargs={"registry_path": registry, "stop": stop, "cycle_s": 0.1, "backends": BACKEND},
    )
    runner.start()
    try:
        wait_for("no devices enrolled")
        enroll(registry, address=CUFF_ADDRESS, device_type="blood_pressure", patient_id="p-secret")
        wait_for("registry changed: 1 device(s) enrolled")
        # No VirtualAir in this thread's loop: the scan fails, the cycle reports it, goes on.
        wait_for("1 device(s), error=1, 0 value(s), 0 reading(s) stored")
    finally:
        stop.set()
        runner.join(timeout=15)
    assert not runner.is_alive()
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert not any("p-secret" in m for m in info)


def test_the_gateways_read_loop_reads_an_enrolled_virtual_cuff_into_the_outbox(
    paths: tuple[Path, Path],
) -> None:
    """The loop ``run`` drives, on one event loop, against a device on the virtual air."""
    registry, outbox_path = paths
    enroll(
        registry,
        address=CUFF_ADDRESS,
        device_type=DeviceType.BLOOD_PRESSURE,
        patient_id="patient-1",
    )
    outbox = Outbox(outbox_path)
    agent = GatewayAgent(outbox)

    async def test(air: VirtualAir) -> None:
        await air.add(
            VirtualBloodPressureCuff(CUFF_ADDRESS, [CUFF_VALUE], disconnect_when_done=True)
        )
        stored = await read_cycles(
            agent,
            outbox,
            registry_path=registry,
            devices=load_registry(registry),
            stop=threading.Event(),
            cycle_s=0.1,
            backends=BACKEND,
            max_cycles=1,
            scan_timeout_s=2.0,
            connect_timeout_s=2.0,
            idle_timeout_s=0.3,
        )
        assert stored == 4

    try:
        run(test)
        assert outbox.pending_count() == 4
        assert outbox.device_status_rows()[CUFF_ADDRESS].last_value_at is not None
    finally:
        outbox.close()
