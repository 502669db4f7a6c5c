"""The threshold rules: the packaged defaults, their validation and the vectorised evaluation."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.__main__ import main, write_rules_table
from analytics.rules import (
    BREACH_COLUMNS,
    Condition,
    RulesConfigError,
    RuleSet,
    evaluate_thresholds,
    load_rules,
    rules_from_mapping,
)
from carewatch_contract.metrics import Loinc

T0 = datetime(2025, 3, 1, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def rules() -> RuleSet:
    return load_rules()


def readings_frame(*rows: tuple[str, float], patient_id: str = "patient-1") -> pd.DataFrame:
    """Readings (loinc, value), one minute apart, with fresh reading ids."""
    return pd.DataFrame(
        {
            "reading_id": [uuid.uuid4() for _ in rows],
            "patient_id": patient_id,
            "loinc": [loinc for loinc, _ in rows],
            "value": [float(value) for _, value in rows],
            "measured_at": pd.to_datetime(
                [T0 + timedelta(minutes=index) for index in range(len(rows))], utc=True
            ),
        }
    )


def breach_of(rules: RuleSet, loinc: str, value: float) -> tuple[str, str] | None:
    """(rule_id, severity) of the one breach of a single reading, or None."""
    result = evaluate_thresholds(readings_frame((loinc, value)), rules)
    assert len(result) <= 1
    if result.empty:
        return None
    return (result.loc[0, "rule_id"], result.loc[0, "severity"])


# --- the packaged defaults at their boundaries -------------------------------------------------


@pytest.mark.parametrize(
    ("loinc", "value", "expected"),
    [
        (Loinc.SYSTOLIC, 180, None),
        (Loinc.SYSTOLIC, 180.5, ("hypertensive-crisis", "critical")),
        (Loinc.SYSTOLIC, 181, ("hypertensive-crisis", "critical")),
        (Loinc.DIASTOLIC, 120, None),
        (Loinc.DIASTOLIC, 121, ("hypertensive-crisis", "critical")),
        (Loinc.SPO2, 98, None),
        (Loinc.SPO2, 94, None),
        (Loinc.SPO2, 93, ("spo2-below-target", "high")),
        (Loinc.SPO2, 92, ("spo2-below-target", "high")),
        (Loinc.SPO2, 91, ("spo2-below-target", "critical")),
        (Loinc.GLUCOSE, 70, None),
        (Loinc.GLUCOSE, 69, ("hypoglycaemia", "medium")),
        (Loinc.GLUCOSE, 54, ("hypoglycaemia", "medium")),
        (Loinc.GLUCOSE, 53, ("hypoglycaemia", "critical")),
        (Loinc.GLUCOSE, 180, None),
        (Loinc.GLUCOSE, 250, None),
        (Loinc.GLUCOSE, 251, ("hyperglycaemia", "high")),
        (Loinc.BODY_TEMPERATURE, 38.0, None),
        (Loinc.BODY_TEMPERATURE, 38.1, ("fever", "medium")),
        (Loinc.BODY_TEMPERATURE, 39.0, ("fever", "medium")),
        (Loinc.BODY_TEMPERATURE, 39.1, ("fever", "high")),
        (Loinc.HEART_RATE, 200, ("tachycardia", "high")),
    ],
)
def test_default_thresholds_at_their_boundaries(
    rules: RuleSet, loinc: str, value: float, expected: tuple[str, str] | None
) -> None:
    assert breach_of(rules, str(loinc), value) == expected


def test_breach_row_explains_itself(rules: RuleSet) -> None:
    frame = readings_frame((Loinc.SPO2, 91))
    result = evaluate_thresholds(frame, rules)

    assert list(result.columns) == list(BREACH_COLUMNS)
    assert result.to_dict("records") == [
        {
            "reading_id": frame.loc[0, "reading_id"],
            "patient_id": "patient-1",
            "rule_id": "spo2-below-target",
            "kind": "threshold",
            "direction": "low",
            "loinc": "59408-5",
            "value": 91.0,
            "measured_at": pd.Timestamp(T0),
            "severity": "critical",
            "limit": 92.0,
            "label": "SpO2 <= 91 % (NEWS2 score 3)",
            "title": "SpO2 below target",
        }
    ]


def test_most_severe_condition_wins_whatever_the_file_order(rules: RuleSet) -> None:
    reordered = RuleSet(
        version="reordered",
        rules=tuple(
            rule.__class__(
                id=rule.id,
                title=rule.title,
                kind=rule.kind,
                direction=rule.direction,
                source=rule.source,
                conditions=tuple(reversed(rule.conditions)),
            )
            for rule in rules.thresholds
        ),
    )
    frame = readings_frame((Loinc.GLUCOSE, 50), (Loinc.SPO2, 90), (Loinc.BODY_TEMPERATURE, 40))
    for rule_set in (rules, reordered):
        result = evaluate_thresholds(frame, rule_set)
        assert list(zip(result.rule_id, result.severity, result.limit, strict=True)) == [
            ("hypoglycaemia", "critical", 54.0),
            ("spo2-below-target", "critical", 92.0),
            ("fever", "high", 39.0),
        ]


def test_one_reading_can_breach_several_rules() -> None:
    rule_set = rules_from_mapping(
        {
            "version": "t",
            "rules": [
                {
                    "id": "low-a",
                    "title": "A",
                    "direction": "low",
                    "source": "test",
                    "when": [
                        {"metric": "41653-7", "below": 70, "severity": "medium", "label": "a"}
                    ],
                },
                {
                    "id": "low-b",
                    "title": "B",
                    "direction": "low",
                    "source": "test",
                    "when": [{"metric": "41653-7", "below": 80, "severity": "low", "label": "b"}],
                },
            ],
        }
    )
    result = evaluate_thresholds(readings_frame((Loinc.GLUCOSE, 60)), rule_set)
    assert list(result.rule_id) == ["low-a", "low-b"]


def test_no_readings_and_no_breaches_give_an_empty_frame_with_the_breach_columns(
    rules: RuleSet,
) -> None:
    for frame in (readings_frame(), readings_frame((Loinc.SPO2, 97), (Loinc.HEART_RATE, 70))):
        result = evaluate_thresholds(frame, rules)
        assert result.empty
        assert list(result.columns) == list(BREACH_COLUMNS)
        assert str(result["measured_at"].dtype) == "datetime64[ns, UTC]"


def test_nan_values_never_breach(rules: RuleSet) -> None:
    assert evaluate_thresholds(readings_frame((Loinc.SPO2, float("nan"))), rules).empty


def test_measured_at_must_be_timezone_aware(rules: RuleSet) -> None:
    frame = readings_frame((Loinc.SPO2, 90))
    frame["measured_at"] = frame["measured_at"].dt.tz_localize(None)
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_thresholds(frame, rules)


def test_other_time_zones_come_out_in_utc(rules: RuleSet) -> None:
    frame = readings_frame((Loinc.SPO2, 90))
    frame["measured_at"] = frame["measured_at"].dt.tz_convert("America/New_York")
    result = evaluate_thresholds(frame, rules)
    assert result.loc[0, "measured_at"] == pd.Timestamp(T0)
    assert str(result["measured_at"].dtype) == "datetime64[ns, UTC]"


def test_missing_columns_are_named(rules: RuleSet) -> None:
    frame = readings_frame((Loinc.SPO2, 90)).drop(columns=["patient_id"])
    with pytest.raises(ValueError, match="patient_id"):
        evaluate_thresholds(frame, rules)


# --- determinism -------------------------------------------------------------------------------

_METRIC_VALUES = st.sampled_from(
    [
        (str(Loinc.SYSTOLIC), st.integers(90, 230)),
        (str(Loinc.DIASTOLIC), st.integers(50, 140)),
        (str(Loinc.SPO2), st.integers(85, 100)),
        (str(Loinc.GLUCOSE), st.integers(40, 300)),
        (str(Loinc.BODY_TEMPERATURE), st.sampled_from([36.5, 38.0, 38.1, 39.0, 39.1, 40.2])),
        (str(Loinc.HEART_RATE), st.integers(40, 150)),
    ]
).flatmap(lambda pair: st.tuples(st.just(pair[0]), pair[1]))

_READINGS = st.lists(
    st.tuples(
        st.uuids(),
        st.sampled_from(["patient-1", "patient-2", "patient-3"]),
        _METRIC_VALUES,
        st.integers(0, 30),  # minutes after T0: ties in measured_at are common
    ),
    min_size=1,
    max_size=40,
    unique_by=lambda row: row[0],
)


def _frame(rows: list[tuple[uuid.UUID, str, tuple[str, float], int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "reading_id": [reading_id for reading_id, _, _, _ in rows],
            "patient_id": [patient_id for _, patient_id, _, _ in rows],
            "loinc": [loinc for _, _, (loinc, _), _ in rows],
            "value": [float(value) for _, _, (_, value), _ in rows],
            "measured_at": pd.to_datetime(
                [T0 + timedelta(minutes=minutes) for _, _, _, minutes in rows], utc=True
            ),
        }
    )


@settings(max_examples=60, deadline=None)
@given(rows=_READINGS, data=st.data())
def test_breaches_do_not_depend_on_order_or_repeated_rows(
    rules: RuleSet,
    rows: list[tuple[uuid.UUID, str, tuple[str, float], int]],
    data: st.DataObject,
) -> None:
    expected = evaluate_thresholds(_frame(rows), rules)

    repeated = data.draw(st.lists(st.sampled_from(rows), max_size=10), label="repeated")
    shuffled = data.draw(st.permutations(rows + repeated), label="shuffled")
    result = evaluate_thresholds(_frame(shuffled), rules)

    pd.testing.assert_frame_equal(result, expected)
    assert not result.duplicated(["reading_id", "rule_id"]).any()
    # and each breach agrees with the scalar reading of its rule
    for row in result.itertuples():
        conditions = [c for c in rules.rule(row.rule_id).conditions if c.metric == row.loinc]
        met = [c for c in conditions if c.is_breached_by(row.value)]
        assert met and row.severity in {c.severity for c in met}


def test_two_hundred_thousand_readings_evaluate(rules: RuleSet) -> None:
    size = 200_000
    rng = np.random.default_rng(20250301)
    loincs = np.array([str(Loinc.SPO2), str(Loinc.GLUCOSE), str(Loinc.HEART_RATE)])
    frame = pd.DataFrame(
        {
            "reading_id": [uuid.UUID(int=i) for i in range(size)],
            "patient_id": rng.integers(0, 500, size).astype(str),
            "loinc": loincs[rng.integers(0, len(loincs), size)],
            "value": rng.uniform(40, 300, size).round(1),
            "measured_at": pd.Timestamp(T0) + pd.to_timedelta(rng.integers(0, 86_400, size), "s"),
        }
    )
    frame.loc[frame.loinc == str(Loinc.SPO2), "value"] = rng.uniform(
        85, 100, int((frame.loinc == str(Loinc.SPO2)).sum())
    ).round(0)

    result = evaluate_thresholds(frame, rules)

    spo2 = frame[frame.loinc == str(Loinc.SPO2)].value
    glucose = frame[frame.loinc == str(Loinc.GLUCOSE)].value
    pulse = frame[frame.loinc == str(Loinc.HEART_RATE)].value
    expected = (spo2 < 94).sum() + (glucose < 70).sum() + (glucose > 250).sum()
    expected += (pulse < 41).sum() + (pulse > 130).sum()
    assert len(result) == int(expected)
    assert result["measured_at"].is_monotonic_increasing


# --- configuration errors ----------------------------------------------------------------------

VALID_RULE = """
version = "test-1"

