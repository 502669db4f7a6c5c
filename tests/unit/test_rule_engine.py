"""The rule engine's pure core: signals of every rule kind at their boundaries, and the flags
(episodes) they amount to: hysteresis, auto-resolution, severity steps, lateness, and the
same flags whatever the order the readings arrive in."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.episodes import alerts_per_patient_week, episodes
from analytics.rules import RuleSet, load_rules, rules_from_mapping
from analytics.signals import BETWEEN, BREACH, CLEAR, evaluate

T0 = datetime(2026, 9, 1, 8, 0, tzinfo=UTC)
SYSTOLIC, PULSE, SPO2, WEIGHT = "8480-6", "8867-4", "59408-5", "29463-7"
_ids = itertools.count()


def readings(*rows: tuple[Any, ...], patient_id: str = "pt-1") -> pd.DataFrame:
    """Rows of (hours after T0, loinc, value[, received hours after T0])."""
    records = []
    for row in rows:
        hours, loinc, value = row[:3]
        record = {
            "reading_id": f"r-{next(_ids):06d}",
            "patient_id": patient_id,
            "loinc": loinc,
            "value": float(value),
            "measured_at": T0 + timedelta(hours=hours),
        }
        if len(row) > 3:
            record["received_at"] = T0 + timedelta(hours=row[3])
        records.append(record)
    frame = pd.DataFrame(records)
    frame["measured_at"] = pd.to_datetime(frame["measured_at"], utc=True)
    if "received_at" in frame:
        frame["received_at"] = pd.to_datetime(frame["received_at"], utc=True)
    return frame


def ruleset(*rules: dict[str, Any], resolve_after_minutes: float = 60) -> RuleSet:
    return rules_from_mapping(
        {
            "version": "test",
            "settings": {"resolve_after_minutes": resolve_after_minutes, "late_after_hours": 6},
            "rules": list(rules),
        }
    )


def high_systolic(hysteresis: float = 5) -> dict[str, Any]:
    return {
        "id": "high-sbp",
        "title": "High systolic",
        "kind": "threshold",
        "direction": "high",
        "source": "test",
        "hysteresis": hysteresis,
        "when": [
            {"metric": SYSTOLIC, "above": 180, "severity": "high", "label": "> 180"},
            {"metric": SYSTOLIC, "above": 200, "severity": "critical", "label": "> 200"},
        ],
    }


def states(frame: pd.DataFrame, rules: RuleSet, rule_id: str) -> list[int]:
    """The rule's verdict on every reading (repeats included)."""
    signals = evaluate(frame, rules, repeats=True)
    return signals.loc[signals["rule_id"] == rule_id, "state"].tolist()


# --- thresholds and hysteresis -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state", "severity"),
    [
        (200.5, BREACH, "critical"),
        (200, BREACH, "high"),  # strict: equal to a limit does not meet it
        (180.5, BREACH, "high"),
        (180, BETWEEN, ""),
        (175.5, BETWEEN, ""),
        (175, CLEAR, ""),  # 5 below the least severe limit: back in range
        (120, CLEAR, ""),
    ],
)
def test_threshold_signal_at_each_edge(value: float, state: int, severity: str) -> None:
    signals = evaluate(readings((0, SYSTOLIC, value)), ruleset(high_systolic()))
    assert signals[["state", "severity"]].values.tolist() == [[state, severity]]


def test_a_value_hovering_at_the_limit_keeps_one_flag_open() -> None:
    hovering = [(h, SYSTOLIC, v) for h, v in enumerate([181, 179, 182, 178, 181, 179, 183])]
    flags = episodes(
        evaluate(readings(*hovering), ruleset(high_systolic())), ruleset(high_systolic())
    )
    assert len(flags) == 1
    assert flags.loc[0, "breaches"] == 4
    assert pd.isna(flags.loc[0, "resolved_at"])


def test_without_hysteresis_the_same_values_open_and_resolve_repeatedly() -> None:
    rules = ruleset(high_systolic(hysteresis=0), resolve_after_minutes=30)
    hovering = [(h, SYSTOLIC, v) for h, v in enumerate([181, 179, 182, 178, 181, 179, 183])]
    flags = episodes(evaluate(readings(*hovering), rules), rules)
    assert len(flags) == 4  # the flapping hysteresis prevents


