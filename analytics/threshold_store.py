"""Threshold versions in PostgreSQL: save a program's or a patient's overrides, read what is
in force. Thin shell over :mod:`analytics.threshold_sets`; never commits."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row

from analytics.rules import PROGRAMS, RuleSet
from analytics.threshold_sets import (
    ProgramTemplate,
    ThresholdSetError,
    ThresholdVersion,
    check_locks,
    effective_rules,
    locked_paths_touched,
    rules_by_patient,
)

#: Author of the versions ingest stores from the shipped program templates.
TEMPLATE_AUTHOR = "carewatch-template"


class LockedValueError(ThresholdSetError):
    """A patient override touches values the program's lead locked."""


def _version(row: Mapping[str, Any]) -> ThresholdVersion:
    return ThresholdVersion(
        version_id=row["version_id"],
        scope=row["scope"],
        scope_id=row["scope_id"],
        overrides=row["overrides"],
        reason=row["reason"],
        author=row["author"],
        created_at=row["created_at"],
        locked=frozenset(row["locked"]),
    )


def current_versions(
    conn: psycopg.Connection[Any], *, scope: str, scope_ids: list[str] | None = None
) -> dict[str, ThresholdVersion]:
    """The version in force for each program (or patient; of ``scope_ids`` when given)."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT DISTINCT ON (scope_id) * FROM threshold_versions WHERE scope = %s"
            " AND (%s::text[] IS NULL OR scope_id = ANY(%s::text[]))"
            " ORDER BY scope_id, version_id DESC",
            (scope, scope_ids, scope_ids),
        ).fetchall()
    return {row["scope_id"]: _version(row) for row in rows}


def history(conn: psycopg.Connection[Any], *, scope: str, scope_id: str) -> list[ThresholdVersion]:
    """Every version of one program's or patient's overrides, newest first."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT * FROM threshold_versions WHERE scope = %s AND scope_id = %s"
            " ORDER BY version_id DESC",
            (scope, scope_id),
        ).fetchall()
    return [_version(row) for row in rows]


def save_version(
    conn: psycopg.Connection[Any],
    defaults: RuleSet,
    *,
    scope: str,
    scope_id: str,
    overrides: Mapping[str, Mapping[str, Any]],
    reason: str,
    author: str,
    locked: frozenset[str] = frozenset(),
) -> ThresholdVersion:
    """Validate and store a new version; it is in force once committed.

    Refused (:class:`ThresholdSetError`) when the result is not a valid rule set, when a
    patient override touches a value the program locked (:class:`LockedValueError`), or when
    a lock names no value of the rules.
    """
    if scope == "program" and scope_id not in PROGRAMS:
        raise ThresholdSetError(f"unknown program {scope_id!r} ({', '.join(PROGRAMS)})")
    if scope == "patient" and locked:
        raise ThresholdSetError("locks belong to programs")
    if not reason.strip():
        raise ThresholdSetError("say why the thresholds change")
    program_version = None
    if scope == "patient":
        row = conn.execute(
            "SELECT program FROM patients WHERE patient_id = %s", (scope_id,)
        ).fetchone()
        if row is None:
            raise ThresholdSetError(f"no patient {scope_id!r}")
        program_version = current_versions(conn, scope="program").get(row[0])
        touched = locked_paths_touched(program_version, overrides)
        if touched:
            raise LockedValueError(f"locked by the program's lead: {', '.join(touched)}")
    check_locks(defaults, locked)
    draft = _draft(scope, scope_id, overrides, locked=locked, reason=reason, author=author)
    if scope == "patient":
        effective_rules(defaults, program=program_version, patient=draft)
    else:
        # Valid alone, and with every override of the program's patients on top: a program
        # version that breaks one patient's rules would stop the rules worker on that patient.
        effective_rules(defaults, program=draft)
        for patient_version in _patient_versions_in_program(conn, scope_id):
            effective_rules(defaults, program=draft, patient=patient_version)
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            "INSERT INTO threshold_versions (scope, scope_id, overrides, locked, reason, author)"
            " VALUES (%s, %s, %s::jsonb, %s, %s, %s) RETURNING *",
            (scope, scope_id, json.dumps(overrides), sorted(locked), reason.strip(), author),
        ).fetchone()
    assert row is not None
    return _version(row)


