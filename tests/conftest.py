"""Shared fixtures: real services, found through the environment or started embedded.

- ``DATABASE_URL`` names a PostgreSQL server to use (a fresh database is created in it for
  the test session and dropped afterwards); without it an embedded PostgreSQL is started.
- ``MQTT_URL`` names a broker to use; without it a broker is started (Mosquitto when on PATH,
  else amqtt), with ``MQTT_PROTOCOL`` following what that broker speaks.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest
import uvicorn

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def pytest_configure(config: pytest.Config) -> None:
    """SIGTERM (a CI timeout, ``timeout make test``) stops the run like Ctrl-C, so that the
    fixtures' teardown stops the embedded servers and processes they started."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def service_dir() -> Iterator[Path]:
    """A folder for embedded servers' data. Not under pytest's tmp_path: as root, every new
    pytest session resets that tree to 0700, cutting off servers that run as their own user."""
    folder = Path(tempfile.mkdtemp(prefix="carewatch-test-services-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server_url(service_dir: Path) -> Iterator[str]:
    """A URL to a PostgreSQL server (any database in it) for creating test databases."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from devstack.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(data_dir=service_dir / "pgdata")
    server.start()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def database_url(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database for this test session; dropped at the end."""
    from ingest.db import migrate

    name = f"carewatch_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = _with_database(postgres_server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection to the session's database, emptied of clinical rows before the test."""
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "TRUNCATE readings, reading_ids, quarantine, flag_events, flag_readings,"
            " flag_escalations, flag_snoozes, flags, threshold_versions,"
            " rules_watermark, devices, gateway_patients, gateways, patients, follow_up_requests,"
            " inbox_receipts, team_patients, team_members, care_teams, api_sessions,"
            " login_attempts, users, patient_messages, calls, patient_notes"
        )
        conn.commit()
        yield conn


@dataclass(frozen=True)
class BrokerInfo:
    url: str
    protocol: str  # "5" or "3.1.1"


@pytest.fixture(scope="session")
def broker(service_dir: Path) -> Iterator[BrokerInfo]:
    """A real MQTT broker: ``MQTT_URL`` when set, else an embedded one for the session."""
    url = os.environ.get("MQTT_URL")
    if url:
        yield BrokerInfo(url, os.environ.get("MQTT_PROTOCOL", "5"))
        return
    from devstack.broker import EmbeddedBroker

    embedded = EmbeddedBroker(service_dir / "broker")
    embedded.start()
    try:
        yield BrokerInfo(embedded.url, embedded.protocol)
    finally:
        embedded.stop()


@pytest.fixture
def unique_id() -> str:
    """A short id that keeps tests apart on a shared broker and database."""
    return uuid.uuid4().hex[:8]


API_TOKEN = "test-token"


@dataclass(frozen=True)
class RunningApi:
    """Where the test API listens and the token it accepts."""

    url: str
    token: str


@pytest.fixture(scope="session")
def api_server(database_url: str) -> Iterator[RunningApi]:
    """The real ingest API (no MQTT consumer) on uvicorn in a background thread."""
    from ingest.api.app import create_app
    from ingest.settings import IngestSettings

    settings = IngestSettings(
        CAREWATCH_ENV="test",
        DATABASE_URL=database_url,
        MQTT_URL="mqtt://127.0.0.1:1",
        INGEST_CONSUME=False,
        CAREWATCH_API_TOKEN=API_TOKEN,
    )
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), log_level="warning", access_log=False, lifespan="on")
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [listener]}, name="ingest-api", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_ready(url, thread, timeout_s=30.0)
        yield RunningApi(url=url, token=API_TOKEN)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        listener.close()


def _wait_until_ready(url: str, thread: threading.Thread, *, timeout_s: float) -> None:
    """Until ``/readyz`` answers 200 (the broker counts as ready when consuming is off)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not thread.is_alive():
            pytest.fail("the ingest API stopped during start-up; see the log above")
        try:
            if httpx.get(f"{url}/readyz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    pytest.fail(f"the ingest API at {url} was not ready within {timeout_s:g} s")
