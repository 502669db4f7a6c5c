"""The gateway's durable outbox: SQLite in WAL mode, synchronous=FULL.

Every reading accepted from a device is written here, in the same transaction as its sequence
number, before anything is published. A reading leaves the outbox only when ingest's ack says
it is committed (or rejected for good, in which case it moves to ``rejected_readings`` for
inspection). Nothing is ever dropped silently: a kill -9 at any moment leaves either the whole
measurement or none of it, and an unacked reading is published again after a reconnect or
after ``resend_after_s``.

Besides readings it keeps what the patient's page needs: the clinicians' messages (with when
each was read), the patient's recent readings (the last :data:`HISTORY_LIMIT`, also once
acknowledged), and the follow-up requests they made. Inbox receipts and follow-up requests
wait in ``outgoing`` and, like readings, leave it only when ingest's ack names them.

One connection, used under a lock: the paho network thread (acks), the publishing loop, the
Bluetooth loop and the patient's page share it. Gateway rates are a few readings a minute, so
contention is not a concern.

Replay after an outage: :meth:`Outbox.take_due` serves readings accepted since the link came
back (``live_since``) before the backlog, and the backlog oldest first, so a reading taken
now is sent in the next batch however long the backlog is.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from carewatch_contract.ids import new_uuid7
from carewatch_contract.messages import (
    ContractError,
    FollowUpRequest,
    InboxMessage,
    InboxReceipt,
    Reading,
    ReceiptState,
    encode_follow_up_request,
    encode_inbox_message,
    encode_reading,
    encode_receipt,
    parse_follow_up_request,
    parse_inbox_message,
    parse_reading,
)
from carewatch_contract.topics import RECEIPTS, REQUESTS

HISTORY_LIMIT = 500
"""How many of the latest readings the patient's page can show (kept after their ack)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq         INTEGER PRIMARY KEY,      -- the reading's sequence number on the wire
    reading_id  TEXT NOT NULL UNIQUE,
    body        TEXT NOT NULL,            -- the reading as contract JSON
    created_at  REAL NOT NULL,
    sent_at     REAL,                     -- last publish; NULL = due now
    attempts    INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (sent_at, seq);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created_at);
