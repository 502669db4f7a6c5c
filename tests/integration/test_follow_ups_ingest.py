"""Follow-up requests and inbox receipts through ingest: a real broker, a real PostgreSQL.

A test plays the gateway: it publishes on ``requests`` / ``receipts`` and collects what ingest
acks on ``acks``. Every test uses its own gateway and patient ids, as the broker may be shared
with other runs. The first tests (no marker) check :func:`ingest.consumer.plan_batch` alone.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint
from carewatch_contract.messages import (
    FollowUpKind,
    FollowUpRequest,
    InboxReceipt,
    ReceiptState,
    encode_follow_up_request,
    encode_receipt,
)
from ingest.consumer import Delivery, ReadingConsumer, plan_batch
from ingest.counters import IngestCounters
from ingest.follow_ups import RECEIPT_NAMESPACE, receipt_key
from ingest.registry import PatientRecord, enroll
from ingest.settings import IngestSettings
from tests.conftest import BrokerInfo
from tests.integration.test_ingest import wait_until

AT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def a_request(gateway_id: str, patient_id: str, **changes: Any) -> FollowUpRequest:
    fields: dict[str, Any] = {
        "request_id": str(uuid.uuid4()),
        "gateway_id": gateway_id,
        "patient_id": patient_id,
        "kind": FollowUpKind.CALL_BACK,
        "at": AT,
        "note": "Feeling dizzy since this morning, please call",
        "in_reply_to": "msg-2026-0001",
    } | changes
    return FollowUpRequest(**fields)


def a_receipt(receipt_id: str | None = None, **changes: Any) -> InboxReceipt:
    fields: dict[str, Any] = {
        "message_id": "msg-2026-0001",
        "state": ReceiptState.DELIVERED,
        "at": AT,
        "receipt_id": receipt_id,
    } | changes
    return InboxReceipt(**fields)


# --- plan_batch alone ------------------------------------------------------------------------


@dataclass
class FakeBindings:
    bound: dict[str, set[str]] = field(default_factory=dict)

    def gateway_known(self, gateway_id: str) -> bool:
        return gateway_id in self.bound

    def is_bound(self, gateway_id: str, patient_id: str) -> bool:
        return patient_id in self.bound.get(gateway_id, set())


def delivery(gateway_id: str, kind: str, payload: bytes) -> Delivery:
    return Delivery(topics.gateway_topic(gateway_id, kind), payload, mid=1, qos=1, connection=1)


def plan(*deliveries: Delivery, max_payload_bytes: int = 256 * 1024) -> Any:
    return plan_batch(
        list(deliveries),
        bindings=FakeBindings({"gw-1": {"pt-1"}, "gw-2": set()}),
        max_payload_bytes=max_payload_bytes,
        now=datetime.now(UTC),
    )


def test_plan_stores_and_acks_a_good_request() -> None:
    request = a_request("gw-1", "pt-1")

    planned = plan(delivery("gw-1", topics.REQUESTS, encode_follow_up_request(request)))

    assert [(s.gateway_id, s.request) for s in planned.requests] == [("gw-1", request)]
    assert planned.acks == {"gw-1": [request.request_id]}
    assert planned.rejections == {}
    assert planned.quarantined == []
    assert planned.readings == [] and planned.receipts == []


def test_plan_quarantines_bad_requests_and_tells_the_gateway_what_it_will_never_accept() -> None:
    unbound = a_request("gw-1", "pt-stranger")
    spoofed = a_request("gw-2", "pt-1")  # sent on gw-1's topic
    unknown = a_request("gw-9", "pt-1")
    bad_kind = json.loads(encode_follow_up_request(a_request("gw-1", "pt-1")))
    bad_kind["kind"] = "visit"
    no_id = json.loads(encode_follow_up_request(a_request("gw-1", "pt-1")))
    del no_id["request_id"]

    planned = plan(
        delivery("gw-1", topics.REQUESTS, encode_follow_up_request(unbound)),
        delivery("gw-1", topics.REQUESTS, encode_follow_up_request(spoofed)),
        delivery("gw-9", topics.REQUESTS, encode_follow_up_request(unknown)),
        delivery("gw-1", topics.REQUESTS, json.dumps(bad_kind).encode()),
        delivery("gw-1", topics.REQUESTS, json.dumps(no_id).encode()),
        delivery("gw-1", topics.REQUESTS, b"not json"),
        delivery("gw-1", topics.REQUESTS, b"x" * 2000),
        max_payload_bytes=1000,
    )

    assert planned.requests == []
    assert [(q.reason, q.reading_id) for q in planned.quarantined] == [
        ("patient_not_bound", unbound.request_id),
        ("gateway_mismatch", spoofed.request_id),
        ("unknown_gateway", unknown.request_id),
        ("bad_field", bad_kind["request_id"]),
        ("missing_field", None),
        ("bad_json", None),
        ("too_large", None),
    ]
    # Rejected in the ack: what the gateway sent about a patient not bound to it, and what it
    # can never get accepted; a spoofed or unknown sender hears nothing.
    assert {
        gw: [(r.reading_id, r.reason) for r in rs] for gw, rs in planned.rejections.items()
    } == {
        "gw-1": [
            (unbound.request_id, "patient_not_bound"),
            (bad_kind["request_id"], "bad_field"),
        ]
    }
    assert not any(planned.acks.values())


def test_plan_keys_receipts_on_the_gateways_id_or_a_derived_one() -> None:
    with_id = a_receipt(str(uuid.uuid4()))
    without_id = a_receipt(None, state=ReceiptState.READ)
    bad_state = json.loads(encode_receipt(a_receipt(str(uuid.uuid4()))))
    bad_state["state"] = "lost"

    planned = plan(
        delivery("gw-1", topics.RECEIPTS, encode_receipt(with_id)),
        delivery("gw-1", topics.RECEIPTS, encode_receipt(without_id)),
        delivery("gw-1", topics.RECEIPTS, json.dumps(bad_state).encode()),
        delivery("gw-9", topics.RECEIPTS, encode_receipt(with_id)),
    )

    derived = str(uuid.uuid5(RECEIPT_NAMESPACE, "gw-1\x1fmsg-2026-0001\x1fread"))
    assert [(s.gateway_id, s.receipt_id) for s in planned.receipts] == [
        ("gw-1", with_id.receipt_id),
        ("gw-1", derived),
    ]
    assert planned.acks == {"gw-1": [with_id.receipt_id]}  # a derived id is nobody's to drop
    assert [(r.reading_id, r.reason) for r in planned.rejections["gw-1"]] == [
        (bad_state["receipt_id"], "bad_field")
    ]
    assert [q.reason for q in planned.quarantined] == ["bad_field", "unknown_gateway"]


def test_a_derived_receipt_id_is_the_same_for_the_same_receipt_only() -> None:
    delivered, read = a_receipt(), a_receipt(state=ReceiptState.READ)
    assert receipt_key("gw-1", delivered) == receipt_key("gw-1", a_receipt(at=AT + timedelta(1)))
    assert (
        len(
            {
                receipt_key("gw-1", delivered),
                receipt_key("gw-1", read),
                receipt_key("gw-2", delivered),
                receipt_key("gw-1", a_receipt(message_id="msg-2026-0002")),
            }
        )
        == 4
    )


# --- through the broker and the database ------------------------------------------------------


class GatewayPeer:
    """A minimal MQTT peer playing a gateway: publishes on any of its topics, collects acks."""

    def __init__(self, broker: BrokerInfo, gateway_id: str) -> None:
        self.gateway_id = gateway_id
        self.acks: list[dict[str, Any]] = []
        endpoint = BrokerEndpoint.from_url(broker.url)
        version = mqtt.MQTTv5 if broker.protocol == "5" else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-peer-{gateway_id}",
            protocol=version,
        )
        connected, subscribed = threading.Event(), threading.Event()
        self.client.on_connect = lambda *a: connected.set()
        self.client.on_subscribe = lambda *a: subscribed.set()
        self.client.on_message = lambda c, u, m: self.acks.append(json.loads(m.payload))
        self.client.connect(endpoint.host, endpoint.port)
        self.client.loop_start()
        assert connected.wait(10), "could not connect to the test broker"
        self.client.subscribe(topics.gateway_topic(gateway_id, topics.ACKS), qos=1)
        assert subscribed.wait(10), "could not subscribe to the acks"

    def publish(self, kind: str, payload: bytes, gateway_id: str | None = None) -> None:
        topic = topics.gateway_topic(gateway_id or self.gateway_id, kind)
        self.client.publish(topic, payload, qos=1).wait_for_publish(10)

    def committed(self) -> list[str]:
        return [i for ack in self.acks for i in ack["committed"]]

    def rejected(self) -> list[tuple[str, str]]:
        return [(r["reading_id"], r["reason"]) for ack in self.acks for r in ack["rejected"]]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def home(db: psycopg.Connection, unique_id: str) -> Iterator[tuple[str, str]]:
    """An enrolled gateway with one patient; the follow-up tables emptied before and after
    (the ``db`` fixture leaves them)."""
    gateway_id, patient_id = f"gw-fu-{unique_id}", f"pt-fu-{unique_id}"
    enroll(db, gateway_id=gateway_id, patients=[PatientRecord(patient_id, "Test Patient")])
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    db.commit()
    yield gateway_id, patient_id
    db.rollback()
    db.execute("TRUNCATE follow_up_requests, inbox_receipts")
    db.commit()


@pytest.fixture
def start_consumer(
    database_url: str, broker: BrokerInfo, unique_id: str
) -> Iterator[Callable[..., ReadingConsumer]]:
    """Starts an ingest consumer (settings as keyword overrides); stops it after the test."""
    started: list[ReadingConsumer] = []

    def start(**overrides: str) -> ReadingConsumer:
        settings = IngestSettings(
            CAREWATCH_ENV="test",
            CAREWATCH_API_TOKEN="test-token",
            DATABASE_URL=database_url,
            MQTT_URL=broker.url,
            MQTT_PROTOCOL=broker.protocol,
            INGEST_CLIENT_ID=f"ingest-fu-test-{unique_id}",
            **overrides,  # type: ignore[arg-type]
        )
        worker = ReadingConsumer(settings, IngestCounters())
        started.append(worker)
        worker.start()
        assert wait_until(lambda: worker.connected), "ingest did not connect to the broker"
        time.sleep(0.2)  # let the subscription settle
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def consumer(start_consumer: Callable[..., ReadingConsumer]) -> ReadingConsumer:
    return start_consumer()


@pytest.fixture
def gateway(broker: BrokerInfo, home: tuple[str, str]) -> Iterator[GatewayPeer]:
    peer = GatewayPeer(broker, home[0])
    yield peer
    peer.close()


def rows(db: psycopg.Connection, sql: str, *params: object) -> list[tuple[Any, ...]]:
    db.rollback()
    return db.execute(sql, params).fetchall()


def quarantined(db: psycopg.Connection, unique_id: str) -> list[tuple[Any, ...]]:
    """(topic kind, reason, id) of this test's quarantine entries, oldest first."""
    return [
        (topic.rsplit("/", 1)[1], reason, None if item is None else str(item))
        for topic, reason, item in rows(
            db,
            "SELECT topic, reason, reading_id FROM quarantine WHERE gateway_id LIKE %s"
            " ORDER BY quarantine_id",
            f"%{unique_id}",
        )
    ]


