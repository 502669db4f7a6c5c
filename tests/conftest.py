"""Shared fixtures: real services, found through the environment or started embedded.

- ``DATABASE_URL`` names a PostgreSQL server to use (a fresh database is created in it for
  the test session and dropped afterwards); without it an embedded PostgreSQL is started.
- ``MQTT_URL`` names a broker to use; without it a broker is started (Mosquitto when on PATH,
  else amqtt), with ``MQTT_PROTOCOL`` following what that broker speaks.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def _with_database(url: str, dbname: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{dbname}"))


@pytest.fixture(scope="session")
def postgres_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A URL to a PostgreSQL server (any database in it) for creating test databases."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    from devstack.postgres import EmbeddedPostgres

    server = EmbeddedPostgres(data_dir=tmp_path_factory.mktemp("pgdata"))
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
            "TRUNCATE readings, quarantine, flag_events, flag_readings, flags, rules_watermark,"
            " devices, gateway_patients, gateways, patients"
        )
        conn.commit()
        yield conn


@dataclass(frozen=True)
class BrokerInfo:
    url: str
    protocol: str  # "5" or "3.1.1"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerInfo]:
    """A real MQTT broker: ``MQTT_URL`` when set, else an embedded one for the session."""
    url = os.environ.get("MQTT_URL")
    if url:
        yield BrokerInfo(url, os.environ.get("MQTT_PROTOCOL", "5"))
        return
    from devstack.broker import EmbeddedBroker

    embedded = EmbeddedBroker(tmp_path_factory.mktemp("broker"))
    embedded.start()
    try:
        yield BrokerInfo(embedded.url, embedded.protocol)
    finally:
        embedded.stop()


@pytest.fixture
def unique_id() -> str:
    """A short id that keeps tests apart on a shared broker and database."""
    return uuid.uuid4().hex[:8]
