"""The Requests view's pure module (requestlog.js) in the real headless Chromium: the
filters, the list that events and fetches update, a request's timeline.

No llama-server needed: the service runs with no models, and each test imports the
module into a page of that origin (as test_web_js.py does for format.js).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import Browser, page_of_empty_service

pytestmark = [pytest.mark.browser]

BASE = {
    "id": "r1",
    "arrived": 1000.0,
    "model": "a",
    "endpoint": "/v1/chat/completions",
    "stream": False,
    "client": "127.0.0.1",
    "state": "done",
    "status": 200,
    "error_type": None,
    "error_message": None,
    "finish_reason": "length",
    "prompt_tokens": 10,
    "completion_tokens": 5,
    "queue_wait_s": 0.0,
    "load_wait_s": 0.0,
    "triggered_load": False,
    "evicted": [],
    "ttft_s": None,
    "duration_s": 0.5,
    "tokens_per_second": 10.0,
}


def rec(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium on the page of a service with no models."""
    with page_of_empty_service(tmp_path_factory.mktemp("webreq")) as result:
        yield result


def run(browser: Browser, body: str, *args: Any) -> Any:
    """Import requestlog.js as `m` and return the value of `body` (args as `a`)."""
    script = (
        "const done = arguments[arguments.length - 1]; const a = arguments[0];"
        "import('/ui/js/requestlog.js').then("
        f"(m) => {{ try {{ done({body}); }} catch (e) {{ done('error: ' + e); }} }},"
        " (e) => done('error: ' + e));"
    )
    return browser.driver.execute_async_script(script, list(args))


@pytest.mark.parametrize(
    ("record", "filt", "expected"),
    [
        (rec(), {}, True),
        (rec(), {"model": "a"}, True),
        (rec(), {"model": "b"}, False),
        (rec(), {"status": "2xx"}, True),
        (rec(), {"status": "200"}, True),
        (rec(), {"status": "5xx"}, False),
        (rec(status=503), {"status": "5xx"}, True),
        (rec(status=404, model=""), {"status": "4xx"}, True),
        (rec(status=499), {"status": "4xx"}, True),
        (rec(state="in_flight", status=None), {"status": "in_flight"}, True),
        (rec(state="in_flight", status=None), {"status": "2xx"}, False),
        (rec(), {"status": "in_flight"}, False),
        (rec(model="b", status=500), {"model": "b", "status": "5xx"}, True),
    ],
)
def test_matches(
    browser: Browser, record: dict[str, Any], filt: dict[str, str], expected: bool
) -> None:
    assert run(browser, "m.matches(a[0], a[1])", record, filt) is expected


def test_the_list_orders_merges_and_keeps_ended_records(browser: Browser) -> None:
    out = run(
        browser,
        """(() => {
          const l = new m.RequestList(3);
          l.upsert(a[0]); l.upsert(a[1]); l.upsert(a[2]);
          const order = l.view({}).map((r) => r.id);
          l.upsert(a[3]);  // the end of r2 ...
          l.merge([a[4]]);  // ... is not undone by a fetch that still saw it running
          const r2 = l.get("r2").state;
          const inFlight = l.view({status: "in_flight"}).map((r) => r.id);
          for (let i = 0; i < 10; i++) l.upsert({...a[0], id: `x${i}`, arrived: 2000 + i});
          return {order, r2, inFlight, size: l.size, newest: l.view({}, 2).map((r) => r.id)};
        })()""",
        rec(id="r1", arrived=1.0),
        rec(id="r2", arrived=3.0, state="in_flight", status=None),
        rec(id="r3", arrived=2.0, model="b"),
        rec(id="r2", arrived=3.0, status=200),
        rec(id="r2", arrived=3.0, state="in_flight", status=None),
    )
    assert out["order"] == ["r2", "r3", "r1"]
    assert out["r2"] == "done"
    assert out["inFlight"] == []
    assert out["size"] == 6  # bounded at twice the rows: the oldest ended ones went
    assert out["newest"] == ["x9", "x8"]


def test_timeline_of_a_cold_streamed_request(browser: Browser) -> None:
    t = run(
        browser,
        "m.timeline(a[0], 0)",
        rec(queue_wait_s=0.5, load_wait_s=1.5, ttft_s=2.5, duration_s=4.0, stream=True),
    )
    assert t["total"] == 4.0 and t["running"] is False
    assert [(p["kind"], p["from"], p["to"]) for p in t["phases"]] == [
        ("queued", 0, 0.5),
        ("load", 0.5, 2.0),
        ("prompt", 2.0, 2.5),
        ("generate", 2.5, 4.0),
    ]
    steps = {s["step"]: s["at"] for s in t["steps"]}
    assert steps == {"arrived": 0, "queued": 0, "load": 0.5, "first token": 2.5, "end": 4.0}


def test_timeline_of_a_warm_whole_request_and_of_one_in_flight(browser: Browser) -> None:
    warm = run(browser, "m.timeline(a[0], 0)", rec(duration_s=0.8))
    assert [p["kind"] for p in warm["phases"]] == ["answer"]
    steps = {s["step"]: s["at"] for s in warm["steps"]}
    assert steps["queued"] is None and steps["load"] is None and steps["first token"] is None
    running = run(
        browser,
        "m.timeline(a[0], 1003)",
        rec(state="in_flight", status=None, duration_s=None, load_wait_s=1.0, ttft_s=None),
    )
    assert running["running"] is True and running["total"] == 3.0
    assert [(p["kind"], p["to"]) for p in running["phases"]] == [("load", 1.0), ("running", 3.0)]
    assert {s["step"]: s["at"] for s in running["steps"]}["end"] is None


@pytest.mark.parametrize(
    ("record", "text", "cls"),
    [
        (rec(), "200", "2xx"),
        (rec(state="in_flight", status=None), "in flight", "in_flight"),
        (rec(status=499), "499 client closed", "4xx"),
        (rec(status=503, error_type="server_error"), "503", "5xx"),
    ],
)
def test_status_text_and_class(
    browser: Browser, record: dict[str, Any], text: str, cls: str
) -> None:
    assert run(browser, "[m.statusText(a[0]), m.statusClass(a[0])]", record) == [text, cls]


def test_query(browser: Browser) -> None:
    assert run(browser, "m.query({model: 'a b', status: '5xx'}, 50)") == (
        "?limit=50&model=a+b&status=5xx"
    )
    assert run(browser, "m.query({model: '', status: ''})") == "?limit=100"