@pytest.mark.db
@pytest.mark.broker
def test_a_request_is_stored_once_and_acked_after_commit(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    request = a_request(gateway_id, patient_id)
    payload = encode_follow_up_request(request)

    gateway.publish(topics.REQUESTS, payload)
    gateway.publish(topics.REQUESTS, payload)  # the gateway's resend: stored once, acked again

    assert wait_until(lambda: gateway.committed().count(request.request_id) == 2)
    assert gateway.rejected() == []
    assert rows(
        db,
        "SELECT request_id::text, gateway_id, patient_id, kind, note, in_reply_to,"
        " requested_at, status, closed_by FROM follow_up_requests",
    ) == [
        (
            request.request_id,
            gateway_id,
            patient_id,
            "call_back",
            request.note,
            request.in_reply_to,
            AT,
            "open",
            None,
        )
    ]
    assert quarantined(db, unique_id) == []
    assert consumer.writer_alive


@pytest.mark.db
@pytest.mark.broker
def test_receipts_are_stored_once_with_or_without_a_receipt_id(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, _ = home
    receipt_id = str(uuid.uuid4())
    delivered = a_receipt(receipt_id)
    old_delivered = a_receipt(None, message_id="msg-2026-0002")  # an older gateway: no id
    old_read = a_receipt(None, message_id="msg-2026-0002", state=ReceiptState.READ)
    for receipt in (delivered, old_delivered, old_read):
        gateway.publish(topics.RECEIPTS, encode_receipt(receipt))
        gateway.publish(topics.RECEIPTS, encode_receipt(receipt))

    assert wait_until(
        lambda: (
            gateway.committed().count(receipt_id) == 2
            and len(rows(db, "SELECT 1 FROM inbox_receipts")) == 3
        )
    )
    time.sleep(0.3)  # anything else that would come
    assert rows(
        db,
        "SELECT receipt_id::text, gateway_id, message_id, state, at FROM inbox_receipts"
        " ORDER BY message_id, state",
    ) == [
        (receipt_id, gateway_id, "msg-2026-0001", "delivered", AT),
        (receipt_key(gateway_id, old_delivered), gateway_id, "msg-2026-0002", "delivered", AT),
        (receipt_key(gateway_id, old_read), gateway_id, "msg-2026-0002", "read", AT),
    ]
    # Only the id the gateway chose is acked: an older gateway keeps no receipt to drop.
    assert set(gateway.committed()) == {receipt_id}
    assert quarantined(db, unique_id) == []


@pytest.mark.db
@pytest.mark.broker
def test_malformed_requests_and_receipts_are_quarantined_and_ingest_keeps_storing(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    long_note = json.loads(encode_follow_up_request(a_request(gateway_id, patient_id)))
    long_note["note"] = "x" * 501
    future = json.loads(encode_follow_up_request(a_request(gateway_id, patient_id)))
    future["v"] = 2
    no_id = json.loads(encode_follow_up_request(a_request(gateway_id, patient_id)))
    del no_id["request_id"]
    bad_receipt = json.loads(encode_receipt(a_receipt(str(uuid.uuid4()))))
    bad_receipt["at"] = "yesterday"

    for kind, payload in (
        (topics.REQUESTS, b'{"v": 1, "request_id": '),
        (topics.REQUESTS, json.dumps(long_note).encode()),
        (topics.REQUESTS, json.dumps(future).encode()),
        (topics.REQUESTS, json.dumps(no_id).encode()),
        (topics.RECEIPTS, json.dumps(bad_receipt).encode()),
        (topics.REQUESTS, b"x" * 300_000),
    ):
        gateway.publish(kind, payload)
    good = a_request(gateway_id, patient_id, note=None, in_reply_to=None)
    gateway.publish(topics.REQUESTS, encode_follow_up_request(good))

    assert wait_until(lambda: good.request_id in gateway.committed())
    assert quarantined(db, unique_id) == [
        ("requests", "bad_json", None),
        ("requests", "bad_field", long_note["request_id"]),
        ("requests", "unknown_version", future["request_id"]),
        ("requests", "missing_field", None),
        ("receipts", "bad_time", bad_receipt["receipt_id"]),
        ("requests", "too_large", None),
    ]
    details = rows(
        db, "SELECT detail FROM quarantine WHERE gateway_id = %s ORDER BY quarantine_id", gateway_id
    )
    assert all(detail for (detail,) in details)  # every entry says what was wrong
    # What names an id it will never get accepted under is rejected, so the gateway drops it.
    assert sorted(gateway.rejected()) == sorted(
        [
            (long_note["request_id"], "bad_field"),
            (future["request_id"], "unknown_version"),
            (bad_receipt["receipt_id"], "bad_time"),
        ]
    )
    assert rows(db, "SELECT request_id::text, note FROM follow_up_requests") == [
        (good.request_id, None)
    ]
    assert consumer.writer_alive


@pytest.mark.db
@pytest.mark.broker
def test_a_request_for_a_patient_not_bound_to_the_gateway_is_rejected_and_quarantined(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, _ = home
    enroll(db, gateway_id=f"gw-fu-other-{unique_id}", patients=[PatientRecord("pt-x", "X")])
    db.commit()
    stranger = a_request(gateway_id, "pt-x")  # known patient, another gateway's

    gateway.publish(topics.REQUESTS, encode_follow_up_request(stranger))

    assert wait_until(lambda: bool(gateway.acks))
    assert gateway.acks == [
        {
            "v": 1,
            "gateway_id": gateway_id,
            "committed": [],
            "rejected": [{"reading_id": stranger.request_id, "reason": "patient_not_bound"}],
        }
    ]
    assert quarantined(db, unique_id) == [("requests", "patient_not_bound", stranger.request_id)]
    assert rows(db, "SELECT 1 FROM follow_up_requests") == []


@pytest.mark.db
@pytest.mark.broker
def test_requests_and_receipts_from_unknown_or_spoofing_gateways_get_no_ack(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    broker: BrokerInfo,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    _, patient_id = home
    unknown = f"gw-fu-unknown-{unique_id}"
    stranger = GatewayPeer(broker, unknown)
    try:
        spoofed = a_request(unknown, patient_id)  # on the known gateway's topic
        from_unknown = a_request(unknown, patient_id)
        receipt = a_receipt(str(uuid.uuid4()))
        gateway.publish(topics.REQUESTS, encode_follow_up_request(spoofed))
        stranger.publish(topics.REQUESTS, encode_follow_up_request(from_unknown))
        stranger.publish(topics.RECEIPTS, encode_receipt(receipt))
        assert wait_until(lambda: len(quarantined(db, unique_id)) == 3)
        time.sleep(0.3)  # an ack, were one sent, would be here by now
        assert gateway.acks == [] and stranger.acks == []
    finally:
        stranger.close()
    assert sorted(quarantined(db, unique_id)) == sorted(
        [
            ("requests", "gateway_mismatch", spoofed.request_id),
            ("requests", "unknown_gateway", from_unknown.request_id),
            ("receipts", "unknown_gateway", receipt.receipt_id),
        ]
    )
    assert rows(db, "SELECT 1 FROM follow_up_requests UNION ALL SELECT 1 FROM inbox_receipts") == []


@pytest.mark.db
@pytest.mark.broker
def test_a_request_the_database_refuses_is_quarantined_and_rejected(
    db: psycopg.Connection,
    home: tuple[str, str],
    consumer: ReadingConsumer,
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    db.execute(
        "CREATE FUNCTION refuse_note() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
        " IF NEW.note = 'refuse me' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22000';"
        " END IF; RETURN NEW; END $$"
    )
    db.execute(
        "CREATE TRIGGER refuse_note BEFORE INSERT ON follow_up_requests"
        " FOR EACH ROW EXECUTE FUNCTION refuse_note()"
    )
    db.commit()
    try:
        poison = a_request(gateway_id, patient_id, note="refuse me")
        good = a_request(gateway_id, patient_id)
        receipt = a_receipt(str(uuid.uuid4()))
        gateway.client.publish(  # likely one batch: the refusal must not cost the others
            topics.gateway_topic(gateway_id, topics.REQUESTS),
            encode_follow_up_request(poison),
            qos=1,
        )
        gateway.client.publish(
            topics.gateway_topic(gateway_id, topics.RECEIPTS), encode_receipt(receipt), qos=1
        )
        gateway.publish(topics.REQUESTS, encode_follow_up_request(good))
        assert wait_until(
            lambda: (
                {good.request_id, receipt.receipt_id} <= set(gateway.committed())
                and bool(gateway.rejected())
            )
        )
    finally:
        db.rollback()
        db.execute("DROP TRIGGER refuse_note ON follow_up_requests")
        db.execute("DROP FUNCTION refuse_note()")
        db.commit()
    assert gateway.rejected() == [(poison.request_id, "refused_by_database")]
    assert poison.request_id not in gateway.committed()
    assert quarantined(db, unique_id) == [("requests", "refused_by_database", poison.request_id)]
    assert rows(db, "SELECT request_id::text FROM follow_up_requests") == [(good.request_id,)]
    assert len(rows(db, "SELECT 1 FROM inbox_receipts")) == 1
    assert consumer.writer_alive


@pytest.mark.db
@pytest.mark.broker
def test_workers_of_a_shared_group_take_requests_and_receipts_through_the_shared_subscription(
    db: psycopg.Connection,
    home: tuple[str, str],
    start_consumer: Callable[..., ReadingConsumer],
    gateway: GatewayPeer,
    unique_id: str,
) -> None:
    gateway_id, patient_id = home
    start_consumer(INGEST_SHARED_GROUP=f"ingest-fu-{unique_id}")
    request = a_request(gateway_id, patient_id)
    receipt = a_receipt(str(uuid.uuid4()))

    gateway.publish(topics.REQUESTS, encode_follow_up_request(request))
    gateway.publish(topics.RECEIPTS, encode_receipt(receipt))

    assert wait_until(lambda: {request.request_id, receipt.receipt_id} <= set(gateway.committed()))
    assert len(rows(db, "SELECT 1 FROM follow_up_requests")) == 1
    assert len(rows(db, "SELECT 1 FROM inbox_receipts")) == 1
