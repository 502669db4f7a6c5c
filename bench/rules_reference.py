"""The rules, evaluated the straightforward way: one reading at a time, in plain Python.

:mod:`analytics.signals` and :mod:`analytics.episodes` evaluate every rule over whole numpy
columns at once. This module evaluates the same rules on the same inputs with lists, dicts,
deques and the standard library, walking each patient's readings in time order, so that each
function can be checked against the rule it implements by reading it. It is the benchmark's
"row-by-row" baseline and the oracle the vectorised engine is tested against
(tests/unit/test_rules_reference.py). It is meant to be obviously right, not fast.

numpy and pandas appear only where the input frames become Python objects and where the
flags become a frame again, plus one call to ``pandas.util.hash_array`` for the hash of each
reading id that orders readings taken at the same instant (the engine's tie-break).

What the rules mean (the docstrings of :mod:`analytics.signals` and :mod:`analytics.episodes`
are the reference; each function below restates its part):

Signals. Every rule gives, for one patient, a list of signals: at some time, the rule's
verdict ``BREACH`` (the condition holds; with a severity), ``CLEAR`` (back in range, past any
hysteresis band) or ``BETWEEN`` (neither: inside the band, a run not yet long enough, too
little history to judge).

Flags (episodes). One patient's signals of one rule, in time order: a breach opens a flag when
none is open; later breaches belong to it, and its severity steps up to the most severe of
them. The flag resolves at the first CLEAR of a run of CLEAR signals plus the rule set's
``resolve_after`` (zero for adherence rules) when no BETWEEN or BREACH signal comes before
that moment, or, for the last run, when ``now`` reaches it.

Times are handled at microsecond resolution (PostgreSQL's): inputs with nanoseconds are
refused rather than rounded. Values must be finite numbers.
"""

from __future__ import annotations

import math
import statistics
from bisect import bisect_right
from collections import defaultdict, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from itertools import pairwise
from typing import Any, Final

import numpy as np
import pandas as pd

from analytics import news2
from analytics.episodes import FLAG_COLUMNS
from analytics.rule_kinds import (
    AdherenceRule,
    BaselineRule,
    News2Rule,
    SustainedRule,
    TrendRule,
)
from analytics.rules import SEVERITY_RANK, Condition, Rule, RuleSet, ThresholdRule

BREACH: Final = 1
BETWEEN: Final = 0
CLEAR: Final = -1

#: The robust standard deviation of normal data is the interquartile range / 1.349.
IQR_PER_SD: Final = 1.349
ONE_DAY: Final = timedelta(days=1)
ONE_HOUR: Final = timedelta(hours=1)
ONE_WEEK: Final = timedelta(days=7)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_NO_TIME: Final = np.iinfo("int64").min  # NaT as int64 nanoseconds


# --- the objects walked over --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading, as the rules see it."""

    reading_id: str
    patient_id: str
    loinc: str
    value: float
    at: datetime  # measured_at, UTC
    late: bool  # reached CareWatch more than the rule set's late_after after it was taken
    tiebreak: tuple[str, int]  # orders readings taken at the same instant: (LOINC, id hash)


@dataclass(frozen=True, slots=True)
class Patient:
    """What the rules need to know about a patient (the defaults when the record says
    nothing)."""

    program: str = "general"
    spo2_scale: int = 1
    on_oxygen: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """One patient and their readings in time order (simultaneous readings by tie-break)."""

    patient_id: str
    patient: Patient
    readings: list[Reading]
    by_metric: dict[str, list[Reading]]

    def of(self, metric: str | None) -> list[Reading]:
        """The readings of one metric (``None``: of every metric), in time order."""
        return self.readings if metric is None else self.by_metric.get(metric, [])


@dataclass(frozen=True, slots=True)
class Signal:
    """One rule's verdict on one patient at one time."""

    at: datetime
    state: int  # BREACH, BETWEEN or CLEAR
    metric: str
    value: float
    limit: float = math.nan
    label: str = ""
    severity: str = ""  # breaches only
    reading_id: str | None = None  # the reading it is about (None: no reading, e.g. a silence)
    tiebreak: tuple[str, int] = ("", 0)  # the reading's tie-break (none: before readings)
    late: bool = False
    detail: dict[str, Any] | None = None

    @property
    def order(self) -> tuple[datetime, tuple[str, int]]:
        """Signals are taken in time order; at the same time, signals without a reading
        first, then readings by LOINC code (as text), then by the hash of their id."""
        return (self.at, self.tiebreak)


