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

Latency (issue 5: p99 at most 200 ms from the commit of a reading to its flag at 1,000
readings per second): the rules worker (``python -m analytics worker``, its own process, the
whole engine over each pass's patients) on a database holding two weeks of history for 200
patients, while this process commits 1,000 readings a second in batches of 50 (as ingest
does), about 2 % of them breaching. A reading's latency runs from its batch's COMMIT returning
to the moment a reader polling every 5 ms first sees it linked to a flag.

Prints a table, writes bench/results/analytics.json.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg
from psycopg import sql

from analytics.backtest import load_readings_csv, run_backtest
from analytics.rules import load_rules
from bench import rules_reference
from bench.rpm_history import generate_history, write_csv
from carewatch_contract.messages import DeviceType, Reading, TimeSource
from ingest.readings import StoredReading, insert_readings

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results" / "analytics.json"
BACKTEST_TARGET_S = 5.0
LATENCY_TARGET_MS = 200.0
LATENCY_RATE = 1000  # readings per second
LATENCY_BATCH = 50  # readings per committed batch: 20 commits a second
LATENCY_SECONDS = 20.0
LATENCY_PATIENTS = 200
LATENCY_HISTORY_DAYS = 14
LATENCY_POLL_S = 0.005
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


@contextlib.contextmanager
def latency_database() -> Iterator[str]:
    """A fresh, migrated database on ``DATABASE_URL``'s server (or an embedded one)."""
    from ingest.db import migrate

    with contextlib.ExitStack() as stack:
        server_url = os.environ.get("DATABASE_URL")
        if not server_url:
            from devstack.postgres import EmbeddedPostgres

            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="cw-bench-rules-"))
            server_url = stack.enter_context(EmbeddedPostgres(data_dir=Path(folder) / "pg")).url
        name = f"carewatch_bench_rules_{secrets.token_hex(4)}"
        with psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = psycopg.conninfo.make_conninfo(server_url, dbname=name)
        try:
            migrate(url)
            yield url
        finally:
            with psycopg.connect(server_url, autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


def _stored(patient_id: str, loinc: str, value: float, at: datetime, seq: int) -> StoredReading:
    units = {"8480-6": "mm[Hg]", "8462-4": "mm[Hg]", "8867-4": "/min", "59408-5": "%"}
    device = DeviceType.PULSE_OXIMETER if loinc == "59408-5" else DeviceType.BLOOD_PRESSURE
    return StoredReading(
        "gw-bench-rules",
        Reading(
            reading_id=str(uuid_from(seq, patient_id)),
            measurement_id=str(uuid_from(seq, patient_id, "m")),
            seq=seq,
            patient_id=patient_id,
            device_id=f"{patient_id}/{device.value}",
            device_type=device,
            loinc=loinc,
            unit=units[loinc],
            value=value,
            measured_at=at,
            time_source=TimeSource.DEVICE,
            received_at=at,
            characteristic="2A35",
            raw_hex="00",
        ),
    )


def uuid_from(*parts: object) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "/".join(str(p) for p in parts)))


def seed_history(url: str) -> list[str]:
    """Two weeks of readings for the latency population, every one already evaluated."""
    from analytics.worker import run_once
    from ingest.registry import PatientRecord, enroll

    history = generate_history(
        patients=LATENCY_PATIENTS, days=LATENCY_HISTORY_DAYS, seed=SEED, end=pd.Timestamp.now("UTC")
    )
    people = history.patients
    with psycopg.connect(url) as conn:
        enroll(
            conn,
            gateway_id="gw-bench-rules",
            patients=[
                PatientRecord(row.patient_id, row.patient_id, row.program, None, row.spo2_scale)
                for row in people.itertuples()
            ],
        )
        readings = history.readings
        for start in range(0, len(readings), 5000):
            chunk = readings.iloc[start : start + 5000]
            insert_readings(
                conn,
                [
                    StoredReading(
                        "gw-bench-rules",
                        Reading(
                            reading_id=row.reading_id,
                            measurement_id=row.reading_id,
                            seq=start + n,
                            patient_id=row.patient_id,
                            device_id=row.device_id,
                            device_type=DeviceType.BLOOD_PRESSURE,
                            loinc=row.metric,
                            unit=row.unit,
                            value=float(row.value),
                            measured_at=row.measured_at.to_pydatetime(),
                            time_source=TimeSource.DEVICE,
                            received_at=row.measured_at.to_pydatetime(),
                            characteristic="2A35",
                            raw_hex="00",
                        ),
                    )
                    for n, row in enumerate(chunk.itertuples())
                ],
            )
            conn.commit()
        conn.autocommit = True
        while run_once(conn, load_rules(), max_readings=100_000).readings:
            pass
    return list(people["patient_id"])


