"""The bytes simulated devices send: characteristic values built with the project's encoders.

Every value goes through :mod:`gateway_agent.gatt.encode`, the builders the tests prove
against real-device vectors, so the gateway decodes simulated readings exactly as it
decodes real ones. The layouts are the ones common devices use:

- 0x2A35 blood pressure: mmHg, timestamp, pulse rate and mean arterial pressure present;
- 0x2A5E PLX spot-check: SpO2 and pulse rate with a timestamp;
- 0x2A9D weight: SI (kg) with a timestamp;
- 0x2A1C temperature: Celsius with a timestamp and type 1 (armpit);
- 0x2A18 glucose: the meter's record sequence number, base time and concentration
  (capillary whole blood, finger).

Device clocks run on local wall-clock time: GATT Date Time carries no zone, so timestamps
are ``taken_at`` converted to the home's zone ``tz`` (seconds truncated).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, tzinfo

from carewatch_contract.messages import DeviceType
from gateway_agent.gatt import encode
from gateway_agent.simulator.population import SimulatedDevice, SimulatedPatient
from gateway_agent.simulator.schedule import Measurement, mean_arterial_pressure

ARMPIT = 1
"""GATT temperature type of an underarm reading."""
CAPILLARY_WHOLE_BLOOD = 1
"""GATT glucose sample type of a finger-prick reading."""
FINGER = 1
"""GATT glucose sample location."""
SEQUENCE_NUMBER_MODULUS = 0x10000
"""Glucose record sequence numbers are uint16 and wrap around."""

Sample = tuple[SimulatedDevice, str, bytes, datetime]
"""What a simulated home hands the gateway: device, patient id, payload, ``taken_at``."""


def characteristic_value(
    measurement: Measurement, *, tz: tzinfo, sequence_number: int | None = None
) -> bytes:
    """The characteristic value ``measurement.device`` sends for ``measurement``.

    ``tz`` is the zone the device clock is set to. Glucose meters need ``sequence_number``,
    the meter's record number (the caller keeps it increasing per device); other devices
    take none. ValueError when a value does not fit the layout or a value is missing.
    """
    device_type = measurement.device.device_type
    if (sequence_number is None) == (device_type is DeviceType.GLUCOSE_METER):
        raise ValueError("a sequence number is given for glucose meters, and only for them")
    device_clock = measurement.taken_at.astimezone(tz)
    values = measurement.values
    if device_type is DeviceType.BLOOD_PRESSURE:
        systolic, diastolic = values["systolic"], values["diastolic"]
        return encode.blood_pressure_measurement(
            systolic=systolic,
            diastolic=diastolic,
            mean_arterial_pressure=values.get(
                "mean_arterial_pressure", mean_arterial_pressure(systolic, diastolic)
            ),
            unit="mmHg",
            timestamp=device_clock,
            pulse_rate=values["pulse_rate"],
        )
    if device_type is DeviceType.PULSE_OXIMETER:
        return encode.plx_spot_check(
            spo2=values["spo2"], pulse_rate=values["pulse_rate"], timestamp=device_clock
        )
    if device_type is DeviceType.WEIGHT_SCALE:
        return encode.weight_measurement(kg=values["kg"], timestamp=device_clock)
    if device_type is DeviceType.THERMOMETER:
        return encode.temperature_measurement(
            celsius=values["celsius"], timestamp=device_clock, temperature_type=ARMPIT
        )
    if device_type is DeviceType.GLUCOSE_METER:
        assert sequence_number is not None  # checked above
        return encode.glucose_measurement(
            sequence_number=sequence_number,
            base_time=device_clock,
            mg_dl=values["mg_dl"],
            type=CAPILLARY_WHOLE_BLOOD,
            sample_location=FINGER,
        )
    raise ValueError(f"no simulated {device_type} device")


class SimulatedHome:
    """The devices of a simulated population, with each glucose meter's record counter.

    :meth:`samples` turns measurements into the payloads the devices send, in order; the
    glucose meters number their records 1, 2, 3, ... per device (wrapping at 65,536), so
    feeding the same measurements to a fresh home gives the same bytes.
    """

    def __init__(self, population: Iterable[SimulatedPatient], *, tz: tzinfo = UTC) -> None:
        self.population: tuple[SimulatedPatient, ...] = tuple(population)
        self.tz = tz
        self._owner: dict[str, str] = {
            device.device_id: patient.patient_id
            for patient in self.population
            for device in patient.devices
        }
        self._last_sequence_number: dict[str, int] = {}

    def next_sequence_number(self, device: SimulatedDevice) -> int:
        """The record number ``device`` gives its next record (1 for the first)."""
        number = (self._last_sequence_number.get(device.device_id, 0) + 1) % (
            SEQUENCE_NUMBER_MODULUS
        )
        self._last_sequence_number[device.device_id] = number
        return number

    def sample(self, measurement: Measurement) -> Sample:
        """The payload for one measurement; ValueError for a device not in this home."""
        owner = self._owner.get(measurement.device.device_id)
        if owner != measurement.patient_id:
            raise ValueError(
                f"device {measurement.device.device_id} does not belong to "
                f"{measurement.patient_id} in this home"
            )
        sequence_number = (
            self.next_sequence_number(measurement.device)
            if measurement.device.device_type is DeviceType.GLUCOSE_METER
            else None
        )
        payload = characteristic_value(measurement, tz=self.tz, sequence_number=sequence_number)
        return measurement.device, measurement.patient_id, payload, measurement.taken_at

    def samples(self, measurements: Iterable[Measurement]) -> Iterator[Sample]:
        """(device, patient id, payload, taken_at) for each measurement, lazily and in order."""
        for measurement in measurements:
            yield self.sample(measurement)
