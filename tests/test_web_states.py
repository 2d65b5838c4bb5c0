"""The models view in real Chromium with fake llama-server models (faults on demand): the
backoff countdown, the failed reason, registering a model with the form (and a field
error), and removing it. The service runs as a process.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, http_json, start_service
from test_cli import fake_config

from llama_exporter.testing.gguf_writer import write_minimal_gguf

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, fake_server_bin: Path
) -> Iterator[tuple[ServiceProcess, Browser, Path]]:
    """A service whose model m0 crashes 1 s after it is ready; Chromium on the page."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("webstates")
    config: dict[str, Any] = fake_config(tmp, fake_server_bin, models=1)
    config["models"][0]["args"] = ["--fake-crash-after", "1"]
    config["restart"] = {"max_retries": 1, "backoff_initial": 4, "backoff_max": 4}
    service = start_service(tmp / "service", config)
    try:
        with chromium(tmp / "chromium") as browser:
            browser.driver.get(service.url + "/")
            yield service, browser, tmp
    finally:
        service.stop()


def _text(browser: Browser, css: str) -> str:
    value: str = browser.js(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : '';", css
    )
    return value


def _badge(browser: Browser, model: str) -> str | None:
    state: str | None = browser.js(
        "const b = document.querySelector(`article[data-model='${arguments[0]}'] .badge`);"
        "return b ? b.dataset.state : null;",
        model,
    )
    return state


def test_backoff_counts_down_then_failed_shows_the_reason(
    page: tuple[ServiceProcess, Browser, Path],
) -> None:
    from selenium.webdriver.common.by import By

    _, browser, _ = page
    browser.wait("m0's card", lambda: _badge(browser, "m0") == "stopped")
    browser.driver.find_element(By.CSS_SELECTOR, 'article[data-model="m0"] button.load').click()
    browser.wait("backoff after the crash", lambda: _badge(browser, "m0") == "backoff", 60)
    reason = 'article[data-model="m0"] .reason'
    first = browser.wait("a countdown", lambda: re.search(r"in (\d) s", _text(browser, reason)))
    browser.wait(
        "the countdown to move",
        lambda: (
            (m := re.search(r"in (\d) s", _text(browser, reason)))
            and int(m.group(1)) < int(first.group(1))
        ),
    )
    assert "retry 1" in _text(browser, reason)
    browser.wait("failed after the retry", lambda: _badge(browser, "m0") == "failed", 60)
    text = _text(browser, reason)
    assert text.startswith("Failed: ") and "exit" in text, text
    load = browser.driver.find_element(By.CSS_SELECTOR, 'article[data-model="m0"] button.load')
    assert load.is_enabled()  # a failed model can be loaded again
    assert severe(browser.drain_console()) == []


def test_register_with_the_form_then_remove(page: tuple[ServiceProcess, Browser, Path]) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    service, browser, tmp = page
    find = browser.driver.find_element
    find(By.ID, "reg-name").send_keys("extra")
    find(By.ID, "reg-path").send_keys(str(tmp / "missing.gguf"), Keys.ENTER)
    browser.wait("the API's message", lambda: "missing.gguf" in _text(browser, "#reg-error"))
    assert find(By.ID, "reg-path").get_attribute("aria-invalid") == "true"
    path = write_minimal_gguf(tmp / "extra.gguf")
    field = find(By.ID, "reg-path")
    field.clear()
    field.send_keys(str(path))
    find(By.ID, "reg-submit").click()
    browser.wait("the new card", lambda: _badge(browser, "extra") == "stopped")
    assert _text(browser, 'article[data-model="extra"] [data-fact="source"] dd') == "api"
    assert "Registered extra." in _text(browser, "#reg-done")
    remove = find(By.CSS_SELECTOR, 'article[data-model="extra"] button.remove')
    remove.click()
    assert remove.text == "Really remove?"
    remove.click()
    browser.wait("the card gone", lambda: _badge(browser, "extra") is None)
    _, body = http_json("GET", service.api + "/models")
    assert [m["name"] for m in body["models"]] == ["m0"]
    # The refused registration is the one error the console may show.
    assert severe(browser.drain_console(), allowed=("status of 400",)) == []


def registered(service: ServiceProcess, name: str) -> dict[str, Any]:
    """The model's entry in GET /models."""
    _, body = http_json("GET", service.api + "/models")
    found: dict[str, Any] = next(m for m in body["models"] if m["name"] == name)
    return found


def test_register_with_pinned_idle_ttl_and_stop_drain(
    page: tuple[ServiceProcess, Browser, Path],
) -> None:
    from selenium.webdriver.common.by import By

    service, browser, tmp = page
    find = browser.driver.find_element
    path = write_minimal_gguf(tmp / "kept.gguf")
    find(By.ID, "reg-name").send_keys("kept")
    find(By.ID, "reg-path").send_keys(str(path))
    find(By.ID, "reg-idle-ttl").send_keys("-1")  # refused by the API, which names the field
    find(By.ID, "reg-stop-drain").send_keys("2.5")
    find(By.ID, "reg-pinned").click()
    find(By.ID, "reg-submit").click()
    browser.wait("the idle_ttl error", lambda: "0 or more" in _text(browser, "#reg-error"))
    assert find(By.ID, "reg-idle-ttl").get_attribute("aria-invalid") == "true"
    field = find(By.ID, "reg-idle-ttl")
    field.clear()
    field.send_keys("90")
    find(By.ID, "reg-submit").click()
    browser.wait("the new card", lambda: _badge(browser, "kept") == "stopped")
    model = registered(service, "kept")
    assert (model["pinned"], model["idle_ttl"], model["stop_drain"]) == (True, 90, 2.5)
    assert find(By.ID, "reg-pinned").is_selected() is False  # the form was reset
    # Left empty, the fields take the config's defaults, as with the API and the CLI.
    find(By.ID, "reg-name").send_keys("plain")
    find(By.ID, "reg-path").send_keys(str(path))
    find(By.ID, "reg-submit").click()
    browser.wait("the second card", lambda: _badge(browser, "plain") == "stopped")
    plain = registered(service, "plain")
    assert (plain["pinned"], plain["idle_ttl"], plain["stop_drain"]) == (False, 0, 30)
    for name in ("kept", "plain"):
        assert http_json("DELETE", service.api + f"/models/{name}")[0] == 200
    assert severe(browser.drain_console(), allowed=("status of 400",)) == []
