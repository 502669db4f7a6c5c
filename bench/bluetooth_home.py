"""A gateway's Bluetooth run reading six virtual devices, for the memory benchmark.

``python -m bench.bluetooth_home --seconds 20`` runs :func:`gateway_agent.ble_runner.
serve_bluetooth` (bleak, bleak-retry-connector, outbox, uplink: the production wiring) against
a cuff, a scale, a thermometer, an oximeter, a heart-rate monitor and a glucose meter on an
in-process Bumble link, reading them every second. The virtual radio and devices live in the
same process, so the resident memory measured from outside is an upper bound of a gateway's
on a real radio (where BlueZ does that work in its own process).

Settings come from the environment, as for ``python -m gateway_agent run``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
from datetime import datetime
from pathlib import Path

from carewatch_contract.messages import DeviceType
from gateway_agent.ble.backend_config import backends_from_env
from gateway_agent.ble.bumble_backend import VirtualAir
from gateway_agent.ble.virtual_devices import (
    VirtualBloodPressureCuff,
    VirtualGlucoseMeter,
    VirtualHeartRateMonitor,
    VirtualPeripheral,
    VirtualPulseOximeter,
    VirtualThermometer,
    VirtualWeightScale,
)
from gateway_agent.ble_runner import serve_bluetooth
from gateway_agent.gatt.encode import glucose_measurement
from gateway_agent.registry import enroll
from gateway_agent.settings import GatewaySettings

PATIENT = "pt-bench"
VECTORS = Path(__file__).resolve().parents[1] / "tests" / "data" / "gatt_vectors.json"


def vectors(characteristic: str) -> list[bytes]:
    """The valid device vectors of one characteristic."""
    return [
        bytes.fromhex(v["hex"])
        for v in json.loads(VECTORS.read_text(encoding="utf-8"))
        if v["characteristic_uuid"] == characteristic and not v["expected"].get("invalid")
    ]


def six_devices() -> list[tuple[VirtualPeripheral, DeviceType]]:
    records = [
        glucose_measurement(
            sequence_number=n,
            base_time=datetime(2026, 11, 28, 7, n),  # noqa: DTZ001 - device local time
            mg_dl=100 + n,
        )
        for n in range(1, 31)
    ]
    return [
        (
            VirtualBloodPressureCuff("C0:FF:EE:00:0B:01", vectors("2A35")),
            DeviceType.BLOOD_PRESSURE,
        ),
        (VirtualWeightScale("C0:FF:EE:00:0B:02", vectors("2A9D")), DeviceType.WEIGHT_SCALE),
        (VirtualThermometer("C0:FF:EE:00:0B:03", vectors("2A1C")), DeviceType.THERMOMETER),
        (
            VirtualPulseOximeter(
                "C0:FF:EE:00:0B:04", spot_checks=vectors("2A5E"), continuous=vectors("2A5F")
            ),
            DeviceType.PULSE_OXIMETER,
        ),
        (
            VirtualHeartRateMonitor("C0:FF:EE:00:0B:05", vectors("2A37")),
            DeviceType.HEART_RATE,
        ),
        (VirtualGlucoseMeter("C0:FF:EE:00:0B:06", records), DeviceType.GLUCOSE_METER),
    ]


async def run(seconds: float, registry: Path, settings: GatewaySettings) -> None:
    devices = six_devices()
    for device, device_type in devices:
        enroll(registry, address=device.address, device_type=device_type, patient_id=PATIENT)
    backends = backends_from_env({"GATEWAY_BLE_BACKEND": "gateway_agent.ble.bumble_backend:BUMBLE"})
    stop = threading.Event()
    async with VirtualAir() as air:
        for device, _type in devices:
            await air.add(device)
        reading = asyncio.ensure_future(
            serve_bluetooth(
                settings,
                registry_path=registry,
                stop=stop,
                cycle_s=1.0,
                backends=backends,
                scan_timeout_s=3.0,
                connect_timeout_s=3.0,
                idle_timeout_s=0.5,
                racp_timeout_s=3.0,
            )
        )
        await asyncio.sleep(seconds)
        stop.set()
        await reading


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    args = parser.parse_args()
    settings = GatewaySettings.from_env()
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(run(args.seconds, Path(folder) / "devices.toml", settings))


if __name__ == "__main__":
    main()
