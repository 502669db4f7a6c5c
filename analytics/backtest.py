"""Backtests: the flags a rule set would have raised over a history of readings.

The same engine as the live worker (:mod:`analytics.signals`, :mod:`analytics.episodes`), run
over a CSV of readings or over the database's history, so a care team can see how many alerts
a threshold change would have produced before making it.

CSV columns: ``patient_id, metric, value, unit, measured_at`` (metric as LOINC, value in the
metric's canonical UCUM unit, time ISO 8601 with an offset); optional ``reading_id``,
``received_at`` (lets replayed readings count as late) and ``device_id``. A patients CSV
(optional) gives ``patient_id, program, spo2_scale, on_oxygen``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pandas as pd

from analytics import AnalyticsError
from analytics.episodes import alerts_per_patient_week, empty_flags, episodes
from analytics.rules import PROGRAMS, RuleSet
from analytics.signals import evaluate
from carewatch_contract.metrics import METRICS

CSV_COLUMNS: Final = ("patient_id", "metric", "value", "unit", "measured_at")
#: Readings per evaluation chunk (whole patients each): bounds memory, paces the progress bar.
READINGS_PER_CHUNK: Final = 500_000


class BacktestInputError(AnalyticsError, ValueError):
    """The readings (or patients) file cannot be used; the message says why and where."""


@dataclass(frozen=True)
class BacktestResult:
    flags: pd.DataFrame  # analytics.episodes.FLAG_COLUMNS
    alerts_per_patient_week: float
    patients: int
    readings: int


def load_readings_csv(path: Path | str) -> pd.DataFrame:
    """The readings of a backtest CSV, checked: known metrics in their canonical units,
    finite values, times with an offset. Errors name the line."""
    try:
        raw = pd.read_csv(
            path,
            dtype={"patient_id": str, "metric": str, "unit": str, "reading_id": str},
        )
    except (OSError, ValueError) as exc:
        raise BacktestInputError(f"{path}: cannot read the readings CSV: {exc}") from None
    missing = [column for column in CSV_COLUMNS if column not in raw.columns]
    if missing:
        raise BacktestInputError(
            f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(CSV_COLUMNS)}"
        )
    line = raw.index.to_series() + 2  # the header is line 1
    no_patient = raw["patient_id"].isna()
    if no_patient.any():
        first = raw.index[no_patient][0]
        raise BacktestInputError(f"{path}, line {line[first]}: patient_id is empty")
    known = raw["metric"].isin(METRICS.keys())
    if not known.all():
        first = raw.index[~known][0]
        raise BacktestInputError(
            f"{path}, line {line[first]}: unknown metric {raw.loc[first, 'metric']!r}"
            f" (LOINC codes: {', '.join(sorted(METRICS))})"
        )
    expected_unit = raw["metric"].map({code: m.unit for code, m in METRICS.items()})
    wrong_unit = raw["unit"] != expected_unit
    if wrong_unit.any():
        first = raw.index[wrong_unit][0]
        raise BacktestInputError(
            f"{path}, line {line[first]}: metric {raw.loc[first, 'metric']} must be in"
            f" {expected_unit[first]}, not {raw.loc[first, 'unit']!r}"
        )
    values = pd.to_numeric(raw["value"], errors="coerce")
    bad_value = values.isna() | ~values.map(math.isfinite)
    if bad_value.any():
        first = raw.index[bad_value][0]
        raise BacktestInputError(
            f"{path}, line {line[first]}: value {raw.loc[first, 'value']!r} is not a number"
        )
    measured_at = _times(raw["measured_at"], path, line, "measured_at")
    frame = pd.DataFrame(
        {
            # A reading without an id of its own is named by its line.
            "reading_id": raw["reading_id"].fillna("csv-" + line.astype(str))
            if "reading_id" in raw.columns
            else "csv-" + line.astype(str),
            "patient_id": raw["patient_id"].astype(str),
            "loinc": raw["metric"],
            "value": values.astype("float64"),
            "measured_at": measured_at,
        }
    )
    if "received_at" in raw.columns:
        frame["received_at"] = _times(raw["received_at"], path, line, "received_at", optional=True)
    if "device_id" in raw.columns:
        frame["device_id"] = raw["device_id"].astype(str)
    return frame


def load_patients_csv(path: Path | str) -> pd.DataFrame:
    """patient_id, and optionally program, spo2_scale (1 or 2) and on_oxygen (true/false)."""
    try:
        patients = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as exc:
        raise BacktestInputError(f"{path}: cannot read the patients CSV: {exc}") from None
    if "patient_id" not in patients.columns:
        raise BacktestInputError(f"{path}: the patients CSV needs a patient_id column")
    checks = {
        "program": (set(PROGRAMS) | {""}, None),
        "spo2_scale": ({"1", "2", ""}, lambda v: int(v) if v else None),
        "on_oxygen": (
            {"true", "false", ""},
            lambda v: {"true": True, "false": False}.get(v.lower()),
        ),
    }
    for column, (allowed, convert) in checks.items():
        if column not in patients.columns:
            continue
        given = patients[column].str.strip()
        bad = ~given.str.lower().isin(allowed)
        if bad.any():
            first = patients.index[bad][0]
            raise BacktestInputError(
                f"{path}, line {first + 2}: {column} {given[first]!r} is not one of"
                f" {', '.join(sorted(v for v in allowed if v))} (or empty)"
            )
        patients[column] = given.map(convert) if convert else given.replace("", None)
    return patients


def _times(
    column: pd.Series, path: Path | str, line: pd.Series, name: str, *, optional: bool = False
) -> pd.Series:
    """ISO 8601 times with an offset; empty cells are refused, or unknown when ``optional``."""
    text = column.astype(str)
    has_offset = text.str.contains(r"(?:[+-]\d{2}:?\d{2}|Z)$", regex=True)
    if optional:
        has_offset |= column.isna()
    if not has_offset.all():
        first = column.index[~has_offset][0]
        raise BacktestInputError(
            f"{path}, line {line[first]}: {name} {column[first]!r} needs a UTC offset,"
            " e.g. 2026-09-01T07:30:00+00:00"
        )
    try:
        return pd.to_datetime(text.where(column.notna()), utc=True, format="ISO8601")
    except (ValueError, TypeError) as exc:
        raise BacktestInputError(f"{path}: {name} is not ISO 8601: {exc}") from None


def run_backtest(
    readings: pd.DataFrame,
    rules: RuleSet,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
    progress: Callable[[int], None] | None = None,
) -> BacktestResult:
    """The flags ``rules`` raise over ``readings`` and the alerts per patient-week.

    Evaluated in chunks of whole patients (every rule looks at one patient at a time);
    ``progress(n)`` is told after each chunk how many more patients are done.
    """
    if readings.empty:
        return BacktestResult(empty_flags(), 0.0, 0, 0)
    end = pd.Timestamp(now) if now is not None else readings["measured_at"].max()
    patient, patient_ids = pd.factorize(readings["patient_id"])
    by_patient = np.argsort(patient, kind="stable")
    counts = np.bincount(patient, minlength=len(patient_ids))
    ends = np.cumsum(counts)  # where each patient's rows end in `by_patient`
    chunks: list[pd.DataFrame] = []
    first = 0  # the first patient of the next chunk
    while first < len(patient_ids):
        start = ends[first] - counts[first]
        last = max(int(np.searchsorted(ends, start + READINGS_PER_CHUNK, side="right")), first + 1)
        chunk = readings.iloc[by_patient[start : ends[last - 1]]]
        signals = evaluate(chunk, rules, patients=patients, now=end)
        chunks.append(episodes(signals, rules, now=end))
        if progress is not None:
            progress(last - first)
        first = last
    flags = pd.concat(chunks, ignore_index=True) if chunks else empty_flags()
    flags = flags.sort_values(["opened_at", "patient_id", "rule_id"], kind="stable")
    flags = flags.reset_index(drop=True)
    rate = alerts_per_patient_week(flags, readings, now=end)
    return BacktestResult(flags, rate, len(patient_ids), len(readings))


def flag_as_json(flag: pd.Series) -> dict[str, Any]:
    """One flag as the backtest's JSON and the tuning API give it."""
    item: dict[str, Any] = {
        "patient_id": flag["patient_id"],
        "rule_id": flag["rule_id"],
        "kind": flag["kind"],
        "metric": flag["metric"],
        "direction": flag["direction"] if isinstance(flag["direction"], str) else None,
        "severity": flag["severity"],
        "opened_at": flag["opened_at"].isoformat(),
        "resolved_at": None if pd.isna(flag["resolved_at"]) else flag["resolved_at"].isoformat(),
        "value": None if pd.isna(flag["value"]) else float(flag["value"]),
        "label": flag["label"],
        "late": bool(flag["late"]),
        "breaches": int(flag["breaches"]),
    }
    if flag["kind"] == "news2" and isinstance(flag["detail"], dict):
        item["score"] = flag["detail"]["score"]
        item["parameters"] = list(flag["detail"]["parameters"])
        item["partial"] = flag["detail"]["partial"]
    return item


