"""``make demo``: the whole pipeline on this machine, with embedded services where needed.

Uses ``DATABASE_URL`` and ``MQTT_URL`` when set; otherwise starts an embedded PostgreSQL and a
broker (Mosquitto when on PATH, else amqtt) with their data under ``.carewatch/``. Then starts,
as child processes: ingest (API + consumer), the rules worker, a simulated home gateway with
about 20 patients, and the Streamlit workspace. Ctrl-C stops everything, children first.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import webbrowser
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.error import URLError
from urllib.request import Request, urlopen

from devstack import DevstackError
from devstack.ports import free_port

log = logging.getLogger("devstack.demo")

REPO = Path(__file__).resolve().parents[1]
DEMO_GATEWAY_ID = "gw-demo-01"


@dataclass
class Stack:
    """Everything the demo started, to be stopped in reverse order."""

    children: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def spawn(self, name: str, args: list[str], env: dict[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        out = (log_dir / f"{name}.log").open("ab")
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and modules
            [sys.executable, *args],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
        )
        out.close()
        self.children.append((name, proc))
        log.info("started %-9s pid %d, log %s", name, proc.pid, log_dir / f"{name}.log")

    def check_alive(self) -> str | None:
        for name, proc in self.children:
            if proc.poll() is not None:
                return f"{name} exited with status {proc.returncode}"
        return None

    def stop(self, timeout_s: float = 10.0) -> None:
        for name, proc in reversed(self.children):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", name, timeout_s)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.children.clear()


@contextlib.contextmanager
def services(data_dir: Path) -> Iterator[tuple[str, str, str]]:
    """(database URL, MQTT URL, MQTT protocol): from the environment, or embedded."""
    with contextlib.ExitStack() as stack:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            from devstack.postgres import EmbeddedPostgres

            print("Starting embedded PostgreSQL (first run downloads nothing, takes ~5 s)...")
            pg = EmbeddedPostgres(data_dir=data_dir / "pgdata")
            pg.start()
            stack.callback(pg.stop)
            database_url = pg.url
        mqtt_url = os.environ.get("MQTT_URL")
        protocol = os.environ.get("MQTT_PROTOCOL", "5")
        if not mqtt_url:
            from devstack.broker import EmbeddedBroker

            broker = EmbeddedBroker(data_dir=data_dir / "broker")
            broker.start()
            stack.callback(broker.stop)
            mqtt_url, protocol = broker.url, broker.protocol
            print(f"Started embedded MQTT broker ({broker.kind}).")
        yield database_url, mqtt_url, protocol


def _wait_http(
    url: str, timeout_s: float, stopping: threading.Event, token: str | None = None
) -> bool:
    deadline = time.monotonic() + timeout_s
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        if stopping.is_set():
            raise DemoError("stopped while starting")
        try:
            with urlopen(Request(url, headers=headers), timeout=2) as response:  # noqa: S310 - localhost
                if response.status == 200:
                    return True
        except (URLError, OSError):
            pass
        time.sleep(0.5)
    return False


@dataclass(frozen=True)
class DemoPlan:
    """Where everything of one demo run lives and listens."""

    data_dir: Path
    token: str
    api_port: int
    dashboard_port: int
    page_port: int
    patients: int
    seed: int

    @property
    def log_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def logins_file(self) -> Path:
        """The demo accounts' passwords (0600), new on every run."""
        return self.data_dir / "demo-logins"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.page_port}/"

    def environment(self, database_url: str, mqtt_url: str, protocol: str) -> dict[str, str]:
        return {
            **os.environ,
            "CAREWATCH_ENV": "development",
            "DATABASE_URL": database_url,
            "MQTT_URL": mqtt_url,
            "MQTT_PROTOCOL": protocol,
            "CAREWATCH_API_TOKEN": self.token,
            "CAREWATCH_API_URL": self.api_url,
            "GATEWAY_ID": DEMO_GATEWAY_ID,
            "GATEWAY_OUTBOX_PATH": str(self.data_dir / "gateway" / "outbox.sqlite"),
            "GATEWAY_PAGE_PORT": str(self.page_port),
            "PYTHONUNBUFFERED": "1",
        }


