"""Flags in PostgreSQL: open and update them from breaches, list them, acknowledge, resolve.

A thin shell around the pure rules. Every function takes a psycopg connection that the caller
owns, followed by keyword-only arguments, and never commits: the caller decides the
transaction (the rules worker writes flags and advances its watermark in one).

One flag is open per (patient, rule, direction); the partial unique index
``flags_one_open_per_patient_rule_direction`` holds that under concurrent workers. An open or
acknowledged flag collects every later breach of its rule (linked in ``flag_readings``, counted
once however often a reading is re-evaluated) and only ever gains severity. Once resolved, the
next breach opens a new flag.

The summary values (``first_value``, ``last_value``, ``worst_value``) are those of the flag's
metric (``loinc``, the metric of the breach that opened it): a rule spanning two metrics
(hypertensive crisis: systolic or diastolic) still counts and links the other metric's
breaches, but does not mix their values into these columns.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Final

import pandas as pd
import psycopg
from psycopg.rows import dict_row

from analytics import AnalyticsError
from analytics.episodes import lower_is_worse as _lower_is_worse
from analytics.rules import BREACH_COLUMNS, SEVERITIES, SEVERITY_RANK, RuleSet
from carewatch_contract.metrics import metric_for

log = logging.getLogger(__name__)

FLAG_STATUSES: Final[tuple[str, ...]] = ("open", "acknowledged", "resolved")
ACTIVE_STATUSES: Final[tuple[str, ...]] = ("open", "acknowledged")
RULES_ACTOR: Final = "rules"
MAX_LIST_LIMIT: Final = 10_000
# Opening a flag can lose a race to a concurrent worker (then we lock the winner's flag), and
# that flag can be resolved before we lock it; a few rounds settle any real interleaving.
_MAX_OPEN_ROUNDS: Final = 5

FlagKey = tuple[str, str, str]  # (patient_id, rule_id, direction)


class FlagStoreError(AnalyticsError):
    """Flags could not be written or changed as asked."""


class FlagStateError(FlagStoreError):
    """The flag's status does not allow the change (e.g. acknowledging a resolved flag)."""


@dataclass(slots=True)
class FlagChanges:
    """What :func:`apply_breaches` changed.

    ``opened``: new flags. ``updated``: already open or acknowledged flags that gained at least
    one newly linked reading. ``severity_raised``: flags (new or existing) whose severity went
    up. ``readings_linked``: breaches newly linked to a flag (re-evaluated ones are not).
    """

    opened: int = 0
    updated: int = 0
    severity_raised: int = 0
    readings_linked: int = 0

    def __iadd__(self, other: FlagChanges) -> FlagChanges:
        self.opened += other.opened
        self.updated += other.updated
        self.severity_raised += other.severity_raised
        self.readings_linked += other.readings_linked
        return self


@dataclass(frozen=True, slots=True)
class _Breach:
    reading_id: uuid.UUID
    patient_id: str
    rule_id: str
    kind: str
    direction: str
    loinc: str
    value: float
    measured_at: datetime
    severity: str
    limit: float
    label: str
    title: str
    late: bool = False  # the reading reached CareWatch long after it was taken

    @property
    def key(self) -> FlagKey:
        return (self.patient_id, self.rule_id, self.direction)

    def threshold(self) -> dict[str, Any]:
        """The condition this breach met, as stored in ``flags.threshold``: the limit under
        ``above`` or ``below`` for a rule with a direction; for others (NEWS2, adherence)
        the kind and, where there is one, the limit."""
        condition: dict[str, Any] = {
            "metric": self.loinc,
            "severity": self.severity,
            "label": self.label,
            "title": self.title,
        }
        limit = None if math.isnan(self.limit) else self.limit
        if self.direction in ("high", "low"):
            condition["above" if self.direction == "high" else "below"] = limit
        else:
            condition["kind"] = self.kind
            condition["limit"] = limit
        return condition

    def event_detail(self) -> dict[str, Any]:
        return {
            "reading_id": str(self.reading_id),
            "measured_at": self.measured_at.isoformat(),
            "loinc": self.loinc,
            "value": None if math.isnan(self.value) else self.value,
            "limit": None if math.isnan(self.limit) else self.limit,
            "label": self.label,
        }


