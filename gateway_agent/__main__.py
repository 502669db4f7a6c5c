"""``python -m gateway_agent``: decode values, enrol devices, or run the gateway.

python -m gateway_agent decode 2A35 1e8a00580078000000041114293b3c00012700
python -m gateway_agent scan --timeout 10
python -m gateway_agent enroll --address C0:FF:EE:00:01:03 --type blood_pressure --patient P1
python -m gateway_agent unenroll --address C0:FF:EE:00:01:03
python -m gateway_agent status
python -m gateway_agent run                 # read the enrolled devices over Bluetooth
python -m gateway_agent run --simulate --patients 20

The registry is GATEWAY_REGISTRY_PATH (default: devices.toml in the outbox's folder, see
GATEWAY_OUTBOX_PATH). Exit codes: 0 done, 1 failed (e.g. Bluetooth), 2 bad input or settings.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from carewatch_contract.messages import DeviceType

if TYPE_CHECKING:
    from gateway_agent.ble.backend_config import BleBackends
    from gateway_agent.settings import GatewaySettings

REGISTRY_SETTING = "GATEWAY_REGISTRY_PATH"
DEFAULT_OUTBOX = "gateway-outbox.sqlite"

log = logging.getLogger("gateway_agent")


def _run(args: argparse.Namespace) -> int:
    from gateway_agent.settings import GatewaySettings, SettingsError

    try:
        settings = GatewaySettings.from_env()
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    if not args.simulate:
        return _run_bluetooth(settings, args, stop)
    from gateway_agent.simulated_homes import run_simulated
    from gateway_agent.simulator.population import build_population

    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    population = [p.patient_id for p in build_population(patients=args.patients, seed=args.seed)]
    with patient_page(settings, population):
        run_simulated(
            settings,
            patients=args.patients,
            seed=args.seed,
            history_days=args.history_days,
            rate_per_patient_per_minute=args.rate,
            stop=stop,
            live_readings=args.live_readings,
        )
    return 0


def _run_bluetooth(
    settings: GatewaySettings, args: argparse.Namespace, stop: threading.Event
) -> int:
    from gateway_agent.ble_runner import run_bluetooth
    from gateway_agent.patient_page import registry_patients
    from gateway_agent.registry import RegistryError, load_registry

    backends = _backends()
    if backends is None:
        return 2
    path = registry_path(os.environ)
    try:
        devices = load_registry(path)
    except RegistryError as exc:
        return _fail(str(exc), 2)
    if not devices:
        print(
            f"gateway: no devices enrolled in {path} yet; the gateway reads them as soon as "
            "one is added with: python -m gateway_agent enroll ...",
            file=sys.stderr,
        )
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with patient_page(settings, registry_patients(path)):
            run_bluetooth(
                settings, registry_path=path, stop=stop, cycle_s=args.cycle, backends=backends
            )
    except RegistryError as exc:
        return _fail(str(exc), 2)
    return 0


@contextlib.contextmanager
def patient_page(
    settings: GatewaySettings, patients: Callable[[], Iterable[str]] | Iterable[str]
) -> Iterator[None]:
    """Serve the patient's page on 127.0.0.1:``settings.page_port`` while the body runs (not
    at all when the port is 0). A page that cannot start (the port is taken, the outbox cannot
    be opened) is logged as a warning: the gateway keeps reading without it."""
    if settings.page_port == 0:
        yield
        return
    import sqlite3

    from gateway_agent.outbox import Outbox
    from gateway_agent.patient_page import start_patient_page

    try:
        outbox = Outbox(settings.outbox_path)  # its own connection to the gateway's outbox
    except (sqlite3.Error, OSError) as exc:
        log.warning("patient page not started: the outbox cannot be opened: %s", exc)
        yield
        return
    try:
        page = start_patient_page(
            outbox,
            patients=patients,
            gateway_id=settings.gateway_id,
            port=settings.page_port,
            tz=settings.timezone,
        )
    except OSError as exc:
        outbox.close()
        log.warning(
            "patient page not started: 127.0.0.1:%d cannot be used (%s); set "
            "GATEWAY_PAGE_PORT to a free port, or 0 for no page. The gateway keeps reading "
            "and sending readings without it",
            settings.page_port,
            exc.strerror or exc,
        )
        yield
        return
    log.info("patient page on %s", page.url)
    try:
        yield
    finally:
        page.close()
        outbox.close()


def registry_path(env: Mapping[str, str]) -> Path:
    """GATEWAY_REGISTRY_PATH, or devices.toml in the outbox's folder."""
    explicit = env.get(REGISTRY_SETTING)
    if explicit:
        return Path(explicit)
    return Path(env.get("GATEWAY_OUTBOX_PATH") or DEFAULT_OUTBOX).parent / "devices.toml"