def result_as_json(result: BacktestResult) -> dict[str, Any]:
    return {
        "flags": [flag_as_json(flag) for _, flag in result.flags.iterrows()],
        "alerts_per_patient_week": round(result.alerts_per_patient_week, 4),
    }


@dataclass(frozen=True)
class Comparison:
    """Current against proposed rules over the same readings."""

    current: BacktestResult
    proposed: BacktestResult
    gaining: list[str]  # patients the proposal would alert more often
    losing: list[str]

    def as_json(self) -> dict[str, Any]:
        return {
            "current": {
                "alerts_per_patient_week": round(self.current.alerts_per_patient_week, 4),
                "flags": len(self.current.flags),
            },
            "proposed": {
                "alerts_per_patient_week": round(self.proposed.alerts_per_patient_week, 4),
                "flags": len(self.proposed.flags),
            },
            "patients_gaining_alerts": self.gaining,
            "patients_losing_alerts": self.losing,
            "flags_by_rule": self.flags_by_rule(),
        }

    def flags_by_rule(self) -> list[dict[str, Any]]:
        """Flags per rule, now and with the proposal (the tuning page's chart), by rule id."""
        now = self.current.flags["rule_id"].value_counts()
        proposed = self.proposed.flags["rule_id"].value_counts()
        return [
            {
                "rule_id": str(rule_id),
                "current": int(now.get(rule_id, 0)),
                "proposed": int(proposed.get(rule_id, 0)),
            }
            for rule_id in sorted(set(now.index) | set(proposed.index))
        ]


