"""The page's memory view in real Chromium: a bar per device (budget, reserved, per model)
and each model's figure before it is loaded. The service runs as a process with the fake
llama-server on the real gemma GGUF file, so the figures are the real estimates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, http_json, start_service

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, fake_server_bin: Path, gemma_gguf: Path
) -> Iterator[tuple[ServiceProcess, Browser]]:
    require_chromium()
    tmp = tmp_path_factory.mktemp("webmemory")
    models = [
        {"name": name, "path": str(gemma_gguf), "ctx_size": ctx, "parallel": 2}
        for name, ctx in (("small", 2048), ("large", 16384))
    ]
    config: dict[str, Any] = {
        "llama_server": str(fake_server_bin),
        "memory_budget": {"cpu": "1GiB"},
        "models": models,
    }
    service = start_service(tmp / "service", config)
    try:
        with chromium(tmp / "chromium") as browser:
            browser.driver.get(service.url + "/")
            yield service, browser
    finally:
        service.stop()


def _text(browser: Browser, css: str) -> str:
    value: str = browser.js(
        "const n = document.querySelector(arguments[0]); return n ? n.textContent : '';", css
    )
    return value


def test_needs_before_load_then_a_bar_per_device(page: tuple[ServiceProcess, Browser]) -> None:
    from selenium.webdriver.common.by import By

    service, browser = page
    fact = 'article[data-model="{}"] [data-fact="memory"] dd'
    # The figures are read in the background at start: the list refresh brings them.
    small = browser.wait(
        "small's figure",
        lambda: (t := _text(browser, fact.format("small"))).startswith("needs") and t,
        60,
    )
    large = _text(browser, fact.format("large"))
    _, models = http_json("GET", service.api + "/models")
    estimate = {m["name"]: m["memory"]["estimate_bytes"] for m in models["models"]}
    assert estimate["large"] > estimate["small"] > 0
    assert small == f"needs {estimate['small'] / 1e6:.0f} MB", small
    assert large.startswith("needs ") and large != small
    title = browser.js(f"return document.querySelector('{fact.format('small')}').title;")
    assert title == small  # the whole text on hover, as a narrow card cuts it short
    browser.driver.find_element(By.CSS_SELECTOR, 'article[data-model="small"] button.load').click()
    bar = '.membar[data-device="cpu"]'
    label = browser.wait(
        "the cpu bar with small's share",
        lambda: browser.js(
            "return document.querySelector(arguments[0] + ' .membar-seg[data-model=small]')"
            " ? document.querySelector(arguments[0] + ' .membar-label').textContent : null;",
            bar,
        ),
        60,
    )
    assert label.startswith("cpu: ") and "of 1.1 GB reserved" in label, label
    width = browser.js(
        "return document.querySelector(arguments[0] + ' .membar-seg').getBoundingClientRect()"
        ".width / document.querySelector(arguments[0] + ' .membar-track')"
        ".getBoundingClientRect().width;",
        bar,
    )
    assert width == pytest.approx(estimate["small"] / 2**30, abs=0.02)
    browser.screenshot("memory-bars-1280x800")
    assert severe(browser.drain_console()) == []