@dataclass(slots=True)
class _FlagState:
    """A flag's row as it will be written, plus the events that got it there."""

    flag_id: int | None
    patient_id: str
    rule_id: str
    direction: str
    kind: str
    loinc: str
    title: str
    severity: str
    status: str
    threshold: dict[str, Any]
    rules_version: str
    opened_at: datetime
    last_breach_at: datetime
    breach_count: int
    first_value: float
    last_value: float
    worst_value: float
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    late: bool = False
    severity_raised: bool = False
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def key(self) -> FlagKey:
        return (self.patient_id, self.rule_id, self.direction)


# --- applying breaches --------------------------------------------------------------------------


def apply_breaches(
    conn: psycopg.Connection[Any], breaches: pd.DataFrame, rules: RuleSet
) -> FlagChanges:
    """Open or update flags for ``breaches`` (the frame of ``rules.evaluate_thresholds``).

    Breaches are applied per (patient, rule, direction) in ``measured_at`` order: the first one
    opens a flag when none is open or acknowledged (event ``opened``), every one is linked to
    the flag once (a reading already linked to a flag of the same rule is skipped), and a more
    severe one raises the flag's severity (event ``severity_raised``; an acknowledged flag goes
    back to ``open``). Safe under concurrent callers; does not commit.
    """
    pending = _breaches_from_frame(breaches, rules)
    if not pending:
        return FlagChanges()
    pending = _without_already_linked(conn, pending)
    if not pending:
        return FlagChanges()

    groups: dict[FlagKey, list[_Breach]] = {}
    for breach in pending:  # already in measured_at order
        groups.setdefault(breach.key, []).append(breach)
    keys = sorted(groups)  # one lock order for every worker

    existing, opened = _lock_or_open_flags(conn, keys=keys, groups=groups, rules=rules)

    flag_id_by_key = {key: state.flag_id for key, state in {**existing, **opened}.items()}
    links = [(flag_id_by_key[key], breach) for key in keys for breach in groups[key]]
    newly_linked = _link_readings(conn, links)

    changes = FlagChanges(opened=len(opened), readings_linked=len(newly_linked))
    updated: list[_FlagState] = []
    for key, state in existing.items():
        new_breaches = [b for b in groups[key] if (state.flag_id, b.reading_id) in newly_linked]
        if new_breaches:
            updated.append(_fold(state, new_breaches, rules))
    _update_flags(conn, updated)
    changes.updated = len(updated)
    changes.severity_raised = sum(
        1 for state in (*opened.values(), *updated) if state.severity_raised
    )
    _insert_events(conn, (*opened.values(), *updated))
    log.debug(
        "applied %d breaches: %d flags opened, %d updated, %d severity raised",
        len(pending),
        changes.opened,
        changes.updated,
        changes.severity_raised,
    )
    return changes


def _breaches_from_frame(breaches: pd.DataFrame, rules: RuleSet) -> list[_Breach]:
    """The frame's rows as breaches, one per (reading, rule), in the order to apply them.

    That is ``measured_at`` order; at one instant (a blood-pressure panel's systolic and
    diastolic) the most severe breach first, then the metric the rule names first, so the
    breach that opens a flag does not depend on reading ids.
    """
    missing = [column for column in BREACH_COLUMNS if column not in breaches.columns]
    if missing:
        raise ValueError(f"breaches lack the column(s) {', '.join(missing)}")
    if breaches.empty:
        return []
    unique = breaches.drop_duplicates(["reading_id", "rule_id"], keep="first")
    measured_at = pd.to_datetime(unique["measured_at"], utc=True)
    late = unique["late"] if "late" in unique.columns else pd.Series(False, index=unique.index)
    result = [
        _Breach(
            reading_id=_as_uuid(row.reading_id),
            patient_id=str(row.patient_id),
            rule_id=str(row.rule_id),
            kind=str(row.kind),
            direction=row.direction if isinstance(row.direction, str) else "none",
            loinc=str(row.loinc),
            value=float(row.value),
            measured_at=at.to_pydatetime(),
            severity=str(row.severity),
            limit=float(row.limit),
            label=str(row.label),
            title=str(row.title),
            late=bool(is_late),
        )
        for row, at, is_late in zip(unique.itertuples(index=False), measured_at, late, strict=True)
    ]
    unknown = {b.severity for b in result} - set(SEVERITY_RANK)
    if unknown:
        raise ValueError(f"breaches carry unknown severities: {', '.join(sorted(unknown))}")
    metric_position = {
        (rule.id, condition.metric): position
        for rule in rules.thresholds
        for position, condition in reversed(list(enumerate(rule.conditions)))
    }
    result.sort(
        key=lambda b: (
            b.measured_at,
            -SEVERITY_RANK[b.severity],
            metric_position.get((b.rule_id, b.loinc), len(metric_position)),
            str(b.reading_id),
            b.rule_id,
        )
    )
    return result