def reading_signal(
    reading: Reading,
    state: int,
    *,
    metric: str,
    value: float | None = None,
    limit: float = math.nan,
    label: str = "",
    severity: str = "",
) -> Signal:
    """A signal about one reading, at its time (value: the reading's unless given)."""
    return Signal(
        at=reading.at,
        state=state,
        metric=metric,
        value=reading.value if value is None else value,
        limit=limit,
        label=label,
        severity=severity if state == BREACH else "",
        reading_id=reading.reading_id,
        tiebreak=reading.tiebreak,
        late=reading.late,
    )


# --- thresholds ---------------------------------------------------------------------------------


def threshold_signals(rule: ThresholdRule, stream: Stream, now: datetime) -> list[Signal]:
    """One signal per reading of each metric of the rule.

    A reading breaches when it meets a condition (strict: a value equal to a limit does not
    meet it); the breach carries the most severe condition met (the first in the file on a
    tie). Otherwise it is CLEAR when the value is ``hysteresis`` back inside the least severe
    limit (``value <= limit - hysteresis`` for high, ``>= limit + hysteresis`` for low), and
    BETWEEN when not.

    A rule over several metrics (systolic or diastolic) is back in range only when each of
    them is: a non-breach signal is BETWEEN unless every metric's latest reading at or before
    its time is CLEAR by itself (a metric not measured yet counts as CLEAR).
    """
    high = rule.direction == "high"
    alone: dict[str, list[Signal]] = {}
    for metric in sorted(rule.metrics):
        conditions = [c for c in rule.conditions if c.metric == metric]
        limits = [c.limit for c in conditions]
        least_severe_limit = min(limits) if high else max(limits)
        alone[metric] = [
            _threshold_signal(rule, reading, conditions, least_severe_limit)
            for reading in stream.of(metric)
        ]
    signals = [signal for metric in sorted(alone) for signal in alone[metric]]
    if len(rule.metrics) == 1:
        return signals
    return [_back_only_when_every_metric_is(signal, alone) for signal in signals]


def _back_only_when_every_metric_is(signal: Signal, alone: dict[str, list[Signal]]) -> Signal:
    if signal.state == BREACH:
        return signal
    for stream in alone.values():
        latest = _latest_at_or_before(stream, signal.at)
        if latest is not None and latest.state != CLEAR:
            return replace(signal, state=BETWEEN)
    return signal


def _latest_at_or_before(signals: list[Signal], at: datetime) -> Signal | None:
    """The last of ``signals`` (in time order) whose time is ``at`` or earlier."""
    measured = bisect_right(signals, at, key=lambda signal: signal.at)  # how many
    return signals[measured - 1] if measured else None


def _threshold_signal(
    rule: ThresholdRule, reading: Reading, conditions: list[Condition], least_severe_limit: float
) -> Signal:
    met = [condition for condition in conditions if condition.is_breached_by(reading.value)]
    if met:
        # max() keeps the first of equally severe conditions: the first in the file.
        worst = max(met, key=lambda condition: SEVERITY_RANK[condition.severity])
        return reading_signal(
            reading,
            BREACH,
            metric=worst.metric,
            limit=worst.limit,
            label=worst.label,
            severity=worst.severity,
        )
    if rule.direction == "high":
        back = reading.value <= least_severe_limit - rule.hysteresis
    else:
        back = reading.value >= least_severe_limit + rule.hysteresis
    return reading_signal(
        reading, CLEAR if back else BETWEEN, metric=reading.loinc, limit=least_severe_limit
    )


# --- sustained ----------------------------------------------------------------------------------


