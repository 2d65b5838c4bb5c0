"""The service's watching path alone, as its own process, for bench/exporter_overhead.py.

Runs what the service runs per watched instance (MetricsStore, Poller at 1 Hz,
the collector) and serves /metrics the way api.metrics does, plus /bench-stats
(polls published, each /metrics render's wall and CPU milliseconds, poll errors).
It uses only APIs that main had before issue 10, so the same script measures the
baseline tree and the current one (PYTHONPATH picks the tree). Prints its port.

    PYTHONPATH=TREE python bench/_watcher.py TARGETS_JSON   # [[pid, port], ...]
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from llama_exporter.config.settings import Config, PollConfig
from llama_exporter.metrics.collector import build_registry
from llama_exporter.metrics.exposition import render
from llama_exporter.monitoring.poller import Poller
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.states import InstanceCounters, InstanceStatus, State


async def serve(targets: list[tuple[int, int]]) -> None:
    """Watch every (pid, port) target and serve /metrics until SIGTERM."""
    statuses = [
        InstanceStatus(f"m{i:03d}", State.READY, 0.0, pid=pid, port=port, ready_at=0.0)
        for i, (pid, port) in enumerate(targets)
    ]
    store = MetricsStore()
    polls = 0

    def count(_: object) -> None:
        nonlocal polls
        polls += 1

    store.subscribe(count)
    registry = build_registry(
        store=store,
        statuses=lambda: statuses,
        counters=lambda _: InstanceCounters(),
        models=lambda: [],
        running=lambda: len(statuses),
        cap=lambda: len(statuses),
    )
    renders: list[tuple[float, float]] = []  # (wall ms, CPU ms)

    async def metrics(_: web.Request) -> web.Response:
        started, cpu = time.perf_counter(), time.thread_time()
        body = render(registry)
        renders.append(((time.perf_counter() - started) * 1e3, (time.thread_time() - cpu) * 1e3))
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def stats(_: web.Request) -> web.Response:
        reasons: dict[str, int] = {}
        for (_model, endpoint, reason), n in store.poll_errors().items():
            reasons[f"{endpoint}/{reason}"] = reasons.get(f"{endpoint}/{reason}", 0) + n
        errors = sum(reasons.values())
        return web.json_response(
            {"polls": polls, "renders": renders, "errors": errors, "reasons": reasons}
        )

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/bench-stats", stats)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    poller = Poller(Config(source=None, poll=PollConfig(interval=1.0, timeout=0.8)), store)
    for status in statuses:
        poller.on_status(status)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print(runner.addresses[0][1], flush=True)
    await stop.wait()
    await poller.close()
    await runner.cleanup()


if __name__ == "__main__":
    pairs = json.loads(Path(sys.argv[1]).read_text())
    asyncio.run(serve([(int(pid), int(port)) for pid, port in pairs]))
