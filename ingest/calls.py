"""Calls to patients: started from the workspace (a video-room link and the patient's phone as
a ``tel:`` link), ended with an outcome and a note. The time between start and end is
treatment-management time for the billing evidence (the ``care_time`` view); a call that
reached the patient is a live interaction. Thin shell over PostgreSQL; never commits."""

from __future__ import annotations

import uuid
from typing import Any, Final, Literal
from urllib.parse import quote

import psycopg
from psycopg.rows import dict_row

Outcome = Literal["reached", "no_answer", "voicemail", "wrong_number", "declined"]
OUTCOMES: Final[tuple[str, ...]] = ("reached", "no_answer", "voicemail", "wrong_number", "declined")
#: A call left open longer than this is ended at this length when someone ends it later: the
#: billing evidence must not count a forgotten "end call" as hours of care.
MAX_CALL_MINUTES: Final = 120

_SELECT: Final = (
    "SELECT call_id::text AS call_id, patient_id, caller, room_url, phone, started_at,"
    " ended_at, outcome, note,"
    " extract(epoch FROM ended_at - started_at)::float8 AS duration_s FROM calls"
)


class CallError(ValueError):
    """A call that cannot be started or ended as asked (the message says why)."""


def tel_link(phone: str | None) -> str | None:
    """``tel:`` link of a phone number as stored (spaces and punctuation dropped)."""
    if not phone:
        return None
    digits = "".join(c for c in phone if c.isdigit() or c == "+")
    return f"tel:{quote(digits, safe='+')}" if digits.strip("+") else None


def start_call(
    conn: psycopg.Connection[Any], *, patient_id: str, caller: str, video_base_url: str | None
) -> dict[str, Any]:
    """Open a call: a new video room under ``video_base_url`` (one room per call) and the
    patient's phone."""
    row = conn.execute("SELECT phone FROM patients WHERE patient_id = %s", (patient_id,)).fetchone()
    if row is None:
        raise CallError(f"no patient {patient_id!r}")
    call_id = str(uuid.uuid4())
    room = f"{video_base_url.rstrip('/')}/{call_id}" if video_base_url else None
    conn.execute(
        "INSERT INTO calls (call_id, patient_id, caller, room_url, phone)"
        " VALUES (%s, %s, %s, %s, %s)",
        (call_id, patient_id, caller, room, row[0]),
    )
    call = get_call(conn, call_id)
    assert call is not None
    return call


def end_call(
    conn: psycopg.Connection[Any], *, call_id: str, outcome: str, note: str | None
) -> dict[str, Any] | None:
    """Close an open call with its outcome and note; None when there is no such call.
    Ending twice is refused (:class:`CallError`): the first end is the record."""
    if outcome not in OUTCOMES:
        raise CallError(f"unknown outcome {outcome!r} ({', '.join(OUTCOMES)})")
    row = conn.execute(
        "SELECT ended_at FROM calls WHERE call_id = %s FOR UPDATE", (call_id,)
    ).fetchone()
    if row is None:
        return None
    if row[0] is not None:
        raise CallError("this call has ended already")
    conn.execute(
        "UPDATE calls SET ended_at = least(now(), started_at + make_interval(mins => %s)),"
        " outcome = %s, note = %s WHERE call_id = %s",
        (MAX_CALL_MINUTES, outcome, note, call_id),
    )
    return get_call(conn, call_id)


def get_call(conn: psycopg.Connection[Any], call_id: str) -> dict[str, Any] | None:
    with conn.cursor(row_factory=dict_row) as cur:
        call = cur.execute(_SELECT + " WHERE call_id = %s", (call_id,)).fetchone()
    if call is not None:
        call["tel"] = tel_link(call["phone"])
    return call


def patient_calls(
    conn: psycopg.Connection[Any], *, patient_id: str, limit: int = 200
) -> list[dict[str, Any]]:
    """The patient's calls, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        calls = cur.execute(
            _SELECT + " WHERE patient_id = %s ORDER BY started_at DESC LIMIT %s",
            (patient_id, limit),
        ).fetchall()
    for call in calls:
        call["tel"] = tel_link(call["phone"])
    return calls


def call_patient(conn: psycopg.Connection[Any], call_id: str) -> str | None:
    row = conn.execute("SELECT patient_id FROM calls WHERE call_id = %s", (call_id,)).fetchone()
    return row[0] if row else None
