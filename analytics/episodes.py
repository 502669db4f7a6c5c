"""Episodes: the flags that the signals of each (patient, rule, direction) amount to.

Walking one (patient, rule, direction)'s signals in time order (:mod:`analytics.signals`):

- a breach opens a flag when none is open; later breaches belong to it, and its severity
  steps up to the most severe of them (it never steps down);
- the flag resolves by itself once the value has been back in range (clear signals, with no
  breach or in-between signal) for the rule set's ``resolve_after``: at the first clear
  signal of that run plus ``resolve_after``. Adherence flags resolve at the reading that ends
  the silence. An in-between signal (e.g. inside the hysteresis band) restarts the wait, so
  a value hovering at the limit keeps one flag open instead of flapping;
- a flag opened by a late reading (one that reached CareWatch long after it was taken) is
  marked ``late``: it tells of the past and is never escalated as urgent now.

Vectorised with numpy over all groups at once. The result depends only on the signals, so on
the set of readings, never on their arrival order.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import numpy as np
import pandas as pd

from analytics.rules import SEVERITY_RANK, RuleSet
from analytics.signals import BREACH, CLEAR, utc_instants

FLAG_COLUMNS: Final[tuple[str, ...]] = (
    "patient_id",
    "rule_id",
    "kind",
    "direction",
    "metric",
    "severity",
    "opening_severity",
    "opened_at",
    "last_breach_at",
    "resolved_at",
    "breaches",
    "value",
    "worst_value",
    "limit",
    "label",
    "reading_id",
    "late",
    "detail",
)

_RANK_TO_SEVERITY: Final = {rank: name for name, rank in SEVERITY_RANK.items()}


def resolve_after_by_rule(rules: RuleSet) -> dict[str, timedelta]:
    """How long each rule's value must stay back in range before its flag resolves."""
    return {
        rule.id: timedelta(0) if rule.kind == "adherence" else rules.resolve_after
        for rule in rules.rules
    }


def lower_is_worse(rules: RuleSet) -> dict[str, bool]:
    """Whether a rule's breach values get worse as they fall: the reading of a ``low``
    threshold, sustained or baseline rule, and the day count of ``days_with_readings``. (A
    trend's value is the change in the direction of concern; NEWS2's the score; a silence's
    its length: higher is worse.)"""
    worse_low = {}
    for rule in rules.rules:
        if rule.kind in ("threshold", "sustained", "baseline"):
            worse_low[rule.id] = rule.direction == "low"
        else:
            worse_low[rule.id] = getattr(rule, "check", None) == "days_with_readings"
    return worse_low


def empty_flags() -> pd.DataFrame:
    frame = pd.DataFrame({column: pd.Series(dtype=object) for column in FLAG_COLUMNS})
    return frame.astype(
        {
            "opened_at": "datetime64[ns, UTC]",
            "last_breach_at": "datetime64[ns, UTC]",
            "resolved_at": "datetime64[ns, UTC]",
            "breaches": "int64",
            "value": "float64",
            "worst_value": "float64",
            "limit": "float64",
            "late": bool,
        }
    )


