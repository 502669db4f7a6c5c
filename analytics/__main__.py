"""Command line: ``python -m analytics worker`` and ``python -m analytics rules [--rules FILE]``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TextIO

from pydantic import ValidationError

from analytics.rules import RulesConfigError, RuleSet, load_rules
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
        for index, condition in enumerate(rule.conditions):
            metric = metric_for(condition.metric)
            metric_name = metric.display if metric else condition.metric
            unit = metric.unit if metric else ""
            sign = ">" if condition.comparison == "above" else "<"
            rows.append(
                (
                    rule.id if index == 0 else "",
                    rule.direction if index == 0 else "",
                    f"{metric_name} ({condition.metric})",
                    f"{sign} {condition.limit:g} {unit}".rstrip(),
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