def sustained_signals(rule: SustainedRule, stream: Stream, now: datetime) -> list[Signal]:
    """One signal per reading of the metric.

    A run is a series of consecutive readings beyond the limit (strictly). A reading of a
    run BREACHes once the run has reached ``count`` readings (or lasted ``minutes`` since its
    first reading), and is BETWEEN before that. A reading not beyond the limit ends the run:
    CLEAR when it is past the hysteresis band (``value <= limit - hysteresis`` for high), else
    BETWEEN.
    """
    high = rule.direction == "high"
    signals = []
    run: list[Reading] = []
    for reading in stream.of(rule.metric):
        beyond = reading.value > rule.limit if high else reading.value < rule.limit
        if beyond:
            run.append(reading)
            if rule.count is not None:
                long_enough = len(run) >= rule.count
            else:
                long_enough = reading.at - run[0].at >= timedelta(minutes=rule.minutes or 0)
            state = BREACH if long_enough else BETWEEN
        else:
            run = []
            if high:
                back = reading.value <= rule.limit - rule.hysteresis
            else:
                back = reading.value >= rule.limit + rule.hysteresis
            state = CLEAR if back else BETWEEN
        signals.append(
            reading_signal(
                reading,
                state,
                metric=rule.metric,
                limit=rule.limit,
                label=rule.label,
                severity=rule.severity,
            )
        )
    return signals


# --- trends -------------------------------------------------------------------------------------


def trend_signals(rule: TrendRule, stream: Stream, now: datetime) -> list[Signal]:
    """One signal per reading of the metric (see the two statistics below)."""
    if rule.statistic == "rise_from_lowest":
        return _rise_from_lowest(rule, stream.of(rule.metric))
    return _weekly_mean(rule, stream.of(rule.metric))


def _rise_from_lowest(rule: TrendRule, readings: list[Reading]) -> list[Signal]:
    """Each reading against the lowest (``low``: highest) of the patient's earlier readings
    of the previous ``window_hours``: those before it in time order (at the same instant:
    earlier in tie-break order) and at most ``window_hours`` before it. None: BETWEEN. The
    change (reading - lowest; for ``low``, highest - reading) BREACHes when at least
    ``by_at_least``, else is CLEAR. The signal's value is the change."""
    high = rule.direction == "high"
    window = timedelta(hours=rule.window_hours)
    earlier: deque[Reading] = deque()  # the readings of the window before the current one
    signals = []
    for reading in readings:
        while earlier and earlier[0].at < reading.at - window:
            earlier.popleft()
        if not earlier:
            state, change = BETWEEN, math.nan
        else:
            if high:
                change = reading.value - min(e.value for e in earlier)
            else:
                change = max(e.value for e in earlier) - reading.value
            change = round(change, 9)  # 80.3 - 79.4 kg is 0.9, as the engine rounds it
            state = BREACH if change >= rule.by_at_least else CLEAR
        signals.append(_trend_signal(rule, reading, state, change))
        earlier.append(reading)
    return signals


def _weekly_mean(rule: TrendRule, readings: list[Reading]) -> list[Signal]:
    """Each reading's week (the readings in ``(t - 7 d, t]`` up to and including it in time
    order) against the week before (``(t - 14 d, t - 7 d]``). Judged when both weeks hold
    at least ``min_readings`` readings, else BETWEEN. The change of the mean (this week's -
    the week before's; for ``low``, the other way round) BREACHes when at least
    ``by_at_least``, else is CLEAR. The signal's value is the change."""
    high = rule.direction == "high"
    this_week: deque[Reading] = deque()
    week_before: deque[Reading] = deque()
    signals = []
    for reading in readings:
        this_week.append(reading)
        while this_week[0].at <= reading.at - ONE_WEEK:
            week_before.append(this_week.popleft())
        while week_before and week_before[0].at <= reading.at - 2 * ONE_WEEK:
            week_before.popleft()
        if len(this_week) >= rule.min_readings and len(week_before) >= rule.min_readings:
            rise = statistics.fmean(r.value for r in this_week) - statistics.fmean(
                r.value for r in week_before
            )
            change = round(rise if high else -rise, 9)
            state = BREACH if change >= rule.by_at_least else CLEAR
        else:
            state, change = BETWEEN, math.nan
        signals.append(_trend_signal(rule, reading, state, change))
    return signals


def _trend_signal(rule: TrendRule, reading: Reading, state: int, change: float) -> Signal:
    return reading_signal(
        reading,
        state,
        metric=rule.metric,
        value=change,
        limit=rule.by_at_least,
        label=rule.label,
        severity=rule.severity,
    )


