"""A real headless Chromium for the page tests, or a skip saying what is missing (`.ci/run` installs it)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest


def chromium(width: int = 1400, height: int = 900):
    """(driver, profile folder) of headless Debian Chromium via chromedriver; the caller quits the driver and
    removes the profile. Below 500 px (the narrowest desktop window) a phone's screen is emulated."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install '.[test]')")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not binary or not driver:
        pytest.skip("Debian chromium + chromium-driver are not installed (apt-get install chromium chromium-driver; .ci/run does it)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    profile = Path(os.environ.get("TMPDIR", "/tmp")) / f"geopin-chromium-{os.getpid()}-{time.monotonic_ns()}"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", f"--window-size={max(width, 500)},{height}", f"--user-data-dir={profile}"):
        opts.add_argument(flag)
    if width < 500:
        opts.add_experimental_option("mobileEmulation", {"deviceMetrics": {"width": width, "height": height,
                                                                           "pixelRatio": 1}})
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failure messages
    drv = webdriver.Chrome(service=Service(driver), options=opts)
    drv.set_page_load_timeout(60)
    return drv, profile


def wait_for(drv, what: str, cond, timeout: float = 60.0, poll: float = 0.25):
    """cond()'s first truthy value, polled; on time-out a failure naming what was awaited, with the page's
    status line and the last console messages."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    status = drv.execute_script("var s=document.getElementById('status'); return s && s.dataset.state + ': ' + s.textContent;")
    console = [e.get("message") for e in drv.get_log("browser")][-10:]
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}; page status: {status}; console: {console}")
