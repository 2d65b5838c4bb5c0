"""Config reload with 64 models running: SIGHUP to applied, and the service's CPU for it.

The service runs as a process (bench/_reload_service.py: the real app, each model's
llama-server a fake app on the service's own loop, so nothing else competes for the
cores). All 64 models are started. Then, alternately, --rounds times each:

- unchanged: SIGHUP with the file as it is (read, validate, plan: nothing to do);
- live: SIGHUP after an edit applied live everywhere (every model's idle_ttl, which is
  gateway-only, plus max_parallel, gateway.max_queue and poll.idle_interval);
- baseline: GET /api/v1/llama/status, timed the same way (one request's cost here).

Time runs from the signal to the reload's llama-status:update event on a WebSocket;
CPU is the service's (user + system) from before the signal to the event. A second
service with --watch-config times an edit (atomic replace) to the event.

    .venv/bin/python bench/reload.py [--models 64] [--rounds 20] [--edits 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import psutil
import yaml

from llama_exporter.testing.gguf_writer import write_minimal_gguf

BENCH = Path(__file__).resolve().parent
GOAL_MS = 50.0
API = "/api/v1/llama"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, data: dict[str, Any]) -> None:
    temp = path.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump(data))
    temp.replace(path)


def base_config(tmp: Path, models: int) -> dict[str, Any]:
    folder = tmp / "models"
    folder.mkdir(exist_ok=True)
    first = 30000 + os.getpid() % 200 * 100
    return {
        "state_dir": str(tmp / "state"),
        "llama_server": sys.executable,  # never run: the bench's spawn serves fakes
        "max_parallel": models,
        "ports": {"first": first, "last": first + models + 20},
        "poll": {"interval": 1.0, "idle_interval": 5.0},
        "models": [
            {
                "name": f"m{i}",
                "path": str(write_minimal_gguf(folder / f"m{i}.gguf")),
                "ctx_size": 1024,
                "parallel": 2,
            }
            for i in range(models)
        ],
    }


class Service:
    """The bench service as a process, its WebSocket and its CPU time."""

    def __init__(self, tmp: Path, data: dict[str, Any], watch: bool) -> None:
        self.config = tmp / "config.yaml"
        self.data = data
        write_config(self.config, data)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(BENCH / "_reload_service.py"), str(self.config)]
        argv += [str(self.port), *(["--watch"] if watch else [])]
        self.log = (tmp / "service.log").open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self.ps = psutil.Process(self.proc.pid)
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    async def start(self, session: aiohttp.ClientSession, models: int) -> None:
        for _ in range(600):
            try:
                async with session.get(self.url + "/healthz") as r:
                    if r.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
        for i in range(models):
            async with session.post(f"{self.url}{API}/models/m{i}/start?wait=true") as r:
                assert r.status == 200, await r.text()

    async def follow(self, session: aiohttp.ClientSession) -> None:
        async with session.ws_connect(f"{self.url}{API}/ws") as ws:
            async for msg in ws:
                event = json.loads(msg.data)
                if isinstance(event.get("data"), dict) and "reload" in event["data"]:
                    await self.events.put(event["data"]["reload"])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)
        self.log.close()


async def timed(svc: Service, act: Callable[[], Awaitable[Any]]) -> tuple[float, float, Any]:
    """(wall ms, service CPU ms, result) of act, which ends at its event."""
    cpu0, t0 = svc.cpu(), time.perf_counter()
    result = await act()
    wall = (time.perf_counter() - t0) * 1000
    return wall, (svc.cpu() - cpu0) * 1000, result


async def sighup_rounds(
    svc: Service, session: aiohttp.ClientSession, rounds: int
) -> dict[str, Any]:
    out: dict[str, list[tuple[float, float, float]]] = {"unchanged": [], "live": [], "baseline": []}

    async def signal_and_wait() -> dict[str, Any]:
        svc.proc.send_signal(signal.SIGHUP)
        return await asyncio.wait_for(svc.events.get(), 30)

    async def status() -> None:
        async with session.get(f"{svc.url}{API}/status") as r:
            await r.read()

    for i in range(rounds):
        wall, cpu, ev = await timed(svc, signal_and_wait)
        assert ev["ok"] and not ev["restarted"], ev
        out["unchanged"].append((wall, cpu, ev["duration_seconds"] * 1000))
        for m in svc.data["models"]:
            m["idle_ttl"] = 600 + i
        svc.data["max_parallel"] = len(svc.data["models"]) + i % 2
        svc.data["gateway"] = {"max_queue": 64 + i}
        svc.data["poll"]["idle_interval"] = 5.0 + i % 2
        write_config(svc.config, svc.data)
        wall, cpu, ev = await timed(svc, signal_and_wait)
        assert (
            ev["ok"] and not ev["restarted"] and len(ev["changed_live"]) == len(svc.data["models"])
        ), ev
        out["live"].append((wall, cpu, ev["duration_seconds"] * 1000))
        wall, cpu, _ = await timed(svc, status)
        out["baseline"].append((wall, cpu, 0.0))
    return out


async def edit_rounds(svc: Service, edits: int) -> list[float]:
    times = []
    await asyncio.sleep(1.0)  # the watcher's first look
    for i in range(edits):
        svc.data["gateway"] = {"max_queue": 100 + i}
        t0 = time.perf_counter()
        write_config(svc.config, svc.data)
        ev = await asyncio.wait_for(svc.events.get(), 30)
        assert ev["ok"], ev
        times.append((time.perf_counter() - t0) * 1000)
        await asyncio.sleep(0.5)
    return times


def stats(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, round(0.95 * (len(values) - 1)))]
    return f"median {statistics.median(values):7.2f}  p95 {p95:7.2f}  max {values[-1]:7.2f}"


async def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp_name:
        tmp = Path(tmp_name)
        async with aiohttp.ClientSession() as session:
            for watch in (False, True):
                where = tmp / ("watch" if watch else "sighup")
                where.mkdir()
                svc = Service(where, base_config(where, args.models), watch)
                try:
                    await svc.start(session, args.models)
                    follower = asyncio.create_task(svc.follow(session))
                    await asyncio.sleep(0.5)
                    if not watch:
                        out = await sighup_rounds(svc, session, args.rounds)
                        print(f"{args.models} models running, {args.rounds} rounds each (ms)")
                        for kind, rows in out.items():
                            print(f"  {kind:9} SIGHUP->event wall: {stats([r[0] for r in rows])}")
                            # CPU times tick in 10 ms: the mean over the rounds is the figure
                            mean_cpu = sum(r[1] for r in rows) / len(rows)
                            print(f"  {kind:9} service CPU:        mean {mean_cpu:7.2f} per round")
                            if kind != "baseline":
                                print(
                                    f"  {kind:9} service's own time: {stats([r[2] for r in rows])}"
                                )
                        base = statistics.median(r[0] for r in out["baseline"])
                        for kind in ("unchanged", "live"):
                            med = statistics.median(r[0] for r in out[kind])
                            print(
                                f"  {kind}: {med / GOAL_MS:.2f} x the {GOAL_MS:g} ms goal, "
                                f"{med / base:.1f} x a GET /status"
                            )
                    else:
                        times = await edit_rounds(svc, args.edits)
                        print(f"--watch-config, edit -> applied (ms): {stats(times)}; goal 2000")
                    follower.cancel()
                finally:
                    svc.stop()


def main() -> None:
    """Parse the arguments and run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--edits", type=int, default=8)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
