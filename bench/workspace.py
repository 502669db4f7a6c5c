"""``python -m bench.workspace``: the workspace's API under a full clinic's data.

2,000 patients and 20 million readings (90 days) are loaded into a throwaway database on
``DATABASE_URL``'s server (or an embedded one), with open flags for a tenth of the patients,
one care team holding every patient and a clinician in it (the widest team filter there can
be). Then the real API (``python -m ingest serve``, its own process) answers, one request at a
time after a warm-up, as the workspace asks:

- the triage queue: ``GET /api/v1/flags`` (and ``/flags/counts``), as the clinician;
- a patient's 90-day timeline, for random patients: hourly buckets per metric from the rollups
  (``/readings/summary?bucket=hour``: what the patient page draws over 90 days, with the
  flagged readings themselves), and for comparison daily buckets and every reading
  (``/readings?days=90``, about 10,000 per patient here: what the page drew before).

p50/p95/p99 in ms and their ratio to the 100 ms goal go to ``bench/results/workspace.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
from tqdm import tqdm

from bench.analytics import latency_database as bench_database
from ingest import accounts

RESULTS = Path(__file__).with_name("results") / "workspace.json"
GOAL_P95_MS = 100.0
PASSWORD = "bench workspace password"
#: What a home measures, per measurement: (loinc, unit, mean, spread, device type).
CUFF = (("8480-6", "mm[Hg]", 132, 14), ("8462-4", "mm[Hg]", 82, 9), ("8867-4", "/min", 72, 9))
OXIMETER = (("59408-5", "%", 96, 1.5), ("8867-4", "/min", 74, 9))
SINGLES = (("29463-7", "kg", 82, 12), ("8310-5", "Cel", 36.7, 0.3), ("41653-7", "mg/dL", 120, 25))
COLUMNS = (
    "reading_id, measured_at, patient_id, loinc, unit, value, time_source, received_at,"
    " gateway_id, device_id, device_type, measurement_id, gateway_seq, characteristic, raw_hex"
)


#: The metrics of each kind of measurement (readings of one measurement share its time and id):
#: (kind, loinc, unit, mean, spread, device type).
METRICS = [
    ("cuff", "8480-6", "mm[Hg]", 132, 14, "blood_pressure"),
    ("cuff", "8462-4", "mm[Hg]", 82, 9, "blood_pressure"),
    ("cuff", "8867-4", "/min", 72, 9, "blood_pressure"),
    ("oximeter", "59408-5", "%", 96, 1.5, "pulse_oximeter"),
    ("oximeter", "8867-4", "/min", 74, 9, "pulse_oximeter"),
    ("scale", "29463-7", "kg", 82, 12, "weight_scale"),
    ("thermometer", "8310-5", "Cel", 36.7, 0.3, "thermometer"),
    ("glucometer", "41653-7", "mg/dL", 120, 25, "glucose_meter"),
]
#: Readings per measurement on average: 45 % cuff (3), 35 % oximeter (2), 20 % single (1).
READINGS_PER_MEASUREMENT = 0.45 * 3 + 0.35 * 2 + 0.20 * 1

#: A clinic's readings made by PostgreSQL itself (no rows through Python): measurements at
#: random times over the period, each joined to its kind's metrics.
GENERATE_READINGS = f"""
WITH measurements AS (
    SELECT gp.patient_id, gp.gateway_id, n,
           now() - random() * make_interval(days => %(days)s) AS at,
           gen_random_uuid() AS measurement_id,
           CASE WHEN r < 0.45 THEN 'cuff' WHEN r < 0.80 THEN 'oximeter'
                WHEN r < 0.87 THEN 'scale' WHEN r < 0.93 THEN 'thermometer'
                ELSE 'glucometer' END AS kind
    FROM gateway_patients gp
    CROSS JOIN generate_series(1, %(measurements)s) AS n
    CROSS JOIN LATERAL (SELECT random() + 0 * n AS r) AS draw
    WHERE gp.patient_id = ANY(%(patients)s::text[])
)
INSERT INTO readings ({COLUMNS})
SELECT gen_random_uuid(), m.at, m.patient_id, x.loinc, x.unit,
       round((x.mean + x.spread * (random() + random() + random() - 1.5) * 2)::numeric, 1),
       'device', m.at + interval '20 seconds', m.gateway_id, 'C0:FF:EE:00:00:01',
       x.device_type, m.measurement_id, m.n, '2A35', '00'
