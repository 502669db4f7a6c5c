"""Process-level fixtures: the real services started as the demo and compose start them."""

from __future__ import annotations

import os
import secrets
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from devstack.ports import free_port
from ingest.db import migrate
from tests.conftest import REPO, BrokerInfo


def wait_until(
    predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


@dataclass(frozen=True)
class DeliveryCounts:
    accepted: int  # readings the gateway ever put in its outbox
    pending: int  # still in the outbox, unacknowledged
    rows: int  # rows in the readings table
    distinct: int  # distinct reading ids in it
    gaps: int  # breaks in the gateway's sequence numbers among the rows


@dataclass
class Pipeline:
    """One isolated CareWatch deployment: its own database, ids, ports and processes."""

    env: dict[str, str]
    workdir: Path
    database_url: str
    api_port: int
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _api: httpx.Client | None = None

    @property
    def api(self) -> httpx.Client:
        if self._api is None:
            self._api = httpx.Client(
                base_url=f"http://127.0.0.1:{self.api_port}",
                headers={"Authorization": f"Bearer {self.env['CAREWATCH_API_TOKEN']}"},
                timeout=10,
            )
        return self._api

    @property
    def gateway_id(self) -> str:
        return self.env["GATEWAY_ID"]

    @property
    def outbox_path(self) -> Path:
        return Path(self.env["GATEWAY_OUTBOX_PATH"])

    def start(self, name: str, *args: str, **env: str) -> subprocess.Popen[bytes]:
        log = (self.workdir / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=REPO,
            env={**self.env, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes[name] = proc
        return proc

    def start_ingest(self, **env: str) -> None:
        self.start(
            "ingest",
            "-m",
            "ingest",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.api_port),
            **env,
        )
        wait_until(self.ready, 60, "ingest /readyz")

    def ready(self) -> bool:
        try:
            return self.api.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.processes.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(20)

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def outbox(self, sql: str) -> int:
        with sqlite3.connect(self.outbox_path, timeout=10) as conn:
            (value,) = conn.execute(sql).fetchone()
        return int(value)

    def delivery_counts(self) -> DeliveryCounts:
        """What the gateway accepted against what the database holds."""
        return DeliveryCounts(
            accepted=self.outbox("SELECT value - 1 FROM counters WHERE name = 'next_seq'"),
            pending=self.outbox("SELECT count(*) FROM outbox"),
            rows=int(self.db_value("SELECT count(*) FROM readings")),
            distinct=int(self.db_value("SELECT count(DISTINCT reading_id) FROM readings")),
            gaps=int(
                self.db_value(
                    "SELECT count(*) FROM (SELECT gateway_seq - lag(gateway_seq)"
                    " OVER (ORDER BY gateway_seq) AS step FROM readings) s WHERE step <> 1"
                )
            ),
        )

    def drained(self) -> bool:
        """The outbox is empty and every reading it ever accepted is in the database."""
        counts = self.delivery_counts()
        return counts.pending == 0 and counts.accepted == counts.rows

    def db_value(self, sql: str) -> Any:
        with psycopg.connect(self.database_url) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]

    def db_values(self, sql: str, *params: object) -> list[Any]:
        """The first column of every row."""
        with psycopg.connect(self.database_url) as conn:
            return [row[0] for row in conn.execute(sql, params)]

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        if self._api is not None:
            self._api.close()


def _with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture
def pipeline(postgres_server_url: str, broker: BrokerInfo, tmp_path: Path) -> Iterator[Pipeline]:
    suffix = uuid.uuid4().hex[:8]
    name = f"carewatch_e2e_{suffix}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    database_url = _with_database(postgres_server_url, name)
    migrate(database_url)
    env = {
        **os.environ,
        "CAREWATCH_ENV": "test",
        "DATABASE_URL": database_url,
        "MQTT_URL": broker.url,
        "MQTT_PROTOCOL": broker.protocol,
        "CAREWATCH_API_TOKEN": secrets.token_urlsafe(16),
        "INGEST_CLIENT_ID": f"ingest-e2e-{suffix}",
        "GATEWAY_ID": f"gw-e2e-{suffix}",
        "GATEWAY_OUTBOX_PATH": str(tmp_path / "outbox.sqlite"),
        "GATEWAY_RESEND_AFTER_S": "5",
        "ANALYTICS_POLL_INTERVAL_MS": "200",
        "PYTHONUNBUFFERED": "1",
    }
    line = Pipeline(env=env, workdir=tmp_path, database_url=database_url, api_port=free_port())
    try:
        yield line
    finally:
        line.stop_all()
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
