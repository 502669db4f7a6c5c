"""Rules engine speed: a backtest over about 2 million readings, and the same rules evaluated
row by row in plain Python.

Targets (issue 5): a backtest over 1,000 patients x 90 days of realistic readings ("about 2
million rows") in at most 5 s here, and at least 50 times faster than a straightforward
row-by-row Python evaluation of the same rules, measured in the same run.

The histories come from :mod:`bench.rpm_history` (seeded, realistic schedules per care
program). Its 1,000 patients x 90 days hold about 520,000 readings (about 6 a patient-day,
the schedules CareWatch's programs use), so the 2-million-row figure uses as many patients
as it takes (about 3,800). The row-by-row baseline is :mod:`bench.rules_reference`, the
plain-Python evaluation the engine is tested against; it runs on the 1,000-patient history
(the 2-million-row one would take a minute for nothing more), and the bench checks that both
give the same flags. Times are the best of a few runs, the data already in memory (loading a
CSV is measured apart).

Prints a table, writes bench/results/analytics.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from analytics.backtest import load_readings_csv, run_backtest
from analytics.rules import load_rules
from bench import rules_reference
from bench.rpm_history import generate_history, write_csv

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "analytics.json"
BACKTEST_TARGET_S = 5.0
VS_ROW_BY_ROW_TARGET = 50.0
TARGET_ROWS = 2_000_000
DAYS = 90
SEED = 7


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def best_of(runs: int, work: Callable[[], Any]) -> tuple[float, Any]:
    """The shortest of ``runs`` timings of ``work()`` and its last result."""
    best, result = float("inf"), None
    for _ in range(runs):
        started = time.perf_counter()
        result = work()
        best = min(best, time.perf_counter() - started)
    return best, result


def run(*, repeats: int = 3, scale: float = 1.0) -> dict[str, Any]:
    rules = load_rules()
    patients_small = max(20, int(1000 * scale))
    _progress(f"  generating {patients_small:,} patients x {DAYS} days")
    small = generate_history(patients=patients_small, days=DAYS, seed=SEED)
    per_patient = len(small.readings) / patients_small
    patients_large = max(patients_small, int(TARGET_ROWS * scale / per_patient))
    _progress(f"  generating {patients_large:,} patients x {DAYS} days")
    large = generate_history(patients=patients_large, days=DAYS, seed=SEED)

    def frame(history: Any) -> pd.DataFrame:
        return history.readings.rename(columns={"metric": "loinc"})

    small_readings, large_readings = frame(small), frame(large)
    _progress(f"  backtest, {len(large_readings):,} readings")
    large_s, large_result = best_of(
        repeats, lambda: run_backtest(large_readings, rules, patients=large.patients)
    )
    _progress(f"  backtest, {len(small_readings):,} readings")
    small_s, small_result = best_of(
        repeats, lambda: run_backtest(small_readings, rules, patients=small.patients)
    )
    _progress(f"  row by row, {len(small_readings):,} readings (about a quarter of a minute)")
    reference_s, reference_flags = best_of(
        1,
        lambda: rules_reference.evaluate_flags(
            small_readings, rules, patients=small.patients, now=small_readings["measured_at"].max()
        ),
    )
    same_flags = small_result.flags.reset_index(drop=True).equals(
        reference_flags.reset_index(drop=True)
    )
    with tempfile.TemporaryDirectory(prefix="cw-bench-analytics-") as folder:
        path = Path(folder) / "readings.csv"
        write_csv(large, path)
        load_s, loaded = best_of(1, lambda: load_readings_csv(path))
    ratio = reference_s / small_s
    return {
        "backtest_large_seconds": round(large_s, 3),
        "backtest_large_readings": len(large_readings),
        "backtest_large_patients": patients_large,
        "backtest_large_readings_per_s": round(len(large_readings) / large_s),
        "backtest_small_seconds": round(small_s, 3),
        "backtest_small_readings": len(small_readings),
        "backtest_small_patients": patients_small,
        "row_by_row_small_seconds": round(reference_s, 3),
        "csv_load_large_seconds": round(load_s, 3),
        "csv_rows_loaded": len(loaded),
        "flags_large": len(large_result.flags),
        "flags_small": len(small_result.flags),
        "alerts_per_patient_week_small": round(small_result.alerts_per_patient_week, 3),
        "ratios": {
            "backtest_large_to_target": round(large_s / BACKTEST_TARGET_S, 3),
            "vectorised_vs_row_by_row": round(ratio, 1),
        },
        "goals": {
            "backtest_seconds_at_most": BACKTEST_TARGET_S,
            "vs_row_by_row_at_least": VS_ROW_BY_ROW_TARGET,
        },
        "met": {
            "backtest_seconds": large_s <= BACKTEST_TARGET_S,
            "vs_row_by_row": ratio >= VS_ROW_BY_ROW_TARGET,
        },
        "checks": {"row_by_row_gives_the_same_flags": bool(same_flags)},
        "not_measured": {
            "commit_to_flag_p99": "the live worker still runs the threshold-only pass; the "
            "engine behind these figures replaces it next (issue 5)"
        },
        "setup": {
            "days": DAYS,
            "seed": SEED,
            "readings_per_patient_day": round(per_patient / DAYS, 2),
            "repeats": repeats,
            "cpus": os.cpu_count(),
            "rules_version": rules.version,
            "rules": len(rules.rules),
            "load_average_before": list(os.getloadavg()),
        },
    }


def report(results: dict[str, Any]) -> None:
    r = results
    rows = [
        (
            f"backtest, {r['backtest_large_readings']:,} readings",
            f"{r['backtest_large_seconds']:.2f} s",
            f"<= {BACKTEST_TARGET_S:g} s",
            f"{r['ratios']['backtest_large_to_target']:.2f}",
            "pass" if r["met"]["backtest_seconds"] else "short",
        ),
        (
            f"backtest, {r['backtest_small_readings']:,} readings",
            f"{r['backtest_small_seconds']:.2f} s",
            "",
            "",
            "",
        ),
        (
            f"row by row, {r['backtest_small_readings']:,} readings",
            f"{r['row_by_row_small_seconds']:.2f} s",
            "",
            "",
            "",
        ),
        (
            "vectorised vs row by row",
            f"{r['ratios']['vectorised_vs_row_by_row']:.1f} x",
            f">= {VS_ROW_BY_ROW_TARGET:g} x",
            f"{r['ratios']['vectorised_vs_row_by_row'] / VS_ROW_BY_ROW_TARGET:.2f}",
            "pass" if r["met"]["vs_row_by_row"] else "short",
        ),
    ]
    header = ("figure", "value", "goal", "ratio", "result")
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    same = r["checks"]["row_by_row_gives_the_same_flags"]
    print(
        f"flags: {r['flags_large']:,} over the large history, {r['flags_small']:,} over the"
        f" small one ({r['alerts_per_patient_week_small']} alerts per patient-week);"
        f" row by row gives {'the same' if same else 'DIFFERENT'} flags"
    )
    rows, seconds = r["csv_rows_loaded"], r["csv_load_large_seconds"]
    print(f"loading the {rows:,}-row CSV (checked): {seconds:.2f} s")
    print(f"commit to flag: not measured yet ({r['not_measured']['commit_to_flag_p99']})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.analytics", description=__doc__)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the sizes")
    args = parser.parse_args(argv)
    results = run(repeats=args.repeats, scale=args.scale)
    report(results)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(REPO)}")


if __name__ == "__main__":
    main()
