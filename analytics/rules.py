"""Threshold rules: the rule set from ``thresholds.toml`` and its vectorised evaluation.

Pure core: frames in, breaches out. The only I/O is reading the TOML in :func:`load_rules`;
nothing here imports psycopg. The flag store turns breaches into flags.

A rule (:class:`ThresholdRule`) has one direction ("high" or "low") and one or more
conditions (:class:`Condition`), each a strict comparison of one metric (LOINC code, value in
the canonical unit of :mod:`carewatch_contract.metrics`) against a limit. A reading breaches a
rule when it meets at least one of its conditions; the breach carries the most severe
condition it met.
"""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal, cast

import numpy as np
import pandas as pd

from analytics import AnalyticsError
from analytics.rule_kinds import KindRule, RuleKindError, finite_number, parse_kind_rule
from carewatch_contract.metrics import METRICS

Severity = Literal["critical", "high", "medium", "low", "info"]
Direction = Literal["high", "low"]
Comparison = Literal["above", "below"]

#: Most severe first. A flag's severity only ever moves up this list.
SEVERITIES: Final[tuple[str, ...]] = ("critical", "high", "medium", "low", "info")
#: Higher is more severe: critical 4 ... info 0.
SEVERITY_RANK: Final[Mapping[str, int]] = {
    name: len(SEVERITIES) - 1 - index for index, name in enumerate(SEVERITIES)
}
RULE_KINDS: Final[tuple[str, ...]] = (
    "threshold",
    "sustained",
    "trend",
    "baseline",
    "adherence",
    "news2",
)
#: Care programs a rule can be limited to (``programs = [...]``); patients belong to one.
PROGRAMS: Final[tuple[str, ...]] = ("general", "hypertension", "heart_failure", "copd", "diabetes")
#: Defaults of the ``[settings]`` table.
DEFAULT_RESOLVE_AFTER = timedelta(hours=4)
DEFAULT_LATE_AFTER = timedelta(hours=6)
#: An open flag of these severities nobody acknowledged within this long is escalated.
DEFAULT_ESCALATE_AFTER: Final[Mapping[str, timedelta]] = {
    "critical": timedelta(minutes=15),
    "high": timedelta(minutes=60),
}
COMPARISON_FOR_DIRECTION: Final[Mapping[str, str]] = {"high": "above", "low": "below"}

DEFAULT_RULES_PACKAGE: Final = "analytics"
DEFAULT_RULES_RESOURCE: Final = "thresholds.toml"

#: Columns :func:`evaluate_thresholds` needs in its input.
READING_COLUMNS: Final[tuple[str, ...]] = (
    "reading_id",
    "patient_id",
    "loinc",
    "value",
    "measured_at",
)
#: Columns of the frame :func:`evaluate_thresholds` returns, in order.
BREACH_COLUMNS: Final[tuple[str, ...]] = (
    "reading_id",
    "patient_id",
    "rule_id",
    "kind",
    "direction",
    "loinc",
    "value",
    "measured_at",
    "severity",
    "limit",
    "label",
    "title",
)

_MERGE_COLUMNS: Final = (
    "loinc",
    "condition_order",
    "rule_order",
    "is_above",
    "limit",
    "severity_rank",
    "rule_spo2_scale",
)
_DESCRIPTIVE_COLUMNS: Final = ("rule_id", "kind", "direction", "title", "severity", "label")

_RULESET_KEYS: Final = frozenset({"version", "rules", "settings", "escalation"})
_SETTINGS_KEYS: Final = frozenset({"resolve_after_minutes", "late_after_hours"})
_RULE_KEYS: Final = frozenset(
    {"id", "title", "kind", "direction", "source", "when", "spo2_scale", "hysteresis", "programs"}
)
#: The SpO2 scales of NEWS2: 1 for most people, 2 for those a clinician put on 88-92 %.
SPO2_SCALES: Final = (1, 2)
#: Column of the optional per-patient SpO2 scale in the readings frame (absent = scale 1).
SPO2_SCALE_COLUMN: Final = "spo2_scale"
_CONDITION_KEYS: Final = frozenset({"metric", "above", "below", "severity", "label"})


