"""The rule kinds beyond single-reading thresholds, as the rules file describes them.

Each is a frozen dataclass parsed (and validated, with messages naming the file, the rule and
the key) from one ``[[rules]]`` table. What they mean, with examples: docs/rules.md.

- ``sustained``: N consecutive readings, or a condition lasting T minutes.
- ``trend``: a change over a window (rise from the lowest value of the last 24 h; weekly mean
  against the week before).
- ``baseline``: a reading far from the patient's own recent median, once enough readings exist.
- ``adherence``: a device (metric stream) silent for N hours; fewer than K days with readings
  in the last 7.
- ``news2``: the home NEWS2 score over sets of readings (:mod:`analytics.news2`).

Threshold rules (:class:`analytics.rules.ThresholdRule`) stay in :mod:`analytics.rules`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Final, Literal

from analytics import AnalyticsError
from carewatch_contract.metrics import METRICS

Direction = Literal["high", "low"]
TrendStatistic = Literal["rise_from_lowest", "weekly_mean"]
AdherenceCheck = Literal["silent", "days_with_readings", "device_silent", "gateway_offline"]

SEVERITY_NAMES: Final = ("critical", "high", "medium", "low", "info")
#: NEWS2 response bands that can raise a flag, and the severity each raises by default.
NEWS2_DEFAULT_SEVERITIES: Final[Mapping[str, str]] = {
    "high": "critical",
    "medium": "high",
    "low_single_3": "high",
}


class RuleKindError(AnalyticsError, ValueError):
    """A rule of one of these kinds is not valid (the message says where and why)."""


@dataclass(frozen=True, slots=True)
class SustainedRule:
    """``metric`` beyond ``limit`` on ``count`` consecutive readings, or for ``minutes``."""

    id: str
    title: str
    source: str
    direction: Direction
    metric: str
    limit: float
    severity: str
    label: str
    count: int | None
    minutes: float | None
    hysteresis: float = 0.0
    programs: frozenset[str] = frozenset()  # empty: every patient
    kind: str = "sustained"


@dataclass(frozen=True, slots=True)
class TrendRule:
    """A change of ``metric`` over a window.

    ``rise_from_lowest``: the reading minus the lowest reading of the previous
    ``window_hours`` (a fall from the highest for ``low``) is at least ``by_at_least``.
    ``weekly_mean``: the mean of the last 7 days minus the mean of the 7 days before is at
    least ``by_at_least`` (with at least ``min_readings`` readings in each week).
    """

    id: str
    title: str
    source: str
    direction: Direction
    metric: str
    statistic: TrendStatistic
    window_hours: float
    by_at_least: float
    severity: str
    label: str
    min_readings: int = 1
    programs: frozenset[str] = frozenset()
    kind: str = "trend"

    @property
    def window(self) -> timedelta:
        return timedelta(hours=self.window_hours)


@dataclass(frozen=True, slots=True)
class BaselineRule:
    """A reading beyond the median of the patient's daily medians over the previous
    ``window_days`` days by more than ``k`` robust standard deviations (and at least
    ``min_deviation``), once readings exist on ``min_days`` of those days."""

    id: str
    title: str
    source: str
    direction: Direction
    metric: str
    window_days: float
    k: float
    min_days: int
    min_deviation: float
    severity: str
    label: str
    programs: frozenset[str] = frozenset()
    kind: str = "baseline"


@dataclass(frozen=True, slots=True)
class AdherenceRule:
    """``silent``: no reading of ``metric`` (or of any metric when None) for ``hours``.
    ``days_with_readings``: fewer than ``min_days`` days with a reading in the last
    ``of_days`` (evaluated each day once the patient has been measuring that long).
    ``device_silent``: one of the patient's devices has sent nothing for ``hours`` while its
    gateway is online (the device, not the home, needs a look). ``gateway_offline``: the
    patient's gateway has been offline for ``hours``. These two need the gateways' state:
    the live worker's sweep evaluates them (:mod:`analytics.live`), a CSV backtest cannot."""

    id: str
    title: str
    source: str
    check: AdherenceCheck
    severity: str
    label: str
    metric: str | None = None
    hours: float = 48.0
    min_days: int = 4
    of_days: int = 7
    direction: None = None
    programs: frozenset[str] = frozenset()
    kind: str = "adherence"


