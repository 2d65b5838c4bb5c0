"""Service-side cost of watching 1, 16, 64 and 256 llama-server instances at 1 Hz.

For each size, fake llama-server apps are started (many per process, each on its
own port: see _fake_hosts.py; the service sees N independent instances), then the
service's watching path (_watcher.py: MetricsStore, Poller, collector and a
/metrics route, in a process of its own) watches them, once with the baseline
tree (main before issue 10, unpacked with `git archive`) and once with this tree,
interleaved, against the same fakes. Prometheus is played by this script: one
/metrics scrape per second during the window, then --scrapes more, 50 ms apart.

Figures per run: the watcher's CPU (its process CPU time, user + system, over the
window, in percent of one core), its RSS, the /metrics render's wall time median
and p95 (as the handler measured it), full polls published per second, and poll
errors. Then the per-instance slope (least squares over the sizes) and, at 64,
the ratios to the goals (5 % of one core, p95 20 ms).

    .venv/bin/python bench/exporter_overhead.py [--sizes 1 16 64 256] [--duration 15]
        [--scenario busy idle] [--baseline REV | --no-baseline]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
BASELINE_REV = "9f2a24d"  # main before issue 10's changes (the render cache, httpget, idle rate)
GOAL_CPU_PERCENT = 5.0  # of one core, at 64 instances
GOAL_RENDER_P95_MS = 20.0
GOAL_RENDER_MEDIAN_MS = 5.0
PER_PROCESS = 32  # fake apps per fake-host process


@dataclass(frozen=True)
class Result:
    """Figures of one run."""

    tree: str
    scenario: str
    instances: int
    cpu_percent: float  # of one core, over the window (1 Hz polls + 1 Hz scrapes)
    rss_mb: float
    render_median_ms: float
    render_p95_ms: float
    render_cpu_median_ms: float
    render_cpu_p95_ms: float  # CPU time: what the wall time is without other processes' load
    polls_per_second: float
    errors: int
    reasons: str  # endpoint/reason=count of the poll errors


def say(text: str) -> None:
    """Progress on stderr."""
    print(text, file=sys.stderr, flush=True)


async def start_fakes(
    count: int, busy: bool
) -> tuple[list[asyncio.subprocess.Process], list[list[int]]]:
    """Start fakes for count instances; returns every process started and [pid, port]s."""
    procs: list[asyncio.subprocess.Process] = []
    targets: list[list[int]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for start in range(0, count, PER_PROCESS):
        argv = [sys.executable, str(BENCH / "_fake_hosts.py"), "--count"]
        argv.append(str(min(PER_PROCESS, count - start)))
        if busy:
            argv.append("--busy")
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.PIPE, env=env)
        procs.append(proc)
    for proc in procs[:]:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 120)
        if not line:
            raise RuntimeError(f"fake host {proc.pid} exited before listening")
        for port in json.loads(line)["ports"]:
            # Each instance gets a process of its own for psutil to read, as in the
            # service (a sleeping placeholder): otherwise 32 fakes would share one
            # process's CPU time, and one fake's work would wake its idle neighbours.
            placeholder = await asyncio.create_subprocess_exec("sleep", "86400")
            procs.append(placeholder)
            targets.append([placeholder.pid, port])
    return procs, targets


async def stop(procs: list[asyncio.subprocess.Process]) -> None:
    """SIGTERM the processes we started, then SIGKILL what is left after 10 s."""
    for proc in procs:
        if proc.returncode is None:
            proc.terminate()
    for proc in procs:
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()


async def measure(
    tree: tuple[str, Path], scenario: str, targets_file: Path, count: int, args: argparse.Namespace
) -> Result:
    """One watcher run against running fakes."""
    name, path = tree
    env = {**os.environ, "PYTHONPATH": str(path)}
    # A baseline is watched by its own _watcher.py: the module layout moves between revisions.
    script = path / "_watcher.py" if (path / "_watcher.py").is_file() else BENCH / "_watcher.py"
    watcher = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        str(targets_file),
        stdout=subprocess.PIPE,
        env=env,
        cwd=tempfile.gettempdir(),  # not the checkout: PYTHONPATH alone picks the tree
    )
    try:
        assert watcher.stdout is not None
        port = int(await asyncio.wait_for(watcher.stdout.readline(), 60))
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:

            async def stats() -> dict[str, Any]:
                async with http.get(f"{url}/bench-stats") as response:
                    return dict(await response.json())

            deadline = time.monotonic() + 60
            while (await stats())["polls"] < count:  # every instance read once
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name}: {count} instances not all polled within 60 s")
                await asyncio.sleep(0.2)
            await asyncio.sleep(args.warmup)
            process = psutil.Process(watcher.pid)
            before = await stats()
            cpu_before, started = sum(process.cpu_times()[:2]), time.monotonic()
            for second in range(int(args.duration)):
                async with http.get(f"{url}/metrics") as response:
                    await response.read()
                await asyncio.sleep(max(0.0, started + second + 1 - time.monotonic()))
            cpu_after, ended = sum(process.cpu_times()[:2]), time.monotonic()
            middle = await stats()
            for _ in range(args.scrapes):
                async with http.get(f"{url}/metrics") as response:
                    await response.read()
                await asyncio.sleep(0.05)
            after = await stats()
            rss = process.memory_info().rss
    finally:
        await stop([watcher])
    wall = ended - started
    renders = after["renders"][len(before["renders"]) :]
    walls = [w for w, _ in renders]
    return Result(
        tree=name,
        scenario=scenario,
        instances=count,
        cpu_percent=(cpu_after - cpu_before) / wall * 100.0,
        rss_mb=rss / 2**20,
        render_median_ms=statistics.median(walls),
        render_p95_ms=statistics.quantiles(walls, n=20)[-1],
        render_cpu_median_ms=statistics.median(c for _, c in renders),
        render_cpu_p95_ms=statistics.quantiles([c for _, c in renders], n=20)[-1],
        polls_per_second=(middle["polls"] - before["polls"]) / wall,
        errors=int(after["errors"]),
        reasons=", ".join(f"{k}={v}" for k, v in sorted(after.get("reasons", {}).items())),
    )


def slope(results: list[Result]) -> float:
    """Least-squares CPU percent of one core per added instance."""
    if len(results) < 2:
        return float("nan")
    xs = [r.instances for r in results]
    ys = [r.cpu_percent for r in results]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def report(results: list[Result]) -> str:
    """The table, slopes and goal ratios."""
    lines = [
        f"{'scenario':<8} {'tree':<8} {'instances':>9} {'cpu %core':>9} {'rss MB':>7} "
        f"{'render med ms':>13} {'p95 ms':>7} {'cpu med':>7} {'cpu p95':>7} {'polls/s':>8} "
        f"{'errors':>6}"
    ]
    for r in sorted(results, key=lambda r: (r.scenario, r.instances, r.tree)):
        lines.append(
            f"{r.scenario:<8} {r.tree:<8} {r.instances:>9} {r.cpu_percent:>9.2f} "
            f"{r.rss_mb:>7.1f} {r.render_median_ms:>13.2f} {r.render_p95_ms:>7.2f} "
            f"{r.render_cpu_median_ms:>7.2f} {r.render_cpu_p95_ms:>7.2f} "
            f"{r.polls_per_second:>8.1f} {r.errors:>6}"
        )
    for r in results:
        if r.errors:
            lines.append(f"errors {r.scenario}/{r.tree}/{r.instances}: {r.reasons}")
    groups: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.tree), []).append(r)
    for (scenario, tree), group in sorted(groups.items()):
        per = slope(sorted(group, key=lambda r: r.instances))
        lines.append(
            f"slope {scenario}/{tree}: {per:.4f} % of one core per instance "
            f"({per * 10:.3f} ms CPU per instance-second)"
        )
    for r in results:
        if r.instances == 64:
            lines.append(
                f"at 64 ({r.scenario}, {r.tree}): CPU {r.cpu_percent:.2f} % = "
                f"{r.cpu_percent / GOAL_CPU_PERCENT:.2f}x the {GOAL_CPU_PERCENT:g} % goal; "
                f"render p95 {r.render_p95_ms:.2f} ms = "
                f"{r.render_p95_ms / GOAL_RENDER_P95_MS:.2f}x the {GOAL_RENDER_P95_MS:g} ms goal; "
                f"median {r.render_median_ms:.2f} ms = "
                f"{r.render_median_ms / GOAL_RENDER_MEDIAN_MS:.2f}x "
                f"the {GOAL_RENDER_MEDIAN_MS:g} ms goal; "
                f"render CPU p95 {r.render_cpu_p95_ms:.2f} ms"
            )
    return "\n".join(lines)


def unpack_baseline(rev: str, into: Path) -> Path:
    """The baseline's llama_exporter package, unpacked from git into a folder."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", rev, "llama_exporter"], capture_output=True, check=False
    )
    if archive.returncode != 0:
        sys.exit(
            f"cannot unpack baseline {rev!r} with git archive: "
            f"{archive.stderr.decode().strip()}; pass --baseline REV or --no-baseline"
        )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    watcher = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:bench/_watcher.py"],
        capture_output=True,
        check=False,
    )
    if watcher.returncode == 0:  # else: this tree's _watcher.py, if the imports still match
        (into / "_watcher.py").write_bytes(watcher.stdout)
    return into