# --- baseline -----------------------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0 <= q <= 1) of sorted values by linear interpolation, as numpy's
    default: the value at position ``q * (n - 1)``, between the two values around it."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


def baseline_signals(rule: BaselineRule, stream: Stream, now: datetime) -> list[Signal]:
    """One signal per reading of the metric, against the patient's usual.

    The usual: the patient's daily medians (UTC days) of the ``window_days`` days before the
    reading's day (not that day itself), counting the days with readings. With fewer than
    ``min_days`` of them: BETWEEN. Otherwise median M and quartiles Q1, Q3 of those daily
    medians, robust SD = (Q3 - Q1) / 1.349, allowed = max(k x robust SD, min_deviation): the
    reading BREACHes when ``value - M > allowed`` (``low``: ``M - value > allowed``), else it
    is CLEAR. The signal's limit is ``M + allowed`` (``low``: ``M - allowed``).
    """
    readings = stream.of(rule.metric)
    values_of_day: dict[date, list[float]] = defaultdict(list)
    for reading in readings:
        values_of_day[reading.at.date()].append(reading.value)
    daily_median = {day: statistics.median(values) for day, values in values_of_day.items()}
    window_days = int(rule.window_days)
    high = rule.direction == "high"
    signals = []
    for reading in readings:
        today = reading.at.date()
        previous_days = [today - timedelta(days=back) for back in range(1, window_days + 1)]
        usual = sorted(daily_median[day] for day in previous_days if day in daily_median)
        if len(usual) < rule.min_days:
            signals.append(_baseline_signal(rule, reading, BETWEEN, math.nan))
            continue
        median = percentile(usual, 0.5)
        robust_sd = (percentile(usual, 0.75) - percentile(usual, 0.25)) / IQR_PER_SD
        allowed = max(rule.k * robust_sd, rule.min_deviation)
        deviation = reading.value - median if high else median - reading.value
        limit = median + allowed if high else median - allowed
        signals.append(
            _baseline_signal(rule, reading, BREACH if deviation > allowed else CLEAR, limit)
        )
    return signals


def _baseline_signal(rule: BaselineRule, reading: Reading, state: int, limit: float) -> Signal:
    return reading_signal(
        reading, state, metric=rule.metric, limit=limit, label=rule.label, severity=rule.severity
    )


# --- adherence ----------------------------------------------------------------------------------


def adherence_signals(rule: AdherenceRule, stream: Stream, now: datetime) -> list[Signal]:
    """The patient's readings of ``metric`` (of every metric when the rule names none)."""
    if rule.check == "silent":
        return _silences(rule, stream.of(rule.metric), now)
    if rule.check == "days_with_readings":
        return _days_with_readings(rule, stream.of(rule.metric), now)
    return []  # devices and gateways: not in the readings


def _silences(rule: AdherenceRule, readings: list[Reading], now: datetime) -> list[Signal]:
    """A reading followed by no reading for more than ``hours`` (strictly: a gap of exactly
    ``hours`` is not a silence): a BREACH ``hours`` after it, whose value is the length of
    the gap in hours, and the reading that ends the gap is CLEAR. After the last reading,
    silence up to ``now`` longer than ``hours`` is a BREACH too (value: hours until now)."""
    limit = timedelta(hours=rule.hours)
    metric = rule.metric or "any"
    signals = []

    def silence(reading: Reading, until: datetime) -> Signal:
        return Signal(
            at=reading.at + limit,
            state=BREACH,
            metric=metric,
            value=(until - reading.at) / ONE_HOUR,
            limit=rule.hours,
            label=rule.label,
            severity=rule.severity,
        )

    for reading, following in pairwise(readings):
        if following.at - reading.at > limit:
            signals.append(silence(reading, following.at))
            signals.append(
                Signal(
                    at=following.at,
                    state=CLEAR,
                    metric=metric,
                    value=math.nan,
                    limit=rule.hours,
                    label=rule.label,
                    reading_id=following.reading_id,
                    tiebreak=following.tiebreak,
                )
            )
    if readings and now - readings[-1].at > limit:
        signals.append(silence(readings[-1], now))
    return signals


