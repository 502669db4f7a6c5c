"""The device registry: which Bluetooth devices this gateway reads, and for which patient.

A TOML file (``GATEWAY_REGISTRY_PATH``; by default ``devices.toml`` in the outbox's folder),
one ``[[devices]]`` table per device::

    [[devices]]
    address = "C0:FF:EE:00:01:03"   # the device's Bluetooth address
    type = "blood_pressure"         # a carewatch_contract DeviceType value
    patient_id = "patient-1"
    name = "Living-room cuff"       # optional, for people

A missing file is an empty registry. Every problem is a :class:`RegistryError` naming the
entry and the field. :func:`enroll` appends one entry and replaces the file atomically, so a
running gateway (which reloads the registry every cycle) sees the old file or the new one,
never half of it.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from carewatch_contract.messages import MAX_ID_LENGTH, DeviceType
from gateway_agent.devices import EnrolledDevice

ADDRESS_PATTERN = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")
"""A Bluetooth device address as BlueZ reports it: six hex octets separated by colons."""

_FIELDS = ("address", "type", "patient_id", "name")
_NEW_FILE_MODE = 0o600  # patient ids: readable by the gateway's user only

_HEADER = (
    "# CareWatch gateway: enrolled devices (python -m gateway_agent enroll adds one).\n"
    "# Each [[devices]] entry: address, type (a device type), patient_id, optional name.\n"
)


class RegistryError(ValueError):
    """The registry file, or an entry for it, is not valid; the message says where."""


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """One enrolled device as the registry file states it (``name`` is for people only)."""

    address: str
    """Upper case, e.g. "C0:FF:EE:00:01:03"."""
    device_type: DeviceType
    patient_id: str
    name: str | None = None

    @property
    def device(self) -> EnrolledDevice:
        """The device as the read path takes it."""
        return EnrolledDevice(self.address, self.device_type, self.patient_id)


def load_entries(path: Path) -> list[RegistryEntry]:
    """Every entry of the registry at ``path``, in file order (missing file: none).

    Raises RegistryError when the file cannot be read, is not TOML, or has an invalid
    entry (unknown type, bad address, duplicate address, missing patient id, ...).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{path}: cannot be read: {exc}") from None
    return _parse(text, str(path))


def load_registry(path: Path) -> list[EnrolledDevice]:
    """The enrolled devices of the registry at ``path`` (see :func:`load_entries`)."""
    return [entry.device for entry in load_entries(path)]


def enroll(
    path: Path,
    *,
    address: str,
    device_type: DeviceType | str,
    patient_id: str,
    name: str | None = None,
) -> RegistryEntry:
    """Add one device to the registry at ``path`` (created if missing); return its entry.

    The new entry is validated like a loaded one; an address already enrolled is refused
    (RegistryError). The file is replaced atomically (temporary file, fsync, ``os.replace``);
    comments and entries already there are kept.
    """
    existing = load_entries(path)
    raw: dict[str, Any] = {"address": address, "type": str(device_type), "patient_id": patient_id}
    if name is not None:
        raw["name"] = name
    entry = _entry(raw, f"{path}: new entry")
    for other in existing:
        if other.address == entry.address:
            raise RegistryError(
                f"{path}: address {entry.address} is already enrolled "
                f"(type {other.device_type.value}); remove that entry first to change it"
            )
    try:
        current = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        current = _HEADER
    expected = [*existing, entry]
    text = current + ("" if current.endswith("\n") or not current else "\n")
    text += "\n" + render_entry(entry)
    try:
        appended_ok = _parse(text, str(path)) == expected
    except RegistryError:
        appended_ok = False
    if not appended_ok:  # e.g. an inline ``devices = [...]`` array cannot be appended to
        text = render(expected)
    _write_atomically(path, text)
    return entry


def unenroll(path: Path, *, address: str) -> RegistryEntry:
    """Remove the device with ``address`` from the registry at ``path``; return its entry.

    An address that is not enrolled is a RegistryError. The file is rewritten atomically
    from the remaining entries (comments between entries are not kept). What the outbox
    remembers of the device (its last glucose record, last seen) stays, so enrolling it again
    carries on where it left off; its readings already taken are delivered as usual.
    """
    wanted = address.strip().upper()
    existing = load_entries(path)
    removed = next((e for e in existing if e.address == wanted), None)
    if removed is None:
        raise RegistryError(f"{path}: no device with address {wanted} is enrolled")
    _write_atomically(path, render([e for e in existing if e is not removed]))
    return removed