def test_back_in_range_for_the_resolve_time_resolves_the_flag_by_itself() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 190), (1, SYSTOLIC, 170), (1.5, SYSTOLIC, 165), (3, SYSTOLIC, 185)
    )
    flags = episodes(evaluate(frame, rules), rules)
    # back in range at 1 h; nothing else until 3 h: resolved at 1 h + 60 min; 3 h opens anew
    assert flags["opened_at"].tolist() == [pd.Timestamp(T0), pd.Timestamp(T0 + timedelta(hours=3))]
    assert flags.loc[0, "resolved_at"] == pd.Timestamp(T0 + timedelta(hours=2))
    assert pd.isna(flags.loc[1, "resolved_at"])


def test_a_breach_before_the_resolve_time_keeps_the_flag_open_and_steps_its_severity_up() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings((0, SYSTOLIC, 185), (0.5, SYSTOLIC, 160), (1.4, SYSTOLIC, 210))
    flags = episodes(evaluate(frame, rules), rules)
    assert len(flags) == 1
    assert (flags.loc[0, "opening_severity"], flags.loc[0, "severity"]) == ("high", "critical")
    assert flags.loc[0, "worst_value"] == 210


def test_inside_the_hysteresis_band_the_wait_for_resolution_restarts() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 190), (0.5, SYSTOLIC, 170), (1.2, SYSTOLIC, 178), (1.5, SYSTOLIC, 170)
    )
    flags = episodes(evaluate(frame, rules), rules, now=T0 + timedelta(hours=5))
    assert flags.loc[0, "resolved_at"] == pd.Timestamp(T0 + timedelta(hours=2.5))


def test_a_reading_that_arrives_days_late_raises_a_late_flag() -> None:
    rules = ruleset(high_systolic())
    frame = readings(
        (0, SYSTOLIC, 190, 0.01), (1, SYSTOLIC, 120, 1.01), (10, SYSTOLIC, 190, 10 + 72)
    )
    flags = episodes(evaluate(frame, rules), rules)
    assert flags["late"].tolist() == [False, True]


# --- sustained -----------------------------------------------------------------------------------


def sustained(**how: Any) -> dict[str, Any]:
    return {
        "id": "sustained",
        "title": "Sustained",
        "kind": "sustained",
        "direction": "high",
        "source": "test",
        "metric": SYSTOLIC,
        "above": 159,
        "hysteresis": 10,
        "severity": "medium",
        "label": "sustained",
        **how,
    }


def test_sustained_by_count_breaches_on_the_third_reading_in_a_row() -> None:
    frame = readings(*[(h, SYSTOLIC, v) for h, v in enumerate([165, 170, 160, 161, 155, 170, 171])])
    assert states(frame, ruleset(sustained(count=3)), "sustained") == [0, 0, 1, 1, 0, 0, 0]


def test_sustained_by_minutes_breaches_once_the_run_has_lasted_that_long() -> None:
    frame = readings(
        (0, SYSTOLIC, 170),
        (0.5, SYSTOLIC, 170),
        (0.99, SYSTOLIC, 170),
        (1, SYSTOLIC, 170),
        (1.5, SYSTOLIC, 140),
    )
    assert states(frame, ruleset(sustained(minutes=60)), "sustained") == [0, 0, 0, 1, -1]


# --- trends --------------------------------------------------------------------------------------


def weight_gain(window_hours: float, by: float) -> dict[str, Any]:
    return {
        "id": f"gain-{window_hours:g}h",
        "title": "Weight gain",
        "kind": "trend",
        "direction": "high",
        "source": "test",
        "metric": WEIGHT,
        "statistic": "rise_from_lowest",
        "window_hours": window_hours,
        "by_at_least": by,
        "severity": "high",
        "label": "gain",
    }


def test_weight_gain_is_measured_from_the_lowest_weight_of_the_window() -> None:
    rules = ruleset(weight_gain(24, 0.9))
    frame = readings((0, WEIGHT, 80.0), (12, WEIGHT, 79.5), (23, WEIGHT, 80.4), (24, WEIGHT, 80.5))
    # 23 h: 80.4 - 79.5 = 0.9 (at least 0.9: breach); 24 h: the 0 h reading leaves the window,
    # 80.5 - 79.5 = 1.0
    assert states(frame, rules, "gain-24h") == [0, -1, 1, 1]


