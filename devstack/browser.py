"""Debian's Chromium and ChromeDriver for the workspace's real-browser test.

The project's own test setup installs them (``apt-get install chromium chromium-driver``) when
they are missing and the tests run as root on Debian (as CI does); otherwise it says how to
install them. Nothing is downloaded from anywhere but the distribution's package mirror.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("chromium", "chromium-driver")


class BrowserUnavailable(RuntimeError):
    """Chromium or ChromeDriver is missing and cannot be installed here (the message says
    what to do)."""


@dataclass(frozen=True)
class Chromium:
    browser: Path
    driver: Path


def find_chromium() -> Chromium | None:
    browser = shutil.which("chromium")
    driver = shutil.which("chromedriver")
    return Chromium(Path(browser), Path(driver)) if browser and driver else None


def ensure_chromium() -> Chromium:
    """Chromium and its driver, installed from Debian's packages when missing (root only)."""
    found = find_chromium()
    if found is not None:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise BrowserUnavailable(
            "the browser test needs Debian's chromium and chromium-driver: "
            "sudo apt-get install chromium chromium-driver"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt, "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    # S603: apt-get from PATH with fixed arguments.
    if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:  # noqa: S603
        subprocess.run([apt, "update", "-qq"], env=env, capture_output=True, check=False)  # noqa: S603
        done = subprocess.run(install, env=env, capture_output=True, text=True, check=False)  # noqa: S603
        if done.returncode != 0:
            raise BrowserUnavailable(f"apt-get could not install {PACKAGES}: {done.stderr[-500:]}")
    found = find_chromium()
    if found is None:
        raise BrowserUnavailable("chromium was installed but is not on PATH")
    return found
