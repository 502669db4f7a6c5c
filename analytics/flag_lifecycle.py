"""Who looks after a flag, and quiet periods: assignment and snoozes, in PostgreSQL.

Thin shell, like :mod:`analytics.flag_store`: each function takes the caller's connection and
never commits.

- **Assignment**: a flag has at most one assignee (``assign to me`` is the caller's name);
  every change is a ``flag_events`` row.
- **Snooze**: per patient, rule *and direction*, until an expiry: their flags leave the triage
  queue and are never escalated meanwhile, yet they are still raised and recorded. Snoozing
  a patient's low SpO2 does not silence a high one of another rule, nor of the same rule in
  the other direction.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any, Final

import psycopg
from psycopg.rows import dict_row

from analytics.flag_store import FlagStoreError

DIRECTIONS: Final = ("high", "low", "none")
#: A snooze is a quiet period, not a way to switch a rule off for a patient.
MAX_SNOOZE: Final = timedelta(days=30)


class SnoozeError(FlagStoreError, ValueError):
    """A snooze that cannot be made as asked (the message says why)."""


def assign_flag(
    conn: psycopg.Connection[Any], *, flag_id: int, assignee: str | None, actor: str
) -> dict[str, Any] | None:
    """Give a flag to ``assignee`` (None: to nobody); the flag's new state, None if absent."""
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "SELECT assignee FROM flags WHERE flag_id = %s FOR UPDATE", (flag_id,)
        ).fetchone()
        if row is None:
            return None
        if row["assignee"] != assignee:
            cur.execute("UPDATE flags SET assignee = %s WHERE flag_id = %s", (assignee, flag_id))
            cur.execute(
                "INSERT INTO flag_events (flag_id, event, actor, detail)"
                " VALUES (%s, 'assigned', %s, %s::jsonb)",
                (flag_id, actor, json.dumps({"from": row["assignee"], "to": assignee})),
            )
        return cur.execute(
            "SELECT flag_id, assignee, status FROM flags WHERE flag_id = %s", (flag_id,)
        ).fetchone()


def snooze(
    conn: psycopg.Connection[Any],
    *,
    patient_id: str,
    rule_id: str,
    direction: str,
    until: datetime,
    reason: str,
    actor: str,
    now: datetime,
) -> dict[str, Any]:
    """Snooze one patient's flags of one rule and direction until ``until``."""
    if direction not in DIRECTIONS:
        raise SnoozeError(f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}")
    if until.tzinfo is None:
        raise SnoozeError("until needs a UTC offset")
    if not now < until <= now + MAX_SNOOZE:
        raise SnoozeError(f"a snooze must end in the future and within {MAX_SNOOZE.days} days")
    if not reason.strip():
        raise SnoozeError("say why the flags are snoozed")
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO flag_snoozes (patient_id, rule_id, direction, until, reason, created_by,"
            " created_at) VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING *",
            (patient_id, rule_id, direction, until, reason.strip(), actor, now),
        ).fetchone()
    assert row is not None
    return row


def cancel_snooze(
    conn: psycopg.Connection[Any], *, snooze_id: int, actor: str
) -> dict[str, Any] | None:
    """End a snooze now; cancelling twice is harmless. None when there is no such snooze."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(
            "UPDATE flag_snoozes SET cancelled_at = now(), cancelled_by = %s"
            " WHERE snooze_id = %s AND cancelled_at IS NULL",
            (actor, snooze_id),
        )
        return cur.execute(
            "SELECT * FROM flag_snoozes WHERE snooze_id = %s", (snooze_id,)
        ).fetchone()


def active_snoozes(conn: psycopg.Connection[Any], *, patient_id: str) -> list[dict[str, Any]]:
    """A patient's snoozes in force, soonest to expire first."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(
            "SELECT * FROM flag_snoozes WHERE patient_id = %s AND cancelled_at IS NULL"
            " AND until > now() ORDER BY until, snooze_id",
            (patient_id,),
        ).fetchall()