def render(entries: Sequence[RegistryEntry]) -> str:
    """A whole registry file for ``entries``."""
    return _HEADER + "".join("\n" + render_entry(entry) for entry in entries)


def render_entry(entry: RegistryEntry) -> str:
    """One ``[[devices]]`` table for ``entry``."""
    lines = [
        "[[devices]]",
        f"address = {toml_string(entry.address)}",
        f"type = {toml_string(entry.device_type.value)}",
        f"patient_id = {toml_string(entry.patient_id)}",
    ]
    if entry.name is not None:
        lines.append(f"name = {toml_string(entry.name)}")
    return "\n".join(lines) + "\n"


_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


def toml_string(value: str) -> str:
    """``value`` as a TOML basic string (quotes, backslashes and control characters escaped)."""
    out = []
    for char in value:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


# Parsing and validation


def _parse(text: str, where: str) -> list[RegistryEntry]:
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RegistryError(f"{where}: not valid TOML: {exc}") from None
    unknown = sorted(set(document) - {"devices"})
    if unknown:
        raise RegistryError(
            f"{where}: unknown top-level key(s) {', '.join(unknown)}; "
            "devices are [[devices]] tables"
        )
    devices = document.get("devices", [])
    if not isinstance(devices, list):
        raise RegistryError(f"{where}: 'devices' must be a list of [[devices]] tables")
    entries: list[RegistryEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(devices, start=1):
        label = f"{where}: device entry {number}"
        if not isinstance(raw, Mapping):
            raise RegistryError(f"{label}: must be a table ([[devices]])")
        address = raw.get("address")
        if isinstance(address, str) and address:
            label += f" ({address})"
        entry = _entry(raw, label)
        if entry.address in seen:
            raise RegistryError(
                f"{label}: field 'address': {entry.address} is already enrolled "
                f"in device entry {seen[entry.address]}"
            )
        seen[entry.address] = number
        entries.append(entry)
    return entries


def _entry(raw: Mapping[str, Any], label: str) -> RegistryEntry:
    unknown = sorted(set(raw) - set(_FIELDS))
    if unknown:
        raise RegistryError(
            f"{label}: unknown field(s) {', '.join(unknown)} (allowed: {', '.join(_FIELDS)})"
        )
    address = _text(raw, "address", label)
    if not ADDRESS_PATTERN.fullmatch(address):
        raise RegistryError(
            f"{label}: field 'address': {address!r} is not a Bluetooth address "
            "(six hex pairs separated by colons, e.g. C0:FF:EE:00:01:03)"
        )
    type_name = _text(raw, "type", label)
    try:
        device_type = DeviceType(type_name)
    except ValueError:
        known = ", ".join(t.value for t in DeviceType)
        raise RegistryError(
            f"{label}: field 'type': unknown device type {type_name!r} (known: {known})"
        ) from None
    patient_id = _text(raw, "patient_id", label)
    if patient_id != patient_id.strip() or not patient_id.isprintable():
        raise RegistryError(
            f"{label}: field 'patient_id' must be printable, without surrounding spaces"
        )
    if len(patient_id) > MAX_ID_LENGTH:
        raise RegistryError(
            f"{label}: field 'patient_id' is longer than {MAX_ID_LENGTH} characters"
        )
    name = raw.get("name")
    if name is not None and not isinstance(name, str):
        raise RegistryError(f"{label}: field 'name' must be a string")
    return RegistryEntry(address.upper(), device_type, patient_id, name)


def _text(raw: Mapping[str, Any], field: str, label: str) -> str:
    value = raw.get(field)
    if value is None:
        raise RegistryError(f"{label}: field '{field}' is missing")
    if not isinstance(value, str):
        raise RegistryError(f"{label}: field '{field}' must be a string")
    if not value.strip():
        raise RegistryError(f"{label}: field '{field}' is empty")
    return value


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` all at once: readers see the old file or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = _NEW_FILE_MODE
    fd, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    temp = Path(temp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        temp.chmod(mode)
        temp.replace(path)  # os.replace: atomic on POSIX
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (best effort: not every platform allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
