"""``python -m ingest``: serve the API and consume readings, migrate, or enrol a demo home."""

from __future__ import annotations

import argparse
import logging
import sys

from pydantic import ValidationError


def _settings():  # type: ignore[no-untyped-def]
    from ingest.settings import get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        missing = ", ".join(str(e["loc"][0]) for e in exc.errors())
        sys.exit(f"ingest: invalid or missing settings ({missing}):\n{exc}")


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from ingest.api.app import create_app

    app = create_app(_settings())
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


def migrate(args: argparse.Namespace) -> int:
    from ingest import db

    settings = _settings()
    db.wait_for_database(settings.database_url, settings.db_wait_seconds)
    applied = db.migrate(settings.database_url)
    print("applied: " + (", ".join(applied) if applied else "nothing, already up to date"))
    return 0


def enroll_demo(args: argparse.Namespace) -> int:
    import psycopg

    from gateway_agent.simulator.population import build_population
    from ingest import db
    from ingest.registry import PatientRecord, enroll

    settings = _settings()
    db.wait_for_database(settings.database_url, settings.db_wait_seconds)
    db.migrate(settings.database_url)
    population = build_population(patients=args.patients, seed=args.seed)
    with psycopg.connect(settings.database_url) as conn:
        enroll(
            conn,
            gateway_id=args.gateway,
            patients=[
                PatientRecord(
                    patient_id=p.patient_id,
                    display_name=p.display_name,
                    program=p.program,
                    birth_date=p.birth_date,
                    spo2_scale=p.spo2_scale,
                    phone=p.phone,
                )
                for p in population
            ],
        )
    print(f"enrolled gateway {args.gateway} with {len(population)} simulated patients")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the API and the MQTT consumer")
    p_serve.add_argument("--host", default="0.0.0.0")  # noqa: S104 - a service in a container
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.set_defaults(func=serve)
    p_migrate = sub.add_parser("migrate", help="apply database migrations and exit")
    p_migrate.set_defaults(func=migrate)
    p_enroll = sub.add_parser("enroll-demo", help="enrol a simulated home's gateway and patients")
    p_enroll.add_argument("--gateway", required=True)
    p_enroll.add_argument("--patients", type=int, default=20)
    p_enroll.add_argument("--seed", type=int, default=7)
    p_enroll.set_defaults(func=enroll_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
