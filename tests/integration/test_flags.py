"""Flags in a real PostgreSQL: opening, updating, clinician actions and the exactly-once worker."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import psycopg
import pytest

from analytics.flag_store import (
    FlagChanges,
    FlagStateError,
    acknowledge_flag,
    apply_breaches,
    counts_by_severity,
    get_flag,
    list_flags,
    resolve_flag,
)
from analytics.rules import RuleSet, evaluate_thresholds, load_rules
from analytics.settings import AnalyticsSettings
from analytics.worker import _warn_if_readings_wait, run_forever, run_once
from carewatch_contract.metrics import METRICS, Loinc

pytestmark = pytest.mark.db

SPO2, GLUCOSE, SYSTOLIC, DIASTOLIC, HEART_RATE = (
    str(Loinc.SPO2),
    str(Loinc.GLUCOSE),
    str(Loinc.SYSTOLIC),
    str(Loinc.DIASTOLIC),
    str(Loinc.HEART_RATE),
)
# Recent enough to land in the monthly partitions, fixed to the minute for readable asserts.
T0 = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(days=1)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


def add_patient(conn: psycopg.Connection[Any], patient_id: str, name: str | None = None) -> None:
    conn.execute(
        "INSERT INTO patients (patient_id, display_name) VALUES (%s, %s)",
        (patient_id, name or f"Patient {patient_id}"),
    )


def add_readings(
    conn: psycopg.Connection[Any],
    patient_id: str,
    readings: Sequence[tuple[str, float, int]],
) -> list[uuid.UUID]:
    """Insert readings (loinc, value, minutes after T0) with every NOT NULL column filled."""
    reading_ids = [uuid.uuid4() for _ in readings]
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO readings (reading_id, measured_at, patient_id, loinc, unit, value,"
            " time_source, received_at, gateway_id, device_id, device_type, measurement_id,"
            " gateway_seq, characteristic, raw_hex)"
            " VALUES (%s, %s, %s, %s, %s, %s, 'device', %s, 'gw-test', 'AA:BB:CC:DD:EE:FF',"
            " 'test', %s, %s, '2a35', '00')",
            [
                (
                    reading_id,
                    T0 + timedelta(minutes=minutes),
                    patient_id,
                    loinc,
                    METRICS[loinc].unit,
                    value,
                    T0 + timedelta(minutes=minutes, seconds=5),
                    uuid.uuid4(),
                    seq,
                )
                for seq, (reading_id, (loinc, value, minutes)) in enumerate(
                    zip(reading_ids, readings, strict=True)
                )
            ],
        )
    return reading_ids


def breaches_of(
    conn: psycopg.Connection[Any], rules: RuleSet, reading_ids: Sequence[uuid.UUID]
) -> pd.DataFrame:
    """Evaluate stored readings, as the worker would."""
    rows = conn.execute(
        "SELECT reading_id, patient_id, loinc, value, measured_at FROM readings"
        " WHERE reading_id = ANY(%s)",
        (list(reading_ids),),
    ).fetchall()
    frame = pd.DataFrame.from_records(
        rows, columns=["reading_id", "patient_id", "loinc", "value", "measured_at"]
    )
    return evaluate_thresholds(frame, rules)


def store_and_apply(
    conn: psycopg.Connection[Any],
    rules: RuleSet,
    patient_id: str,
    readings: Sequence[tuple[str, float, int]],
) -> FlagChanges:
    reading_ids = add_readings(conn, patient_id, readings)
    changes = apply_breaches(conn, breaches_of(conn, rules, reading_ids), rules)
    conn.commit()
    return changes


def events_of(flag: dict[str, Any]) -> list[str]:
    return [event["event"] for event in flag["events"]]


# --- opening and updating ----------------------------------------------------------------------


def test_breaches_of_one_rule_share_one_open_flag(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1", "Ada Lovelace")
    changes = store_and_apply(db, rules, "p1", [(SPO2, 93, 0), (SPO2, 92, 5), (SPO2, 93, 10)])

    assert changes == FlagChanges(opened=1, updated=0, severity_raised=0, readings_linked=3)
    [flag] = list_flags(db)
    assert flag["severity_since"] is not None
    assert {k: flag[k] for k in flag if k not in {"flag_id", "threshold", "severity_since"}} == {
        "patient_id": "p1",
        "patient_name": "Ada Lovelace",
        "rule_id": "spo2-below-target",
        "kind": "threshold",
        "title": "SpO2 below target",
        "direction": "low",
        "loinc": SPO2,
        "severity": "high",
        "status": "open",
        "opened_at": T0,
        "last_breach_at": T0 + timedelta(minutes=10),
        "breach_count": 3,
        "first_value": 93.0,
        "last_value": 93.0,
        "worst_value": 92.0,
        "unit": "%",
        "rules_version": rules.version,
        "acknowledged_at": None,
        "acknowledged_by": None,
        "resolved_at": None,
        "resolved_by": None,
        "resolution_note": None,
        "assignee": None,
        "late": False,
        "snoozed_until": None,
        "program": "general",
    }
    assert flag["threshold"] == {
        "metric": SPO2,
        "below": 94.0,
        "severity": "high",
        "label": "SpO2 < 94 %",
        "title": "SpO2 below target",
    }


def test_a_second_rule_or_patient_gets_its_own_flag(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    add_patient(db, "p2")
    store_and_apply(db, rules, "p1", [(SPO2, 93, 0), (GLUCOSE, 65, 1), (HEART_RATE, 190, 2)])
    store_and_apply(db, rules, "p2", [(SPO2, 90, 3)])

    flags = list_flags(db)
    assert sorted((f["patient_id"], f["rule_id"]) for f in flags) == [
        ("p1", "hypoglycaemia"),
        ("p1", "spo2-below-target"),
        ("p1", "tachycardia"),
        ("p2", "spo2-below-target"),
    ]
    assert [f["rule_id"] for f in list_flags(db, patient_id="p2")] == ["spo2-below-target"]


def test_severity_steps_up_on_the_same_flag(db: psycopg.Connection[Any], rules: RuleSet) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(GLUCOSE, 65, 0)])
    [before] = list_flags(db)
    assert before["severity"] == "medium"

    changes = store_and_apply(db, rules, "p1", [(GLUCOSE, 50, 30)])

    assert changes == FlagChanges(opened=0, updated=1, severity_raised=1, readings_linked=1)
    after = get_flag(db, flag_id=before["flag_id"])
    assert after is not None
    assert (after["severity"], after["breach_count"]) == ("critical", 2)
    assert (after["first_value"], after["last_value"], after["worst_value"]) == (65.0, 50.0, 50.0)
    assert after["threshold"]["label"] == "Glucose < 54 mg/dL (level 2)"
    assert events_of(after) == ["opened", "severity_raised"]
    raised = after["events"][1]
    assert (raised["actor"], raised["detail"]["from"], raised["detail"]["to"]) == (
        "rules",
        "medium",
        "critical",
    )
    assert [(r["value"], r["severity"]) for r in after["readings"]] == [
        (65.0, "medium"),
        (50.0, "critical"),
    ]


def test_step_up_within_one_batch_opens_then_raises(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    changes = store_and_apply(db, rules, "p1", [(GLUCOSE, 50, 5), (GLUCOSE, 65, 0)])

    assert changes == FlagChanges(opened=1, updated=0, severity_raised=1, readings_linked=2)
    [flag] = list_flags(db)
    full = get_flag(db, flag_id=flag["flag_id"])
    assert full is not None
    assert (full["severity"], full["first_value"], full["worst_value"]) == ("critical", 65.0, 50.0)
    assert events_of(full) == ["opened", "severity_raised"]


def test_reapplying_the_same_breaches_does_not_double_count(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    reading_ids = add_readings(db, "p1", [(SPO2, 93, 0), (SPO2, 91, 1)])
    breaches = breaches_of(db, rules, reading_ids)
    apply_breaches(db, breaches, rules)
    db.commit()

    again = apply_breaches(db, pd.concat([breaches, breaches]), rules)
    db.commit()

    assert again == FlagChanges()
    [flag] = list_flags(db)
    assert flag["breach_count"] == 2
    full = get_flag(db, flag_id=flag["flag_id"])
    assert full is not None
    assert len(full["readings"]) == 2
    assert events_of(full) == ["opened", "severity_raised"]


def test_a_blood_pressure_crisis_counts_both_metrics_on_one_flag(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(SYSTOLIC, 185, 0), (DIASTOLIC, 125, 0), (SYSTOLIC, 190, 9)])

    [flag] = list_flags(db)
    assert (flag["rule_id"], flag["severity"], flag["breach_count"]) == (
        "hypertensive-crisis",
        "critical",
        3,
    )
    # Summary values stay those of the flag's metric (systolic): no mixing with diastolic.
    assert (flag["loinc"], flag["unit"]) == (SYSTOLIC, "mm[Hg]")
    assert (flag["first_value"], flag["last_value"], flag["worst_value"]) == (185.0, 190.0, 190.0)


# --- clinician actions -------------------------------------------------------------------------


def test_acknowledge_then_resolve(db: psycopg.Connection[Any], rules: RuleSet) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(SPO2, 93, 0)])
    [flag] = list_flags(db)
    flag_id = flag["flag_id"]

    acknowledged = acknowledge_flag(db, flag_id=flag_id, actor="nurse.jo", note="calling")
    again = acknowledge_flag(db, flag_id=flag_id, actor="dr.lee")
    db.commit()
    assert acknowledged is not None and again is not None
    assert (acknowledged["status"], acknowledged["acknowledged_by"]) == (
        "acknowledged",
        "nurse.jo",
    )
    assert again["acknowledged_by"] == "nurse.jo"
    assert events_of(again) == ["opened", "acknowledged"]
    assert again["events"][1]["detail"] == {"note": "calling"}

    resolved = resolve_flag(db, flag_id=flag_id, actor="nurse.jo", note="sensor slipped")
    db.commit()
    assert resolved is not None
    assert (resolved["status"], resolved["resolved_by"], resolved["resolution_note"]) == (
        "resolved",
        "nurse.jo",
        "sensor slipped",
    )
    assert events_of(resolved) == ["opened", "acknowledged", "resolved"]
    assert list_flags(db) == []
    assert [f["flag_id"] for f in list_flags(db, statuses=("resolved",))] == [flag_id]

    with pytest.raises(FlagStateError, match="resolved"):
        acknowledge_flag(db, flag_id=flag_id, actor="nurse.jo")
    db.rollback()
    assert acknowledge_flag(db, flag_id=flag_id + 1000, actor="nurse.jo") is None
    assert resolve_flag(db, flag_id=flag_id + 1000, actor="nurse.jo", note=None) is None
    assert get_flag(db, flag_id=flag_id + 1000) is None


def test_after_resolve_a_new_breach_opens_a_new_flag(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    first_ids = add_readings(db, "p1", [(GLUCOSE, 60, 0)])
    first_breaches = breaches_of(db, rules, first_ids)
    apply_breaches(db, first_breaches, rules)
    [first] = list_flags(db)
    resolve_flag(db, flag_id=first["flag_id"], actor="dr.lee", note="ate something")
    db.commit()

    # Re-evaluating the reading that the resolved flag already holds opens nothing.
    assert apply_breaches(db, first_breaches, rules) == FlagChanges()
    changes = store_and_apply(db, rules, "p1", [(GLUCOSE, 62, 60)])

    assert changes.opened == 1
    [second] = list_flags(db)
    assert second["flag_id"] != first["flag_id"]
    assert (second["breach_count"], second["first_value"]) == (1, 62.0)


def test_a_severity_raise_reopens_an_acknowledged_flag(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(SPO2, 93, 0)])
    [flag] = list_flags(db)
    acknowledge_flag(db, flag_id=flag["flag_id"], actor="nurse.jo")
    db.commit()

    store_and_apply(db, rules, "p1", [(SPO2, 93, 5)])  # same severity: stays acknowledged
    assert list_flags(db)[0]["status"] == "acknowledged"
    store_and_apply(db, rules, "p1", [(SPO2, 89, 10)])

    [reopened] = list_flags(db)
    assert (reopened["flag_id"], reopened["status"], reopened["severity"]) == (
        flag["flag_id"],
        "open",
        "critical",
    )
    assert (reopened["acknowledged_at"], reopened["breach_count"]) == (None, 3)
    full = get_flag(db, flag_id=flag["flag_id"])
    assert full is not None
    assert events_of(full) == ["opened", "acknowledged", "severity_raised"]
    assert full["events"][2]["detail"]["reopened"] is True


def test_triage_order_and_counts_by_severity(db: psycopg.Connection[Any], rules: RuleSet) -> None:
    for patient_id in ("p1", "p2", "p3"):
        add_patient(db, patient_id)
    store_and_apply(db, rules, "p1", [(GLUCOSE, 65, 0)])  # medium, oldest
    store_and_apply(db, rules, "p2", [(SPO2, 90, 10)])  # critical, newer
    store_and_apply(db, rules, "p3", [(SPO2, 89, 5)])  # critical, older
    store_and_apply(db, rules, "p3", [(GLUCOSE, 300, 1)])  # high

    flags = list_flags(db)
    assert [(f["patient_id"], f["severity"]) for f in flags] == [
        ("p3", "critical"),
        ("p2", "critical"),
        ("p3", "high"),
        ("p1", "medium"),
    ]
    assert len(list_flags(db, limit=2)) == 2
    assert counts_by_severity(db) == {"critical": 2, "high": 1, "medium": 1, "low": 0, "info": 0}
    with pytest.raises(ValueError, match="unknown flag status"):
        list_flags(db, statuses=("closed",))


# --- concurrency -------------------------------------------------------------------------------


def _wait_until_blocked(observer: psycopg.Connection[Any], backend_pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = observer.execute(
            "SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", (backend_pid,)
        ).fetchone()
        if row and row[0] == "Lock":
            return
        time.sleep(0.02)
    raise AssertionError("the second worker never waited for the first")


def test_concurrent_workers_open_one_flag_and_count_each_reading_once(
    db: psycopg.Connection[Any], database_url: str, rules: RuleSet
) -> None:
    add_patient(db, "p1")
    reading_ids = add_readings(db, "p1", [(SPO2, 93, 0), (SPO2, 92, 1)])
    db.commit()
    breaches = breaches_of(db, rules, reading_ids)

    with (
        psycopg.connect(database_url) as first,
        psycopg.connect(database_url) as second,
        psycopg.connect(database_url, autocommit=True) as observer,
    ):
        first_changes = apply_breaches(first, breaches, rules)  # opened, not yet committed
        outcome: dict[str, Any] = {}

        def second_worker() -> None:
            outcome["changes"] = apply_breaches(second, breaches, rules)
            second.commit()

        thread = threading.Thread(target=second_worker)
        thread.start()
        _wait_until_blocked(observer, second.info.backend_pid)
        first.commit()
        thread.join(timeout=10)
        assert not thread.is_alive()

    assert first_changes.opened == 1
    assert outcome["changes"] == FlagChanges()
    [flag] = list_flags(db)
    assert flag["breach_count"] == 2


# --- the worker --------------------------------------------------------------------------------


def test_run_once_processes_committed_readings_exactly_once(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    add_readings(db, "p1", [(SPO2, 93, 0), (SPO2, 97, 1), (GLUCOSE, 50, 2), (HEART_RATE, 70, 3)])
    db.commit()

    first = run_once(db, rules)
    second = run_once(db, rules)

    assert (first.readings, first.breaches, first.changes.opened) == (4, 2, 2)
    assert first.upper > first.lower
    assert (second.readings, second.breaches) == (0, 0)
    every = list_flags(db, statuses=("open", "acknowledged", "resolved"))
    assert sum(f["breach_count"] for f in every) == 2
    # SpO2 97 a minute after the 93: back in range for 4 h long since, resolved by the rules
    assert first.resolved == 1
    assert {f["rule_id"]: f["resolved_by"] for f in every} == {
        "spo2-below-target": "rules",
        "hypoglycaemia": None,
    }
    watermark = db.execute(
        "SELECT processed_below::text FROM rules_watermark WHERE worker = 'rules-1'"
    ).fetchone()
    assert watermark is not None and int(watermark[0]) >= first.upper


def test_a_reading_committed_after_a_pass_began_is_picked_up_by_the_next(
    db: psycopg.Connection[Any], database_url: str, rules: RuleSet
) -> None:
    add_patient(db, "p1")
    add_readings(db, "p1", [(SPO2, 93, 0)])
    db.commit()

    with psycopg.connect(database_url) as ingest:
        add_readings(ingest, "p1", [(SPO2, 90, 1)])  # stored, not yet committed
        first = run_once(db, rules)
        ingest.commit()
    second = run_once(db, rules)
    third = run_once(db, rules)

    assert (first.readings, second.readings, third.readings) == (1, 1, 0)
    [flag] = list_flags(db)
    assert (flag["breach_count"], flag["severity"]) == (2, "critical")


def test_bounded_passes_cover_every_reading_once(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    for minute in range(5):  # five transactions of one reading
        add_readings(db, "p1", [(GLUCOSE, 60, minute)])
        db.commit()
    add_readings(db, "p1", [(GLUCOSE, 60, 10 + i) for i in range(4)])  # one of four
    db.commit()

    passes = [run_once(db, rules, max_readings=2)]
    while passes[-1].more_ready:
        passes.append(run_once(db, rules, max_readings=2))
        assert len(passes) < 20

    assert len(passes) > 1
    assert sum(p.readings for p in passes) == 9
    assert run_once(db, rules).readings == 0
    [flag] = list_flags(db)
    assert flag["breach_count"] == 9


def test_workers_with_different_names_keep_their_own_watermark(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    add_readings(db, "p1", [(SPO2, 93, 0)])
    db.commit()

    assert run_once(db, rules, worker="rules-a").readings == 1
    assert run_once(db, rules, worker="rules-b").readings == 1  # evaluates, links nothing twice
    assert list_flags(db)[0]["breach_count"] == 1


def test_run_once_refuses_a_connection_inside_a_transaction(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    db.execute("SELECT 1")
    with pytest.raises(ValueError, match="no transaction in progress"):
        run_once(db, rules)
    db.rollback()


@pytest.fixture
def stop_event() -> Iterator[threading.Event]:
    stop = threading.Event()
    yield stop
    stop.set()


def test_run_forever_flags_new_readings_and_stops_promptly(
    db: psycopg.Connection[Any], database_url: str, stop_event: threading.Event
) -> None:
    settings = AnalyticsSettings(DATABASE_URL=database_url, ANALYTICS_POLL_INTERVAL_MS=20)
    worker = threading.Thread(target=run_forever, args=(settings, stop_event))
    worker.start()
    add_patient(db, "p1")
    add_readings(db, "p1", [(GLUCOSE, 40, 0)])
    db.commit()

    deadline = time.monotonic() + 10
    while not list_flags(db) and time.monotonic() < deadline:
        db.rollback()  # a fresh snapshot on the next query
        time.sleep(0.05)
    stop_event.set()
    worker.join(timeout=5)

    assert not worker.is_alive()
    assert [f["severity"] for f in list_flags(db)] == ["critical"]


def test_run_forever_survives_an_unreachable_database(stop_event: threading.Event) -> None:
    settings = AnalyticsSettings(
        DATABASE_URL="postgresql://postgres@127.0.0.1:9/postgres", ANALYTICS_POLL_INTERVAL_MS=20
    )
    worker = threading.Thread(target=run_forever, args=(settings, stop_event))
    worker.start()
    time.sleep(1.0)  # several failed connections with back-off
    assert worker.is_alive()
    stop_event.set()
    worker.join(timeout=5)
    assert not worker.is_alive()


def test_the_worker_holds_each_patient_to_their_own_spo2_scale(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "copd")
    db.execute("UPDATE patients SET spo2_scale = 2 WHERE patient_id = 'copd'")
    add_patient(db, "most")
    add_readings(db, "copd", [(SPO2, 90, 0), (SPO2, 86, 1)])
    add_readings(db, "most", [(SPO2, 90, 0)])
    db.commit()

    run_once(db, rules)

    flags = {(f["patient_id"], f["rule_id"], f["worst_value"]) for f in list_flags(db)}
    assert flags == {
        ("copd", "spo2-below-target-scale-2", 86.0),  # 90 % is within a COPD patient's target
        ("most", "spo2-below-target", 90.0),
    }


def test_a_breach_after_acknowledgement_puts_the_flag_back_in_the_queue(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(SYSTOLIC, 186, 0)])
    [flag] = list_flags(db)
    acknowledge_flag(db, flag_id=flag["flag_id"], actor="dr-a")
    # Three days later (T0 is a day ago: 3 days after T0 is after the acknowledgement).
    store_and_apply(db, rules, "p1", [(SYSTOLIC, 238, 3 * 24 * 60)])
    [again] = list_flags(db)
    assert (again["flag_id"], again["status"], again["acknowledged_by"]) == (
        flag["flag_id"],
        "open",
        None,
    )
    assert events_of(get_flag(db, flag_id=flag["flag_id"]))[-1] == "breach"


def test_a_breach_measured_before_the_acknowledgement_does_not_reopen(
    db: psycopg.Connection[Any], rules: RuleSet
) -> None:
    add_patient(db, "p1")
    store_and_apply(db, rules, "p1", [(SYSTOLIC, 186, 60)])
    [flag] = list_flags(db)
    acknowledge_flag(db, flag_id=flag["flag_id"], actor="dr-a")
    store_and_apply(db, rules, "p1", [(SYSTOLIC, 205, 0)])  # a stored record from before
    [same] = list_flags(db)
    assert same["status"] == "acknowledged"
    assert (same["opened_at"], same["first_value"], same["worst_value"]) == (T0, 205.0, 205.0)


def test_readings_held_back_by_an_open_transaction_are_reported(
    db: psycopg.Connection[Any], rules: RuleSet, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    add_patient(db, "p1")
    db.commit()
    with psycopg.connect(database_url) as blocker:
        blocker.execute("INSERT INTO patients (patient_id, display_name) VALUES ('px', 'X')")
        add_readings(db, "p1", [(SPO2, 85, 0)])  # committed after the blocker began
        db.commit()
        held = run_once(db, rules)
        assert held.readings == 0  # flags wait: the blocker's transaction is still open
        with caplog.at_level(logging.WARNING, logger="analytics.worker"):
            _warn_if_readings_wait(db, lower=held.lower)
        assert "1 reading(s) wait for the rules" in caplog.text
        blocker.rollback()
    assert run_once(db, rules).readings == 1  # and nothing was lost


def test_a_restarted_worker_links_every_breach_exactly_once(
    db: psycopg.Connection[Any], database_url: str, rules: RuleSet
) -> None:
    """Passes, a worker stopped between them (its history cache lost with it), then a new
    one: every breaching reading is linked to a flag once, none twice, none missed."""
    from analytics.live import HistoryCache, lookback

    add_patient(db, "p1")
    add_readings(db, "p1", [(GLUCOSE, 50, 0), (SPO2, 93, 1), (GLUCOSE, 45, 2)])
    db.commit()
    db.autocommit = True
    first = HistoryCache(lookback(rules))
    run_once(db, rules, cache=first)
    add_readings(db, "p1", [(GLUCOSE, 48, 3), (SPO2, 91, 4)])  # stored, then the worker dies
    del first
    second = HistoryCache(lookback(rules))  # a new process: nothing in memory
    run_once(db, rules, cache=second)
    run_once(db, rules, cache=second)
    linked = db.execute(
        "SELECT fr.reading_id, count(*) FROM flag_readings fr GROUP BY fr.reading_id"
    ).fetchall()
    assert len(linked) == 5 and {count for _, count in linked} == {1}
