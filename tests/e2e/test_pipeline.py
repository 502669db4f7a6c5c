"""The whole pipeline on real parts: simulated device bytes -> gateway -> broker -> ingest ->
PostgreSQL -> rules -> a flag visible through the API; and nothing lost across ingest crashes.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest

from carewatch_contract.messages import TimeSource
from gateway_agent.outbox import Outbox
from tests.conftest import REPO
from tests.e2e.conftest import Pipeline, wait_until
from tests.unit.test_contract import a_reading

pytestmark = [pytest.mark.slow, pytest.mark.db, pytest.mark.broker]


def enroll(pipeline: Pipeline, patients: int) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "ingest",
            "enroll-demo",
            "--gateway",
            pipeline.gateway_id,
            "--patients",
            str(patients),
            "--seed",
            "7",
        ],
        cwd=REPO,
        env=pipeline.env,
        check=True,
        capture_output=True,
        timeout=60,
    )


def test_device_bytes_become_a_flag_visible_through_the_api(pipeline: Pipeline) -> None:
    enroll(pipeline, patients=6)
    pipeline.start_ingest()
    pipeline.start("rules", "-m", "analytics", "worker")
    pipeline.start(
        "gateway",
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "6",
        "--history-days",
        "2",
        "--rate",
        "10",
        "--live-readings",
        "20",
    )

    def critical_flags() -> list[dict[str, object]]:
        flags = pipeline.api.get("/api/v1/flags").json()
        return [f for f in flags if f["severity"] == "critical"]

    wait_until(lambda: bool(critical_flags()), 60, "a critical flag")
    flag = critical_flags()[0]
    detail = pipeline.api.get(f"/api/v1/flags/{flag['flag_id']}").json()
    assert detail["readings"], "a flag names the readings that raised it"
    assert detail["rules_version"] and detail["threshold"]
    reading_ids = {r["reading_id"] for r in detail["readings"]}
    # The flagged readings are real stored readings, decoded from device bytes.
    stored = pipeline.db_value(
        "SELECT count(*) FROM readings WHERE raw_hex <> '' AND reading_id = ANY(ARRAY["
        + ",".join(f"'{i}'::uuid" for i in reading_ids)
        + "])"
    )
    assert stored == len(reading_ids)
    # One open flag per patient, rule and direction, however many readings breached.
    flags = pipeline.api.get("/api/v1/flags").json()
    keys = [(f["patient_id"], f["rule_id"], f["direction"]) for f in flags]
    assert len(keys) == len(set(keys))


def test_ingest_killed_and_restarted_while_the_gateway_publishes_loses_and_doubles_nothing(
    pipeline: Pipeline,
) -> None:
    enroll(pipeline, patients=10)
    pipeline.start_ingest()
    live = 300
    pipeline.start(
        "gateway",
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "10",
        "--history-days",
        "1",
        "--rate",
        "60",
        "--live-readings",
        str(live),
    )
    for _ in range(3):
        time.sleep(2.5)
        pipeline.kill("ingest", signal.SIGKILL)
        time.sleep(1.0)
        pipeline.start_ingest()

    wait_until(lambda: "live measurements done" in pipeline.log("gateway"), 120, "the live stream")
    wait_until(pipeline.drained, 120, "the gateway's outbox to drain into the database")
    time.sleep(3)  # let any late redelivery arrive: it must not add a row
    counts = pipeline.delivery_counts()
    accepted, rows, distinct, gaps = counts.accepted, counts.rows, counts.distinct, counts.gaps
    print(f"{accepted} readings accepted by the gateway, {rows} rows, {distinct} distinct ids")
    assert accepted > 500
    assert rows == distinct == accepted
    assert gaps == 0
    assert pipeline.outbox("SELECT count(*) FROM undecodable") == 0


def test_gateway_status_is_online_while_connected_and_offline_by_last_will(
    pipeline: Pipeline,
) -> None:
    enroll(pipeline, patients=2)
    pipeline.start_ingest()
    pipeline.start(
        "gateway",
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "2",
        "--history-days",
        "0",
        "--rate",
        "1",
        "--live-readings",
        "0",
    )
    state = f"SELECT state FROM gateways WHERE gateway_id = '{pipeline.gateway_id}'"
    wait_until(lambda: pipeline.db_value(state) == "online", 30, "the gateway online")
    pipeline.kill("gateway", signal.SIGKILL)  # no goodbye: the broker sends the last will
    wait_until(lambda: pipeline.db_value(state) == "offline", 30, "the last will")


def test_gateway_killed_during_bursts_keeps_its_outbox_sound_and_loses_nothing(
    pipeline: Pipeline,
) -> None:
    enroll(pipeline, patients=10)
    # Ingest commits within milliseconds; batches that wait up to 250 ms keep readings
    # unacknowledged long enough for a kill to land among them.
    pipeline.start_ingest(INGEST_BATCH_MAX_WAIT_MS="250")
    args = (
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "10",
        "--history-days",
        "0",
        "--rate",
        "120",
    )
    integrity = "SELECT count(*) FROM pragma_integrity_check WHERE integrity_check <> 'ok'"
    pending = "SELECT count(*) FROM outbox"
    in_flight_at_kill = []
    for _ in range(4):
        pipeline.start("gateway", *args)
        time.sleep(1.5)  # about 40 readings a second
        # Kill while readings are in flight (the simulator's bursts leave quiet moments).
        wait_until(lambda: pipeline.outbox(pending) > 0, 10, "readings in flight", 0.01)
        pipeline.kill("gateway", signal.SIGKILL)
        in_flight_at_kill.append(pipeline.outbox(pending))
        assert pipeline.outbox(integrity) == 0
    pipeline.start("gateway", *args[:-2], "--rate", "60", "--live-readings", "100")
    wait_until(lambda: "live measurements done" in pipeline.log("gateway"), 120, "the last stream")

    wait_until(pipeline.drained, 120, "the outbox to drain after the kills")
    counts = pipeline.delivery_counts()
    accepted, rows, distinct, gaps = counts.accepted, counts.rows, counts.distinct, counts.gaps
    print(
        f"4 gateway kills with {in_flight_at_kill} readings unacked at each: {accepted} readings"
        f" accepted, {rows} rows, {distinct} distinct ids"
    )
    assert accepted > 200
    assert max(in_flight_at_kill) > 0  # the kills did hit readings in flight
    assert rows == distinct == accepted
    assert gaps == 0


def test_after_days_offline_the_backlog_replays_in_order_and_live_readings_go_first(
    pipeline: Pipeline,
) -> None:
    """A home offline for days: its backlog is sent oldest first, while a reading taken
    after the link came back reaches the database long before the backlog is through."""
    enroll(pipeline, patients=4)
    patients = pipeline.db_values(
        "SELECT patient_id FROM gateway_patients WHERE gateway_id = %s ORDER BY patient_id",
        pipeline.gateway_id,
    )
    backlog = 30_000
    now = datetime.now(UTC)
    outbox = Outbox(pipeline.outbox_path)
    for start in range(0, backlog, 500):  # three days of an unusually busy home, offline
        outbox.add(
            [
                a_reading(
                    patient_id=patients[i % len(patients)],
                    received_at=now - timedelta(days=3) * (1 - i / backlog),
                    measured_at=now - timedelta(days=3) * (1 - i / backlog) - timedelta(minutes=1),
                    device_time=None,
                    time_source=TimeSource.GATEWAY,
                )
                for i in range(start, start + 500)
            ]
        )
    outbox.close()
    pipeline.start_ingest()
    pipeline.start(
        "gateway",
        "-m",
        "gateway_agent",
        "run",
        "--simulate",
        "--patients",
        "4",
        "--history-days",
        "0",
        "--rate",
        "60",
        "--live-readings",
        "20",
    )
    wait_until(lambda: "live measurements done" in pipeline.log("gateway"), 120, "the live stream")
    wait_until(pipeline.drained, 180, "the backlog to drain")
    counts = pipeline.delivery_counts()
    assert counts.rows == counts.distinct == counts.accepted > backlog
    assert counts.gaps == 0
    # Commit order is the order of the storing transactions' ids (one ingest writer).
    inversions = pipeline.db_value(
        "SELECT count(*) FROM (SELECT ingest_xid < lag(ingest_xid) OVER (ORDER BY gateway_seq)"
        f" AS earlier FROM readings WHERE gateway_seq <= {backlog}) s WHERE earlier"
    )
    stored_before_first_live = pipeline.db_value(
        f"SELECT count(*) FROM readings WHERE gateway_seq <= {backlog} AND ingest_xid <"
        f" (SELECT min(ingest_xid) FROM readings WHERE gateway_seq > {backlog})"
    )
    seconds = pipeline.db_value(
        "SELECT extract(epoch FROM max(ingested_at) - min(ingested_at)) FROM readings"
        f" WHERE gateway_seq <= {backlog}"
    )
    print(
        f"backlog of {backlog} replayed in {seconds:.1f} s ({backlog / seconds:,.0f} readings/s);"
        f" {stored_before_first_live} backlog readings were stored before the first live one;"
        f" {inversions} out of order"
    )
    assert inversions == 0
    assert stored_before_first_live < backlog / 2
