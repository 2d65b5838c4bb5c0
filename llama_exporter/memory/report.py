"""The figure after a load: llama-server's own buffer sizes, parsed from its log (pure).

At ``-lv 4`` llama.cpp b11434 logs every buffer it allocates, before ``model loaded``:

    load_tensors:   CPU_Mapped model buffer size =   235.16 MiB   (llama-model.cpp load_tensors)
    llama_context:        CPU  output buffer size =     2.00 MiB  (llama-context.cpp ctor)
    llama_kv_cache:        CPU KV buffer size =    24.00 MiB      (llama-kv-cache.cpp ctor)
    llama_memory_recurrent:        CPU RS buffer size = ...       (llama-memory-recurrent.cpp)
    sched_reserve:        CPU compute buffer size =    23.28 MiB  (llama-context.cpp)

(format "%s: %10s KV buffer size = %8.2f MiB" and its siblings: two decimals of a MiB,
so each figure is exact to 5 KiB). The ``common_memory_breakdown_print`` table
(common/fit.cpp) says the same per device in whole MiB, and is made by --fit *before*
the load; the buffer lines are the ones kept. The instance's context as it really ran
comes from ``llama_context: n_ctx = ...`` and the server's ``n_ctx_slot = ...`` line.

A buffer's name says its device: CPU, CPU_Mapped, CPU_REPACK and <backend>_Host
(pinned host memory of a GPU backend) are host memory; CUDA0, ROCm0, Vulkan0, SYCL0,
MTL0 (and their _Mapped/_Private/_Split types) are that GPU's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from llama_exporter.memory.figure import HOST, DeviceNeed, MemoryFigure

_BUFFER = re.compile(
    r"(?P<buf>[A-Za-z][\w.]*)\s+(?P<kind>model|output|KV|RS|compute) buffer size\s*=\s*"
    r"(?P<mib>[0-9]+(?:\.[0-9]+)?) MiB"
)
_N_CTX = re.compile(r"llama_context: n_ctx\s*=\s*(\d+)")
_N_CTX_SEQ = re.compile(r"llama_context: n_ctx_seq\s*=\s*(\d+)")
_N_SEQ = re.compile(r"llama_context: n_seq_max\s*=\s*(\d+)")
_SLOT = re.compile(r"n_slots = (\d+), n_ctx_slot = (\d+)")
_FLASH = re.compile(r"resolve_fused_ops: Flash Attention (enabled|disabled)")
LOADED = "model loaded"
# A new llama-server process in the same log (process.py's "--- <time> starting: ..."
# line, then llama-server's first line); a draft model's load inside one process is not.
_NEW_PROCESS = re.compile(r"^--- .* starting: |llama_server: initializing")
_SUFFIXES = ("_Mapped", "_Private", "_Split", "_REPACK")
_KINDS = {"model": "weights", "KV": "kv", "RS": "kv", "compute": "compute", "output": "compute"}
MIB = 1024 * 1024


def device_of(buffer: str) -> str:
    """Our device name for a llama.cpp buffer name: CPU_Mapped -> cpu, CUDA0 -> cuda0."""
    if buffer.startswith("CPU") or buffer.endswith("_Host"):
        return HOST
    name = buffer
    for suffix in _SUFFIXES:
        name = name.removesuffix(suffix)
    if name.startswith("MTL"):
        name = "metal" + name[3:]
    return name.lower()


@dataclass(frozen=True)
class LoadReport:
    """What one instance's load allocated, buffer by buffer, and the context it ran with."""

    buffers: tuple[tuple[str, str, int], ...] = ()  # (buffer name, kind, bytes)
    n_ctx: int | None = None
    n_ctx_seq: int | None = None
    n_seq_max: int | None = None
    n_ctx_slot: int | None = None
    flash_attn: bool | None = None
    complete: bool = False  # the log reached "model loaded"

    def figure(self, shared_weights_key: str | None = None) -> MemoryFigure:
        """The report as a figure: bytes per device by kind (output counts as compute)."""
        sums: dict[str, dict[str, int]] = {}
        for buffer, kind, size in self.buffers:
            per = sums.setdefault(device_of(buffer), {"weights": 0, "kv": 0, "compute": 0})
            per[_KINDS[kind]] += size
        return MemoryFigure(
            devices={device: DeviceNeed(**per) for device, per in sorted(sums.items())},
            source="learned",
            shared_weights_key=shared_weights_key,
        )


_REPORT_WORDS = ("buffer size", "llama_context: n_", "n_ctx_slot", "Flash Attention", LOADED)


def is_report_line(line: str) -> bool:
    """True for the lines parse_report reads (a cheap filter for keeping them)."""
    return any(word in line for word in _REPORT_WORDS)


def parse_report(lines: Iterable[str]) -> LoadReport:
    """Read the buffer lines of one load (the last load, if the text holds several)."""
    buffers: list[tuple[str, str, int]] = []
    values: dict[str, int | bool | None] = {}
    complete = False
    for line in lines:
        if _NEW_PROCESS.search(line):
            buffers, values, complete = [], {}, False  # a new process: forget the last one
            continue
        match = _BUFFER.search(line)
        if match:
            size = round(float(match["mib"]) * MIB)
            buffers.append((match["buf"], match["kind"], size))
            continue
        for key, pattern in (("n_ctx", _N_CTX), ("n_ctx_seq", _N_CTX_SEQ), ("n_seq", _N_SEQ)):
            found = pattern.search(line)
            if found:
                values[key] = int(found.group(1))
        slot = _SLOT.search(line)
        if slot:
            values["n_ctx_slot"] = int(slot.group(2))
        flash = _FLASH.search(line)
        if flash:
            values["flash"] = flash.group(1) == "enabled"
        if LOADED in line:
            complete = True
    return LoadReport(
        buffers=tuple(buffers),
        n_ctx=_opt_int(values.get("n_ctx")),
        n_ctx_seq=_opt_int(values.get("n_ctx_seq")),
        n_seq_max=_opt_int(values.get("n_seq")),
        n_ctx_slot=_opt_int(values.get("n_ctx_slot")),
        flash_attn=_opt_bool(values.get("flash")),
        complete=complete,
    )


def _opt_bool(value: int | bool | None) -> bool | None:
    return value if isinstance(value, bool) else None


def _opt_int(value: int | bool | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