def rules_for_patients(
    conn: psycopg.Connection[Any],
    defaults: RuleSet,
    patient_ids: list[str],
    *,
    proposal: ThresholdVersion | None = None,
) -> dict[str, RuleSet]:
    """Each patient's rules in force (defaults, program, patient), or with ``proposal`` in
    place of its scope's version (the tuning preview)."""
    programs = dict(
        conn.execute(
            "SELECT patient_id, program FROM patients WHERE patient_id = ANY(%s::text[])",
            (patient_ids,),
        ).fetchall()
    )
    program_versions = current_versions(conn, scope="program")
    patient_versions = current_versions(conn, scope="patient", scope_ids=patient_ids)
    if proposal is not None:
        versions = program_versions if proposal.scope == "program" else patient_versions
        versions[proposal.scope_id] = proposal
    return rules_by_patient(
        defaults,
        {patient_id: programs.get(patient_id, "general") for patient_id in patient_ids},
        programs=program_versions,
        overrides=patient_versions,
    )


def proposal(
    defaults: RuleSet, *, scope: str, scope_id: str, overrides: Mapping[str, Mapping[str, Any]]
) -> ThresholdVersion:
    """A version not saved, checked as saving would check it on its own (unknown program,
    rule, path or value: :class:`ThresholdSetError`)."""
    if scope == "program" and scope_id not in PROGRAMS:
        raise ThresholdSetError(f"unknown program {scope_id!r} ({', '.join(PROGRAMS)})")
    draft = _draft(scope, scope_id, overrides, reason="preview", author="preview")
    effective_rules(defaults, **{scope: draft})  # type: ignore[arg-type]
    return draft


def _draft(
    scope: str,
    scope_id: str,
    overrides: Mapping[str, Mapping[str, Any]],
    *,
    reason: str,
    author: str,
    locked: frozenset[str] = frozenset(),
) -> ThresholdVersion:
    return ThresholdVersion(
        version_id=0,
        scope=scope,  # type: ignore[arg-type]
        scope_id=scope_id,
        overrides=overrides,
        reason=reason,
        author=author,
        created_at=datetime.now(UTC),
        locked=locked,
    )


def _patient_versions_in_program(
    conn: psycopg.Connection[Any], program: str
) -> list[ThresholdVersion]:
    ids = [
        patient_id
        for (patient_id,) in conn.execute(
            "SELECT patient_id FROM patients WHERE program = %s", (program,)
        ).fetchall()
    ]
    return list(current_versions(conn, scope="patient", scope_ids=ids).values())


def patients_in_scope(conn: psycopg.Connection[Any], *, scope: str, scope_id: str) -> list[str]:
    """The patients a program's (or one patient's) thresholds apply to."""
    if scope == "patient":
        found = conn.execute("SELECT 1 FROM patients WHERE patient_id = %s", (scope_id,))
        return [scope_id] if found.fetchone() else []
    rows = conn.execute(
        "SELECT patient_id FROM patients WHERE program = %s ORDER BY patient_id", (scope_id,)
    ).fetchall()
    return [patient_id for (patient_id,) in rows]


def seed_program_templates(
    conn: psycopg.Connection[Any], templates: Mapping[str, ProgramTemplate]
) -> list[str]:
    """Store each template as the first version of its program, for the programs that have
    no version yet (never over a lead's version); the programs seeded. Safe with several
    ingest workers starting at once: one transaction-scoped advisory lock orders them."""
    conn.execute("SELECT pg_advisory_xact_lock(hashtext('carewatch.program_templates'))")
    seeded = []
    for program, template in sorted(templates.items()):
        inserted = conn.execute(
            "INSERT INTO threshold_versions (scope, scope_id, overrides, locked, reason, author)"
            " SELECT 'program', %s, %s::jsonb, %s, %s, %s WHERE NOT EXISTS"
            " (SELECT 1 FROM threshold_versions WHERE scope = 'program' AND scope_id = %s)",
            (
                program,
                json.dumps(template.overrides),
                sorted(template.locked),
                f"shipped template {template.templates_version} ({template.source})",
                TEMPLATE_AUTHOR,
                program,
            ),
        )
        if inserted.rowcount:
            seeded.append(program)
    return seeded
