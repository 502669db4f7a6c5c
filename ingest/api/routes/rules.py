"""The tuning page's preview: how many alerts proposed thresholds would have raised.

``POST /api/v1/rules/preview`` runs the backtest (:mod:`analytics.backtest`) over the last 30
or 90 days of stored readings, once with the rules in force and once with the proposal (a
whole rules file, or a new version of one program's or one patient's overrides), and answers
with alerts per patient-week for both and the patients who would gain or lose alerts.
Nothing is saved: saving a new threshold version is its own step.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

import pandas as pd
import psycopg
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field, model_validator

from analytics import threshold_store
from analytics.backtest import RulesInForce, compare, history_from_database
from analytics.rules import RulesConfigError, RuleSet, rules_from_mapping
from analytics.threshold_sets import ThresholdSetError, tunable_values
from ingest.api.deps import Caller, CallerDep, ConnDep, audited, require_permission
from ingest.api.routes.thresholds import MAX_OVERRIDDEN_RULES, may_change

router = APIRouter(prefix="/api/v1/rules", tags=["rules"])

#: A proposal is a rules file; anything bigger than this is not one.
MAX_RULES_BYTES = 256 * 1024


class Preview(BaseModel):
    """A proposal, and the period to try it on: either a whole rules file (``rules_toml``) or
    a new version of one program's or one patient's overrides (``scope``, ``scope_id``,
    ``overrides``, as ``POST /api/v1/thresholds/...`` would save it)."""

    rules_toml: Annotated[str | None, Field(max_length=MAX_RULES_BYTES)] = None
    scope: Literal["program", "patient"] | None = None
    scope_id: Annotated[str | None, Field(max_length=64)] = None
    overrides: dict[str, dict[str, Any]] | None = Field(None, max_length=MAX_OVERRIDDEN_RULES)
    days: Literal[30, 90] = 30

    @model_validator(mode="after")
    def _one_kind_of_proposal(self) -> Preview:
        whole = self.rules_toml is not None
        scoped = self.scope is not None and self.scope_id is not None and self.overrides is not None
        if whole == scoped:
            raise ValueError("give rules_toml, or scope, scope_id and overrides")
        return self


@dataclass(frozen=True)
class _Trial:
    """What a preview compares: the rules in force and the proposal, over which readings."""

    current: RulesInForce
    proposed: RulesInForce
    readings: pd.DataFrame
    patients: pd.DataFrame
    labels: tuple[str, str]


def _whole_file(
    body: Preview, conn: psycopg.Connection, defaults: RuleSet, since: datetime, caller: Caller
) -> _Trial:
    assert body.rules_toml is not None
    proposed = rules_from_mapping(tomllib.loads(body.rules_toml), source="proposal")
    ids = sorted(caller.patient_ids) if caller.patient_ids is not None else None
    readings, patients = history_from_database(conn, since=since, patient_ids=ids)
    return _Trial(defaults, proposed, readings, patients, (defaults.version, proposed.version))


def _one_scope(
    body: Preview, conn: psycopg.Connection, defaults: RuleSet, since: datetime, caller: Caller
) -> _Trial:
    scope, scope_id, overrides = body.scope, body.scope_id, body.overrides
    assert scope is not None and scope_id is not None and overrides is not None
    draft = threshold_store.proposal(defaults, scope=scope, scope_id=scope_id, overrides=overrides)
    ids = [
        patient_id
        for patient_id in threshold_store.patients_in_scope(conn, scope=scope, scope_id=scope_id)
        if caller.sees(patient_id)
    ]
    if scope == "patient" and not ids:
        raise ThresholdSetError(f"no patient {scope_id!r}")
    current = threshold_store.rules_for_patients(conn, defaults, ids)
    proposed = threshold_store.rules_for_patients(conn, defaults, ids, proposal=draft)
    readings, patients = history_from_database(conn, since=since, patient_ids=ids)
    name = f"{scope}:{scope_id}"
    return _Trial(current, proposed, readings, patients, (f"{name} in force", f"{name} proposed"))


@router.get("")
def rules(request: Request, caller: CallerDep) -> dict[str, Any]:
    """The default rules and the values a care team can tune (by the dotted path an override
    names), for the tuning page."""
    defaults: RuleSet = request.app.state.rules
    return {
        "version": defaults.version,
        "rules": [
            {
                "rule_id": table["id"],
                "title": table.get("title", table["id"]),
                "kind": table.get("kind"),
                "source": table.get("source"),
                "values": tunable_values(table),
            }
            for table in defaults.definition.get("rules", [])
        ],
    }


@router.post("/preview")
def preview(body: Preview, request: Request, conn: ConnDep, caller: CallerDep) -> dict[str, Any]:
    """Alerts per patient-week now and with the proposal over the last ``days`` days, over
    the caller's patients (a lead sees the effect on their care teams' patients)."""
    now = datetime.now(UTC)
    since = now - timedelta(days=body.days)
    action = "read.rules_preview"
    if body.rules_toml is None:
        assert body.scope is not None and body.scope_id is not None
        may_change(conn, caller, body.scope, body.scope_id, action=action)
    else:  # a whole rules file is a change for everyone: leads and admins
        require_permission(conn, caller, "program_thresholds", action=action, resource="rules")
    trial = _whole_file if body.rules_toml is not None else _one_scope
    try:
        t = trial(body, conn, request.app.state.rules, since, caller)
    except (tomllib.TOMLDecodeError, RulesConfigError, ThresholdSetError) as exc:
        audited(conn, caller, action="read.rules_preview", resource="readings", outcome="invalid")
        conn.commit()
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, str(exc)) from None
    audited(conn, caller, action="read.rules_preview", resource="readings", outcome="ok")
    result = compare(t.readings, t.current, t.proposed, patients=t.patients, now=now)
    return {
        "days": body.days,
        "current_version": t.labels[0],
        "proposed_version": t.labels[1],
        "readings": len(t.readings),
        "patients": int(t.readings["patient_id"].nunique()),
        **result.as_json(),
    }
