"""A real headless Chromium for the console tests, driven through Selenium.

The browser and its driver are the system's (Debian's ``chromium`` and ``chromium-driver``,
which ``.ci/run`` installs; ``EXTMSG_CHROMIUM`` / ``EXTMSG_CHROMEDRIVER`` name others): passing
the driver's path keeps Selenium from fetching a browser of its own. Where either is missing
the tests skip and say so.

Screenshots go to ``EXTMSG_SCREENSHOTS`` (default ``test-artifacts/screenshots``); the test
run names the folder in its summary.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
SAVED: list[Path] = []


def screenshot_dir() -> Path:
    folder = Path(os.environ.get("EXTMSG_SCREENSHOTS") or ROOT / "test-artifacts" / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def save_screenshot(driver: Any, name: str) -> Path:
    path = screenshot_dir() / f"{name}.png"
    driver.save_screenshot(str(path))
    SAVED.append(path)
    return path


def _find(env: str, *names: str) -> str | None:
    given = os.environ.get(env)
    if given:
        return given if Path(given).exists() else None
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    for name in names:
        for folder in ("/usr/bin", "/usr/lib/chromium"):
            candidate = Path(folder) / name
            if candidate.exists():
                return str(candidate)
    return None


def start_chromium(width: int = 1600, height: int = 1000) -> Any:
    """A headless Chromium session, or skip the test with the reason."""
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.skip("selenium is not installed (pip install -e '.[test]')")
    browser = _find("EXTMSG_CHROMIUM", "chromium", "chromium-browser", "google-chrome")
    driver_path = _find("EXTMSG_CHROMEDRIVER", "chromedriver", "chromium-driver")
    if browser is None or driver_path is None:
        pytest.skip(
            "no Chromium to drive: install Debian's chromium and chromium-driver "
            "(.ci/run does), or set EXTMSG_CHROMIUM and EXTMSG_CHROMEDRIVER"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--no-first-run",
        f"--window-size={width},{height}",
        "--lang=en-US",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    driver.set_window_size(width, height)
    return driver


def console_errors(driver: Any) -> list[str]:
    """Browser console entries of level SEVERE since the last call (failed loads included)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
