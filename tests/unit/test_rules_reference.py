"""bench/rules_reference.py: the rules evaluated row by row in plain Python.

By hand on each rule kind (the flags the docstrings of analytics/signals.py and
analytics/episodes.py describe), then as the oracle of the vectorised engine: on generated
histories and on small random inputs, the engine's flags must equal the reference's exactly.
"""

from __future__ import annotations

import random
import tomllib
from datetime import timedelta
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analytics.episodes import FLAG_COLUMNS, episodes
from analytics.rules import RuleSet, load_rules, rules_from_mapping
from analytics.signals import evaluate
from bench.rpm_history import generate_history
from bench.rules_reference import (
    BETWEEN,
    BREACH,
    CLEAR,
    evaluate_flags,
    percentile,
    signals_by_rule,
    tiebreaks,
)
from tests.unit.test_rule_engine import (
    PULSE,
    SPO2,
    SYSTOLIC,
    T0,
    WEIGHT,
    high_systolic,
    readings,
    ruleset,
    silent,
    sustained,
    weight_gain,
)

DIASTOLIC, TEMPERATURE, GLUCOSE = "8462-4", "8310-5", "41653-7"
HOUR = timedelta(hours=1)


def engine_flags(
    frame: pd.DataFrame, rules: RuleSet, *, patients: pd.DataFrame | None = None, now: Any = None
) -> pd.DataFrame:
    return episodes(evaluate(frame, rules, patients=patients, now=now), rules, now=now)


def assert_same_flags(
    frame: pd.DataFrame, rules: RuleSet, *, patients: pd.DataFrame | None = None, now: Any = None
) -> pd.DataFrame:
    """The reference's flags, after checking that the engine's are exactly the same."""
    got = evaluate_flags(frame, rules, patients=patients, now=now)
    expected = engine_flags(frame, rules, patients=patients, now=now)
    pd.testing.assert_frame_equal(got, expected, check_exact=True)
    assert got["detail"].tolist() == expected["detail"].tolist()
    return got


def states(frame: pd.DataFrame, rules: RuleSet, rule_id: str, **how: Any) -> list[int]:
    """The reference's verdict on every reading of pt-1 (repeats included)."""
    return [signal.state for signal in signals_by_rule(frame, rules, **how)[("pt-1", rule_id)]]


def at(hours: float) -> pd.Timestamp:
    return pd.Timestamp(T0 + timedelta(hours=hours))


# --- thresholds ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "state", "severity", "limit"),
    [
        (200.5, BREACH, "critical", 200),
        (200, BREACH, "high", 180),  # strict: equal to a limit does not meet it
        (180.5, BREACH, "high", 180),
        (180, BETWEEN, "", 180),
        (175.5, BETWEEN, "", 180),
        (175, CLEAR, "", 180),  # 5 below the least severe limit: back in range
        (120, CLEAR, "", 180),
    ],
)
def test_threshold_signal_at_each_edge(
    value: float, state: int, severity: str, limit: float
) -> None:
    rules = ruleset(high_systolic())
    (signal,) = signals_by_rule(readings((0, SYSTOLIC, value)), rules)[("pt-1", "high-sbp")]
    assert (signal.state, signal.severity, signal.limit) == (state, severity, limit)


def test_hysteresis_keeps_one_flag_open_without_it_the_flag_flaps() -> None:
    hovering = [(h, SYSTOLIC, v) for h, v in enumerate([181, 179, 182, 178, 181, 179, 183])]
    with_band = assert_same_flags(readings(*hovering), ruleset(high_systolic()))
    assert with_band[["breaches"]].values.tolist() == [[4]]
    assert pd.isna(with_band.loc[0, "resolved_at"])
    rules = ruleset(high_systolic(hysteresis=0), resolve_after_minutes=30)
    assert len(assert_same_flags(readings(*hovering), rules)) == 4


def test_back_in_range_for_the_resolve_time_resolves_even_with_a_breach_at_that_moment() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 190), (1, SYSTOLIC, 170), (1.5, SYSTOLIC, 165), (2, SYSTOLIC, 185)
    )
    flags = assert_same_flags(frame, rules)
    # clear from 1 h; the breach exactly at 1 h + 60 min comes too late to keep it open
    assert flags["opened_at"].tolist() == [at(0), at(2)]
    assert flags["resolved_at"].tolist()[0] == at(2)
    assert pd.isna(flags.loc[1, "resolved_at"])


