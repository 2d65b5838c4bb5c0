"""The Requests view in a real headless Chromium, all real behind it: the service as a
process with the request log, two names for the real gemma model, and the official
`openai` client sending the requests. The view fills in live over the WebSocket (a
stream shows up in flight before it ends, and ends as the client leaves), its model
and status filters work, and a cold request's detail shows its load on the timeline.
Screenshots go to artifacts/screenshots/ (docs/page-requests*.png are taken from them).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import Browser, chromium, require_chromium, severe
from service_proc import ServiceProcess, start_service

try:
    import openai
except ImportError:  # pragma: no cover - installed by scripts/bootstrap.sh --test
    openai = None  # type: ignore[assignment]

pytestmark = [pytest.mark.real, pytest.mark.browser]

A, B = "gemma-a", "gemma-b"
PROMPT = "Tell me a long story about a lighthouse keeper and the sea."

ROWS_JS = """
return [...document.querySelectorAll('#req-rows tr')].map((tr) => ({
  id: tr.dataset.id,
  state: tr.dataset.state,
  model: tr.querySelector('[data-col=model]').textContent,
  status: tr.querySelector('[data-col=status]').textContent,
  title: tr.querySelector('[data-col=status]').title,
}));
"""


@dataclass
class View:
    service: ServiceProcess
    browser: Browser
    client: openai.OpenAI

    def rows(self) -> list[dict[str, str]]:
        """The table's rows as the page shows them, top first."""
        found: list[dict[str, str]] = self.browser.js(ROWS_JS)
        return found

    def choose(self, select_id: str, value: str) -> None:
        """Pick an option as a user would (the change event included)."""
        from selenium.webdriver.support.ui import Select

        Select(self.browser.driver.find_element("id", select_id)).select_by_value(value)

    def wait_rows(self, what: str, check: Any, timeout: float = 60.0) -> list[dict[str, str]]:
        """Wait until check(rows) holds; returns the rows."""

        def rows_if() -> list[dict[str, str]] | None:
            rows = self.rows()
            return rows if check(rows) else None

        result: list[dict[str, str]] = self.browser.wait(what, rows_if, timeout)
        return result


@pytest.fixture(scope="module")
def view(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[View]:
    """The service (models gemma-a and gemma-b, cap 2), Chromium on #requests."""
    require_chromium()
    if openai is None:
        pytest.fail("the openai package is not installed (scripts/bootstrap.sh --test)")
    tmp = tmp_path_factory.mktemp("web-requests")
    model = {"path": str(gemma_gguf), "ctx_size": 2048, "parallel": 2, "args": ["--threads", "2"]}
    config = {
        "llama_server": str(llama_server_bin),
        "max_parallel": 2,
        "stop_grace": 10,
        "models": [{"name": A, **model}, {"name": B, **model}],
    }
    service = start_service(tmp / "service", config)
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)
    try:
        with chromium(tmp / "chromium", width=1360, height=900) as browser:
            browser.driver.get(service.url + "/#requests")
            browser.wait(
                "the requests list fetched",
                lambda: browser.js(
                    "return document.getElementById('view-requests').dataset.fetches"
                ),
            )
            yield View(service, browser, client)
    finally:
        client.close()
        code = service.stop()
    assert code == 0, service.log()[-3000:]


