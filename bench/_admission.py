"""bench/memory.py's admission sections: the cost of a memory-aware start, and the storm.

admission  per start: the admission check (holders, figures, the pure policy) against
           the old cap check (running_count >= cap) in the same run, with 4, 16 and 64
           instances running; and the figure's read in a thread before a start
           (Supervisor.prepare: MemoryBook.figure on the real GGUF, warm header cache).
storm      the real storm (tests/test_memory_storm.py: 6 hard-linked gemma models,
           200 concurrent openai requests, a budget for about two), its figures printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from llama_exporter.config.settings import Config, ModelConfig, PortRange
from llama_exporter.memory.book import MemoryBook
from llama_exporter.memory.figure import HOST
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.process import Instance
from llama_exporter.supervision.supervisor import Supervisor

ROOT = Path(__file__).resolve().parent.parent


class _Idle:
    """An instance that is ready at once and never exits (the OS seam of the bench)."""

    def __init__(self, port: int) -> None:
        self.pid, self.port, self.create_time, self.returncode = os.getpid(), port, None, None
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        return None

    async def describe_exit(self, *, during_load: bool) -> str:
        return "exited"

    async def health(self, within: float) -> bool:
        return True

    async def stop(self, grace: float) -> int:
        if not self._exit.done():
            self._exit.set_result(0)
        return 0

    def kill(self) -> None:
        if not self._exit.done():
            self._exit.set_result(-9)

    def tail(self, n: int) -> list[str]:
        return []


async def _spawn(binary: Path, model: ModelConfig, host: str, port: int, log: Path) -> Instance:
    return _Idle(port)  # type: ignore[return-value]


def _median_us(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1e6


async def _admission(model_path: Path, running: int, repeat: int) -> tuple[float, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"m{i}" for i in range(running + 1)]
        models = [ModelConfig(n, model_path, ctx_size=2048, parallel=1) for n in names]
        cfg = Config(
            source=None,
            state_dir=Path(tmp),
            max_parallel=running + 1,
            ports=PortRange(40000, 40000 + running + 10),
        )
        sup = Supervisor(
            cfg, StaticModels(models), spawn=_spawn, memory=MemoryBook(Path(tmp)),
            budgets={HOST: 1 << 50},
        )  # fmt: skip
        for name in names[:-1]:
            await sup.start(name)
        candidate = names[-1]
        await sup.prepare(candidate)
        cap_us = _median_us(lambda: sup.running_count >= sup.cap, repeat)
        admit_us = _median_us(lambda: sup.admission(candidate), repeat)
        prep = []
        for _ in range(max(5, repeat // 10)):
            start = time.perf_counter()
            await sup.prepare(candidate)
            prep.append(time.perf_counter() - start)
        await sup.shutdown()
        return cap_us, admit_us, statistics.median(prep) * 1e3


def section_admission(args: argparse.Namespace) -> bool:
    """The admission check per start against the cap check; True under 1 ms at 64."""
    repeat = max(200, args.repeat * 10)
    print(f"== admission overhead per start ({args.model.name}, median of {repeat})")
    worst = 0.0
    for running in (4, 16, 64):
        cap_us, admit_us, prep_ms = asyncio.run(_admission(args.model, running, repeat))
        worst = max(worst, admit_us)
        print(
            f"{running:3d} running: cap check {cap_us:7.1f} us, admission (cap + memory) "
            f"{admit_us:7.1f} us ({admit_us / max(cap_us, 1e-3):.0f}x); figure read in a "
            f"thread before the start {prep_ms:6.2f} ms"
        )
    print("(the figure read happens before the check, off the loop; the check itself is")
    print(" synchronous, with no await between it and the state change)")
    return worst < 1000.0


def section_storm(args: argparse.Namespace) -> bool:
    """Run the storm test and print its figures; True when it passes."""
    print("== storm: tests/test_memory_storm.py (real llama-server, 6 models, 200 requests)")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider",
         str(ROOT / "tests" / "test_memory_storm.py")],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    lines = [line for line in proc.stdout.splitlines() if line.startswith("storm:")]
    print("\n".join(lines) or proc.stdout[-2000:])
    print("passed" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})")
    return proc.returncode == 0
