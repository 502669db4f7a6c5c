"""The workspace in a real browser (Debian's Chromium, headless, through ChromeDriver): a
clinician logs in, sees the triage queue, acknowledges a flag and opens the patient; a lead
previews a threshold change and opens the billing evidence. Against the real API, database and
Streamlit server; the screenshots it takes are the ones the README and docs/workspace.md show.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from dashboard.api_client import CareWatchApi
from devstack.browser import BrowserUnavailable, ensure_chromium
from tests.dashboard.conftest import (
    WORKSPACE_PASSWORD,
    WORKSPACE_USER,
    SeededWorkspace,
    WorkspaceLogin,
)

pytestmark = [pytest.mark.db, pytest.mark.slow, pytest.mark.browser]

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / "docs" / "img"
WAIT_S = 30


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def workspace_url(workspace_env: WorkspaceLogin, tmp_path: Path) -> Iterator[str]:
    """``streamlit run dashboard/app.py`` against the test API, as a user would start it."""
    port = free_port()
    env = {**os.environ, "CAREWATCH_API_URL": workspace_env.api.url}
    env.pop("CAREWATCH_API_TOKEN", None)
    log = (tmp_path / "streamlit.log").open("wb")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "streamlit",
            "run",
            str(REPO / "dashboard" / "app.py"),
            "--server.port",
            str(port),
            "--server.address",
            "127.0.0.1",
            "--server.headless",
            "true",
            "--browser.gatherUsageStats",
            "false",
            "--client.toolbarMode",
            "viewer",
        ],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/_stcore/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.3)
        else:
            pytest.fail(f"streamlit did not start; see {log.name}")
        yield url
    finally:
        server.terminate()
        server.wait(timeout=15)
        log.close()


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    try:
        chromium = ensure_chromium()
    except BrowserUnavailable as exc:
        pytest.skip(str(exc))
    options = webdriver.ChromeOptions()
    options.binary_location = str(chromium.browser)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-dev-shm-usage",
        "--window-size=1440,1400",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(str(chromium.driver)), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for_text(driver: WebDriver, text: str) -> None:
    try:
        WebDriverWait(driver, WAIT_S).until(
            ec.presence_of_element_located((By.XPATH, f"//*[contains(text(), {text!r})]"))
        )
    except TimeoutException:
        shown = driver.find_element(By.TAG_NAME, "body").text[:2000]
        pytest.fail(f"{text!r} did not appear; the page says: {shown}")


def click(driver: WebDriver, xpath: str) -> None:
    """Click the element at ``xpath``, again if Streamlit redraws it between finding and
    clicking (a stale element)."""

    def clicked(d: WebDriver) -> bool:
        try:
            element = d.find_element(By.XPATH, xpath)
            if not (element.is_displayed() and element.is_enabled()):
                return False
            element.click()
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return True

    WebDriverWait(driver, WAIT_S).until(clicked)


def log_in(driver: WebDriver, url: str) -> None:
    driver.get(url)
    WebDriverWait(driver, WAIT_S).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, "input[aria-label='User name']"))
    ).send_keys(WORKSPACE_USER)
    driver.find_element(By.CSS_SELECTOR, "input[aria-label='Password']").send_keys(
        WORKSPACE_PASSWORD
    )
    click(driver, "//button[.//*[text()='Log in']]")


def go_to(driver: WebDriver, page: str) -> None:
    """Follow the sidebar's link to a page (a new URL would start a new, logged-out session)."""
    click(driver, f"//a[contains(@href, '/{page}')]")


def settle(driver: WebDriver) -> None:
    """Until Streamlit has finished running the page (its status widget is gone)."""
    WebDriverWait(driver, WAIT_S).until_not(
        ec.presence_of_element_located((By.CSS_SELECTOR, "[data-testid='stStatusWidget']"))
    )
    time.sleep(0.5)


def test_a_clinician_logs_in_works_the_queue_and_opens_a_patient(
    workspace_url: str,
    workspace_env: WorkspaceLogin,
    seeded: SeededWorkspace,
    api: CareWatchApi,
    browser: WebDriver,
) -> None:
    workspace_env.session()  # gives the ward the seeded patients
    log_in(browser, workspace_url)
    wait_for_text(browser, "Triage queue")
    wait_for_text(browser, seeded.crisis_patient_name)
    settle(browser)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / "workspace-triage.png"))

    click(browser, f"//div[contains(@class, 'st-key-triage-ack-{seeded.crisis_flag_id}')]//button")
    wait_for_text(browser, "Acknowledged: Hypertensive crisis")
    flag = api.flag(seeded.crisis_flag_id)
    assert (flag["status"], flag["acknowledged_by"]) == ("acknowledged", WORKSPACE_USER)

    settle(browser)
    click(browser, f"//div[contains(@class, 'st-key-triage-open-{seeded.crisis_flag_id}')]//button")
    wait_for_text(browser, "Vitals")
    wait_for_text(browser, "Follow up")
    settle(browser)
    browser.save_screenshot(str(SCREENSHOTS / "workspace-patient.png"))
    assert seeded.crisis_patient_id in browser.current_url


def test_a_lead_previews_a_threshold_change_and_opens_the_billing_evidence(
    workspace_url: str,
    workspace_env: WorkspaceLogin,
    seeded: SeededWorkspace,
    db: psycopg.Connection,
    browser: WebDriver,
) -> None:
    db.execute("UPDATE users SET role = 'lead' WHERE username = %s", (WORKSPACE_USER,))
    db.execute("UPDATE patients SET monitoring_started_on = current_date - 10")
    db.commit()
    workspace_env.session()
    log_in(browser, workspace_url)
    wait_for_text(browser, "Triage queue")
    go_to(browser, "tuning")
    wait_for_text(browser, "Threshold tuning")
    settle(browser)
    limit = WebDriverWait(browser, WAIT_S).until(
        ec.element_to_be_clickable(
            (By.CSS_SELECTOR, "input[aria-label='when.0.above (default 180)']")
        )
    )
    limit.send_keys(Keys.CONTROL, "a")
    limit.send_keys("170", Keys.ENTER)
    wait_for_text(browser, "Changes from the defaults")
    settle(browser)
    click(browser, "//button[.//*[text()='Preview']]")
    wait_for_text(browser, "Alerts per patient-week now")
    settle(browser)
    heading = browser.find_element(By.XPATH, "//*[text()='Changes from the defaults']")
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'});", heading)
    time.sleep(0.5)
    browser.save_screenshot(str(SCREENSHOTS / "workspace-tuning.png"))
    page = browser.find_element(By.TAG_NAME, "body").text
    assert "Would gain alerts" in page

    go_to(browser, "billing")
    wait_for_text(browser, "Billing evidence")
    wait_for_text(browser, "Download CSV")
    settle(browser)
    browser.save_screenshot(str(SCREENSHOTS / "workspace-billing.png"))
    for name in ("workspace-tuning.png", "workspace-billing.png"):
        assert (SCREENSHOTS / name).stat().st_size > 10_000
