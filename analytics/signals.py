"""Signals: what each rule says about a patient at each moment, vectorised over all readings.

A signal is one rule's verdict at one time for one patient (and direction):

- ``state = 1`` (breach): the rule's condition holds; carries a severity;
- ``state = -1`` (clear): the value is back in range (past any hysteresis band);
- ``state = 0`` (in between): neither, e.g. inside the hysteresis band, a run not yet long
  enough, or too little history to judge. It keeps an open flag open without raising it.

:mod:`analytics.episodes` turns the signals of each (patient, rule, direction) into flags.
Everything here is a pure function of the readings (deduplicated by reading id) and of the
patients' attributes, never of the order they arrived in: the same readings give the same
signals, live or in a backtest.

Readings frame: ``reading_id``, ``patient_id``, ``loinc``, ``value``, ``measured_at``
(timezone-aware) and, optionally, ``received_at`` (when CareWatch got it: a reading that
arrives long after it was taken is marked late).
Patients frame (optional): ``patient_id``, ``program``, ``spo2_scale``, ``on_oxygen``.

Implementation: one sort of the readings by integer keys (patient, metric, time, and a hash
of the reading id to break ties), then numpy over whole columns per rule; every rule looks at
one patient's readings of one metric in time order. Signals are built as numpy columns and
sorted once by (patient, rule, direction, time, reading).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Final

import numpy as np
import pandas as pd

from analytics import news2
from analytics.rule_kinds import (
    AdherenceRule,
    BaselineRule,
    News2Rule,
    SustainedRule,
    TrendRule,
)
from analytics.rules import SEVERITY_RANK, Rule, RuleSet, ThresholdRule

BREACH: Final = 1
BETWEEN: Final = 0
CLEAR: Final = -1

SIGNAL_COLUMNS: Final[tuple[str, ...]] = (
    "patient_id",
    "rule_id",
    "kind",
    "direction",
    "metric",
    "at",
    "state",
    "severity",
    "value",
    "limit",
    "label",
    "reading_id",
    "late",
    "detail",
    "group",
)

#: Trend changes are rounded to this many decimals before the comparison: a gain from 79.4 to
#: 80.3 kg is 0.9 kg, not the 0.8999999999999915 of floating point.
CHANGE_DECIMALS: Final = 9
#: The robust standard deviation of normal data is the interquartile range / 1.349.
IQR_PER_SD: Final = 1.349
_NS_PER_DAY: Final = 86_400 * 10**9
_NAT: Final = np.iinfo("int64").min


def empty_signals() -> pd.DataFrame:
    return _frame(_Columns.empty(), patients=np.array([], dtype=object), rules=())


@dataclass(frozen=True)
class Readings:
    """The readings sorted by patient, metric, time, reading; as numpy columns."""

    patient: np.ndarray  # int64 code into ``patient_ids``
    patient_ids: np.ndarray  # object: the patient ids, sorted
    loinc: np.ndarray  # object
    value: np.ndarray  # float64
    at: np.ndarray  # int64 nanoseconds since the epoch, UTC
    reading_id: np.ndarray  # object
    tiebreak: np.ndarray  # uint64: a hash of the reading id, orders simultaneous readings
    late: np.ndarray  # bool
    metric_rows: dict[str, np.ndarray]  # loinc -> row positions (in order)
    by_time: np.ndarray  # all row positions in (patient, time, reading) order
    keep_repeats: bool = False  # evaluate(repeats=True): every reading's signal

    def rows(self, loinc: str | None, eligible: np.ndarray | None) -> np.ndarray:
        """Row positions of one metric (None: all), limited to eligible patients."""
        rows = self.metric_rows.get(loinc, np.array([], dtype="int64")) if loinc else None
        if rows is None:
            rows = self.by_time
        if eligible is not None:
            rows = rows[eligible[self.patient[rows]]]
        return rows


def prepare_readings(readings: pd.DataFrame, rules: RuleSet) -> Readings:
    """Each reading id once, times in UTC, sorted, with lateness worked out."""
    ids = readings["reading_id"].astype(str)
    again = ids.duplicated(keep="first").to_numpy()
    frame = readings.loc[~again] if again.any() else readings
    reading_id = ids.to_numpy(dtype=object)[~again] if again.any() else ids.to_numpy(dtype=object)
    patient, patient_ids = pd.factorize(frame["patient_id"], sort=True)
    patient_ids = np.asarray(patient_ids, dtype=object).astype(str).astype(object)
    loinc_code, loincs = pd.factorize(frame["loinc"], sort=True)
    at = _nanoseconds(frame["measured_at"])
    order, tiebreak = _reading_order(patient, loinc_code, at, reading_id)
    late = np.zeros(len(frame), dtype=bool)
    if "received_at" in frame.columns:
        received = _nanoseconds(frame["received_at"])
        known = received != _NAT
        late = known & (received - at > pd.Timedelta(rules.late_after).value)
    loinc_sorted = loinc_code[order]
    # Each metric's rows, in (patient, time) order: a stable argsort on the metric code.
    by_metric = np.argsort(loinc_sorted, kind="stable")
    codes_in_order = loinc_sorted[by_metric]
    starts = np.flatnonzero(np.r_[True, codes_in_order[1:] != codes_in_order[:-1]])
    ends = np.r_[starts[1:], len(by_metric)]
    metric_rows = {
        str(loincs[codes_in_order[start]]): by_metric[start:end]
        for start, end in zip(starts, ends, strict=True)
    }
    return Readings(
        patient=patient[order].astype("int64"),
        patient_ids=np.asarray(patient_ids, dtype=object),
        loinc=np.asarray(loincs, dtype=object)[loinc_sorted],
        value=pd.to_numeric(frame["value"], errors="raise").to_numpy(dtype="float64")[order],
        at=at[order],
        reading_id=reading_id[order],
        tiebreak=tiebreak[order],
        late=late[order],
        metric_rows=metric_rows,
        by_time=np.lexsort((tiebreak[order], at[order], patient[order])),
    )


def _reading_order(
    patient: np.ndarray, loinc_code: np.ndarray, at: np.ndarray, reading_id: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The readings' order (patient, metric, time, then the hash of the reading id) and each
    reading's tie-break key: ``(metric code + 1) << 56``, plus the top 56 bits of the id's hash
    where two readings of one metric share an instant. Signals at one instant then order by
    metric (LOINC as text), then by that hash, whatever order the readings came in; hashing
    only the (rare) ties spares hashing two million ids."""
    order = np.lexsort((at, loinc_code, patient))
    p, m, t = patient[order], loinc_code[order], at[order]
    same = np.r_[False, (p[1:] == p[:-1]) & (m[1:] == m[:-1]) & (t[1:] == t[:-1])]
    tiebreak = (loinc_code.astype("uint64") + np.uint64(1)) << np.uint64(56)
    if same.any():
        tied = same | np.r_[same[1:], False]  # every member of each group of equals
        positions = np.flatnonzero(tied)
        members = order[positions]
        hashes = pd.util.hash_array(reading_id[members]) >> np.uint64(8)
        tiebreak[members] |= hashes
        group = np.cumsum(~same)[positions]
        order[positions] = members[np.lexsort((tiebreak[members], group))]
    return order, tiebreak


