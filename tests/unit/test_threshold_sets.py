"""Threshold sets: defaults, then program, then patient overrides, validated like a rules file;
locks; one rule set per distinct combination."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from analytics.rules import RuleSet, ThresholdRule, load_rules
from analytics.threshold_sets import (
    ThresholdSetError,
    ThresholdVersion,
    check_locks,
    effective_rules,
    load_program_templates,
    locked_paths_touched,
    rules_by_patient,
    tunable_values,
)

NOW = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def defaults() -> RuleSet:
    return load_rules()


def version(
    scope: str, scope_id: str, overrides: dict[str, Any], *, vid: int = 1, locked: tuple = ()
) -> ThresholdVersion:
    return ThresholdVersion(
        version_id=vid,
        scope=scope,  # type: ignore[arg-type]
        scope_id=scope_id,
        overrides=overrides,
        reason="test",
        author="lead",
        created_at=NOW,
        locked=frozenset(locked),
    )


def crisis_limit(rules: RuleSet) -> float:
    rule = rules.rule("hypertensive-crisis")
    assert isinstance(rule, ThresholdRule)
    return rule.conditions[0].limit


def test_patient_overrides_apply_over_the_programs_over_the_defaults(defaults: RuleSet) -> None:
    program = version("program", "hypertension", {"hypertensive-crisis": {"when.0.above": 175}})
    patient = version("patient", "pt-1", {"hypertensive-crisis": {"when.0.above": 170}}, vid=7)
    assert crisis_limit(defaults) == 180
    assert crisis_limit(effective_rules(defaults, program=program)) == 175
    both = effective_rules(defaults, program=program, patient=patient)
    assert crisis_limit(both) == 170
    assert both.version == f"{defaults.version}+program:hypertension@1+patient:pt-1@7"
    assert crisis_limit(defaults) == 180  # the defaults are left alone


def test_a_rule_can_be_switched_off_and_other_kinds_tuned(defaults: RuleSet) -> None:
    tuned = effective_rules(
        defaults,
        program=version(
            "program",
            "heart_failure",
            {"no-readings-48h": {"enabled": False}, "weight-gain-24h": {"by_at_least": 1.2}},
        ),
    )
    ids = {rule.id for rule in tuned.rules}
    assert "no-readings-48h" not in ids and len(ids) == len(defaults.rules) - 1
    assert tuned.rule("weight-gain-24h").by_at_least == 1.2  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"no-such-rule": {"hysteresis": 1}}, "no rule 'no-such-rule'"),
        ({"hypertensive-crisis": {"when.9.above": 1}}, "'9' is not an index of a list of 2"),
        ({"hypertensive-crisis": {"when.0.severity": "urgent"}}, "unknown severity 'urgent'"),
        ({"hypertensive-crisis": {"when.0.above": "high"}}, "must be a finite number"),
        ({"weight-gain-24h": {"by_at_least": -1}}, "must be > 0"),
        ({"hypertensive-crisis": {"enabled": "no"}}, "enabled must be true or false"),
        ({"hypertensive-crisis": {"id": "renamed"}}, "a rule's id cannot be overridden"),
        ({"hypertensive-crisis": {"when.00.above": 1}}, "'00' is not an index"),
        ({"weight-gain-24h": {"by_at_least": 10**400}}, "must be a finite number"),
        ({"hypertensive-crisis": {"when.0.above": 10**400}}, "must be a finite number"),
    ],
)
def test_a_bad_override_is_refused_with_the_reason(
    defaults: RuleSet, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(ThresholdSetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        effective_rules(defaults, patient=version("patient", "pt-1", overrides))


def test_a_locked_program_value_cannot_be_changed_for_one_patient() -> None:
    program = version("program", "copd", {}, locked=("spo2-below-target-scale-2.when.0.below",))
    assert locked_paths_touched(program, {"spo2-below-target-scale-2": {"when.0.below": 85}}) == [
        "spo2-below-target-scale-2.when.0.below"
    ]
    assert locked_paths_touched(program, {"spo2-below-target-scale-2": {"enabled": False}}) == [
        "spo2-below-target-scale-2.when.0.below"
    ]
    assert locked_paths_touched(program, {"spo2-below-target-scale-2": {"when.1.below": 80}}) == []
    assert locked_paths_touched(None, {"x": {"y": 1}}) == []


def test_patients_with_the_same_versions_share_one_rule_set(defaults: RuleSet) -> None:
    programs = {"copd": version("program", "copd", {"spo2-below-baseline": {"k": 2.5}}, vid=3)}
    overrides = {"p3": version("patient", "p3", {"fever": {"when.0.above": 38.5}}, vid=9)}
    by_patient = rules_by_patient(
        defaults,
        {"p1": "copd", "p2": "copd", "p3": "copd", "p4": "general"},
        programs=programs,
        overrides=overrides,
    )
    assert by_patient["p1"] is by_patient["p2"]
    assert by_patient["p3"] is not by_patient["p1"]
    assert by_patient["p4"] is defaults
    assert by_patient["p3"].version.endswith("+program:copd@3+patient:p3@9")


def test_a_lock_must_name_a_value_of_the_rules(defaults: RuleSet) -> None:
    check_locks(defaults, frozenset({"hypertensive-crisis.when.0.above", "fever.hysteresis"}))
    for lock in ("nope.when.0.above", "hypertensive-crisis", "fever.when.7.above"):
        with pytest.raises(ThresholdSetError, match="lock"):
            check_locks(defaults, frozenset({lock}))


def test_the_shipped_program_templates_apply_and_lock_guideline_values(defaults: RuleSet) -> None:
    templates = load_program_templates(defaults)
    assert set(templates) == {"hypertension", "heart_failure", "copd", "diabetes"}
    for template in templates.values():
        assert template.source and template.templates_version
    hypertension = templates["hypertension"]
    assert "hypertensive-crisis.when.0.above" in hypertension.locked
    program = version("program", "hypertension", dict(hypertension.overrides))
    assert effective_rules(defaults, program=program).rule("systolic-weekly-rise").severity == (
        "medium"
    )
    locked = version(
        "program", "hypertension", dict(hypertension.overrides), locked=tuple(hypertension.locked)
    )
    assert locked_paths_touched(locked, {"hypertensive-crisis": {"when.0.above": 200}}) == [
        "hypertensive-crisis.when.0.above"
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('version = "t"\n[programs.oncology]\nsource = "x"\n', "not a care program"),
        ('version = "t"\n[programs.copd]\nsource = "x"\nlocked = ["fever.nope"]\n', "lock"),
        ('version = "t"\n[programs.copd]\nsource = "x"\noverrides.nope.above = 1\n', "no rule"),
        ('version = "t"\n[programs.copd]\noverrides.fever.label = "x"\n', "source"),
        ('[programs.copd]\nsource = "x"\n', "version"),
        ("version = ", "cannot read"),
    ],
)
def test_a_bad_template_file_is_refused_with_the_reason(
    defaults: RuleSet, tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "templates.toml"
    path.write_text(text)
    with pytest.raises(ThresholdSetError, match=message):
        load_program_templates(defaults, path)


def test_tunable_values_are_the_paths_an_override_names(defaults: RuleSet) -> None:
    tables = {t["id"]: t for t in defaults.definition["rules"]}
    crisis = tunable_values(tables["hypertensive-crisis"])
    assert crisis == {
        "hysteresis": 10,
        "when.0.above": 180,
        "when.0.severity": "critical",
        "when.1.above": 120,
        "when.1.severity": "critical",
    }
    assert tunable_values(tables["news2"])["severities.medium"] == "high"
    # Every path can be overridden with its own value: the rules come out the same.
    for rule_id, table in tables.items():
        same = version("program", "copd", {rule_id: tunable_values(table)})
        assert effective_rules(defaults, program=same).rule(rule_id) == defaults.rule(rule_id)
