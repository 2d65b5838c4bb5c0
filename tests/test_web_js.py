"""The page's pure modules (format.js, series.js, status.js, memory.js), run in the real
headless Chromium.

No llama-server needed: the service runs with no models, and each test imports a
module into a page of that origin and returns what the functions give.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from browser import Browser, page_of_empty_service

pytestmark = [pytest.mark.browser]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """Chromium on the page of a service with no models."""
    with page_of_empty_service(tmp_path_factory.mktemp("webjs")) as result:
        yield result


def run(browser: Browser, module: str, body: str) -> Any:
    """Import /ui/js/<module> as `m` and return the value of `body` (a JS expression)."""
    script = (
        "const done = arguments[arguments.length - 1];"
        f"import('/ui/js/{module}').then((m) => done({body}), (e) => done('error: ' + e));"
    )
    return browser.driver.execute_async_script(script)


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        ("m.count(987)", "987"),
        ("m.count(1234)", "1.2k"),
        ("m.count(34567)", "34.6k"),
        ("m.count(123456)", "123k"),
        ("m.count(1234567)", "1.2M"),
        ("m.count(null)", "\u2013"),
        ("m.bytes(241e6)", "241 MB"),
        ("m.bytes(5.1e9)", "5.1 GB"),
        ("m.bytes(512)", "512 B"),
        ("m.rate(12.34)", "12.3 tok/s"),
        ("m.rate(0)", "0 tok/s"),
        ("m.rate(145.6)", "146 tok/s"),
        ("m.ms(4.23)", "4.2 ms"),
        ("m.ms(83.2)", "83 ms"),
        ("m.ms(1234)", "1.2 s"),
        ("m.ms(null)", "\u2013"),
        ("m.seconds(0.085)", "85 ms"),
        ("m.percent(0.0423)", "4.2%"),
        ("m.percent(0.37)", "37%"),
        ("m.percent(0)", "0%"),
        ("m.duration(45)", "45 s"),
        ("m.duration(192)", "3 min 12 s"),
        ("m.duration(7500)", "2 h 05 min"),
        ("m.duration(300000)", "3 d 11 h"),
        ("m.outOf(1234, 4096)", "1.2k / 4.1k"),
        ("m.ago(100, 112)", "12 s ago"),
        ("m.ago(null, 112)", "never"),
    ],
)
def test_numbers_are_formatted_for_people(browser: Browser, call: str, expected: str) -> None:
    assert run(browser, "format.js", call) == expected


def test_window_keeps_sixty_seconds_of_live_samples(browser: Browser) -> None:
    body = (
        "(() => { const w = new m.SampleWindow(60);"
        "  for (let t = 0; t < 600; t++) w.push({timestamp: 1000 + t, v: t});"
        "  const again = w.push({timestamp: 1500, v: -1});"
        "  return [w.length, w.samples[0].timestamp, w.newest.timestamp, again]; })()"
    )
    assert run(browser, "series.js", body) == [61, 1539, 1599, False]


def test_history_fill_merges_without_duplicates(browser: Browser) -> None:
    body = (
        "(() => { const w = new m.SampleWindow(60);"
        "  for (let t = 110; t < 120; t++) w.push({timestamp: t, v: 'live'});"
        "  const history = Array.from({length: 120}, (_, i) => ({timestamp: i, v: 'history'}));"
        "  w.fill(history);"
        "  const xs = w.columns([(s) => s.v]);"
        "  return [w.length, xs[0][0], xs[0][xs[0].length - 1], xs[1][xs[1].length - 1]]; })()"
    )
    # 59..119 (60 s back from the newest, both ends in): the history fills in before
    # the live samples, which win on equal times.
    assert run(browser, "series.js", body) == [61, 59, 119, "live"]


def test_reconnect_backoff_doubles_to_a_ceiling(browser: Browser) -> None:
    body = "[0, 1, 2, 3, 4, 5, 10].map((n) => m.backoffDelay(n, () => 0.5))"
    assert run(browser, "series.js", body) == [0.5, 1, 2, 4, 8, 10, 10]
    jitter = "[m.backoffDelay(3, () => 0), m.backoffDelay(3, () => 1)]"
    assert run(browser, "series.js", jitter) == pytest.approx([3.2, 4.8])


def test_a_status_answer_older_than_the_events_does_not_undo_them(browser: Browser) -> None:
    # The page held A stopped (an event at t=20) when a /status answer taken at t=15 came
    # back with A still stopping: A stays stopped. B's answer is newer and wins, C's
    # equal `since` is a field update and wins, D is gone from the service.
    body = (
        "(() => {"
        "  const held = new Map(["
        "    ['A', {st: {model: 'A', state: 'stopped', since: 20}, at: 1}],"
        "    ['B', {st: {model: 'B', state: 'starting', since: 10}, at: 1}],"
        "    ['C', {st: {model: 'C', state: 'ready', since: 5, restarts: 0}, at: 1}],"
        "    ['D', {st: {model: 'D', state: 'ready', since: 5}, at: 1}]]);"
        "  const snapshot = ["
        "    {model: 'A', state: 'stopping', since: 15},"
        "    {model: 'B', state: 'ready', since: 12},"
        "    {model: 'C', state: 'ready', since: 5, restarts: 1},"
        "    {model: 'E', state: 'stopped', since: 1}];"
        "  const merged = m.mergeStatuses(held, snapshot, 99);"
        "  return [...merged].map(([name, e]) => [name, e.st.state, e.at, e.st.restarts ?? null]);"
        "})()"
    )
    assert run(browser, "status.js", body) == [
        ["A", "stopped", 1, None],
        ["B", "ready", 99, None],
        ["C", "ready", 99, 1],
        ["E", "stopped", 99, None],
    ]
    stale = "[m.isStale(undefined, {since: 1}), m.isStale({st: {since: 2}}, {since: 1})]"
    assert run(browser, "status.js", stale) == [False, True]


def test_only_the_newest_status_read_is_applied(browser: Browser) -> None:
    # Reads 1, 2 and 3 are sent in that order; 3 answers first, then 1, then 2.
    body = (
        "(() => { const l = new m.Latest(); const [a, b, c] = [l.send(), l.send(), l.send()];"
        "  return [l.accept(c), l.accept(a), l.accept(b), l.accept(l.send())]; })()"
    )
    assert run(browser, "status.js", body) == [True, False, False, True]


def test_a_reload_asked_for_meanwhile_runs_after_the_one_in_flight(browser: Browser) -> None:
    # The first run waits on a gate; three calls made meanwhile share one more run, which
    # starts only after the first has ended (so it sees what changed meanwhile).
    body = """(async () => {
      const log = [];
      let open;
      const gate = new Promise((resolve) => { open = resolve; });
      let n = 0;
      const reload = m.oneAtATime(async () => {
        const run = ++n;
        log.push(`start ${run}`);
        if (run === 1) await gate;
        log.push(`end ${run}`);
        return run;
      });
      const first = reload();
      const later = [reload(), reload(), reload()];
      await Promise.resolve();
      log.push("gate");
      open();
      const results = await Promise.all([first, ...later]);
      const after = await reload();  // nothing in flight: runs at once
      return [log, results, after];
    })()"""
    assert run(browser, "status.js", body) == [
        ["start 1", "gate", "end 1", "start 2", "end 2", "start 3", "end 3"],
        [1, 2, 2, 2],
        3,
    ]


def test_module_scripts_load_under_the_policy(browser: Browser) -> None:
    policy = browser.js("return fetch('/').then((r) => r.headers.get('content-security-policy'));")
    assert "script-src 'self'" in policy
    assert [e for e in browser.drain_console() if e.get("level") == "SEVERE"] == []


def test_memory_texts_and_bar_segments(browser: Browser) -> None:
    gb = 1_000_000_000
    assert run(browser, "memory.js", f"m.needsText({{estimate_bytes: {1.2 * gb}}})") == (
        "needs 1.2 GB"
    )
    both = f"m.needsText({{estimate_bytes: {1.2 * gb}, reported_bytes: {1.3 * gb}}})"
    assert run(browser, "memory.js", both) == "needs 1.2 GB (last load 1.3 GB)"
    assert run(browser, "memory.js", "m.needsText(null)") == "\u2013"
    device = (
        f"{{budget_bytes: {4 * gb}, reserved_bytes: {3 * gb}, models: {{a: {gb}, b: {2 * gb}}}}}"
    )
    assert run(browser, "memory.js", f"m.segments({device})") == [
        {"model": "b", "bytes": 2 * gb, "share": 0.5},
        {"model": "a", "bytes": gb, "share": 0.25},
    ]
    assert run(browser, "memory.js", f"m.summary('cpu', {device})") == (
        "cpu: 3 GB of 4 GB reserved"
    )


@pytest.mark.parametrize(
    ("outcome", "expected"),
    [
        (
            {"ok": True, "added": ["c"], "removed": ["a", "b"], "restarted": ["d"]},
            "Config reloaded: added c; removed a, b; restarting d",
        ),
        (
            {"ok": True, "added": [], "changed_live": ["a"], "settings_live": ["max_parallel"]},
            "Config reloaded: changed a; settings max_parallel",
        ),
        ({"ok": True, "added": [], "removed": []}, "Config reloaded: no change"),
        (
            {"ok": False, "error": {"message": "c.yaml: listen.port: needs a service restart"}},
            "Config reload failed, the running config stays: c.yaml: listen.port: needs a "
            "service restart",
        ),
    ],
)
def test_reload_text(browser: Browser, outcome: dict[str, Any], expected: str) -> None:
    import json

    assert run(browser, "format.js", f"m.reloadText({json.dumps(outcome)})") == expected
