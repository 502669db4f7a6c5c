"""Ingest faults: killed between a batch's commit and its acks, twenty times over; and two
workers on the shared subscription, one of them killed mid-run."""

from __future__ import annotations

import json
import signal
import time

import pytest

from tests.faults.conftest import Deployment, wait_until
from tests.faults.monitor import take_over_session

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.db, pytest.mark.broker]

PATIENTS = 10


def test_ingest_killed_between_commit_and_ack_20_times_stores_everything_once(
    deployment: Deployment,
) -> None:
    """``CAREWATCH_FAILPOINT=after_commit``: each ingest process exits (code 70) right after
    its first batch that stored a new reading commits, before it acknowledges anything, to the
    gateway or to the broker. Twenty such processes in a row on one persistent session
    (``INGEST_CLIENT_ID``), then a normal one. What was committed and not acknowledged comes
    back, redelivered by the broker and resent by the gateway: stored once, counted as
    duplicates. (The twenty are forked from a launcher that did the slow imports once, see
    warm_ingest; each runs ``python -m ingest serve``'s own code in a process of its own.)"""
    cycles = 20
    readings = 6_000
    patients = deployment.enroll(PATIENTS)
    deployment.prefill(readings, patients)
    client_id = f"ingest-{deployment.gateway_id}"
    # A window of 200 readings (4 messages) in flight: each cycle stores at most that many
    # new readings, so twenty cycles cannot run out of new readings to commit.
    deployment.start_gateway(PATIENTS, GATEWAY_MAX_IN_FLIGHT="200", GATEWAY_RESEND_AFTER_S="5")
    failing = {"CAREWATCH_FAILPOINT": "after_commit"}

    started = time.monotonic()
    launcher = deployment.ingest_launcher("launcher", client_id=client_id, **failing)
    rows_after: list[int] = []
    for cycle in range(1, cycles + 1):
        code = launcher.run(f"ingest-{cycle}", timeout_s=60)
        log = deployment.tail(f"ingest-{cycle}")
        assert code == 70, f"cycle {cycle} exited with {code}:\n{log}"
        assert "failpoint after_commit: exiting between commit and acks" in log
        rows_after.append(deployment.rows())
        # Nothing left the gateway's outbox that is not in the database.
        assert readings - deployment.pending() <= rows_after[-1]
    cycles_s = time.monotonic() - started
    at_last_crash = deployment.delivery()

    deployment.start_ingest("ingest", client_id=client_id)
    drain_s = deployment.wait_drained(120)
    time.sleep(2.0)  # let any late redelivery arrive: it must not add a row
    counts = deployment.assert_delivered(readings)
    metrics = deployment.metrics("ingest")
    per_cycle = [b - a for a, b in zip([0, *rows_after], rows_after, strict=False)]
    print(
        f"\n{cycles} ingest processes each exited (70) between commit and ack in"
        f" {cycles_s:.1f} s; new readings stored per cycle: {per_cycle}; at the last crash"
        f" {at_last_crash.rows} stored, {at_last_crash.pending} unacknowledged in the gateway's"
        f" outbox; a normal ingest drained the rest in {drain_s:.1f} s; {counts}; the normal"
        f" ingest's duplicates suppressed: {metrics['duplicates_suppressed']:.0f},"
        f" readings committed: {metrics['readings_committed']:.0f}"
    )
    assert all(n > 0 for n in per_cycle), "every cycle committed new readings before exiting"
    assert at_last_crash.rows < readings, "the normal ingest found work left: the test saw it"
    # What the last crash committed and never acknowledged came back to the normal ingest.
    assert metrics["duplicates_suppressed"] > 0


def test_two_workers_share_the_load_and_one_killed_the_other_carries_on(
    deployment: Deployment,
) -> None:
    """Two ingest workers on ``$share/ingest/...`` (``INGEST_SHARED_GROUP=ingest``), each with
    its own client id and persistent session. Both store part of a 10,000-reading burst; then
    one is killed with SIGKILL and never comes back.

    Mosquitto keeps sharing messages with the dead worker's session (it lives for the day
    the worker asked for), where they wait for a worker that does not return; the gateway,
    not acknowledged, sends those readings again, half of each resend reaching the worker that
    carries on. Nothing is lost and no row is doubled; the duplicates are suppressed."""
    burst = 10_000
    patients = deployment.enroll(PATIENTS)
    deployment.prefill(burst, patients)
    workers = ("ingest-a", "ingest-b")
    for name in workers:
        deployment.start_ingest(
            name,
            client_id=f"{name}-{deployment.gateway_id}",
            ready=False,
            INGEST_SHARED_GROUP="ingest",
        )
    for name in workers:
        deployment.wait_ready(name)
    started = time.monotonic()
    deployment.start_gateway(PATIENTS, GATEWAY_RESEND_AFTER_S="2")

    wait_until(lambda: deployment.rows() >= 3_000, 60, "the burst under way", interval_s=0.05)
    split = {name: deployment.metrics(name)["readings_committed"] for name in workers}
    assert deployment.kill("ingest-b", signal.SIGKILL) == -signal.SIGKILL
    killed = time.monotonic()
    at_kill = deployment.delivery()

    drain_s = deployment.wait_drained(150)
    time.sleep(2.0)  # let any late redelivery arrive: it must not add a row
    counts = deployment.assert_delivered(burst)
    survivor = deployment.metrics("ingest-a")
    # What the broker kept sharing with the dead worker's session since the kill.
    stranded = [
        json.loads(payload)["readings"]
        for topic, payload in take_over_session(
            deployment.broker.url, f"ingest-b-{deployment.gateway_id}"
        )
        if topic.endswith("/readings")
    ]
    stranded_readings = sum(len(readings) for readings in stranded)
    print(
        f"\nshared subscription, 2 workers: readings committed when {sum(split.values()):.0f}"
        f" were stored: {', '.join(f'{n} {v:.0f}' for n, v in split.items())};"
        f" ingest-b killed -9 at {killed - started:.1f} s with {at_kill.rows} stored and"
        f" {at_kill.pending} unacknowledged; ingest-a stored the rest in {drain_s:.1f} s;"
        f" {counts}; ingest-a in all: committed {survivor['readings_committed']:.0f},"
        f" duplicates suppressed {survivor['duplicates_suppressed']:.0f}; left in the dead"
        f" worker's session: {len(stranded)} messages, {stranded_readings} readings (all stored"
        f" through ingest-a after the gateway sent them again)"
    )
    assert all(v > 0 for v in split.values()), f"the load was not split: {split}"
    assert at_kill.rows < burst, "the kill came after the burst: it tested nothing"
