"""The service for bench/reload.py: the real app, with each model's llama-server a fake app
served in this process on the port the supervisor picked (64 fake processes would cost
the 2-core machine more than the reload being measured).

    python bench/_reload_service.py CONFIG PORT [--watch]
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

from aiohttp import web

from llama_exporter.config.loader import load_config
from llama_exporter.config.settings import ModelConfig
from llama_exporter.http.app import create_app
from llama_exporter.supervision.process import Instance
from llama_exporter.testing.fake_llama_app import create_app as fake_app
from llama_exporter.testing.fake_llama_engine import FakeOptions


class InProcessFake:
    """An Instance whose llama-server is a fake app on this process's loop."""

    create_time: float | None = None  # never matched as a leftover by the next run

    def __init__(self, runner: web.AppRunner, port: int) -> None:
        self._runner = runner
        self.pid = 0
        self.port = port
        self._ended = asyncio.Event()
        self._rc: int | None = None

    @property
    def returncode(self) -> int | None:
        return self._rc

    async def wait(self) -> int:
        await self._ended.wait()
        return self._rc or 0

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def describe_exit(self, *, during_load: bool) -> str:
        return "stopped"

    async def health(self, within: float) -> bool:
        return True

    async def stop(self, grace: float) -> int:
        with contextlib.suppress(Exception):
            await self._runner.cleanup()
        self._rc = 0
        self._ended.set()
        return 0

    def kill(self) -> None:
        self._rc = -9
        self._ended.set()

    def tail(self, n: int) -> list[str]:
        return []

    def load_lines(self) -> list[str]:
        return []


async def spawn(binary: Path, model: ModelConfig, host: str, port: int, log: Path) -> Instance:
    """Serve a fake llama-server app for model on host:port."""
    options = FakeOptions(metrics=True, ctx_size=model.ctx_size, parallel=model.parallel)
    runner = web.AppRunner(fake_app(options), access_log=None, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    fake = InProcessFake(runner, port)
    fake.pid = os.getpid()  # its CPU is the service's: polls of it are part of the cost
    return fake


def main() -> None:
    """Run the service until SIGTERM."""
    config = load_config(Path(sys.argv[1]))
    app = create_app(
        config, port=int(sys.argv[2]), spawn=spawn, sighup=True, watch_config="--watch" in sys.argv
    )
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[2]), print=None, access_log=None)


if __name__ == "__main__":
    main()
