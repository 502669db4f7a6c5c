"""ingest.readings.insert_readings on a real PostgreSQL: every column as sent, each id once,
the device registry and the gateway's last contact kept current."""

from __future__ import annotations

from datetime import timedelta

import psycopg
import pytest

from carewatch_contract.messages import DeviceTime, DeviceType, TimeSource
from ingest.readings import StoredReading, insert_readings
from tests.unit.test_contract import NOW, a_reading

pytestmark = pytest.mark.db


def test_every_column_is_stored_as_sent(db: psycopg.Connection, home: tuple[str, str]) -> None:
    gateway_id, patient_id = home
    reading = a_reading(patient_id=patient_id, device_time=DeviceTime(2026, 11, 29, 7, 29, 5))
    assert insert_readings(db, [StoredReading(gateway_id, reading)]) == {reading.reading_id}
    row = db.execute(
        "SELECT reading_id::text, measured_at, patient_id, loinc, unit, value, time_source,"
        " received_at, gateway_id, device_id, device_type, measurement_id::text, gateway_seq,"
        " characteristic, raw_hex, device_time FROM readings"
    ).fetchone()
    assert row == (
        reading.reading_id,
        reading.measured_at,
        patient_id,
        "8480-6",
        "mm[Hg]",
        138.0,
        "device",
        reading.received_at,
        gateway_id,
        reading.device_id,
        "blood_pressure",
        reading.measurement_id,
        1,
        "2A35",
        reading.raw_hex,
        {"year": 2026, "month": 11, "day": 29, "hours": 7, "minutes": 29, "seconds": 5},
    )


def test_each_reading_is_stored_once_and_only_new_ids_come_back(
    db: psycopg.Connection, home: tuple[str, str]
) -> None:
    gateway_id, patient_id = home
    first = [StoredReading(gateway_id, a_reading(patient_id=patient_id, seq=i)) for i in range(5)]
    newcomer = StoredReading(gateway_id, a_reading(patient_id=patient_id, seq=5, device_time=None))
    again = [*first[3:], newcomer]
    assert insert_readings(db, [*first, *first[:2]]) == {s.reading.reading_id for s in first}
    db.commit()
    assert insert_readings(db, again) == {again[-1].reading.reading_id}
    db.commit()
    stored = db.execute("SELECT gateway_seq FROM readings ORDER BY gateway_seq").fetchall()
    assert [seq for (seq,) in stored] == [0, 1, 2, 3, 4, 5]
    assert db.execute("SELECT count(*) FROM reading_ids").fetchone() == (6,)


def test_devices_and_gateway_contact_are_kept_current(
    db: psycopg.Connection, home: tuple[str, str]
) -> None:
    gateway_id, patient_id = home
    cuff = [
        a_reading(patient_id=patient_id, measured_at=NOW - timedelta(hours=h)) for h in (3, 1, 2)
    ]
    oximeter = a_reading(
        patient_id=patient_id,
        device_id="C0:FF:EE:00:02:02",
        device_type=DeviceType.PULSE_OXIMETER,
        loinc="59408-5",
        unit="%",
        value=96.0,
        characteristic="2A5E",
        time_source=TimeSource.GATEWAY,
        device_time=None,
    )
    insert_readings(db, [StoredReading(gateway_id, r) for r in [*cuff, oximeter]])
    devices = db.execute(
        "SELECT device_id, device_type, patient_id, last_reading_at FROM devices"
        " WHERE gateway_id = %s ORDER BY device_id",
        (gateway_id,),
    ).fetchall()
    assert devices == [
        (cuff[0].device_id, "blood_pressure", patient_id, NOW - timedelta(hours=1)),
        (oximeter.device_id, "pulse_oximeter", patient_id, oximeter.measured_at),
    ]
    # An older reading arriving later does not move the device's last reading back.
    late = a_reading(patient_id=patient_id, measured_at=NOW - timedelta(days=2))
    insert_readings(db, [StoredReading(gateway_id, late)])
    last = db.execute(
        "SELECT last_reading_at FROM devices WHERE device_id = %s", (cuff[0].device_id,)
    ).fetchone()
    assert last == (NOW - timedelta(hours=1),)
    seen = db.execute(
        "SELECT last_seen_at IS NOT NULL FROM gateways WHERE gateway_id = %s", (gateway_id,)
    ).fetchone()
    assert seen == (True,)
