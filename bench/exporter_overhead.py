"""Service-side cost of watching 1, 16 and 64 llama-server instances at 1 Hz.

Spawns N fake llama-server processes (one generating slot each, so /slots has live
entries; with --idle none generates), runs MetricsStore + Poller + the collector in
this process for a while, renders /metrics once a second as a Prometheus scrape
would, and reports this process's CPU (percent of one core), RSS, and the time to
render /metrics.

    .venv/bin/python bench/exporter_overhead.py [--sizes 1 16 64] [--duration 15]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import psutil

from llama_exporter.collector import build_registry, render
from llama_exporter.config import Config, PollConfig
from llama_exporter.poller import MetricsStore, Poller
from llama_exporter.states import InstanceCounters, InstanceStatus, State

GOAL_CPU_PERCENT = 5.0  # of one core, at 64 instances
GOAL_RENDER_MS = 20.0  # per scrape, at 64 instances


@dataclass(frozen=True)
class Result:
    """Figures of one run."""

    instances: int
    cpu_percent: float  # of one core, polling + one render per second
    rss_mb: float
    render_median_ms: float
    render_p95_ms: float
    render_cpu_median_ms: float  # CPU time of one render (wall time includes waiting for a core)
    polls_per_second: float
    errors: int


def free_port() -> int:
    """A port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def spawn_fakes(count: int) -> list[tuple[subprocess.Popen[bytes], int]]:
    """Start count fake llama-server processes; returns (process, port) pairs."""
    fakes = []
    for _ in range(count):
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "llama_exporter.testing.fake_llama",
            "--port",
            str(port),
            "--metrics",
            "-m",
            "x.gguf",
            "-c",
            "4096",
            "-np",
            "2",
            "--fake-tokens-per-second",
            "20",
        ]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        fakes.append((proc, port))
    return fakes


async def wait_ready(session: aiohttp.ClientSession, port: int, limit: float = 120.0) -> None:
    """Wait for /health 200 on port."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with session.get(f"http://127.0.0.1:{port}/health") as resp:
                if resp.status == 200:
                    return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"fake llama-server on port {port} did not become ready")


async def generate(session: aiohttp.ClientSession, port: int) -> None:
    """Keep one slot busy for the whole run."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.CancelledError):
        body = {"prompt": "a b c d e f", "n_predict": 100_000}
        async with session.post(f"http://127.0.0.1:{port}/completion", json=body) as resp:
            await resp.read()


async def measure(
    count: int,
    duration: float,
    renders: int,
    window: Callable[[bool], None] | None = None,
    *,
    generating: bool = True,
) -> Result:
    """Watch count fake instances for duration seconds and return the figures.

    window(True) / window(False) mark the measured window (e.g. to run a profiler).
    """
    fakes = spawn_fakes(count)
    me = psutil.Process()
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as load:
            await asyncio.gather(*(wait_ready(load, port) for _, port in fakes))
            busy = [asyncio.create_task(generate(load, port)) for _, port in fakes if generating]
            statuses = [
                InstanceStatus(f"m{i:02d}", State.READY, 0.0, pid=p.pid, port=port)
                for i, (p, port) in enumerate(fakes)
            ]
            store = MetricsStore()
            polls = 0

            def count_poll(_: object) -> None:
                nonlocal polls
                polls += 1

            store.subscribe(count_poll)
            registry = build_registry(
                store=store,
                statuses=lambda: statuses,
                counters=lambda _: InstanceCounters(),
                models=lambda: [],
                running=lambda: count,
                cap=lambda: count,
                host="bench",  # as the service renders it: every series carries host
            )
            config = Config(source=None, poll=PollConfig(interval=1.0, timeout=0.8))
            poller = Poller(config, store)
            for status in statuses:
                poller.on_status(status)
            await asyncio.sleep(2.0)  # warm up: first polls, /props, psutil handles
            polls = 0
            if window is not None:
                window(True)
            cpu_before, wall_before = sum(me.cpu_times()[:2]), time.monotonic()
            end = wall_before + duration
            while time.monotonic() < end:
                render(registry)  # one Prometheus scrape per second
                await asyncio.sleep(1.0)
            cpu_after, wall_after = sum(me.cpu_times()[:2]), time.monotonic()
            if window is not None:
                window(False)
            times, cpu_times = [], []
            for _ in range(renders):
                started, cpu_started = time.perf_counter(), time.thread_time()
                render(registry)
                times.append((time.perf_counter() - started) * 1000.0)
                cpu_times.append((time.thread_time() - cpu_started) * 1000.0)
            errors = sum(store.poll_errors().values())
            rss = me.memory_info().rss
            await poller.close()
            for task in busy:
                task.cancel()
            await asyncio.gather(*busy, return_exceptions=True)
    finally:
        for proc, _ in fakes:
            proc.terminate()
        for proc, _ in fakes:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    wall = wall_after - wall_before
    return Result(
        instances=count,
        cpu_percent=(cpu_after - cpu_before) / wall * 100.0,
        rss_mb=rss / 2**20,
        render_median_ms=statistics.median(times),
        render_p95_ms=statistics.quantiles(times, n=20)[-1],
        render_cpu_median_ms=statistics.median(cpu_times),
        polls_per_second=polls / wall,
        errors=errors,
    )


def table(results: list[Result]) -> str:
    """The results as a text table with the goals."""
    lines = [
        f"{'instances':>9} {'cpu %core':>9} {'rss MB':>7} {'render med ms':>13} "
        f"{'p95 ms':>7} {'cpu ms':>7} {'polls/s':>8} {'errors':>6}"
    ]
    for r in results:
        lines.append(
            f"{r.instances:>9} {r.cpu_percent:>9.2f} {r.rss_mb:>7.1f} {r.render_median_ms:>13.2f} "
            f"{r.render_p95_ms:>7.2f} {r.render_cpu_median_ms:>7.2f} {r.polls_per_second:>8.1f} "
            f"{r.errors:>6}"
        )
    last = max(results, key=lambda r: r.instances)
    lines.append(
        f"at {last.instances}: CPU {last.cpu_percent:.2f}% of one core = "
        f"{last.cpu_percent / GOAL_CPU_PERCENT:.2f}x the {GOAL_CPU_PERCENT:g}% goal; "
        f"render p95 {last.render_p95_ms:.2f} ms = "
        f"{last.render_p95_ms / GOAL_RENDER_MS:.2f}x the {GOAL_RENDER_MS:g} ms goal"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--duration", type=float, default=15.0, help="seconds per size")
    parser.add_argument("--renders", type=int, default=200, help="timed /metrics renders")
    parser.add_argument(
        "--idle", action="store_true", help="instances idle (no generation): the common case"
    )
    args = parser.parse_args(argv)
    results = []
    for size in args.sizes:
        result = asyncio.run(measure(size, args.duration, args.renders, generating=not args.idle))
        print(f"{size} instances: done", file=sys.stderr, flush=True)
        results.append(result)
    load = os.getloadavg()[0]
    state = "idle" if args.idle else "one slot generating each"
    print(f"host: {os.cpu_count()} CPUs, load average {load:.1f}; poll interval 1 s; {state}")
    print("cpu %core includes one /metrics render per second (a 1 s Prometheus scrape)")
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
