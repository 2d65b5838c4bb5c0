"""A short load of a model at ``-lv 4``, only to read what it allocates (blocking I/O).

Used by the real tests and bench/memory.py to compare the estimate with llama.cpp's own
figures; the service itself reads the same lines from its instances' output
(supervision/process.py), so it never loads a model twice.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from llama_exporter.memory.report import LoadReport, parse_report

_LOADED = "model loaded"
# Faster probes that change no buffer: no warm-up run; --fit off skips --fit's own
# trial load (it only changes settings left unset, and only when memory is short).
QUICK = ("--no-warmup", "--fit", "off")


def probe_lines(
    binary: Path | str,
    gguf: Path | str,
    args: Sequence[str],
    *,
    port: int,
    timeout: float = 120.0,
) -> list[str]:
    """Start llama-server on gguf with args at -lv 4, return its lines up to the load's end."""
    argv = [str(binary), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["-lv", "4", *args]
    proc = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    )
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # ends at EOF: the process died
            lines.append(line.rstrip("\n"))
            if _LOADED in line or time.monotonic() > deadline:
                break
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return lines


def probe(binary: Path | str, gguf: Path | str, args: Sequence[str], *, port: int) -> LoadReport:
    """probe_lines, parsed."""
    return parse_report(probe_lines(binary, gguf, args, port=port))