RulesInForce = RuleSet | Mapping[str, RuleSet]


def run_backtest_by_patient(
    readings: pd.DataFrame,
    rules: RulesInForce,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
) -> BacktestResult:
    """:func:`run_backtest` where each patient may have rules of their own (a mapping from
    patient id to rules: program and patient overrides); patients sharing a rule set are
    evaluated together."""
    if isinstance(rules, RuleSet):
        return run_backtest(readings, rules, patients=patients, now=now)
    if readings.empty:
        return BacktestResult(empty_flags(), 0.0, 0, 0)
    end = pd.Timestamp(now) if now is not None else readings["measured_at"].max()
    keys = readings["patient_id"].astype(str)
    groups: dict[int, tuple[RuleSet, list[str]]] = {}
    for patient_id in pd.unique(keys):
        if patient_id not in rules:
            raise BacktestInputError(f"no rules for patient {patient_id!r}")
        rule_set = rules[patient_id]
        groups.setdefault(id(rule_set), (rule_set, []))[1].append(patient_id)
    parts = [
        run_backtest(
            readings.loc[keys.isin(members)],
            rule_set,
            patients=patients,
            now=end,
        ).flags
        for rule_set, members in groups.values()
    ]
    flags = pd.concat(parts, ignore_index=True).sort_values(
        ["opened_at", "patient_id", "rule_id"], kind="stable"
    )
    flags = flags.reset_index(drop=True)
    rate = alerts_per_patient_week(flags, readings, now=end)
    return BacktestResult(flags, rate, readings["patient_id"].nunique(), len(readings))


def compare(
    readings: pd.DataFrame,
    current: RulesInForce,
    proposed: RulesInForce,
    *,
    patients: pd.DataFrame | None = None,
    now: datetime | pd.Timestamp | None = None,
) -> Comparison:
    """How a proposed rule set would change the alerts over ``readings`` (the tuning page's
    preview: the last 30 or 90 days). Either side may give each patient rules of their own."""
    before = run_backtest_by_patient(readings, current, patients=patients, now=now)
    after = run_backtest_by_patient(readings, proposed, patients=patients, now=now)
    counts_before = _alerts_by_patient(before.flags)
    counts_after = _alerts_by_patient(after.flags)
    everyone = sorted(set(counts_before.index) | set(counts_after.index))
    b = counts_before.reindex(everyone, fill_value=0)
    a = counts_after.reindex(everyone, fill_value=0)
    return Comparison(
        before,
        after,
        gaining=[p for p in everyone if a[p] > b[p]],
        losing=[p for p in everyone if a[p] < b[p]],
    )


def history_from_database(
    conn: Any,
    *,
    since: datetime,
    until: datetime | None = None,
    patient_ids: list[str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Readings measured in ``[since, until)`` (of ``patient_ids`` when given) and the
    patients they belong to, as the backtest takes them (``conn``: a psycopg connection)."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT reading_id::text, patient_id, loinc, value, measured_at FROM readings"
            " WHERE measured_at >= %s AND (%s::timestamptz IS NULL OR measured_at < %s)"
            " AND (%s::text[] IS NULL OR patient_id = ANY(%s::text[]))",
            (since, until, until, patient_ids, patient_ids),
        )
        rows = cur.fetchall()
        cur.execute("SELECT patient_id, program, spo2_scale FROM patients")
        patients = pd.DataFrame(cur.fetchall(), columns=["patient_id", "program", "spo2_scale"])
    readings = pd.DataFrame(
        rows, columns=["reading_id", "patient_id", "loinc", "value", "measured_at"]
    )
    readings["measured_at"] = pd.to_datetime(readings["measured_at"], utc=True)
    readings["value"] = readings["value"].astype("float64")
    return readings, patients


def _alerts_by_patient(flags: pd.DataFrame) -> pd.Series:
    alerts = flags.loc[flags["severity"] != "info"] if not flags.empty else flags
    return alerts.groupby("patient_id").size() if not alerts.empty else pd.Series(dtype="int64")
