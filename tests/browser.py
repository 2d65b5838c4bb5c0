"""A real headless Chromium (Debian's chromium + chromium-driver) driven by Selenium.

Nothing is downloaded: the browser and the driver are the system's (or CHROMIUM_BIN,
CHROMEDRIVER_BIN), and Selenium Manager is told to stay offline. Missing ones skip a
test locally and fail it when LLAMA_EXPORTER_REQUIRE_REAL is set.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from promstack import missing
from service_proc import start_service

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("LLAMA_EXPORTER_ARTIFACTS", ROOT / "artifacts"))
SCREENSHOTS = ARTIFACTS / "screenshots"

CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",  # root in CI, no user namespaces
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-features=Translate,OptimizationHints,MediaRouter",
    "--metrics-recording-only",
    "--password-store=basic",
    "--hide-scrollbars",
    "--font-render-hinting=none",
)

T = TypeVar("T")


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing."""
    browser = os.environ.get("CHROMIUM_BIN") or shutil.which("chromium")
    driver = os.environ.get("CHROMEDRIVER_BIN") or shutil.which("chromedriver")
    if not browser or not driver:
        return None
    return browser, driver


def require_chromium() -> tuple[str, str]:
    """(browser, driver), or skip/fail the calling test (see module docstring)."""
    found = find_chromium()
    if found is None:
        missing(
            "chromium and chromedriver not found: apt-get install chromium chromium-driver "
            "(scripts/bootstrap.sh --test does), or set CHROMIUM_BIN and CHROMEDRIVER_BIN"
        )
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing("selenium is not installed: pip install -e '.[test]'")
    assert found is not None
    return found


@dataclass
class Browser:
    """A WebDriver session plus the browser console, read as it goes."""

    driver: Any  # selenium.webdriver.Chrome (selenium ships no type stubs we rely on)
    console: list[dict[str, Any]] = field(default_factory=list)

    def drain_console(self) -> list[dict[str, Any]]:
        """Console entries since the last call (also kept in self.console)."""
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        self.console.extend(entries)
        return entries

    def js(self, script: str, *args: Any) -> Any:
        """Run a script in the page and return its value."""
        return self.driver.execute_script(script, *args)

    def viewport(self, width: int, height: int, *, mobile: bool = False) -> None:
        """Emulate a screen of exactly width x height CSS pixels."""
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
        )

    def screenshot(self, name: str) -> Path:
        """Save a PNG of the viewport under artifacts/screenshots/."""
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def wait(self, what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
        """Poll check() until it returns something truthy; fail naming `what` otherwise."""
        deadline = time.monotonic() + timeout
        last: T | None = None
        while True:
            try:
                last = check()
            except Exception as exc:  # a stale element between two renders: look again
                last = None
                error: Exception | None = exc
            else:
                error = None
            if last:
                return last
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout} s waiting for {what} ({error})")
            time.sleep(0.05)


@contextmanager
def chromium(profile_dir: Path, *, width: int = 1280, height: int = 800) -> Iterator[Browser]:
    """A fresh headless Chromium with its own profile; quit (with its driver) on exit."""
    browser_bin, driver_bin = require_chromium()
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager: never download a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = browser_bin
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    profile_dir.mkdir(parents=True, exist_ok=True)
    service = Service(executable_path=driver_bin, log_output=str(profile_dir / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    try:
        browser = Browser(driver)
        browser.viewport(width, height)
        yield browser
    finally:
        driver.quit()  # ends chromium and chromedriver, the processes this started


def severe(entries: list[dict[str, Any]], allowed: tuple[str, ...] = ()) -> list[str]:
    """Messages of SEVERE console entries that match none of the allowed substrings."""
    return [
        str(e.get("message"))
        for e in entries
        if e.get("level") == "SEVERE" and not any(a in str(e.get("message")) for a in allowed)
    ]


@contextmanager
def page_of_empty_service(tmp: Path) -> Iterator[Browser]:
    """Chromium on the page of a service (in tmp) with no models; both end after."""
    require_chromium()
    service = start_service(tmp / "service", {})
    try:
        with chromium(tmp / "chromium") as result:
            result.driver.get(service.url + "/")
            yield result
    finally:
        service.stop()
