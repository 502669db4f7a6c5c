"""Bluetooth LE plumbing for the gateway that is not the production read path itself.

- :mod:`gateway_agent.ble.backend_config`: picks the bleak backend class from a setting
  (``None`` = the platform's real backend). Pure Python, no Bumble import.
- :mod:`gateway_agent.ble.bumble_backend`: a bleak client/scanner backend whose "radio" is an
  in-process Bumble link (test and demo use only; needs the ``bumble`` package).
- :mod:`gateway_agent.ble.virtual_devices`: virtual health peripherals on that link that speak
  the standard GATT profiles byte for byte.

Importing this package does not import Bumble; only the two modules above that need it do.
"""
