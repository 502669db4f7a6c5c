"""The fault tier: the real processes (gateway, ingest workers, Mosquitto, PostgreSQL) with
faults injected into them, each test ending in the same delivery check.

Every test here stops, kills or restarts a service, so none of them touches the shared
PostgreSQL or broker in a way that could be seen by another test:

- the broker is always this tier's own Mosquitto (:class:`FaultBroker`), on its own port, with
  its persistence in its own folder, configured from the deployment's own
  ``deploy/mosquitto/mosquitto.conf`` (queues, persistence, autosave, in-flight window: the
  settings under test) with only the listener, the paths and the logins adapted;
- each test gets a fresh database, on the session's PostgreSQL server (``postgres_server_url``:
  the shared one in CI, which is never stopped) or, for the database outage, on its own
  embedded PostgreSQL (:func:`own_postgres`), the only server that test stops;
- readings come from the real gateway process (``python -m gateway_agent run --simulate``),
  its outbox prefilled like a home that was offline, so that a burst of 10,000 readings is
  ready in a second; the outbox is also the account of what was sent: its ``next_seq`` counts
  every reading it ever accepted, its ``outbox`` table what ingest has not acknowledged yet.

The pass mark of every test (:meth:`Deployment.assert_delivered`): rows = distinct readings =
readings accepted by the gateway, nothing left unacknowledged, and each gateway's sequence
numbers stored without a gap from 1 to the last.

Service folders come from :func:`tempfile.mkdtemp`, not pytest's ``tmp_path`` (0700 under root,
which the embedded PostgreSQL, running as its own account when we are root, cannot enter).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
import psycopg
import pytest

from devstack.broker import find_mosquitto, mqtt_handshake
from devstack.ports import free_port
from tests.conftest import REPO

DEPLOY_MOSQUITTO_CONF = REPO / "deploy" / "mosquitto" / "mosquitto.conf"

#: Directives of the deployment's mosquitto.conf this tier leaves out (see mosquitto_config;
#: everything else, persistence, autosave, queue limits, in-flight window, is used as written).
_CONF_DROPPED = ("password_file", "acl_file")  # logins are the broker security tests' business

#: Inherited variables that would change what the processes under test do.
_OWN_PREFIXES = ("CAREWATCH_", "INGEST_", "GATEWAY_", "MQTT_", "DATABASE_URL", "RULES_FILE")

#: The seed of the simulated population, as ``enroll-demo`` and ``gateway run`` default to.
SEED = 7


def wait_until(
    predicate: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    interval_s: float = 0.1,
    diagnose: Callable[[], str] | None = None,
) -> float:
    """Poll ``predicate`` until it holds; return the seconds it took. Fail after ``timeout_s``."""
    started = time.monotonic()
    while True:
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            detail = f"\n{diagnose()}" if diagnose else ""
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}{detail}")
        time.sleep(interval_s)


# -- the broker ----------------------------------------------------------------------------


def mosquitto_config(port: int, data_dir: Path) -> str:
    """The deployment's mosquitto.conf for a test broker on 127.0.0.1:``port``.

    Changed: the listener (own port, loopback only), the persistence folder, anonymous logins
    instead of the password file and ACL, and, when we are root, ``user root`` (Mosquitto would
    otherwise switch to an account that cannot write the private temporary folder). A directive
    this expects and does not find fails the test: the tier must follow the real file.
    """
    text = DEPLOY_MOSQUITTO_CONF.read_text(encoding="utf-8")
    replaced = {
        "allow_anonymous": "allow_anonymous true",
        "persistence_location": f"persistence_location {data_dir}/",
        "listener": f"listener {port} 127.0.0.1",
    }
    lines: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        key = line.split(None, 1)[0] if line.strip() and not line.lstrip().startswith("#") else ""
        if key in replaced:
            lines.append(replaced[key])
        elif key in _CONF_DROPPED:
            lines.append(f"# (fault tier) {line}")
        else:
            lines.append(line)
        seen.add(key)
    missing = (set(replaced) | set(_CONF_DROPPED)) - seen
    assert not missing, f"deploy/mosquitto/mosquitto.conf no longer has {sorted(missing)}"
    if os.geteuid() == 0:
        lines += ["", "# (fault tier) started as root in a private temporary folder", "user root"]
    return "\n".join(lines) + "\n"


def conf_value(name: str) -> str:
    """A directive's value in the deployment's mosquitto.conf (the last one wins)."""
    values = re.findall(
        rf"^\s*{re.escape(name)}\s+(\S+)", DEPLOY_MOSQUITTO_CONF.read_text(), flags=re.MULTILINE
    )
    assert values, f"deploy/mosquitto/mosquitto.conf sets no {name}"
    return str(values[-1])


class FaultBroker:
    """This tier's own Mosquitto: started, killed with SIGKILL and restarted on one port."""

    def __init__(self, folder: Path) -> None:
        mosquitto = find_mosquitto()
        if mosquitto is None:
            pytest.skip("mosquitto is not installed: the fault tier needs a real Mosquitto")
        self.binary = mosquitto
        self.folder = folder
        self.port = free_port()
        self.data_dir = folder / "data"
        self.data_dir.mkdir()
        self.config_file = folder / "mosquitto.conf"
        self.config_file.write_text(mosquitto_config(self.port, self.data_dir))
        self.log_file = folder / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 15.0) -> float:
        """Start (or restart) it on its port; return the seconds until it answered a CONNECT."""
        assert self.proc is None, "the broker is running"
        started = time.monotonic()
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self.config_file)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.starts += 1
        while (error := mqtt_handshake(self.port, timeout=0.5)) is not None:
            if self.proc.poll() is not None:
                self.proc = None
                pytest.fail(f"mosquitto exited while starting ({error}):\n{self.log()[-3000:]}")
            if time.monotonic() - started > timeout_s:
                pytest.fail(f"mosquitto did not answer within {timeout_s:.0f} s: {error}")
            time.sleep(0.05)
        return time.monotonic() - started

    def kill(self) -> None:
        """``kill -9``: no goodbye, no final save of its persistence file."""
        assert self.proc is not None, "the broker is not running"
        self.proc.kill()
        self.proc.wait(10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@pytest.fixture
def fault_broker() -> Iterator[FaultBroker]:
    """A running Mosquitto of this tier's own, stopped and deleted after the test."""
    folder = Path(tempfile.mkdtemp(prefix="carewatch-faults-broker-"))
    broker = FaultBroker(folder)
    try:
        broker.start()
        yield broker
    finally:
        broker.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- the databases -------------------------------------------------------------------------


@pytest.fixture
def fault_database(postgres_server_url: str) -> Iterator[str]:
    """A fresh, migrated database on the session's PostgreSQL server; dropped afterwards."""
    from ingest.db import migrate

    name = f"carewatch_faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(postgres_server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(postgres_server_url)._replace(path=f"/{name}"))
    try:
        migrate(url)
        yield url
    finally:
        with psycopg.connect(postgres_server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """An embedded PostgreSQL of this test's own on a fixed port, for a test that stops it.

    As root it runs as its own unprivileged account (see devstack.postgres), hence a folder
    from mkdtemp. Its database ``carewatch`` is migrated.
    """
    from devstack.postgres import EmbeddedPostgres
    from ingest.db import migrate

    folder = Path(tempfile.mkdtemp(prefix="carewatch-faults-pg-"))
    server = EmbeddedPostgres(data_dir=folder / "pgdata", port=free_port())
    try:
        server.start()
        migrate(server.url)
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# -- the deployment --------------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    """What the gateway accepted against what the database holds."""

    accepted: int  # readings the gateway ever put in its outbox
    pending: int  # still in its outbox: not acknowledged by ingest
    rows: int  # rows in the readings table
    distinct: int  # distinct reading ids among them
    gaps: int  # breaks (or repeats) in a gateway's sequence numbers among the rows
    first_seq: int | None
    last_seq: int | None

    def __str__(self) -> str:
        return (
            f"accepted={self.accepted} pending={self.pending} rows={self.rows}"
            f" distinct={self.distinct} gaps={self.gaps} seq={self.first_seq}..{self.last_seq}"
        )


@dataclass
class Deployment:
    """One CareWatch deployment under test: a gateway, ingest workers, a broker, a database."""

    workdir: Path
    database_url: str
    broker: FaultBroker
    gateway_id: str = field(default_factory=lambda: f"gw-faults-{uuid.uuid4().hex[:8]}")
    token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    api_ports: dict[str, int] = field(default_factory=dict)
    _clients: dict[str, httpx.Client] = field(default_factory=dict)

    @property
    def outbox_path(self) -> Path:
        return self.workdir / "outbox.sqlite"

    # -- set-up --------------------------------------------------------------------------

    def enroll(self, patients: int) -> list[str]:
        """Enrol the gateway and the simulated patients it serves (``enroll-demo``, in-process)."""
        from gateway_agent.simulator.population import build_population
        from ingest.registry import PatientRecord, enroll

        population = build_population(patients=patients, seed=SEED)
        with psycopg.connect(self.database_url) as conn:
            enroll(
                conn,
                gateway_id=self.gateway_id,
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
        return [p.patient_id for p in population]

    def prefill(self, readings: int, patients: list[str]) -> None:
        """Put ``readings`` readings in the gateway's outbox, as a home offline for an hour
        would have them: numbered 1.. by the outbox, unsent."""
        from carewatch_contract.messages import TimeSource
        from gateway_agent.outbox import Outbox
        from tests.unit.test_contract import a_reading

        now = datetime.now(UTC)
        outbox = Outbox(self.outbox_path)
        try:
            for start in range(0, readings, 500):
                outbox.add(
                    [
                        a_reading(
                            patient_id=patients[i % len(patients)],
                            received_at=now - timedelta(hours=1) * (1 - i / readings),
                            measured_at=now
                            - timedelta(hours=1) * (1 - i / readings)
                            - timedelta(seconds=30),
                            device_time=None,
                            time_source=TimeSource.GATEWAY,
                        )
                        for i in range(start, min(start + 500, readings))
                    ]
                )
        finally:
            outbox.close()

    def env(self, **extra: str) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(_OWN_PREFIXES)}
        return {
            **base,
            "CAREWATCH_ENV": "test",
            "CAREWATCH_API_TOKEN": self.token,
            "DATABASE_URL": self.database_url,
            "MQTT_URL": self.broker.url,
            "MQTT_PROTOCOL": "5",
            "GATEWAY_ID": self.gateway_id,
            "GATEWAY_OUTBOX_PATH": str(self.outbox_path),
            "GATEWAY_PAGE_PORT": "0",
            "PYTHONUNBUFFERED": "1",
            **extra,
        }

    # -- processes -----------------------------------------------------------------------

    def start(
        self,
        name: str,
        args: list[str],
        env: dict[str, str],
        *,
        stdin: int = subprocess.DEVNULL,
        stdout: int | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start ``python <args>`` in its own process group, its output in ``<name>.log``."""
        assert name not in self.processes, f"{name} is already running"
        with (self.workdir / f"{name}.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO,
                env=env,
                stdin=stdin,
                stdout=log if stdout is None else stdout,
                stderr=log,
                start_new_session=True,
            )
        self.processes[name] = proc
        return proc

    def start_gateway(self, patients: int, **env: str) -> None:
        """The real gateway, simulated devices taking no live readings: it sends its outbox."""
        self.start(
            "gateway",
            [
                "-m", "gateway_agent", "run", "--simulate", "--patients", str(patients),
                "--seed", str(SEED), "--history-days", "0", "--live-readings", "0",
            ],
            self.env(**env),
        )  # fmt: skip

    def ingest_env(self, client_id: str, **env: str) -> dict[str, str]:
        return self.env(INGEST_CLIENT_ID=client_id, **env)

    def start_ingest(
        self, name: str = "ingest", *, client_id: str | None = None, ready: bool = True, **env: str
    ) -> None:
        """``python -m ingest serve`` on a port of its own; by default wait for /readyz."""
        port = self.api_ports.setdefault(name, free_port())
        self.start(
            name,
            ["-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(port)],
            self.ingest_env(client_id or f"ingest-{self.gateway_id}", **env),
        )
        if ready:
            self.wait_ready(name)

    def ingest_launcher(self, name: str, *, client_id: str, **env: str) -> IngestLauncher:
        """A launcher of ingest processes that share one client id (see warm_ingest)."""
        proc = self.start(
            name,
            ["-m", "tests.faults.warm_ingest"],
            self.ingest_env(client_id, OPENBLAS_NUM_THREADS="1", **env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        return IngestLauncher(self, proc)

    def wait_ready(self, name: str, timeout_s: float = 60) -> float:
        def ready() -> bool:
            proc = self.processes[name]
            assert proc.poll() is None, f"{name} exited ({proc.returncode}):\n{self.tail(name)}"
            return self.readyz(name) == 200

        return wait_until(ready, timeout_s, f"{name} /readyz", diagnose=self.tails)

    def kill(self, name: str, sig: int = signal.SIGKILL, timeout_s: float = 20) -> int:
        """Signal the process's group (it and what it forked) and reap it; SIGKILL if it is
        still there after ``timeout_s``. Return its exit code."""
        proc = self.processes.pop(name)
        try:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                return proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                return proc.wait(10)
        finally:
            for pipe in (proc.stdin, proc.stdout):
                if pipe is not None:
                    pipe.close()

    def stop_all(self) -> None:
        for name in list(self.processes):
            self.kill(name, signal.SIGTERM)
        for client in self._clients.values():
            client.close()

    def tail(self, name: str, chars: int = 2500) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def tails(self) -> str:
        names = sorted(p.stem for p in self.workdir.glob("*.log"))
        logs = [f"--- {name}.log\n{self.tail(name, 1500)}" for name in names]
        return "\n".join([*logs, f"--- mosquitto.log\n{self.broker.log()[-1500:]}"])

    # -- observations --------------------------------------------------------------------

    def api(self, name: str) -> httpx.Client:
        if name not in self._clients:
            self._clients[name] = httpx.Client(
                base_url=f"http://127.0.0.1:{self.api_ports[name]}",
                headers={"Authorization": f"Bearer {self.token}"},
                timeout=10,
            )
        return self._clients[name]

    def readyz(self, name: str, timeout_s: float = 10) -> int | None:
        """/readyz's status code, None when nothing answers."""
        try:
            return self.api(name).get("/readyz", timeout=timeout_s).status_code
        except httpx.TransportError:
            return None

    def api_status(self, name: str, path: str, timeout_s: float = 10) -> int | None:
        """The status code of an authorised GET, None when nothing answers."""
        try:
            return self.api(name).get(path, timeout=timeout_s).status_code
        except httpx.TransportError:
            return None

    def metrics(self, name: str) -> dict[str, float]:
        """The worker's /metrics, without the ``carewatch_ingest_`` prefix and ``_total``."""
        text = self.api(name).get("/metrics").text
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                key = key.removeprefix("carewatch_ingest_").removesuffix("_total")
                values[key] = float(value)
        return values

    def outbox_value(self, sql: str) -> int:
        with sqlite3.connect(self.outbox_path, timeout=10) as conn:
            (value,) = conn.execute(sql).fetchone()
        return int(value)

    def db_value(self, sql: str) -> Any:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            row = conn.execute(sql).fetchone()
        assert row is not None
        return row[0]

    def rows(self) -> int:
        return int(self.db_value("SELECT count(*) FROM readings"))

    def pending(self) -> int:
        return self.outbox_value("SELECT count(*) FROM outbox")

    def delivery(self) -> Delivery:
        with psycopg.connect(self.database_url, connect_timeout=5) as conn:
            row = conn.execute(
                "SELECT count(*), count(DISTINCT reading_id), min(gateway_seq), max(gateway_seq),"
                " (SELECT count(*) FROM (SELECT gateway_seq - lag(gateway_seq) OVER"
                "   (PARTITION BY gateway_id ORDER BY gateway_seq) AS step FROM readings) s"
                "   WHERE step <> 1)"
                " FROM readings"
            ).fetchone()
        assert row is not None
        rows, distinct, first_seq, last_seq, gaps = row
        return Delivery(
            accepted=self.outbox_value("SELECT value - 1 FROM counters WHERE name = 'next_seq'"),
            pending=self.pending(),
            rows=rows,
            distinct=distinct,
            gaps=gaps,
            first_seq=first_seq,
            last_seq=last_seq,
        )

    def drained(self) -> bool:
        """The outbox is empty and every reading it ever accepted is in the database."""
        counts = self.delivery()
        return counts.pending == 0 and counts.rows == counts.accepted

    def wait_drained(self, timeout_s: float) -> float:
        return wait_until(
            self.drained, timeout_s, "the outbox to drain into the database", interval_s=0.25,
            diagnose=lambda: f"{self.delivery()}\n{self.tails()}",
        )  # fmt: skip

    def assert_delivered(self, expected: int) -> Delivery:
        """The pass mark: rows = distinct = accepted = ``expected``, nothing pending, and the
        gateway's sequence stored whole, 1 to the last."""
        counts = self.delivery()
        assert counts.accepted == expected, counts
        assert counts.rows == counts.distinct == counts.accepted, counts
        assert counts.pending == 0, counts
        assert counts.gaps == 0, counts
        assert (counts.first_seq, counts.last_seq) == (1, counts.accepted), counts
        return counts


class IngestLauncher:
    """Runs ingest processes one after the other through ``tests.faults.warm_ingest``."""

    def __init__(self, deployment: Deployment, proc: subprocess.Popen[bytes]) -> None:
        self._deployment = deployment
        self._proc = proc

    def _line(self, timeout_s: float) -> list[str]:
        assert self._proc.stdout is not None
        ready, _, _ = select.select([self._proc.stdout], [], [], timeout_s)
        line = self._proc.stdout.readline().decode() if ready else ""
        if not line:
            return []
        return line.split()

    def run(self, name: str, timeout_s: float) -> int:
        """Run one ingest process, ``name``, until it ends; return its exit code. Its API
        listens on a port of its own and its output goes to ``<name>.log``."""
        port = self._deployment.api_ports.setdefault(name, free_port())
        log = self._deployment.workdir / f"{name}.log"
        assert self._proc.stdin is not None
        self._proc.stdin.write(f"run {log} serve --host 127.0.0.1 --port {port}\n".encode())
        self._proc.stdin.flush()
        started = self._line(60)  # the first waits for the launcher's imports
        assert started[:1] == ["pid"], f"the launcher did not start {name}: {started}"
        ended = self._line(timeout_s)
        if not ended:
            os.kill(int(started[1]), signal.SIGKILL)
            raise AssertionError(
                f"{name} still ran after {timeout_s:.0f} s\n{self._deployment.tails()}"
            )
        assert ended[:2] == ["exit", started[1]], ended
        return int(ended[2])


@pytest.fixture
def open_deployment(
    fault_broker: FaultBroker, tmp_path: Path
) -> Iterator[Callable[[str], Deployment]]:
    """Make a deployment on a given database; its processes are stopped after the test."""
    made: list[Deployment] = []

    def make(database_url: str) -> Deployment:
        deployment = Deployment(workdir=tmp_path, database_url=database_url, broker=fault_broker)
        made.append(deployment)
        return deployment

    try:
        yield make
    finally:
        for deployment in made:
            deployment.stop_all()


@pytest.fixture
def deployment(fault_database: str, open_deployment: Callable[[str], Deployment]) -> Deployment:
    """A deployment on a fresh database of the session's PostgreSQL server."""
    return open_deployment(fault_database)