def _days_with_readings(
    rule: AdherenceRule, readings: list[Reading], now: datetime
) -> list[Signal]:
    """At the end (the next midnight, UTC) of each completed day from the patient's
    ``of_days``-th day on (their first day being the first with a reading), up to yesterday
    (the day before ``now``'s): BREACH when fewer than ``min_days`` of the last ``of_days``
    days (that day included) had a reading, else CLEAR. The value is that count of days."""
    last_completed_day = now.date() - ONE_DAY
    days_with_reading = {r.at.date() for r in readings if r.at.date() <= last_completed_day}
    if not days_with_reading:
        return []
    first_day = min(days_with_reading)
    signals = []
    for day in _days(first_day + (rule.of_days - 1) * ONE_DAY, last_completed_day):
        last_days = [day - back * ONE_DAY for back in range(rule.of_days)]
        count = sum(1 for d in last_days if d in days_with_reading)
        signals.append(
            Signal(
                at=datetime.combine(day + ONE_DAY, time(0), tzinfo=UTC),
                state=BREACH if count < rule.min_days else CLEAR,
                metric=rule.metric or "any",
                value=float(count),
                limit=float(rule.min_days),
                label=rule.label,
                severity=rule.severity if count < rule.min_days else "",
            )
        )
    return signals


def _days(first: date, last: date) -> Iterator[date]:
    day = first
    while day <= last:
        yield day
        day += ONE_DAY


# --- NEWS2 --------------------------------------------------------------------------------------


def news2_signals(rule: News2Rule, stream: Stream, now: datetime) -> list[Signal]:
    """One signal per observation set, at the time of its latest reading.

    Sets (:mod:`analytics.news2`): the patient's NEWS2 readings, greedily from the earliest:
    a set starts at the earliest reading not yet in a set and holds every reading measured
    at most ``window_minutes`` later (inclusive). Each parameter takes its most recent value
    in the set (at the same instant: the largest reading id as text). The score is the sum of
    the parameters' scores plus air or oxygen's (from the patient record); its response band
    BREACHes with the severity ``rule.severities`` gives it, and is CLEAR when the rule has
    no severity for it.

    A set is late when every reading its score is made of (the latest of each parameter) is
    late: an on-time reading that a late one superseded leaves the score telling of the past.
    The signal is named by the first (as text) of those readings' ids.
    """
    readings = [r for r in stream.readings if r.loinc in news2.LOINC_TO_PARAMETER]
    return [
        _news2_signal(rule, observation_set, stream.patient)
        for observation_set in _observation_sets(readings, timedelta(minutes=rule.window_minutes))
    ]


def _observation_sets(readings: list[Reading], window: timedelta) -> list[list[Reading]]:
    sets: list[list[Reading]] = []
    for reading in readings:
        if sets and reading.at <= sets[-1][0].at + window:
            sets[-1].append(reading)
        else:
            sets.append([reading])
    return sets


def _news2_signal(rule: News2Rule, observation_set: list[Reading], patient: Patient) -> Signal:
    of_parameter: dict[str, list[Reading]] = defaultdict(list)
    for reading in observation_set:
        of_parameter[news2.LOINC_TO_PARAMETER[reading.loinc]].append(reading)
    # The most recent reading; at the same instant the largest reading id as text (then value).
    latest = {
        parameter: max(candidates, key=lambda r: (r.at, r.reading_id, r.value))
        for parameter, candidates in of_parameter.items()
    }
    scores = {
        parameter: news2.score_parameter(
            parameter,
            reading.value,
            spo2_scale=patient.spo2_scale,
            on_oxygen=patient.on_oxygen,
        )
        for parameter, reading in latest.items()
    }
    oxygen = news2.score_parameter("air_or_oxygen", 1.0 if patient.on_oxygen else 0.0)
    score = sum(scores.values()) + oxygen
    band = news2.response_band(score, any(s == 3 for s in scores.values()))
    partial = len(latest) < len(news2.MEASURED_PARAMETERS)
    parameters = [p for p in news2.PARAMETERS if p in latest or p == "air_or_oxygen"]
    severity = rule.severities.get(band, "")
    scored = list(latest.values())
    named_by = min(scored, key=lambda reading: reading.reading_id)
    return Signal(
        at=observation_set[-1].at,
        state=BREACH if severity else CLEAR,
        metric="news2",
        value=float(score),
        label=f"NEWS2 {score}" + (" (partial)" if partial else ""),
        severity=severity,
        reading_id=named_by.reading_id,
        tiebreak=named_by.tiebreak,
        late=all(reading.late for reading in scored),
        detail={"score": score, "band": band, "partial": partial, "parameters": parameters},
    )


