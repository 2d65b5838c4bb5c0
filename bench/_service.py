"""`llama-exporter serve` as a child process for benchmarks, driven over HTTP."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from llama_exporter.config.settings import ModelConfig
from llama_exporter.supervision.process import port_bindable


@dataclass(frozen=True)
class Timing:
    """Seconds from start request to ready, and from stop request to exit."""

    start: float
    stop: float


def free_port() -> int:
    """A random port nothing listens on."""
    while True:
        port = random.randrange(20000, 60000)
        if port_bindable("127.0.0.1", port):
            return port


class HttpService:
    """`llama-exporter serve` as a child process, driven over its HTTP API."""

    def __init__(
        self, binary: Path, models: list[ModelConfig], state_dir: Path, **extra: Any
    ) -> None:
        self.port = free_port()
        first = random.randrange(20000, 60000)
        state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir = state_dir
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "llama_server": str(binary),
            "state_dir": str(state_dir),
            "ports": {"first": first, "last": first + 50},
            "models": [
                {
                    "name": m.name,
                    "path": str(m.path),
                    "ctx_size": m.ctx_size,
                    "parallel": m.parallel,
                    "args": list(m.args),
                }
                for m in models
            ],
            **extra,
        }
        self.config_file = state_dir / "bench-config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    def instance_auth(self) -> dict[str, str]:
        """The header for talking to this service's llama-servers (its instance key)."""
        key = (self.state_dir / "instance.key").read_text().strip()
        return {"Authorization": f"Bearer {key}"}

    async def __aenter__(self) -> HttpService:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "llama_exporter",
            "--log-level",
            "WARNING",
            "serve",
            "--config",
            str(self.config_file),
        )
        self.session = aiohttp.ClientSession()
        for _ in range(600):
            try:
                async with self.session.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        raise RuntimeError("service did not become healthy")

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            await self.proc.wait()

    async def start_stop(self, name: str) -> Timing:
        """POST start?wait=true until it answers ready, then POST stop until it answers."""
        assert self.session is not None
        api = f"{self.url}/api/v1/llama/models/{name}"
        begun = time.monotonic()
        async with self.session.post(api + "/start", params={"wait": "true"}) as resp:
            body = await resp.json()
        started = time.monotonic() - begun
        if resp.status != 200:
            raise RuntimeError(f"{name} did not start: {body}")
        begun = time.monotonic()
        async with self.session.post(api + "/stop") as resp:
            await resp.read()
        return Timing(started, time.monotonic() - begun)
