"""Broker faults: Mosquitto killed with ``kill -9`` mid-burst, and ingest down while a burst is
published (more messages than Mosquitto's default queue of 1,000 per client)."""

from __future__ import annotations

import signal
import time

import pytest

from tests.faults.conftest import Deployment, conf_value, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.db, pytest.mark.broker]

BURST = 10_000
PATIENTS = 10


def test_mosquitto_killed_during_a_burst_and_restarted_loses_and_doubles_nothing(
    deployment: Deployment,
) -> None:
    """``kill -9`` writes nothing to the broker's persistence file: every message it held in
    memory (queued for ingest, in flight) is gone with it. The gateway keeps each reading until
    ingest acknowledges its commit, so it sends them again once the broker is back."""
    patients = deployment.enroll(PATIENTS)
    deployment.prefill(BURST, patients)
    deployment.start_ingest()
    started = time.monotonic()
    deployment.start_gateway(PATIENTS, GATEWAY_RESEND_AFTER_S="5")

    wait_until(lambda: deployment.rows() >= 1_000, 60, "the burst under way", interval_s=0.05)
    deployment.broker.kill()
    killed = time.monotonic()
    at_kill = deployment.delivery()
    time.sleep(2.0)  # down long enough for every client to see it gone
    restart_s = deployment.broker.start()
    drain_s = deployment.wait_drained(120)
    time.sleep(2.0)  # let any late redelivery arrive: it must not add a row
    counts = deployment.assert_delivered(BURST)
    metrics = deployment.metrics("ingest")
    # Nothing was saved (autosave_interval is longer than the test): the broker came back empty.
    session = deployment.tail("ingest", 100_000).split("MQTT connected")[-1].split("\n")[0]
    print(
        f"\nmosquitto kill -9 at {killed - started:.1f} s into a {BURST}-reading burst, with"
        f" {at_kill.rows} stored and {at_kill.pending} unacknowledged in the gateway's outbox;"
        f" restarted in {restart_s:.2f} s after 2 s down; all stored {drain_s:.1f} s after the"
        f" restart ({time.monotonic() - started:.1f} s in all); {counts};"
        f" duplicates suppressed: {metrics['duplicates_suppressed']:.0f}; ingest reconnected"
        f"{session}"
    )
    assert at_kill.rows < BURST, "the kill came after the burst: it tested nothing"
    assert at_kill.pending > 0


def test_ingest_down_while_a_burst_is_published_gets_it_all_from_the_broker_queue(
    deployment: Deployment,
) -> None:
    """Ingest subscribes once (persistent session), stops, and the gateway publishes 10,000
    readings, five per message: 2,000 messages queued for ingest's session, twice Mosquitto's
    default ``max_queued_messages`` of 1,000. The gateway does not resend during the test
    (``GATEWAY_RESEND_AFTER_S`` of an hour), so every reading must come out of the queue the
    broker kept for ingest: that is the deployment's mosquitto.conf under test.

    (Five, not one per message: the gateway takes each message's readings from its outbox
    with a query that walks past the readings already sent, about 15 ms a message once
    thousands are in flight; 10,000 single-reading messages would take minutes to publish.)
    """
    from tests.faults.monitor import TopicCounter

    per_message = 5
    messages = BURST // per_message

    queued_limit = int(conf_value("max_queued_messages"))
    assert queued_limit == 0 or queued_limit >= 50_000, "the deployed queue would drop readings"
    patients = deployment.enroll(PATIENTS)
    deployment.prefill(BURST, patients)
    deployment.start_ingest()  # subscribes, with a session that outlives the connection
    deployment.kill("ingest", signal.SIGTERM)  # a clean stop (uvicorn re-raises the signal)
    assert "Application shutdown complete" in deployment.tail("ingest")

    started = time.monotonic()
    with TopicCounter(
        deployment.broker.url, f"carewatch/v1/gateways/{deployment.gateway_id}/readings"
    ) as seen:
        deployment.start_gateway(
            PATIENTS,
            GATEWAY_BATCH_SIZE=str(per_message),
            GATEWAY_MAX_IN_FLIGHT=str(2 * BURST),
            GATEWAY_RESEND_AFTER_S="3600",
        )
        published_s = wait_until(
            lambda: seen.count >= messages,
            120,
            f"{messages} messages at the broker",
            diagnose=lambda: f"{seen.count} seen\n{deployment.tails()}",
        )
    assert deployment.rows() == 0
    assert deployment.pending() == BURST

    deployment.start_ingest()
    drain_s = deployment.wait_drained(120)
    counts = deployment.assert_delivered(BURST)
    metrics = deployment.metrics("ingest")
    total_s = time.monotonic() - started
    print(
        f"\ningest down while the gateway published {seen.count} messages of {per_message}"
        f" readings in {published_s:.1f} s (broker max_queued_messages {queued_limit});"
        f" restarted, it stored them all in {drain_s:.1f} s ({total_s:.1f} s in all); {counts};"
        f" committed by the restarted ingest: {metrics['readings_committed']:.0f}, duplicates"
        f" suppressed: {metrics['duplicates_suppressed']:.0f}, batches:"
        f" {metrics['batches_committed']:.0f}"
    )
    # All from the broker's queue: with Mosquitto's default of 1,000 the restarted ingest gets
    # 1,001 messages (5,005 readings) and the rest waits for the gateway's resend.
    assert metrics["readings_committed"] == BURST