# --- rules and patients -------------------------------------------------------------------------


def applies_to(rule: Rule, patient: Patient) -> bool:
    """A rule limited to programs applies to their patients only; a threshold rule for one
    SpO2 scale to the patients on that scale only."""
    if rule.programs and patient.program not in rule.programs:
        return False
    return not (
        isinstance(rule, ThresholdRule)
        and rule.spo2_scale is not None
        and patient.spo2_scale != rule.spo2_scale
    )


def signals_of(rule: Rule, stream: Stream, now: datetime) -> list[Signal]:
    """One rule's signals for one patient, in order (time, then tie-break)."""
    if isinstance(rule, ThresholdRule):
        signals = threshold_signals(rule, stream, now)
    elif isinstance(rule, SustainedRule):
        signals = sustained_signals(rule, stream, now)
    elif isinstance(rule, TrendRule):
        signals = trend_signals(rule, stream, now)
    elif isinstance(rule, BaselineRule):
        signals = baseline_signals(rule, stream, now)
    elif isinstance(rule, AdherenceRule):
        signals = adherence_signals(rule, stream, now)
    elif isinstance(rule, News2Rule):
        signals = news2_signals(rule, stream, now)
    else:
        raise TypeError(f"unknown rule {rule!r}")
    return sorted(signals, key=lambda signal: signal.order)


# --- episodes -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Flag:
    """One flag: opened by a breach, joined by later ones, resolved (or not yet)."""

    patient_id: str
    rule: Rule
    opening: Signal
    severity: str
    breaches: int
    worst_value: float
    last_breach_at: datetime
    resolved_at: datetime | None = None

    @classmethod
    def open(cls, patient_id: str, rule: Rule, breach: Signal) -> Flag:
        return cls(patient_id, rule, breach, breach.severity, 1, breach.value, breach.at)

    def add(self, breach: Signal) -> None:
        """A later breach: severity up to the most severe so far (never down), the worst
        value, one more breach. The worst is the lowest for a reading of a ``low`` threshold,
        sustained or baseline rule and for a count of days with readings; else the highest
        (a trend's change, a silence's hours, a NEWS2 score, a ``high`` reading)."""
        if SEVERITY_RANK[breach.severity] > SEVERITY_RANK[self.severity]:
            self.severity = breach.severity
        reading_low = self.rule.kind in ("threshold", "sustained", "baseline")
        if (reading_low and self.rule.direction == "low") or (
            getattr(self.rule, "check", None) == "days_with_readings"
        ):
            self.worst_value = min(self.worst_value, breach.value)
        else:
            self.worst_value = max(self.worst_value, breach.value)
        self.breaches += 1
        self.last_breach_at = max(self.last_breach_at, breach.at)


def flags_of(
    patient_id: str, rule: Rule, signals: list[Signal], *, wait: timedelta, now: datetime
) -> list[Flag]:
    """The flags one patient's signals of one rule (in order) amount to.

    A breach opens a flag when none is open, else joins the open one. A run of CLEAR signals
    resolves the open flag at (the run's first signal + ``wait``) when the next BETWEEN or
    BREACH signal comes no earlier than that (one exactly then does not prevent it), or, if
    the run is the last, when ``now`` has reached that moment.
    """
    flags: list[Flag] = []
    open_flag: Flag | None = None
    back_since: datetime | None = None  # the first signal of the current run of CLEARs
    for signal in signals:
        if signal.state == CLEAR:
            if back_since is None:
                back_since = signal.at
            continue
        if back_since is not None and open_flag is not None and signal.at >= back_since + wait:
            open_flag.resolved_at = back_since + wait
            open_flag = None
        back_since = None
        if signal.state == BREACH:
            if open_flag is None:
                open_flag = Flag.open(patient_id, rule, signal)
                flags.append(open_flag)
            else:
                open_flag.add(signal)
    if back_since is not None and open_flag is not None and now >= back_since + wait:
        open_flag.resolved_at = back_since + wait
    return flags


