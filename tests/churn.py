"""The service in a thread of this process, its loop watched, and a churn driven against it.

The service runs as `serve` runs it (create_app, then aiohttp's runner with
handler_cancellation) on an event loop of its own, in asyncio's debug mode with
``slow_callback_duration`` = 50 ms, inside a LoopWatch. The churn is driven from the
test's thread with plain HTTP and the official openai client, so nothing but the
service runs on the watched loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web
from loopwatch import LoopWatch
from waiting import wait_until

from llama_exporter.config.loader import load_config
from llama_exporter.http.app import create_app

SLOW = 0.05
API = "/api/v1/llama"


class _AsyncioWarnings(logging.Handler):
    """asyncio's own slow-callback warnings (wall time only), kept for the report."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing"):
            self.messages.append(message[:300])


@dataclass
class Service:
    """The service on its own loop and thread; url once started."""

    config_file: Path
    watch: LoopWatch = field(default_factory=lambda: LoopWatch(SLOW))
    url: str = ""
    error: BaseException | None = None
    asyncio_warnings: _AsyncioWarnings = field(default_factory=_AsyncioWarnings)
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _thread: threading.Thread | None = None
    _started: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._thread = threading.Thread(target=self._main, args=(sock,), name="service loop")
        self._thread.start()
        wait_until(self._started.is_set, "the service started", limit=120)
        if self.error is not None:
            raise self.error

    def _main(self, sock: socket.socket) -> None:
        loop = self._loop = asyncio.new_event_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = SLOW
        logging.getLogger("asyncio").addHandler(self.asyncio_warnings)
        try:
            config = load_config(self.config_file)
            port = sock.getsockname()[1]
            app = create_app(config, host="127.0.0.1", port=port)  # as serve: not in a callback
            runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
            with self.watch.watching():
                self._stop = asyncio.Event()
                try:
                    loop.run_until_complete(runner.setup())
                    loop.run_until_complete(web.SockSite(runner, sock).start())
                finally:
                    self._started.set()
                loop.run_until_complete(self._stop.wait())
                loop.run_until_complete(runner.cleanup())  # stops every instance
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
        except BaseException as exc:
            self.error = exc
            self._started.set()
        finally:
            logging.getLogger("asyncio").removeHandler(self.asyncio_warnings)
            loop.close()
            sock.close()

    def stop(self) -> None:
        """Shut the service down as SIGTERM would, and wait for its thread."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(120)
            assert not self._thread.is_alive(), "the service did not shut down"
        if self.error is not None:
            raise self.error

    # --- the driver's HTTP -----------------------------------------------------------

    def call(self, method: str, path: str, body: Any = None, timeout: float = 120) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:500]!r}") from None
        ctype = response.headers.get("Content-Type", "")
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def instance(self, model: str) -> dict[str, Any]:
        statuses = self.call("GET", f"{API}/status")["models"]
        return next(s for s in statuses if s["model"] == model)


def write_config(tmp: Path, binary: Path, models: dict[str, Path], **top: Any) -> Path:
    """A config file: these models (one thread each), cap 2, fast restarts."""
    config = {
        "llama_server": str(binary),
        "max_parallel": 2,
        "state_dir": str(tmp / "state"),
        "restart": {"backoff_initial": 0.1},
        "models": [
            {"name": name, "path": str(path), "ctx_size": 512, "parallel": 1}
            | {"args": ["--threads", "1"]}
            for name, path in models.items()
        ],
        **top,
    }
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def churn(service: Service, models: list[str], chat: Any, extra_model: Path) -> None:
    """Starts, stops, gateway requests, a registration and its removal, kill -9, restart."""
    a, b = models
    chat(a)  # a cold start through the gateway
    service.call("POST", f"{API}/models/{b}/start?wait=true")
    chat(b)
    service.call("GET", "/metrics")
    service.call("GET", f"{API}/models/{a}/logs?lines=20")
    added = service.call("POST", f"{API}/models", {"name": "extra", "path": str(extra_model)})
    assert added["name"] == "extra"
    service.call("DELETE", f"{API}/models/extra")
    victim = service.instance(a)
    os.kill(victim["pid"], signal.SIGKILL)
    wait_until(
        lambda: (s := service.instance(a))["state"] == "ready" and s["pid"] != victim["pid"],
        f"{a} restarted after kill -9",
        limit=180,
    )
    chat(a)
    service.call("POST", f"{API}/models/{b}/stop")
    wait_until(lambda: service.instance(b)["state"] == "stopped", f"{b} stopped", limit=120)
    chat(b)  # started again by the gateway
    service.call("GET", "/metrics")
    service.call("POST", f"{API}/models/{a}/stop")
    service.call("POST", f"{API}/models/{b}/stop")
    for name in models:
        wait_until(lambda: service.instance(name)["state"] == "stopped", f"{name} stopped")  # noqa: B023


def report(watch: LoopWatch, service: Service) -> str:
    """What the watch saw, for the failure message and the test's output."""
    lines = [f"{watch.callbacks} callbacks watched"]
    lines.append(f"asyncio's wall-time check fired {len(service.asyncio_warnings.messages)} times")
    excused = watch.excused()
    lines.append(f"{len(excused)} slow callbacks excused (waiting for a CPU, or the GIL):")
    lines += [f"  {c}" for c in excused[:10]]
    if watch.other_blocking:
        lines.append(f"blocking calls outside the project: {sorted(set(watch.other_blocking))}")
    return "\n".join(lines)
