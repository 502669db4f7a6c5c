"""The MQTT consumer: readings in, committed rows and acks out, nothing lost or doubled.

Flow for each micro-batch (bounded by size and by time, whichever comes first):

1. take messages from the broker's delivery queue (paho ``manual_ack``: the broker keeps them
   as unacknowledged until step 4);
2. validate each against the wire contract and the gateway's bindings; anything bad goes to the
   quarantine with its reason;
3. in one transaction: COPY the good readings (idempotent on the reading id), insert the
   follow-up requests and inbox receipts (idempotent on their ids), the quarantine rows and
   the gateways' status, then commit;
4. after the commit: publish an ack to each gateway, then acknowledge the messages to the
   broker.

A crash before step 4 means the broker redelivers (persistent session) and the gateway resends
(its outbox keeps every reading until acked); the idempotent insert turns both into counted
duplicates. A database outage holds the batch and retries it; nothing is acknowledged that is
not committed.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Protocol, TypeVar

import paho.mqtt.client as mqtt
import psycopg

from carewatch_contract import topics
from carewatch_contract.broker import BrokerEndpoint, make_client, start_connecting
from carewatch_contract.messages import (
    Ack,
    AckRejection,
    ContractError,
    FollowUpRequest,
    GatewayStatus,
    InboxReceipt,
    claimed_reading_ids,
    encode_ack,
    encode_follow_up_request,
    encode_reading,
    encode_receipt,
    parse_follow_up_request,
    parse_receipt,
    parse_status,
)
from carewatch_contract.reading_decoder import decode_reading_batch
from ingest import quarantine
from ingest.counters import IngestCounters
from ingest.db import ensure_partitions, refresh_rollups
from ingest.follow_ups import (
    StoredReceipt,
    StoredRequest,
    claimed_id,
    insert_receipts,
    insert_requests,
    receipt_key,
)
from ingest.readings import StoredReading, insert_readings
from ingest.registry import BindingCache
from ingest.settings import IngestSettings

log = logging.getLogger(__name__)

FollowUpT = TypeVar("FollowUpT", FollowUpRequest, InboxReceipt)

#: The quarantine reason for what the database itself refused (contract-valid, yet unstorable).
REFUSED = "refused_by_database"


def refuses_data(exc: psycopg.Error) -> bool:
    """True when the database refuses the data itself (SQLSTATE class 22, data exception, or
    23, integrity constraint violation), as opposed to being away or misconfigured."""
    return (exc.sqlstate or "")[:2] in ("22", "23")


class Isolation(Enum):
    """How much is committed at once; narrowed step by step when the database refuses."""

    BATCH = "batch"
    BY_READING = "by_reading"  # one message, each reading (request, receipt) under a savepoint
    WHOLE_MESSAGE = "whole_message"  # one message, straight to the quarantine


#: How often the writer makes sure the coming months' reading partitions exist.
MAINTENANCE_INTERVAL_S = 3600.0

#: How far ahead of the server's clock a gateway's clock may run.
MAX_CLOCK_AHEAD = timedelta(days=1)

#: Reasons that concern who sent a reading rather than what it says. The gateway gets no ack
#: for these: its readings stay in its outbox until an operator fixes the enrolment.
UNAUTHORISED_REASONS = frozenset({"unknown_gateway", "gateway_mismatch", "patient_not_bound"})


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message as the broker delivered it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int  # which broker connection delivered it: message ids are per connection
    arrived: float = field(default_factory=time.monotonic)  # for the lag and latency metrics
    retained: bool = False  # a retained message replayed on subscribe, not news


@dataclass(slots=True)
class BatchPlan:
    """What one micro-batch will write and whom it will tell."""

    readings: list[StoredReading] = field(default_factory=list)
    requests: list[StoredRequest] = field(default_factory=list)
    receipts: list[StoredReceipt] = field(default_factory=list)
    quarantined: list[quarantine.QuarantineEntry] = field(default_factory=list)
    acks: dict[str, list[str]] = field(default_factory=dict)
    rejections: dict[str, list[AckRejection]] = field(default_factory=dict)
    statuses: list[tuple[GatewayStatus, bool]] = field(default_factory=list)
    """Each gateway status with whether it was a retained replay."""


class Bindings(Protocol):
    def gateway_known(self, gateway_id: str) -> bool: ...
    def is_bound(self, gateway_id: str, patient_id: str) -> bool: ...


def plan_batch(
    deliveries: list[Delivery],
    *,
    bindings: Bindings,
    max_payload_bytes: int,
    now: datetime,
) -> BatchPlan:
    """Sort a batch of deliveries into readings, follow-up requests and inbox receipts to
    store, quarantine entries and acks.

    ``now`` is the server's clock: a reading received in its future is refused.
    """
    plan = BatchPlan()
    for d in deliveries:
        topic_gateway = topics.gateway_id_from_topic(d.topic)
        if topic_gateway is None:
            continue  # not a contract topic: nothing we subscribe to
        kind = d.topic.rsplit("/", 1)[1]
        if kind == topics.STATUS:
            _plan_status(plan, d, topic_gateway, max_payload_bytes)
            continue
        if kind == topics.REQUESTS:
            _plan_request(plan, d, topic_gateway, bindings, max_payload_bytes)
            continue
        if kind == topics.RECEIPTS:
            _plan_receipt(plan, d, topic_gateway, bindings, max_payload_bytes)
            continue
        if kind != topics.READINGS:
            continue

        def reject(reason: str, detail: str, d: Delivery = d, gw: str = topic_gateway) -> None:
            plan.quarantined.append(
                quarantine.QuarantineEntry(d.topic, gw, reason, detail, d.payload)
            )

        if _too_large(plan, d, topic_gateway, max_payload_bytes):
            continue
        try:
            batch = decode_reading_batch(d.payload)
        except ContractError as exc:
            reject(exc.reason, exc.detail)
            if bindings.gateway_known(topic_gateway):
                # The gateway will never get these accepted: tell it, so they leave its outbox.
                plan.rejections.setdefault(topic_gateway, []).extend(
                    AckRejection(reading_id, exc.reason)
                    for reading_id in claimed_reading_ids(d.payload)
                )
            continue
        if batch.gateway_id != topic_gateway:
            reject("gateway_mismatch", "payload gateway_id differs from the topic's gateway")
            continue
        if not bindings.gateway_known(topic_gateway):
            reject("unknown_gateway", "no gateway with this id is enrolled")
            continue
        committed = plan.acks.setdefault(topic_gateway, [])
        rejected = plan.rejections.setdefault(topic_gateway, [])
        for bad in batch.rejected:
            plan.quarantined.append(
                quarantine.entry_for_reading(
                    topic=d.topic,
                    gateway_id=topic_gateway,
                    reading_id=bad.reading_id,
                    reason=bad.reason,
                    detail=bad.detail,
                    reading=bad.raw,
                )
            )
            if bad.reading_id:
                rejected.append(AckRejection(bad.reading_id, bad.reason))
        for reading in batch.readings:
            if reading.received_at > now + MAX_CLOCK_AHEAD:
                plan.quarantined.append(
                    quarantine.entry_for_reading(
                        topic=d.topic,
                        gateway_id=topic_gateway,
                        reading_id=reading.reading_id,
                        reason="bad_time",
                        detail="received_at is in the future by the server's clock",
                        reading={"reading_id": reading.reading_id, "seq": reading.seq},
                    )
                )
                rejected.append(AckRejection(reading.reading_id, "bad_time"))
                continue
            if not bindings.is_bound(topic_gateway, reading.patient_id):
                plan.quarantined.append(
                    quarantine.entry_for_reading(
                        topic=d.topic,
                        gateway_id=topic_gateway,
                        reading_id=reading.reading_id,
                        reason="patient_not_bound",
                        detail="the reading's patient is not bound to this gateway",
                        reading={"reading_id": reading.reading_id, "seq": reading.seq},
                    )
                )
                continue
            plan.readings.append(StoredReading(topic_gateway, reading))
            committed.append(reading.reading_id)
    return plan


def _too_large(plan: BatchPlan, d: Delivery, topic_gateway: str, max_payload_bytes: int) -> bool:
    """Quarantine a payload over the limit (kept truncated) before anything parses it."""
    if len(d.payload) <= max_payload_bytes:
        return False
    plan.quarantined.append(
        quarantine.QuarantineEntry(
            d.topic,
            topic_gateway,
            "too_large",
            f"payload of {len(d.payload)} bytes > {max_payload_bytes}",
            d.payload,
        )
    )
    return True


def _plan_status(plan: BatchPlan, d: Delivery, topic_gateway: str, max_payload_bytes: int) -> None:
    """A gateway's retained status: applied when well-formed and its own, else quarantined.
    An empty payload is how MQTT clears a retained message (an unenrolled gateway's): nothing
    to store, nothing wrong."""
    if not d.payload:
        return

    def reject(reason: str, detail: str) -> None:
        plan.quarantined.append(
            quarantine.QuarantineEntry(d.topic, topic_gateway, reason, detail, d.payload)
        )

    if _too_large(plan, d, topic_gateway, max_payload_bytes):
        return
    try:
        status = parse_status(d.payload)
    except ContractError as exc:
        reject(exc.reason, exc.detail)
        return
    if status.gateway_id != topic_gateway:
        reject("gateway_mismatch", "payload gateway_id differs from the topic's gateway")
        return
    plan.statuses.append((status, d.retained))


def _parse_follow_up(
    plan: BatchPlan,
    d: Delivery,
    topic_gateway: str,
    bindings: Bindings,
    max_payload_bytes: int,
    parse: Callable[[bytes], FollowUpT],
    id_field: str,
) -> FollowUpT | None:
    """A follow-up request or inbox receipt parsed, or None when it is unusable: then it is
    quarantined, and rejected in the ack when it names its id and its gateway is known (so
    the gateway stops resending what will never be accepted)."""
    if _too_large(plan, d, topic_gateway, max_payload_bytes):
        return None
    try:
        return parse(d.payload)
    except ContractError as exc:
        item_id = claimed_id(d.payload, id_field)
        plan.quarantined.append(
            quarantine.QuarantineEntry(
                d.topic, topic_gateway, exc.reason, exc.detail, d.payload, item_id
            )
        )
        if item_id and bindings.gateway_known(topic_gateway):
            plan.rejections.setdefault(topic_gateway, []).append(AckRejection(item_id, exc.reason))
        return None


def _plan_request(
    plan: BatchPlan,
    d: Delivery,
    topic_gateway: str,
    bindings: Bindings,
    max_payload_bytes: int,
) -> None:
    """A follow-up request: stored and acked; quarantined as readings are when it is bad.

    Unlike a reading of an unbound patient, a request for a patient not bound to the gateway
    is also rejected in the ack: the quarantine keeps it whole for an operator, and the
    gateway stops resending what will never be accepted.
    """
    request = _parse_follow_up(
        plan, d, topic_gateway, bindings, max_payload_bytes, parse_follow_up_request, "request_id"
    )
    if request is None:
        return

    def reject(reason: str, detail: str) -> None:
        plan.quarantined.append(
            quarantine.QuarantineEntry(
                d.topic, topic_gateway, reason, detail, d.payload, request.request_id
            )
        )

    if request.gateway_id != topic_gateway:
        reject("gateway_mismatch", "payload gateway_id differs from the topic's gateway")
    elif not bindings.gateway_known(topic_gateway):
        reject("unknown_gateway", "no gateway with this id is enrolled")
    elif not bindings.is_bound(topic_gateway, request.patient_id):
        reject("patient_not_bound", "the request's patient is not bound to this gateway")
        plan.rejections.setdefault(topic_gateway, []).append(
            AckRejection(request.request_id, "patient_not_bound")
        )
    else:
        plan.requests.append(StoredRequest(topic_gateway, request))  # twice: stored once
        plan.acks.setdefault(topic_gateway, []).append(request.request_id)


def _plan_receipt(
    plan: BatchPlan,
    d: Delivery,
    topic_gateway: str,
    bindings: Bindings,
    max_payload_bytes: int,
) -> None:
    """An inbox receipt: stored, and acked when the gateway gave it a ``receipt_id`` (a
    gateway that gives none does not keep it, so there is nothing to name)."""
    receipt = _parse_follow_up(
        plan, d, topic_gateway, bindings, max_payload_bytes, parse_receipt, "receipt_id"
    )
    if receipt is None:
        return
    if not bindings.gateway_known(topic_gateway):
        plan.quarantined.append(
            quarantine.QuarantineEntry(
                d.topic,
                topic_gateway,
                "unknown_gateway",
                "no gateway with this id is enrolled",
                d.payload,
                receipt.receipt_id,
            )
        )
        return
    plan.receipts.append(StoredReceipt(topic_gateway, receipt_key(topic_gateway, receipt), receipt))
    if receipt.receipt_id is not None:
        plan.acks.setdefault(topic_gateway, []).append(receipt.receipt_id)


class ReadingConsumer:
    """Owns the MQTT client and the writer thread of one ingest worker."""

    def __init__(self, settings: IngestSettings, counters: IngestCounters) -> None:
        self._settings = settings
        self._counters = counters
        self._deliveries: queue.Queue[Delivery] = queue.Queue()
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._bindings = BindingCache()
        self._writer_failed = threading.Event()
        self._connection = 0
        self._in_hand: list[tuple[list[Delivery], Isolation]] = []
        counters.watch_backlog(self.backlog)
        self._writer = threading.Thread(target=self._run_writer, name="ingest-writer", daemon=True)
        self._endpoint = BrokerEndpoint.from_url(settings.mqtt_url)
        self._client = make_client(
            self._endpoint,
            client_id=settings.mqtt_client_id,
            protocol=settings.mqtt_protocol,
            username=settings.mqtt_username,
            password=settings.mqtt_password.get_secret_value() if settings.mqtt_password else None,
            ca_file=settings.mqtt_ca_file,
            cert_file=settings.mqtt_cert_file,
            key_file=settings.mqtt_key_file,
            manual_ack=True,
            persistent_session=True,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def backlog(self) -> tuple[int, float]:
        """Messages received and not yet committed, and how long the oldest has waited (s).

        Read from other threads without a lock: a gauge may be a moment out of date."""
        in_hand = [d for deliveries, _ in list(self._in_hand) for d in deliveries]
        waiting = len(in_hand) + self._deliveries.qsize()
        oldest = in_hand[0] if in_hand else None
        if oldest is None:
            with contextlib.suppress(IndexError):  # emptied meanwhile by the writer
                oldest = self._deliveries.queue[0]
        return waiting, 0.0 if oldest is None else time.monotonic() - oldest.arrived

    @property
    def writer_alive(self) -> bool:
        """False once the writer thread stopped on an unexpected error."""
        return not self._writer_failed.is_set()

    def start(self) -> None:
        log.info("connecting to MQTT broker %s", self._endpoint.redacted())
        start_connecting(
            self._client,
            self._endpoint,
            protocol=self._settings.mqtt_protocol,
            persistent_session=True,
        )
        self._client.loop_start()
        self._writer.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Finish the batch in hand, then disconnect. Unacked messages stay on the broker."""
        self._stop.set()
        self._writer.join(timeout_s)
        self._client.disconnect()
        self._client.loop_stop()

    # -- paho callbacks (network thread): no I/O besides queueing --------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        if reason_code.is_failure:
            log.warning("MQTT connection refused: %s", reason_code)
            return
        client.subscribe(
            [
                (self._settings.readings_subscription, 1),
                (topics.all_gateways(topics.STATUS), 1),
                (self._shared(topics.RECEIPTS), 1),
                (self._shared(topics.REQUESTS), 1),
            ]
        )
        self._connection += 1
        self._connected.set()
        log.info("MQTT connected (session present: %s)", flags.session_present)

    def _shared(self, kind: str) -> str:
        """The subscription to one kind of topic that, like the readings', is shared by the
        workers of ``INGEST_SHARED_GROUP`` when one is set: one worker stores and acks each
        message. (Status stays a plain subscription: every worker applies the retained state.)
        """
        topic_filter = topics.all_gateways(kind)
        group = self._settings.mqtt_shared_group
        return f"$share/{group}/{topic_filter}" if group else topic_filter

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # type: ignore[no-untyped-def]
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("MQTT disconnected (%s); paho reconnects with backoff", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:  # type: ignore[no-untyped-def]
        self._deliveries.put(
            Delivery(
                message.topic,
                message.payload,
                message.mid,
                message.qos,
                self._connection,
                retained=bool(message.retain),
            )
        )

    # -- writer thread -------------------------------------------------------------------

    def _next_batch(self) -> list[Delivery]:
        try:
            first = self._deliveries.get(timeout=0.2)
        except queue.Empty:
            return []
        batch = [first]
        deadline = time.monotonic() + self._settings.batch_max_wait_ms / 1000
        while len(batch) < self._settings.batch_max_messages:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(self._deliveries.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _run_writer(self) -> None:
        try:
            self._write_loop()
        except BaseException:
            # A bug, not bad input: say so loudly and fail readiness so that the orchestrator
            # restarts this worker. Nothing is lost: unacked messages stay on the broker.
            self._writer_failed.set()
            log.exception("the ingest writer stopped on an unexpected error")
            raise

    def _write_loop(self) -> None:
        conn: psycopg.Connection | None = None
        # Work waiting to be committed, oldest first: normally one batch. When the database
        # refuses a batch (bad data, not an outage), its messages are retried one by one,
        # reading by reading, so that only what the database refuses ends in the quarantine.
        pending: list[tuple[list[Delivery], Isolation]] = []
        self._in_hand = pending  # read by the backlog gauges
        backoff = 0.5
        next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
        next_rollup = time.monotonic()
        while not (self._stop.is_set() and not pending):
            if not pending:
                batch = self._next_batch()
                if batch:
                    pending.append((batch, Isolation.BATCH))
                elif time.monotonic() < min(next_maintenance, next_rollup):
                    continue  # idle, and no maintenance due
            try:
                if conn is None or conn.closed:
                    conn = psycopg.connect(
                        self._settings.database_url, connect_timeout=5, autocommit=True
                    )
                if time.monotonic() >= next_maintenance:
                    ensure_partitions(conn)  # months ahead exist whatever the uptime
                    next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
                if time.monotonic() >= next_rollup:
                    with conn.transaction():  # short: a concurrent refresh waits for it
                        refresh_rollups(conn)
                    next_rollup = time.monotonic() + self._settings.rollup_interval_s
                if not pending:
                    continue
                deliveries, isolation = pending[0]
                if isolation is Isolation.WHOLE_MESSAGE:
                    self._quarantine_whole(conn, deliveries[0])
                else:
                    self._commit_and_ack(
                        conn, deliveries, by_reading=isolation is Isolation.BY_READING
                    )
                pending.pop(0)
                backoff = 0.5
            except psycopg.Error as exc:
                self._counters.add(database_errors=1)
                if not refuses_data(exc):
                    # The database is away, read-only, or the schema is not what we expect:
                    # keep the work, acknowledge nothing, retry after a pause.
                    log.warning(
                        "database unavailable (%s); retrying in %.1f s", type(exc).__name__, backoff
                    )
                    if conn is not None:
                        conn.close()
                    conn = None
                    if self._stop.wait(backoff):
                        break  # shutting down: the broker redelivers what is held
                    backoff = min(backoff * 2, 5.0)
                    continue
                if not pending:  # refused by maintenance itself: a schema problem to report
                    log.error("database maintenance refused (%s)", type(exc).__name__)
                    next_rollup = next_maintenance = time.monotonic() + MAINTENANCE_INTERVAL_S
                    continue
                # The data itself is refused: retrying the same work whole would fail forever.
                deliveries, isolation = pending[0]
                log.warning("database refused a write (%s); isolating it", type(exc).__name__)
                pending.pop(0)
                if isolation is Isolation.BATCH:
                    pending[0:0] = [([d], Isolation.BY_READING) for d in deliveries]
                else:
                    pending.insert(0, (deliveries, Isolation.WHOLE_MESSAGE))
        if conn is not None:
            conn.close()

    def _quarantine_whole(self, conn: psycopg.Connection, delivery: Delivery) -> None:
        """The last resort for a message the database refuses even reading by reading."""
        with conn.transaction():
            quarantine.store(
                conn,
                [
                    quarantine.QuarantineEntry(
                        delivery.topic,
                        topics.gateway_id_from_topic(delivery.topic),
                        REFUSED,
                        "the database refused this message",
                        delivery.payload,
                    )
                ],
                keep_bytes=self._settings.quarantine_keep_bytes,
            )
        self._counters.add(messages=1, quarantined=Counter({REFUSED: 1}))
        self._ack_broker(delivery)

    def _commit_and_ack(
        self, conn: psycopg.Connection, batch: list[Delivery], *, by_reading: bool = False
    ) -> None:
        plan = plan_batch(
            batch,
            bindings=self._bindings.view(conn),
            max_payload_bytes=self._settings.max_payload_bytes,
            now=datetime.now(UTC),
        )
        with conn.transaction():
            if by_reading:
                inserted = self._insert_reading_by_reading(conn, plan)
                new_items = self._insert_follow_ups_by_item(conn, plan)
            else:
                inserted = insert_readings(conn, plan.readings)
                new_items = insert_requests(conn, plan.requests) | insert_receipts(
                    conn, plan.receipts
                )
            quarantine.store(
                conn, plan.quarantined, keep_bytes=self._settings.quarantine_keep_bytes
            )
            for status, retained in plan.statuses:
                _store_status(conn, status, retained=retained)
        if self._settings.failpoint == "after_commit" and inserted:
            log.warning("failpoint after_commit: exiting between commit and acks")
            os._exit(70)
        duplicates = len(plan.readings) - len(inserted)
        committed_at = time.monotonic()
        self._counters.add(
            messages=len(batch),
            committed=len(inserted),
            duplicates=duplicates,
            batches=1,
            follow_ups=len(new_items),
            quarantined=Counter(q.reason for q in plan.quarantined),
        )
        self._counters.observe_batch(len(batch), [committed_at - d.arrived for d in batch])
        if plan.quarantined:
            log.info(
                "quarantined %d item(s): %s",
                len(plan.quarantined),
                dict(Counter(q.reason for q in plan.quarantined)),
            )
        if plan.requests or plan.receipts:
            log.info(
                "stored %d new follow-up request(s) and inbox receipt(s) of %d received",
                len(new_items),
                len(plan.requests) + len(plan.receipts),
            )
        for gateway_id in plan.acks.keys() | plan.rejections.keys():
            committed = plan.acks.get(gateway_id, [])
            rejected = plan.rejections.get(gateway_id, [])
            if committed or rejected:
                self._client.publish(
                    topics.gateway_topic(gateway_id, topics.ACKS),
                    encode_ack(Ack(gateway_id, tuple(committed), tuple(rejected))),
                    qos=1,
                )
        for d in batch:
            self._ack_broker(d)

    def _ack_broker(self, delivery: Delivery) -> None:
        """Let the broker forget a committed message, if the connection that delivered it is
        still the current one: after a reconnect the broker resends it (a counted duplicate),
        and its old message id may now name another, uncommitted message."""
        if delivery.connection == self._connection:
            self._client.ack(delivery.mid, delivery.qos)

    def _insert_reading_by_reading(self, conn: psycopg.Connection, plan: BatchPlan) -> set[str]:
        """Insert each reading under its own savepoint; move the refused ones to the quarantine
        and to the gateway's rejections. Anything but refused data still raises."""
        inserted: set[str] = set()
        refused: list[StoredReading] = []
        for stored in plan.readings:
            try:
                with conn.transaction():
                    inserted |= insert_readings(conn, [stored])
            except psycopg.Error as exc:
                if not refuses_data(exc):
                    raise
                self._counters.add(database_errors=1)
                refused.append(stored)
                reading = stored.reading
                plan.quarantined.append(
                    quarantine.QuarantineEntry(
                        topics.gateway_topic(stored.gateway_id, topics.READINGS),
                        stored.gateway_id,
                        REFUSED,
                        f"the database refused it: {type(exc).__name__} (SQLSTATE {exc.sqlstate})",
                        encode_reading(reading).encode(),
                        reading.reading_id,
                    )
                )
                plan.acks[stored.gateway_id].remove(reading.reading_id)
                plan.rejections.setdefault(stored.gateway_id, []).append(
                    AckRejection(reading.reading_id, REFUSED)
                )
        plan.readings = [r for r in plan.readings if r not in refused]
        return inserted

    def _insert_follow_ups_by_item(self, conn: psycopg.Connection, plan: BatchPlan) -> set[str]:
        """Each request and receipt under its own savepoint; a refused one goes to the
        quarantine, and to the gateway's rejections when the gateway gave it an id."""
        inserted: set[str] = set()
        items: list[tuple[str, str | None, str, bytes, Callable[[], set[str]]]] = [
            (
                s.gateway_id,
                s.request.request_id,
                topics.REQUESTS,
                encode_follow_up_request(s.request),
                functools.partial(insert_requests, conn, [s]),
            )
            for s in plan.requests
        ] + [
            (
                s.gateway_id,
                s.receipt.receipt_id,
                topics.RECEIPTS,
                encode_receipt(s.receipt),
                functools.partial(insert_receipts, conn, [s]),
            )
            for s in plan.receipts
        ]
        for gateway_id, item_id, kind, payload, insert in items:
            try:
                with conn.transaction():
                    inserted |= insert()
            except psycopg.Error as exc:
                if not refuses_data(exc):
                    raise
                self._counters.add(database_errors=1)
                plan.quarantined.append(
                    quarantine.QuarantineEntry(
                        topics.gateway_topic(gateway_id, kind),
                        gateway_id,
                        REFUSED,
                        f"the database refused it: {type(exc).__name__} (SQLSTATE {exc.sqlstate})",
                        payload,
                        item_id,
                    )
                )
                if item_id is not None:
                    plan.acks[gateway_id].remove(item_id)
                    plan.rejections.setdefault(gateway_id, []).append(
                        AckRejection(item_id, REFUSED)
                    )
        return inserted


def _store_status(conn: psycopg.Connection, status: GatewayStatus, *, retained: bool) -> None:
    """Record a gateway's status (online/offline, devices' battery).

    The state's time is the status's own ``at``; a status without one (the last will) dates
    a change of state to now and leaves an unchanged state's time alone, so the retained
    statuses every ingest restart replays do not move it. A status older than the one stored
    changes nothing. Only a live ``online`` (not a retained replay) counts as seen.
    """
    updated = conn.execute(
        "UPDATE gateways SET state = %(state)s,"
        " state_at = coalesce(%(at)s, CASE WHEN state IS DISTINCT FROM %(state)s THEN now()"
        " ELSE state_at END),"
        " software = coalesce(%(software)s, software),"
        " outbox_pending = coalesce(%(pending)s, outbox_pending),"
        " warnings = %(warnings)s,"
        " last_seen_at = CASE WHEN %(state)s = 'online' AND NOT %(retained)s THEN now()"
        " ELSE last_seen_at END"
        " WHERE gateway_id = %(gateway)s"
        " AND (%(at)s::timestamptz IS NULL OR state_at IS NULL OR %(at)s >= state_at)",
        {
            "state": str(status.state),
            "at": status.at,
            "software": status.software,
            "pending": status.outbox_pending,
            "warnings": list(status.warnings),
            "retained": retained,
            "gateway": status.gateway_id,
        },
    ).rowcount
    if not updated:
        return
    for device in status.devices:
        if device.battery_percent is not None:
            conn.execute(
                "UPDATE devices SET battery_percent = %s WHERE gateway_id = %s AND device_id = %s",
                (device.battery_percent, status.gateway_id, device.device_id),
            )
