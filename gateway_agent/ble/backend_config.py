"""Choosing the bleak backend by configuration, so code under test is never patched.

Production code builds ``BleakClient(address, backend=backends.client)`` and
``BleakScanner(..., backend=backends.scanner)`` with the classes resolved here. With no
setting both are ``None`` and bleak picks the platform's real backend (BlueZ on the gateway).
A test or demo sets ``GATEWAY_BLE_BACKEND`` to a ``module:attribute`` naming an object with
``client`` and ``scanner`` attributes, e.g. ``gateway_agent.ble.bumble_backend:BUMBLE``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bleak.backends.client import BaseBleakClient
    from bleak.backends.scanner import BaseBleakScanner

BACKEND_SETTING = "GATEWAY_BLE_BACKEND"


@dataclass(frozen=True, slots=True)
class BleBackends:
    """The ``backend=`` classes to hand to bleak; ``None`` = the platform's own."""

    client: type[BaseBleakClient] | None = None
    scanner: type[BaseBleakScanner] | None = None


PLATFORM = BleBackends()
"""bleak's automatic choice: what a real gateway uses."""


def resolve_backends(spec: str | None) -> BleBackends:
    """The backends named by ``spec`` ("package.module:ATTRIBUTE"), or PLATFORM for None/"".

    ValueError with a clear message when the spec is malformed or names nothing usable.
    """
    if not spec:
        return PLATFORM
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"{BACKEND_SETTING} must look like 'package.module:NAME', got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"{BACKEND_SETTING}: cannot import {module_name!r}: {exc}") from None
    target: Any = getattr(module, attribute, None)
    if target is None:
        raise ValueError(f"{BACKEND_SETTING}: {module_name!r} has no {attribute!r}")
    if isinstance(target, BleBackends):
        return target
    client = getattr(target, "client", None)
    scanner = getattr(target, "scanner", None)
    if not isinstance(client, type) or not isinstance(scanner, type):
        raise ValueError(
            f"{BACKEND_SETTING}: {spec!r} must have 'client' and 'scanner' backend classes"
        )
    return BleBackends(client=client, scanner=scanner)


def backends_from_env(env: Mapping[str, str]) -> BleBackends:
    """The backends the environment asks for (PLATFORM when the setting is absent)."""
    return resolve_backends(env.get(BACKEND_SETTING))
