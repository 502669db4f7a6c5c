"""The ingest service as a FastAPI app: start-up in order, then serve and consume.

Start-up: bounded wait for the database, migrations, partitions, then the pool, the MQTT
consumer and the routes. Shutdown: the consumer finishes its batch and disconnects.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
from fastapi import FastAPI

from analytics.rules import load_rules
from analytics.threshold_sets import load_program_templates
from analytics.threshold_store import seed_program_templates
from ingest import db
from ingest.api.routes import (
    accounts,
    auth,
    billing,
    fhir,
    flags,
    follow_ups,
    health,
    operations,
    outreach,
    patients,
    rules,
    snoozes,
    thresholds,
)
from ingest.consumer import ReadingConsumer
from ingest.counters import IngestCounters
from ingest.message_dispatch import MessageDispatcher
from ingest.settings import IngestSettings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: IngestSettings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        db.wait_for_database(settings.database_url, settings.db_wait_seconds)
        applied = db.migrate(settings.database_url)
        if applied:
            log.info("migrations applied: %s", ", ".join(applied))
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            db.ensure_partitions(conn)
        app.state.settings = settings
        app.state.rules = load_rules(Path(settings.rules_file) if settings.rules_file else None)
        templates = load_program_templates(app.state.rules)
        with psycopg.connect(settings.database_url) as conn:
            seeded = seed_program_templates(conn, templates)
        if seeded:
            log.info("program templates stored as first versions: %s", ", ".join(seeded))
        app.state.counters = IngestCounters()
        app.state.pool = db.make_pool(
            settings.database_url, name="ingest-api", role=settings.api_db_role
        )
        app.state.consumer = None
        app.state.dispatcher = None
        if settings.consume:
            app.state.consumer = ReadingConsumer(settings, app.state.counters)
            app.state.consumer.start()
            app.state.dispatcher = MessageDispatcher(
                settings, interval_s=settings.message_interval_s
            )
            app.state.dispatcher.start()
        log.info("ingest ready")
        try:
            yield
        finally:
            if app.state.dispatcher is not None:
                app.state.dispatcher.stop()
            if app.state.consumer is not None:
                app.state.consumer.stop()
            app.state.pool.close()

    app = FastAPI(
        title="CareWatch API",
        version="1",
        summary=(
            "Readings, flags, patients and follow-up requests of the CareWatch remote "
            "monitoring pipeline."
        ),
        lifespan=lifespan,
    )
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(accounts.router)
    app.include_router(patients.router)
    app.include_router(flags.router)
    app.include_router(fhir.router)
    app.include_router(follow_ups.router)
    app.include_router(outreach.router)
    app.include_router(billing.router)
    app.include_router(operations.router)
    app.include_router(rules.router)
    app.include_router(snoozes.router)
    app.include_router(thresholds.router)
    return app