@dataclass(frozen=True, slots=True)
class News2Rule:
    """Flags a home NEWS2 set whose response band is in ``severities`` (band -> severity)."""

    id: str
    title: str
    source: str
    window_minutes: float
    severities: Mapping[str, str]
    direction: None = None
    programs: frozenset[str] = frozenset()
    kind: str = "news2"


KindRule = SustainedRule | TrendRule | BaselineRule | AdherenceRule | News2Rule


def parse_kind_rule(
    raw: Mapping[str, Any],
    *,
    kind: str,
    rule_id: str,
    title: str,
    source: str,
    programs: frozenset[str],
    where: str,
) -> KindRule:
    """One ``[[rules]]`` table of a kind other than ``threshold``."""
    fields = _Fields(raw, where)
    common: dict[str, Any] = {"id": rule_id, "title": title, "source": source, "programs": programs}
    if kind == "sustained":
        direction = fields.direction()
        comparison = "above" if direction == "high" else "below"
        count = fields.optional_int("count", minimum=2)
        minutes = fields.optional_number("minutes", minimum=1)
        if (count is None) == (minutes is None):
            raise RuleKindError(f"{where}: give exactly one of `count` or `minutes`")
        rule: KindRule = SustainedRule(
            **common,
            direction=direction,
            metric=fields.metric(),
            limit=fields.number(comparison),
            severity=fields.severity(),
            label=fields.text("label"),
            count=count,
            minutes=minutes,
            hysteresis=fields.optional_number("hysteresis", minimum=0) or 0.0,
        )
        fields.done({"metric", comparison, "count", "minutes", "hysteresis", "severity", "label"})
    elif kind == "trend":
        statistic = fields.choice("statistic", ("rise_from_lowest", "weekly_mean"))
        rule = TrendRule(
            **common,
            direction=fields.direction(),
            metric=fields.metric(),
            statistic=statistic,  # type: ignore[arg-type]
            window_hours=fields.number("window_hours", minimum=1)
            if statistic == "rise_from_lowest"
            else 168.0,
            by_at_least=fields.number("by_at_least", minimum=0, exclusive=True),
            severity=fields.severity(),
            label=fields.text("label"),
            min_readings=fields.optional_int("min_readings", minimum=1) or 1,
        )
        fields.done(
            {"metric", "statistic", "window_hours", "by_at_least", "severity", "label"}
            | {"min_readings"}
        )
    elif kind == "baseline":
        window_days = fields.number("window_days", minimum=1)
        min_days = fields.optional_int("min_days", minimum=3) or 7
        if min_days > window_days:
            raise RuleKindError(f"{where}: `min_days` ({min_days}) exceeds `window_days`")
        rule = BaselineRule(
            **common,
            direction=fields.direction(),
            metric=fields.metric(),
            window_days=window_days,
            k=fields.number("k", minimum=0, exclusive=True),
            min_days=min_days,
            min_deviation=fields.optional_number("min_deviation", minimum=0) or 0.0,
            severity=fields.severity(),
            label=fields.text("label"),
        )
        fields.done(
            {"metric", "window_days", "k", "min_days", "min_deviation", "severity", "label"}
        )
    elif kind == "adherence":
        check = fields.choice(
            "check", ("silent", "days_with_readings", "device_silent", "gateway_offline")
        )
        metric = fields.metric() if "metric" in raw else None
        if check != "days_with_readings":
            rule = AdherenceRule(
                **common,
                check=check,  # type: ignore[arg-type]
                metric=metric,
                hours=fields.number("hours", minimum=1),
                severity=fields.severity(),
                label=fields.text("label"),
            )
            fields.done({"check", "metric", "hours", "severity", "label"})
        else:
            of_days = fields.optional_int("of_days", minimum=1) or 7
            min_days = fields.optional_int("min_days", minimum=1) or 4
            if min_days > of_days:
                raise RuleKindError(f"{where}: `min_days` ({min_days}) exceeds `of_days`")
            rule = AdherenceRule(
                **common,
                check="days_with_readings",
                metric=metric,
                min_days=min_days,
                of_days=of_days,
                severity=fields.severity(),
                label=fields.text("label"),
            )
            fields.done({"check", "metric", "min_days", "of_days", "severity", "label"})
    elif kind == "news2":
        raw_severities = raw.get("severities", NEWS2_DEFAULT_SEVERITIES)
        if not isinstance(raw_severities, Mapping) or not raw_severities:
            raise RuleKindError(f"{where}: `severities` must map response bands to severities")
        for band, severity in raw_severities.items():
            if band not in ("high", "medium", "low_single_3", "low"):
                raise RuleKindError(
                    f"{where}: unknown NEWS2 band {band!r} (high, medium, low_single_3, low)"
                )
            if severity not in SEVERITY_NAMES:
                raise RuleKindError(f"{where}: unknown severity {severity!r} for band {band!r}")
        rule = News2Rule(
            **common,
            window_minutes=fields.optional_number("window_minutes", minimum=1) or 30.0,
            severities=dict(raw_severities),
        )
        fields.done({"window_minutes", "severities"})
    else:
        raise RuleKindError(f"{where}: unknown kind {kind!r}")
    return rule


