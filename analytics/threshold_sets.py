"""Threshold sets: global defaults, then program templates, then per-patient overrides.

The defaults are the rules file (:func:`analytics.rules.load_rules`). A care program
(hypertension, heart failure, COPD, diabetes) and a patient can each have a versioned set of
**overrides** on top: who changed what, when and why is kept for every version, and the
latest version of each scope is in force. A patient's rules are the defaults, with their
program's overrides, with their own overrides; every flag records the version label of the
rules that raised it, e.g. ``2026.11-defaults.2+program:copd@3+patient:pt-0042@7``.

An override names a rule and, inside its ``[[rules]]`` table, a key by dotted path with a new
value: ``{"hypertensive-crisis": {"when.0.above": 170}}`` lowers the systolic crisis limit;
``{"weight-gain-24h": {"by_at_least": 1.2}}``; ``{"no-readings-48h": {"enabled": false}}``
switches a rule off. The result is validated exactly like a rules file, so a bad override is
refused with the same messages.

A care-team lead can **lock** a value at program level (``locked = ["hypertensive-crisis.when.0
.above"]``): a patient override of a locked path is refused. Pure: no I/O here; the database
shell is :mod:`analytics.threshold_store`.
"""

from __future__ import annotations

import copy
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Literal

from analytics import AnalyticsError
from analytics.rules import PROGRAMS, RulesConfigError, RuleSet, rules_from_mapping

Scope = Literal["program", "patient"]
SCOPES: Final[tuple[str, ...]] = ("program", "patient")
#: The pseudo-key that switches a rule off for a program or a patient.
ENABLED: Final = "enabled"
#: The shipped first version of each care program (``program_templates.toml``).
TEMPLATES_FILE: Final = Path(__file__).with_name("program_templates.toml")


class ThresholdSetError(AnalyticsError, ValueError):
    """Overrides that cannot apply (the message says which and why)."""


@dataclass(frozen=True)
class ThresholdVersion:
    """One version of a program's or a patient's overrides."""

    version_id: int
    scope: Scope
    scope_id: str  # the program name or the patient id
    overrides: Mapping[str, Mapping[str, Any]]  # rule id -> dotted path -> value
    reason: str
    author: str
    created_at: datetime
    locked: frozenset[str] = field(default_factory=frozenset)  # "rule-id.path", programs only

    @property
    def label(self) -> str:
        return f"{self.scope}:{self.scope_id}@{self.version_id}"


def effective_rules(
    defaults: RuleSet,
    *,
    program: ThresholdVersion | None = None,
    patient: ThresholdVersion | None = None,
) -> RuleSet:
    """The defaults with the program's overrides, then the patient's."""
    if program is None and patient is None:
        return defaults
    data = copy.deepcopy(dict(defaults.definition))
    label = defaults.version
    for version in (program, patient):
        if version is not None:
            apply_overrides(data, version.overrides, where=version.label)
            label += f"+{version.label}"
    data["version"] = label
    try:
        return rules_from_mapping(data, source=label)
    except RulesConfigError as exc:
        raise ThresholdSetError(str(exc)) from None
    except (TypeError, ValueError, OverflowError) as exc:  # a value no rule can hold
        raise ThresholdSetError(f"{label}: a value cannot be used: {exc}") from None


def apply_overrides(
    data: dict[str, Any], overrides: Mapping[str, Mapping[str, Any]], *, where: str
) -> None:
    """Change the rules file's tables in place (validation comes after, on the result)."""
    tables = {rule.get("id"): rule for rule in data.get("rules", [])}
    for rule_id, changes in overrides.items():
        table = tables.get(rule_id)
        if table is None:
            raise ThresholdSetError(f"{where}: no rule {rule_id!r} to override")
        if not isinstance(changes, Mapping) or not changes:
            raise ThresholdSetError(f"{where}: rule {rule_id!r}: expected path = value pairs")
        for path, value in changes.items():
            if path == ENABLED:
                if value is False:
                    data["rules"] = [r for r in data["rules"] if r.get("id") != rule_id]
                elif value is not True:
                    raise ThresholdSetError(f"{where}: {rule_id}.enabled must be true or false")
                continue
            _set_path(table, path.split("."), value, where=f"{where}: {rule_id}.{path}")


def _set_path(table: Any, parts: Sequence[str], value: Any, *, where: str) -> None:
    node = table
    for part in parts[:-1]:
        node = _child(node, part, where=where)
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, where=where)] = value
    elif isinstance(node, dict):
        if node is table and last in ("id", "kind"):
            raise ThresholdSetError(f"{where}: a rule's {last} cannot be overridden")
        node[last] = value
    else:
        raise ThresholdSetError(f"{where}: not a table or a list")


def _child(node: Any, part: str, *, where: str) -> Any:
    if isinstance(node, list):
        return node[_index(node, part, where=where)]
    if isinstance(node, dict) and part in node:
        return node[part]
    raise ThresholdSetError(f"{where}: no {part!r} there")


