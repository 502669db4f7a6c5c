"""Liveness, readiness and metrics: for operators and orchestrators, no patient data."""

from __future__ import annotations

import psycopg
from fastapi import APIRouter, Request, Response, status
from fastapi.responses import PlainTextResponse

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/readyz")
def readyz(request: Request, response: Response) -> dict[str, object]:
    """The database answers and, when this worker consumes, the broker is connected."""
    checks: dict[str, bool] = {}
    # A connection of its own, not the API pool's: the probe answers for the database, and
    # a pool still waiting out its reconnection backoff must not make an orchestrator
    # restart a worker whose writer already stores again.
    try:
        with psycopg.connect(request.app.state.settings.database_url, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        checks["database"] = True
    except psycopg.Error:
        checks["database"] = False
    consumer = request.app.state.consumer
    if consumer is not None:
        checks["broker"] = consumer.connected
        checks["writer"] = consumer.writer_alive
    ready = all(checks.values())
    if not ready:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    return {"ready": ready, "checks": checks}


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(request: Request) -> str:
    """Prometheus text format."""
    return request.app.state.counters.render()
