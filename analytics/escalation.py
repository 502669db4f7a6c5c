"""Escalation: an urgent flag nobody acknowledged in time is escalated, recorded and notified.

An open flag (not acknowledged, not resolved) whose severity has a wait in the rule set's
``[escalation]`` table (defaults: critical 15 minutes, high 60) is escalated once it has been
at that severity for longer than the wait, unless it is late (it tells of the past) or
snoozed. Each escalation is a ``flag_escalations`` row (once per flag and severity: a flag that
steps up from high to critical can be escalated again) and a ``flag_events`` row, written in
the caller's transaction; the notification hook runs after the commit, and what it did is
recorded on the escalation.

The hook is a :class:`Notifier`: :class:`LogNotifier` (the default: a WARNING line with the
flag id and severity, no patient data) or :class:`WebhookNotifier` (a JSON POST to the care
team's paging service, ``ANALYTICS_ESCALATION_WEBHOOK``; no patient data either, the receiver
follows the link into the workspace).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import psycopg

from analytics.rules import RuleSet

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Escalation:
    """One escalation: nothing here identifies the patient."""

    escalation_id: int
    flag_id: int
    severity: str
    rule_id: str
    waited: timedelta
    escalated_at: datetime

    def as_json(self) -> dict[str, Any]:
        return {
            "escalation_id": self.escalation_id,
            "flag_id": self.flag_id,
            "severity": self.severity,
            "rule_id": self.rule_id,
            "unacknowledged_minutes": round(self.waited.total_seconds() / 60, 1),
            "escalated_at": self.escalated_at.isoformat(),
        }


class Notifier(Protocol):
    def notify(self, escalation: Escalation) -> None:
        """Tell someone; raise on failure (it is recorded, and the escalation stays)."""


class LogNotifier:
    def notify(self, escalation: Escalation) -> None:
        log.warning(
            "escalated flag %d (%s, %s) unacknowledged for %.0f min",
            escalation.flag_id,
            escalation.severity,
            escalation.rule_id,
            escalation.waited.total_seconds() / 60,
        )


@dataclass(frozen=True)
class WebhookNotifier:
    """POSTs each escalation as JSON to ``url``."""

    url: str
    timeout_s: float = 5.0

    def notify(self, escalation: Escalation) -> None:
        response = httpx.post(self.url, json=escalation.as_json(), timeout=self.timeout_s)
        response.raise_for_status()


def escalate_due(
    conn: psycopg.Connection[Any], rules: RuleSet, *, now: datetime
) -> list[Escalation]:
    """Record the escalations due at ``now`` within the caller's transaction; return them
    so that the caller can notify after committing (:func:`notify_all`)."""
    waits = sorted(rules.escalate_after.items())
    if not waits:
        return []
    rows = conn.execute(
        "WITH policy AS ("
        "  SELECT * FROM unnest(%(severities)s::text[], %(waits)s::interval[])"
        "  AS p(severity, wait)),"
        " due AS ("
        "  SELECT f.flag_id, f.severity, f.rule_id, %(now)s - f.severity_since AS waited"
        "  FROM flags f JOIN policy p ON p.severity = f.severity"
        "  LEFT JOIN active_snoozes s"
        "   ON (s.patient_id, s.rule_id, s.direction) = (f.patient_id, f.rule_id, f.direction)"
        "  WHERE f.status = 'open' AND NOT f.late AND s.until IS NULL"
        "   AND f.severity_since + p.wait <= %(now)s"
        "  FOR UPDATE OF f SKIP LOCKED),"
        " recorded AS ("
        "  INSERT INTO flag_escalations (flag_id, severity, waited, escalated_at)"
        "  SELECT flag_id, severity, waited, %(now)s FROM due"
        "  ON CONFLICT (flag_id, severity) DO NOTHING"
        "  RETURNING escalation_id, flag_id, severity, waited, escalated_at),"
        " events AS ("
        "  INSERT INTO flag_events (flag_id, event, actor, detail)"
        "  SELECT flag_id, 'escalated', 'rules',"
        "   jsonb_build_object('severity', severity, 'escalation_id', escalation_id)"
        "  FROM recorded)"
        " SELECT r.escalation_id, r.flag_id, r.severity, d.rule_id, r.waited, r.escalated_at"
        " FROM recorded r JOIN due d USING (flag_id) ORDER BY r.escalation_id",
        {
            "severities": [severity for severity, _ in waits],
            "waits": [wait for _, wait in waits],
            "now": now,
        },
    ).fetchall()
    return [Escalation(*row) for row in rows]


def notify_all(
    conn: psycopg.Connection[Any], escalations: list[Escalation], notifier: Notifier
) -> None:
    """Run the hook for each escalation (after they were committed) and record the outcome
    (autocommitted per escalation: one failing receiver does not undo another's record)."""
    for escalation in escalations:
        error = None
        try:
            notifier.notify(escalation)
        except Exception as exc:  # the hook's failure is data, not a crash of the worker
            error = f"{type(exc).__name__}: {exc}"[:500]
            log.warning("escalation %d not notified: %s", escalation.escalation_id, error)
        with conn.transaction():
            conn.execute(
                "UPDATE flag_escalations SET notify_error = %(error)s,"
                " notified_at = CASE WHEN %(error)s::text IS NULL THEN now() END"
                " WHERE escalation_id = %(id)s",
                {"error": error, "id": escalation.escalation_id},
            )


def escalation_summary(escalations: list[Escalation]) -> str:
    """One line for the worker's log: counts per severity, no patient data."""
    counts: dict[str, int] = {}
    for escalation in escalations:
        counts[escalation.severity] = counts.get(escalation.severity, 0) + 1
    return json.dumps(counts, sort_keys=True)