def finite_number(value: Any) -> float | None:
    """A finite float, or None (booleans, strings and integers beyond any float too)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


class _Fields:
    """Typed access to one rule's keys, each error naming the rule and the key."""

    _COMMON: Final = frozenset({"id", "title", "kind", "direction", "source", "programs"})

    def __init__(self, raw: Mapping[str, Any], where: str) -> None:
        self.raw = raw
        self.where = where

    def done(self, allowed: set[str]) -> None:
        unknown = sorted(set(self.raw) - allowed - self._COMMON)
        if unknown:
            raise RuleKindError(f"{self.where}: unknown key(s) {', '.join(unknown)}")

    def direction(self) -> Direction:
        value = self.raw.get("direction")
        if value not in ("high", "low"):
            raise RuleKindError(f'{self.where}: `direction` must be "high" or "low"')
        return value  # type: ignore[return-value]

    def metric(self) -> str:
        value = self.raw.get("metric")
        if not isinstance(value, str) or value not in METRICS:
            raise RuleKindError(f"{self.where}: unknown LOINC code {value!r}")
        return value

    def severity(self) -> str:
        value = self.raw.get("severity")
        if value not in SEVERITY_NAMES:
            raise RuleKindError(
                f"{self.where}: unknown severity {value!r} ({', '.join(SEVERITY_NAMES)})"
            )
        return str(value)

    def text(self, key: str) -> str:
        value = self.raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise RuleKindError(f"{self.where}: `{key}` must be a non-empty string")
        return value.strip()

    def choice(self, key: str, options: tuple[str, ...]) -> str:
        value = self.raw.get(key)
        if value not in options:
            raise RuleKindError(f"{self.where}: `{key}` must be one of {', '.join(options)}")
        return str(value)

    def number(self, key: str, *, minimum: float | None = None, exclusive: bool = False) -> float:
        if key not in self.raw:
            raise RuleKindError(f"{self.where}: `{key}` is missing")
        value = self.raw[key]
        number = finite_number(value)
        if number is None:
            raise RuleKindError(f"{self.where}: `{key}` must be a finite number, not {value!r}")
        value = number
        if minimum is not None and (value <= minimum if exclusive else value < minimum):
            bound = f"> {minimum:g}" if exclusive else f">= {minimum:g}"
            raise RuleKindError(f"{self.where}: `{key}` must be {bound}, not {value!r}")
        return float(value)

    def optional_number(self, key: str, *, minimum: float | None = None) -> float | None:
        return self.number(key, minimum=minimum) if key in self.raw else None

    def optional_int(self, key: str, *, minimum: int) -> int | None:
        if key not in self.raw:
            return None
        value = self.raw[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise RuleKindError(f"{self.where}: `{key}` must be an integer >= {minimum}")
        return value
