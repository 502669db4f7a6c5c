"""Command line: ``python -m analytics worker``, ``python -m analytics rules [--rules FILE]``
and ``python -m analytics backtest --readings FILE.csv [--rules FILE.toml] [--json]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import TextIO

import pandas as pd
from pydantic import ValidationError

from analytics.backtest import BacktestResult
from analytics.rule_kinds import (
    AdherenceRule,
    BaselineRule,
    KindRule,
    SustainedRule,
    TrendRule,
)
from analytics.rules import RulesConfigError, RuleSet, ThresholdRule, load_rules
from carewatch_contract.metrics import metric_for


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analytics",
        description="CareWatch analytics: threshold rules that turn readings into flags.",
    )
    parser.add_argument(
        "--log-level",
        default=os.environ.get("LOG_LEVEL", "INFO"),
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        type=str.upper,
        help="logging level (default: $LOG_LEVEL or INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    worker = commands.add_parser(
        "worker",
        help="evaluate new readings and write flags until SIGINT/SIGTERM",
        description=(
            "Wait for the database, apply migrations, then evaluate every new reading exactly "
            "once. Configured from the environment: DATABASE_URL (required), RULES_FILE, "
            "ANALYTICS_POLL_INTERVAL_MS, ANALYTICS_WORKER_NAME, ANALYTICS_BATCH_MAX_READINGS, "
            "ANALYTICS_DB_WAIT_SECONDS."
        ),
    )
    worker.set_defaults(handler=_run_worker)

    rules = commands.add_parser(
        "rules",
        help="validate a rule set and print it as a table",
        description="Validate a rule set and print it (the packaged defaults unless --rules).",
    )
    rules.add_argument(
        "--rules",
        type=Path,
        metavar="FILE",
        help="a thresholds TOML file (default: the packaged thresholds.toml)",
    )
    rules.set_defaults(handler=_print_rules)

    backtest = commands.add_parser(
        "backtest",
        help="the flags a rule set would have raised over a CSV of readings",
        description=(
            "Evaluate a rule set over past readings and print the flags it would have raised "
            "and the alerts per patient-week. The CSV has the columns patient_id, metric, "
            "value, unit, measured_at (metric as LOINC, time ISO 8601 with an offset)."
        ),
    )
    backtest.add_argument("--readings", type=Path, metavar="FILE.csv", required=True)
    backtest.add_argument(
        "--rules", type=Path, metavar="FILE.toml", help="rule set (default: the packaged one)"
    )
    backtest.add_argument(
        "--patients",
        type=Path,
        metavar="FILE.csv",
        help="patient_id, program, spo2_scale, on_oxygen (default: general, scale 1, on air)",
    )
    backtest.add_argument(
        "--now",
        type=datetime.fromisoformat,
        metavar="ISO-TIME",
        help="the end of the backtest (default: the latest reading)",
    )
    backtest.add_argument("--json", action="store_true", help="print one JSON object")
    backtest.set_defaults(handler=_run_backtest)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    handler = args.handler
    return int(handler(args))


def _run_backtest(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from analytics.backtest import (
        BacktestInputError,
        load_patients_csv,
        load_readings_csv,
        result_as_json,
        run_backtest,
    )

    try:
        rules = load_rules(args.rules)
        readings = load_readings_csv(args.readings)
        patients = load_patients_csv(args.patients) if args.patients else None
    except (RulesConfigError, BacktestInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.now is not None and args.now.tzinfo is None:
        print("error: --now needs a UTC offset, e.g. 2026-09-30T00:00:00+00:00", file=sys.stderr)
        return 2
    patient_count = readings["patient_id"].nunique()
    with tqdm(
        total=patient_count, unit="patient", desc="backtest", file=sys.stderr, disable=None
    ) as bar:
        result = run_backtest(readings, rules, patients=patients, now=args.now, progress=bar.update)
    if args.json:
        json.dump(result_as_json(result), sys.stdout)
        sys.stdout.write("\n")
        return 0
    write_backtest_report(result, rules=rules, out=sys.stdout)
    return 0


def write_backtest_report(result: BacktestResult, *, rules: RuleSet, out: TextIO) -> None:
    """The flags one per line, then counts per rule and the alerts per patient-week."""
    flags = result.flags
    print(
        f"Rules version {rules.version}: {len(flags)} flags over {result.readings:,} readings"
        f" of {result.patients:,} patients",
        file=out,
    )
    for flag in flags.itertuples(index=False):
        resolved = (
            "open" if pd.isna(flag.resolved_at) else f"resolved {flag.resolved_at:%Y-%m-%d %H:%M}"
        )
        direction = flag.direction if isinstance(flag.direction, str) else "-"
        late = " LATE" if flag.late else ""
        print(
            f"  {flag.opened_at:%Y-%m-%d %H:%M}  {flag.patient_id:<12} {flag.severity:<8}"
            f" {flag.rule_id:<26} {direction:<4} {flag.label} ({resolved}){late}",
            file=out,
        )
    if not flags.empty:
        print(file=out)
        print("Flags per rule:", file=out)
        for rule_id, count in flags.groupby("rule_id").size().sort_values(ascending=False).items():
            print(f"  {rule_id:<28} {count:>7,}", file=out)
    print(file=out)
    print(f"Alerts per patient-week: {result.alerts_per_patient_week:.3f}", file=out)


def _print_rules(args: argparse.Namespace) -> int:
    try:
        rules = load_rules(args.rules)
    except RulesConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    source = args.rules or "packaged analytics/thresholds.toml"
    write_rules_table(rules, source=str(source), out=sys.stdout)
    return 0


def write_rules_table(rules: RuleSet, *, source: str, out: TextIO) -> None:
    """Write the rule set as a readable table, then each rule's source."""
    header = ("RULE", "DIRECTION", "METRIC", "CONDITION", "SEVERITY", "LABEL")
    rows: list[tuple[str, ...]] = []
    for rule in rules.rules:
        if not isinstance(rule, ThresholdRule):
            metric, condition, severity, label = describe_kind_rule(rule)
            rows.append((rule.id, rule.direction or "", metric, condition, severity, label))
            continue
        for index, condition in enumerate(rule.conditions):
            rows.append(
                (
                    rule.id if index == 0 else "",
                    rule.direction if index == 0 else "",
                    _metric_name(condition.metric),
                    _limit_text(condition.comparison, condition.limit, condition.metric),
                    condition.severity,
                    condition.label,
                )
            )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) for cell, width in zip(cells, widths, strict=True))

    print(f"Rules version {rules.version} ({len(rules.rules)} rules, from {source})", file=out)
    print(file=out)
    print(line(header).rstrip(), file=out)
    print(line(["-" * width for width in widths]).rstrip(), file=out)
    for row in rows:
        print(line(row).rstrip(), file=out)
    print(file=out)
    print("Sources:", file=out)
    for rule in rules.rules:
        print(f"  {rule.id} ({rule.title}): {rule.source}", file=out)


