"""The tuning page's preview: how many alerts a proposed rule set would have raised.

``POST /api/v1/rules/preview`` runs the backtest (:mod:`analytics.backtest`) over the last 30
or 90 days of stored readings, once with the rules in force and once with the proposal, and
answers with alerts per patient-week for both and the patients who would gain or lose alerts.
Nothing is saved: saving a new threshold version is its own step.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from analytics.backtest import compare, history_from_database
from analytics.rules import RulesConfigError, rules_from_mapping
from ingest.api.deps import CallerDep, ConnDep, audited

router = APIRouter(prefix="/api/v1/rules", tags=["rules"])

#: A proposal is a rules file; anything bigger than this is not one.
MAX_RULES_BYTES = 256 * 1024


class Preview(BaseModel):
    """A proposed rule set, in the rules file's TOML, and the period to try it on."""

    rules_toml: Annotated[str, Field(max_length=MAX_RULES_BYTES)]
    days: Literal[30, 90] = 30


@router.post("/preview")
def preview(body: Preview, request: Request, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """Alerts per patient-week now and with the proposal over the last ``days`` days."""
    try:
        proposed = rules_from_mapping(tomllib.loads(body.rules_toml), source="proposal")
    except (tomllib.TOMLDecodeError, RulesConfigError) as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    current = request.app.state.rules
    now = datetime.now(UTC)
    readings, patients = history_from_database(conn, since=now - timedelta(days=body.days))
    audited(conn, caller, action="read.rules_preview", resource="readings", outcome="ok")
    result = compare(readings, current, proposed, patients=patients, now=now)
    return {
        "days": body.days,
        "current_version": current.version,
        "proposed_version": proposed.version,
        "readings": len(readings),
        "patients": int(readings["patient_id"].nunique()),
        **result.as_json(),
    }
