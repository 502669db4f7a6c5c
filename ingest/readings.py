"""Storing readings: claim the ids, then one COPY of the new readings into ``readings``.

``reading_ids`` holds every reading id ever stored (``readings`` itself may be partitioned or
a hypertable, where a primary key on the id alone is not possible). A batch first inserts its
ids there with ``ON CONFLICT DO NOTHING RETURNING``: what comes back is new, and only those
readings are copied. A redelivered message is therefore harmless, and the ids that did not
come back are the duplicates to count. Three statements per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

from carewatch_contract.messages import DeviceTime, Reading

COPY_COLUMNS = (
    "reading_id, measured_at, patient_id, loinc, unit, value, time_source, received_at,"
    " gateway_id, device_id, device_type, measurement_id, gateway_seq, characteristic,"
    " raw_hex, device_time"
)

# The ids travel as one comma-separated string: adapting a list of 2,000 strings as an array
# costs more than the rest of the statement.
_CLAIM_IDS = (
    "INSERT INTO reading_ids (reading_id) SELECT unnest(string_to_array(%s, ',')::uuid[])"
    " ON CONFLICT DO NOTHING RETURNING reading_id::text"
)

# The device registry's last reading time and the gateways' last contact, one statement for
# the whole batch (arrays of one row per device).
_TOUCH_DEVICES = (
    "WITH seen AS ("
    " SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::timestamptz[])"
    " AS s(gateway_id, device_id, device_type, patient_id, last_reading_at)),"
    " gateways_seen AS ("
    " UPDATE gateways g SET last_seen_at = now() FROM (SELECT DISTINCT gateway_id FROM seen) s"
    " WHERE g.gateway_id = s.gateway_id)"
    " INSERT INTO devices (gateway_id, device_id, device_type, patient_id, last_reading_at)"
    " SELECT * FROM seen"
    " ON CONFLICT (gateway_id, device_id) DO UPDATE SET"
    " patient_id = excluded.patient_id, device_type = excluded.device_type,"
    " last_reading_at = greatest(devices.last_reading_at, excluded.last_reading_at)"
)


@dataclass(frozen=True, slots=True)
class StoredReading:
    """A reading to store, with the gateway it came through."""

    gateway_id: str
    reading: Reading


def insert_readings(conn: psycopg.Connection, readings: Sequence[StoredReading]) -> set[str]:
    """Insert within the caller's transaction; return the ids that were new."""
    if not readings:
        return set()
    with conn.cursor() as cur:
        # Sorted: two workers claiming the same redelivered ids lock them in the same order.
        cur.execute(_CLAIM_IDS, (",".join(sorted({s.reading.reading_id for s in readings})),))
        new_ids = {row[0] for row in cur.fetchall()}
        if new_ids:
            copied: set[str] = set()  # the same reading twice in one batch is copied once
            with cur.copy(f"COPY readings ({COPY_COLUMNS}) FROM STDIN") as copy:
                for stored in readings:
                    r = stored.reading
                    if r.reading_id not in new_ids or r.reading_id in copied:
                        continue
                    copied.add(r.reading_id)
                    copy.write_row(copy_row(stored.gateway_id, r))
        cur.execute(_TOUCH_DEVICES, _devices_seen(readings))
    return new_ids


def copy_row(gateway_id: str, r: Reading) -> tuple[object, ...]:
    """A reading as COPY writes it into ``readings`` (the columns of ``COPY_COLUMNS``)."""
    return (
        r.reading_id,
        r.measured_at,
        r.patient_id,
        r.loinc,
        r.unit,
        r.value,
        str(r.time_source),
        r.received_at,
        gateway_id,
        r.device_id,
        str(r.device_type),
        r.measurement_id,
        r.seq,
        r.characteristic,
        r.raw_hex,
        None if r.device_time is None else _device_time_json(r.device_time),
    )


def _device_time_json(t: DeviceTime) -> str:
    """The device's own time as the ``device_time`` jsonb column holds it (all integers)."""
    return (
        f'{{"year": {t.year:d}, "month": {t.month:d}, "day": {t.day:d}, "hours": {t.hours:d},'
        f' "minutes": {t.minutes:d}, "seconds": {t.seconds:d}}}'
    )


def _devices_seen(
    readings: Sequence[StoredReading],
) -> tuple[list[str], list[str], list[str], list[str], list[datetime]]:
    """One row per (gateway, device): its type and patient as last sent, its latest reading."""
    latest: dict[tuple[str, str], Reading] = {}
    for stored in readings:
        key = (stored.gateway_id, stored.reading.device_id)
        seen = latest.get(key)
        if seen is None or stored.reading.measured_at > seen.measured_at:
            latest[key] = stored.reading
    return (
        [gateway_id for gateway_id, _ in latest],
        [device_id for _, device_id in latest],
        [str(r.device_type) for r in latest.values()],
        [r.patient_id for r in latest.values()],
        [r.measured_at for r in latest.values()],
    )


#: The fields of each reading :func:`patient_readings` returns.
READING_KEYS = (
    "reading_id",
    "measured_at",
    "loinc",
    "unit",
    "value",
    "time_source",
    "device_id",
    "device_type",
    "measurement_id",
)


def patient_readings(
    conn: psycopg.Connection,
    *,
    patient_id: str,
    since: datetime,
    until: datetime | None = None,
    loinc: str | None = None,
    limit: int = 50_000,
) -> list[dict[str, Any]]:
    """A patient's readings in a time window, oldest first."""
    rows = conn.execute(
        # Ids as text in SQL: 10,000 readings of a 90-day view would otherwise each pay
        # for two UUID objects and their str() (bench/workspace.py).
        "SELECT reading_id::text, measured_at, loinc, unit, value, time_source, device_id,"
        " device_type, measurement_id::text FROM readings"
        " WHERE patient_id = %(p)s AND measured_at >= %(since)s"
        " AND (%(until)s::timestamptz IS NULL OR measured_at < %(until)s)"
        " AND (%(loinc)s::text IS NULL OR loinc = %(loinc)s)"
        " ORDER BY measured_at, reading_id LIMIT %(limit)s",
        {"p": patient_id, "since": since, "until": until, "loinc": loinc, "limit": limit},
    ).fetchall()
    keys = READING_KEYS
    return [dict(zip(keys, r, strict=True)) for r in rows]