def test_the_last_clear_run_resolves_once_now_reaches_the_resolve_time() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings((0, SYSTOLIC, 190), (1, SYSTOLIC, 170))
    assert pd.isna(assert_same_flags(frame, rules, now=T0 + 1.99 * HOUR).loc[0, "resolved_at"])
    assert assert_same_flags(frame, rules, now=T0 + 2 * HOUR).loc[0, "resolved_at"] == at(2)


def test_later_breaches_step_the_severity_up_and_record_the_worst() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 185), (0.5, SYSTOLIC, 160), (1.4, SYSTOLIC, 210), (2, SYSTOLIC, 190)
    )
    (flag,) = assert_same_flags(frame, rules).to_dict("records")
    assert (flag["opening_severity"], flag["severity"]) == ("high", "critical")
    assert (flag["value"], flag["worst_value"], flag["breaches"]) == (185, 210, 3)
    assert (flag["limit"], flag["label"]) == (180, "> 180")
    assert flag["last_breach_at"] == at(2)


def test_an_inside_the_band_signal_restarts_the_wait() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=60)
    frame = readings(
        (0, SYSTOLIC, 190), (0.5, SYSTOLIC, 170), (1.2, SYSTOLIC, 178), (1.5, SYSTOLIC, 170)
    )
    flags = assert_same_flags(frame, rules, now=T0 + 5 * HOUR)
    assert flags.loc[0, "resolved_at"] == at(2.5)


def test_a_flag_opened_by_a_reading_that_arrived_days_late_is_late() -> None:
    rules = ruleset(high_systolic())
    frame = readings(
        (0, SYSTOLIC, 190, 0.01), (1, SYSTOLIC, 120, 1.01), (10, SYSTOLIC, 190, 10 + 72)
    )
    assert assert_same_flags(frame, rules)["late"].tolist() == [False, True]


def test_a_rule_over_two_metrics_is_back_in_range_only_when_both_are() -> None:
    rules = load_rules()
    frame = readings(
        (0, SYSTOLIC, 190), (0, DIASTOLIC, 100),
        (1, SYSTOLIC, 150), (1, DIASTOLIC, 125),  # systolic fine, diastolic still beyond
        (2, SYSTOLIC, 150), (2, DIASTOLIC, 115),  # diastolic inside its band (> 110)
        (3, SYSTOLIC, 150), (3, DIASTOLIC, 100),  # both back
    )  # fmt: skip
    by_metric = {
        (s.metric, s.at): s.state
        for s in signals_by_rule(frame, rules)[("pt-1", "hypertensive-crisis")]
    }
    assert [by_metric[(SYSTOLIC, at(h))] for h in range(4)] == [BREACH, BETWEEN, BETWEEN, CLEAR]
    assert [by_metric[(DIASTOLIC, at(h))] for h in range(4)] == [BETWEEN, BREACH, BETWEEN, CLEAR]
    flags = assert_same_flags(frame, rules, now=T0 + 10 * HOUR)
    (crisis,) = flags.loc[flags["rule_id"] == "hypertensive-crisis"].to_dict("records")
    assert crisis["breaches"] == 2
    assert crisis["resolved_at"] == at(3 + 4)  # resolve_after is 4 h in the packaged rules


def test_spo2_rules_apply_to_the_patients_on_their_scale_and_programs_limit_rules() -> None:
    rules = load_rules()
    frame = pd.concat(
        [
            readings((0, SPO2, 90), patient_id="scale-1"),
            readings((0, SPO2, 90), patient_id="scale-2"),
        ],
        ignore_index=True,
    )
    patients = pd.DataFrame({"patient_id": ["scale-2"], "spo2_scale": [2], "on_oxygen": [True]})
    flags = assert_same_flags(frame, rules, patients=patients)
    # 90 % is critical on scale 1 and fine on scale 2 on oxygen; its NEWS2 single 3 is not a
    # second flag (the threshold rule already raised it)
    assert flags[["patient_id", "rule_id", "severity"]].values.tolist() == [
        ["scale-1", "spo2-below-target", "critical"],
    ]
    only_copd = rules_from_mapping(
        {"version": "t", "rules": [{**high_systolic(), "programs": ["copd"]}]}
    )
    everyone = readings((0, SYSTOLIC, 190), patient_id="a")
    copd = pd.DataFrame({"patient_id": ["a"], "program": ["copd"]})
    assert assert_same_flags(everyone, only_copd).empty  # no record: program "general"
    assert len(assert_same_flags(everyone, only_copd, patients=copd)) == 1


