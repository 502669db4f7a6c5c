"""What operators and the dashboard need besides patient data: thresholds and the quarantine."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from ingest import quarantine
from ingest.api.deps import CallerDep, ConnDep, audited, require_permission

router = APIRouter(prefix="/api/v1", tags=["operations"])


@router.get("/thresholds")
def thresholds(
    request: Request,
    caller: CallerDep,
    loinc: Annotated[str | None, Query(max_length=16)] = None,
) -> dict[str, Any]:
    """The rule set in force: its version, and the threshold lines to draw on charts."""
    rules = request.app.state.rules
    metrics = [loinc] if loinc else sorted(rules.metrics)
    return {
        "version": rules.version,
        "lines": [line for metric in metrics for line in rules.threshold_lines(metric)],
    }


@router.get("/quarantine")
def recent_quarantine(
    conn: ConnDep,
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """The latest quarantined messages and readings, newest first (admins and integrations:
    quarantined readings hold patient ids and values of every care team)."""
    require_permission(conn, caller, "accounts", action="read.quarantine", resource="quarantine")
    audited(conn, caller, action="read.quarantine", resource="quarantine", outcome="ok")
    return quarantine.recent(conn, limit=limit)
