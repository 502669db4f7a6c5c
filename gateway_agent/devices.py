"""The devices a gateway reads, each bound to one patient."""

from __future__ import annotations

from dataclasses import dataclass

from carewatch_contract.messages import DeviceType


@dataclass(frozen=True, slots=True)
class EnrolledDevice:
    device_id: str  # Bluetooth address, e.g. "C0:FF:EE:00:01:03"
    device_type: DeviceType
    patient_id: str