def commit_to_flag_latency(url: str, patients: list[str], seconds: float) -> dict[str, Any]:
    """Readings committed at LATENCY_RATE per second; how long until each breaching one is
    linked to a flag, with the rules worker in its own process."""
    with tempfile.TemporaryDirectory(prefix="cw-bench-rules-") as folder:
        log_path = Path(folder) / "worker.log"
        with log_path.open("wb") as log:
            worker = subprocess.Popen(
                [sys.executable, "-m", "analytics", "worker"],
                env={**os.environ, "DATABASE_URL": url, "ANALYTICS_POLL_INTERVAL_MS": "20"},
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            time.sleep(3.0)  # the worker's start-up: imports, migrations check
            committed, seen, readings = _publish_and_watch(url, patients, seconds)
        finally:
            worker.terminate()
            worker.wait(20)
    latencies = sorted((seen[rid] - at) * 1000 for rid, at in committed.items() if rid in seen)
    return {
        "readings": readings,
        "breaching": len(committed),
        "flagged": len(latencies),
        "p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies else None,
        "p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "rate_readings_per_s": LATENCY_RATE,
        "batch": LATENCY_BATCH,
        "seconds": seconds,
        "patients": len(patients),
        "history_days": LATENCY_HISTORY_DAYS,
        "observer_poll_ms": LATENCY_POLL_S * 1000,
    }


def _publish_and_watch(
    url: str, patients: list[str], seconds: float
) -> tuple[dict[str, float], dict[str, float], int]:
    """Commit the readings on schedule while a thread watches for their flags; the commit
    and first-seen times (monotonic) of each breaching reading, and the readings committed."""
    rng = np.random.default_rng(SEED)
    committed: dict[str, float] = {}
    seen: dict[str, float] = {}
    lock = threading.Lock()
    stop_at = [float("inf")]

    def watch() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            while time.monotonic() < stop_at[0]:
                with lock:
                    waiting = [rid for rid in committed if rid not in seen]
                if waiting:
                    rows = conn.execute(
                        "SELECT reading_id::text FROM flag_readings"
                        " WHERE reading_id = ANY(%s::uuid[])",
                        (waiting,),
                    ).fetchall()
                    at = time.monotonic()
                    for (rid,) in rows:
                        seen.setdefault(rid, at)
                elif stop_at[0] < float("inf"):
                    return  # everything committed has been seen
                time.sleep(LATENCY_POLL_S)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    batches = int(seconds * LATENCY_RATE / LATENCY_BATCH)
    started = time.monotonic()
    seq = 10_000_000
    with psycopg.connect(url) as conn:
        for batch in range(batches):
            time.sleep(max(0.0, started + batch * LATENCY_BATCH / LATENCY_RATE - time.monotonic()))
            now = datetime.now(UTC)
            rows, breaching = [], []
            for _ in range(LATENCY_BATCH):
                seq += 1
                patient = patients[int(rng.integers(len(patients)))]
                if rng.random() < 0.02:
                    stored = _stored(patient, "8480-6", float(rng.integers(185, 215)), now, seq)
                    breaching.append(stored.reading.reading_id)
                else:
                    loinc = ("8480-6", "8867-4", "59408-5")[int(rng.integers(3))]
                    usual = {"8480-6": 135.0, "8867-4": 72.0, "59408-5": 96.0}[loinc]
                    stored = _stored(patient, loinc, usual + float(rng.normal(0, 2)), now, seq)
                rows.append(stored)
            insert_readings(conn, rows)
            conn.commit()
            at = time.monotonic()
            with lock:
                committed.update(dict.fromkeys(breaching, at))
    stop_at[0] = time.monotonic() + 15.0  # then give up on what is still not flagged
    watcher.join(20.0)
    return committed, seen, batches * LATENCY_BATCH


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
    _progress(f"  commit to flag at {LATENCY_RATE:,} readings/s (seeding two weeks of history)")
    with latency_database() as url:
        population = seed_history(url)
        latency = commit_to_flag_latency(url, population, LATENCY_SECONDS * min(scale, 1.0))
    p99 = latency["p99_ms"] if latency["p99_ms"] is not None else float("inf")
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
        "commit_to_flag": latency,
        "ratios": {
            "backtest_large_to_target": round(large_s / BACKTEST_TARGET_S, 3),
            "vectorised_vs_row_by_row": round(ratio, 1),
            "commit_to_flag_p99_to_target": round(p99 / LATENCY_TARGET_MS, 3),
        },
        "goals": {
            "backtest_seconds_at_most": BACKTEST_TARGET_S,
            "vs_row_by_row_at_least": VS_ROW_BY_ROW_TARGET,
            "commit_to_flag_p99_ms_at_most": LATENCY_TARGET_MS,
        },
        "met": {
            "backtest_seconds": large_s <= BACKTEST_TARGET_S,
            "vs_row_by_row": ratio >= VS_ROW_BY_ROW_TARGET,
            "commit_to_flag_p99": p99 <= LATENCY_TARGET_MS,
        },
        "checks": {
            "row_by_row_gives_the_same_flags": bool(same_flags),
            "every_breaching_reading_flagged": latency["flagged"] == latency["breaching"],
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
    c = r["commit_to_flag"]
    verdict = "pass" if r["met"]["commit_to_flag_p99"] else "short"
    print(
        f"commit to flag at {c['rate_readings_per_s']:,} readings/s: p50 {c['p50_ms']} ms,"
        f" p99 {c['p99_ms']} ms (goal <= {LATENCY_TARGET_MS:g} ms: {verdict}), max {c['max_ms']}"
        f" ms; {c['flagged']} of {c['breaching']} breaching readings flagged"
    )


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
