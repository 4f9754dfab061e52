"""A real browser: headless Chromium opens the demo page in two tabs through HAProxy,
types in one and sees the message in the other. It trusts the lab's ACME root the way a
browser trusts Let's Encrypt: through its certificate store, not by ignoring errors."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.lab_fleet import REPO

ARTIFACTS = REPO / "artifacts"
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def browser(lab, tmp_path: Path):
    for binary in ("chromium", "chromedriver", "certutil"):
        if shutil.which(binary) is None:
            pytest.fail(f"{binary} is missing: run 'make tools'")
    home = tmp_path / "home"
    nssdb = home / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    subprocess.run(["certutil", "-d", f"sql:{nssdb}", "-N", "--empty-password"], check=True)
    subprocess.run(
        [
            "certutil",
            "-d",
            f"sql:{nssdb}",
            "-A",
            "-n",
            "wssfleet-lab-acme-root",
            "-t",
            "C,,",
            "-i",
            lab.root_bundle,
        ],
        check=True,
    )
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1000,800",
        f"--user-data-dir={tmp_path / 'profile'}",
        # The lab's domain is not in public DNS: resolve it to the master, as DNS would.
        f"--host-resolver-rules=MAP {lab.domain} {lab.master_address}",
    ):
        options.add_argument(flag)
    service = Service(shutil.which("chromedriver"), env={**os.environ, "HOME": str(home)})
    driver = webdriver.Chrome(service=service, options=options)
    yield driver
    driver.quit()


def open_demo(driver, lab, subject: str) -> None:
    driver.get(f"https://{lab.domain}/#token={lab.token(subject)}&channel=browser")
    WebDriverWait(driver, 20).until(
        expected_conditions.text_to_be_present_in_element((By.ID, "status"), "connected")
    )


def test_two_tabs_chat_through_the_fleet(browser, lab):
    open_demo(browser, lab, "alice")
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_demo(browser, lab, "bob")
    second = browser.current_window_handle

    browser.switch_to.window(first)
    box = browser.find_element(By.ID, "message")
    box.send_keys("hello from the first tab")
    browser.find_element(By.CSS_SELECTOR, "#send button").click()

    browser.switch_to.window(second)
    WebDriverWait(browser, 20).until(
        expected_conditions.text_to_be_present_in_element(
            (By.ID, "log"), "alice: hello from the first tab"
        )
    )
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser-two-tabs.png"))
    assert browser.find_element(By.ID, "status").text == "connected"