def test_a_gain_of_exactly_the_limit_in_device_tenths_counts() -> None:
    # 80.3 - 79.4 is 0.8999999999999915 in floating point; the scale showed a 0.9 kg gain
    rules = ruleset(weight_gain(24, 0.9))
    assert states(readings((0, WEIGHT, 79.4), (20, WEIGHT, 80.3)), rules, "gain-24h") == [0, 1]


def test_a_gain_spread_over_more_than_the_window_is_not_a_24_hour_gain() -> None:
    rules = ruleset(weight_gain(24, 0.9), weight_gain(168, 2.3))
    days = [(24 * d, WEIGHT, 80 + 0.5 * d) for d in range(6)]  # 0.5 kg a day for 5 days
    signals = evaluate(readings(*days), rules, repeats=True)
    daily = signals.loc[signals["rule_id"] == "gain-24h", "state"].tolist()
    weekly = signals.loc[signals["rule_id"] == "gain-168h", "state"].tolist()
    assert daily == [0, -1, -1, -1, -1, -1]  # 24 h exactly: the previous day's reading is out
    assert weekly == [0, -1, -1, -1, -1, 1]  # 82.5 - 80.0 = 2.5 >= 2.3


def test_weekly_mean_rise_needs_enough_readings_in_both_weeks() -> None:
    rule = {
        "id": "weekly",
        "title": "Weekly rise",
        "kind": "trend",
        "direction": "high",
        "source": "test",
        "metric": SYSTOLIC,
        "statistic": "weekly_mean",
        "by_at_least": 10,
        "min_readings": 4,
        "severity": "low",
        "label": "weekly",
    }
    week1 = [(24 * d, SYSTOLIC, 130) for d in range(7)]
    week2 = [(24 * (7 + d), SYSTOLIC, 141) for d in range(7)]
    result = states(readings(*week1, *week2), ruleset(rule), "weekly")
    assert result[:7] == [0] * 7  # no earlier week yet
    assert result[-1] == BREACH  # 141 against 130


# --- baseline ------------------------------------------------------------------------------------


def test_baseline_waits_for_enough_days_then_flags_a_departure() -> None:
    rule = {
        "id": "baseline",
        "title": "Baseline",
        "kind": "baseline",
        "direction": "low",
        "source": "test",
        "metric": SPO2,
        "window_days": 14,
        "k": 3,
        "min_days": 7,
        "min_deviation": 3,
        "severity": "medium",
        "label": "below own",
    }
    usual = [(24 * day, SPO2, 96 + (day % 2)) for day in range(14)]
    result = states(
        readings(*usual, (24 * 14, SPO2, 94), (24 * 15, SPO2, 92)), ruleset(rule), "baseline"
    )
    assert result[:7] == [BETWEEN] * 7  # readings on fewer than 7 earlier days
    assert result[7:14] == [CLEAR] * 7
    # Day 14: the median of fourteen daily 96s and 97s is 96.5 and their spread small, so
    # the floor of 3 points applies: 94 is 2.5 below. Day 15: still 96.5 (the 94 is one of
    # fourteen days); 92 is 4.5 below.
    assert result[14:] == [CLEAR, BREACH]


# --- adherence -----------------------------------------------------------------------------------


def silent(hours: float) -> dict[str, Any]:
    return {
        "id": "silent",
        "title": "Silent",
        "kind": "adherence",
        "source": "test",
        "check": "silent",
        "hours": hours,
        "severity": "medium",
        "label": "silent",
    }


def test_silence_longer_than_the_limit_flags_at_the_limit_and_resumption_resolves() -> None:
    rules = ruleset(silent(48))
    frame = readings((0, PULSE, 70), (48, PULSE, 70), (100, PULSE, 70), (101, PULSE, 70))
    signals = evaluate(frame, rules)
    assert signals[["at", "state"]].values.tolist() == [
        [pd.Timestamp(T0 + timedelta(hours=96)), BREACH],  # 48 h after the 48 h reading
        [pd.Timestamp(T0 + timedelta(hours=100)), CLEAR],
    ]  # exactly 48 h between the first two: not more than the limit
    flags = episodes(signals, rules)
    assert flags.loc[0, "resolved_at"] == pd.Timestamp(T0 + timedelta(hours=100))


def test_silence_up_to_now_is_flagged_without_a_later_reading() -> None:
    rules = ruleset(silent(48))
    signals = evaluate(readings((0, PULSE, 70)), rules, now=T0 + timedelta(hours=49))
    assert signals["state"].tolist() == [BREACH]
    assert evaluate(readings((0, PULSE, 70)), rules, now=T0 + timedelta(hours=47)).empty


