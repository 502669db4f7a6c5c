"""Patients, gateways and their bindings: who may publish readings for whom."""

from __future__ import annotations

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
    """The gateway-to-patient bindings, as ingest checks them for every reading.

    Reloaded when older than ``max_age_s`` (so that an unbinding takes effect within that
    time) and, at most every ``min_reload_s``, when a lookup misses (so that a newly enrolled
    gateway or patient is accepted at once, while a flood from an unknown gateway does not
    hammer the database).
    """

    def __init__(self, *, max_age_s: float = 10.0, min_reload_s: float = 1.0) -> None:
        self._bindings: dict[str, frozenset[str]] = {}
        self._loaded_at = float("-inf")
        self._max_age_s = max_age_s
        self._min_reload_s = min_reload_s

    def view(self, conn: psycopg.Connection) -> BindingView:
        """Lookups that reload through ``conn`` when needed (one writer thread uses it)."""
        if time.monotonic() - self._loaded_at >= self._max_age_s:
            self._reload(conn)
        return BindingView(self, conn)

    def _reload(self, conn: psycopg.Connection) -> None:
        self._bindings = load_bindings(conn)
        self._loaded_at = time.monotonic()

    def _lookup(self, conn: psycopg.Connection, gateway_id: str, patient_id: str | None) -> bool:
        bound = self._bindings.get(gateway_id)
        found = bound is not None and (patient_id is None or patient_id in bound)
        if not found and time.monotonic() - self._loaded_at >= self._min_reload_s:
            self._reload(conn)
            bound = self._bindings.get(gateway_id)
            found = bound is not None and (patient_id is None or patient_id in bound)
        return found


@dataclass(frozen=True, slots=True)
class BindingView:
    cache: BindingCache
    conn: psycopg.Connection

    def gateway_known(self, gateway_id: str) -> bool:
        return self.cache._lookup(self.conn, gateway_id, None)

    def is_bound(self, gateway_id: str, patient_id: str) -> bool:
        return self.cache._lookup(self.conn, gateway_id, patient_id)
