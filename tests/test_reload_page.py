"""The page's notice of a config reload, in a real headless Chromium against the service as
a process (fake llama-server children): what was added, removed and restarted, or the
error, which a page opened later still shows. Screenshots go to artifacts/screenshots/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, http_json, start_service
from test_cli import fake_config

pytestmark = [pytest.mark.browser]


def write(svc: ServiceProcess, data: dict[str, Any]) -> None:
    temp = svc.config_file.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump(data))
    temp.replace(svc.config_file)


def notice(browser: Browser) -> tuple[str, str | None, bool] | None:
    got: list[Any] | None = browser.js(
        "const n = document.getElementById('reload-notice');"
        "return n ? [n.textContent, n.getAttribute('data-ok'), !n.hidden] : null;"
    )
    return None if got is None else (got[0], got[1], got[2])


def visible(browser: Browser, ok: str | None = None) -> tuple[str, str | None, bool] | None:
    """The reload notice when it is shown (and its data-ok is ok, if given)."""
    n = notice(browser)
    if n is None or not n[2] or (ok is not None and n[1] != ok):
        return None
    return n


@pytest.fixture
def setup(tmp_path: Path, fake_server_bin: Path) -> Iterator[tuple[ServiceProcess, Browser]]:
    require_chromium()
    config = fake_config(tmp_path, fake_server_bin, models=3)
    svc = start_service(tmp_path / "service", config)
    try:
        with chromium(tmp_path / "chromium") as browser:
            browser.driver.get(svc.url + "/")
            browser.wait(
                "the model cards",
                lambda: browser.js(
                    "return document.querySelectorAll('article[data-model]').length === 3"
                ),
            )
            yield svc, browser
    finally:
        svc.stop()


def test_the_page_says_what_a_reload_changed_or_why_it_failed(
    setup: tuple[ServiceProcess, Browser], tmp_path: Path
) -> None:
    svc, browser = setup
    assert http_json("POST", svc.api + "/models/m0/start?wait=true")[0] == 200
    data = yaml.safe_load(svc.config_file.read_text())
    data["models"][0]["ctx_size"] = 2048  # m0 runs: restarted
    data["models"].pop(2)  # m2 removed
    data["models"].append({**data["models"][1], "name": "m3"})  # m3 added
    write(svc, data)
    code, body = http_json("POST", svc.api + "/reload")
    assert code == 200, body
    shown = browser.wait("the reload notice", lambda: visible(browser))
    assert shown[1] == "true"
    assert shown[0] == "Config reloaded: added m3; removed m2; restarting m0"
    browser.wait(
        "m3's card",
        lambda: browser.js("return !!document.querySelector('article[data-model=\"m3\"]')"),
    )
    browser.screenshot("reload-notice-1280x800")

    data["models"][1]["path"] = str(tmp_path / "missing.gguf")
    write(svc, data)
    code, body = http_json("POST", svc.api + "/reload")
    assert code == 400, body
    failed = browser.wait("the failed reload's notice", lambda: visible(browser, "false"))
    assert failed[0].startswith("Config reload failed, the running config stays: ")
    assert "models[1].path" in failed[0] and "missing.gguf" in failed[0]
    browser.screenshot("reload-failed-1280x800")

    browser.driver.refresh()  # a page opened later still sees the failure
    again = browser.wait("the notice on the page loaded again", lambda: visible(browser))
    assert again[1] == "false" and "models[1].path" in again[0]
    assert not severe(browser.drain_console(), ())
