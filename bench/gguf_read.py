"""Time read_gguf_info against gguf.GGUFReader on one GGUF file.

Usage: python bench/gguf_read.py [PATH] [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import gguf

from llama_exporter.catalog.gguf_meta import read_gguf_info

DEFAULT_MODEL = Path("~/.cache/llama-exporter/models/gemma-3-270m-q4_k_m.gguf").expanduser()


def _time_ours(path: Path, repeat: int) -> float:
    """Median seconds of read_gguf_info over repeat runs."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        read_gguf_info(path)
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def _time_reader(path: Path) -> float:
    """Seconds to construct gguf.GGUFReader and read the same keys."""
    start = time.perf_counter()
    reader = gguf.GGUFReader(path)
    arch = reader.fields["general.architecture"].contents()
    reader.fields.get(f"{arch}.context_length")
    return time.perf_counter() - start


def main() -> int:
    """Run the benchmark and print both timings and their ratio."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--repeat", type=int, default=5, help="runs of our reader (median)")
    args = parser.parse_args()
    path: Path = args.path
    if not path.is_file():
        parser.error(f"{path} not found: pass a GGUF file or run scripts/bootstrap.sh")
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB)")
    print(f"result: {read_gguf_info(path)}")
    ours = _time_ours(path, args.repeat)
    print(f"read_gguf_info:   {ours * 1000:9.1f} ms (median of {args.repeat})")
    theirs = _time_reader(path)
    print(f"gguf.GGUFReader:  {theirs * 1000:9.1f} ms (one run)")
    print(f"ratio:            {theirs / ours:9.0f}x faster")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