def _as_uuid(value: object) -> uuid.UUID:
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _without_already_linked(
    conn: psycopg.Connection[Any], breaches: list[_Breach]
) -> list[_Breach]:
    """Drop breaches whose reading is already linked to a flag of the same rule (any status)."""
    reading_ids = sorted({b.reading_id for b in breaches})
    rows = conn.execute(
        "SELECT fr.reading_id, f.rule_id FROM flag_readings fr JOIN flags f USING (flag_id)"
        " WHERE fr.reading_id = ANY(%s::uuid[])",
        (reading_ids,),
    ).fetchall()
    linked = {(reading_id, rule_id) for reading_id, rule_id in rows}
    return [b for b in breaches if (b.reading_id, b.rule_id) not in linked]


_FLAG_STATE_COLUMNS: Final = (
    "flag_id, patient_id, rule_id, direction, kind, loinc, title, severity, status, threshold,"
    " rules_version, opened_at, last_breach_at, breach_count, first_value, last_value,"
    " worst_value, acknowledged_at, acknowledged_by, late"
)


def _lock_or_open_flags(
    conn: psycopg.Connection[Any],
    *,
    keys: list[FlagKey],
    groups: dict[FlagKey, list[_Breach]],
    rules: RuleSet,
) -> tuple[dict[FlagKey, _FlagState], dict[FlagKey, _FlagState]]:
    """Lock the open flags of ``keys`` and open the missing ones.

    Returns (existing flags, locked; new flags, already folded over their whole group).
    A concurrent worker may open the same flag first: ``ON CONFLICT DO NOTHING`` waits for it
    to commit, and the next round locks its flag instead.
    """
    existing: dict[FlagKey, _FlagState] = {}
    opened: dict[FlagKey, _FlagState] = {}
    unsettled = keys
    for _ in range(_MAX_OPEN_ROUNDS):
        existing.update(_lock_open_flags(conn, unsettled))
        missing = [key for key in unsettled if key not in existing]
        if not missing:
            return existing, opened
        proposed = {key: _open_state(groups[key], rules) for key in missing}
        for key, flag_id in _insert_flags(conn, [proposed[key] for key in missing]).items():
            proposed[key].flag_id = flag_id
            opened[key] = proposed[key]
        unsettled = [key for key in missing if key not in opened]
        if not unsettled:
            return existing, opened
    raise FlagStoreError(
        f"could not open or lock {len(unsettled)} flag(s) after {_MAX_OPEN_ROUNDS} rounds of "
        "concurrent changes; retry the transaction"
    )


def _lock_open_flags(
    conn: psycopg.Connection[Any], keys: Sequence[FlagKey]
) -> dict[FlagKey, _FlagState]:
    if not keys:
        return {}
    patient_ids, rule_ids, directions = (list(column) for column in zip(*keys, strict=True))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"SELECT {_FLAG_STATE_COLUMNS} FROM flags"  # noqa: S608 - fixed column list
            " WHERE status <> 'resolved'"
            " AND (patient_id, rule_id, direction) IN"
            " (SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))"
            " ORDER BY patient_id, rule_id, direction"
            " FOR UPDATE",
            (patient_ids, rule_ids, directions),
        ).fetchall()
    states = {}
    for row in rows:
        state = _FlagState(**row)
        states[state.key] = state
    return states


def _open_state(group: list[_Breach], rules: RuleSet) -> _FlagState:
    """The state of a new flag opened by the first breach and folded over the rest."""
    first = group[0]
    state = _FlagState(
        flag_id=None,
        patient_id=first.patient_id,
        rule_id=first.rule_id,
        direction=first.direction,
        kind=first.kind,
        loinc=first.loinc,
        title=first.title,
        severity=first.severity,
        status="open",
        threshold=first.threshold(),
        rules_version=rules.version,
        opened_at=first.measured_at,
        last_breach_at=first.measured_at,
        breach_count=1,
        first_value=first.value,
        last_value=first.value,
        worst_value=first.value,
        late=first.late,
        events=[
            (
                "opened",
                {
                    "severity": first.severity,
                    "rules_version": rules.version,
                    **first.event_detail(),
                },
            )
        ],
    )
    return _fold(state, group[1:], rules)