async def run(args: argparse.Namespace, trees: list[tuple[str, Path]], tmp: Path) -> list[Result]:
    """Every size and scenario, trees interleaved (the order flips each time)."""
    results: list[Result] = []
    flip = False
    for scenario in args.scenario:
        for count in args.sizes:
            say(f"{scenario}, {count} instances: starting fakes")
            fakes, targets = await start_fakes(count, busy=scenario == "busy")
            try:
                targets_file = tmp / f"targets-{scenario}-{count}.json"
                targets_file.write_text(json.dumps(targets))
                for tree in reversed(trees) if flip else trees:
                    say(f"{scenario}, {count} instances: measuring {tree[0]}")
                    results.append(await measure(tree, scenario, targets_file, count, args))
                flip = not flip
            finally:
                await stop(fakes)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--duration", type=float, default=15.0, help="measured seconds per run")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--scrapes", type=int, default=60, help="extra timed scrapes per run")
    parser.add_argument("--scenario", nargs="+", choices=["busy", "idle"], default=["busy", "idle"])
    parser.add_argument("--baseline", default=BASELINE_REV, help="git revision to compare with")
    parser.add_argument("--no-baseline", action="store_true")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="overhead-") as folder:
        tmp = Path(folder)
        trees = [("current", ROOT)]
        if not args.no_baseline:
            base = tmp / "baseline"
            base.mkdir()
            trees.insert(0, ("baseline", unpack_baseline(args.baseline, base)))
        results = asyncio.run(run(args, trees, tmp))
    print(
        f"host: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end; "
        "poll interval 1 s; "
        f"busy = one slot generating in each instance; baseline = {args.baseline}; "
        f"load average at the start {load_at_start:.1f}"
    )
    print("cpu %core: the watcher process's CPU time over the window (polls + 1 Hz scrapes)")
    print("render ms: wall time in the /metrics handler; cpu med/p95: its thread CPU time")
    print(report(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