def resolve_after(rule: Rule, rules: RuleSet) -> timedelta:
    """How long a value must stay back in range: the rule set's ``resolve_after``; none for
    adherence (the reading that ends the silence resolves it)."""
    return timedelta(0) if isinstance(rule, AdherenceRule) else rules.resolve_after


# --- the whole evaluation -----------------------------------------------------------------------


def evaluate_flags(
    readings: pd.DataFrame,
    rules: RuleSet,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
) -> pd.DataFrame:
    """The flags ``rules`` raise over ``readings``: the columns of
    :data:`analytics.episodes.FLAG_COLUMNS`, sorted by ``opened_at``, patient, rule.

    The inputs of :func:`analytics.signals.evaluate`: readings (``reading_id``,
    ``patient_id``, ``loinc``, ``value``, timezone-aware ``measured_at``, optional
    ``received_at``) and patients (optional: ``patient_id``, ``program``, ``spo2_scale``,
    ``on_oxygen``). ``now`` (default: the latest ``measured_at``; a naive time is UTC) is how
    long a silence has lasted so far, and bounds the last wait for a resolution.
    """
    streams = load_streams(readings, rules, patients)
    end = _end(streams, now)
    flags = []
    for stream in streams:
        for rule in rules.rules:
            if applies_to(rule, stream.patient):
                signals = signals_of(rule, stream, end)
                wait = resolve_after(rule, rules)
                flags += flags_of(stream.patient_id, rule, signals, wait=wait, now=end)
    flags.sort(key=lambda flag: (flag.opening.at, flag.patient_id, flag.rule.id))
    return _flags_frame(flags)


def signals_by_rule(
    readings: pd.DataFrame,
    rules: RuleSet,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
) -> dict[tuple[str, str], list[Signal]]:
    """Every (patient id, rule id)'s signals in order, repeats included (for looking into a
    difference; :func:`evaluate_flags` is the same walk)."""
    streams = load_streams(readings, rules, patients)
    end = _end(streams, now)
    return {
        (stream.patient_id, rule.id): signals_of(rule, stream, end)
        for stream in streams
        for rule in rules.rules
        if applies_to(rule, stream.patient)
    }


def _end(streams: list[Stream], now: datetime | pd.Timestamp | None) -> datetime:
    """``now`` in UTC (naive: taken as UTC); by default the latest reading's time."""
    if now is None:
        return max((stream.readings[-1].at for stream in streams), default=_EPOCH)
    stamp = pd.Timestamp(now)
    return _utc_instant((stamp if stamp.tzinfo else stamp.tz_localize("UTC")).value)


# --- loading and output -------------------------------------------------------------------------


def load_streams(
    readings: pd.DataFrame, rules: RuleSet, patients: pd.DataFrame | None = None
) -> list[Stream]:
    """The readings as :class:`Reading` objects, each reading id once (its first row),
    grouped by patient (sorted by id as text), each patient's in time order."""
    if readings.empty:
        return []
    ids = readings["reading_id"].astype(str).tolist()
    values = pd.to_numeric(readings["value"], errors="raise").astype("float64").tolist()
    measured = _nanoseconds(readings["measured_at"])
    received = (
        _nanoseconds(readings["received_at"])
        if "received_at" in readings.columns
        else [None] * len(ids)
    )
    # Lateness compares nanoseconds: a received_at may be as precise as its clock.
    late_after = rules.late_after // timedelta(microseconds=1) * 1000
    columns = zip(
        ids,
        readings["patient_id"].astype(str).tolist(),
        readings["loinc"].astype(str).tolist(),
        values,
        measured,
        received,
        tiebreaks(ids),
        strict=True,
    )
    by_patient: dict[str, list[Reading]] = defaultdict(list)
    seen: set[str] = set()
    for reading_id, patient_id, loinc, value, measured_ns, received_ns, tiebreak in columns:
        if reading_id in seen:
            continue  # the same reading delivered again
        seen.add(reading_id)
        if measured_ns is None or not math.isfinite(value):
            raise ValueError(f"reading {reading_id}: needs a measured_at and a finite value")
        late = received_ns is not None and received_ns - measured_ns > late_after
        at = _utc_instant(measured_ns)
        by_patient[patient_id].append(
            Reading(reading_id, patient_id, loinc, value, at, late, (loinc, tiebreak))
        )
    people = load_patients(patients)
    streams = []
    for patient_id in sorted(by_patient):
        ordered = sorted(by_patient[patient_id], key=lambda r: (r.at, r.tiebreak))
        by_metric: dict[str, list[Reading]] = defaultdict(list)
        for reading in ordered:
            by_metric[reading.loinc].append(reading)
        patient = people.get(patient_id, Patient())
        streams.append(Stream(patient_id, patient, ordered, dict(by_metric)))
    return streams


