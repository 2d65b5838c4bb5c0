"""Soak: the service under churn for a while; does it leak, tear files or leave orphans?

Runs `llama-exporter serve` with the real llama-server on 8 models (hard links of the
gemma GGUF under 8 names in a temporary folder) under cap 4, and for --minutes:

- two churn workers start and stop random models through the HTTP API;
- every --kill-every seconds one random ready instance gets SIGKILL (by pid);
- a reader thread parses the Prometheus target file over and over (torn reads);
- a gateway worker sends POST /v1/chat/completions (when the gateway exists);
- a WebSocket client connects, reads for a few seconds and leaves, again and again.

After a warm-up, and again at the end, everything is stopped and the service's RSS,
open file descriptors and asyncio tasks (llama_exporter_asyncio_tasks) are sampled
in that quiet state, so the two samples are comparable. Then the service gets
SIGTERM and no llama-server it started may be left.

    .venv/bin/python bench/soak.py [--minutes 30] [--warmup 2] [--kill-every 20]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml
from _service import free_port
from prometheus_client.parser import text_string_to_metric_families

from llama_exporter.config.env import resolve_llama_server

DEFAULT_MODEL = Path.home() / ".cache" / "llama-exporter" / "models" / "gemma-3-270m-q4_k_m.gguf"
GOAL_RSS_GROWTH_BYTES = 5 * 1024 * 1024
API = "/api/v1/llama"
RUNNING = {"starting", "ready", "backoff", "stopping"}


@dataclass(frozen=True)
class Sample:
    """The service process in a quiet moment."""

    rss_bytes: int
    fds: int
    tasks: int


@dataclass
class Counts:
    """What happened during the run."""

    codes: collections.Counter[str] = field(default_factory=collections.Counter)
    why_5xx: collections.Counter[str] = field(default_factory=collections.Counter)
    kills: list[tuple[float, str, int]] = field(default_factory=list)  # (time, model, pid)
    # gateway requests: (start, end, model, status code)
    chats: list[tuple[float, float, str, int]] = field(default_factory=list)
    reads: int = 0
    torn: list[str] = field(default_factory=list)
    missing: int = 0
    ws_sessions: int = 0
    ws_refused: int = 0
    pids: dict[int, float] = field(default_factory=dict)  # every llama-server pid seen


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="whole run, warm-up included")
    p.add_argument("--warmup", type=float, default=2.0, help="minutes before the first sample")
    p.add_argument("--kill-every", type=float, default=20.0, help="seconds between kill -9")
    p.add_argument("--models", type=int, default=8)
    p.add_argument("--cap", type=int, default=4)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="the GGUF to link")
    p.add_argument("--binary", type=Path, default=None, help="llama-server (default: found)")
    p.add_argument("--no-gateway", action="store_true", help="no /v1/chat/completions load")
    return p.parse_args()


def gateway_available() -> bool:
    """True when this checkout has the gateway (helper branch merged)."""
    return (Path(__file__).resolve().parent.parent / "llama_exporter" / "gateway").is_dir()


def link_models(source: Path, folder: Path, n: int) -> list[Path]:
    """n names for one GGUF file: hard links (the page cache is shared), else copies."""
    paths = []
    for i in range(n):
        target = folder / f"soak-{i}.gguf"
        try:
            os.link(source, target)
        except OSError:
            shutil.copyfile(source, target)
        paths.append(target)
    return paths


def write_config(folder: Path, models: list[Path], args: argparse.Namespace, gateway: bool) -> Path:
    first = random.randrange(20000, 60000)
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "llama_server": str(args.binary or resolve_llama_server(None)),
        "state_dir": str(folder / "state"),
        "max_parallel": args.cap,
        "ports": {"first": first, "last": first + 60},
        "stop_grace": 5,
        "ready_timeout": 120,
        "log_max_bytes": 65536,  # small: rotation happens during the soak too
        "restart": {"max_retries": 1000, "backoff_initial": 0.5, "backoff_max": 2},
        "poll": {"interval": 1.0},
        "models": [
            {"name": p.stem, "path": str(p), "ctx_size": 512, "parallel": 1, "args": ["-t", "1"]}
            for p in models
        ],
    }
    if gateway:
        config["gateway"] = {"when_full": "evict", "max_queue": 16, "queue_timeout": 60}
    path = folder / "soak.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


class Soak:
    """The run: the service child, the workers, the samples."""

    def __init__(self, args: argparse.Namespace, folder: Path, config: Path, gateway: bool):
        self.args = args
        self.folder = folder
        self.config = config
        self.gateway = gateway
        data = yaml.safe_load(config.read_text())
        self.url = f"http://127.0.0.1:{data['listen']['port']}"
        self.names = [m["name"] for m in data["models"]]
        self.targets = folder / "state" / "targets" / "llama-servers.json"
        self.counts = Counts()
        self.active = asyncio.Event()  # workers run while set
        self.stopping = False
        self.in_flight = 0
        self.idle = asyncio.Event()  # set while nothing is in flight
        self.idle.set()
        self.proc: asyncio.subprocess.Process | None = None
        self.session: aiohttp.ClientSession | None = None

    # --- the service --------------------------------------------------------------

    async def start_service(self) -> None:
        log = (self.folder / "service.log").open("wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "llama_exporter", "--log-level", "WARNING", "serve",
            "--config", str(self.config), stdout=log, stderr=log,
        )  # fmt: skip
        # No keep-alive: an idle connection of ours would count as one of the service's
        # fds and tasks (its connection handler) in a quiet sample and not in the other.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=300),
            connector=aiohttp.TCPConnector(force_close=True),
        )
        for _ in range(1200):
            with contextlib.suppress(aiohttp.ClientError):
                async with self.session.get(self.url + "/healthz") as resp:
                    if resp.status == 200:
                        return
            if self.proc.returncode is not None:
                break
            await asyncio.sleep(0.05)
        raise RuntimeError(f"the service did not come up; see {self.folder / 'service.log'}")

    async def call(self, method: str, path: str, what: str, **kw: Any) -> tuple[int, Any]:
        """One API call, counted by what and status code (-1: no answer)."""
        assert self.session is not None
        with self.busy():
            try:
                async with self.session.request(method, self.url + path, **kw) as resp:
                    body = await resp.read()
                    code = resp.status
            except (aiohttp.ClientError, TimeoutError):
                code, body = -1, b""
        self.counts.codes[f"{what} {code}"] += 1
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if code >= 500:
            error = data.get("error") if isinstance(data, dict) else None
            why = error.get("code") or error.get("message") if isinstance(error, dict) else None
            self.counts.why_5xx[f"{what} {code} {str(why)[:80]}"] += 1
        return code, data

    @contextlib.contextmanager
    def busy(self) -> Iterator[None]:
        """Count one request or session in flight (quiet moments wait for none)."""
        self.in_flight += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.in_flight -= 1
            if not self.in_flight:
                self.idle.set()

    async def statuses(self) -> dict[str, dict[str, Any]]:
        code, body = await self.call("GET", f"{API}/status", "status")
        if code != 200:
            return {}
        out = {m["model"]: m for m in body["models"]}
        for m in out.values():
            if m.get("pid") and m["pid"] not in self.counts.pids:
                with contextlib.suppress(psutil.Error):
                    self.counts.pids[m["pid"]] = psutil.Process(m["pid"]).create_time()
        return out

    def sample_process(self) -> tuple[int, int]:
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        return proc.memory_info().rss, proc.num_fds()

    async def tasks(self) -> int:
        assert self.session is not None
        async with self.session.get(self.url + "/metrics") as resp:
            text = await resp.text()
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == "llama_exporter_asyncio_tasks":
                    return int(s.value)
        raise RuntimeError("no llama_exporter_asyncio_tasks in /metrics")

    # --- quiet moments ------------------------------------------------------------

    async def quiesce_and_sample(self) -> Sample:
        """Pause the workers, stop every instance, let things settle, sample."""
        self.active.clear()
        await self.idle.wait()
        for _ in range(60):
            states = await self.statuses()
            busy = [n for n, s in states.items() if s["state"] in RUNNING]
            if not busy:
                break
            stops = (self.call("POST", f"{API}/models/{n}/stop", "stop") for n in busy)
            await asyncio.gather(*stops)
        else:
            raise RuntimeError(f"instances still running: {busy}")
        await asyncio.sleep(5)  # closed sockets drained, a fresh 1 Hz host sample
        rss, fds = self.sample_process()
        # The fewest of 5 host samples a second apart: a request being served at the
        # sample's moment is a task for a moment; a leaked one is in all five.
        counts = []
        for _ in range(5):
            counts.append(await self.tasks())
            await asyncio.sleep(1.0)
        return Sample(rss, fds, min(counts))

    # --- workers --------------------------------------------------------------------

    async def churn(self) -> None:
        while not self.stopping:
            await self.active.wait()
            name = random.choice(self.names)
            status = (await self.statuses()).get(name, {})
            state = status.get("state")
            # A ready model nobody is using is stopped; stopping one the gateway is
            # loading or serving would answer its request 503 "stopped, send it again"
            # by design, which says nothing about leaks.
            if state == "ready" and not status.get("in_flight"):
                await self.call("POST", f"{API}/models/{name}/stop", "stop")
            elif state in ("stopped", "failed"):
                await self.call("POST", f"{API}/models/{name}/start", "start")
            await asyncio.sleep(random.uniform(2.0, 6.0))

    async def killer(self) -> None:
        while not self.stopping:
            await asyncio.sleep(self.args.kill_every)
            while True:  # the next ready instance, if none is ready right now
                await self.active.wait()
                ready = [s for s in (await self.statuses()).values() if s["state"] == "ready"]
                if ready or self.stopping:
                    break
                await asyncio.sleep(1.0)
            if not ready:
                continue
            victim = random.choice(ready)
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim["pid"], signal.SIGKILL)
                self.counts.kills.append((time.time(), victim["model"], victim["pid"]))

    async def chat(self) -> None:
        while not self.stopping:
            await self.active.wait()
            name = random.choice(self.names)
            body = {
                "model": name,
                "messages": [{"role": "user", "content": "Say hello."}],
                "max_tokens": 8,
            }
            begun = time.time()
            code, _ = await self.call("POST", "/v1/chat/completions", "chat", json=body)
            self.counts.chats.append((begun, time.time(), name, code))
            await asyncio.sleep(random.uniform(0.5, 2.0))

    async def websocket(self) -> None:
        assert self.session is not None
        while not self.stopping:
            await self.active.wait()
            with self.busy():
                try:
                    async with self.session.ws_connect(self.url + f"{API}/ws") as ws:
                        self.counts.ws_sessions += 1
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(random.uniform(2.0, 8.0)):
                                async for msg in ws:
                                    if msg.type is aiohttp.WSMsgType.CLOSE:
                                        self.counts.ws_refused += 1
                except aiohttp.ClientError:
                    self.counts.codes["ws error"] += 1
            await asyncio.sleep(random.uniform(0.5, 3.0))

    def reader(self, done: threading.Event) -> None:
        """Parse the target file as fast as a scraper could; count what does not parse."""
        while not done.is_set():
            try:
                data = json.loads(self.targets.read_bytes())
            except FileNotFoundError:
                self.counts.missing += 1
            except ValueError as exc:
                self.counts.torn.append(repr(exc))
            else:
                self.counts.reads += 1
                if not isinstance(data, list):
                    self.counts.torn.append(f"not a list: {data!r}")
            time.sleep(0.002)

    async def progress(self, begun: float) -> None:
        while not self.stopping:
            await asyncio.sleep(60)
            c = self.counts
            rss, fds = self.sample_process()
            five = sum(n for k, n in c.codes.items() if k.split()[-1].startswith("5"))
            print(
                f"[{(time.monotonic() - begun) / 60:5.1f} min] rss {rss / 2**20:.1f} MB, "
                f"fds {fds}, kills {len(c.kills)}, reads {c.reads}, torn {len(c.torn)}, "
                f"5xx {five}, calls {sum(c.codes.values())}",
                flush=True,
            )

    # --- the run ----------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        await self.start_service()
        assert self.proc is not None
        done = threading.Event()
        reader = threading.Thread(target=self.reader, args=(done,), daemon=True)
        reader.start()
        begun = time.monotonic()
        workers = [self.churn(), self.churn(), self.killer(), self.websocket()]
        if self.gateway:
            workers.append(self.chat())
        tasks = [asyncio.create_task(w) for w in [*workers, self.progress(begun)]]
        try:
            self.active.set()
            await asyncio.sleep(self.args.warmup * 60)
            first = await self.quiesce_and_sample()
            print(f"baseline after warm-up: {first}", flush=True)
            self.active.set()
            left = self.args.minutes * 60 - (time.monotonic() - begun)
            await asyncio.sleep(max(0.0, left))
            last = await self.quiesce_and_sample()
            print(f"end: {last}", flush=True)
        finally:
            self.stopping = True
            self.active.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            done.set()
            reader.join()
            restarts = await self.restarts()
            if self.session is not None:
                await self.session.close()
            self.proc.send_signal(signal.SIGTERM)
            code = await self.proc.wait()
        return self.report(first, last, code, restarts, time.monotonic() - begun)

    async def restarts(self) -> float:
        assert self.session is not None
        with contextlib.suppress(aiohttp.ClientError):
            async with self.session.get(self.url + "/metrics") as resp:
                text = await resp.text()
            return sum(
                s.value
                for f in text_string_to_metric_families(text)
                for s in f.samples
                if s.name == "llama_exporter_instance_restarts_total"
            )
        return float("nan")

    def orphans(self) -> list[int]:
        """llama-servers the service started that are still alive after it exited."""
        left = []
        for pid, created in self.counts.pids.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                p = psutil.Process(pid)
                if p.create_time() == created and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(pid)
        for p in psutil.process_iter(["pid", "cmdline"]):  # also any never seen in /status
            if str(self.folder) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                left.append(p.pid)
        return sorted(set(left))

    def report(
        self, first: Sample, last: Sample, exit_code: int, restarts: float, seconds: float
    ) -> dict[str, Any]:
        c = self.counts
        five = {k: n for k, n in c.codes.items() if k.split()[-1].startswith("5")}
        chat_5xx = [x for x in c.chats if 500 <= x[3] < 600]
        # a gateway 5xx while the model's process was being killed is the kill's doing
        during_kill = [
            x for x in chat_5xx if any(m == x[2] and x[0] <= t <= x[1] + 1 for t, m, _ in c.kills)
        ]
        return {
            "minutes": round(seconds / 60, 1),
            "rss_mb": [round(first.rss_bytes / 2**20, 1), round(last.rss_bytes / 2**20, 1)],
            "rss_growth_mb": round((last.rss_bytes - first.rss_bytes) / 2**20, 2),
            "fds": [first.fds, last.fds],
            "tasks": [first.tasks, last.tasks],
            "orphans": self.orphans(),
            "target_reads": c.reads,
            "torn_reads": len(c.torn),
            "torn_examples": c.torn[:3],
            "missing_file_reads": c.missing,
            "kills": len(c.kills),
            "restarts": restarts,
            "llama_servers_seen": len(c.pids),
            "calls": dict(sorted(c.codes.items())),
            "5xx": five,
            "5xx_reasons": dict(c.why_5xx),
            "gateway_5xx_during_a_kill": len(during_kill),
            "ws_sessions": c.ws_sessions,
            "service_exit_code": exit_code,
            "goals": {
                "rss_growth_under_5mb": last.rss_bytes - first.rss_bytes < GOAL_RSS_GROWTH_BYTES,
                "fds_back_to_baseline": last.fds <= first.fds,
                "tasks_back_to_baseline": last.tasks <= first.tasks,
                "no_orphans": not self.orphans(),
                "no_torn_reads": not c.torn,
                "no_5xx": not five,
            },
        }


def main() -> int:
    args = parse_args()
    if not args.model.is_file():
        print(f"error: no model at {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    gateway = gateway_available() and not args.no_gateway
    with tempfile.TemporaryDirectory(prefix="llama-soak-") as tmp:
        folder = Path(tmp)
        models = link_models(args.model, folder, args.models)
        config = write_config(folder, models, args, gateway)
        print(
            f"soak: {args.minutes:g} min ({args.warmup:g} warm-up), {args.models} models, "
            f"cap {args.cap}, kill -9 every {args.kill_every:g} s, gateway {gateway}, "
            f"service log {folder / 'service.log'}",
            flush=True,
        )
        soak = Soak(args, folder, config, gateway)
        result = asyncio.run(soak.run())
        print(json.dumps(result, indent=2))
        tail = (folder / "service.log").read_text(errors="replace").splitlines()[-20:]
        print("--- service log (last lines) ---\n" + "\n".join(tail))
    return 0 if all(result["goals"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
