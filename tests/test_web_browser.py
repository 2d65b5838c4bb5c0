"""The operator page in a real headless Chromium, against the service as a process with
the real llama-server and gemma model. One module-scoped service (cap 1, two models on
the same file) and one browser; the tests run in file order and build on each other.

The browser reaches the service through a CutProxy, so a test can cut the page's
WebSocket the way a network failure would, with no test-only route in the service.
Screenshots go to artifacts/screenshots/ (kept by CI).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium, require_chromium, severe
from cutproxy import CutProxy
from promstack import free_port
from service_proc import ServiceProcess, http_json, start_service

pytestmark = [pytest.mark.real, pytest.mark.browser]

A, B = "gemma-a", "gemma-b"
PROMPT = "Write a long story about a lighthouse keeper and the sea. Once upon a time,"
# Chromium reports every 4xx/5xx answer and every refused connection on the console;
# these are the ones a step causes on purpose (429 on a full cap, the cut network).
NETWORK_FAILURE = ("net::ERR_", "WebSocket connection to")
DASH = "\u2013"  # what the page shows for a value it does not have


@dataclass
class Page:
    """Everything the tests share."""

    service: ServiceProcess
    proxy: CutProxy
    browser: Browser

    def card(self, model: str) -> str:
        return f'article[data-model="{model}"]'

    def find(self, css: str) -> Any:
        from selenium.webdriver.common.by import By

        return self.browser.driver.find_element(By.CSS_SELECTOR, css)

    def text(self, css: str) -> str:
        value: str = self.browser.js(
            "const n = document.querySelector(arguments[0]); return n ? n.textContent : null;", css
        )
        return value

    def attr(self, css: str, name: str) -> str | None:
        value: str | None = self.browser.js(
            "const n = document.querySelector(arguments[0]);"
            "return n ? n.getAttribute(arguments[1]) : null;",
            css,
            name,
        )
        return value

    def badge(self, model: str) -> str | None:
        return self.attr(f"{self.card(model)} .badge", "data-state")

    def goto(self, hash_: str) -> None:
        self.browser.js("window.location.hash = arguments[0];", hash_)

    def console_errors(self, allowed: tuple[str, ...] = ()) -> list[str]:
        return severe(self.browser.drain_console(), allowed)


@pytest.fixture(scope="module")
def page(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Page]:
    """The service (cap 1, models gemma-a and gemma-b), the proxy, Chromium on the page."""
    require_chromium()
    tmp = tmp_path_factory.mktemp("web")
    model = {"path": str(gemma_gguf), "ctx_size": 4096, "parallel": 2, "args": ["--threads", "2"]}
    config = {
        "llama_server": str(llama_server_bin),
        "max_parallel": 1,
        "stop_grace": 10,
        "poll": {"interval": 1.0},
        "models": [{"name": A, **model}, {"name": B, **model}],
    }
    port = free_port()
    with CutProxy(port) as proxy:
        # The browser names the proxy in Host and Origin: the service must accept that name
        # (otherwise 421, as for any name it does not know: DNS rebinding protection).
        config["allowed_hosts"] = [f"127.0.0.1:{proxy.port}"]
        service = start_service(tmp / "service", config, port=port)
        try:
            with chromium(tmp / "chromium") as browser:
                browser.driver.get(proxy.url + "/")
                result = Page(service, proxy, browser)
                browser.wait("both model cards", lambda: result.badge(A) and result.badge(B))
                yield result
        finally:
            code = service.stop()
    assert code == 0, service.log()[-3000:]


class Generation(threading.Thread):
    """A streamed completion on the real llama-server, ended early by stop()."""

    def __init__(
        self,
        port: int,
        *,
        model: str | None = None,
        n_predict: int = 1500,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.headers = {"Content-Type": "application/json", **(headers or {})}
        self.model = model  # set: through the service's OpenAI gateway on `port`
        self.n_predict = n_predict
        self.first_token_at: float | None = None
        self.chunks = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._conn: http.client.HTTPConnection | None = None

    def run(self) -> None:
        body: dict[str, Any] = {
            "prompt": PROMPT,
            "ignore_eos": True,
            "stream": True,
            "cache_prompt": False,
        }
        if self.model is None:
            path, body["n_predict"] = "/completion", self.n_predict
        else:
            path, body["max_tokens"], body["model"] = "/v1/completions", self.n_predict, self.model
        try:
            self._conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=300)
            self._conn.request("POST", path, json.dumps(body), self.headers)
            resp = self._conn.getresponse()
            assert resp.status == 200, resp.read()
            while not self._halt.is_set():
                line = resp.readline()
                if not line:
                    return
                if line.startswith(b"data: "):
                    self.chunks += 1
                    if self.first_token_at is None:
                        self.first_token_at = time.monotonic()
        except BaseException as exc:  # reported by the test; a cut connection after stop() is fine
            if not self._halt.is_set():
                self.error = exc

    def stop(self) -> None:
        """Hang up: llama-server then ends the request and frees the slot."""
        self._halt.set()
        if self._conn is not None:
            with contextlib.suppress(OSError):
                self._conn.sock and self._conn.sock.shutdown(2)
        self.join(timeout=30)


def test_load_with_the_button_shows_starting_then_ready(page: Page) -> None:
    from selenium.webdriver.common.keys import Keys

    assert page.badge(A) == "stopped"
    assert page.text("#running-cap") == "1"
    page.browser.js(
        "const badge = document.querySelector(arguments[0]);"
        "window.__states = [badge.dataset.state];"
        "new MutationObserver(() => window.__states.push(badge.dataset.state))"
        "  .observe(badge, {attributes: true, attributeFilter: ['data-state']});",
        f"{page.card(A)} .badge",
    )
    load = page.find(f"{page.card(A)} button.load")
    assert load.get_attribute("aria-label") == f"Load {A}"
    load.send_keys(Keys.ENTER)  # the keyboard, as a person without a mouse would
    page.browser.wait(f"{A} ready", lambda: page.badge(A) == "ready", timeout=120)
    states: list[str] = page.browser.js("return window.__states;")
    seen = [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]
    assert seen[:3] == ["stopped", "starting", "ready"], states
    assert page.text("#running-count") == "1"
    assert page.attr("#running", "data-full") == "true"
    assert page.service.status(A)["state"] == "ready"
    port = page.service.status(A)["port"]
    assert page.text(f'{page.card(A)} [data-fact="port"] dd') == str(port)
    # The log panel follows the running model's llama-server output.
    page.browser.wait("log lines", lambda: "llama" in page.text("#log-lines").lower())
    assert page.console_errors() == []


def _value(text: str) -> str | None:
    """The text when it is a value, None for the dash the page shows when it has none."""
    return None if text == DASH else text


def _card_rects(page: Page) -> list[list[float]]:
    rects: list[list[float]] = page.browser.js(
        "return [...document.querySelectorAll('.card, .chart, .stat')].map((n) => {"
        "  const r = n.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; });"
    )
    return rects


def test_generation_moves_the_cards_and_the_charts(page: Page) -> None:
    page.find(f"{page.card(A)} button.monitor").click()
    page.browser.wait("history filled", lambda: page.attr("#view-monitor", "data-fills") == "1")
    page.browser.wait("the model's cards", lambda: page.text("#card-slots") == "0 / 2")
    assert page.find("#monitor-model").get_attribute("value") == A
    tokens_before = page.text("#card-tokens")
    began = time.time()
    rects_before = _card_rects(page)
    port = page.service.status(A)["port"]
    # One request straight to the instance, one through the service's OpenAI gateway.
    # The instance requires the service's key: this page runs against keyed instances.
    assert http_json("GET", f"http://127.0.0.1:{port}/slots")[0] == 401
    runs = [
        Generation(port, headers=page.service.instance_auth()),
        Generation(page.service.port, model=A),
    ]
    for run in runs:
        run.start()
    try:
        page.browser.wait("tokens streamed", lambda: any(r.first_token_at for r in runs), 60)
        first = min(r.first_token_at for r in runs if r.first_token_at)

        def moved() -> bool:
            last = page.attr("#chart-tps", "data-last") or "0"
            return page.text("#card-tokens") != tokens_before and float(last) > 0

        page.browser.wait("tokens card and tokens/s chart to move", moved)
        seen_after = time.monotonic() - first
        print(f"page showed the first tokens {seen_after:.2f} s after they streamed")

        def busy() -> bool:
            pct = page.text("#card-ctx-pct").rstrip("%")
            return page.text("#card-slots") in ("1 / 2", "2 / 2") and float(pct) > 0

        page.browser.wait("busy slots and context % during generation", busy)
        # All of this happened while the requests were still generating.
        assert all(r.is_alive() for r in runs), [r.error for r in runs]
        used, size = page.text("#card-ctx").split(" / ")
        assert used != "0" and size == "4.1k"
        assert page.text("#card-tps").endswith("tok/s")
        tpt = page.browser.wait("time per token", lambda: _value(page.text("#card-tpt")))
        assert tpt.endswith((" ms", " s")), tpt
        assert int(page.attr("#chart-tps", "data-points") or 0) >= 2
        page.browser.wait("host values", lambda: page.text("#host-mem") != DASH)
        # The gateway's view: the request it carries, in the cards' row and on the model.
        page.browser.wait("gateway in flight", lambda: page.text("#gw-in-flight") == "1")
        assert page.attr("#gateway-stats", "hidden") is None
        assert page.text("#gateway-queue-length") == "0"
        assert page.text("#proc-rss").endswith("MB")
        # Values changed from dashes to numbers: nothing on the page moved.
        assert _card_rects(page) == rects_before
        page.browser.wait(
            "15 s of generation on the charts",
            lambda: float(page.attr("#view-monitor", "data-newest") or 0) >= began + 15,
            timeout=120,
        )
        page.browser.screenshot("monitoring-1280x800")
    finally:
        for run in runs:
            run.stop()
    assert [r.error for r in runs] == [None, None]
    assert page.console_errors() == []


def test_cut_websocket_reconnects_and_refills_the_charts(page: Page) -> None:
    fills = int(page.attr("#view-monitor", "data-fills") or 0)
    assert page.attr("#conn", "data-conn") == "live"
    assert page.proxy.cut() >= 1  # the WebSocket and any open HTTP connection
    page.browser.wait(
        "indicator reconnecting",
        lambda: page.attr("#conn", "data-conn") in ("reconnecting", "offline"),
    )
    assert page.text("#conn-text") in ("reconnecting", "offline")
    page.proxy.resume()
    page.browser.wait("indicator live", lambda: page.attr("#conn", "data-conn") == "live", 60)
    page.browser.wait(
        "charts refilled from the history",
        lambda: int(page.attr("#view-monitor", "data-fills") or 0) > fills,
    )
    assert int(page.attr("#chart-tps", "data-points") or 0) >= 6
    # The live stream flows again: newer samples arrive after the refill.
    newest = float(page.attr("#view-monitor", "data-newest") or 0)
    page.browser.wait(
        "live samples after the refill",
        lambda: float(page.attr("#view-monitor", "data-newest") or 0) > newest,
    )
    # Only the refused connections of the cut may be on the console.
    assert page.console_errors(allowed=NETWORK_FAILURE) == []


def test_full_cap_is_explained_and_a_stop_is_offered(page: Page) -> None:
    page.goto("#models")
    page.find(f"{page.card(B)} button.load").click()
    box = f"{page.card(B)} .capfull"
    page.browser.wait("the cap explanation", lambda: page.attr(box, "hidden") is None)
    text = page.text(box)
    assert "cap is full" in text and f"{A} (ready)" in text and "max_parallel" in text, text
    offer = page.find(f"{box} button.offer")
    assert offer.text == f"Stop {A} and load {B}"
    assert page.badge(B) == "stopped"
    page.browser.screenshot("models-1280x800")
    assert page.console_errors(allowed=("status of 429",)) == []
    offer.click()
    page.browser.wait(f"{B} ready", lambda: page.badge(B) == "ready", timeout=120)
    assert page.badge(A) == "stopped"
    assert page.attr(box, "hidden") is not None
    assert page.service.status(A)["state"] == "stopped"
    assert page.console_errors() == []


def test_unload_with_the_button(page: Page) -> None:
    unload = page.find(f"{page.card(B)} button.unload")
    assert unload.get_attribute("aria-label") == f"Unload {B}"
    unload.click()
    page.browser.wait(f"{B} stopped", lambda: page.badge(B) == "stopped", timeout=60)
    assert page.service.status(B)["state"] == "stopped"
    badges = "return [...document.querySelectorAll('article .badge')].map((b) => b.dataset.state);"
    assert page.text("#running-count") == "0", page.browser.js(badges)
    assert page.attr("#running", "data-full") is None
    assert page.console_errors() == []


def test_every_control_has_a_name_and_a_label(page: Page) -> None:
    unnamed = page.browser.js(
        "return [...document.querySelectorAll('button, a[href]')]"
        "  .filter((n) => !(n.getAttribute('aria-label') || n.textContent.trim()))"
        "  .map((n) => n.outerHTML);"
    )
    assert unnamed == []
    unlabeled = page.browser.js(
        "return [...document.querySelectorAll('input, select')]"
        "  .filter((n) => n.labels.length === 0 && !n.getAttribute('aria-label'))"
        "  .map((n) => n.id || n.outerHTML);"
    )
    assert unlabeled == []


def test_phone_width_fits(page: Page) -> None:
    page.browser.viewport(390, 844, mobile=True)
    try:
        for view, name in (("#models", "models"), (f"#monitor/{A}", "monitoring")):
            page.goto(view)
            page.browser.wait(
                f"{name} view laid out",
                lambda: page.browser.js("return document.documentElement.scrollWidth;") <= 390,
            )
            page.browser.screenshot(f"{name}-phone-390")
    finally:
        page.browser.viewport(1280, 800)
    assert page.console_errors() == []


def test_nothing_on_the_console_all_along(page: Page) -> None:
    page.browser.drain_console()
    kinds = {str(e.get("source")) for e in page.browser.console if e.get("level") == "SEVERE"}
    # What the steps allowed on purpose came only from the network, never from a script
    # or a Content-Security-Policy violation.
    assert kinds <= {"network"}, page.browser.console
    policy = [e for e in page.browser.console if "Content Security Policy" in str(e["message"])]
    assert policy == []
    _, status = http_json("GET", page.service.api + "/status")
    assert status["running"] == 0