def start_children(
    plan: DemoPlan, stack: Stack, env: dict[str, str], stopping: threading.Event
) -> None:
    """Enrol the demo home, then start ingest, rules, the gateway and the dashboard."""
    population = ["--patients", str(plan.patients), "--seed", str(plan.seed)]
    enrolled = subprocess.run(  # noqa: S603 - our own interpreter and module
        [
            sys.executable,
            "-m",
            "ingest",
            "enroll-demo",
            "--gateway",
            DEMO_GATEWAY_ID,
            "--logins-file",
            str(plan.logins_file),
            *population,
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if enrolled.returncode != 0:
        raise DemoError(f"enrolling the demo home failed:\n{enrolled.stdout}{enrolled.stderr}")
    stack.spawn(
        "ingest",
        ["-m", "ingest", "serve", "--host", "127.0.0.1", "--port", str(plan.api_port)],
        env,
        plan.log_dir,
    )
    if not _wait_http(f"{plan.api_url}/readyz", 60, stopping):
        raise DemoError(f"ingest did not become ready; see {plan.log_dir / 'ingest.log'}")
    stack.spawn("rules", ["-m", "analytics", "worker"], env, plan.log_dir)
    stack.spawn(
        "gateway", ["-m", "gateway_agent", "run", "--simulate", *population], env, plan.log_dir
    )
    stack.spawn(
        "dashboard",
        [
            "-m",
            "streamlit",
            "run",
            str(REPO / "dashboard" / "app.py"),
            "--server.port",
            str(plan.dashboard_port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
        ],
        env,
        plan.log_dir,
    )
    if not _wait_http(f"{plan.dashboard_url}/_stcore/health", 60, stopping):
        raise DemoError(f"the dashboard did not start; see {plan.log_dir / 'dashboard.log'}")


def _write_token(plan: DemoPlan) -> Path:
    """Keep the demo's API token in a file only its owner can read, to try the API with."""
    path = plan.data_dir / "api-token"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(plan.token + "\n", encoding="utf-8")
    return path


class DemoError(RuntimeError):
    """The demo could not start; the message says where to look."""


def run(args: argparse.Namespace) -> int:
    plan = DemoPlan(
        data_dir=Path(args.data_dir).resolve(),
        token=os.environ.get("CAREWATCH_API_TOKEN") or secrets.token_urlsafe(24),
        api_port=args.api_port or free_port(),
        dashboard_port=args.dashboard_port or free_port(),
        page_port=args.page_port or free_port(),
        patients=args.patients,
        seed=args.seed,
    )
    stopping = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: terminal closed
        signal.signal(signum, lambda *_: stopping.set())
    started = time.monotonic()
    stack = Stack()
    with services(plan.data_dir) as (database_url, mqtt_url, protocol):
        try:
            start_children(
                plan, stack, plan.environment(database_url, mqtt_url, protocol), stopping
            )
            print(
                f"\nCareWatch demo is running ({time.monotonic() - started:.0f} s to start)\n"
                f"  Clinician workspace: {plan.dashboard_url}"
                f" (log in as demo.clinician or demo.lead; passwords in {plan.logins_file})\n"
                f"  A patient's page:    {plan.page_url} (the home gateway's, on localhost)\n"
                f"  API and docs:        {plan.api_url}/docs"
                f" (token in {_write_token(plan)})\n"
                f"  Logs:                {plan.log_dir}\n"
                "Press Ctrl-C to stop everything.\n",
                flush=True,
            )
            if args.open_browser and not os.environ.get("CI"):
                with contextlib.suppress(webbrowser.Error):
                    webbrowser.open(plan.dashboard_url)
            deadline = time.monotonic() + args.run_for if args.run_for else float("inf")
            while not stopping.wait(0.5) and time.monotonic() < deadline:
                problem = stack.check_alive()
                if problem:
                    raise DemoError(f"{problem}; see {plan.log_dir}")
            return 0
        except DemoError as exc:
            print(f"CareWatch demo: {exc}", file=sys.stderr)
            return 1
        finally:
            print("Stopping CareWatch demo...", flush=True)
            stack.stop()
            print("Stopped.", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack demo", description=__doc__)
    parser.add_argument("--data-dir", default=str(REPO / ".carewatch"))
    parser.add_argument("--patients", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--api-port", type=int, default=0, help="0 = a free port")
    parser.add_argument("--dashboard-port", type=int, default=8501)
    parser.add_argument(
        "--page-port", type=int, default=8765, help="the demo gateway's patient page (localhost)"
    )
    parser.add_argument("--no-browser", dest="open_browser", action="store_false")
    parser.add_argument("--run-for", type=float, default=0, help="stop after N seconds")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return run(args)
    except DevstackError as exc:  # an embedded service would not start, or was interrupted
        print(f"CareWatch demo: {exc}", file=sys.stderr)
        return 1
