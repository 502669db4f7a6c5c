"""Simulated homes: seeded, reproducible patients, their measurement habits and device bytes.

- :mod:`~gateway_agent.simulator.population`: patients, their devices and scenarios.
- :mod:`~gateway_agent.simulator.schedule`: when they measure and what the devices read
  (pure; :func:`history` for a past window, :func:`live` for an endless demo stream).
- :mod:`~gateway_agent.simulator.devices`: the characteristic values the devices send, built
  with the same GATT encoders the tests prove against real-device vectors.

Only the pure parts are imported here; :mod:`gateway_agent.simulator.devices` needs
``gateway_agent.gatt.encode`` and is imported from there.
"""

from gateway_agent.simulator.population import (
    Program,
    Scenario,
    ScenarioKind,
    SimulatedDevice,
    SimulatedPatient,
    build_population,
)
from gateway_agent.simulator.schedule import Measurement, history, live

__all__ = [
    "Measurement",
    "Program",
    "Scenario",
    "ScenarioKind",
    "SimulatedDevice",
    "SimulatedPatient",
    "build_population",
    "history",
    "live",
]
