"""Many fake llama-server apps in one process, each on its own port, for benchmarks.

256 fake llama-server processes would cost the 2-core machine more than the
service being measured. Here one process serves COUNT independent fake apps
(their own slots, counters and port); with --busy each keeps one slot generating.
Prints {"pid": ..., "ports": [...]} as one JSON line once every port listens,
then runs until SIGTERM.

    python bench/_fake_hosts.py --count 32 [--busy]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal

from aiohttp import web

from llama_exporter.testing.fake_llama_app import SERVER_KEY, create_app
from llama_exporter.testing.fake_llama_engine import FakeOptions, FakeServer


async def keep_generating(server: FakeServer) -> None:
    """One request after another (each fills the slot's context: ~100 s at 20 tokens/s)."""
    while True:
        await server.generate("a b c d e f", 10**7)


async def serve(count: int, busy: bool) -> None:
    """Start count fake apps, print their ports, serve until SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    runners: list[web.AppRunner] = []
    ports: list[int] = []
    work: list[asyncio.Task[None]] = []
    options = FakeOptions(metrics=True, ctx_size=4096, parallel=2, tokens_per_second=20.0)
    for _ in range(count):
        app = create_app(options)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        ports.append(int(runner.addresses[0][1]))
        if busy:
            work.append(asyncio.create_task(keep_generating(app[SERVER_KEY])))
    print(json.dumps({"pid": os.getpid(), "ports": ports}), flush=True)
    await stop.wait()
    for task in work:
        task.cancel()
    await asyncio.gather(*work, return_exceptions=True)
    for runner in runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main() -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--busy", action="store_true", help="keep one slot generating in each")
    args = parser.parse_args()
    asyncio.run(serve(args.count, args.busy))


if __name__ == "__main__":
    main()
