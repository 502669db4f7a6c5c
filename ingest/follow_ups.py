"""Follow-up requests and inbox receipts: what patients send back from their gateway's page.

The consumer stores both within its batch transaction (:func:`insert_requests`,
:func:`insert_receipts`), idempotently on the id the gateway chose, and names those ids in
the gateway's ack once committed. The API lists the requests for the care team and closes
them (:func:`list_follow_ups`, :func:`close_follow_up`).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import psycopg

from carewatch_contract.messages import FollowUpRequest, InboxReceipt

FollowUpStatus = Literal["open", "done"]
FOLLOW_UP_STATUSES: Final[tuple[FollowUpStatus, ...]] = ("open", "done")

#: The namespace of the receipt ids ingest derives for gateways that send none.
RECEIPT_NAMESPACE: Final = uuid.uuid5(uuid.NAMESPACE_URL, "urn:carewatch:inbox-receipt")


@dataclass(frozen=True, slots=True)
class StoredRequest:
    """A follow-up request to store, with the gateway it came through."""

    gateway_id: str
    request: FollowUpRequest


@dataclass(frozen=True, slots=True)
class StoredReceipt:
    """An inbox receipt to store under ``receipt_id`` (see :func:`receipt_key`)."""

    gateway_id: str
    receipt_id: str
    receipt: InboxReceipt


def receipt_key(gateway_id: str, receipt: InboxReceipt) -> str:
    """The id a receipt is stored under: the gateway's own ``receipt_id``, else a UUIDv5 of
    (gateway id, message id, state), so that an older gateway's resends collapse as well.

    The parts are joined with a control character, which none of them may contain.
    """
    if receipt.receipt_id is not None:
        return receipt.receipt_id
    name = "\x1f".join((gateway_id, receipt.message_id, str(receipt.state)))
    return str(uuid.uuid5(RECEIPT_NAMESPACE, name))


def claimed_id(payload: bytes, name: str) -> str | None:
    """The UUID a payload that failed to parse claims in its field ``name`` (never raises).

    Lets ingest tell a gateway that a receipt or request it will never accept may be dropped.
    """
    try:
        obj = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    value = obj.get(name) if isinstance(obj, dict) else None
    if not isinstance(value, str):
        return None
    try:
        return str(uuid.UUID(value))
    except ValueError:
        return None


# --- storing (the consumer, within its transaction) ------------------------------------------


def insert_requests(conn: psycopg.Connection, requests: Sequence[StoredRequest]) -> set[str]:
    """Insert the requests not stored before; return the ids that were new."""
    if not requests:
        return set()
    rows = conn.execute(
        "INSERT INTO follow_up_requests (request_id, gateway_id, patient_id, kind, note,"
        " in_reply_to, requested_at)"
        " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::timestamptz[])"
        " ON CONFLICT (request_id) DO NOTHING RETURNING request_id",
        (
            [s.request.request_id for s in requests],
            [s.gateway_id for s in requests],
            [s.request.patient_id for s in requests],
            [str(s.request.kind) for s in requests],
            [s.request.note for s in requests],
            [s.request.in_reply_to for s in requests],
            [s.request.at for s in requests],
        ),
    ).fetchall()
    return {str(row[0]) for row in rows}


def insert_receipts(conn: psycopg.Connection, receipts: Sequence[StoredReceipt]) -> set[str]:
    """Insert the receipts not stored before; return the ids that were new."""
    if not receipts:
        return set()
    rows = conn.execute(
        "INSERT INTO inbox_receipts (receipt_id, gateway_id, message_id, state, at)"
        " SELECT * FROM unnest(%s::uuid[], %s::text[], %s::text[], %s::text[],"
        " %s::timestamptz[])"
        " ON CONFLICT (receipt_id) DO NOTHING RETURNING receipt_id",
        (
            [s.receipt_id for s in receipts],
            [s.gateway_id for s in receipts],
            [s.receipt.message_id for s in receipts],
            [str(s.receipt.state) for s in receipts],
            [s.receipt.at for s in receipts],
        ),
    ).fetchall()
    return {str(row[0]) for row in rows}


# --- the care team's view (the API) ----------------------------------------------------------

_SELECT = (
    "SELECT f.request_id, f.gateway_id, f.patient_id, p.display_name, f.kind, f.note,"
    " f.in_reply_to, f.requested_at, f.received_at, f.status, f.closed_by, f.closed_at,"
    " f.close_note FROM follow_up_requests f LEFT JOIN patients p USING (patient_id)"
)
_FIELDS = (
    "request_id",
    "gateway_id",
    "patient_id",
    "patient_name",
    "kind",
    "note",
    "in_reply_to",
    "requested_at",
    "received_at",
    "status",
    "closed_by",
    "closed_at",
    "close_note",
)


class FollowUpClosedError(Exception):
    """The request is done already; closing it again would overwrite who closed it."""

    def __init__(self, follow_up: dict[str, Any]) -> None:
        super().__init__(
            f"the follow-up request is already done (by {follow_up['closed_by']} at "
            f"{follow_up['closed_at'].isoformat(timespec='seconds')})"
        )
        self.follow_up = follow_up


def _as_dict(row: Sequence[Any]) -> dict[str, Any]:
    item = dict(zip(_FIELDS, row, strict=True))
    item["request_id"] = str(item["request_id"])
    return item


def list_follow_ups(
    conn: psycopg.Connection,
    *,
    statuses: Sequence[FollowUpStatus] = FOLLOW_UP_STATUSES,
    patient_id: str | None = None,
    patient_ids: Collection[str] | None = None,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Requests in these statuses, newest first (as they reached the care team); of
    ``patient_ids`` only, when given (a user's care teams' patients)."""
    rows = conn.execute(
        _SELECT + " WHERE f.status = ANY(%(statuses)s)"
        " AND (%(patient)s::text IS NULL OR f.patient_id = %(patient)s)"
        " AND (%(ids)s::text[] IS NULL OR f.patient_id = ANY(%(ids)s::text[]))"
        " ORDER BY f.received_at DESC, f.requested_at DESC, f.request_id LIMIT %(limit)s",
        {
            "statuses": list(statuses),
            "patient": patient_id,
            "ids": sorted(patient_ids) if patient_ids is not None else None,
            "limit": limit,
        },
    ).fetchall()
    return [_as_dict(row) for row in rows]


def get_follow_up(conn: psycopg.Connection, request_id: str) -> dict[str, Any] | None:
    row = conn.execute(_SELECT + " WHERE f.request_id = %s", (request_id,)).fetchone()
    return None if row is None else _as_dict(row)


def close_follow_up(
    conn: psycopg.Connection, *, request_id: str, actor: str, note: str | None
) -> dict[str, Any] | None:
    """Mark an open request done by ``actor``; None when there is no such request.

    Raises :class:`FollowUpClosedError` when it is done already.
    """
    closed = conn.execute(
        "UPDATE follow_up_requests SET status = 'done', closed_by = %s, closed_at = now(),"
        " close_note = %s WHERE request_id = %s AND status = 'open' RETURNING request_id",
        (actor, note, request_id),
    ).fetchone()
    follow_up = get_follow_up(conn, request_id)
    if closed is None and follow_up is not None:
        raise FollowUpClosedError(follow_up)
    return follow_up
