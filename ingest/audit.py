"""The audit log: one row for every read and write of patient data through the API."""

from __future__ import annotations

import psycopg


def record(
    conn: psycopg.Connection,
    *,
    actor: str,
    action: str,
    resource: str,
    outcome: str,
    client: str | None,
) -> None:
    conn.execute(
        "INSERT INTO audit_log (actor, action, resource, outcome, client)"
        " VALUES (%s, %s, %s, %s, %s)",
        (actor, action, resource, outcome, client),
    )