def tiebreaks(reading_ids: list[str]) -> list[int]:
    """``pandas.util.hash_array(numpy.array([reading_id], dtype=object))[0]`` of each id, in
    one call (each element's hash depends on that element only): the order of readings taken
    at the same instant, the same as the engine's."""
    if not reading_ids:
        return []
    return [int(h) for h in pd.util.hash_array(np.array(reading_ids, dtype=object))]


def load_patients(patients: pd.DataFrame | None) -> dict[str, Patient]:
    """Each patient's record (the first row of each id); missing fields take the defaults:
    program ``general``, SpO2 scale 1, on air."""
    if patients is None or patients.empty:
        return {}
    people: dict[str, Patient] = {}
    for record in patients.to_dict("records"):
        patient_id = str(record["patient_id"])
        if patient_id in people:
            continue
        program, scale, oxygen = (
            record.get("program"),
            record.get("spo2_scale"),
            record.get("on_oxygen"),
        )
        if not _missing(scale):
            scale = pd.to_numeric(scale, errors="coerce")  # "2" or 2.0: 2; "x": missing
        people[patient_id] = Patient(
            program="general" if _missing(program) else str(program),
            spo2_scale=1 if _missing(scale) else int(scale),
            on_oxygen=False if _missing(oxygen) else bool(oxygen),
        )
    return people


def _missing(value: Any) -> bool:
    return value is None or bool(pd.isna(value))


def _nanoseconds(column: pd.Series) -> list[int | None]:
    """Timezone-aware times as nanoseconds since the epoch, UTC (None for a missing one)."""
    if isinstance(column.dtype, pd.DatetimeTZDtype):
        utc = column.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(column.dtype):
        raise ValueError("times must be timezone-aware (got naive datetimes)")
    else:
        utc = pd.to_datetime(column, utc=True)
    nanoseconds = utc.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").view("int64")
    return [None if ns == _NO_TIME else ns for ns in nanoseconds.tolist()]


def _utc_instant(nanoseconds: int) -> datetime:
    """A time as a UTC :class:`datetime`; times are taken at microsecond resolution."""
    if nanoseconds % 1000:
        raise ValueError("times with nanoseconds are not supported (microseconds at most)")
    return _EPOCH + timedelta(microseconds=nanoseconds // 1000)


def _flags_frame(flags: list[Flag]) -> pd.DataFrame:
    def column(get: Any, dtype: str = "object") -> pd.Series:
        return pd.Series([get(flag) for flag in flags], dtype=dtype)

    frame = pd.DataFrame(
        {
            "patient_id": column(lambda f: f.patient_id),
            "rule_id": column(lambda f: f.rule.id),
            "kind": column(lambda f: f.rule.kind),
            "direction": column(lambda f: f.rule.direction),
            "metric": column(lambda f: f.opening.metric),
            "severity": column(lambda f: f.severity),
            "opening_severity": column(lambda f: f.opening.severity),
            "opened_at": column(lambda f: f.opening.at, "datetime64[ns, UTC]"),
            "last_breach_at": column(lambda f: f.last_breach_at, "datetime64[ns, UTC]"),
            "resolved_at": column(lambda f: f.resolved_at, "datetime64[ns, UTC]"),
            "breaches": column(lambda f: f.breaches, "int64"),
            "value": column(lambda f: f.opening.value, "float64"),
            "worst_value": column(lambda f: f.worst_value, "float64"),
            "limit": column(lambda f: f.opening.limit, "float64"),
            "label": column(lambda f: f.opening.label),
            "reading_id": column(lambda f: f.opening.reading_id),
            "late": column(lambda f: f.opening.late, "bool"),
            "detail": column(lambda f: f.opening.detail),
        }
    )
    return frame.loc[:, list(FLAG_COLUMNS)]
