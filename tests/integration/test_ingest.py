"""Ingest on a real broker and a real PostgreSQL: store, ack, deduplicate, quarantine."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
from collections.abc import Callable

import paho.mqtt.client as mqtt
import psycopg
import pytest

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint
from carewatch_contract.messages import (
    GatewayState,
    GatewayStatus,
    ReadingBatch,
    encode_reading_batch,
    encode_status,
    parse_ack,
    reading_to_dict,
)
from ingest.consumer import ReadingConsumer
from ingest.counters import IngestCounters
from ingest.settings import IngestSettings
from tests.conftest import BrokerInfo
from tests.unit.test_contract import NOW, a_reading

pytestmark = [pytest.mark.db, pytest.mark.broker]


def wait_until(predicate: Callable[[], bool], timeout_s: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class Gateway:
    """A minimal MQTT peer playing a gateway: publishes raw payloads, collects acks."""

    def __init__(self, broker: BrokerInfo, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.acks: list[dict[str, object]] = []
        endpoint = BrokerEndpoint.from_url(broker.url)
        version = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{gateway_id}", protocol=version
        )
        connected = threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        assert connected.wait(10), "could not connect to the test broker"
        self.client.subscribe(topics.gateway_topic(gateway_id, topics.ACKS), qos=1)

    def publish(self, payload: bytes, gateway_id: str | None = None) -> None:
        topic = topics.gateway_topic(gateway_id or self.gateway_id, topics.READINGS)
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def quarantined(db: psycopg.Connection, columns: str, unique_id: str) -> list[tuple[object, ...]]:
    """This test's quarantine entries (a shared broker may carry other runs' messages)."""
    db.rollback()
    return db.execute(
        f"SELECT {columns} FROM quarantine WHERE gateway_id LIKE %s ORDER BY quarantine_id",
        (f"%{unique_id}",),
    ).fetchall()


def count(db: psycopg.Connection, sql: str, *params: object) -> int:
    db.rollback()
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def test_readings_are_stored_once_and_acked_after_commit(
    db: psycopg.Connection,
    database_url: str,
    home: tuple[str, str],
    consumer: tuple[ReadingConsumer, IngestCounters],
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    readings = tuple(a_reading(patient_id=patient_id, seq=i) for i in range(1, 11))
    payload = encode_reading_batch(ReadingBatch(gateway_id, NOW, readings))
    _, counters = consumer
    gateway = Gateway(broker, gateway_id)
    try:
        gateway.publish(payload)
        gateway.publish(payload)  # a retry: must change nothing
        assert wait_until(lambda: counters.messages_received >= 2 and bool(gateway.acks))
        time.sleep(0.2)  # the second ack, when the two messages fell into different batches
    finally:
        gateway.close()
    assert quarantined(db, "reason, detail", unique_id) == []
    assert count(db, "SELECT count(*) FROM readings WHERE patient_id = %s", patient_id) == 10
    acked = {i for ack in gateway.acks for i in ack["committed"]}  # type: ignore[union-attr]
    assert acked == {r.reading_id for r in readings}
    assert counters.readings_committed == 10
    assert counters.duplicates_suppressed == 10
    metrics = dict(
        line.rsplit(" ", 1) for line in counters.render().splitlines() if not line.startswith("#")
    )
    assert metrics["carewatch_ingest_batch_messages_count"] == str(counters.batches_committed)
    assert int(metrics['carewatch_ingest_batch_messages_bucket{le="+Inf"}']) >= 1
    # One latency per message (a shared broker also brings other gateways' retained status).
    assert metrics["carewatch_ingest_commit_latency_seconds_count"] == str(
        counters.messages_received
    )
    assert float(metrics["carewatch_ingest_commit_latency_seconds_sum"]) > 0
    assert metrics["carewatch_ingest_pending_messages"] == "0"  # nothing left behind
    # The writer folds new readings into the rollups the dashboard reads.
    assert wait_until(
        lambda: (
            count(
                db,
                "SELECT coalesce(sum(n), 0) FROM readings_hourly WHERE patient_id = %s",
                patient_id,
            )
            == 10
        )
    )


def test_bad_readings_are_quarantined_and_acked_as_rejected(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: tuple[ReadingConsumer, IngestCounters],
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    good = a_reading(patient_id=patient_id)
    impossible = reading_to_dict(a_reading(patient_id=patient_id))
    impossible["value"] = 900
    stranger = reading_to_dict(a_reading(patient_id="pt-not-mine"))
    body = {
        "v": 1,
        "gateway_id": gateway_id,
        "sent_at": NOW.isoformat(),
        "readings": [reading_to_dict(good), impossible, stranger],
    }
    gateway = Gateway(broker, gateway_id)
    try:
        gateway.publish(json.dumps(body).encode())
        assert wait_until(lambda: bool(gateway.acks))
    finally:
        gateway.close()
    ack = parse_ack(json.dumps(gateway.acks[0]).encode())
    assert ack.committed == (good.reading_id,)
    assert [(r.reading_id, r.reason) for r in ack.rejected] == [
        (impossible["reading_id"], "implausible_value")
    ]  # the stranger's reading gets no ack: an enrolment problem, kept at the gateway
    reasons = quarantined(db, "reason", unique_id)
    assert [r[0] for r in reasons] == ["implausible_value", "patient_not_bound"]
    assert count(db, "SELECT count(*) FROM readings WHERE patient_id = %s", patient_id) == 1


def test_messages_from_unknown_or_spoofing_gateways_are_quarantined(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: tuple[ReadingConsumer, IngestCounters],
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    reading = a_reading(patient_id=patient_id)
    gateway = Gateway(broker, gateway_id)
    try:
        unknown = f"gw-unknown-{unique_id}"
        gateway.publish(encode_reading_batch(ReadingBatch(unknown, NOW, (reading,))), unknown)
        other = f"gw-other-{unique_id}"
        gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (reading,))), other)
        assert wait_until(lambda: len(quarantined(db, "reason", unique_id)) == 2)
    finally:
        gateway.close()
    reasons = {r[0] for r in quarantined(db, "reason", unique_id)}
    assert reasons == {"unknown_gateway", "gateway_mismatch"}
    assert count(db, "SELECT count(*) FROM readings") == 0


@pytest.mark.skipif(shutil.which("mosquitto_pub") is None, reason="mosquitto_pub not installed")
def test_malformed_message_from_mosquitto_pub_lands_in_quarantine_and_ingest_keeps_running(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: tuple[ReadingConsumer, IngestCounters],
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    endpoint = BrokerEndpoint.from_url(broker.url)
    topic = topics.gateway_topic(gateway_id, topics.READINGS)
    for payload in (b'{"v": 1, "readings": [', b'{"v": 99}', b"x" * 300_000):
        subprocess.run(
            [
                "mosquitto_pub",
                "-h",
                endpoint.host,
                "-p",
                str(endpoint.port),
                "-q",
                "1",
                "-t",
                topic,
                "-s",
            ],  # -s: the message is read from standard input
            input=payload,
            check=True,
            timeout=10,
        )
    assert wait_until(lambda: len(quarantined(db, "reason", unique_id)) == 3)
    rows = quarantined(db, "reason, detail, payload_size, truncated, length(payload)", unique_id)
    assert [r[0] for r in rows] == ["bad_json", "unknown_version", "too_large"]
    assert all(r[1] for r in rows)  # every entry says what was wrong
    assert rows[2][2] == 300_000 and rows[2][3] is True and rows[2][4] < 300_000
    # ...and ingest still takes good readings.
    gateway = Gateway(broker, gateway_id)
    try:
        reading = a_reading(patient_id=patient_id)
        gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (reading,))))
        assert wait_until(lambda: bool(gateway.acks))
    finally:
        gateway.close()
    assert count(db, "SELECT count(*) FROM readings") == 1


def test_a_message_the_database_refuses_is_quarantined_and_the_rest_stored(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: tuple[ReadingConsumer, IngestCounters],
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    # A real refusal by the real database: a trigger rejects one reading's value.
    db.execute(
        "CREATE FUNCTION refuse_77() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.value = 77 THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22000'; END IF;"
        " RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_77 BEFORE INSERT ON readings"
        " FOR EACH ROW EXECUTE FUNCTION refuse_77()"
    )
    db.commit()
    _, counters = consumer
    gateway = Gateway(broker, gateway_id)
    try:
        good = [a_reading(patient_id=patient_id, value=v) for v in (120.0, 130.0)]
        poison = a_reading(patient_id=patient_id, value=77.0)
        gateway.client.publish(  # several messages in one batch, one of them refused
            topics.gateway_topic(gateway_id, topics.READINGS),
            encode_reading_batch(ReadingBatch(gateway_id, NOW, (good[0],))),
            qos=1,
        )
        gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (poison,))))
        gateway.publish(encode_reading_batch(ReadingBatch(gateway_id, NOW, (good[1],))))
        assert wait_until(
            lambda: (
                count(db, "SELECT count(*) FROM readings") == 2
                and len(quarantined(db, "reason", unique_id)) == 1
                and any(ack["rejected"] for ack in gateway.acks)
            )
        )
    finally:
        gateway.close()
        db.rollback()
        db.execute("DROP TRIGGER refuse_77 ON readings")
        db.execute("DROP FUNCTION refuse_77()")
        db.commit()
    rows = quarantined(db, "reason, detail, reading_id::text", unique_id)
    assert [(r[0], r[2]) for r in rows] == [("refused_by_database", poison.reading_id)]
    assert "SQLSTATE 22000" in rows[0][1]
    rejected = {r["reading_id"] for ack in gateway.acks for r in ack["rejected"]}  # type: ignore[union-attr]
    assert rejected == {poison.reading_id}  # it leaves the gateway's outbox, kept aside there
    assert consumer[0].writer_alive
    assert counters.database_errors >= 2  # the batch, then the one message


def test_a_status_is_applied_once_and_a_retained_replay_moves_no_time(
    db: psycopg.Connection,
    home: tuple[str, str],
    database_url: str,
    broker: BrokerInfo,
    unique_id: str,
) -> None:
    """The last will (no time of its own) dates the change to offline; the retained copy an
    ingest restart receives again changes neither that time nor "last seen"; a malformed
    status is quarantined."""
    gateway_id, _patient = home
    topic = topics.gateway_topic(gateway_id, topics.STATUS)
    gateway = Gateway(broker, gateway_id)

    def state() -> tuple[object, ...]:
        db.rollback()
        row = db.execute(
            "SELECT state, state_at, last_seen_at FROM gateways WHERE gateway_id = %s",
            (gateway_id,),
        ).fetchone()
        assert row is not None
        return tuple(row)

    def run_consumer(name: str) -> ReadingConsumer:
        settings = IngestSettings(
            CAREWATCH_ENV="test",
            CAREWATCH_API_TOKEN="test-token",
            DATABASE_URL=database_url,
            MQTT_URL=broker.url,
            MQTT_PROTOCOL=broker.protocol,
            INGEST_CLIENT_ID=f"ingest-{name}-{unique_id}",
        )
        worker = ReadingConsumer(settings, IngestCounters())
        worker.start()
        assert wait_until(lambda: worker.connected)
        return worker

    try:
        worker = run_consumer("first")
        will = encode_status(GatewayStatus(gateway_id, GatewayState.OFFLINE))
        gateway.client.publish(topic, will, qos=1, retain=True).wait_for_publish(10)
        assert wait_until(lambda: state()[0] == "offline")
        _, offline_at, last_seen = state()
        worker.stop()
        time.sleep(1.1)  # so that a wrongly re-stamped time would differ

        restarted = run_consumer("second")  # receives the retained will again
        # Clearing a retained status (an empty payload) is not a malformed status.
        gateway.client.publish(topic, b"", qos=1).wait_for_publish(10)
        gateway.client.publish(topics.gateway_topic(gateway_id, topics.STATUS), b"{nope", qos=1)
        assert wait_until(lambda: bool(quarantined(db, "reason", unique_id)))
        restarted.stop()
        assert state() == ("offline", offline_at, last_seen)
        assert quarantined(db, "reason", unique_id) == [("bad_json",)]
    finally:
        gateway.client.publish(topic, b"", qos=1, retain=True).wait_for_publish(10)  # clear
        gateway.close()