def prepare_patients(patients: pd.DataFrame | None, patient_ids: np.ndarray) -> pd.DataFrame:
    """One row per patient of the readings (in code order): program (default ``general``),
    SpO2 scale (default 1) and whether on oxygen (default no)."""
    base = pd.DataFrame({"patient_id": patient_ids})
    defaults = {"program": "general", "spo2_scale": 1, "on_oxygen": False}
    if patients is None or patients.empty:
        return base.assign(**defaults)
    known = patients.assign(patient_id=patients["patient_id"].astype(str))
    columns = ["patient_id", *(c for c in defaults if c in known.columns)]
    merged = base.merge(
        known.loc[:, columns].drop_duplicates("patient_id"), on="patient_id", how="left"
    )
    none = pd.Series(None, index=merged.index, dtype=object)
    program = merged.get("program", none)
    scale = merged.get("spo2_scale", none)
    oxygen = merged.get("on_oxygen", none)
    return pd.DataFrame(
        {
            "patient_id": merged["patient_id"],
            "program": program.where(program.notna(), "general").astype(str),
            "spo2_scale": pd.to_numeric(scale, errors="coerce").fillna(1).astype("int64"),
            "on_oxygen": oxygen.astype("boolean").fillna(False).astype(bool),
        }
    )


def evaluate(
    readings: pd.DataFrame,
    rules: RuleSet,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
    repeats: bool = False,
) -> pd.DataFrame:
    """Every rule's signals over ``readings``, sorted by patient, rule, direction, time and
    reading. ``group`` numbers each (patient, rule, direction)'s contiguous signals.
    A signal that repeats its group's previous state (clear after clear, as most are) changes
    nothing in the flags and is left out unless ``repeats``.

    ``now`` matters to adherence only (how long a silence has lasted so far); it defaults to
    the latest reading's time.
    """
    if readings.empty:
        return empty_signals()
    data = replace(prepare_readings(readings, rules), keep_repeats=repeats)
    people = prepare_patients(patients, data.patient_ids)
    end = int(data.at.max()) if now is None else pd.Timestamp(now).value
    parts = []
    for index, rule in enumerate(rules.rules):
        eligible = _eligible(rule, people)
        result = _EVALUATORS[type(rule)](rule, data, people, eligible, end)
        streams = result if isinstance(result, list) else [result]
        for stream in streams:
            if stream is not None and len(stream.state):
                parts.append((stream if repeats else stream.without_repeats()).with_rule(index))
    if not parts:
        return empty_signals()
    columns = _Columns.concatenate(parts)
    signals = _frame(columns, patients=data.patient_ids, rules=rules.rules, repeats=repeats)
    signals.attrs["now"] = pd.Timestamp(end, tz="UTC")  # episodes' default end
    return signals


