"""Gateway footprint: decode throughput on one core, and resident memory of a running gateway.

Targets (issue 3): at least 200,000 payloads per second decoded on one core; under 60 MB
resident with 6 devices and 10 simulated patients. Memory is measured twice: the simulated
gateway (10 patients, their devices simulated in-process) and the Bluetooth run reading six
virtual devices through bleak (:mod:`bench.bluetooth_home`; the virtual radio runs in the
same process, so that figure is an upper bound). Prints a table, writes
bench/results/gateway.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from gateway_agent.gatt import decode

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "gateway.json"
VECTORS = REPO / "tests" / "data" / "gatt_vectors.json"
DECODE_TARGET_PER_S = 200_000
MEMORY_TARGET_MB = 60.0


def decode_throughput(seconds: float = 3.0) -> tuple[float, int]:
    """Payloads decoded per second over the valid real-device vectors, one core."""
    payloads = [
        (v["characteristic_uuid"], bytes.fromhex(v["hex"]))
        for v in json.loads(VECTORS.read_text())
        if not v["expected"].get("invalid") and v["characteristic_uuid"] not in ("SFLOAT", "FLOAT")
    ]
    decoded = 0
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    while time.perf_counter() < deadline:
        for characteristic, payload in payloads:
            decode(characteristic, payload)
        decoded += len(payloads)
    return decoded / (time.perf_counter() - started), len(payloads)


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _peak_rss_mb(command: list[str], env: dict[str, str], seconds: float) -> float:
    """Run ``command`` for ``seconds`` and return its peak resident memory (MB)."""
    proc = subprocess.Popen(
        command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    peak = 0.0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and proc.poll() is None:
            peak = max(peak, _rss_mb(proc.pid))
            time.sleep(0.25)
    finally:
        proc.terminate()
        proc.wait(10)
    return peak


def gateway_memory(seconds: float = 20.0) -> tuple[float, int, float]:
    """Peak resident memory (MB) of a simulated gateway with 10 patients, how many devices
    they have, and the peak of the Bluetooth run reading six virtual devices."""
    from gateway_agent.simulator.population import build_population

    devices = sum(len(p.devices) for p in build_population(patients=10, seed=7))
    with ExitStack() as stack:
        url = os.environ.get("MQTT_URL")
        protocol = os.environ.get("MQTT_PROTOCOL", "5")
        if not url:
            from devstack.broker import EmbeddedBroker

            broker_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-bench-"))
            broker = stack.enter_context(EmbeddedBroker(broker_dir))
            url, protocol = broker.url, broker.protocol
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        env = {
            **os.environ,
            "GATEWAY_ID": "gw-bench",
            "MQTT_URL": url,
            "MQTT_PROTOCOL": protocol,
            "GATEWAY_OUTBOX_PATH": str(workdir / "outbox.sqlite"),
            "GATEWAY_PAGE_PORT": "0",
        }
        simulated = _peak_rss_mb(
            [
                sys.executable,
                "-m",
                "gateway_agent",
                "run",
                "--simulate",
                "--patients",
                "10",
                "--history-days",
                "1",
                "--rate",
                "6",
            ],
            env,
            seconds,
        )
        env["GATEWAY_OUTBOX_PATH"] = str(workdir / "bluetooth-outbox.sqlite")
        bluetooth = _peak_rss_mb(
            [sys.executable, "-m", "bench.bluetooth_home", "--seconds", str(seconds + 5)],
            env,
            seconds,
        )
    return simulated, devices, bluetooth


_IMPORT_RSS = """
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
import gateway_agent.ble_runner
before = rss()
import gateway_agent.ble.bumble_backend, gateway_agent.ble.virtual_devices
print(rss() - before)
"""


def virtual_radio_mb() -> float:
    """What importing the Bumble virtual radio and devices adds to a gateway process (MB):
    the part of the Bluetooth run's figure a gateway on a real radio does not carry."""
    out = subprocess.run(
        [sys.executable, "-c", _IMPORT_RSS], cwd=REPO, capture_output=True, text=True, check=True
    )
    return float(out.stdout.strip())


def main() -> None:
    per_s, kinds = decode_throughput()
    peak_mb, devices, bluetooth_mb = gateway_memory()
    radio_mb = virtual_radio_mb()
    results = {
        "decode_payloads_per_s": round(per_s),
        "decode_target_per_s": DECODE_TARGET_PER_S,
        "decode_ratio_to_target": round(per_s / DECODE_TARGET_PER_S, 2),
        "decode_vectors": kinds,
        "gateway_peak_rss_mb": round(peak_mb, 1),
        "gateway_rss_target_mb": MEMORY_TARGET_MB,
        "gateway_rss_ratio_to_target": round(peak_mb / MEMORY_TARGET_MB, 2),
        "gateway_patients": 10,
        "gateway_devices": devices,
        "bluetooth_run_peak_rss_mb": round(bluetooth_mb, 1),
        "bluetooth_run_rss_ratio_to_target": round(bluetooth_mb / MEMORY_TARGET_MB, 2),
        "bluetooth_run_devices": 6,
        "bluetooth_run_virtual_radio_mb": round(radio_mb, 1),
        "bluetooth_run_without_virtual_radio_mb": round(bluetooth_mb - radio_mb, 1),
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'measure':<34}{'figure':>14}{'target':>12}{'ratio':>8}")
    print(
        f"{'decode, payloads/s (1 core)':<34}{per_s:>14,.0f}{DECODE_TARGET_PER_S:>12,}"
        f"{per_s / DECODE_TARGET_PER_S:>8.2f}"
    )
    print(
        f"{f'gateway RSS, MB ({devices} devices)':<34}{peak_mb:>14.1f}{MEMORY_TARGET_MB:>12.0f}"
        f"{peak_mb / MEMORY_TARGET_MB:>8.2f}"
    )
    print(
        f"{'Bluetooth run, MB (6 virtual devices)':<34}{bluetooth_mb:>14.1f}"
        f"{MEMORY_TARGET_MB:>12.0f}{bluetooth_mb / MEMORY_TARGET_MB:>8.2f}"
    )
    print(f"{'  of which the virtual radio, MB':<34}{radio_mb:>14.1f}")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
