"""The quarantine: messages and readings that broke the contract, kept for inspection.

It is not clinical data, but it is patient data: a rejected reading carries a patient id and
a value, so only admins and integrations may list it. Payloads are kept up to a bound (a
hostile 256 KB payload is not worth keeping whole), with their real size and a truncation
mark.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg


@dataclass(frozen=True, slots=True)
class QuarantineEntry:
    topic: str
    gateway_id: str | None
    reason: str
    detail: str
    payload: bytes
    reading_id: str | None = None


def entry_for_reading(
    *,
    topic: str,
    gateway_id: str | None,
    reading_id: str | None,
    reason: str,
    detail: str,
    reading: Any,
) -> QuarantineEntry:
    """A quarantine entry for one rejected reading of an otherwise good batch."""
    try:
        payload = json.dumps(reading, separators=(",", ":"), allow_nan=True).encode()
    except (TypeError, ValueError):
        payload = repr(reading).encode()
    return QuarantineEntry(topic, gateway_id, reason, detail, payload, reading_id)


def store(conn: psycopg.Connection, entries: list[QuarantineEntry], *, keep_bytes: int) -> None:
    if not entries:
        return
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO quarantine (topic, gateway_id, reading_id, reason, detail, payload,"
            " payload_size, truncated) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
            [
                (
                    e.topic[:512],
                    e.gateway_id,
                    e.reading_id,
                    e.reason,
                    e.detail[:2000],
                    e.payload[:keep_bytes],
                    len(e.payload),
                    len(e.payload) > keep_bytes,
                )
                for e in entries
            ],
        )


def recent(conn: psycopg.Connection, *, limit: int = 100) -> list[dict[str, Any]]:
    """The latest quarantine entries, newest first, payload shown as text where it is text."""
    rows = conn.execute(
        "SELECT quarantine_id, received_at, topic, gateway_id, reading_id, reason, detail,"
        " payload, payload_size, truncated FROM quarantine ORDER BY quarantine_id DESC LIMIT %s",
        (limit,),
    ).fetchall()
    return [
        {
            "quarantine_id": r[0],
            "received_at": r[1],
            "topic": r[2],
            "gateway_id": r[3],
            "reading_id": None if r[4] is None else str(r[4]),
            "reason": r[5],
            "detail": r[6],
            "payload": bytes(r[7]).decode("utf-8", errors="replace"),
            "payload_size": r[8],
            "truncated": r[9],
        }
        for r in rows
    ]