def _eligible(rule: Rule, people: pd.DataFrame) -> np.ndarray | None:
    """Which patient codes a rule applies to (None: everyone)."""
    mask = np.ones(len(people), dtype=bool)
    if rule.programs:
        mask &= people["program"].isin(rule.programs).to_numpy()
    if isinstance(rule, ThresholdRule) and rule.spo2_scale is not None:
        mask &= (people["spo2_scale"] == rule.spo2_scale).to_numpy()
    return None if mask.all() else mask


@dataclass
class _Columns:
    """Signals as numpy columns, before they become a frame."""

    patient: np.ndarray
    at: np.ndarray  # int64 ns
    state: np.ndarray
    severity: np.ndarray  # object
    value: np.ndarray
    limit: np.ndarray
    label: np.ndarray  # object
    reading_id: np.ndarray  # object (None for adherence)
    tiebreak: np.ndarray  # uint64 (0 without a reading)
    late: np.ndarray
    metric: np.ndarray  # object
    detail: np.ndarray  # object
    rule: np.ndarray | None = None  # int64 index into the rule set
    #: In (patient, time) order, one stream of one metric (or one set of them, combined):
    #: then a signal repeating its predecessor's state can be left out here already.
    ordered: bool = True

    @classmethod
    def empty(cls) -> _Columns:
        nothing = np.array([], dtype=object)
        return cls(
            np.array([], dtype="int64"),
            np.array([], dtype="int64"),
            np.array([], dtype="int8"),
            nothing,
            np.array([], dtype="float64"),
            np.array([], dtype="float64"),
            nothing,
            nothing,
            np.array([], dtype="uint64"),
            np.array([], dtype=bool),
            nothing,
            nothing,
            np.array([], dtype="int64"),
        )

    def with_rule(self, index: int) -> _Columns:
        self.rule = np.full(len(self.state), index, dtype="int64")
        return self

    def without_repeats(self) -> _Columns:
        """The signals that change something: each patient's first, every breach, and each
        whose state differs from the previous one (clear after clear, most of them, go)."""
        if not self.ordered:
            return self
        patient, state = self.patient, self.state
        keep = np.r_[True, (patient[1:] != patient[:-1]) | (state[1:] != state[:-1])]
        keep |= state == BREACH
        if keep.all():
            return self
        return _Columns(
            **{
                name: value[keep] if isinstance(value, np.ndarray) else value
                for name, value in self.__dict__.items()
            }
        )

    @classmethod
    def concatenate(cls, parts: list[_Columns]) -> _Columns:
        joined: dict[str, Any] = {
            name: None
            if any(getattr(p, name) is None for p in parts)
            else np.concatenate([getattr(p, name) for p in parts])
            for name in cls.__dataclass_fields__
            if name != "ordered"
        }
        return cls(**joined, ordered=False)


def _per_reading(
    data: Readings,
    rows: np.ndarray,
    *,
    state: np.ndarray,
    severity: str | np.ndarray,
    value: np.ndarray,
    limit: float | np.ndarray,
    label: str | np.ndarray,
    metric: str,
    combined_later: bool = False,
) -> _Columns:
    """One signal per reading of ``rows`` (one patient-ordered stream). Unless the readings
    keep repeats or the stream is still to be combined with others, a signal repeating its
    predecessor's state is left out before anything is built for it."""
    if not (data.keep_repeats or combined_later):
        patient = data.patient[rows]
        keep = np.r_[True, (patient[1:] != patient[:-1]) | (state[1:] != state[:-1])]
        keep |= state == BREACH
        rows, state = rows[keep], state[keep]
        value = np.asarray(value)[keep]
        severity = severity[keep] if isinstance(severity, np.ndarray) else severity
        limit = limit[keep] if isinstance(limit, np.ndarray) else limit
        label = label[keep] if isinstance(label, np.ndarray) else label
    n = len(rows)
    return _Columns(
        patient=data.patient[rows],
        at=data.at[rows],
        state=state.astype("int8"),
        severity=np.where(state == BREACH, severity, "").astype(object),
        value=np.asarray(value, dtype="float64"),
        limit=np.broadcast_to(np.asarray(limit, dtype="float64"), (n,)).copy(),
        label=np.broadcast_to(np.asarray(label, dtype=object), (n,)).copy(),
        reading_id=data.reading_id[rows],
        tiebreak=data.tiebreak[rows],
        late=data.late[rows],
        metric=np.full(n, metric, dtype=object),
        detail=np.full(n, None, dtype=object),
    )


