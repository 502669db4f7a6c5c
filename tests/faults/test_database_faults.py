"""A database fault: PostgreSQL stopped for 60 seconds in the middle of a burst."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.faults.conftest import Deployment, wait_until

pytestmark = [pytest.mark.faults, pytest.mark.slow, pytest.mark.db, pytest.mark.broker]

BURST = 10_000
PATIENTS = 10
OUTAGE_S = 60.0  # the specification's figure
READY_WITHIN_S = 5.0  # /readyz must answer 503 this soon after the database stops
READY_AGAIN_WITHIN_S = 10.0  # and 200 this soon after it is back
DATA_ROUTE = "/api/v1/flags/counts"  # reads through the API's connection pool


def test_postgres_stopped_for_60_s_during_a_burst_acknowledges_nothing_and_loses_nothing(
    own_postgres: Any, open_deployment: Callable[[str], Deployment]
) -> None:
    """Ingest's own PostgreSQL (nothing else uses it) is stopped mid-burst and started again
    60 s later. ``/readyz`` answers 503 within 5 s of the stop; while the database is away
    not one reading leaves the gateway's outbox (ingest acknowledges only what it committed);
    once it is back every reading arrives, once."""
    deployment = open_deployment(own_postgres.url)
    patients = deployment.enroll(PATIENTS)
    deployment.prefill(BURST, patients)
    deployment.start_ingest()
    started = time.monotonic()
    deployment.start_gateway(PATIENTS, GATEWAY_RESEND_AFTER_S="5")
    wait_until(lambda: deployment.rows() >= 1_000, 60, "the burst under way", interval_s=0.05)

    stopping = time.monotonic()
    own_postgres.stop()
    stopped = time.monotonic()
    unready_s = wait_until(
        lambda: deployment.readyz("ingest", timeout_s=READY_WITHIN_S) == 503,
        READY_WITHIN_S + 5,
        "/readyz to answer 503",
        interval_s=0.05,
    ) + (stopped - stopping)
    # Whatever was committed before the stop has had its ack by now (they follow the commit
    # within milliseconds); from here on, nothing may leave the outbox.
    time.sleep(1.0)
    pending_at_stop = deployment.pending()
    readyz_during: set[int | None] = set()
    api_during: set[int | None] = set()  # a workspace keeps asking meanwhile
    while time.monotonic() < stopping + OUTAGE_S:
        readyz_during.add(deployment.readyz("ingest"))
        api_during.add(deployment.api_status("ingest", DATA_ROUTE))
        time.sleep(min(1.0, max(stopping + OUTAGE_S - time.monotonic(), 0)))
    pending_at_restart = deployment.pending()

    own_postgres.start()
    restarted = time.monotonic()
    # Watch both recoveries from the restart on: the data (every reading stored) and /readyz.
    stored_s: float | None = None
    ready_again_s: float | None = None
    api_again_s: float | None = None  # a route that reads through the API's connection pool
    while stored_s is None or ready_again_s is None or api_again_s is None:
        elapsed = time.monotonic() - restarted
        assert elapsed < 150, (
            f"150 s after the restart: stored after {stored_s} s, ready after {ready_again_s} s"
            f"\n{deployment.delivery()}\n{deployment.tails()}"
        )
        if stored_s is None and deployment.drained():
            stored_s = elapsed
        if ready_again_s is None and deployment.readyz("ingest") == 200:
            ready_again_s = elapsed
        if api_again_s is None and deployment.api_status("ingest", DATA_ROUTE) == 200:
            api_again_s = elapsed
        time.sleep(0.1)
    time.sleep(2.0)  # let any late redelivery arrive: it must not add a row
    counts = deployment.assert_delivered(BURST)
    metrics = deployment.metrics("ingest")
    during = sorted(readyz_during, key=str)
    print(
        f"\nPostgreSQL stopped {stopping - started:.1f} s into a {BURST}-reading burst (stop took"
        f" {stopped - stopping:.2f} s); /readyz 503 {unready_s:.2f} s after the stop began;"
        f" outbox unacknowledged {pending_at_stop} after the stop and {pending_at_restart}"
        f" after {restarted - stopping:.1f} s down (/readyz meanwhile: {during});"
        f" all stored {stored_s:.1f} s after the restart; {counts}; database errors"
        f" {metrics['database_errors']:.0f}, duplicates suppressed"
        f" {metrics['duplicates_suppressed']:.0f}; /readyz 200 again {ready_again_s:.1f} s"
        f" and the API's data routes {api_again_s:.1f} s after the restart"
    )
    assert unready_s <= READY_WITHIN_S
    assert readyz_during == {503}
    assert 200 not in api_during
    assert restarted - stopping >= OUTAGE_S
    assert pending_at_stop > 0, "the stop came after the burst: it tested nothing"
    assert pending_at_restart == pending_at_stop, "acknowledged while the database was away"
    assert metrics["database_errors"] > 0
    # Ready again about as soon as the database is: the writer is storing again within its
    # retry pause (at most 5 s); an orchestrator must not keep a working ingest out of
    # service, nor its API routes fail, for long after the database came back.
    assert ready_again_s <= READY_AGAIN_WITHIN_S, (
        f"/readyz still answered 503 {ready_again_s:.1f} s after PostgreSQL was back, though"
        f" the writer had stored every reading {stored_s:.1f} s after it"
    )
    assert api_again_s <= READY_AGAIN_WITHIN_S, (
        f"the API's data routes failed until {api_again_s:.1f} s after PostgreSQL was back:"
        " its connection pool (psycopg_pool) was still backing off before reconnecting"
    )


def test_after_a_quick_database_restart_the_first_api_request_succeeds(
    own_postgres: Any, open_deployment: Callable[[str], Deployment]
) -> None:
    """PostgreSQL restarted while nobody used the API: its pooled connections are dead, and
    the first request afterwards must still be answered (the pool checks what it hands out)
    rather than fail with the stale connection."""
    deployment = open_deployment(own_postgres.url)
    deployment.enroll(2)
    deployment.start_ingest()
    assert deployment.api_status("ingest", DATA_ROUTE) == 200  # the pool holds a connection
    own_postgres.stop()
    own_postgres.start()
    assert deployment.api_status("ingest", DATA_ROUTE) == 200
