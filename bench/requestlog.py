"""The request log's cost, and its queries at a million rows.

Fake llama-server (llama_exporter.testing.fake_llama) behind two services run at once,
the request log on in one and off in the other, rounds alternating between them:
  - the service's CPU per request (non-streaming, and short streams), log on against
    off (goal: +50 us or less);
  - the streaming TTFT the gateway adds (paired against the fake straight), log on and
    off, with 95 % intervals of the median (bench/gateway.py's measure).
The store alone (RequestStore), filled to --rows records over 10 models:
  - the writer's rows per second;
  - the latest 100 (goal < 20 ms) and one model's page of 100 (goal < 50 ms), each
    query with its own connection as the API runs it; a 5xx page and a deep page too;
  - the database's size per million rows.
Figures, not asserts: compare only within one run.

    .venv/bin/python bench/requestlog.py [--rounds 8] [--requests 3000] [--ttft-pairs 200]
                                         [--rows 1000000] [--skip-service] [--skip-store]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import psutil
from _service import HttpService
from gateway import Answer, chat_body, median_interval, request, throughput

from llama_exporter.config.settings import ModelConfig
from llama_exporter.requestlog.record import Cursor, Filter, Query, Record, id_at
from llama_exporter.requestlog.store import RequestStore
from llama_exporter.testing.fake_llama import write_executable
from llama_exporter.testing.gguf_writer import write_minimal_gguf

GOAL_CPU_EXTRA_US = 50.0
GOAL_LATEST_MS = 20.0
GOAL_MODEL_PAGE_MS = 50.0
MODELS = 10


def cpu_of(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


async def service_part(rounds: int, n: int, ttft_pairs: int, tmp: Path) -> None:
    binary = write_executable(tmp)
    gguf = write_minimal_gguf(tmp / "fake.gguf")
    args = ("--fake-tokens-per-second", "1000", "--fake-prompt-tokens-per-second", "1000000")
    model = ModelConfig("fake", gguf, ctx_size=64 * 64, parallel=64, args=args)
    on = HttpService(binary, [model], tmp / "on")
    off = HttpService(binary, [model], tmp / "off", request_log={"enabled": False})
    async with on, off:
        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        try:
            urls = {}
            procs = {}
            for name, svc in (("on", on), ("off", off)):
                urls[name] = svc.url + "/v1/chat/completions"
                await request(session, urls[name], chat_body("fake", 0), False)  # load it
                assert svc.proc is not None
                procs[name] = psutil.Process(svc.proc.pid)
            async with session.get(f"{on.url}/api/v1/llama/status") as resp:
                port = next(m for m in (await resp.json())["models"] if m["model"] == "fake")[
                    "port"
                ]
            direct = f"http://127.0.0.1:{port}/v1/chat/completions"
            for stream, tokens in ((False, 0), (True, 4)):
                cpu: dict[str, list[float]] = {"on": [], "off": []}
                errors = 0
                for i in range(rounds):
                    for name in ("on", "off") if i % 2 else ("off", "on"):
                        body = {**chat_body("fake", tokens), "stream": stream}
                        before = cpu_of(procs[name])
                        _, err = await throughput(session, urls[name], body, n, 16)
                        cpu[name].append((cpu_of(procs[name]) - before) / n)
                        errors += err
                on_us = statistics.median(cpu["on"]) * 1e6
                off_us = statistics.median(cpu["off"]) * 1e6
                diffs = [(a - b) * 1e6 for a, b in zip(cpu["on"], cpu["off"], strict=True)]
                spread = f"{min(diffs):+.0f}..{max(diffs):+.0f}"
                kind = f"streams of {tokens} tokens" if stream else "non-streaming requests"
                print(f"service CPU per request, {kind} ({rounds} rounds x {n}, 16 at once)")
                print(
                    f"  log off {off_us:6.0f} us   log on {on_us:6.0f} us   extra "
                    f"{on_us - off_us:+.0f} us (rounds {spread};"
                    f" goal <= +{GOAL_CPU_EXTRA_US:.0f})   errors {errors}"
                )

            def first(url: str) -> Callable[[], Awaitable[Answer]]:
                return lambda: request(session, url, chat_body("fake", 1), True)

            # Direct, log off and log on in one loop, the order turning each round, so
            # that the machine's drift (2 shared cores) falls on all three alike.
            print(f"streaming TTFT added by the gateway, fake llama-server ({ttft_pairs} rounds)")
            order = [direct, urls["off"], urls["on"]]
            got: dict[str, list[Answer]] = {u: [] for u in order}
            for i in range(ttft_pairs):
                for url in order[i % 3 :] + order[: i % 3]:
                    got[url].append(await first(url)())
            bad = [a.status for answers in got.values() for a in answers if a.status != 200]
            if bad:
                raise RuntimeError(f"requests failed: {bad}")
            for name in ("off", "on"):
                diffs = [
                    o.ttft - b.ttft
                    for o, b in zip(got[urls[name]], got[direct], strict=True)
                    if o.ttft is not None and b.ttft is not None
                ]
                low, high = median_interval(diffs)
                print(
                    f"  log {name:3}  p50 {statistics.median(diffs) * 1000:+.2f} ms (95% interval"
                    f" {low * 1000:+.2f} to {high * 1000:+.2f})"
                )
        finally:
            await session.close()


def fake_record(i: int, start: float) -> Record:
    status = 200 if i % 50 else (503 if i % 100 else 499)
    return Record(
        id=str(id_at(start + i * 0.01)),
        arrived=start + i * 0.01,
        model=f"model-{i % MODELS}",
        endpoint="/v1/chat/completions",
        stream=bool(i % 2),
        client="127.0.0.1",
        state="done",
        status=status,
        error_type=None if status == 200 else "server_error",
        error_message=None if status == 200 else "model 'model-3' failed to load: exit 1",
        finish_reason="stop",
        prompt_tokens=40 + i % 200,
        completion_tokens=100 + i % 300,
        queue_wait_s=0.0,
        load_wait_s=0.0 if i % 1000 else 2.5,
        triggered_load=not i % 1000,
        evicted=[] if i % 1000 else ["model-1"],
        ttft_s=0.05 + (i % 7) / 100,
        duration_s=1.5 + (i % 13) / 10,
        tokens_per_second=80.0 + i % 20,
    )


def timed(runs: int, func: Callable[[], object]) -> float:
    """Median milliseconds of func over runs."""
    times = []
    for _ in range(runs):
        began = time.perf_counter()
        func()
        times.append(time.perf_counter() - began)
    return statistics.median(times) * 1000


def store_part(rows: int, tmp: Path) -> None:
    path = tmp / "requests.db"
    start = time.time() - rows * 0.01 - 60
    store = RequestStore(path, retention=30 * 86400, max_rows=rows + 1)
    store.start()
    began = time.monotonic()
    chunk = 50_000
    for low in range(0, rows, chunk):
        for i in range(low, min(rows, low + chunk)):
            store.put(fake_record(i, start))
        store.flush(timeout=600)
    wrote = time.monotonic() - began
    store.close()
    print(f"store with {store.count():,} rows over {MODELS} models")
    print(f"  writer: {rows / wrote:,.0f} rows/s (records put in chunks of {chunk:,})")
    latest = timed(20, lambda: store.query(Query(Filter(), 100)))
    one_model = timed(20, lambda: store.query(Query(Filter(model="model-3"), 100)))
    errors = timed(20, lambda: store.query(Query(Filter(status_min=500, status_max=599), 100)))
    middle = fake_record(rows // 2, start)
    deep = timed(
        20,
        lambda: store.query(Query(Filter(model="model-3"), 100, Cursor(int(middle.id)))),
    )
    in_range = timed(
        20,
        lambda: store.query(Query(Filter(model="model-3", since=middle.arrived - 600), 100)),
    )
    print(f"  latest 100            {latest:6.2f} ms (goal < {GOAL_LATEST_MS:.0f})")
    print(f"  one model's page      {one_model:6.2f} ms (goal < {GOAL_MODEL_PAGE_MS:.0f})")
    print(f"  5xx page              {errors:6.2f} ms")
    print(f"  one model, mid-log    {deep:6.2f} ms (a cursor half-way back)")
    print(f"  one model, since      {in_range:6.2f} ms")
    size = sum(p.stat().st_size for p in tmp.glob("requests.db*"))
    print(
        f"  database {size / 1e6:,.0f} MB = {size / rows * 1e6 / 1e6:,.0f} MB per million rows"
        f" ({size / rows:.0f} bytes a row, indexes included)"
    )


async def run(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="bench-requestlog-") as name:
        tmp = Path(name)
        if not args.skip_service:
            await service_part(args.rounds, args.requests, args.ttft_pairs, tmp)
        if not args.skip_store:
            store_part(args.rows, tmp)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=8, help="rounds per service and kind")
    # psutil's CPU times tick every 10 ms: 3000 requests a round read to about 3 us each.
    parser.add_argument("--requests", type=int, default=3000, help="requests per round")
    parser.add_argument("--ttft-pairs", type=int, default=200)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skip-service", action="store_true", help="only the store part")
    parser.add_argument("--skip-store", action="store_true", help="only the service part")
    return asyncio.run(run(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
