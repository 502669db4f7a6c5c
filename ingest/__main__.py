"""``python -m ingest``: serve the API and consume readings, migrate, or enrol a demo home."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import TYPE_CHECKING

from pydantic import ValidationError

if TYPE_CHECKING:
    import psycopg


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
        if args.logins_file:
            _demo_accounts(conn, [p.patient_id for p in population], args.logins_file)
    print(f"enrolled gateway {args.gateway} with {len(population)} simulated patients")
    return 0


#: The demo's care team and accounts (role per user name); passwords are new on every run.
DEMO_TEAM = "demo-team"
DEMO_USERS = {"demo.clinician": "clinician", "demo.nurse": "nurse", "demo.lead": "lead"}


def _demo_accounts(conn: psycopg.Connection, patient_ids: list[str], logins_file: str) -> None:
    """A care team with the demo's patients and one account per role; their passwords go
    to ``logins_file`` (0600), never to the console or a log."""
    import secrets
    from pathlib import Path

    from ingest import accounts

    if conn.execute("SELECT 1 FROM care_teams WHERE team_id = %s", (DEMO_TEAM,)).fetchone() is None:
        accounts.create_team(conn, team_id=DEMO_TEAM, name="Demo care team")
    accounts.add_patients(conn, team_id=DEMO_TEAM, patient_ids=patient_ids)
    lines = []
    for username, role in DEMO_USERS.items():
        password = secrets.token_urlsafe(12)
        if not accounts.set_password(conn, username=username, password=password):
            accounts.create_user(
                conn,
                username=username,
                display_name=username.replace(".", " ").title(),
                role=role,
                password=password,
                created_by="make demo",
            )
        lines.append(f"{username} ({role}): {password}")
    accounts.add_members(conn, team_id=DEMO_TEAM, usernames=list(DEMO_USERS))
    path = Path(logins_file)
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _new_password(env_name: str) -> str:
    """From ``env_name`` when set (automation), else asked twice on the terminal."""
    import getpass
    import os

    given = os.environ.get(env_name)
    if given:
        return given
    if not sys.stdin.isatty():
        sys.exit(f"ingest: no terminal to ask for the password: set {env_name}")
    first = getpass.getpass("password (at least 12 characters): ")
    if getpass.getpass("again: ") != first:
        sys.exit("ingest: the two passwords differ; nothing was created")
    return first


def create_admin(args: argparse.Namespace) -> int:
    """The first admin account (also any later one), from the command line."""
    import psycopg

    from ingest import accounts, db

    settings = _settings()
    db.wait_for_database(settings.database_url, settings.db_wait_seconds)
    db.migrate(settings.database_url)
    password = _new_password("CAREWATCH_ADMIN_PASSWORD")
    with psycopg.connect(settings.database_url) as conn:
        try:
            accounts.create_user(
                conn,
                username=args.username,
                display_name=args.display_name or args.username,
                role="admin",
                password=password,
                created_by="python -m ingest create-admin",
            )
        except accounts.AccountError as exc:
            sys.exit(f"ingest: {exc}")
    print(f"created admin {args.username!r}; log in to the workspace with it")
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
    p_enroll.add_argument(
        "--logins-file", help="also create demo accounts; their passwords go to this file"
    )
    p_enroll.set_defaults(func=enroll_demo)
    p_admin = sub.add_parser(
        "create-admin",
        help="create an admin account (password from CAREWATCH_ADMIN_PASSWORD or asked)",
    )
    p_admin.add_argument("--username", required=True)
    p_admin.add_argument("--display-name")
    p_admin.set_defaults(func=create_admin)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