def _frame(
    columns: _Columns, *, patients: np.ndarray, rules: tuple[Rule, ...], repeats: bool = False
) -> pd.DataFrame:
    """Sort once by (patient, rule, time, reading), leave out repeats, name everything."""
    rule_ids = np.array([r.id for r in rules], dtype=object)
    kinds = np.array([r.kind for r in rules], dtype=object)
    directions = np.array([r.direction for r in rules], dtype=object)
    rules_of_rows = columns.rule if columns.rule is not None else np.zeros_like(columns.patient)
    order = np.lexsort((columns.tiebreak, columns.at, rules_of_rows, columns.patient))
    patient, rule, state = columns.patient[order], rules_of_rows[order], columns.state[order]
    new_group = np.r_[True, (patient[1:] != patient[:-1]) | (rule[1:] != rule[:-1])][: len(order)]
    keep = new_group | (state == BREACH) | np.r_[True, state[1:] != state[:-1]][: len(order)]
    keep |= repeats
    order, patient, rule, new_group = order[keep], patient[keep], rule[keep], new_group[keep]
    return pd.DataFrame(
        {
            "patient_id": patients[patient] if len(patient) else patient.astype(object),
            "rule_id": rule_ids[rule] if len(rule) else rule.astype(object),
            "kind": kinds[rule] if len(rule) else rule.astype(object),
            "direction": directions[rule] if len(rule) else rule.astype(object),
            "metric": columns.metric[order],
            "at": pd.DatetimeIndex(columns.at[order].astype("datetime64[ns]")).tz_localize("UTC"),
            "state": columns.state[order],
            "severity": columns.severity[order],
            "value": columns.value[order],
            "limit": columns.limit[order],
            "label": columns.label[order],
            "reading_id": columns.reading_id[order],
            "late": columns.late[order],
            "detail": columns.detail[order],
            "group": (np.cumsum(new_group) - 1).astype("int64"),
        }
    )


# --- thresholds ---------------------------------------------------------------------------------

#: Severity names indexed by rank, then "" (no severity) at the end.
_SEVERITY_BY_RANK: Final = np.array(
    [name for name, _ in sorted(SEVERITY_RANK.items(), key=lambda item: item[1])] + [""],
    dtype=object,
)


