"""What PGlite's server can and cannot do, with the pinned versions (see devstack/pglite.py).

Each limit is shown on pglite-socket as published (``raw_socket=True``) and, where our
server.mjs works around it, with the workaround.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from devstack.pglite import PgliteTimescale
from tests.timescale.conftest import start_pglite

pytestmark = pytest.mark.timescale

#: Node hands a socket's bytes over in reads of at most 64 KiB.
READ_SIZE = 64 * 1024


@pytest.fixture
def raw_server() -> Iterator[PgliteTimescale]:
    """A PGlite server of its own, with pglite-socket's handler as published."""
    server = start_pglite(raw_socket=True)
    try:
        yield server
    finally:
        server.stop()


def _wait_gone(server: PgliteTimescale, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while server.running() and time.monotonic() < deadline:
        time.sleep(0.05)


def _length_query(size: int) -> str:
    """A simple-protocol statement of ``size`` bytes or a little more."""
    return "SELECT length('" + "x" * size + "')"


def test_it_is_timescaledb_2_23_on_postgresql_17(ts: psycopg.Connection) -> None:
    version = ts.execute("SHOW server_version_num").fetchone()
    assert version is not None and 170000 <= int(version[0]) < 180000
    ext = ts.execute("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    assert ext is not None and ext[0].startswith("2.23")


def test_one_connection_at_a_time_the_next_waits(timescale_url: str) -> None:
    connected_at: list[float] = []

    def second() -> None:
        with psycopg.connect(timescale_url, connect_timeout=30) as conn:
            connected_at.append(time.monotonic())
            conn.execute("SELECT 1")

    with psycopg.connect(timescale_url, autocommit=True) as first:
        first.execute("SELECT 1")
        waiting = threading.Thread(target=second, name="second-connection")
        waiting.start()
        time.sleep(1.5)
        assert connected_at == []  # queued by pglite-socket, not refused
        closed_at = time.monotonic()
    waiting.join(timeout=30)
    assert len(connected_at) == 1 and connected_at[0] >= closed_at


def _startup_message(user: str = "postgres") -> bytes:
    body = struct.pack("!i", 196608) + f"user\0{user}\0\0".encode()
    return struct.pack("!i", len(body) + 4) + body


def _reset_while_queued(port: int, first: psycopg.Connection) -> None:
    """A client queued behind ``first`` that drops its connection with a reset."""
    first.execute("SELECT 1")
    client = socket.create_connection(("127.0.0.1", port))
    client.sendall(_startup_message())
    time.sleep(0.3)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.close()
    time.sleep(0.3)


def test_a_reset_from_a_queued_client_kills_the_published_server(
    raw_server: PgliteTimescale,
) -> None:
    with psycopg.connect(raw_server.url, autocommit=True) as first:
        _reset_while_queued(raw_server.port, first)
    _wait_gone(raw_server)
    assert not raw_server.running()


def test_clients_that_leave_while_queued_do_not_stop_the_server(
    pglite: PgliteTimescale, timescale_url: str
) -> None:
    """The published server ended on a reset from a queued client, and kept the next client
    waiting when one left just before its turn (our server.mjs handles both)."""
    with psycopg.connect(timescale_url, autocommit=True) as first:
        left = socket.create_connection(("127.0.0.1", pglite.port))
        left.sendall(_startup_message())
        _reset_while_queued(pglite.port, first)
        left.close()  # gone before its turn: the server's answer will meet a reset
        time.sleep(0.3)
    with psycopg.connect(timescale_url, connect_timeout=10) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
    assert pglite.running()


def test_a_message_of_64_kib_kills_the_published_server(raw_server: PgliteTimescale) -> None:
    with psycopg.connect(raw_server.url, autocommit=True) as conn:
        small = READ_SIZE - 1000
        assert conn.execute(_length_query(small)).fetchone() == (small,)
        with pytest.raises(psycopg.OperationalError):
            conn.execute(_length_query(READ_SIZE + 1000))
    _wait_gone(raw_server)
    assert not raw_server.running()


def test_our_server_reassembles_large_messages(ts: psycopg.Connection) -> None:
    big = 3 * READ_SIZE
    assert ts.execute(_length_query(big)).fetchone() == (big,)  # simple protocol
    assert ts.execute("SELECT length(%s)", ("y" * big,)).fetchone() == (big,)  # a bound value


def test_the_published_server_leaks_a_session_into_the_next_and_copy_kills_it(
    raw_server: PgliteTimescale,
) -> None:
    with psycopg.connect(raw_server.url, autocommit=True) as conn:
        conn.execute("PREPARE leftover AS SELECT 1")
        conn.execute("CREATE TEMP TABLE leftover_rows (n int)")
    with psycopg.connect(raw_server.url, autocommit=True) as conn:
        prepared = conn.execute("SELECT name FROM pg_prepared_statements").fetchall()
        assert ("leftover",) in prepared
        assert conn.execute("SELECT to_regclass('pg_temp.leftover_rows')").fetchone() != (None,)
        # COPY FROM STDIN aborts PGlite: insert with INSERT statements.
        with (
            pytest.raises(psycopg.OperationalError),
            conn.cursor() as cur,
            cur.copy("COPY leftover_rows (n) FROM STDIN") as copy,
        ):
            copy.write_row((1,))
    _wait_gone(raw_server)
    assert not raw_server.running()


def test_our_server_gives_each_connection_a_fresh_session(timescale_url: str) -> None:
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        conn.execute("PREPARE leftover AS SELECT 1")
        conn.execute("CREATE TEMP TABLE leftover_rows (n int)")
        conn.execute("SET work_mem = '8MB'")
        conn.execute("SELECT pg_advisory_lock(42)")
    with psycopg.connect(timescale_url) as conn:
        conn.execute("SELECT 1")  # left inside an open transaction
    with psycopg.connect(timescale_url, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)
        assert conn.execute("SELECT to_regclass('pg_temp.leftover_rows')").fetchone() == (None,)
        assert conn.execute("SHOW work_mem").fetchone() == ("4MB",)
        locks = conn.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert locks.fetchone() == (0,)
        # PGlite's own session setting survives the reset (its reset value is pg_catalog).
        assert conn.execute("SHOW search_path").fetchone() == ("public",)
        # psycopg prepares a statement run five times as _pg3_0 in every connection.
        for _ in range(6):
            conn.execute("SELECT %s::int", (1,))


def test_background_jobs_never_run_but_run_job_does(ts: psycopg.Connection) -> None:
    ts.execute("CREATE TABLE job_probe_runs (at timestamptz NOT NULL)")
    ts.execute(
        "CREATE PROCEDURE job_probe(job_id integer, config jsonb) LANGUAGE sql AS"
        " $$ INSERT INTO job_probe_runs VALUES (now()) $$"
    )
    try:
        row = ts.execute(
            "SELECT add_job('job_probe', interval '1 second', initial_start => now())"
        ).fetchone()
        assert row is not None
        job_id = row[0]
        time.sleep(2)  # a scheduler would have run it once or twice by now
        assert ts.execute("SELECT count(*) FROM job_probe_runs").fetchone() == (0,)
        ts.execute(f"CALL run_job({int(job_id)})")
        assert ts.execute("SELECT count(*) FROM job_probe_runs").fetchone() == (1,)
        ts.execute("SELECT delete_job(%s)", (job_id,))
    finally:
        ts.execute("DROP PROCEDURE IF EXISTS job_probe")
        ts.execute("DROP TABLE IF EXISTS job_probe_runs")
