"""Running the gateway with simulated devices instead of a radio.

The simulated devices produce the exact characteristic bytes real devices send (through the
same encoders the decoder tests prove), and every payload goes through the same
:meth:`GatewayAgent.accept` as a Bluetooth notification: decode, observations, outbox,
uplink.

On start the gateway first replays the recent history the devices "stored" (default: the last
7 days, as stored records keeping their own times), then readings arrive live, paced by the
wall clock, many times faster than real patients would take them so that a demo is busy.
What was replayed is remembered in the outbox, so a restart does not replay it twice.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import UTC, datetime, timedelta

from gateway_agent.agent import GatewayAgent
from gateway_agent.devices import EnrolledDevice
from gateway_agent.outbox import Outbox
from gateway_agent.settings import GatewaySettings
from gateway_agent.simulator.devices import SimulatedHome
from gateway_agent.simulator.population import SimulatedPatient, build_population
from gateway_agent.simulator.schedule import history, live
from gateway_agent.uplink import Uplink

log = logging.getLogger(__name__)

_REPLAYED_UNTIL = "simulated_history_until"


def enrolled_devices(population: list[SimulatedPatient]) -> dict[str, EnrolledDevice]:
    return {
        device.device_id: EnrolledDevice(device.device_id, device.device_type, patient.patient_id)
        for patient in population
        for device in patient.devices
    }


def run_simulated(
    settings: GatewaySettings,
    *,
    patients: int,
    seed: int,
    history_days: float,
    rate_per_patient_per_minute: float,
    stop: threading.Event,
    live_readings: int | None = None,
) -> int:
    """Run until ``stop`` is set (or ``live_readings`` live measurements were taken).

    Returns how many readings this run put in the outbox.
    """
    outbox = Outbox(settings.outbox_path)
    uplink: Uplink | None = None
    agent = GatewayAgent(
        outbox,
        tz=settings.timezone,
        max_drift_s=settings.clock_drift_s,
        on_new_readings=lambda: uplink.wake() if uplink else None,
    )
    uplink = Uplink(settings, outbox, agent)
    population = build_population(patients=patients, seed=seed)
    devices = enrolled_devices(population)
    home = SimulatedHome(population, tz=agent.timezone)
    battery = random.Random(seed)  # noqa: S311 - simulation, not security
    for device in devices.values():
        agent.record_battery(device, battery.randint(35, 100))
    uplink.start()
    stored = 0
    try:
        now = datetime.now(UTC)
        replayed_until = outbox.recall(_REPLAYED_UNTIL)
        start = now - timedelta(days=history_days)
        if replayed_until is not None:  # milliseconds of the last record already stored
            start = max(start, datetime.fromtimestamp((replayed_until + 1) / 1000, UTC))
        if history_days > 0 and start < now:
            past = history(population, start=start, end=now, seed=seed, local_tz=agent.timezone)
            for device, _patient, payload, taken_at in home.samples(past):
                stored += len(
                    agent.accept(
                        devices[device.device_id],
                        device.characteristic,
                        payload,
                        received_at=now,
                        stored_record=True,
                        remember=(_REPLAYED_UNTIL, int(taken_at.timestamp() * 1000)),
                    )
                )
            outbox.remember(_REPLAYED_UNTIL, int(now.timestamp() * 1000))
            log.info(
                "replayed %d stored measurement(s) of %d simulated patient(s)", len(past), patients
            )
        stream = live(
            population,
            seed=seed,
            now=now,
            rate_per_patient_per_minute=rate_per_patient_per_minute,
            local_tz=agent.timezone,
        )
        for taken, measurement in enumerate(stream):
            if live_readings is not None and taken >= live_readings:
                break
            delay = (measurement.taken_at - datetime.now(UTC)).total_seconds()
            if stop.wait(max(delay, 0)):
                break
            device, _patient, payload, _taken_at = home.sample(measurement)
            stored += len(agent.accept(devices[device.device_id], device.characteristic, payload))
        else:
            log.info("simulated stream ended")
        if not stop.is_set():
            log.info("live measurements done; idling until stopped")
        stop.wait()  # idle, connected, until asked to stop
    finally:
        uplink.stop()
        outbox.close()
    return stored