def _metric_name(loinc: str) -> str:
    metric = metric_for(loinc)
    return f"{metric.display if metric else loinc} ({loinc})"


def _limit_text(comparison: str, limit: float, loinc: str) -> str:
    metric = metric_for(loinc)
    sign = ">" if comparison == "above" else "<"
    return f"{sign} {limit:g} {metric.unit if metric else ''}".rstrip()


def describe_kind_rule(rule: KindRule) -> tuple[str, str, str, str]:
    """(metric, condition, severity, label) of a rule that is not a plain threshold."""
    if isinstance(rule, SustainedRule):
        comparison = "above" if rule.direction == "high" else "below"
        span = f"{rule.count} readings in a row" if rule.count else f"for {rule.minutes:g} min"
        limit = _limit_text(comparison, rule.limit, rule.metric)
        return _metric_name(rule.metric), f"{limit}, {span}", rule.severity, rule.label
    if isinstance(rule, TrendRule):
        unit = metric_for(rule.metric).unit if metric_for(rule.metric) else ""
        change = "rises" if rule.direction == "high" else "falls"
        if rule.statistic == "weekly_mean":
            text = f"weekly mean {change} by >= {rule.by_at_least:g} {unit}"
        else:
            text = f"{change} >= {rule.by_at_least:g} {unit} within {rule.window_hours:g} h"
        return _metric_name(rule.metric), text, rule.severity, rule.label
    if isinstance(rule, BaselineRule):
        side = "above" if rule.direction == "high" else "below"
        text = (
            f"{rule.k:g} robust SD {side} own {rule.window_days:g}-day median"
            f" (readings on >= {rule.min_days} days)"
        )
        return _metric_name(rule.metric), text, rule.severity, rule.label
    if isinstance(rule, AdherenceRule):
        metric = _metric_name(rule.metric) if rule.metric else "any reading"
        if rule.check == "silent":
            text = f"none for {rule.hours:g} h"
        elif rule.check == "device_silent":
            metric, text = "a device", f"none for {rule.hours:g} h, gateway online"
        elif rule.check == "gateway_offline":
            metric, text = "the gateway", f"offline for {rule.hours:g} h"
        else:
            text = f"< {rule.min_days} of {rule.of_days} days with readings"
        return metric, text, rule.severity, rule.label
    bands = ", ".join(f"{band} -> {severity}" for band, severity in rule.severities.items())
    return "NEWS2 (home)", f"sets of {rule.window_minutes:g} min; {bands}", "", "NEWS2"


def _run_worker(args: argparse.Namespace) -> int:
    from analytics.settings import AnalyticsSettings
    from analytics.worker import run_forever
    from ingest.db import DatabaseUnavailable, migrate, wait_for_database

    try:
        settings = AnalyticsSettings()  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()
        )
        print(f"error: invalid settings: {problems}", file=sys.stderr)
        return 2
    try:
        rules = load_rules(settings.rules_file)
    except RulesConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        wait_for_database(settings.database_url, settings.db_wait_seconds)
    except DatabaseUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    migrate(settings.database_url)

    stop = threading.Event()

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()  # run_forever logs the stop; logging inside a signal handler can deadlock

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    run_forever(settings, stop, rules=rules)
    return 0


if __name__ == "__main__":
    sys.exit(main())
