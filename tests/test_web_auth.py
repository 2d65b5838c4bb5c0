"""The page with api_token set: it asks for the token once, keeps it for the tab, sends it
as a header and as the WebSocket's first message, never in a URL. Real Chromium, the
service as a process with a fake llama-server model (auth is what is tested here).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, start_service
from test_cli import fake_config

pytestmark = [pytest.mark.browser]

TOKEN = "page-test-token-7f3a"


@pytest.fixture(scope="module")
def secured(
    tmp_path_factory: pytest.TempPathFactory, fake_server_bin: Path
) -> Iterator[tuple[ServiceProcess, Browser]]:
    """A service with api_token and one fake model, and Chromium on its page."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("webauth")
    config: dict[str, Any] = {**fake_config(tmp, fake_server_bin, models=1), "api_token": TOKEN}
    service = start_service(tmp / "service", config)
    try:
        with chromium(tmp / "chromium") as browser:
            browser.driver.get(service.url + "/")
            yield service, browser
    finally:
        service.stop()


def _dialog_open(browser: Browser) -> bool:
    return bool(browser.js("return document.getElementById('token-dialog').open;"))


def _badge(browser: Browser) -> str | None:
    state: str | None = browser.js(
        "const b = document.querySelector('article[data-model=\"m0\"] .badge');"
        "return b ? b.dataset.state : null;"
    )
    return state


def test_the_page_asks_for_the_token_and_keeps_it_for_the_tab(
    secured: tuple[ServiceProcess, Browser],
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    _, browser = secured
    browser.wait("the token dialog", lambda: _dialog_open(browser))
    field = browser.driver.find_element(By.ID, "token-input")
    field.send_keys("wrong-token", Keys.ENTER)
    error = "return document.getElementById('token-error').textContent;"
    browser.wait("the refusal", lambda: "refused" in browser.js(error))
    assert _dialog_open(browser)
    field = browser.driver.find_element(By.ID, "token-input")
    field.send_keys(TOKEN, Keys.ENTER)
    browser.wait("the model card", lambda: _badge(browser) == "stopped")
    assert not _dialog_open(browser)
    assert browser.js("return sessionStorage.getItem('llama-exporter.api-token');") == TOKEN
    # The live stream authenticated with its first message: it stays live and carries events.
    conn = "return document.getElementById('conn').dataset.conn;"
    browser.wait("live", lambda: browser.js(conn) == "live")
    browser.driver.find_element(By.CSS_SELECTOR, 'article[data-model="m0"] button.load').click()
    browser.wait(
        "m0 ready through the WebSocket",
        lambda: _badge(browser) == "ready",
    )
    # A reload in the same tab needs no second prompt.
    browser.driver.refresh()
    browser.wait("the model card again", lambda: _badge(browser) == "ready")
    assert not _dialog_open(browser)
    urls = browser.js("return performance.getEntriesByType('resource').map((e) => e.name);")
    assert urls and not [u for u in urls if TOKEN in u]
    entries = browser.drain_console()
    # The first calls were refused (401) until the token was given: nothing else.
    assert severe(entries, allowed=("status of 401",)) == []