class RulesConfigError(AnalyticsError, ValueError):
    """The rule set is not valid; the message names the file, the rule and the problem."""


@dataclass(frozen=True, slots=True)
class Condition:
    """One strict comparison: ``value > limit`` (above) or ``value < limit`` (below)."""

    metric: str
    comparison: Comparison
    limit: float
    severity: Severity
    label: str

    def is_breached_by(self, value: float) -> bool:
        """Whether one value meets this condition (the scalar twin of the vectorised check)."""
        if self.comparison == "above":
            return value > self.limit
        return value < self.limit

    def as_json(self) -> dict[str, Any]:
        """The condition as written in the TOML: ``{metric, above|below, severity, label}``."""
        return {
            "metric": self.metric,
            self.comparison: self.limit,
            "severity": self.severity,
            "label": self.label,
        }


@dataclass(frozen=True, slots=True)
class ThresholdRule:
    """A rule raising one flag per patient and direction when any condition is met."""

    id: str
    title: str
    kind: str
    direction: Direction
    source: str
    conditions: tuple[Condition, ...]
    #: Applies only to patients on this SpO2 scale (1 or 2); None = every patient.
    spo2_scale: int | None = None
    #: How far back inside the least severe limit a value must come to count as back in
    #: range (metric units): a value hovering at the limit keeps its flag open, not flapping.
    hysteresis: float = 0.0
    programs: frozenset[str] = frozenset()  # empty: every patient

    @property
    def metrics(self) -> frozenset[str]:
        """The LOINC codes this rule looks at."""
        return frozenset(condition.metric for condition in self.conditions)


Rule = ThresholdRule | KindRule


@dataclass(frozen=True)
class RuleSet:
    """A versioned, validated set of rules. Immutable; build a new one to change it.

    ``resolve_after``: how long a value must stay back in range before its flag resolves by
    itself. ``late_after``: a reading that reached CareWatch this long after it was taken is
    flagged as late (it tells of the past), never as urgent now.
    """

    version: str
    rules: tuple[Rule, ...]
    resolve_after: timedelta = DEFAULT_RESOLVE_AFTER
    late_after: timedelta = DEFAULT_LATE_AFTER
    #: Severity -> how long an open flag may wait for acknowledgement before escalation.
    escalate_after: Mapping[str, timedelta] = field(
        default_factory=lambda: dict(DEFAULT_ESCALATE_AFTER)
    )
    #: The rules file's tables this set was built from (program and patient overrides apply
    #: to it: :mod:`analytics.threshold_sets`).
    definition: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def thresholds(self) -> tuple[ThresholdRule, ...]:
        """The single-reading threshold rules."""
        return tuple(rule for rule in self.rules if isinstance(rule, ThresholdRule))

    def rule(self, rule_id: str) -> Rule:
        """The rule with this id; ``KeyError`` when there is none."""
        for rule in self.rules:
            if rule.id == rule_id:
                return rule
        raise KeyError(rule_id)

    @property
    def metrics(self) -> frozenset[str]:
        """Every LOINC code some threshold rule looks at."""
        return frozenset().union(*(rule.metrics for rule in self.thresholds))

    def threshold_lines(self, loinc: str) -> list[dict[str, Any]]:
        """The limits to draw on a chart of this metric, in rule-file order.

        Each line: ``{metric, limit, direction, severity, label, rule_id}``.
        """
        return [
            {
                "metric": condition.metric,
                "limit": condition.limit,
                "direction": rule.direction,
                "severity": condition.severity,
                "label": condition.label,
                "rule_id": rule.id,
                "spo2_scale": rule.spo2_scale,
            }
            for rule in self.thresholds
            for condition in rule.conditions
            if condition.metric == loinc
        ]

    @cached_property
    def conditions_frame(self) -> pd.DataFrame:
        """One row per condition (row ``i`` has ``condition_order == i``), built once per set.

        The evaluation merges readings with its numeric columns and looks the descriptive ones
        up for the breaches only. Treat as read-only: every evaluation shares it.
        """
        pairs = [(rule, condition) for rule in self.thresholds for condition in rule.conditions]
        rule_order = {rule.id: index for index, rule in enumerate(self.thresholds)}
        frame = pd.DataFrame(
            {
                "loinc": [condition.metric for _, condition in pairs],
                "condition_order": np.arange(len(pairs), dtype="int64"),
                "rule_order": np.array([rule_order[rule.id] for rule, _ in pairs], dtype="int64"),
                "is_above": np.array([c.comparison == "above" for _, c in pairs], dtype=bool),
                "limit": np.array([c.limit for _, c in pairs], dtype="float64"),
                "rule_spo2_scale": np.array(
                    [rule.spo2_scale or 0 for rule, _ in pairs], dtype="int64"
                ),
                "severity_rank": np.array(
                    [SEVERITY_RANK[c.severity] for _, c in pairs], dtype="int64"
                ),
                "rule_id": [rule.id for rule, _ in pairs],
                "kind": [rule.kind for rule, _ in pairs],
                "direction": [rule.direction for rule, _ in pairs],
                "title": [rule.title for rule, _ in pairs],
                "severity": [c.severity for _, c in pairs],
                "label": [c.label for _, c in pairs],
            }
        )
        return frame