def _index(node: list[Any], part: str, *, where: str) -> int:
    # Written as a plain index ("0", "12"): "00" or other digits would slip past a lock's path.
    if not re.fullmatch(r"0|[1-9][0-9]*", part) or int(part) >= len(node):
        raise ThresholdSetError(f"{where}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def check_locks(defaults: RuleSet, locked: frozenset[str]) -> None:
    """Each lock must name a value of the rules (``rule-id.path``)."""
    tables = {rule.get("id"): rule for rule in defaults.definition.get("rules", [])}
    for lock in sorted(locked):
        rule_id, _, path = lock.partition(".")
        if rule_id not in tables or not path:
            raise ThresholdSetError(f"lock {lock!r}: no rule {rule_id!r} with such a value")
        node: Any = tables[rule_id]
        for part in path.split("."):
            node = _child(node, part, where=f"lock {lock!r}")


def locked_paths_touched(
    program: ThresholdVersion | None, overrides: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """The locked paths of the program that patient ``overrides`` would change (a rule
    switched off touches every lock on it)."""
    if program is None or not program.locked:
        return []
    touched = []
    for rule_id, changes in overrides.items():
        for path in changes:
            full = f"{rule_id}.{path}"
            for lock in program.locked:
                if (
                    (path == ENABLED and lock.startswith(f"{rule_id}."))
                    or full == lock
                    or full.startswith(f"{lock}.")
                    or lock.startswith(f"{full}.")
                ):
                    touched.append(lock)
    return sorted(set(touched))


def rules_by_patient(
    defaults: RuleSet,
    patients: Mapping[str, str],
    *,
    programs: Mapping[str, ThresholdVersion],
    overrides: Mapping[str, ThresholdVersion],
) -> dict[str, RuleSet]:
    """Each patient's rules (``patients``: patient id -> program), one RuleSet object per
    distinct (program version, patient version) so that callers can group patients by it."""
    built: dict[tuple[str | None, str | None], RuleSet] = {}
    result = {}
    for patient_id, program in patients.items():
        program_version = programs.get(program)
        patient_version = overrides.get(patient_id)
        key = (
            program_version.label if program_version else None,
            patient_version.label if patient_version else None,
        )
        if key not in built:
            built[key] = effective_rules(defaults, program=program_version, patient=patient_version)
        result[patient_id] = built[key]
    return result


@dataclass(frozen=True)
class ProgramTemplate:
    """The shipped first version of a care program's overrides."""

    program: str
    overrides: Mapping[str, Mapping[str, Any]]
    locked: frozenset[str]
    source: str
    templates_version: str


def load_program_templates(
    defaults: RuleSet, path: Path | str = TEMPLATES_FILE
) -> dict[str, ProgramTemplate]:
    """The templates of ``path``, each checked against ``defaults`` as saving would check it
    (every override applies, every lock names a value)."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ThresholdSetError(f"{path}: cannot read the program templates: {exc}") from None
    version = data.get("version")
    programs = data.get("programs")
    if not isinstance(version, str) or not isinstance(programs, dict):
        raise ThresholdSetError(f"{path}: expected `version` and [programs.<name>] tables")
    templates = {}
    for program, raw in programs.items():
        where = f"{path}: programs.{program}"
        if program not in PROGRAMS or not isinstance(raw, dict):
            raise ThresholdSetError(f"{where}: not a care program ({', '.join(PROGRAMS)})")
        unknown = set(raw) - {"source", "locked", "overrides"}
        if unknown:
            raise ThresholdSetError(f"{where}: unknown keys {sorted(unknown)}")
        template = ProgramTemplate(
            program=program,
            overrides=raw.get("overrides", {}),
            locked=frozenset(raw.get("locked", [])),
            source=str(raw.get("source", "")),
            templates_version=version,
        )
        if not template.source:
            raise ThresholdSetError(f"{where}: say where the values come from (`source`)")
        check_locks(defaults, template.locked)
        draft = ThresholdVersion(
            version_id=0,
            scope="program",
            scope_id=program,
            overrides=template.overrides,
            reason="template",
            author="template",
            created_at=datetime.min.replace(tzinfo=UTC),
            locked=template.locked,
        )
        effective_rules(defaults, program=draft)
        templates[program] = template
    return templates


#: Keys of a rule's table that say what it is rather than tune it.
DESCRIPTIVE_KEYS: Final = frozenset(
    {
        "id",
        "kind",
        "title",
        "source",
        "label",
        "metric",
        "programs",
        "direction",
        "spo2_scale",
        "check",
        "statistic",
    }
)


def tunable_values(table: Mapping[str, Any]) -> dict[str, Any]:
    """A rule's values a care team can change, by the dotted path an override names
    (``when.0.above``, ``by_at_least``, ``severity``), in the table's order."""
    values: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, Mapping):
            for key, value in node.items():
                if prefix == "" and key in DESCRIPTIVE_KEYS:
                    continue
                if key in ("label", "metric"):
                    continue
                walk(value, f"{prefix}{key}.")
        elif isinstance(node, list) and all(isinstance(item, Mapping) for item in node):
            for index, item in enumerate(node):
                walk(item, f"{prefix}{index}.")
        else:
            values[prefix.removesuffix(".")] = node

    walk(table, "")
    return values
