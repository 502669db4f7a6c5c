"""The rules worker running the whole engine on a real database: trends, NEWS2 and late
readings through run_once, silences through the sweep, resolutions by the rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import pytest

from analytics import live
from analytics.escalation import escalate_due
from analytics.flag_store import list_flags
from analytics.rules import load_rules
from analytics.worker import run_once
from ingest.readings import StoredReading, insert_readings
from ingest.registry import PatientRecord, enroll
from tests.unit.test_contract import a_reading

pytestmark = pytest.mark.db

WEIGHT, SPO2, SYSTOLIC, PULSE, TEMPERATURE = "29463-7", "59408-5", "8480-6", "8867-4", "8310-5"
UNITS = {WEIGHT: "kg", SPO2: "%", SYSTOLIC: "mm[Hg]", PULSE: "/min", TEMPERATURE: "Cel"}
NOW = datetime.now(UTC).replace(microsecond=0)


def store(db: psycopg.Connection, patient: str, *rows: tuple[str, float, float]) -> None:
    """Readings (loinc, value, hours before now), committed; the patient enrolled."""
    enroll(db, gateway_id="gw-live", patients=[PatientRecord(patient, patient.title())])
    insert_readings(
        db,
        [
            StoredReading(
                "gw-live",
                a_reading(
                    patient_id=patient,
                    loinc=loinc,
                    unit=UNITS[loinc],
                    value=value,
                    seq=seq,
                    measured_at=NOW - timedelta(hours=hours),
                    received_at=NOW - timedelta(hours=hours) + timedelta(seconds=5),
                    device_time=None,
                ),
            )
            for seq, (loinc, value, hours) in enumerate(rows)
        ],
    )
    db.commit()


def flags(db: psycopg.Connection) -> list[dict[str, Any]]:
    return list_flags(db, statuses=("open", "acknowledged", "resolved"), include_snoozed=True)


@pytest.fixture
def worker_db(db: psycopg.Connection) -> psycopg.Connection:
    db.autocommit = True
    return db


def test_a_weight_gain_raises_a_trend_flag_as_the_readings_arrive(
    worker_db: psycopg.Connection,
) -> None:
    store(worker_db, "hf", (WEIGHT, 80.0, 30), (WEIGHT, 80.2, 20))
    run_once(worker_db, load_rules())
    assert flags(worker_db) == []
    store(worker_db, "hf", (WEIGHT, 81.1, 2))  # 0.9 kg over the lowest of the last 24 h
    result = run_once(worker_db, load_rules())
    [flag] = flags(worker_db)
    assert (flag["rule_id"], flag["kind"], flag["severity"]) == ("weight-gain-24h", "trend", "high")
    assert flag["worst_value"] == pytest.approx(0.9)
    assert result.readings == 1 and result.breaches == 1


def test_a_news2_set_scoring_5_raises_one_flag_that_lists_its_parameters(
    worker_db: psycopg.Connection,
) -> None:
    # SpO2 95 (1), pulse 112 (2), systolic 105 (1), temperature 38.3 (1), on air (0): 5
    store(
        worker_db,
        "copd",
        (SPO2, 95, 1.0),
        (PULSE, 112, 1.0),
        (SYSTOLIC, 105, 0.95),
        (TEMPERATURE, 38.3, 0.9),
    )
    run_once(worker_db, load_rules())
    by_rule = {flag["rule_id"]: flag for flag in flags(worker_db)}
    assert set(by_rule) == {"news2", "fever"}
    news2 = by_rule["news2"]
    assert (news2["direction"], news2["loinc"], news2["severity"]) == ("none", "news2", "high")
    assert news2["threshold"]["kind"] == "news2"
    detail = [e for e in _events(worker_db, news2["flag_id"]) if e[0] == "opened"]
    assert detail and detail[0][1]["label"] == "NEWS2 5 (partial)"


def _events(db: psycopg.Connection, flag_id: int) -> list[tuple[str, Any]]:
    return db.execute(
        "SELECT event, detail FROM flag_events WHERE flag_id = %s ORDER BY event_id", (flag_id,)
    ).fetchall()


def test_a_reading_that_arrives_days_late_raises_a_late_flag_that_is_never_escalated(
    worker_db: psycopg.Connection,
) -> None:
    store(worker_db, "meter", (SYSTOLIC, 195, 72))  # taken three days ago, stored now
    run_once(worker_db, load_rules())
    [flag] = [f for f in flags(worker_db) if f["rule_id"] == "hypertensive-crisis"]
    assert flag["late"] is True
    worker_db.execute("UPDATE flags SET severity_since = now() - interval '1 day'")
    with worker_db.transaction():
        assert escalate_due(worker_db, load_rules(), now=datetime.now(UTC)) == []


def test_the_sweep_flags_a_silence_once_and_a_new_reading_resolves_it(
    worker_db: psycopg.Connection,
) -> None:
    store(worker_db, "quiet", (PULSE, 70, 60), (PULSE, 72, 50))
    run_once(worker_db, load_rules())
    worker_db.execute(
        "INSERT INTO devices (gateway_id, device_id, device_type, patient_id, last_reading_at)"
        " VALUES ('gw-live', 'dev-quiet', 'pulse_oximeter', 'quiet', %s)"
        " ON CONFLICT (gateway_id, device_id) DO NOTHING",
        (NOW - timedelta(hours=50),),
    )
    with worker_db.transaction():
        opened, _ = live.sweep(worker_db, load_rules(), now=NOW)
    with worker_db.transaction():
        again, _ = live.sweep(worker_db, load_rules(), now=NOW)
    silence = [f for f in flags(worker_db) if f["rule_id"] == "no-readings-48h"]
    assert (opened.opened, again.opened, again.readings_linked) == (1, 0, 0)
    assert len(silence) == 1 and silence[0]["status"] == "open"
    assert silence[0]["opened_at"] == NOW - timedelta(hours=2)  # 48 h after the last reading
    store(worker_db, "quiet", (PULSE, 71, 0.5))
    result = run_once(worker_db, load_rules())
    [silence] = [f for f in flags(worker_db) if f["rule_id"] == "no-readings-48h"]
    assert (silence["status"], silence["resolved_by"]) == ("resolved", "rules")
    assert result.resolved == 1


def test_the_history_cache_gives_what_the_database_gives(worker_db: psycopg.Connection) -> None:
    rules = load_rules()
    cache = live.HistoryCache(live.lookback(rules))
    store(worker_db, "a", (SYSTOLIC, 150, 100), (SYSTOLIC, 186, 50), (PULSE, 80, 50))
    store(worker_db, "b", (SPO2, 95, 90), (SPO2, 91, 10))

    def both(since_hours: float) -> None:
        for patients in (["a"], ["a", "b"]):
            kwargs = {
                "patient_ids": patients,
                "since": NOW - timedelta(hours=since_hours),
                "now": NOW,
            }
            cached = live.evaluate_patients(worker_db, rules, cache=cache, **kwargs)
            direct = live.evaluate_patients(worker_db, rules, **kwargs)
            for got, expected in zip(cached, direct, strict=True):
                pd.testing.assert_frame_equal(got, expected)

    both(1)
    first_pass = len(cache)
    assert first_pass > 0
    # New readings reach the cache through the pass that reads them, not from the database.
    before = run_once(worker_db, rules).upper
    store(worker_db, "a", (SYSTOLIC, 190, 0.5))
    cache.add(live.new_readings(worker_db, lower=before, upper=2**62))
    assert len(cache) == first_pass + 1
    both(1)
    # A reading replayed from 40 days ago: further back than the cache covers, read again.
    store(worker_db, "b", (SPO2, 89, 24 * 40))
    both(24 * 40)


def test_a_silent_device_behind_an_online_gateway_is_told_apart_from_a_gateway_offline(
    worker_db: psycopg.Connection,
) -> None:
    store(worker_db, "home-on", (PULSE, 70, 1))
    enroll(worker_db, gateway_id="gw-off", patients=[PatientRecord("home-off", "Home Off")])
    worker_db.execute(
        "UPDATE gateways SET state = 'online', last_seen_at = %s WHERE gateway_id = 'gw-live'",
        (NOW - timedelta(minutes=2),),
    )
    worker_db.execute(
        "UPDATE gateways SET state = 'offline', last_seen_at = %s WHERE gateway_id = 'gw-off'",
        (NOW - timedelta(hours=13),),
    )
    worker_db.execute(
        "INSERT INTO devices (gateway_id, device_id, device_type, patient_id, last_reading_at)"
        " VALUES ('gw-live', 'scale-1', 'weight_scale', 'home-on', %s),"
        " ('gw-off', 'cuff-9', 'blood_pressure', 'home-off', %s)",
        (NOW - timedelta(hours=49), NOW - timedelta(hours=13)),
    )
    with worker_db.transaction():
        live.sweep(worker_db, load_rules(), now=NOW)
    raised = {(f["patient_id"], f["rule_id"]): f for f in flags(worker_db)}
    assert set(raised) == {("home-on", "device-silent"), ("home-off", "gateway-offline")}
    assert "weight_scale" in raised[("home-on", "device-silent")]["threshold"]["label"]
    # The scale reports again and the gateway comes back: both resolve, once.
    worker_db.execute("UPDATE devices SET last_reading_at = %s WHERE device_id = 'scale-1'", (NOW,))
    worker_db.execute(
        "UPDATE gateways SET state = 'online', last_seen_at = %s WHERE gateway_id = 'gw-off'",
        (NOW,),
    )
    with worker_db.transaction():
        _, resolved = live.sweep(worker_db, load_rules(), now=NOW)
    assert resolved == 2
    assert {f["status"] for f in flags(worker_db) if f["kind"] == "adherence"} == {"resolved"}


def test_episodes_replayed_in_one_pass_become_the_flags_the_engine_sees(
    worker_db: psycopg.Connection,
) -> None:
    # A day offline: 93 %, then back to 97 % and 96 % for a day, then 90 %, all stored at once.
    store(worker_db, "backlog", (SPO2, 93, 30), (SPO2, 97, 29), (SPO2, 96, 20), (SPO2, 90, 2))
    run_once(worker_db, load_rules())
    raised = [f for f in flags(worker_db) if f["rule_id"] == "spo2-below-target"]
    raised.sort(key=lambda f: f["opened_at"])
    assert [(f["severity"], f["status"], f["resolved_by"]) for f in raised] == [
        ("high", "resolved", "rules"),  # back in range 29 h ago, for 4 h: resolved then
        ("critical", "open", None),
    ]
    assert raised[0]["resolved_at"] == NOW - timedelta(hours=25)


def test_a_late_flag_joined_by_a_reading_of_the_present_is_news_again(
    worker_db: psycopg.Connection,
) -> None:
    store(worker_db, "replay", (SYSTOLIC, 195, 72))  # a backlog: late
    run_once(worker_db, load_rules())
    store(worker_db, "replay", (SYSTOLIC, 197, 73))  # another late one: still late
    run_once(worker_db, load_rules())
    [flag] = [f for f in flags(worker_db) if f["rule_id"] == "hypertensive-crisis"]
    assert flag["late"] is True
    store(worker_db, "replay", (SYSTOLIC, 199, 0.1))  # measured now
    run_once(worker_db, load_rules())
    [flag] = [f for f in flags(worker_db) if f["rule_id"] == "hypertensive-crisis"]
    assert (flag["late"], flag["breach_count"]) == (False, 3)
