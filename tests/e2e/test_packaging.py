"""The gateway installs with its own extra alone: no server or dashboard packages."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow

SERVER_SIDE = {"fastapi", "psycopg", "pandas", "streamlit", "uvicorn", "pydantic"}


def test_the_gateway_extra_installs_and_decodes_without_server_packages(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    subprocess.run(
        [python, "-m", "pip", "install", "--quiet", f"{REPO}[gateway]"],
        check=True,
        timeout=600,
        cwd=tmp_path,
    )
    listed = subprocess.run(
        [python, "-m", "pip", "list", "--format", "json"],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"bleak", "paho-mqtt", "carewatch"} <= installed
    assert installed & SERVER_SIDE == set()
    decoded = subprocess.run(
        [python, "-m", "gateway_agent", "decode", "SFLOAT", "65f0"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert json.loads(decoded.stdout)["value"] == 10.1
    # The whole gateway runtime imports with what the extra installed.
    subprocess.run(
        [python, "-c", "import gateway_agent.simulated_homes, gateway_agent.uplink"],
        check=True,
        timeout=60,
        cwd=tmp_path,
    )