def _threshold(
    rule: ThresholdRule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> list[_Columns]:
    """Per metric of the rule: breach with the most severe condition met (the first in the
    file on a tie); clear once the value is ``hysteresis`` back inside the least severe limit;
    in between otherwise. Limits are strict: a value equal to a limit does not meet it."""
    high = rule.direction == "high"
    parts = []
    for metric in sorted(rule.metrics):
        rows = data.rows(metric, eligible)
        if not len(rows):
            continue
        values = data.value[rows]
        best_rank = np.full(len(values), -1, dtype="int64")
        best_limit = np.full(len(values), np.nan)
        best_label = np.full(len(values), "", dtype=object)
        conditions = [c for c in rule.conditions if c.metric == metric]
        for condition in conditions:
            met = values > condition.limit if high else values < condition.limit
            better = met & (SEVERITY_RANK[condition.severity] > best_rank)
            best_rank[better] = SEVERITY_RANK[condition.severity]
            best_limit[better] = condition.limit
            best_label[better] = condition.label
        least = min(c.limit for c in conditions) if high else max(c.limit for c in conditions)
        back = values <= least - rule.hysteresis if high else values >= least + rule.hysteresis
        breached = best_rank >= 0
        parts.append(
            _per_reading(
                data,
                rows,
                state=np.where(breached, BREACH, np.where(back, CLEAR, BETWEEN)),
                severity=_SEVERITY_BY_RANK[np.where(breached, best_rank, len(SEVERITY_RANK))],
                value=values,
                limit=np.where(breached, best_limit, least),
                label=np.where(breached, best_label, ""),
                metric=metric,
                combined_later=len(rule.metrics) > 1,
            )
        )
    if len(parts) > 1:
        _clear_only_when_all_clear(parts)
    return parts


def _clear_only_when_all_clear(streams: list[_Columns]) -> None:
    """A rule over several metrics (systolic or diastolic) is back in range only when each
    metric's latest reading (at or before the signal's time) is: a non-breach signal while
    another metric is still beyond its limit or in its band becomes in between. Changes
    each stream's states in place, from the states as each metric judged itself."""
    own = [stream.state.copy() for stream in streams]
    origin = min(int(stream.at.min()) for stream in streams) // 1000
    stride = max(int(stream.at.max()) for stream in streams) // 1000 - origin + 1
    keys = [stream.patient * stride + (stream.at // 1000 - origin) for stream in streams]
    for stream, query in zip(streams, keys, strict=True):
        state = stream.state.copy()
        for other_key, other_stream, other_state in zip(keys, streams, own, strict=True):
            latest = np.searchsorted(other_key, query, side="right") - 1
            position = np.maximum(latest, 0)
            same = (latest >= 0) & (other_stream.patient[position] == stream.patient)
            other = np.where(same, other_state[position], CLEAR)
            state = np.where((state != BREACH) & (other >= BETWEEN), BETWEEN, state)
        stream.state = state.astype("int8")


# --- sustained ----------------------------------------------------------------------------------


def _run_starts(patient: np.ndarray, flag: np.ndarray) -> np.ndarray:
    """Row index of the start of each row's run (same patient, same ``flag``)."""
    starts = np.r_[True, (patient[1:] != patient[:-1]) | (flag[1:] != flag[:-1])]
    return np.flatnonzero(starts)[np.cumsum(starts) - 1]


def _sustained(
    rule: SustainedRule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> _Columns | None:
    """A breach from the reading that completes a run of ``count`` consecutive readings
    beyond the limit (or a run lasting ``minutes``), for the rest of that run. A reading back
    past the hysteresis band is clear; any other reading ends the run without clearing."""
    rows = data.rows(rule.metric, eligible)
    if not len(rows):
        return None
    high = rule.direction == "high"
    values = data.value[rows]
    beyond = values > rule.limit if high else values < rule.limit
    start = _run_starts(data.patient[rows], beyond)
    if rule.count is not None:
        sustained = beyond & (np.arange(len(rows)) - start + 1 >= rule.count)
    else:
        at = data.at[rows]
        sustained = beyond & (at - at[start] >= int(rule.minutes * 60 * 10**9))
    back = (
        values <= rule.limit - rule.hysteresis if high else values >= rule.limit + rule.hysteresis
    )
    return _per_reading(
        data,
        rows,
        state=np.where(sustained, BREACH, np.where(back, CLEAR, BETWEEN)),
        severity=rule.severity,
        value=values,
        limit=rule.limit,
        label=rule.label,
        metric=rule.metric,
    )


# --- trends -------------------------------------------------------------------------------------


def _window_start(
    patient: np.ndarray, at: np.ndarray, window_ns: int, *, include_edge: bool = True
) -> np.ndarray:
    """For each row, the first row of the same patient with ``at >= row.at - window`` (or
    ``>`` without ``include_edge``); rows sorted by patient, then time. One search over a key
    that puts each patient's times, in microseconds (the database's resolution), in a range
    of their own."""
    micros = at // 1000
    window = window_ns // 1000
    offset = micros - micros.min()
    stride = int(offset.max()) + window + 1
    if int(patient.max()) * stride >= 2**62:  # decades of data for very many patients
        raise ValueError("time span too long for one evaluation: evaluate fewer patients")
    key = patient * stride + offset
    return np.searchsorted(key, key - window, side="left" if include_edge else "right")


def _trend(
    rule: TrendRule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> _Columns | None:
    """``rise_from_lowest``: each reading against the lowest (highest, for ``low``) reading of
    the previous ``window_hours`` (readings before it, at most that long before); none: in
    between. ``weekly_mean``: the mean of the 7 days up to each reading against the mean of
    the 7 days before; fewer than ``min_readings`` in either week: in between."""
    rows = data.rows(rule.metric, eligible)
    if not len(rows):
        return None
    high = rule.direction == "high"
    patient, at, values = data.patient[rows], data.at[rows], data.value[rows]
    if rule.statistic == "rise_from_lowest":
        window = int(rule.window_hours * 3600 * 10**9)
        first = _window_start(patient, at, window)
        reference = _prior_extreme(values, first, lowest=high)
        change = values - reference if high else reference - values
        judged = ~np.isnan(reference)
    else:
        week = 7 * _NS_PER_DAY
        # Windows (t - 7 d, t] and (t - 14 d, t - 7 d], by prefix sums over the sorted rows.
        week_start = _window_start(patient, at, week, include_edge=False)
        two_week_start = _window_start(patient, at, 2 * week, include_edge=False)
        # Running sums restart with each patient: a patient's means never carry the rounding
        # of other patients' sums.
        running = pd.Series(values).groupby(patient).cumsum().to_numpy()
        patient_start = _run_starts(patient, np.zeros(len(rows), dtype=bool))
        index = np.arange(len(rows))

        def sum_before(position: np.ndarray) -> np.ndarray:
            """The patient's sum of the rows before ``position`` (0 at their first row)."""
            return np.where(position > patient_start, running[np.maximum(position - 1, 0)], 0.0)

        count7 = index + 1 - week_start
        sum7 = running - sum_before(week_start)
        previous_count = week_start - two_week_start
        previous_sum = sum_before(week_start) - sum_before(two_week_start)
        with np.errstate(invalid="ignore", divide="ignore"):
            change = sum7 / count7 - previous_sum / previous_count
        change = change if high else -change
        judged = (count7 >= rule.min_readings) & (previous_count >= rule.min_readings)
    change = np.round(change, CHANGE_DECIMALS)
    met = judged & (change >= rule.by_at_least)
    return _per_reading(
        data,
        rows,
        state=np.where(met, BREACH, np.where(judged, CLEAR, BETWEEN)),
        severity=rule.severity,
        value=np.where(judged, change, np.nan),
        limit=rule.by_at_least,
        label=rule.label,
        metric=rule.metric,
    )


def _prior_extreme(values: np.ndarray, first: np.ndarray, *, lowest: bool) -> np.ndarray:
    """For each row i, min (or max) of ``values[first[i]:i]`` (NaN when empty): a sparse
    table of powers of two answers every range in O(1) after O(n log n) set-up."""
    n = len(values)
    out = np.full(n, np.nan)
    lengths = np.arange(n) - first
    has = lengths > 0
    if not has.any():
        return out
    pick = np.minimum if lowest else np.maximum
    table = [values]
    span = 1
    while span * 2 <= lengths.max():
        previous = table[-1]
        table.append(pick(previous[:-span], previous[span:]))
        span *= 2
    rows = np.flatnonzero(has)
    length = lengths[rows]
    level = np.floor(np.log2(length)).astype("int64")
    for k in np.unique(level):
        selected = rows[level == k]
        left = first[selected]
        right = selected - (1 << k)  # the last 2**k values end at selected - 1
        out[selected] = pick(table[k][left], table[k][right])
    return out


# --- baseline -----------------------------------------------------------------------------------


def _baseline(
    rule: BaselineRule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> _Columns | None:
    """Each reading against the patient's usual: the median of their daily medians over the
    previous ``window_days`` days (not the reading's own day). Beyond ``max(k x robust SD,
    min_deviation)`` is a breach, within is clear; with readings on fewer than
    ``min_days`` of those days, in between. The robust SD is the interquartile range of the
    daily medians / 1.349. Daily medians weigh each day once, however often the patient
    measured; and a 14 x patients x days array gives every window at once."""
    rows = data.rows(rule.metric, eligible)
    if not len(rows):
        return None
    patient, values = data.patient[rows], data.value[rows]
    day = data.at[rows] // _NS_PER_DAY
    first_day = int(day.min())
    days = int(day.max()) - first_day + 1
    patients, slot = np.unique(patient, return_inverse=True)
    daily = (
        pd.DataFrame({"slot": slot, "day": day - first_day, "value": values})
        .groupby(["slot", "day"], sort=False)["value"]
        .median()
    )
    width = int(rule.window_days)
    grid = np.full((len(patients), days + width), np.nan)
    grid[daily.index.get_level_values(0), daily.index.get_level_values(1) + width] = (
        daily.to_numpy()
    )
    # windows[p, d] = the `width` days before day d
    windows = np.lib.stride_tricks.sliding_window_view(grid, width, axis=1)[:, :days]
    quartiles, counts = _window_quartiles(windows)
    where = (slot, day - first_day)
    median = quartiles[1][where]
    spread = (quartiles[2][where] - quartiles[0][where]) / IQR_PER_SD
    allowed = np.maximum(rule.k * spread, rule.min_deviation)
    high = rule.direction == "high"
    deviation = values - median if high else median - values
    judged = counts[where] >= rule.min_days
    met = judged & (deviation > allowed)
    return _per_reading(
        data,
        rows,
        state=np.where(met, BREACH, np.where(judged, CLEAR, BETWEEN)),
        severity=rule.severity,
        value=values,
        limit=np.where(judged, median + allowed if high else median - allowed, np.nan),
        label=rule.label,
        metric=rule.metric,
    )


def _window_quartiles(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The 25th, 50th and 75th percentiles (linear interpolation, as numpy's default) of
    each window along the last axis, ignoring NaN, and each window's count of values.
    ``np.nanpercentile`` loops in Python over windows holding a NaN; sorting puts NaN last,
    so each window's percentiles are two gathers from its first ``count`` values."""
    ordered = np.sort(windows, axis=-1)
    counts = np.sum(~np.isnan(ordered), axis=-1)
    last = np.maximum(counts - 1, 0)
    quartiles = []
    for q in (0.25, 0.5, 0.75):
        position = q * last
        below = np.floor(position).astype("int64")
        above = np.minimum(below + 1, last)
        low = np.take_along_axis(ordered, below[..., None], axis=-1)[..., 0]
        high = np.take_along_axis(ordered, above[..., None], axis=-1)[..., 0]
        value = low + (high - low) * (position - below)
        quartiles.append(np.where(counts > 0, value, np.nan))
    return np.stack(quartiles), counts


# --- adherence ----------------------------------------------------------------------------------


def _adherence(
    rule: AdherenceRule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> _Columns | None:
    rows = data.rows(rule.metric, eligible)
    if not len(rows):
        return None
    if rule.check == "silent":
        return _silence(rule, data, rows, end)
    if rule.check == "days_with_readings":
        return _days_with_readings(rule, data, rows, end)
    return None  # device and gateway state: the live sweep's (analytics.live)


def _silence(rule: AdherenceRule, data: Readings, rows: np.ndarray, end: int) -> _Columns:
    """A breach ``hours`` after a reading with no next one by then (a gap, or silence up to
    ``end``); the reading that ends the gap is clear. One stream per patient (and metric,
    when the rule names one). A gap of exactly ``hours`` is not a breach."""
    patient, at = data.patient[rows], data.at[rows]
    limit = int(rule.hours * 3600 * 10**9)
    last = np.r_[patient[1:] != patient[:-1], True]
    following = np.r_[at[1:], end]
    horizon = np.where(last, end, following)
    breach = horizon - at > limit
    gap_ends = np.flatnonzero(breach & ~last) + 1
    breaches = np.flatnonzero(breach)
    n_b, n_c = len(breaches), len(gap_ends)
    metric = rule.metric or "any"
    return _Columns(
        patient=np.r_[patient[breaches], patient[gap_ends]],
        at=np.r_[at[breaches] + limit, at[gap_ends]],
        state=np.r_[np.full(n_b, BREACH), np.full(n_c, CLEAR)].astype("int8"),
        severity=np.r_[np.full(n_b, rule.severity, dtype=object), np.full(n_c, "", dtype=object)],
        value=np.r_[(horizon[breaches] - at[breaches]) / 3.6e12, np.full(n_c, np.nan)],
        limit=np.full(n_b + n_c, rule.hours),
        label=np.full(n_b + n_c, rule.label, dtype=object),
        reading_id=np.r_[np.full(n_b, None, dtype=object), data.reading_id[rows][gap_ends]],
        tiebreak=np.r_[np.zeros(n_b, dtype="uint64"), data.tiebreak[rows][gap_ends]],
        late=np.zeros(n_b + n_c, dtype=bool),
        metric=np.full(n_b + n_c, metric, dtype=object),
        detail=np.full(n_b + n_c, None, dtype=object),
        ordered=False,  # breaches, then clears
    )


def _days_with_readings(
    rule: AdherenceRule, data: Readings, rows: np.ndarray, end: int
) -> _Columns | None:
    """At the end of each completed day (UTC) from the patient's ``of_days``-th day on: a
    breach when fewer than ``min_days`` of the last ``of_days`` days had a reading, clear
    otherwise."""
    patient, day = data.patient[rows], data.at[rows] // _NS_PER_DAY
    last_day = end // _NS_PER_DAY - 1  # the last completed day
    first = int(day.min())
    days_span = int(day.max()) - first + 1
    keys = np.unique(patient * days_span + (day - first))  # by patient, then day
    pairs = np.stack([keys // days_span, keys % days_span + first], axis=1)
    pairs = pairs[pairs[:, 1] <= last_day]
    if not len(pairs):
        return None
    patients, first_index = np.unique(pairs[:, 0], return_index=True)
    first_day = pairs[first_index, 1]
    # A grid of one row per (patient, day), from each patient's first day to the last
    # completed day; ``grid_start`` is each patient's first row in it.
    span = last_day - first_day + 1
    grid_start = np.cumsum(span) - span
    grid_patient = np.repeat(patients, span)
    row_start = np.repeat(grid_start, span)
    offsets = np.arange(span.sum()) - row_start
    grid_day = np.repeat(first_day, span) + offsets
    slot = np.searchsorted(patients, pairs[:, 0])
    had = np.zeros(len(grid_day), dtype="int64")
    had[grid_start[slot] + pairs[:, 1] - first_day[slot]] = 1
    prefix = np.r_[0, np.cumsum(had)]
    index = np.arange(len(had)) + 1
    count = prefix[index] - prefix[np.maximum(index - rule.of_days, row_start)]
    judged = offsets >= rule.of_days - 1
    rows_out = np.flatnonzero(judged)
    state = np.where(count[rows_out] < rule.min_days, BREACH, CLEAR).astype("int8")
    n = len(rows_out)
    return _Columns(
        patient=grid_patient[rows_out],
        at=(grid_day[rows_out] + 1) * _NS_PER_DAY,
        state=state,
        severity=np.where(state == BREACH, rule.severity, "").astype(object),
        value=count[rows_out].astype("float64"),
        limit=np.full(n, float(rule.min_days)),
        label=np.full(n, rule.label, dtype=object),
        reading_id=np.full(n, None, dtype=object),
        tiebreak=np.zeros(n, dtype="uint64"),
        late=np.zeros(n, dtype=bool),
        metric=np.full(n, rule.metric or "any", dtype=object),
        detail=np.full(n, None, dtype=object),
    )


# --- NEWS2 --------------------------------------------------------------------------------------


def _news2(
    rule: News2Rule, data: Readings, people: pd.DataFrame, eligible: Any, end: int
) -> _Columns | None:
    """One signal per observation set (at its latest reading's time): a breach when its
    response band has a severity in the rule, clear otherwise. A breach is late when every
    reading its score uses arrived late, and is named by the smallest of those reading ids."""
    rows = np.sort(
        np.concatenate([data.rows(loinc, eligible) for loinc in news2.LOINC_TO_PARAMETER])
    )
    if not len(rows):
        return None
    at = data.at[rows]
    readings = pd.DataFrame(
        {
            "reading_id": data.reading_id[rows],
            "patient_id": data.patient_ids[data.patient[rows]],
            "loinc": data.loinc[rows],
            "value": data.value[rows],
            "measured_at": pd.DatetimeIndex(at.astype("datetime64[ns]")).tz_localize("UTC"),
        }
    )
    sets = news2.score_set_arrays(
        readings, people, window=pd.Timedelta(minutes=rule.window_minutes)
    )
    n = len(sets)
    if not n:
        return None
    band_code, bands = pd.factorize(sets.band)
    severity = np.array([rule.severities.get(b, "") for b in bands], dtype=object)[band_code]
    state = np.where(severity != "", BREACH, CLEAR).astype("int8")
    used = sets.used_source  # positions in `readings`, -1 where a parameter is absent
    used_rows = rows[np.maximum(used, 0)]
    late = np.where(used >= 0, data.late[used_rows], True).all(axis=1)
    reading_id = np.full(n, None, dtype=object)
    tiebreak = np.zeros(n, dtype="uint64")
    label = np.full(n, "", dtype=object)
    detail = np.full(n, None, dtype=object)
    for i in np.flatnonzero(state == BREACH):  # a few per cent of the sets
        candidates = used_rows[i][used[i] >= 0]
        first = candidates[np.argmin(data.reading_id[candidates].astype(str))]
        reading_id[i], tiebreak[i] = data.reading_id[first], data.tiebreak[first]
        partial = bool(sets.partial[i])
        label[i] = f"NEWS2 {sets.score[i]}" + (" (partial)" if partial else "")
        detail[i] = {
            "score": int(sets.score[i]),
            "band": str(sets.band[i]),
            "partial": partial,
            "parameters": list(sets.parameters(i)),
        }
    return _Columns(
        patient=pd.Index(data.patient_ids).get_indexer(sets.patient_ids).astype("int64"),
        at=sets.at,
        state=state,
        severity=severity,
        value=sets.score.astype("float64"),
        limit=np.full(n, np.nan),
        label=label,
        reading_id=reading_id,
        tiebreak=tiebreak,
        late=late,
        metric=np.full(n, "news2", dtype=object),
        detail=detail,
    )


_EVALUATORS: Final[dict[type, Callable[..., _Columns | None]]] = {
    ThresholdRule: _threshold,
    SustainedRule: _sustained,
    TrendRule: _trend,
    BaselineRule: _baseline,
    AdherenceRule: _adherence,
    News2Rule: _news2,
}


def utc_instants(times: pd.Series) -> np.ndarray:
    """Timezone-aware times as numpy ``datetime64[ns]`` in UTC (numpy has no time zones)."""
    return times.dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()


def _nanoseconds(times: pd.Series) -> np.ndarray:
    """Timezone-aware times as int64 nanoseconds since the epoch (NaT as int64 min)."""
    if isinstance(times.dtype, pd.DatetimeTZDtype):
        converted = times.dt.tz_convert("UTC")
    elif pd.api.types.is_datetime64_dtype(times.dtype):
        raise ValueError("times must be timezone-aware (got naive datetimes)")
    else:
        converted = pd.to_datetime(times, utc=True)
    return converted.dt.tz_localize(None).to_numpy().astype("datetime64[ns]").view("int64")
