"""A smoke test of `make demo` on a machine with nothing running: embedded PostgreSQL and
broker, ingest, rules, a simulated gateway and the dashboard; flags within a minute; Ctrl-C
leaves no process behind."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.ports import free_port
from tests.conftest import REPO

pytestmark = [pytest.mark.embedded, pytest.mark.slow]


def descendants(pid: int) -> set[int]:
    """Every process below ``pid`` (children in their own sessions included)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found: set[int] = set()
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="carewatch-demo-"))  # not tmp_path: see conftest
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_make_demo_shows_flags_within_a_minute_and_stops_cleanly(demo_dir: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "MQTT_URL")}
    env["CAREWATCH_API_TOKEN"] = token = secrets.token_urlsafe(16)
    api_port, dashboard_port, page_port = free_port(), free_port(), free_port()
    started = time.monotonic()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack",
            "demo",
            "--no-browser",
            "--data-dir",
            str(demo_dir),
            "--api-port",
            str(api_port),
            "--dashboard-port",
            str(dashboard_port),
            "--page-port",
            str(page_port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    processes: set[int] = set()
    critical: list[dict[str, object]] = []
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{api_port}",
            headers={"Authorization": f"Bearer {token}"},
            timeout=5,
        ) as api:
            while time.monotonic() - started < 90 and demo.poll() is None:
                processes |= descendants(demo.pid)
                try:
                    flags = api.get("/api/v1/flags").json()
                    critical = [f for f in flags if f["severity"] == "critical"]
                except (httpx.TransportError, ValueError):
                    critical = []
                if critical:
                    break
                time.sleep(1)
            elapsed = time.monotonic() - started
            health = httpx.get(f"http://127.0.0.1:{dashboard_port}/_stcore/health", timeout=5)
            logins = demo_dir / "demo-logins"
            clinician = next(
                line for line in logins.read_text().splitlines() if line.startswith("demo.clinic")
            )
            login = api.post(
                "/api/v1/auth/login",
                json={"username": "demo.clinician", "password": clinician.split(": ", 1)[1]},
            )
            patient_page = httpx.get(f"http://127.0.0.1:{page_port}/", timeout=5)
        processes |= descendants(demo.pid)
    finally:
        demo.send_signal(signal.SIGINT)  # what Ctrl-C sends
        output, _ = demo.communicate(timeout=60)
    text = output.decode(errors="replace")
    assert critical, f"no critical flag within 90 s; demo output:\n{text[-3000:]}"
    print(f"first critical flag {elapsed:.1f} s after `make demo` started")  # a figure, not a test
    assert health.status_code == 200
    assert login.status_code == 200, login.text
    assert login.json()["teams"] == ["demo-team"]
    assert logins.stat().st_mode & 0o777 == 0o600
    assert clinician.split(": ", 1)[1] not in text  # passwords stay in the file
    assert "Clinician workspace: http://127.0.0.1:" in text
    assert f"A patient's page:    http://127.0.0.1:{page_port}/" in text
    assert patient_page.status_code == 200
    assert "Who are you?" in patient_page.text  # the demo home has several patients
    assert demo.returncode == 0, text[-3000:]
    assert len(processes) >= 5  # postgres, broker, ingest, rules, gateway, dashboard ...
    time.sleep(0.5)
    left = sorted(pid for pid in processes if alive(pid))
    assert left == [], f"processes left behind: {left}"