# --- sustained -----------------------------------------------------------------------------------


def test_sustained_by_count_breaches_from_the_reading_that_completes_the_run() -> None:
    values = [165, 170, 160, 161, 155, 170, 171, 145]
    frame = readings(*[(h, SYSTOLIC, v) for h, v in enumerate(values)])
    rules = ruleset(sustained(count=3))
    # 155 ends the run inside the 10-point band; 145 is past it
    assert states(frame, rules, "sustained") == [0, 0, 1, 1, 0, 0, 0, -1]
    (flag,) = assert_same_flags(frame, rules, now=T0 + 20 * HOUR).to_dict("records")
    assert (flag["opened_at"], flag["breaches"], flag["resolved_at"]) == (at(2), 2, at(8))


def test_sustained_by_minutes_breaches_once_the_run_has_lasted_that_long() -> None:
    frame = readings(
        (0, SYSTOLIC, 170),
        (0.5, SYSTOLIC, 170),
        (0.99, SYSTOLIC, 170),
        (1, SYSTOLIC, 170),
        (1.5, SYSTOLIC, 140),
    )
    rules = ruleset(sustained(minutes=60))
    assert states(frame, rules, "sustained") == [0, 0, 0, 1, -1]
    assert assert_same_flags(frame, rules)["opened_at"].tolist() == [at(1)]


# --- trends --------------------------------------------------------------------------------------


def test_rise_from_lowest_against_the_lowest_of_the_window_edge_included() -> None:
    rules = ruleset(weight_gain(24, 0.9))
    frame = readings((0, WEIGHT, 80.0), (12, WEIGHT, 79.5), (23, WEIGHT, 80.4), (36, WEIGHT, 80.5))
    # 23 h: 80.4 - 79.5 = 0.9 (at least: breach); 36 h: 12 h is exactly 24 h before, still in
    assert states(frame, rules, "gain-24h") == [BETWEEN, CLEAR, BREACH, BREACH]
    (flag,) = assert_same_flags(frame, rules).to_dict("records")
    assert flag["value"] == pytest.approx(0.9)
    assert flag["worst_value"] == pytest.approx(1.0)
    spread = readings(*[(24 * d, WEIGHT, 80 + 0.5 * d) for d in range(6)])
    rules = ruleset(weight_gain(24, 0.9), weight_gain(168, 2.3))
    assert states(spread, rules, "gain-24h") == [BETWEEN] + [CLEAR] * 5
    assert states(spread, rules, "gain-168h") == [BETWEEN] + [CLEAR] * 4 + [BREACH]
    assert assert_same_flags(spread, rules)["rule_id"].tolist() == ["gain-168h"]


def weekly(min_readings: int, by: float = 10) -> dict[str, Any]:
    return {
        "id": "weekly",
        "title": "Weekly rise",
        "kind": "trend",
        "direction": "high",
        "source": "test",
        "metric": SYSTOLIC,
        "statistic": "weekly_mean",
        "by_at_least": by,
        "min_readings": min_readings,
        "severity": "low",
        "label": "weekly",
    }


def test_weekly_mean_rise_needs_enough_readings_in_both_weeks() -> None:
    week1 = [(24 * d, SYSTOLIC, 130) for d in range(7)]
    week2 = [(24 * (7 + d), SYSTOLIC, 141) for d in range(7)]
    result = states(readings(*week1, *week2), ruleset(weekly(4)), "weekly")
    # the week before holds 4 readings from day 10 on; the weekly mean then climbs from
    # 136.3 (3 x 130 and 4 x 141) to 141 on day 13, the first day it is 10 above
    assert result == [BETWEEN] * 10 + [CLEAR] * 3 + [BREACH]
    assert len(assert_same_flags(readings(*week1, *week2), ruleset(weekly(4)))) == 1