def test_days_with_readings_counts_the_last_seven_completed_days() -> None:
    rule = {
        "id": "days",
        "title": "Days",
        "kind": "adherence",
        "source": "test",
        "check": "days_with_readings",
        "min_days": 4,
        "of_days": 7,
        "severity": "low",
        "label": "few days",
    }
    # readings on days 0, 1, 2, 6 then nothing: day 6's window (0-6) has 4 days; day 7's has 3
    frame = readings(*[(24 * d, PULSE, 70) for d in (0, 1, 2, 6)])
    signals = evaluate(frame, ruleset(rule), now=T0 + timedelta(days=8), repeats=True)
    assert signals[["value", "state"]].values.tolist() == [[4.0, CLEAR], [3.0, BREACH]]


# --- determinism ---------------------------------------------------------------------------------


def some_history() -> pd.DataFrame:
    rows = []
    for day in range(20):
        rows += [
            (24 * day + 7, SYSTOLIC, 150 + (day * 7) % 45),
            (24 * day + 7, PULSE, 70 + (day * 13) % 60),
            (24 * day + 7.2, SPO2, 90 + (day * 5) % 9),
            (24 * day + 8, WEIGHT, 80 + 0.4 * (day % 6)),
        ]
    frame = pd.concat(
        [readings(*rows, patient_id="pt-1"), readings(*rows[::2], patient_id="pt-2")],
        ignore_index=True,
    )
    return frame


@settings(max_examples=25, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, 40))
def test_shuffled_and_duplicated_readings_give_the_same_flags(rng: Any, duplicates: int) -> None:
    rules = load_rules()
    clean = some_history()
    expected = episodes(evaluate(clean, rules), rules)
    assert len(expected) > 3
    arrived = pd.concat([clean, clean.sample(n=duplicates, random_state=rng.randrange(2**31))])
    arrived = arrived.sample(frac=1.0, random_state=rng.randrange(2**31))
    got = episodes(evaluate(arrived, rules), rules)
    pd.testing.assert_frame_equal(got, expected)


def test_alerts_per_patient_week_counts_flags_over_monitored_weeks() -> None:
    rules = ruleset(high_systolic())
    frame = pd.concat(
        [
            readings((0, SYSTOLIC, 190), (24 * 7, SYSTOLIC, 120), patient_id="a"),
            readings((0, SYSTOLIC, 120), (24 * 7, SYSTOLIC, 120), patient_id="b"),
        ]
    )
    flags = episodes(evaluate(frame, rules), rules)
    assert alerts_per_patient_week(flags, frame) == pytest.approx(0.5)


def test_a_rule_over_two_metrics_is_back_in_range_only_when_both_are() -> None:
    crisis = {
        "id": "crisis",
        "title": "Crisis",
        "kind": "threshold",
        "direction": "high",
        "source": "test",
        "when": [
            {"metric": SYSTOLIC, "above": 180, "severity": "critical", "label": "sys"},
            {"metric": "8462-4", "above": 120, "severity": "critical", "label": "dia"},
        ],
    }
    rules = ruleset(crisis, resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 190), (0, "8462-4", 100),
        (1, SYSTOLIC, 150), (1, "8462-4", 125),  # systolic fine, diastolic still beyond
        (1.5, SYSTOLIC, 150), (1.5, "8462-4", 100),  # both back
    )  # fmt: skip
    signals = evaluate(frame, rules, repeats=True)
    by_metric = signals.pivot_table(index="at", columns="metric", values="state", aggfunc="first")
    assert by_metric[SYSTOLIC].tolist() == [BREACH, BETWEEN, CLEAR]
    assert by_metric["8462-4"].tolist() == [BETWEEN, BREACH, CLEAR]
    flags = episodes(signals, rules, now=T0 + timedelta(hours=5))
    assert len(flags) == 1
    assert flags.loc[0, "resolved_at"] == pd.Timestamp(T0 + timedelta(hours=2.5))


def test_leaving_out_repeated_states_changes_no_flag() -> None:
    rules = load_rules()
    history = some_history()
    every = evaluate(history, rules, repeats=True)
    fewer = evaluate(history, rules)
    assert len(fewer) < len(every)
    pd.testing.assert_frame_equal(episodes(fewer, rules), episodes(every, rules))