CREATE TABLE IF NOT EXISTS history (
    seq         INTEGER PRIMARY KEY,      -- the reading's sequence number
    patient_id  TEXT NOT NULL,
    body        TEXT NOT NULL             -- the reading as contract JSON
);
CREATE TABLE IF NOT EXISTS outgoing (
    item_id     TEXT PRIMARY KEY,         -- receipt_id / request_id: what ingest's ack names
    topic       TEXT NOT NULL,            -- the contract topic kind: receipts | requests
    body        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    sent_at     REAL                      -- NULL = due now
);
CREATE TABLE IF NOT EXISTS follow_ups (
    request_id   TEXT PRIMARY KEY,
    patient_id   TEXT NOT NULL,
    body         TEXT NOT NULL,           -- the request as contract JSON
    requested_at REAL NOT NULL,
    confirmed_at REAL,                    -- when ingest's ack said the care team has it
    refused      TEXT                     -- ingest's reason when it will never accept it
);
CREATE TABLE IF NOT EXISTS rejected_readings (
    reading_id  TEXT PRIMARY KEY,
    reason      TEXT NOT NULL,
    body        TEXT NOT NULL,
    rejected_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS undecodable (
    id             INTEGER PRIMARY KEY,
    received_at    REAL NOT NULL,
    device_id      TEXT NOT NULL,
    characteristic TEXT NOT NULL,
    hex            TEXT NOT NULL,
    error          TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS inbox (
    message_id  TEXT PRIMARY KEY,
    body        TEXT NOT NULL,
    received_at REAL NOT NULL,
    read_at     REAL
);
CREATE TABLE IF NOT EXISTS counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO counters (name, value) VALUES ('next_seq', 1);
CREATE TABLE IF NOT EXISTS device_status (
    device_id       TEXT PRIMARY KEY,
    last_seen       REAL,                 -- gateway time the device was last heard from
    last_value_at   REAL,                 -- gateway time of its last value with readings
    battery_percent INTEGER
);
"""


@dataclass(frozen=True, slots=True)
class DeviceStatusRow:
    """What the gateway last knew of one device (times in seconds since the epoch)."""

    device_id: str
    last_seen: float | None
    last_value_at: float | None
    battery_percent: int | None


@dataclass(frozen=True, slots=True)
class PendingReading:
    seq: int
    reading_id: str
    body: str


@dataclass(frozen=True, slots=True)
class OutgoingItem:
    """A receipt or follow-up request waiting for ingest's ack."""

    item_id: str
    topic: str
    body: str


@dataclass(frozen=True, slots=True)
class StoredInboxMessage:
    message: InboxMessage
    received_at: datetime
    read_at: datetime | None


@dataclass(frozen=True, slots=True)
class StoredFollowUp:
    request: FollowUpRequest
    confirmed_at: datetime | None
    """None while the request has not reached the care team yet."""
    refused: str | None = None
    """Ingest's reason when it refused the request for good (e.g. the patient is not bound
    to this gateway): the patient must be told to phone instead."""


class Outbox:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=5000")
        self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def add(
        self, readings: Sequence[Reading], *, remember: tuple[str, int] | None = None
    ) -> list[Reading]:
        """Store the readings of one measurement atomically, numbering them in order.

        The readings come in with ``seq`` 0; they come back with their sequence numbers.
        ``remember`` is a named number recorded in the same transaction (how far a device's
        stored records have been fetched), so progress and readings never disagree after a
        crash.
        """
        if not readings and remember is None:
            return []
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                # A stored record replayed while its first copy is still pending is the same
                # reading (same id): it is not added twice.
                marks = ",".join("?" * len(readings))
                pending = {
                    row[0]
                    for row in self._conn.execute(
                        f"SELECT reading_id FROM outbox WHERE reading_id IN ({marks})",  # noqa: S608 - placeholders only
                        [r.reading_id for r in readings],
                    )
                }
                readings = [r for r in readings if r.reading_id not in pending]
                (first,) = self._conn.execute(
                    "SELECT value FROM counters WHERE name = 'next_seq'"
                ).fetchone()
                numbered = [_with_seq(r, first + i) for i, r in enumerate(readings)]
                bodies = [(r, encode_reading(r)) for r in numbered]
                self._conn.executemany(
                    "INSERT INTO outbox (seq, reading_id, body, created_at) VALUES (?, ?, ?, ?)",
                    [(r.seq, r.reading_id, body, now) for r, body in bodies],
                )
                self._conn.executemany(
                    "INSERT INTO history (seq, patient_id, body) VALUES (?, ?, ?)",
                    [(r.seq, r.patient_id, body) for r, body in bodies],
                )
                if numbered:
                    self._conn.execute(
                        "DELETE FROM history WHERE seq <= ?", (numbered[-1].seq - HISTORY_LIMIT,)
                    )
                self._conn.execute(
                    "UPDATE counters SET value = ? WHERE name = 'next_seq'",
                    (first + len(numbered),),
                )
                if remember is not None:
                    self._remember(*remember)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return numbered

    def take_due(
        self,
        *,
        limit: int,
        resend_after_s: float,
        live_since: float | None = None,
        max_in_flight: int | None = None,
    ) -> list[PendingReading]:
        """Readings due for publishing (never sent since the last connect, or sent longer ago
        than ``resend_after_s`` without an ack), marked as sent now.

        ``live_since`` (epoch seconds, normally when the link came back): readings accepted
        since then come first, then the backlog, each in sequence order. ``max_in_flight``:
        take no more than keeps that many readings sent and not yet acknowledged (flow
        control: what is not taken stays here, not in the MQTT client's memory).
        """
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                if max_in_flight is not None:
                    (in_flight,) = self._conn.execute(
                        "SELECT count(*) FROM outbox WHERE sent_at >= ?", (now - resend_after_s,)
                    ).fetchone()
                    limit = min(limit, max(0, max_in_flight - in_flight))
                rows = []
                if live_since is not None and limit > 0:
                    rows = self._conn.execute(
                        "SELECT seq, reading_id, body FROM outbox"
                        " WHERE (sent_at IS NULL OR sent_at < ?) AND created_at >= ?"
                        " ORDER BY seq LIMIT ?",
                        (now - resend_after_s, live_since, limit),
                    ).fetchall()
                if len(rows) < limit:
                    taken = {row[0] for row in rows}
                    rows += [
                        row
                        for row in self._conn.execute(
                            "SELECT seq, reading_id, body FROM outbox"
                            " WHERE sent_at IS NULL OR sent_at < ? ORDER BY seq LIMIT ?",
                            (now - resend_after_s, limit),
                        ).fetchall()
                        if row[0] not in taken
                    ][: limit - len(rows)]
                self._conn.executemany(
                    "UPDATE outbox SET sent_at = ?, attempts = attempts + 1 WHERE seq = ?",
                    [(now, row[0]) for row in rows],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return [PendingReading(*row) for row in rows]

    def mark_all_due(self) -> None:
        """After a (re)connect everything unacked is due again at once."""
        with self._lock:
            self._conn.execute("UPDATE outbox SET sent_at = NULL WHERE sent_at IS NOT NULL")
            self._conn.execute("UPDATE outgoing SET sent_at = NULL WHERE sent_at IS NOT NULL")

    def take_outgoing_due(self, *, resend_after_s: float) -> list[OutgoingItem]:
        """Receipts and follow-up requests due for publishing, oldest first, marked sent."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                rows = self._conn.execute(
                    "SELECT item_id, topic, body FROM outgoing"
                    " WHERE sent_at IS NULL OR sent_at < ? ORDER BY created_at, item_id",
                    (now - resend_after_s,),
                ).fetchall()
                self._conn.executemany(
                    "UPDATE outgoing SET sent_at = ? WHERE item_id = ?",
                    [(now, row[0]) for row in rows],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return [OutgoingItem(*row) for row in rows]

    def acknowledge(
        self, committed: Iterable[str], rejected: Iterable[tuple[str, str]] = ()
    ) -> int:
        """Remove committed readings; move rejected ones aside. Returns how many readings left.

        Receipts and follow-up requests named in the ack leave ``outgoing`` too: a request is
        then marked as confirmed, or, when rejected, as refused with the reason (the patient's
        page tells them to phone), never silently dropped.
        """
        committed = list(committed)
        rejected = list(rejected)
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                removed = 0
                for reading_id, reason in rejected:
                    moved = self._conn.execute(
                        "INSERT OR REPLACE INTO rejected_readings"
                        " (reading_id, reason, body, rejected_at)"
                        " SELECT reading_id, ?, body, ? FROM outbox WHERE reading_id = ?",
                        (reason, now, reading_id),
                    )
                    if moved.rowcount:
                        self._conn.execute("DELETE FROM outbox WHERE reading_id = ?", (reading_id,))
                        removed += 1
                for start in range(0, len(committed), 500):
                    chunk = committed[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    removed += self._conn.execute(
                        f"DELETE FROM outbox WHERE reading_id IN ({marks})",  # noqa: S608 - placeholders only
                        chunk,
                    ).rowcount
                    self._conn.execute(
                        f"DELETE FROM outgoing WHERE item_id IN ({marks})",  # noqa: S608 - placeholders only
                        chunk,
                    )
                    self._conn.execute(
                        f"UPDATE follow_ups SET confirmed_at = ? WHERE request_id IN ({marks})"  # noqa: S608 - placeholders only
                        " AND confirmed_at IS NULL",
                        [now, *chunk],
                    )
                self._conn.executemany(
                    "DELETE FROM outgoing WHERE item_id = ?", [(item,) for item, _ in rejected]
                )
                self._conn.executemany(
                    "UPDATE follow_ups SET refused = ? WHERE request_id = ?"
                    " AND confirmed_at IS NULL",
                    [(reason, item) for item, reason in rejected],
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return removed

    def pending_count(self) -> int:
        with self._lock:
            (count,) = self._conn.execute("SELECT count(*) FROM outbox").fetchone()
        return int(count)

    def record_undecodable(
        self, *, device_id: str, characteristic: str, payload: bytes, error: str
    ) -> None:
        """Keep bytes that failed to decode, for inspection. They are never published."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO undecodable (received_at, device_id, characteristic, hex, error)"
                " VALUES (?, ?, ?, ?, ?)",
                (time.time(), device_id, characteristic, payload.hex(), error),
            )

    def undecodable(self) -> list[tuple[str, str, str, str]]:
        """(device_id, characteristic, hex, error) of every payload that failed to decode."""
        with self._lock:
            return self._conn.execute(
                "SELECT device_id, characteristic, hex, error FROM undecodable ORDER BY id"
            ).fetchall()

    def rejected(self) -> list[tuple[str, str]]:
        """(reading_id, reason) of every reading ingest rejected for good."""
        with self._lock:
            return self._conn.execute(
                "SELECT reading_id, reason FROM rejected_readings ORDER BY rejected_at"
            ).fetchall()

    # -- the patient's page: messages, recent readings, follow-up requests ------------------

    def store_inbox_message(self, message: InboxMessage) -> bool:
        """Keep a clinician's message for the patient and queue its ``delivered`` receipt, in
        one transaction. False when it was already here (a redelivery: nothing new queued)."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                stored = self._conn.execute(
                    "INSERT OR IGNORE INTO inbox (message_id, body, received_at) VALUES (?, ?, ?)",
                    (message.message_id, encode_inbox_message(message).decode(), now),
                ).rowcount
                if stored:
                    self._queue_receipt(message.message_id, ReceiptState.DELIVERED, now)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return stored == 1

    def mark_read(self, message_id: str) -> bool:
        """The patient confirmed they read a message: remember when and queue a ``read``
        receipt, in one transaction. False when unknown or already read."""
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                changed = self._conn.execute(
                    "UPDATE inbox SET read_at = ? WHERE message_id = ? AND read_at IS NULL",
                    (now, message_id),
                ).rowcount
                if changed:
                    self._queue_receipt(message_id, ReceiptState.READ, now)
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return changed == 1

    def _queue_receipt(self, message_id: str, state: ReceiptState, now: float) -> None:
        receipt = InboxReceipt(message_id, state, _utc(now), receipt_id=new_uuid7())
        self._conn.execute(
            "INSERT INTO outgoing (item_id, topic, body, created_at) VALUES (?, ?, ?, ?)",
            (receipt.receipt_id, RECEIPTS, encode_receipt(receipt).decode(), now),
        )

    def inbox_messages(self) -> list[StoredInboxMessage]:
        """Every message kept for the patient, newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body, received_at, read_at FROM inbox ORDER BY received_at DESC"
            ).fetchall()
        messages = []
        for body, received_at, read_at in rows:
            try:
                message = parse_inbox_message(body.encode())
            except ContractError:
                continue  # stored by an older version in another shape: not shown
            messages.append(
                StoredInboxMessage(
                    message, _utc(received_at), None if read_at is None else _utc(read_at)
                )
            )
        return messages

    def request_follow_up(self, request: FollowUpRequest) -> None:
        """Keep the patient's request and queue it for the care team, in one transaction."""
        body = encode_follow_up_request(request).decode()
        now = time.time()
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                self._conn.execute(
                    "INSERT INTO follow_ups (request_id, patient_id, body, requested_at)"
                    " VALUES (?, ?, ?, ?)",
                    (request.request_id, request.patient_id, body, now),
                )
                self._conn.execute(
                    "INSERT INTO outgoing (item_id, topic, body, created_at) VALUES (?, ?, ?, ?)",
                    (request.request_id, REQUESTS, body, now),
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def follow_ups(self, patient_id: str | None = None) -> list[StoredFollowUp]:
        """The follow-up requests made here (of one patient, or all), newest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body, confirmed_at, refused FROM follow_ups"
                " WHERE ? IS NULL OR patient_id = ? ORDER BY requested_at DESC",
                (patient_id, patient_id),
            ).fetchall()
        return [
            StoredFollowUp(
                parse_follow_up_request(body.encode()),
                None if confirmed is None else _utc(confirmed),
                refused,
            )
            for body, confirmed, refused in rows
        ]

    def recent_readings(self, patient_id: str | None = None, limit: int = 50) -> list[Reading]:
        """The latest readings taken here (of one patient, or all), newest first; they stay
        available after ingest has acknowledged them (up to :data:`HISTORY_LIMIT`)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT body FROM history WHERE ? IS NULL OR patient_id = ?"
                " ORDER BY seq DESC LIMIT ?",
                (patient_id, patient_id, limit),
            ).fetchall()
        readings = []
        for (body,) in rows:
            try:
                readings.append(parse_reading(json.loads(body)))
            except (ContractError, ValueError):
                continue  # e.g. a reading an older version stored in another shape
        return readings

    def remember(self, name: str, value: int) -> None:
        """Keep a small named number across restarts (e.g. how far a replay got)."""
        with self._lock:
            self._remember(name, value)

    def _remember(self, name: str, value: int) -> None:
        if name == "next_seq":
            raise ValueError("next_seq is the outbox's own counter")
        self._conn.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?)"
            " ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            (name, value),
        )

    def recall(self, name: str) -> int | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT value FROM counters WHERE name = ?", (name,)
            ).fetchone()
        return None if row is None else int(row[0])

    def record_device_seen(self, device_id: str, at: datetime, *, with_value: bool) -> None:
        """Remember that ``device_id`` was heard from at ``at`` (gateway time).

        ``with_value``: it sent a value that gave readings, so ``at`` is also its last reading
        time. Times only move forward: an older ``at`` than the one stored changes nothing.
        """
        seen = at.timestamp()
        value_at = seen if with_value else None
        with self._lock:
            self._conn.execute(
                "INSERT INTO device_status (device_id, last_seen, last_value_at)"
                " VALUES (?, ?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET"
                " last_seen = max(coalesce(last_seen, excluded.last_seen), excluded.last_seen),"
                " last_value_at = CASE WHEN excluded.last_value_at IS NULL THEN last_value_at"
                " ELSE max(coalesce(last_value_at, excluded.last_value_at),"
                " excluded.last_value_at) END",
                (device_id, seen, value_at),
            )

    def record_battery(self, device_id: str, percent: int) -> None:
        """Remember a device's battery level (clamped to 0-100)."""
        level = max(0, min(100, int(percent)))
        with self._lock:
            self._conn.execute(
                "INSERT INTO device_status (device_id, battery_percent) VALUES (?, ?)"
                " ON CONFLICT (device_id) DO UPDATE SET battery_percent = excluded.battery_percent",
                (device_id, level),
            )

    def device_status_rows(self) -> dict[str, DeviceStatusRow]:
        """Every device's remembered status, by device id (as the device ids were recorded)."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT device_id, last_seen, last_value_at, battery_percent FROM device_status"
                " ORDER BY device_id"
            ).fetchall()
        return {row[0]: DeviceStatusRow(*row) for row in rows}

    def accepted_count(self) -> int:
        """How many readings this outbox has ever accepted (its next sequence number - 1)."""
        return (self.recall("next_seq") or 1) - 1

    def integrity_check(self) -> str:
        with self._lock:
            (result,) = self._conn.execute("PRAGMA integrity_check").fetchone()
        return str(result)


def _with_seq(reading: Reading, seq: int) -> Reading:
    return replace(reading, seq=seq)


def _utc(epoch_seconds: float) -> datetime:
    return datetime.fromtimestamp(epoch_seconds, UTC)