def _fold(state: _FlagState, breaches: Iterable[_Breach], rules: RuleSet) -> _FlagState:
    """``state`` after newly linked ``breaches`` (in measured_at order); events appended."""
    state = replace(state, events=list(state.events))
    worse = min if _lower_is_worse(rules).get(state.rule_id, state.direction == "low") else max
    for breach in breaches:
        state.breach_count += 1
        if not breach.late:  # a reading of the present: the flag is news now, escalation too
            state.late = False
        if breach.loinc == state.loinc:
            if breach.measured_at >= state.last_breach_at:
                state.last_value = breach.value
            if breach.measured_at < state.opened_at:  # an older record that arrived late
                state.first_value = breach.value
            state.worst_value = worse(state.worst_value, breach.value)
        state.opened_at = min(state.opened_at, breach.measured_at)
        state.last_breach_at = max(state.last_breach_at, breach.measured_at)
        if (
            state.status == "acknowledged"
            and state.acknowledged_at is not None
            and breach.measured_at > state.acknowledged_at
        ):
            # Acknowledging saw what was there, not what comes next: a new breach measured
            # after it puts the flag back in the queue.
            state.events.append(
                (
                    "breach",
                    {"reopened": True, "rules_version": rules.version, **breach.event_detail()},
                )
            )
            state.status = "open"
            state.acknowledged_at = None
            state.acknowledged_by = None
        if SEVERITY_RANK[breach.severity] > SEVERITY_RANK[state.severity]:
            detail: dict[str, Any] = {
                "from": state.severity,
                "to": breach.severity,
                "rules_version": rules.version,
                **breach.event_detail(),
            }
            if state.status == "acknowledged":
                detail["reopened"] = True
                state.status = "open"
                state.acknowledged_at = None
                state.acknowledged_by = None
            state.severity = breach.severity
            state.threshold = breach.threshold()
            state.rules_version = rules.version
            state.severity_raised = True
            state.events.append(("severity_raised", detail))
    return state


def _insert_flags(
    conn: psycopg.Connection[Any], states: Sequence[_FlagState]
) -> dict[FlagKey, int]:
    """Insert new flags; those that lost a race to a concurrent open flag are left out."""
    if not states:
        return {}
    rows = conn.execute(
        "INSERT INTO flags (patient_id, rule_id, direction, kind, loinc, title, severity, status,"
        " threshold, rules_version, opened_at, last_breach_at, breach_count, first_value,"
        " last_value, worst_value, late)"
        " SELECT u.patient_id, u.rule_id, u.direction, u.kind, u.loinc, u.title, u.severity,"
        " 'open', u.threshold::jsonb, u.rules_version, u.opened_at, u.last_breach_at,"
        " u.breach_count, u.first_value, u.last_value, u.worst_value, u.late"
        " FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::text[], %s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[],"
        " %s::int[], %s::float8[], %s::float8[], %s::float8[], %s::bool[])"
        " AS u(patient_id, rule_id, direction, kind, loinc, title, severity, threshold,"
        " rules_version, opened_at, last_breach_at, breach_count, first_value, last_value,"
        " worst_value, late)"
        " ON CONFLICT (patient_id, rule_id, direction) WHERE status <> 'resolved' DO NOTHING"
        " RETURNING patient_id, rule_id, direction, flag_id",
        (
            [s.patient_id for s in states],
            [s.rule_id for s in states],
            [s.direction for s in states],
            [s.kind for s in states],
            [s.loinc for s in states],
            [s.title for s in states],
            [s.severity for s in states],
            [json.dumps(s.threshold) for s in states],
            [s.rules_version for s in states],
            [s.opened_at for s in states],
            [s.last_breach_at for s in states],
            [s.breach_count for s in states],
            [s.first_value for s in states],
            [s.last_value for s in states],
            [s.worst_value for s in states],
            [s.late for s in states],
        ),
    ).fetchall()
    return {
        (patient_id, rule_id, direction): flag_id
        for patient_id, rule_id, direction, flag_id in rows
    }


