"""The page in real Chromium when a /status answer arrives after newer events.

The page reloads its list and every status from /status (every 30 s, on reconnects,
after a config reload). An answer taken before a model stopped but delivered after the
`stopped` event must not undo the event: CI once saw a stopped model counted as running
that way. Here the browser holds that answer on purpose (a wrapper around its own
fetch), so the order is certain rather than a matter of luck; the service is a process
with one fake model, untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, http_json, start_service
from test_cli import fake_config

pytestmark = [pytest.mark.browser]

# The next GET .../status is answered by the service at once (the answer is taken then)
# but handed to the page only when the test calls window.__release().
HOLD_NEXT_STATUS = """
const real = window.fetch;
window.__held = "waiting";
window.fetch = async (input, init) => {
  if (window.__held === "waiting" && String(input).endsWith("/api/v1/llama/status")) {
    window.__held = "taken";
    const answer = await real(input, init);
    const body = await answer.text();
    window.__held = "holding";
    await new Promise((resolve) => { window.__release = resolve; });
    window.__held = "released";
    return new Response(body, {status: answer.status, headers: answer.headers});
  }
  return real(input, init);
};
"""
NEXT_FRAME = (
    "const done = arguments[arguments.length - 1];"
    "requestAnimationFrame(() => requestAnimationFrame(() => done(true)));"
)


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, fake_server_bin: Path
) -> Iterator[tuple[ServiceProcess, Browser]]:
    """A service with one fake model m0 (it stays up), Chromium on the page."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("webstatusorder")
    service = start_service(tmp / "service", fake_config(tmp, fake_server_bin, models=1))
    try:
        with chromium(tmp / "chromium") as browser:
            browser.driver.get(service.url + "/")
            yield service, browser
    finally:
        service.stop()


def _badge(browser: Browser) -> str | None:
    state: str | None = browser.js(
        "const b = document.querySelector('article[data-model=\"m0\"] .badge');"
        "return b ? b.dataset.state : null;"
    )
    return state


def _running(browser: Browser) -> str:
    text: str = browser.js("return document.getElementById('running-count').textContent;")
    return text


def test_an_older_status_answer_does_not_undo_a_stop(
    page: tuple[ServiceProcess, Browser],
) -> None:
    service, browser = page
    browser.wait("m0's card", lambda: _badge(browser) == "stopped")
    status, body = http_json("POST", service.api + "/models/m0/start")
    assert status == 202, body  # accepted: starting
    browser.wait("m0 ready on the page", lambda: _badge(browser) == "ready")
    assert _running(browser) == "1"

    # A config reload (nothing changed) makes the page reload its list and statuses;
    # the /status answer, taken now with m0 ready, is held in the browser.
    browser.js(HOLD_NEXT_STATUS)
    status, body = http_json("POST", service.api + "/reload")
    assert status == 200, body
    held = "return window.__held;"
    browser.wait("the answer taken and held", lambda: browser.js(held) == "holding")

    status, body = http_json("POST", service.api + "/models/m0/stop")
    assert status == 200, body
    browser.wait("m0 stopped on the page (the event)", lambda: _badge(browser) == "stopped")
    assert _running(browser) == "0"

    # The old answer arrives now. The list reload ends by clearing the page's notice:
    # a notice put there first tells when the answer has been applied.
    browser.js("document.getElementById('notice').textContent = 'waiting for the reload';")
    browser.js("window.__release();")
    browser.wait(
        "the list reload applied",
        lambda: browser.js("return document.getElementById('notice').textContent;") == "",
    )
    assert browser.driver.execute_async_script(NEXT_FRAME)  # its render has run
    assert _badge(browser) == "stopped"
    assert _running(browser) == "0"
    assert severe(browser.drain_console()) == []
