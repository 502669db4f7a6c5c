"""Patients, gateways and their bindings: who may publish readings for whom."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

import psycopg


@dataclass(frozen=True, slots=True)
class PatientRecord:
    patient_id: str
    display_name: str
    program: str = "general"
    birth_date: date | None = None
    spo2_scale: int = 1
    phone: str | None = None


def enroll(conn: psycopg.Connection, *, gateway_id: str, patients: Iterable[PatientRecord]) -> None:
    """Create (or update) a gateway and bind these patients to it. Idempotent."""
    conn.execute(
        "INSERT INTO gateways (gateway_id) VALUES (%s) ON CONFLICT DO NOTHING", (gateway_id,)
    )
    for p in patients:
        conn.execute(
            "INSERT INTO patients (patient_id, display_name, program, birth_date, spo2_scale,"
            " phone) VALUES (%s, %s, %s, %s, %s, %s)"
            " ON CONFLICT (patient_id) DO UPDATE SET display_name = excluded.display_name,"
            " program = excluded.program, birth_date = excluded.birth_date,"
            " spo2_scale = excluded.spo2_scale, phone = excluded.phone",
            (p.patient_id, p.display_name, p.program, p.birth_date, p.spo2_scale, p.phone),
        )
        conn.execute(
            "INSERT INTO gateway_patients (gateway_id, patient_id) VALUES (%s, %s)"
            " ON CONFLICT DO NOTHING",
            (gateway_id, p.patient_id),
        )


def load_bindings(conn: psycopg.Connection) -> dict[str, frozenset[str]]:
    """Every known gateway with the patients bound to it (possibly none)."""
    bindings: dict[str, set[str]] = {}
    rows = conn.execute(
        "SELECT g.gateway_id, gp.patient_id FROM gateways g"
        " LEFT JOIN gateway_patients gp USING (gateway_id)"
    ).fetchall()
    for gateway_id, patient_id in rows:
        bound = bindings.setdefault(gateway_id, set())
        if patient_id is not None:
            bound.add(patient_id)
    return {g: frozenset(p) for g, p in bindings.items()}


class BindingCache:
    """The gateway-to-patient bindings, reloaded when a lookup misses (at most every
    ``min_reload_s``), so that a newly enrolled gateway is accepted without a restart and a
    flood of messages from an unknown one does not hammer the database."""

    def __init__(self, min_reload_s: float = 2.0) -> None:
        self._bindings: dict[str, frozenset[str]] = {}
        self._loaded_at = float("-inf")
        self._min_reload_s = min_reload_s
        self._lock = threading.Lock()

    def reload(self, conn: psycopg.Connection) -> None:
        bindings = load_bindings(conn)
        with self._lock:
            self._bindings = bindings
            self._loaded_at = time.monotonic()

    def lookup(self, conn: psycopg.Connection, gateway_id: str) -> frozenset[str] | None:
        """The patients bound to a gateway, or None when the gateway is unknown."""
        bound = self._bindings.get(gateway_id)
        if bound is None and time.monotonic() - self._loaded_at >= self._min_reload_s:
            self.reload(conn)
            bound = self._bindings.get(gateway_id)
        return bound

    def is_bound(self, conn: psycopg.Connection, gateway_id: str, patient_id: str) -> bool:
        bound = self.lookup(conn, gateway_id)
        if bound is not None and patient_id in bound:
            return True
        if time.monotonic() - self._loaded_at >= self._min_reload_s:
            self.reload(conn)
            bound = self._bindings.get(gateway_id)
        return bound is not None and patient_id in bound