def _link_readings(
    conn: psycopg.Connection[Any], links: Sequence[tuple[int | None, _Breach]]
) -> set[tuple[int, uuid.UUID]]:
    """Link breaches to flags; return the (flag_id, reading_id) pairs that were not yet linked."""
    if not links:
        return set()
    rows = conn.execute(
        "INSERT INTO flag_readings (flag_id, reading_id, measured_at, loinc, value, severity)"
        " SELECT * FROM unnest(%s::bigint[], %s::uuid[], %s::timestamptz[], %s::text[],"
        " %s::float8[], %s::text[])"
        " ON CONFLICT (flag_id, reading_id) DO NOTHING"
        " RETURNING flag_id, reading_id",
        (
            [flag_id for flag_id, _ in links],
            [b.reading_id for _, b in links],
            [b.measured_at for _, b in links],
            [b.loinc for _, b in links],
            [b.value for _, b in links],
            [b.severity for _, b in links],
        ),
    ).fetchall()
    return {(flag_id, reading_id) for flag_id, reading_id in rows}


def _update_flags(conn: psycopg.Connection[Any], states: Sequence[_FlagState]) -> None:
    if not states:
        return
    conn.execute(
        "UPDATE flags AS f SET severity = u.severity, status = u.status,"
        " severity_since = CASE WHEN f.severity IS DISTINCT FROM u.severity THEN now()"
        " ELSE f.severity_since END,"
        " threshold = u.threshold::jsonb, rules_version = u.rules_version,"
        " last_breach_at = u.last_breach_at, breach_count = u.breach_count,"
        " last_value = u.last_value, worst_value = u.worst_value,"
        " acknowledged_at = u.acknowledged_at, acknowledged_by = u.acknowledged_by,"
        " opened_at = u.opened_at, first_value = u.first_value, late = u.late"
        " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[], %s::text[],"
        " %s::timestamptz[], %s::int[], %s::float8[], %s::float8[], %s::timestamptz[],"
        " %s::text[], %s::timestamptz[], %s::float8[], %s::bool[])"
        " AS u(flag_id, severity, status, threshold, rules_version, last_breach_at,"
        " breach_count, last_value, worst_value, acknowledged_at, acknowledged_by,"
        " opened_at, first_value, late)"
        " WHERE f.flag_id = u.flag_id",
        (
            [s.flag_id for s in states],
            [s.severity for s in states],
            [s.status for s in states],
            [json.dumps(s.threshold) for s in states],
            [s.rules_version for s in states],
            [s.last_breach_at for s in states],
            [s.breach_count for s in states],
            [s.last_value for s in states],
            [s.worst_value for s in states],
            [s.acknowledged_at for s in states],
            [s.acknowledged_by for s in states],
            [s.opened_at for s in states],
            [s.first_value for s in states],
            [s.late for s in states],
        ),
    )


def _insert_events(conn: psycopg.Connection[Any], states: Iterable[_FlagState]) -> None:
    events = [(s.flag_id, event, detail) for s in states for event, detail in s.events]
    if not events:
        return
    conn.execute(
        "INSERT INTO flag_events (flag_id, event, actor, detail)"
        " SELECT u.flag_id, u.event, %s, u.detail::jsonb"
        " FROM unnest(%s::bigint[], %s::text[], %s::text[]) AS u(flag_id, event, detail)",
        (
            RULES_ACTOR,
            [flag_id for flag_id, _, _ in events],
            [event for _, event, _ in events],
            [json.dumps(detail) for _, _, detail in events],
        ),
    )


# --- reading flags ------------------------------------------------------------------------------

_FLAG_SELECT: Final = (
    "SELECT f.flag_id, f.patient_id, p.display_name AS patient_name, f.rule_id, f.kind,"
    " f.title, f.direction, f.loinc, f.severity, f.status, f.opened_at, f.last_breach_at,"
    " f.breach_count, f.first_value, f.last_value, f.worst_value, f.threshold,"
    " f.rules_version, f.acknowledged_at, f.acknowledged_by, f.resolved_at, f.resolved_by,"
    " f.resolution_note, f.assignee, f.late, f.severity_since, s.until AS snoozed_until,"
    " p.program"
    " FROM flags f JOIN patients p ON p.patient_id = f.patient_id"
    " LEFT JOIN active_snoozes s"
    "  ON (s.patient_id, s.rule_id, s.direction) = (f.patient_id, f.rule_id, f.direction)"
)