def test_weekly_mean_counts_simultaneous_readings_only_up_to_the_current_one() -> None:
    first, second = sorted(["r-a", "r-b"], key=lambda rid: tiebreaks([rid])[0])
    frame = pd.DataFrame(
        {
            "reading_id": ["r-0", second, first],
            "patient_id": "pt-1",
            "loinc": SYSTOLIC,
            "value": [130.0, 130.0, 150.0],
            "measured_at": [T0, T0 + timedelta(days=8), T0 + timedelta(days=8)],
        }
    )
    # the first of the two readings at day 8 is a week of its own (150 - 130 = 20); the
    # second brings the mean down to 140
    assert states(frame, ruleset(weekly(1, by=15)), "weekly") == [BETWEEN, BREACH, CLEAR]
    signals = signals_by_rule(frame, ruleset(weekly(1, by=15)))[("pt-1", "weekly")]
    assert [s.reading_id for s in signals] == ["r-0", first, second]
    assert assert_same_flags(frame, ruleset(weekly(1, by=15)))["reading_id"].tolist() == [first]


# --- baseline ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 14])
def test_percentile_interpolates_as_numpy(size: int) -> None:
    values = sorted(random.Random(size).uniform(90, 100) for _ in range(size))
    for q in (0.25, 0.5, 0.75):
        assert percentile(values, q) == pytest.approx(np.percentile(values, 100 * q), abs=1e-12)


