"""Running the gateway on its Bluetooth radio: read the enrolled devices in cycles.

Wired like :mod:`gateway_agent.simulated_homes` (one outbox, one agent, one uplink), but the
values come from real devices through :func:`gateway_agent.ble.transport.read_devices`.
Every ``cycle_s`` seconds the registry is loaded again (an ``enroll`` takes effect without a
restart) and every enrolled device is read once; a device that is out of range or asleep is
simply tried again next cycle. One INFO line per cycle gives counts and outcomes (device
addresses appear only in warnings about a failing device; no patient data is logged).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from gateway_agent.agent import GatewayAgent
from gateway_agent.ble.backend_config import BleBackends
from gateway_agent.ble.transport import ReadResult, read_devices
from gateway_agent.devices import EnrolledDevice
from gateway_agent.outbox import Outbox
from gateway_agent.registry import RegistryError, load_registry
from gateway_agent.settings import GatewaySettings
from gateway_agent.uplink import Uplink

log = logging.getLogger(__name__)

_T = TypeVar("_T")

STOP_POLL_S = 0.2
"""How often a running cycle checks whether the gateway was asked to stop."""

_SEEN_OUTCOMES = frozenset({"ok", "timeout", "disconnected_mid_transfer"})
"""Outcomes that prove the device advertised (it was found and connected to)."""


def run_bluetooth(
    settings: GatewaySettings,
    *,
    registry_path: Path,
    stop: threading.Event,
    cycle_s: float = 30.0,
    backends: BleBackends | None = None,
) -> int:
    """Read the enrolled devices every ``cycle_s`` seconds until ``stop`` is set.

    Returns how many readings this run put in the outbox. Raises RegistryError when the
    registry is invalid at start; later, an invalid registry is logged and the last valid one
    is kept. ``backends``: bleak's backend classes (None = the platform's Bluetooth).
    """
    # One event loop for the whole run: the Bluetooth stack's state lives on it.
    return asyncio.run(
        serve_bluetooth(
            settings, registry_path=registry_path, stop=stop, cycle_s=cycle_s, backends=backends
        )
    )


async def serve_bluetooth(
    settings: GatewaySettings,
    *,
    registry_path: Path,
    stop: threading.Event,
    cycle_s: float = 30.0,
    backends: BleBackends | None = None,
    **read_options: float,
) -> int:
    """:func:`run_bluetooth` on the running event loop: outbox, agent and uplink, then the
    read cycles until ``stop``. ``read_options`` go to :func:`read_devices` (timeouts)."""
    devices = load_registry(registry_path)
    outbox = Outbox(settings.outbox_path)
    uplink: Uplink | None = None
    agent = GatewayAgent(
        outbox,
        tz=settings.timezone,
        max_drift_s=settings.clock_drift_s,
        on_new_readings=lambda: uplink.wake() if uplink else None,
    )
    uplink = Uplink(settings, outbox, agent)
    uplink.start()
    log.info("reading %d enrolled device(s) every %g s", len(devices), cycle_s)
    try:
        return await read_cycles(
            agent,
            outbox,
            registry_path=registry_path,
            devices=devices,
            stop=stop,
            cycle_s=cycle_s,
            backends=backends,
            **read_options,
        )
    finally:
        uplink.stop()
        outbox.close()


async def read_cycles(
    agent: GatewayAgent,
    outbox: Outbox,
    *,
    registry_path: Path,
    devices: list[EnrolledDevice],
    stop: threading.Event,
    cycle_s: float,
    backends: BleBackends | None,
    max_cycles: int | None = None,
    **read_options: float,
) -> int:
    """The gateway's read loop on the running event loop: each cycle reloads the registry and
    reads every enrolled device once, until ``stop`` (or ``max_cycles``). Returns how many
    readings it stored. ``read_options`` go to :func:`read_devices` (timeouts)."""
    stored = 0
    cycle = 0
    while not stop.is_set() and (max_cycles is None or cycle < max_cycles):
        cycle += 1
        started = time.monotonic()
        devices = _reload(registry_path, devices)
        if devices:
            results = await _until_stopped(
                read_devices(devices, agent, backend=backends, progress=outbox, **read_options),
                stop,
            )
            if results is None:
                log.info("cycle %d: stopped while reading", cycle)
                break
            _record_seen(outbox, results)
            stored += sum(r.readings for r in results)
            log.info("cycle %d: %s", cycle, summarize(results, time.monotonic() - started))
        else:
            log.info("cycle %d: no devices enrolled (python -m gateway_agent enroll)", cycle)
        if max_cycles is None or cycle < max_cycles:
            await _sleep_unless_stopped(cycle_s - (time.monotonic() - started), stop)
    return stored


async def _sleep_unless_stopped(seconds: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + max(0.0, seconds)
    while not stop.is_set() and time.monotonic() < deadline:
        await asyncio.sleep(min(STOP_POLL_S, max(0.0, deadline - time.monotonic())))


def summarize(results: Sequence[ReadResult], elapsed_s: float) -> str:
    """ "3 device(s), ok=2 not_found=1, 4 value(s), 6 reading(s) stored, 12.3 s"."""
    outcomes = Counter(r.outcome for r in results)
    parts = " ".join(f"{name}={count}" for name, count in sorted(outcomes.items()))
    values = sum(r.values for r in results)
    readings = sum(r.readings for r in results)
    return (
        f"{len(results)} device(s), {parts}, {values} value(s), "
        f"{readings} reading(s) stored, {elapsed_s:.1f} s"
    )


def _reload(path: Path, previous: list[EnrolledDevice]) -> list[EnrolledDevice]:
    try:
        devices = load_registry(path)
    except RegistryError as exc:
        log.error(
            "registry invalid, keeping the %d device(s) loaded before: %s", len(previous), exc
        )
        return previous
    if len(devices) != len(previous) or set(devices) != set(previous):
        log.info("registry changed: %d device(s) enrolled", len(devices))
    return devices


def _record_seen(outbox: Outbox, results: Sequence[ReadResult]) -> None:
    """Devices that were found and connected to were seen, even when they sent nothing."""
    now = datetime.now(UTC)
    for result in results:
        if result.outcome in _SEEN_OUTCOMES or result.values > 0:
            try:
                outbox.record_device_seen(result.device_id, now, with_value=False)
            except sqlite3.Error as exc:  # status only; never stops the gateway
                log.warning("could not record a device's status: %s", exc)


async def _until_stopped(work: Awaitable[_T], stop: threading.Event) -> _T | None:
    """``work``'s result, or None when ``stop`` was set first (``work`` is then cancelled:
    sessions disconnect, and what was stored stays stored)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        if stop.is_set():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return None
            return task.result()
        await asyncio.wait({task}, timeout=STOP_POLL_S)
    return task.result()