# --- loading and validation -------------------------------------------------------------------


def load_rules(path: Path | str | None = None) -> RuleSet:
    """Read and validate a rule set; ``None`` reads the packaged ``thresholds.toml``.

    Raises :class:`RulesConfigError` naming the file, the rule and the problem.
    """
    if path is None:
        resource = resources.files(DEFAULT_RULES_PACKAGE).joinpath(DEFAULT_RULES_RESOURCE)
        source = f"{DEFAULT_RULES_PACKAGE}/{DEFAULT_RULES_RESOURCE}"
        text = resource.read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise RulesConfigError(f"{source}: cannot read the rules file: {exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise RulesConfigError(f"{source}: not valid TOML: {exc}") from exc
    return rules_from_mapping(data, source=source)


def rules_from_mapping(data: Mapping[str, Any], *, source: str = "<rules>") -> RuleSet:
    """Validate a parsed rule set (the TOML's shape) and build the :class:`RuleSet`.

    Useful for a proposed threshold set that does not live in a file (backtests, previews).
    """
    if not isinstance(data, Mapping):
        raise RulesConfigError(f"{source}: expected a table at the top level")
    _reject_unknown_keys(data, _RULESET_KEYS, where=source)
    version = data.get("version")
    if not isinstance(version, str) or not version.strip():
        raise RulesConfigError(f"{source}: `version` must be a non-empty string")
    raw_rules = data.get("rules")
    if not isinstance(raw_rules, list) or not raw_rules:
        raise RulesConfigError(f"{source}: expected at least one [[rules]] table")
    raw_settings = data.get("settings", {})
    if not isinstance(raw_settings, Mapping):
        raise RulesConfigError(f"{source}: [settings] must be a table")
    _reject_unknown_keys(raw_settings, _SETTINGS_KEYS, where=f"{source}: [settings]")
    resolve_after = _positive_duration(
        raw_settings, "resolve_after_minutes", 60.0, DEFAULT_RESOLVE_AFTER, where=source
    )
    late_after = _positive_duration(
        raw_settings, "late_after_hours", 3600.0, DEFAULT_LATE_AFTER, where=source
    )
    escalate_after = _escalation(data.get("escalation"), where=source)
    rules: list[Rule] = []
    seen_ids: set[str] = set()
    for position, raw_rule in enumerate(raw_rules, start=1):
        rule = _parse_rule(raw_rule, position=position, source=source)
        if rule.id in seen_ids:
            raise RulesConfigError(f"{source}: rule {rule.id!r}: duplicate rule id")
        seen_ids.add(rule.id)
        rules.append(rule)
    return RuleSet(
        version=version.strip(),
        rules=tuple(rules),
        resolve_after=resolve_after,
        late_after=late_after,
        escalate_after=escalate_after,
        definition=copy.deepcopy(dict(data)),
    )


def _escalation(raw: Any, *, where: str) -> dict[str, timedelta]:
    """``[escalation]``: severity = minutes an open flag may wait for acknowledgement."""
    if raw is None:
        return dict(DEFAULT_ESCALATE_AFTER)
    if not isinstance(raw, Mapping):
        raise RulesConfigError(f"{where}: [escalation] must be a table of severity = minutes")
    waits = {}
    for severity, minutes in raw.items():
        if severity not in SEVERITY_RANK:
            raise RulesConfigError(
                f"{where}: [escalation] unknown severity {severity!r}"
                f" (expected one of {', '.join(SEVERITIES)})"
            )
        if isinstance(minutes, bool) or not isinstance(minutes, int | float) or not minutes > 0:
            raise RulesConfigError(f"{where}: [escalation] {severity} must be a positive number")
        waits[severity] = timedelta(minutes=float(minutes))
    return waits


def _positive_duration(
    raw: Mapping[str, Any], key: str, seconds_per_unit: float, default: timedelta, *, where: str
) -> timedelta:
    if key not in raw:
        return default
    value = raw[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise RulesConfigError(f"{where}: [settings] `{key}` must be a positive number")
    return timedelta(seconds=float(value) * seconds_per_unit)


def _parse_rule(raw: Any, *, position: int, source: str) -> Rule:
    if not isinstance(raw, Mapping):
        raise RulesConfigError(f"{source}: rule #{position}: expected a [[rules]] table")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id.strip():
        raise RulesConfigError(f"{source}: rule #{position}: `id` must be a non-empty string")
    where = f"{source}: rule {rule_id!r}"
    title = _required_text(raw, "title", where=where)
    source_text = _required_text(raw, "source", where=where)
    kind = raw.get("kind", "threshold")
    if kind not in RULE_KINDS:
        raise RulesConfigError(
            f"{where}: unknown kind {kind!r} (expected one of {', '.join(RULE_KINDS)})"
        )
    programs = raw.get("programs", [])
    if not isinstance(programs, list) or any(p not in PROGRAMS for p in programs):
        raise RulesConfigError(
            f"{where}: `programs` must be a list of {', '.join(PROGRAMS)}, not {programs!r}"
        )
    if kind != "threshold":
        try:
            return parse_kind_rule(
                raw,
                kind=kind,
                rule_id=rule_id,
                title=title,
                source=source_text,
                programs=frozenset(programs),
                where=where,
            )
        except RuleKindError as exc:
            raise RulesConfigError(str(exc)) from None
    _reject_unknown_keys(raw, _RULE_KEYS, where=where)
    direction = raw.get("direction")
    if not isinstance(direction, str) or direction not in COMPARISON_FOR_DIRECTION:
        raise RulesConfigError(f'{where}: `direction` must be "high" or "low", not {direction!r}')
    raw_conditions = raw.get("when")
    if not isinstance(raw_conditions, list) or not raw_conditions:
        raise RulesConfigError(f"{where}: expected at least one [[rules.when]] condition")
    conditions = tuple(
        _parse_condition(raw_condition, direction=direction, where=f"{where}, condition {index}")
        for index, raw_condition in enumerate(raw_conditions, start=1)
    )
    spo2_scale = raw.get("spo2_scale")
    if spo2_scale is not None and (isinstance(spo2_scale, bool) or spo2_scale not in SPO2_SCALES):
        raise RulesConfigError(f"{where}: `spo2_scale` must be 1 or 2, not {spo2_scale!r}")
    hysteresis = raw.get("hysteresis", 0.0)
    if finite_number(hysteresis) is None or hysteresis < 0:
        raise RulesConfigError(f"{where}: `hysteresis` must be a number >= 0, not {hysteresis!r}")
    return ThresholdRule(
        id=rule_id,
        title=title,
        kind=kind,
        direction=cast(Direction, direction),
        source=source_text,
        conditions=conditions,
        spo2_scale=spo2_scale,
        hysteresis=float(hysteresis),
        programs=frozenset(programs),
    )


def _parse_condition(raw: Any, *, direction: str, where: str) -> Condition:
    if not isinstance(raw, Mapping):
        raise RulesConfigError(f"{where}: expected a [[rules.when]] table")
    _reject_unknown_keys(raw, _CONDITION_KEYS, where=where)
    metric = raw.get("metric")
    if not isinstance(metric, str) or metric not in METRICS:
        raise RulesConfigError(
            f"{where}: unknown LOINC code {metric!r} (known: {', '.join(sorted(METRICS))})"
        )
    has_above, has_below = "above" in raw, "below" in raw
    if has_above == has_below:
        problem = "both `above` and `below`" if has_above else "neither `above` nor `below`"
        raise RulesConfigError(f"{where}: has {problem}; give exactly one")
    comparison = "above" if has_above else "below"
    expected = COMPARISON_FOR_DIRECTION[direction]
    if comparison != expected:
        raise RulesConfigError(
            f"{where}: a {direction!r} rule compares with `{expected}`, not `{comparison}`"
        )
    limit = raw[comparison]
    if finite_number(limit) is None:
        raise RulesConfigError(f"{where}: `{comparison}` must be a finite number, not {limit!r}")
    severity = raw.get("severity")
    if not isinstance(severity, str) or severity not in SEVERITY_RANK:
        raise RulesConfigError(
            f"{where}: unknown severity {severity!r} (expected one of {', '.join(SEVERITIES)})"
        )
    label = _required_text(raw, "label", where=where)
    return Condition(
        metric=metric,
        comparison=cast(Comparison, comparison),
        limit=float(limit),
        severity=cast(Severity, severity),
        label=label,
    )


def _required_text(raw: Mapping[str, Any], key: str, *, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise RulesConfigError(f"{where}: `{key}` must be a non-empty string")
    return value.strip()


def _reject_unknown_keys(raw: Mapping[str, Any], allowed: frozenset[str], *, where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise RulesConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


# --- evaluation -------------------------------------------------------------------------------


def empty_breaches() -> pd.DataFrame:
    """A breach frame with no rows and the columns and dtypes of a full one."""
    return pd.DataFrame(
        {
            "reading_id": pd.Series(dtype=object),
            "patient_id": pd.Series(dtype=object),
            "rule_id": pd.Series(dtype=object),
            "kind": pd.Series(dtype=object),
            "direction": pd.Series(dtype=object),
            "loinc": pd.Series(dtype=object),
            "value": pd.Series(dtype="float64"),
            "measured_at": pd.Series(dtype="datetime64[ns, UTC]"),
            "severity": pd.Series(dtype=object),
            "limit": pd.Series(dtype="float64"),
            "label": pd.Series(dtype=object),
            "title": pd.Series(dtype=object),
        }
    )


def evaluate_thresholds(readings: pd.DataFrame, rules: RuleSet) -> pd.DataFrame:
    """The threshold breaches among ``readings``: one row per breaching (reading, rule).

    ``readings`` needs the columns of :data:`READING_COLUMNS` (``measured_at`` timezone-aware);
    other columns are ignored. Rows repeating a reading id count once. The result has the
    columns of :data:`BREACH_COLUMNS`: ``severity``, ``limit`` and ``label`` are those of the
    most severe condition of the rule that the reading met (the first such condition in the
    file on a tie), ``measured_at`` is in UTC, and rows are sorted by ``measured_at``,
    ``reading_id`` (as text) and ``rule_id``, so the result does not depend on the input order.
    """
    missing = [column for column in READING_COLUMNS if column not in readings.columns]
    if missing:
        raise ValueError(f"readings lack the column(s) {', '.join(missing)}")
    conditions = rules.conditions_frame
    relevant = readings.loc[readings["loinc"].isin(rules.metrics), list(READING_COLUMNS)]
    if relevant.empty:
        return empty_breaches()
    patient_scale = (
        readings.loc[relevant.index, SPO2_SCALE_COLUMN].fillna(1).astype("int64")
        if SPO2_SCALE_COLUMN in readings.columns
        else 1
    )
    relevant = relevant.assign(
        measured_at=_as_utc(relevant["measured_at"]),
        value=pd.to_numeric(relevant["value"], errors="raise").astype("float64"),
        patient_spo2_scale=patient_scale,
    )

    # Merge on the numeric columns only; descriptive ones are looked up for the breaches.
    candidates = relevant.merge(
        conditions.loc[:, list(_MERGE_COLUMNS)], on="loinc", how="inner", sort=False
    )
    values = candidates["value"].to_numpy(dtype="float64")
    limits = candidates["limit"].to_numpy(dtype="float64")
    is_above = candidates["is_above"].to_numpy(dtype=bool)
    breached = np.where(is_above, values > limits, values < limits)  # NaN never breaches
    rule_scale = candidates["rule_spo2_scale"].to_numpy(dtype="int64")
    breached &= (rule_scale == 0) | (rule_scale == candidates["patient_spo2_scale"].to_numpy())
    hits = candidates.loc[breached]
    if hits.empty:
        return empty_breaches()

    # Reading ids (often uuid.UUID) compare in Python; their text sorts the same, in C.
    hits = hits.assign(_reading_key=hits["reading_id"].astype(str))
    most_severe_first = hits.sort_values(
        ["severity_rank", "condition_order"], ascending=[False, True], kind="stable"
    )
    one_per_reading_and_rule = most_severe_first.drop_duplicates(
        ["_reading_key", "rule_order"], keep="first"
    )
    described = one_per_reading_and_rule.reset_index(drop=True).join(
        conditions.loc[
            one_per_reading_and_rule["condition_order"].to_numpy(), list(_DESCRIPTIVE_COLUMNS)
        ].reset_index(drop=True)
    )
    ordered = described.sort_values(["measured_at", "_reading_key", "rule_id"], kind="stable")
    return ordered.loc[:, list(BREACH_COLUMNS)].reset_index(drop=True)


def _as_utc(measured_at: pd.Series) -> pd.Series:
    """``measured_at`` as ``datetime64[ns, UTC]``; naive datetimes are refused, not guessed."""
    if isinstance(measured_at.dtype, pd.DatetimeTZDtype):
        return measured_at.dt.tz_convert("UTC")
    if pd.api.types.is_datetime64_dtype(measured_at.dtype):
        raise ValueError("measured_at must be timezone-aware (got naive datetimes)")
    first = measured_at.dropna().head(1)
    if not first.empty:
        sample = first.iloc[0]
        if isinstance(sample, datetime) and sample.tzinfo is None:
            raise ValueError("measured_at must be timezone-aware (got naive datetimes)")
    return pd.to_datetime(measured_at, utc=True)


def severity_rank(severity: str) -> int:
    """Higher is more severe; ``KeyError`` for an unknown severity."""
    return SEVERITY_RANK[severity]


def most_severe(severities: Sequence[str]) -> str:
    """The most severe of some severities (at least one)."""
    return max(severities, key=SEVERITY_RANK.__getitem__)
