"""Where a cold start's time goes: the Supervisor's steps vs a bare llama-server, interleaved.

Each side's start is split by the clocks that see it: ours (spawn returned, READY) and
llama-server's own log stamps (``0.00.563.789`` since it began: its first line, the
``--fit`` projection, "all slots are idle"). Then

    spawn   start() called -> the child's pid is known (the fork and exec)
    load    llama-server's stamp of "all slots are idle" (its own load time)
    detect  the rest: from "all slots are idle" to READY (the /health probing)

The bare side spawns the same argv (build_argv, with the instance key) with its output on a
pipe, and polls /health as start_stop.py does. The machine's speed drifts: compare the
two sides of one run, paired; the load average is printed with the figures.

    .venv/bin/python bench/start_steps.py [--runs 8] [--binary PATH] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import sys
import time
from pathlib import Path

from _service import free_port
from start_stop import DEFAULT_MODEL, default_binary, make_supervisor

from llama_exporter.config.settings import ModelConfig
from llama_exporter.states import InstanceStatus, State
from llama_exporter.supervision.command import build_argv
from llama_exporter.supervision.instance_key import InstanceKey, load_or_create_instance_key
from llama_exporter.supervision.process import READY_POLL_INTERVAL, health_status
from llama_exporter.supervision.supervisor import Supervisor

IDLE = "all slots are idle"
STEPS = ("spawn", "load", "detect", "total")


def stamp(line: str) -> float | None:
    """llama-server's own time of a log line (seconds since it began), or None.

    The stamp is minutes.seconds.milliseconds.microseconds: "0.01.593.739" is 1.593739 s.
    """
    head = line.split(" ", 1)[0].split(".")
    if len(head) != 4 or not all(p.isdigit() for p in head):
        return None
    minutes, seconds, millis, micros = (int(p) for p in head)
    return minutes * 60 + seconds + millis / 1e3 + micros / 1e6


def idle_stamp(lines: list[str]) -> float:
    """llama-server's stamp of the line saying it is ready to serve."""
    for line in lines:
        if IDLE in line and (at := stamp(line)) is not None:
            return at
    raise RuntimeError(f"no {IDLE!r} line with a time stamp in llama-server's output")


def steps(spawn: float, lines: list[str], total: float) -> dict[str, float]:
    """The split of one start (seconds)."""
    load = idle_stamp(lines)
    return {"spawn": spawn, "load": load, "detect": total - spawn - load, "total": total}


async def bare(binary: Path, model: ModelConfig, key: InstanceKey) -> dict[str, float]:
    """Spawn llama-server with the service's argv, poll /health to 200, SIGTERM it."""
    port = free_port()
    argv = build_argv(binary, model, "127.0.0.1", port, key.path)
    begun = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    spawn = time.monotonic() - begun
    assert proc.stdout is not None
    stdout = proc.stdout
    lines: list[str] = []

    async def read() -> None:
        while raw := await stdout.readline():
            lines.append(raw.decode(errors="replace"))

    reading = asyncio.ensure_future(read())
    try:
        while await health_status("127.0.0.1", port, 1.0, api_key=key.value) != 200:
            if proc.returncode is not None:
                raise RuntimeError(f"bare llama-server exited with {proc.returncode}")
            await asyncio.sleep(READY_POLL_INTERVAL)
        total = time.monotonic() - begun
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        await proc.wait()
        await reading
    return steps(spawn, lines, total)


async def ours(supervisor: Supervisor, name: str) -> dict[str, float]:
    """Supervisor.start until READY; the spawn ends when its status first has a pid."""
    spawned: list[float] = []

    def seen(status: InstanceStatus) -> None:
        if status.model == name and status.pid is not None and not spawned:
            spawned.append(time.monotonic())

    unsubscribe = supervisor.subscribe(seen)
    begun = time.monotonic()
    try:
        await supervisor.start(name)
        status = await supervisor.wait_settled(name, timeout=120)
        total = time.monotonic() - begun
    finally:
        unsubscribe()
    if status.state is not State.READY:
        raise RuntimeError(f"{name} did not start: {status.last_error}")
    await supervisor.stop(name)
    return steps(spawned[0] - begun, await this_run(supervisor, name), total)


async def this_run(supervisor: Supervisor, name: str) -> list[str]:
    """The last run's lines of the model's log, once its writer thread has written them."""
    for _ in range(500):
        lines = await asyncio.to_thread(supervisor.log_tail, name, 1000)
        headers = [i for i, line in enumerate(lines) if line.startswith("--- ")]
        run = lines[headers[-1] :] if headers else []
        if any(IDLE in line for line in run):
            return run
        await asyncio.sleep(0.01)  # the log is written by its own thread: look again
    raise RuntimeError(f"no {IDLE!r} line in the log of {name}")


async def run(binary: Path, model_path: Path, runs: int, state_dir: Path) -> int:
    """Alternate the two sides runs times; print the median of each step and paired extras."""
    model = ModelConfig("bench", model_path, ctx_size=2048, parallel=2)
    key = load_or_create_instance_key(state_dir / "bare")
    supervisor = make_supervisor(binary, model, state_dir, load_or_create_instance_key(state_dir))
    theirs: list[dict[str, float]] = []
    mine: list[dict[str, float]] = []
    loads: list[float] = []
    await bare(binary, model, key)  # warm the page cache; not counted
    try:
        for i in range(runs):
            pair = [lambda: bare(binary, model, key), lambda: ours(supervisor, "bench")]
            first, second = (await pair[i % 2](), await pair[1 - i % 2]())
            b, o = (first, second) if i % 2 == 0 else (second, first)
            theirs.append(b)
            mine.append(o)
            loads.append(os.getloadavg()[0])
    finally:
        await supervisor.shutdown()
    print(
        f"runs: {runs} each, interleaved; model {model_path.name}; keyed; "
        f"load average {min(loads):.1f}-{max(loads):.1f}"
    )
    print(f"{'step':8s} {'bare ms':>9s} {'ours ms':>9s} {'paired extra p50':>17s}")
    for step in STEPS:
        b_med = statistics.median(r[step] for r in theirs) * 1000
        o_med = statistics.median(r[step] for r in mine) * 1000
        extra = statistics.median(o[step] - b[step] for o, b in zip(mine, theirs, strict=True))
        print(f"{step:8s} {b_med:9.1f} {o_med:9.1f} {extra * 1000:+17.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=8)
    parser.add_argument("--binary", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/llama-exporter-bench-steps"))
    args = parser.parse_args(argv)
    if not args.model.is_file():
        print(f"model not found: {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    binary = args.binary or default_binary()
    return asyncio.run(run(binary, args.model, args.runs, args.state_dir))


if __name__ == "__main__":
    raise SystemExit(main())