def _outbox_path(env: Mapping[str, str]) -> Path:
    return Path(env.get("GATEWAY_OUTBOX_PATH") or DEFAULT_OUTBOX)


def _fail(message: str, code: int) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return code


def _backends() -> BleBackends | None:
    """The configured bleak backends; None (after printing why) when the setting is wrong."""
    from gateway_agent.ble.backend_config import backends_from_env

    try:
        return backends_from_env(os.environ)
    except ValueError as exc:
        _fail(str(exc), 2)
        return None


def _scan(args: argparse.Namespace) -> int:
    from bleak.exc import BleakError

    from gateway_agent.registry import RegistryError, load_entries
    from gateway_agent.scan import scan_health_devices

    if args.timeout <= 0:
        return _fail("--timeout must be positive", 2)
    backends = _backends()
    if backends is None:
        return 2
    try:
        enrolled = {e.address for e in load_entries(registry_path(os.environ))}
    except RegistryError:
        enrolled = set()  # the scan does not need the registry; status/run report it
    print(f"Scanning for {args.timeout:g} s...", file=sys.stderr)
    try:
        found = asyncio.run(scan_health_devices(timeout_s=args.timeout, backend=backends))
    except (BleakError, OSError) as exc:
        return _fail(
            f"Bluetooth scan failed: {exc} (is there an adapter, and is bluetoothd running?)", 1
        )
    if not found:
        print("No health devices found; is the device in pairing mode?")
        return 0
    rows = [
        [
            d.address,
            d.name or "-",
            "-" if d.rssi is None else f"{d.rssi} dBm",
            ", ".join(d.services),
            ", ".join(t.value for t in d.device_types),
            "yes" if d.address in enrolled else "no",
        ]
        for d in found
    ]
    print(_table(["ADDRESS", "NAME", "RSSI", "SERVICES", "TYPE", "ENROLLED"], rows))
    return 0


def _enroll(args: argparse.Namespace) -> int:
    from gateway_agent.registry import RegistryError, enroll

    path = registry_path(os.environ)
    try:
        entry = enroll(
            path,
            address=args.address,
            device_type=args.type,
            patient_id=args.patient,
            name=args.name,
        )
    except RegistryError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"{path}: cannot be written: {exc}", 1)
    label = f" ({entry.name})" if entry.name else ""
    print(
        f"Enrolled {entry.address}{label}: {entry.device_type.value} for patient "
        f"{entry.patient_id}, in {path}"
    )
    return 0


def _unenroll(args: argparse.Namespace) -> int:
    from gateway_agent.registry import RegistryError, unenroll

    path = registry_path(os.environ)
    try:
        entry = unenroll(path, address=args.address)
    except RegistryError as exc:
        return _fail(str(exc), 2)
    except OSError as exc:
        return _fail(f"{path}: cannot be written: {exc}", 1)
    label = f" ({entry.name})" if entry.name else ""
    print(
        f"Removed {entry.address}{label} ({entry.device_type.value}, patient "
        f"{entry.patient_id}) from {path}; readings it already gave are still delivered"
    )
    return 0