def test_requests_fill_in_live_and_the_filters_work(view: View) -> None:
    assert view.rows() == []
    assert view.browser.js("return document.getElementById('req-empty').hidden") is False
    # A cold request: it loads gemma-a. Its row appears without any reload of the page.
    view.client.chat.completions.create(
        model=A, messages=[{"role": "user", "content": PROMPT}], max_tokens=4
    )
    rows = view.wait_rows("gemma-a's request, ended", lambda rs: any(
        r["model"] == A and r["status"] == "200" for r in rs
    ))  # fmt: skip
    cold = next(r for r in rows if r["model"] == A)["id"]

    # A long stream on gemma-b: in flight on the page while it runs.
    stream = view.client.chat.completions.create(
        model=B,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=900,
        stream=True,
        extra_body={"ignore_eos": True},
    )
    chunks = iter(stream)
    next(c for c in chunks if c.choices and c.choices[0].delta.content)
    rows = view.wait_rows("gemma-b's stream, in flight", lambda rs: any(
        r["model"] == B and r["state"] == "in_flight" and r["status"] == "in flight" for r in rs
    ))  # fmt: skip
    streaming = next(r for r in rows if r["model"] == B)["id"]

    # Refusals: embeddings on a chat model (400 at once), an unknown model (404).
    with pytest.raises(openai.BadRequestError):
        view.client.embeddings.create(model=A, input="the sea")
    with pytest.raises(openai.NotFoundError):
        view.client.chat.completions.create(
            model="nope", messages=[{"role": "user", "content": "hi"}], max_tokens=1
        )
    rows = view.wait_rows("the 400 and the 404", lambda rs: {"400", "404"} <= {
        r["status"] for r in rs
    })  # fmt: skip
    refused = next(r for r in rows if r["status"] == "400")
    assert refused["model"] == A and "--embeddings" in refused["title"]  # the message, on hover
    view.browser.screenshot("page-requests")

    # Filters: by status, by model, both; each keeps only what matches.
    view.choose("req-status", "in_flight")
    view.wait_rows("only the stream", lambda rs: [r["id"] for r in rs] == [streaming])
    view.choose("req-status", "4xx")
    rows = view.wait_rows("only the refusals", lambda rs: len(rs) == 2 and all(
        r["status"].startswith("4") for r in rs
    ))  # fmt: skip
    view.choose("req-model", A)
    view.wait_rows("gemma-a's 400 only", lambda rs: [(r["model"], r["status"]) for r in rs] == [
        (A, "400")
    ])  # fmt: skip
    view.choose("req-status", "")
    view.wait_rows("gemma-a's two", lambda rs: len(rs) == 2 and {r["model"] for r in rs} == {A})
    view.choose("req-model", B)
    view.wait_rows("gemma-b's stream", lambda rs: [r["id"] for r in rs] == [streaming])
    view.choose("req-model", "")
    view.wait_rows("all four", lambda rs: len(rs) == 4)

    # The client leaves the stream: its row ends live, counted as 499.
    stream.close()
    view.wait_rows("the stream ended as 499", lambda rs: any(
        r["id"] == streaming and r["state"] == "done" and r["status"].startswith("499")
        for r in rs
    ))  # fmt: skip

    # The cold request's detail: its load on the timeline, then the end.
    detail = open_detail(view, cold)
    assert detail["hash"] == f"#requests/{cold}"
    assert "load" in detail["phases"] and detail["phases"][-1] == "answer"
    assert detail["reached"] == ["arrived", "load", "end"]
    assert detail["facts"]["Triggered a load"] == "yes"
    assert detail["facts"]["Status"] == "200" and detail["facts"]["Model"] == A
    # The stream's: load, prompt until the first token, generation until the client left.
    detail = open_detail(view, streaming)
    assert detail["phases"] == ["load", "prompt", "generate"]
    assert detail["reached"] == ["arrived", "load", "first token", "end"]
    assert detail["facts"]["Status"] == "499 client closed"
    view.browser.screenshot("page-requests-detail")


def open_detail(view: View, request_id: str) -> dict[str, Any]:
    """Click the request's row; its detail as shown: phases, steps reached, facts, address."""
    view.browser.js(
        "document.querySelector(`#req-rows tr[data-id='${arguments[0]}'] .req-open`).click();",
        request_id,
    )
    found: dict[str, Any] = view.browser.wait(
        f"the detail of request {request_id}",
        lambda: view.browser.js(
            "const d = document.getElementById('req-detail');"
            "return !d.hidden && d.dataset.id === arguments[0] ? {"
            " phases: [...d.querySelectorAll('.tl-phase')].map((p) => p.dataset.phase),"
            " reached: [...d.querySelectorAll('#req-steps li[data-reached=true]')]"
            "   .map((li) => li.dataset.step),"
            " hash: location.hash,"
            " facts: Object.fromEntries([...d.querySelectorAll('#req-fields div')]"
            "   .map((x) => [x.firstChild.textContent, x.lastChild.textContent]))} : null;",
            request_id,
        ),
    )
    return found


def test_a_reload_keeps_the_log_a_phone_fits_and_the_console_stays_clean(view: View) -> None:
    before = {r["id"] for r in view.rows()}
    view.browser.driver.refresh()
    view.wait_rows("the same requests after a reload", lambda rs: {r["id"] for r in rs} == before)
    # The detail opens from its address too (a link to one request).
    assert view.browser.js("return document.getElementById('req-detail').hidden") is False
    # A phone: the page fits, and each row still says when, which model, how it ended.
    view.browser.viewport(390, 844, mobile=True)
    shown = view.browser.wait(
        "the narrow layout",
        lambda: view.browser.js(
            "const th = [...document.querySelectorAll('.req-table th')]"
            "  .filter((x) => x.offsetParent !== null).map((x) => x.dataset.col);"
            "const box = document.querySelector('.req-scroll');"
            "return document.documentElement.scrollWidth <= 390 && th.length < 9"
            "  && box.scrollWidth <= box.clientWidth ? th : null;"
        ),
    )
    assert shown == ["arrived", "model", "status", "duration"]
    view.browser.screenshot("page-requests-phone")
    assert severe(view.browser.drain_console()) == []