FROM measurements m
JOIN (VALUES {
    ", ".join(
        f"('{k}', '{c}', '{u.replace('%', '%%')}', {a}, {b}, '{d}')" for k, c, u, a, b, d in METRICS
    )
})
    AS x(kind, loinc, unit, mean, spread, device_type) USING (kind)
"""


def load(url: str, *, patients: int, readings: int, days: int, seed: int) -> dict[str, Any]:
    """The clinic: patients on gateways (two per home), readings, flags, a team, a clinician."""
    conn_seed = (seed % 1000) / 1000  # setseed() takes [-1, 1]
    per_patient = readings // patients
    ids = [f"pt-{n:05d}" for n in range(patients)]
    started = time.perf_counter()
    with psycopg.connect(url) as conn:
        conn.execute("SELECT carewatch_ensure_reading_partitions()")
        conn.execute("SELECT setseed(%s)", (conn_seed,))
        for home in range(0, patients, 2):
            gateway = f"gw-{home // 2:05d}"
            conn.execute(
                "INSERT INTO gateways (gateway_id, state) VALUES (%s, 'online')", (gateway,)
            )
            for patient in ids[home : home + 2]:
                conn.execute(
                    "INSERT INTO patients (patient_id, display_name, program) VALUES (%s, %s, %s)",
                    (patient, f"Patient {patient[3:]}", "hypertension"),
                )
                conn.execute(
                    "INSERT INTO gateway_patients (gateway_id, patient_id) VALUES (%s, %s)",
                    (gateway, patient),
                )
        conn.commit()
        stored = 0
        # Secondary indexes are built once after the load (a bulk load's usual way): kept
        # during it, every row would update them in random order.
        conn.execute("DROP INDEX readings_patient_metric_time, readings_ingest_xid")
        conn.commit()
        measurements = round(per_patient / READINGS_PER_MEASUREMENT)
        with tqdm(total=patients, unit="patients", desc="readings") as bar:
            for first in range(0, patients, 50):
                group = ids[first : first + 50]
                inserted = conn.execute(
                    GENERATE_READINGS,
                    {"days": days, "measurements": measurements, "patients": group},
                )
                conn.commit()
                stored += inserted.rowcount
                bar.update(len(group))
        conn.execute(
            "CREATE INDEX readings_patient_metric_time ON readings"
            " (patient_id, loinc, measured_at DESC)"
        )
        conn.execute("CREATE INDEX readings_ingest_xid ON readings (ingest_xid)")
        conn.commit()
        loaded_s = time.perf_counter() - started
        flagged = ids[::10]
        for n, patient in enumerate(flagged):
            for rule, severity, loinc in (
                ("hypertensive-crisis", ("critical", "high")[n % 2], "8480-6"),
                ("spo2-below-target", ("high", "medium")[n % 2], "59408-5"),
            ):
                conn.execute(
                    "INSERT INTO flags (patient_id, rule_id, direction, loinc, title, severity,"
                    " threshold, rules_version, opened_at, last_breach_at, first_value,"
                    " last_value, worst_value) VALUES (%s, %s, 'high', %s, %s, %s, '{}',"
                    " 'bench', now() - make_interval(hours => %s), now(), 190, 190, 190)",
                    (patient, rule, loinc, rule.replace("-", " ").capitalize(), severity, n % 48),
                )
        accounts.create_team(conn, team_id="everyone", name="Every patient")
        accounts.add_patients(conn, team_id="everyone", patient_ids=ids)
        accounts.create_user(
            conn,
            username="bench.clinician",
            display_name="Bench Clinician",
            role="clinician",
            password=PASSWORD,
            created_by="bench",
        )
        accounts.add_members(conn, team_id="everyone", usernames=["bench.clinician"])
        conn.commit()
        started = time.perf_counter()
        conn.execute("SELECT * FROM carewatch_refresh_rollups(false)")
        conn.commit()
        rollup_s = time.perf_counter() - started
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "patients": patients,
        "readings": stored,
        "days": days,
        "open_flags": 2 * len(flagged),
        "load_seconds": round(loaded_s, 1),
        "rollup_seconds": round(rollup_s, 1),
        "database_gb": round((size[0] if size else 0) / 1e9, 2),
        "patient_ids": ids,
    }


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def api_server(url: str) -> Iterator[str]:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "MQTT_URL": "mqtt://127.0.0.1:1",
        "INGEST_CONSUME": "false",
        "CAREWATCH_ENV": "test",
        "CAREWATCH_API_TOKEN": uuid.uuid4().hex,
    }
    server = subprocess.Popen(
        [sys.executable, "-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=15)


def latencies(client: httpx.Client, paths: list[str], *, warmup: int = 10) -> dict[str, float]:
    for path in paths[:warmup]:
        client.get(path).raise_for_status()
    took = []
    size = 0
    for path in paths:
        started = time.perf_counter()
        answer = client.get(path)
        took.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
        size += len(answer.content)
    took.sort()
    return {
        "requests": len(took),
        "p50_ms": round(statistics.median(took), 1),
        "p95_ms": round(took[int(0.95 * (len(took) - 1))], 1),
        "p99_ms": round(took[int(0.99 * (len(took) - 1))], 1),
        "mean_kb": round(size / len(took) / 1024, 1),
    }


def run(*, patients: int, readings: int, days: int, requests: int, seed: int) -> dict[str, Any]:
    with bench_database() as url:
        clinic = load(url, patients=patients, readings=readings, days=days, seed=seed)
        ids = clinic.pop("patient_ids")
        with api_server(url) as base:
            token = httpx.post(
                f"{base}/api/v1/auth/login",
                json={"username": "bench.clinician", "password": PASSWORD},
                timeout=30,
            ).json()["token"]
            picks = random.Random(seed).choices(ids, k=requests)
            with httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
            ) as client:
                since = (datetime.now(UTC) - timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
                results = {
                    "triage_queue": latencies(client, ["/api/v1/flags"] * requests),
                    "triage_counts": latencies(client, ["/api/v1/flags/counts"] * requests),
                    "timeline_90_days_hourly": latencies(
                        client,
                        [
                            f"/api/v1/patients/{p}/readings/summary?bucket=hour&since={since}"
                            for p in picks
                        ],
                    ),
                    "timeline_90_days_daily": latencies(
                        client,
                        [
                            f"/api/v1/patients/{p}/readings/summary?bucket=day&since={since}"
                            for p in picks
                        ],
                    ),
                    "raw_readings_90_days": latencies(
                        client,
                        [f"/api/v1/patients/{p}/readings?days=90" for p in picks[: requests // 4]],
                        warmup=3,
                    ),
                }
    results["ratios"] = {
        name: round(results[name]["p95_ms"] / GOAL_P95_MS, 2)
        for name in (
            "triage_queue",
            "triage_counts",
            "timeline_90_days_hourly",
            "timeline_90_days_daily",
            "raw_readings_90_days",
        )
    }
    results["met"] = {name: ratio <= 1.0 for name, ratio in results["ratios"].items()}
    results["goal_p95_ms"] = GOAL_P95_MS
    results["clinic"] = clinic
    results["setup"] = {"cpus": os.cpu_count(), "seed": seed, "load_average": os.getloadavg()}
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.workspace", description=__doc__)
    parser.add_argument("--patients", type=int, default=2_000)
    parser.add_argument("--readings", type=int, default=20_000_000)
    parser.add_argument("--days", type=int, default=90)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    results = run(
        patients=args.patients,
        readings=args.readings,
        days=args.days,
        requests=args.requests,
        seed=args.seed,
    )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    for name, ratio in results["ratios"].items():
        figures = results[name]
        note = f" = {ratio:.2f} x the 100 ms goal"
        print(
            f"{name:26s} p50 {figures['p50_ms']:7.1f} ms  p95 {figures['p95_ms']:7.1f} ms"
            f"  p99 {figures['p99_ms']:7.1f} ms  {figures['mean_kb']:8.1f} KB{note}"
        )
    clinic = results["clinic"]
    print(
        f"clinic: {clinic['patients']:,} patients, {clinic['readings']:,} readings over "
        f"{clinic['days']} days ({clinic['database_gb']} GB), loaded in {clinic['load_seconds']} s"
    )
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