def _with_unit(row: dict[str, Any]) -> dict[str, Any]:
    metric = metric_for(row["loinc"])
    row["unit"] = metric.unit if metric else None
    return row


def list_flags(
    conn: psycopg.Connection[Any],
    *,
    statuses: Sequence[str] = ACTIVE_STATUSES,
    patient_id: str | None = None,
    patient_ids: Collection[str] | None = None,
    assignee: str | None = None,
    severities: Sequence[str] | None = None,
    rule_id: str | None = None,
    program: str | None = None,
    team_id: str | None = None,
    include_snoozed: bool = False,
    limit: int = 500,
) -> list[dict[str, Any]]:
    """Flags in triage order: most severe first, then oldest ``opened_at`` first.

    Each flag is a dict of its columns plus ``patient_name``, ``program``, ``unit`` (of
    ``loinc``) and ``snoozed_until``. Snoozed flags are left out unless ``include_snoozed``.
    ``patient_ids`` limits the list to those patients (a user's care teams'); the other
    filters are the triage queue's.
    """
    if isinstance(statuses, str):
        statuses = (statuses,)
    unknown = sorted(set(statuses) - set(FLAG_STATUSES))
    if unknown:
        raise ValueError(f"unknown flag status(es) {', '.join(unknown)}")
    if severities is not None and set(severities) - set(SEVERITIES):
        raise ValueError(f"unknown severity in {', '.join(severities)}")
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIST_LIMIT}, not {limit}")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _FLAG_SELECT  # noqa: S608 - constant SQL; every value is a parameter
            + " WHERE f.status = ANY(%(statuses)s::text[])"
            " AND (%(patient_id)s::text IS NULL OR f.patient_id = %(patient_id)s::text)"
            " AND (%(ids)s::text[] IS NULL OR f.patient_id = ANY(%(ids)s::text[]))"
            " AND (%(assignee)s::text IS NULL OR f.assignee = %(assignee)s::text)"
            " AND (%(severities)s::text[] IS NULL OR f.severity = ANY(%(severities)s::text[]))"
            " AND (%(rule_id)s::text IS NULL OR f.rule_id = %(rule_id)s::text)"
            " AND (%(program)s::text IS NULL OR p.program = %(program)s::text)"
            " AND (%(team_id)s::text IS NULL OR EXISTS (SELECT 1 FROM team_patients tp"
            "      WHERE tp.team_id = %(team_id)s::text AND tp.patient_id = f.patient_id))"
            " AND (%(include_snoozed)s OR s.until IS NULL)"
            " ORDER BY array_position(%(order)s::text[], f.severity), f.opened_at, f.flag_id"
            " LIMIT %(limit)s",
            {
                "statuses": list(statuses),
                "patient_id": patient_id,
                "ids": sorted(patient_ids) if patient_ids is not None else None,
                "assignee": assignee,
                "severities": list(severities) if severities is not None else None,
                "rule_id": rule_id,
                "program": program,
                "team_id": team_id,
                "include_snoozed": include_snoozed,
                "order": list(SEVERITIES),
                "limit": limit,
            },
        ).fetchall()
    return [_with_unit(row) for row in rows]


def flag_patient(conn: psycopg.Connection[Any], *, flag_id: int) -> str | None:
    """Whose flag it is; None when there is no such flag."""
    row = conn.execute("SELECT patient_id FROM flags WHERE flag_id = %s", (flag_id,)).fetchone()
    return row[0] if row else None


def get_flag(conn: psycopg.Connection[Any], *, flag_id: int) -> dict[str, Any] | None:
    """One flag as in :func:`list_flags`, plus its ``readings``, ``events`` and
    ``escalations``; None if absent."""
    with conn.cursor(row_factory=dict_row) as cur:
        flag = cur.execute(_FLAG_SELECT + " WHERE f.flag_id = %s", (flag_id,)).fetchone()
        if flag is None:
            return None
        flag["readings"] = cur.execute(
            "SELECT reading_id, measured_at, loinc, value, severity FROM flag_readings"
            " WHERE flag_id = %s ORDER BY measured_at, reading_id",
            (flag_id,),
        ).fetchall()
        flag["events"] = cur.execute(
            "SELECT at, event, actor, detail FROM flag_events WHERE flag_id = %s ORDER BY event_id",
            (flag_id,),
        ).fetchall()
        flag["escalations"] = cur.execute(
            "SELECT severity, waited, escalated_at, notified_at, notify_error"
            " FROM flag_escalations WHERE flag_id = %s ORDER BY escalation_id",
            (flag_id,),
        ).fetchall()
    return _with_unit(flag)