[[rules]]
id = "low-spo2"
title = "Low SpO2"
kind = "threshold"
direction = "low"
source = "test"

  [[rules.when]]
  metric = "59408-5"
  below = 94
  severity = "high"
  label = "SpO2 < 94 %"
"""


def write_rules(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "thresholds.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_valid_file_loads(tmp_path: Path) -> None:
    rules = load_rules(write_rules(tmp_path, VALID_RULE))
    assert rules.version == "test-1"
    assert rules.rules[0].conditions == (
        Condition(
            metric="59408-5", comparison="below", limit=94.0, severity="high", label="SpO2 < 94 %"
        ),
    )


def test_packaged_defaults_cite_their_sources_and_draw_chart_lines(rules: RuleSet) -> None:
    assert rules.version
    assert {rule.id for rule in rules.thresholds} == {
        "hypertensive-crisis",
        "spo2-below-target",
        "spo2-below-target-scale-2",
        "hypoglycaemia",
        "hyperglycaemia",
        "fever",
        "hypotension",
        "bradycardia",
        "tachycardia",
        "hypothermia",
        "bradypnoea",
        "tachypnoea",
    }
    assert all(rule.source for rule in rules.rules)
    assert rules.threshold_lines(str(Loinc.GLUCOSE)) == [
        {
            "metric": "41653-7",
            "limit": 70.0,
            "direction": "low",
            "severity": "medium",
            "label": "Glucose < 70 mg/dL (level 1)",
            "rule_id": "hypoglycaemia",
            "spo2_scale": None,
        },
        {
            "metric": "41653-7",
            "limit": 54.0,
            "direction": "low",
            "severity": "critical",
            "label": "Glucose < 54 mg/dL (level 2)",
            "rule_id": "hypoglycaemia",
            "spo2_scale": None,
        },
        {
            "metric": "41653-7",
            "limit": 250.0,
            "direction": "high",
            "severity": "high",
            "label": "Glucose > 250 mg/dL (level 2)",
            "rule_id": "hyperglycaemia",
            "spo2_scale": None,
        },
    ]
    assert [line["limit"] for line in rules.threshold_lines(str(Loinc.HEART_RATE))] == [41, 130]
    assert rules.threshold_lines(str(Loinc.BODY_WEIGHT)) == []  # weight: trend rules, later


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda text: text.replace('metric = "59408-5"', 'metric = "1234-5"'),
            r"rule 'low-spo2', condition 1: unknown LOINC code '1234-5'",
        ),
        (
            lambda text: text.replace('severity = "high"', 'severity = "urgent"'),
            r"rule 'low-spo2', condition 1: unknown severity 'urgent' \(expected one of critical,",
        ),
        (
            lambda text: text.replace("below = 94", "below = 94\n  above = 100"),
            r"rule 'low-spo2', condition 1: has both `above` and `below`",
        ),
        (
            lambda text: text.replace("below = 94", ""),
            r"rule 'low-spo2', condition 1: has neither `above` nor `below`",
        ),
        (
            lambda text: text.replace("below = 94", "above = 94"),
            r"rule 'low-spo2', condition 1: a 'low' rule compares with `below`, not `above`",
        ),
        (
            lambda text: text.replace("below = 94", 'below = "94"'),
            r"rule 'low-spo2', condition 1: `below` must be a finite number",
        ),
        (
            lambda text: text + text.replace('version = "test-1"', ""),
            r"rule 'low-spo2': duplicate rule id",
        ),
        (
            lambda text: text.replace('direction = "low"', 'direction = "down"'),
            r"rule 'low-spo2': `direction` must be \"high\" or \"low\"",
        ),
        (
            lambda text: text.replace('kind = "threshold"', 'kind = "forecast"'),
            r"rule 'low-spo2': unknown kind 'forecast'",
        ),
        (
            lambda text: text.replace('label = "SpO2 < 94 %"', 'lable = "SpO2 < 94 %"'),
            r"rule 'low-spo2', condition 1: unknown key\(s\) lable",
        ),
        (
            lambda text: text.replace('version = "test-1"', ""),
            r"`version` must be a non-empty string",
        ),
        (
            lambda text: text.replace("[[rules.when]]", "[rules.when]"),
            r"rule 'low-spo2': expected at least one \[\[rules.when\]\] condition",
        ),
        (lambda text: text.replace("[[rules]]", "[[rules"), r"not valid TOML"),
    ],
)
def test_configuration_errors_name_the_rule_and_the_problem(
    tmp_path: Path, change, message: str
) -> None:
    path = write_rules(tmp_path, change(VALID_RULE))
    with pytest.raises(RulesConfigError, match=message) as caught:
        load_rules(path)
    assert str(path) in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(RulesConfigError, match="cannot read the rules file"):
        load_rules(tmp_path / "absent.toml")


# --- command line ------------------------------------------------------------------------------


def test_rules_command_prints_the_rule_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rules"]) == 0
    printed = capsys.readouterr().out
    assert "hypertensive-crisis" in printed
    assert "> 180 mm[Hg]" in printed
    assert "< 54 mg/dL" in printed


def test_rules_command_reports_a_bad_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_rules(tmp_path, VALID_RULE.replace('severity = "high"', 'severity = "urgent"'))
    assert main(["rules", "--rules", str(path)]) == 2
    assert "unknown severity 'urgent'" in capsys.readouterr().err


def test_rules_table_has_one_row_per_condition(rules: RuleSet) -> None:
    out = io.StringIO()
    write_rules_table(rules, source="test", out=out)
    lines = out.getvalue().splitlines()
    first_row = next(i for i, line in enumerate(lines) if line.startswith("---")) + 1
    rows = lines[first_row : lines.index("", first_row)]
    kinds = [rule for rule in rules.rules if rule not in rules.thresholds]
    assert len(rows) == sum(len(rule.conditions) for rule in rules.thresholds) + len(kinds)
    assert rows[0].split()[:2] == ["hypertensive-crisis", "high"]


@pytest.mark.parametrize(
    ("scale", "spo2", "expected"),
    [
        (1, 93, ("spo2-below-target", "high")),
        (1, 91, ("spo2-below-target", "critical")),
        (2, 93, None),  # within the 88-92 % target of a patient at risk of CO2 retention
        (2, 88, None),
        (2, 87, ("spo2-below-target-scale-2", "high")),
        (2, 84, ("spo2-below-target-scale-2", "high")),
        (2, 83, ("spo2-below-target-scale-2", "critical")),
    ],
)
def test_spo2_targets_follow_the_patients_scale(
    rules: RuleSet, scale: int, spo2: float, expected: tuple[str, str] | None
) -> None:
    frame = readings_frame((str(Loinc.SPO2), spo2)).assign(spo2_scale=scale)
    result = evaluate_thresholds(frame, rules)
    found = [(row.rule_id, row.severity) for row in result.itertuples()]
    assert found == ([expected] if expected else [])


def test_a_frame_without_a_scale_column_means_scale_1(rules: RuleSet) -> None:
    assert breach_of(rules, str(Loinc.SPO2), 87) == ("spo2-below-target", "critical")


def test_spo2_scale_must_be_1_or_2(tmp_path: Path) -> None:
    bad = VALID_RULE.replace('direction = "low"', 'direction = "low"\nspo2_scale = 3', 1)
    with pytest.raises(RulesConfigError, match="spo2_scale"):
        load_rules(write_rules(tmp_path, bad))


@pytest.mark.parametrize(
    ("loinc", "value", "expected"),
    [
        (str(Loinc.SYSTOLIC), 91, None),
        (str(Loinc.SYSTOLIC), 90, ("hypotension", "high")),
        (str(Loinc.HEART_RATE), 41, None),
        (str(Loinc.HEART_RATE), 40, ("bradycardia", "high")),
        (str(Loinc.HEART_RATE), 130, None),
        (str(Loinc.HEART_RATE), 131, ("tachycardia", "high")),
        (str(Loinc.BODY_TEMPERATURE), 35.1, None),
        (str(Loinc.BODY_TEMPERATURE), 35.0, ("hypothermia", "high")),
    ],
)
def test_news2_single_parameter_score_3_at_its_band_edges(
    rules: RuleSet, loinc: str, value: float, expected: tuple[str, str] | None
) -> None:
    assert breach_of(rules, loinc, value) == expected