def episodes(
    signals: pd.DataFrame, rules: RuleSet, *, now: datetime | pd.Timestamp | None = None
) -> pd.DataFrame:
    """The flags of ``signals`` (as :func:`analytics.signals.evaluate` returns them: sorted,
    with ``group`` numbering each (patient, rule, direction)), one row per flag, sorted by
    ``opened_at``, patient, rule.

    ``now`` bounds the last wait for a resolution (default: the ``now`` that
    :func:`~analytics.signals.evaluate` used, i.e. the latest reading, else the latest signal).
    """
    if signals.empty or not (signals["state"] == BREACH).any():
        return empty_flags()
    n = len(signals)
    state = signals["state"].to_numpy()
    at = utc_instants(signals["at"])
    group = signals["group"].to_numpy()  # contiguous per (patient, rule, direction)
    new_group = np.r_[True, group[1:] != group[:-1]]
    if now is None:
        now = signals.attrs.get("now", signals["at"].max())
    end = pd.Timestamp(now)
    end64 = np.datetime64((end.tz_convert("UTC") if end.tzinfo else end).tz_localize(None), "ns")
    waits = resolve_after_by_rule(rules)
    wait = (
        signals["rule_id"]
        .map({rule_id: pd.Timedelta(w).value for rule_id, w in waits.items()})
        .fillna(pd.Timedelta(rules.resolve_after).value)
        .to_numpy(dtype="int64")
        .astype("timedelta64[ns]")
    )

    # Clear runs that last long enough resolve what is open.
    clear = state == CLEAR
    run_start = clear & (new_group | np.r_[True, ~clear[:-1]])
    not_clear_positions = np.flatnonzero(~clear)
    following = np.searchsorted(not_clear_positions, np.arange(n), side="right")
    has_next = following < len(not_clear_positions)
    next_position = np.where(
        has_next, not_clear_positions[np.minimum(following, len(not_clear_positions) - 1)], 0
    )
    next_in_group = has_next & (group[next_position] == group)
    until = np.where(next_in_group, at[next_position], end64)
    resolving = run_start & (until - at >= wait)

    # A breach opens a flag when the latest earlier event of its group (breach or resolving
    # run) is a resolution, or there is none.
    breach = state == BREACH
    event = breach | resolving
    last_event = np.maximum.accumulate(np.where(event, np.arange(n), -1))
    previous_event = np.r_[-1, last_event[:-1]]
    previous_in_group = (previous_event >= 0) & (group[np.maximum(previous_event, 0)] == group)
    opens = breach & (~previous_in_group | resolving[np.maximum(previous_event, 0)])
    flag_number = np.cumsum(opens) - 1  # the latest flag opened at or before each row
    opened_in_group = flag_number >= 0
    first_flag_of_group = np.where(
        new_group, np.r_[0, np.cumsum(opens)[:-1]], 0
    )  # flags opened before each group starts, at the group's first row
    flags_before_group = np.maximum.accumulate(first_flag_of_group)
    belongs = opened_in_group & (flag_number >= flags_before_group)

    # Each flag's breaches, and the first resolution after it opened.
    breach_rows = np.flatnonzero(breach & belongs)
    flags = pd.DataFrame(
        {
            "flag": flag_number[breach_rows],
            "rank": signals["severity"].to_numpy()[breach_rows],
            "at": at[breach_rows],
            "value": signals["value"].to_numpy()[breach_rows],
        }
    )
    flags["rank"] = flags["rank"].map(SEVERITY_RANK).astype("int64")
    grouped = flags.groupby("flag", sort=True)
    opening_rows = np.flatnonzero(opens)
    direction = signals["direction"].to_numpy()[opening_rows]
    values = grouped["value"]
    falling_is_worse = signals["rule_id"].iloc[opening_rows].map(lower_is_worse(rules))
    worst = np.where(falling_is_worse, values.min().to_numpy(), values.max().to_numpy())
    resolution_rows = np.flatnonzero(resolving & belongs)
    resolution = pd.Series(
        at[resolution_rows] + wait[resolution_rows], index=flag_number[resolution_rows]
    )
    resolution = resolution[~resolution.index.duplicated(keep="first")]
    resolved_at = resolution.reindex(np.arange(len(opening_rows))).to_numpy()
    opening = signals.iloc[opening_rows]
    result = pd.DataFrame(
        {
            "patient_id": opening["patient_id"].to_numpy(),
            "rule_id": opening["rule_id"].to_numpy(),
            "kind": opening["kind"].to_numpy(),
            "direction": direction,
            "metric": opening["metric"].to_numpy(),
            "severity": [_RANK_TO_SEVERITY[r] for r in grouped["rank"].max().to_numpy()],
            "opening_severity": opening["severity"].to_numpy(),
            "opened_at": pd.DatetimeIndex(opening["at"]),
            "last_breach_at": pd.DatetimeIndex(grouped["at"].max().to_numpy()).tz_localize("UTC"),
            "resolved_at": pd.to_datetime(resolved_at, utc=True),
            "breaches": grouped.size().to_numpy(),
            "value": opening["value"].to_numpy(),
            "worst_value": worst,
            "limit": opening["limit"].to_numpy(),
            "label": opening["label"].to_numpy(),
            "reading_id": opening["reading_id"].to_numpy(),
            "late": opening["late"].to_numpy(dtype=bool),
            "detail": opening["detail"].to_numpy(),
        }
    )
    ordered = result.sort_values(["opened_at", "patient_id", "rule_id"], kind="stable")
    return ordered.loc[:, list(FLAG_COLUMNS)].reset_index(drop=True)


def alerts_per_patient_week(
    flags: pd.DataFrame, readings: pd.DataFrame, *, now: datetime | pd.Timestamp | None = None
) -> float:
    """Flags raised (severity above ``info``) per patient-week monitored, a patient being
    monitored from their first reading to ``now`` (default: the latest reading)."""
    if readings.empty:
        return 0.0
    times = pd.to_datetime(readings["measured_at"], utc=True)
    end = pd.Timestamp(now) if now is not None else times.max()
    end = end.tz_convert("UTC") if end.tzinfo else end.tz_localize("UTC")
    first = times.groupby(readings["patient_id"].astype(str)).min()
    weeks = ((end - first) / pd.Timedelta(days=7)).clip(lower=1 / 7).sum()
    alerts = int((flags["severity"] != "info").sum()) if not flags.empty else 0
    return float(alerts / weeks) if weeks > 0 else 0.0