def counts_by_severity(
    conn: psycopg.Connection[Any], *, patient_ids: Collection[str] | None = None
) -> dict[str, int]:
    """Open and acknowledged flags per severity, every severity present (most severe first);
    snoozed ones are not counted (the triage queue does not show them). ``patient_ids``
    limits the count to those patients."""
    counts = dict.fromkeys(SEVERITIES, 0)
    rows = conn.execute(
        "SELECT f.severity, count(*) FROM flags f LEFT JOIN active_snoozes s"
        " ON (s.patient_id, s.rule_id, s.direction) = (f.patient_id, f.rule_id, f.direction)"
        " WHERE f.status <> 'resolved' AND s.until IS NULL"
        " AND (%(ids)s::text[] IS NULL OR f.patient_id = ANY(%(ids)s::text[]))"
        " GROUP BY f.severity",
        {"ids": sorted(patient_ids) if patient_ids is not None else None},
    ).fetchall()
    for severity, count in rows:
        counts[severity] = count
    return counts


# --- clinician actions --------------------------------------------------------------------------


def acknowledge_flag(
    conn: psycopg.Connection[Any], *, flag_id: int, actor: str, note: str | None = None
) -> dict[str, Any] | None:
    """Acknowledge an open flag; return it (see :func:`get_flag`), or None if it does not exist.

    Acknowledging an acknowledged flag changes nothing. A resolved flag raises
    :class:`FlagStateError`.
    """
    _require_actor(actor)
    status = _lock_flag_status(conn, flag_id=flag_id)
    if status is None:
        return None
    if status == "resolved":
        raise FlagStateError(f"flag {flag_id} is resolved; it cannot be acknowledged")
    if status == "open":
        conn.execute(
            "UPDATE flags SET status = 'acknowledged', acknowledged_at = now(),"
            " acknowledged_by = %s WHERE flag_id = %s",
            (actor, flag_id),
        )
        _insert_action_event(conn, flag_id=flag_id, event="acknowledged", actor=actor, note=note)
    return get_flag(conn, flag_id=flag_id)


def resolve_flag(
    conn: psycopg.Connection[Any], *, flag_id: int, actor: str, note: str | None
) -> dict[str, Any] | None:
    """Resolve an open or acknowledged flag; return it, or None if it does not exist.

    Resolving a resolved flag changes nothing. The next breach of the rule opens a new flag.
    """
    _require_actor(actor)
    status = _lock_flag_status(conn, flag_id=flag_id)
    if status is None:
        return None
    if status != "resolved":
        conn.execute(
            "UPDATE flags SET status = 'resolved', resolved_at = now(), resolved_by = %s,"
            " resolution_note = %s WHERE flag_id = %s",
            (actor, note, flag_id),
        )
        _insert_action_event(
            conn, flag_id=flag_id, event="resolved", actor=actor, note=note, from_status=status
        )
    return get_flag(conn, flag_id=flag_id)


def _require_actor(actor: str) -> None:
    if not isinstance(actor, str) or not actor.strip():
        raise ValueError("actor must name who acted (a non-empty string)")


def _lock_flag_status(conn: psycopg.Connection[Any], *, flag_id: int) -> str | None:
    row = conn.execute(
        "SELECT status FROM flags WHERE flag_id = %s FOR UPDATE", (flag_id,)
    ).fetchone()
    return row[0] if row else None


def _insert_action_event(
    conn: psycopg.Connection[Any],
    *,
    flag_id: int,
    event: str,
    actor: str,
    note: str | None,
    from_status: str | None = None,
) -> None:
    detail: dict[str, Any] = {}
    if note:
        detail["note"] = note
    if from_status:
        detail["from"] = from_status
    conn.execute(
        "INSERT INTO flag_events (flag_id, event, actor, detail) VALUES (%s, %s, %s, %s::jsonb)",
        (flag_id, event, actor, json.dumps(detail)),
    )