def spo2_baseline() -> dict[str, Any]:
    return {
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


def test_baseline_waits_for_enough_days_then_flags_a_departure() -> None:
    usual = [(24 * day, SPO2, 96 + (day % 2)) for day in range(14)]
    frame = readings(*usual, (24 * 14, SPO2, 94), (24 * 15, SPO2, 92), (24 * 15 + 1, SPO2, 97))
    result = states(frame, ruleset(spo2_baseline()), "baseline")
    # readings on fewer than 7 earlier days, then judged; day 14: median 96.5, floor of 3
    # points: 94 is 2.5 below; day 15: 92 is 4.5 below
    assert result == [BETWEEN] * 7 + [CLEAR] * 8 + [BREACH, CLEAR]
    (flag,) = assert_same_flags(frame, ruleset(spo2_baseline())).to_dict("records")
    assert (flag["opened_at"], flag["value"], flag["limit"]) == (at(24 * 15), 92, 93.5)


def test_baseline_uses_daily_medians_and_their_spread() -> None:
    # Two readings a day, 10 apart: the daily medians are 120, 125, ... 150 (days 0-6);
    # median 135, quartiles 127.5 and 142.5, robust SD 11.1: 3 of them (33.4) allowed, more
    # than min_deviation (15)
    rule = {
        **spo2_baseline(),
        "id": "sbp",
        "direction": "high",
        "metric": SYSTOLIC,
        "min_deviation": 15,
        "window_days": 7,
    }
    rows = []
    for day in range(7):
        rows += [(24 * day, SYSTOLIC, 115 + 5 * day), (24 * day + 1, SYSTOLIC, 125 + 5 * day)]
    frame = readings(*rows, (24 * 7, SYSTOLIC, 160), (24 * 7 + 1, SYSTOLIC, 175))
    signals = signals_by_rule(frame, ruleset(rule))[("pt-1", "sbp")]
    allowed = 3 * (142.5 - 127.5) / 1.349
    assert signals[-1].limit == pytest.approx(135 + allowed)
    assert [s.state for s in signals[-2:]] == [CLEAR, BREACH]
    assert len(assert_same_flags(frame, ruleset(rule))) == 1


# --- adherence -----------------------------------------------------------------------------------


def test_silence_longer_than_the_limit_flags_at_the_limit_and_the_next_reading_resolves() -> None:
    rules = ruleset(silent(48))
    frame = readings((0, PULSE, 70), (48, PULSE, 70), (100, PULSE, 70), (101, PULSE, 70))
    (flag,) = assert_same_flags(frame, rules).to_dict("records")
    # exactly 48 h between the first two: not more than the limit
    assert (flag["opened_at"], flag["resolved_at"]) == (at(96), at(100))
    assert (flag["value"], flag["limit"], flag["reading_id"]) == (52, 48, None)
    assert (flag["metric"], flag["direction"], flag["late"]) == ("any", None, False)


def test_silence_up_to_now_is_flagged_without_a_later_reading() -> None:
    rules = ruleset(silent(48))
    (flag,) = assert_same_flags(readings((0, PULSE, 70)), rules, now=T0 + 50 * HOUR).to_dict(
        "records"
    )
    assert (flag["opened_at"], flag["value"]) == (at(48), 50)
    assert pd.isna(flag["resolved_at"])
    assert assert_same_flags(readings((0, PULSE, 70)), rules, now=T0 + 48 * HOUR).empty


def test_silence_of_one_metric_ignores_the_others() -> None:
    rule = {**silent(24), "metric": WEIGHT}
    frame = readings((0, WEIGHT, 80), (10, PULSE, 70), (30, PULSE, 70), (40, WEIGHT, 80))
    (flag,) = assert_same_flags(frame, ruleset(rule)).to_dict("records")
    assert (flag["opened_at"], flag["resolved_at"], flag["metric"]) == (at(24), at(40), WEIGHT)


def test_days_with_readings_counts_the_last_days_up_to_yesterday() -> None:
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
    # Readings on days 0, 1, 5, 6, 8 and 9; now is on day 10. Days 0-6 hold 4 days with
    # readings (clear at the end of day 6), days 1-7 and 2-8 only 3 (breaches at the ends of
    # days 7 and 8), days 3-9 4 again (clear at the end of day 9, resolving at once).
    frame = readings(*[(24 * d, PULSE, 70) for d in (0, 1, 5, 6, 8, 9)])
    signals = signals_by_rule(frame, ruleset(rule), now=T0 + timedelta(days=10))[("pt-1", "days")]
    assert [(s.value, s.state) for s in signals] == [
        (4, CLEAR),
        (3, BREACH),
        (3, BREACH),
        (4, CLEAR),
    ]
    day7_end = pd.Timestamp(T0.date() + timedelta(days=8), tz="UTC")
    (flag,) = assert_same_flags(frame, ruleset(rule), now=T0 + timedelta(days=10)).to_dict(
        "records"
    )
    assert (flag["opened_at"], flag["breaches"], flag["value"]) == (day7_end, 2, 3)
    assert flag["resolved_at"] == day7_end + timedelta(days=2)


# --- NEWS2 ---------------------------------------------------------------------------------------


def news2_rule(**more: Any) -> dict[str, Any]:
    return {
        "id": "news2",
        "title": "NEWS2",
        "kind": "news2",
        "source": "test",
        "window_minutes": 30,
        **more,
    }


def test_news2_sets_are_greedy_from_the_earliest_reading() -> None:
    rules = ruleset(news2_rule())
    minutes = [0, 29, 30, 31]
    frame = readings(*[(m / 60, PULSE, 70) for m in minutes])
    signals = signals_by_rule(frame, rules)[("pt-1", "news2")]
    assert [s.at for s in signals] == [at(30 / 60), at(31 / 60)]  # {0, 29, 30} and {31}
    assert [s.state for s in signals] == [CLEAR, CLEAR]


def test_news2_flags_the_band_of_the_latest_value_of_each_parameter() -> None:
    rules = ruleset(news2_rule())
    frame = readings(
        (0, PULSE, 135, 0.01),  # superseded by the pulse of 10 minutes later
        (1 / 6, PULSE, 120, 80),  # 2
        (1 / 6, SPO2, 91, 80),  # 3 on scale 1
        (1 / 6, SYSTOLIC, 95, 80),  # 2
        (2, TEMPERATURE, 36.5, 2.01),  # 0: a set of its own
    )
    flags = assert_same_flags(frame, rules)
    (flag,) = flags.to_dict("records")
    assert (flag["severity"], flag["value"]) == ("critical", 7)  # band high: emergency
    assert flag["label"] == "NEWS2 7 (partial)"
    assert flag["detail"] == {
        "score": 7,
        "band": "high",
        "partial": True,
        "parameters": ["spo2", "air_or_oxygen", "systolic", "pulse"],
    }
    # every reading the score is made of arrived days late: the flag tells of the past
    assert flag["late"]
    assert flag["reading_id"] == min(frame["reading_id"].iloc[1:4])
    assert pd.isna(flag["resolved_at"])  # the next set is CLEAR, at the latest reading


def test_news2_scores_spo2_on_the_patients_scale_and_oxygen() -> None:
    rules = ruleset(news2_rule(severities={"low": "info", "low_single_3": "high"}))
    frame = readings((0, SPO2, 87), (0, PULSE, 70))
    on_air = pd.DataFrame({"patient_id": ["pt-1"], "spo2_scale": [2], "on_oxygen": [False]})
    on_oxygen = on_air.assign(on_oxygen=True)
    scale_1 = assert_same_flags(frame, rules)  # 87 % on scale 1 scores 3
    assert scale_1[["severity", "value"]].values.tolist() == [["high", 3]]
    on_scale_2 = assert_same_flags(frame, rules, patients=on_air)  # 86-87 on scale 2: 1
    assert on_scale_2[["severity", "value"]].values.tolist() == [["info", 1]]
    with_oxygen = assert_same_flags(frame, rules, patients=on_oxygen)  # + 2 for oxygen
    assert with_oxygen[["severity", "value"]].values.tolist() == [["info", 3]]


# --- loading -------------------------------------------------------------------------------------


def test_tiebreaks_are_the_hash_of_each_reading_id_on_its_own() -> None:
    ids = ["r-1", "0195f1a2-0000-7000-8000-000000000001", "r-1", "x"]
    alone = [int(pd.util.hash_array(np.array([rid], dtype=object))[0]) for rid in ids]
    assert tiebreaks(ids) == alone


def test_repeated_and_shuffled_readings_give_the_same_flags() -> None:
    rules = load_rules()
    history = generate_history(patients=12, days=20, seed=5)
    frame = history.readings.rename(columns={"metric": "loinc"})
    now = frame["measured_at"].max()
    expected = evaluate_flags(frame, rules, patients=history.patients, now=now)
    arrived = pd.concat([frame, frame.sample(300, random_state=1)]).sample(frac=1.0, random_state=2)
    got = assert_same_flags(arrived, rules, patients=history.patients, now=now)
    pd.testing.assert_frame_equal(got, expected)


def test_the_frame_has_the_engines_columns_even_without_flags() -> None:
    empty = evaluate_flags(readings((0, SYSTOLIC, 120)), ruleset(high_systolic()))
    assert tuple(empty.columns) == FLAG_COLUMNS
    pd.testing.assert_frame_equal(
        empty, engine_flags(readings((0, SYSTOLIC, 120)), ruleset(high_systolic()))
    )


def test_nanoseconds_and_naive_times_are_refused() -> None:
    frame = readings((0, SYSTOLIC, 120))
    with pytest.raises(ValueError, match="nanoseconds"):
        evaluate_flags(
            frame.assign(measured_at=frame["measured_at"] + pd.Timedelta(1, "ns")), load_rules()
        )
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate_flags(
            frame.assign(measured_at=frame["measured_at"].dt.tz_localize(None)), load_rules()
        )


# --- against the vectorised engine ---------------------------------------------------------------


def history(seed: int, *, patients: int = 40, days: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    generated = generate_history(patients=patients, days=days, seed=seed)
    return generated.readings.rename(columns={"metric": "loinc"}), generated.patients


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_engine_raises_the_reference_flags_on_generated_histories(seed: int) -> None:
    frame, patients = history(seed)
    flags = assert_same_flags(frame, load_rules(), patients=patients, now=frame.measured_at.max())
    kinds = {"threshold", "sustained", "trend", "baseline", "adherence"}
    assert kinds <= set(flags["kind"]) <= kinds | {"news2"}


def test_the_engine_raises_the_reference_flags_with_readings_arriving_days_late() -> None:
    frame, patients = history(4)
    rng = np.random.default_rng(4)
    # 1 patient-day in 8 reaches CareWatch 3 days late (a gateway offline), and 5 % of the
    # other readings (a meter's memory read out later)
    day = frame["measured_at"].dt.floor("D")
    offline = frame.groupby([frame["patient_id"], day]).ngroup() % 8 == 0
    late = offline.to_numpy() | (rng.random(len(frame)) < 0.05)
    delay = np.where(late, 72.0, rng.uniform(0.001, 0.1, len(frame)))
    frame = frame.assign(received_at=frame["measured_at"] + pd.to_timedelta(delay, unit="h"))
    now = frame["measured_at"].max()
    flags = assert_same_flags(frame, load_rules(), patients=patients, now=now)
    assert 0 < flags["late"].sum() < len(flags)


#: Options the packaged rules do not use: low trends, minutes, programs, fractional windows,
#: metric-specific adherence, NEWS2 over other bands, several conditions on one metric.
VARIANTS: list[dict[str, Any]] = [
    {"id": "spo2-fall", "kind": "trend", "direction": "low", "metric": SPO2,
     "statistic": "rise_from_lowest", "window_hours": 36.5, "by_at_least": 3,
     "severity": "medium", "label": "SpO2 down 3"},
    {"id": "pulse-weekly-fall", "kind": "trend", "direction": "low", "metric": PULSE,
     "statistic": "weekly_mean", "by_at_least": 3, "min_readings": 2, "severity": "low",
     "label": "weekly pulse down 3"},
    {"id": "spo2-low-10h", "kind": "sustained", "direction": "low", "metric": SPO2, "below": 90,
     "minutes": 600, "hysteresis": 1.5, "severity": "high", "label": "SpO2 < 90 for 10 h",
     "programs": ["copd"]},
    {"id": "glucose-twice", "kind": "sustained", "direction": "high", "metric": GLUCOSE,
     "above": 200, "count": 2, "severity": "medium", "label": "glucose > 200 twice"},
    {"id": "temperature-above-own", "kind": "baseline", "direction": "high",
     "metric": TEMPERATURE, "window_days": 10.7, "k": 2, "min_days": 3, "min_deviation": 0.2,
     "severity": "low", "label": "temperature above own"},
    {"id": "weight-below-own", "kind": "baseline", "direction": "low", "metric": WEIGHT,
     "window_days": 7, "k": 1.5, "min_days": 3, "min_deviation": 0.1, "severity": "low",
     "label": "weight below own", "programs": ["heart_failure"]},
    {"id": "oximeter-silent", "kind": "adherence", "check": "silent", "metric": SPO2,
     "hours": 20, "severity": "low", "label": "no SpO2 for 20 h"},
    {"id": "cuff-days", "kind": "adherence", "check": "days_with_readings", "metric": SYSTOLIC,
     "min_days": 4, "of_days": 5, "severity": "info", "label": "cuff on < 4 of 5 days"},
    {"id": "news2-any", "kind": "news2", "window_minutes": 45,
     "severities": {"low": "info", "medium": "medium", "high": "high"},
     "programs": ["copd", "heart_failure"]},
    {"id": "pulse-or-temperature", "kind": "threshold", "direction": "high", "hysteresis": 3,
     "when": [
         {"metric": PULSE, "above": 95, "severity": "low", "label": "pulse > 95"},
         {"metric": PULSE, "above": 95, "severity": "low", "label": "pulse > 95 (again)"},
         {"metric": TEMPERATURE, "above": 37.5, "severity": "medium", "label": "> 37.5"},
         {"metric": SYSTOLIC, "above": 150, "severity": "low", "label": "systolic > 150"},
     ]},
]  # fmt: skip


def variant_rules(resolve_after_minutes: float = 90) -> RuleSet:
    """The packaged rules and :data:`VARIANTS`."""
    packaged = tomllib.loads(
        resources.files("analytics").joinpath("thresholds.toml").read_text(encoding="utf-8")
    )
    variants = [{"title": rule["id"], "source": "test", **rule} for rule in VARIANTS]
    return rules_from_mapping(
        {
            "version": "variants",
            "settings": {"resolve_after_minutes": resolve_after_minutes, "late_after_hours": 6},
            "rules": packaged["rules"] + variants,
        }
    )


def test_the_engine_raises_the_reference_flags_for_options_the_defaults_do_not_use() -> None:
    frame, patients = history(5, patients=60, days=45)
    rng = np.random.default_rng(5)
    delay = np.where(rng.random(len(frame)) < 0.3, 72.0, 0.01)
    frame = frame.assign(received_at=frame["measured_at"] + pd.to_timedelta(delay, unit="h"))
    arrived = pd.concat([frame, frame.sample(200, random_state=5)]).sample(frac=1, random_state=6)
    now = frame["measured_at"].max() + pd.Timedelta(hours=30)
    flags = assert_same_flags(arrived, variant_rules(), patients=patients, now=now)
    assert {rule["id"] for rule in VARIANTS} <= set(flags["rule_id"])


#: Values at and around the limits of the rules above, per metric.
EDGE_VALUES: dict[str, list[float]] = {
    SYSTOLIC: [85, 90, 91, 96, 140, 150, 151, 155, 159, 160, 170, 171, 180, 181, 200],
    DIASTOLIC: [70, 110, 111, 120, 121, 130],
    PULSE: [35, 40, 41, 46, 60, 90, 95, 96, 99, 125, 130, 131, 140],
    SPO2: [80, 83, 84, 85, 87, 88, 89, 90, 91, 92, 93, 94, 95, 96, 97, 98],
    WEIGHT: [80.0, 80.5, 80.9, 81.0, 81.4, 82.3, 83.0],
    TEMPERATURE: [34.9, 35.0, 35.1, 35.4, 36.6, 37.5, 37.6, 38.0, 38.1, 38.3, 39.0, 39.1],
    GLUCOSE: [50, 53, 54, 60, 69, 70, 80, 190, 200, 201, 230, 250, 251, 270],
    "9279-1": [8, 12, 21, 25],  # respiration rate
    "67775-7": [0, 1],  # consciousness (ACVPU)
}
#: Few distinct times, so that many readings share an instant, a window edge or a day.
TIMES_H: list[float] = sorted({0.0, 0.25, 0.5, 1.0, 1.5, 10.0, 20.0, 24.0, 36.0, 36.5} | {
    24.0 * d + h for d in range(1, 22, 3) for h in (0.0, 0.5, 16.0)
})  # fmt: skip

reading_rows = st.lists(
    st.tuples(
        st.sampled_from(["p1", "p2", "p3"]),
        st.sampled_from(sorted(EDGE_VALUES)).flatmap(
            lambda metric: st.tuples(st.just(metric), st.sampled_from(EDGE_VALUES[metric]))
        ),
        st.sampled_from(TIMES_H),
        st.sampled_from([0.01, 0.01, 0.01, 72.0]),  # hours until received
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(
    rows=reading_rows,
    oxygen=st.booleans(),
    resolve_after=st.sampled_from([15, 90, 240]),
    now_after=st.sampled_from([-30.0, 0.0, 1.0, 60.0]),
)
def test_the_engine_raises_the_reference_flags_on_small_inputs_full_of_ties(
    rows: list[tuple[str, tuple[str, float], float, float]],
    oxygen: bool,
    resolve_after: float,
    now_after: float,
) -> None:
    frame = pd.DataFrame(
        {
            "reading_id": [f"r{i}" for i in range(len(rows))],
            "patient_id": [patient for patient, _, _, _ in rows],
            "loinc": [metric for _, (metric, _), _, _ in rows],
            "value": [float(value) for _, (_, value), _, _ in rows],
            "measured_at": [T0 + timedelta(hours=h) for _, _, h, _ in rows],
            "received_at": [T0 + timedelta(hours=h + late) for _, _, h, late in rows],
        }
    )
    patients = pd.DataFrame(
        {
            "patient_id": ["p1", "p2"],
            "program": ["copd", "heart_failure"],
            "spo2_scale": [2, 1],
            "on_oxygen": [oxygen, False],
        }
    )
    now = frame["measured_at"].max() + pd.Timedelta(hours=now_after)
    assert_same_flags(frame, variant_rules(resolve_after), patients=patients, now=now)


# --- where the engine and the reference part ------------------------------------------------------


def temperature_weekly_rise() -> RuleSet:
    return ruleset(
        {
            "id": "temperature-weekly",
            "title": "Weekly temperature rise",
            "kind": "trend",
            "direction": "high",
            "source": "test",
            "metric": TEMPERATURE,
            "statistic": "weekly_mean",
            "by_at_least": 0.1,
            "min_readings": 1,
            "severity": "low",
            "label": "weekly mean temperature up >= 0.1 C",
        }
    )


def test_the_reference_judges_each_patients_weekly_mean_on_their_readings_alone() -> None:
    b = readings((0, TEMPERATURE, 36.6), (24 * 7, TEMPERATURE, 36.7), patient_id="b")
    a = readings((0, TEMPERATURE, 36.7), patient_id="a")
    rules = temperature_weekly_rise()
    alone = evaluate_flags(b, rules)
    together = evaluate_flags(pd.concat([a, b], ignore_index=True), rules)
    assert alone["patient_id"].tolist() == together["patient_id"].tolist() == ["b"]
    assert len(engine_flags(b, rules)) == 1


def test_the_engine_judges_each_patients_weekly_mean_on_their_readings_alone() -> None:
    b = readings((0, TEMPERATURE, 36.6), (24 * 7, TEMPERATURE, 36.7), patient_id="b")
    a = readings((0, TEMPERATURE, 36.7), patient_id="a")
    assert_same_flags(pd.concat([a, b], ignore_index=True), temperature_weekly_rise())


def test_without_now_flags_resolve_by_the_latest_reading() -> None:
    rules = ruleset(high_systolic(), resolve_after_minutes=240)
    frame = readings((0, SYSTOLIC, 190), (1, SYSTOLIC, 170), (6, SYSTOLIC, 170))
    assert evaluate_flags(frame, rules).loc[0, "resolved_at"] == at(5)
    assert_same_flags(frame, rules)  # the engine: not resolved
