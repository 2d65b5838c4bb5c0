"""What the operator page costs the browser: first render with 8 models, and JS heap,
DOM size and chart points over 10 minutes at 1 Hz with 4 models.

Runs `llama-exporter serve` with fake llama-server models (every slot generating,
so every chart moves), and Debian's headless Chromium through Selenium. Heap figures
come from the DevTools protocol after a forced garbage collection, so they show what
the page keeps, not what it has not collected yet.

    .venv/bin/python bench/page_cost.py [--minutes 10] [--every 30] [--runs 7]

First render: from navigation start to the page's `llama-exporter:first-render`
mark (every model card on screen), against a baseline measured in the same
browser, interleaved: navigating to the service's /healthz (a bare JSON document).
The HTTP cache is off, so every run loads every file.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import Browser, chromium, find_chromium  # noqa: E402
from service_proc import ServiceProcess, http_json, start_service  # noqa: E402

from llama_exporter.testing.fake_llama import write_executable  # noqa: E402
from llama_exporter.testing.gguf_writer import write_minimal_gguf  # noqa: E402

FAKE_TOKENS_PER_SECOND = 20
FIRST_RENDER_GOAL_MS = 1000.0


@contextlib.contextmanager
def service(tmp: Path, count: int) -> Iterator[ServiceProcess]:
    """The service with `count` fake models, all started and ready."""
    tmp.mkdir(parents=True, exist_ok=True)
    models = []
    for i in range(count):
        path = write_minimal_gguf(tmp / f"m{i}.gguf")
        models.append(
            {
                "name": f"m{i}",
                "path": str(path),
                "ctx_size": 4096,
                "parallel": 2,
                "autostart": True,
                "args": ["--fake-tokens-per-second", str(FAKE_TOKENS_PER_SECOND)],
            }
        )
    config = {
        "llama_server": str(write_executable(tmp)),
        "max_parallel": count,
        "poll": {"interval": 1.0},
        "models": models,
    }
    svc = start_service(tmp / "service", config)
    try:
        for model in models:
            svc.wait_state(str(model["name"]), {"ready"}, timeout=60)
        yield svc
    finally:
        svc.stop()


class Load(threading.Thread):
    """Keeps both slots of every model generating until stopped."""

    def __init__(self, svc: ServiceProcess, count: int) -> None:
        super().__init__(daemon=True)
        self.ports = [int(svc.status(f"m{i}")["port"]) for i in range(count)]
        self.auth = svc.instance_auth()  # the instances require the service's key
        self.halt = threading.Event()
        self.requests = 0

    def run(self) -> None:
        workers = [
            threading.Thread(target=self._slot, args=(port,), daemon=True)
            for port in self.ports
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()

    def _slot(self, port: int) -> None:
        body = {"prompt": "a b c d e f g h", "n_predict": 4 * FAKE_TOKENS_PER_SECOND}
        while not self.halt.is_set():
            with contextlib.suppress(OSError, urllib.error.URLError):
                url = f"http://127.0.0.1:{port}/completion"
                http_json("POST", url, body, timeout=30, headers=self.auth)
                self.requests += 1


def first_render(browser: Browser, url: str, runs: int) -> tuple[list[float], list[float]]:
    """(page ms, baseline ms) per run, interleaved."""
    driver = browser.driver
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    page: list[float] = []
    base: list[float] = []
    for _ in range(runs):
        driver.get("about:blank")
        driver.get(url + "/healthz")
        base.append(
            browser.wait(
                "baseline load",
                lambda: browser.js(
                    "const n = performance.getEntriesByType('navigation')[0];"
                    "return n && n.loadEventEnd > 0 ? n.loadEventEnd : null;"
                ),
            )
        )
        driver.get("about:blank")
        driver.get(url + "/")
        mark = browser.wait(
            "first render",
            lambda: browser.js(
                "const m = performance.getEntriesByName('llama-exporter:first-render')[0];"
                "return m ? [m.startTime, document.querySelectorAll('article.model').length]"
                "  : null;"
            ),
        )
        assert mark[1] >= 8, f"first render showed {mark[1]} model cards"
        page.append(float(mark[0]))
    driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    return page, base


@dataclass(frozen=True)
class Sample:
    """One look at the page."""

    seconds: float
    heap_used_mb: float
    heap_total_mb: float
    dom_nodes: int
    listeners: int
    points: tuple[int, int, int]
    newest_age: float  # seconds between now and the newest sample on the charts
    model: str
    timing_entries: int  # the browser's resource timing buffer (one entry per request)


def look(browser: Browser, began: float) -> Sample:
    """Collect garbage, then read the heap, DOM counters and chart points."""
    driver = browser.driver
    driver.execute_cdp_cmd("HeapProfiler.collectGarbage", {})
    heap = driver.execute_cdp_cmd("Runtime.getHeapUsage", {})
    counters = driver.execute_cdp_cmd("Performance.getMetrics", {})["metrics"]
    metrics = {m["name"]: m["value"] for m in counters}
    info = browser.js(
        "const p = (id) => Number(document.getElementById(id).dataset.points || 0);"
        "const v = document.getElementById('view-monitor');"
        "return [p('chart-tps'), p('chart-ctx'), p('chart-slots'),"
        "        Number(v.dataset.newest || 0), document.getElementById('monitor-model').value,"
        "        performance.getEntriesByType('resource').length];"
    )
    return Sample(
        seconds=time.monotonic() - began,
        heap_used_mb=heap["usedSize"] / 1e6,
        heap_total_mb=heap["totalSize"] / 1e6,
        dom_nodes=int(metrics.get("Nodes", 0)),
        listeners=int(metrics.get("JSEventListeners", 0)),
        points=(int(info[0]), int(info[1]), int(info[2])),
        newest_age=time.time() - float(info[3]) if info[3] else float("nan"),
        model=str(info[4]),
        timing_entries=int(info[5]),
    )


def soak(browser: Browser, url: str, count: int, minutes: float, every: float) -> list[Sample]:
    """Keep the monitoring view open for `minutes`, switching model once a minute."""
    driver = browser.driver
    driver.execute_cdp_cmd("Performance.enable", {})
    driver.get(url + "/#monitor/m0")
    browser.wait("charts", lambda: browser.js("return document.querySelector('.u-wrap') !== null;"))
    began = time.monotonic()
    samples = [look(browser, began)]
    # Switches fall between looks (at 75 s, 135 s, ...), so no look lands on a refill.
    next_look, next_switch, switches = began + every, began + 60 + every / 2, 0
    while next_look <= began + minutes * 60 + 0.5:
        time.sleep(max(0.0, min(next_look, next_switch) - time.monotonic()))
        if time.monotonic() >= next_switch:  # exercise refills: the next model once a minute
            switches += 1
            next_switch += 60
            browser.js("window.location.hash = arguments[0];", f"#monitor/m{switches % count}")
        if time.monotonic() >= next_look:
            next_look += every
            s = look(browser, began)
            samples.append(s)
            print(
                f"  {s.seconds:6.0f} s  heap {s.heap_used_mb:6.2f} MB  nodes {s.dom_nodes:5d}  "
                f"points {s.points}  {s.model}",
                file=sys.stderr,
                flush=True,
            )
    return samples


def main(argv: list[str] | None = None) -> int:
    """Run both measurements and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the soak")
    parser.add_argument("--every", type=float, default=30.0, help="seconds between looks")
    parser.add_argument("--models", type=int, default=4, help="models during the soak")
    parser.add_argument("--render-models", type=int, default=8, help="models for first render")
    parser.add_argument("--runs", type=int, default=7, help="first-render runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    args = parser.parse_args(argv)
    if find_chromium() is None:
        print("needs chromium and chromedriver: scripts/bootstrap.sh --test", file=sys.stderr)
        return 2
    out: dict[str, Any] = {}
    with TemporaryDirectory(prefix="page-cost-") as name:
        tmp = Path(name)
        with (
            service(tmp / "render", args.render_models) as svc,
            chromium(tmp / "chromium-render") as browser,
        ):
            browser.driver.get(svc.url + "/")  # warm the browser itself once
            page, base = first_render(browser, svc.url, args.runs)
        out["first_render_ms"] = page
        out["baseline_ms"] = base
        print(f"first render, {args.render_models} models: done", file=sys.stderr, flush=True)
        with service(tmp / "soak", args.models) as svc:
            load = Load(svc, args.models)
            load.start()
            try:
                with chromium(tmp / "chromium-soak") as browser:
                    samples = soak(browser, svc.url, args.models, args.minutes, args.every)
            finally:
                load.halt.set()
                load.join(timeout=60)
        out["soak"] = [s.__dict__ for s in samples]
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    print(report(args, page, base, samples, load.requests))
    return 0


def report(
    args: argparse.Namespace,
    page: list[float],
    base: list[float],
    samples: list[Sample],
    requests: int,
) -> str:
    """The figures as text."""
    load = os.getloadavg()[0]
    med_page, med_base = statistics.median(page), statistics.median(base)
    lines = [
        f"host: {os.cpu_count()} CPUs, load average {load:.1f}",
        f"first render with {args.render_models} models (cache off, {args.runs} interleaved runs):",
        f"  page  median {med_page:.0f} ms, max {max(page):.0f} ms "
        f"({med_page / FIRST_RENDER_GOAL_MS:.2f}x the {FIRST_RENDER_GOAL_MS:.0f} ms goal)",
        f"  /healthz baseline median {med_base:.0f} ms, max {max(base):.0f} ms; "
        f"page / baseline {med_page / med_base:.1f}x",
        f"soak: {args.models} models, every slot generating ({requests} requests), "
        f"{args.minutes:g} min at 1 Hz, model switched every minute:",
        "  minute  heap used MB  DOM nodes  listeners  timing entries  chart points "
        "(tps, ctx, slots)",
    ]
    for s in samples:
        lines.append(
            f"  {s.seconds / 60:6.1f}  {s.heap_used_mb:12.2f}  {s.dom_nodes:9d}  "
            f"{s.listeners:9d}  {s.timing_entries:14d}  {s.points}"
        )
    warm = [s for s in samples if s.seconds >= 60] or samples
    first, last = warm[0], samples[-1]
    most = max(max(s.points) for s in samples)
    late = [s for s in samples if s.seconds >= 180]  # past the start-up growth
    slope = (
        statistics.linear_regression(
            [s.seconds / 60 for s in late], [s.heap_used_mb for s in late]
        ).slope
        if len(late) >= 3
        else float("nan")
    )
    lines += [
        f"  heap after GC: {first.heap_used_mb:.2f} MB at {first.seconds / 60:.1f} min, "
        f"{last.heap_used_mb:.2f} MB at {last.seconds / 60:.1f} min "
        f"(ratio {last.heap_used_mb / first.heap_used_mb:.2f}); "
        f"max {max(s.heap_used_mb for s in warm):.2f} MB; trend from minute 3 on "
        f"{slope * 1000:+.1f} kB/min (least squares)",
        f"  DOM nodes {first.dom_nodes} -> {last.dom_nodes}; listeners "
        f"{first.listeners} -> {last.listeners}",
        f"  chart points never above {most} (a 60 s window at 1 Hz holds at most 61)",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
