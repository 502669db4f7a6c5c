"""Fixtures of the ingest integration tests: an enrolled home and a running consumer."""

from __future__ import annotations

import time
from collections.abc import Iterator

import psycopg
import pytest

from ingest.consumer import ReadingConsumer
from ingest.counters import IngestCounters
from ingest.registry import PatientRecord, enroll
from ingest.settings import IngestSettings
from tests.conftest import BrokerInfo
from tests.integration.test_ingest import wait_until


@pytest.fixture
def home(db: psycopg.Connection, unique_id: str) -> tuple[str, str]:
    gateway_id, patient_id = f"gw-{unique_id}", f"pt-{unique_id}"
    enroll(db, gateway_id=gateway_id, patients=[PatientRecord(patient_id, "Test Patient")])
    db.commit()
    return gateway_id, patient_id


@pytest.fixture
def consumer(
    database_url: str, broker: BrokerInfo, unique_id: str
) -> Iterator[tuple[ReadingConsumer, IngestCounters]]:
    settings = IngestSettings(
        CAREWATCH_ENV="test",
        CAREWATCH_API_TOKEN="test-token",
        DATABASE_URL=database_url,
        MQTT_URL=broker.url,
        MQTT_PROTOCOL=broker.protocol,
        INGEST_CLIENT_ID=f"ingest-test-{unique_id}",
        INGEST_ROLLUP_INTERVAL_S=0.2,
    )
    counters = IngestCounters()
    worker = ReadingConsumer(settings, counters)
    worker.start()
    assert wait_until(lambda: worker.connected), "ingest did not connect to the broker"
    time.sleep(0.2)  # let the subscription settle
    yield worker, counters
    worker.stop()