def _status(_args: argparse.Namespace) -> int:
    import sqlite3

    from gateway_agent.outbox import DeviceStatusRow, Outbox
    from gateway_agent.registry import RegistryError, load_entries

    path = registry_path(os.environ)
    try:
        entries = load_entries(path)
    except RegistryError as exc:
        return _fail(str(exc), 2)
    if not entries:
        print(f"No devices enrolled in {path}; add one with: python -m gateway_agent enroll")
        return 0
    statuses: dict[str, DeviceStatusRow] = {}
    outbox_path = _outbox_path(os.environ)
    if outbox_path.exists():
        try:
            outbox = Outbox(outbox_path)
            try:
                statuses = {k.upper(): v for k, v in outbox.device_status_rows().items()}
            finally:
                outbox.close()
        except sqlite3.Error as exc:
            return _fail(f"{outbox_path}: cannot be read: {exc}", 1)
    rows = []
    for entry in entries:
        status = statuses.get(entry.address)
        battery = None if status is None else status.battery_percent
        rows.append(
            [
                entry.address,
                entry.name or "-",
                entry.device_type.value,
                entry.patient_id,
                _when(None if status is None else status.last_value_at),
                "never" if battery is None else f"{battery}%",
                _when(None if status is None else status.last_seen),
            ]
        )
    headers = ["ADDRESS", "NAME", "TYPE", "PATIENT", "LAST READING", "BATTERY", "LAST SEEN"]
    print(_table(headers, rows))
    return 0


def _when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=False)
    ]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _positive(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {raw!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["decode"]:
        from gateway_agent.decode_cli import run

        return run(argv[1:])
    parser = argparse.ArgumentParser(
        prog="python -m gateway_agent",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("decode", help="decode one characteristic value and print it as JSON")
    p_run = sub.add_parser("run", help="run the gateway")
    p_run.add_argument("--simulate", action="store_true", help="simulated devices, no radio")
    p_run.add_argument("--patients", type=int, default=20)
    p_run.add_argument("--seed", type=int, default=7)
    p_run.add_argument(
        "--history-days",
        type=float,
        default=7.0,
        help="stored readings to replay on first start (days)",
    )
    p_run.add_argument(
        "--rate", type=float, default=1.0, help="live readings per patient per minute"
    )
    p_run.add_argument(
        "--live-readings",
        type=int,
        default=None,
        help="take this many live measurements, then idle (tests)",
    )
    p_run.add_argument(
        "--cycle",
        type=_positive,
        default=30.0,
        help="seconds between Bluetooth reads of the enrolled devices (default 30)",
    )
    p_run.set_defaults(func=_run)
    p_scan = sub.add_parser("scan", help="list nearby health devices and their services")
    p_scan.add_argument("--timeout", type=_positive, default=10.0, help="seconds (default 10)")
    p_scan.set_defaults(func=_scan)
    p_enroll = sub.add_parser("enroll", help="add a device to the registry")
    p_enroll.add_argument(
        "--address", required=True, help="Bluetooth address, e.g. C0:FF:EE:00:01:03"
    )
    p_enroll.add_argument(
        "--type", required=True, choices=[t.value for t in DeviceType], help="device type"
    )
    p_enroll.add_argument("--patient", required=True, help="the patient id the device belongs to")
    p_enroll.add_argument("--name", default=None, help="a name for people (optional)")
    p_enroll.set_defaults(func=_enroll)
    p_unenroll = sub.add_parser("unenroll", help="remove a device from the registry")
    p_unenroll.add_argument("--address", required=True, help="the device's Bluetooth address")
    p_unenroll.set_defaults(func=_unenroll)
    p_status = sub.add_parser(
        "status", help="each enrolled device's last reading, battery and last seen"
    )
    p_status.set_defaults(func=_status)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
