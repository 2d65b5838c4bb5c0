"""The launch settings that change a llama-server instance's memory, read from a model's
config and its extra arguments as llama-server parses them (pure).

Defaults are llama.cpp b11434's (common/common.h ``common_params``); a flag given twice
counts by its last value, as in common/arg.cpp. ``key()`` is what learned figures are
filed under: two configs that differ only in flags that do not change memory share it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from llama_exporter.config.settings import ModelConfig

_VALUE_FLAGS = {
    "-c": "ctx_size",
    "--ctx-size": "ctx_size",
    "-np": "parallel",
    "--parallel": "parallel",
    "-ctk": "cache_type_k",
    "--cache-type-k": "cache_type_k",
    "-ctv": "cache_type_v",
    "--cache-type-v": "cache_type_v",
    "-ngl": "gpu_layers",
    "--gpu-layers": "gpu_layers",
    "--n-gpu-layers": "gpu_layers",
    "-fa": "flash_attn",
    "--flash-attn": "flash_attn",
    "-b": "batch",
    "--batch-size": "batch",
    "-ub": "ubatch",
    "--ubatch-size": "ubatch",
}
_SWITCHES = {
    "-kvu": ("kv_unified", True),
    "--kv-unified": ("kv_unified", True),
    "-no-kvu": ("kv_unified", False),
    "--no-kv-unified": ("kv_unified", False),
    "--swa-full": ("swa_full", True),
    "-nkvo": ("kv_offload", False),
    "--no-kv-offload": ("kv_offload", False),
    "-kvo": ("kv_offload", True),
    "--kv-offload": ("kv_offload", True),
    "--no-mmap": ("mmap", False),
    "--mmap": ("mmap", True),
}
_INTS = {"ctx_size", "parallel", "batch", "ubatch"}
_TRUE = {"on", "1", "true", "enabled"}
_FALSE = {"off", "0", "false", "disabled"}


@dataclass(frozen=True)
class Launch:
    """One instance's memory-relevant settings (llama.cpp defaults where unset)."""

    ctx_size: int = 4096
    parallel: int = 1
    cache_type_k: str = "f16"
    cache_type_v: str = "f16"
    gpu_layers: int | None = None  # None: llama.cpp's default (all layers, when a GPU is used)
    flash_attn: str = "auto"  # on | off | auto (auto turns it on where the backend has it)
    batch: int = 2048
    ubatch: int = 512
    kv_unified: bool = False
    swa_full: bool = False
    kv_offload: bool = True
    mmap: bool = True

    def key(self) -> str:
        """A stable text of every field, for keying learned figures."""
        return ",".join(f"{name}={value}" for name, value in sorted(asdict(self).items()))


def _gpu_layers(text: str) -> int | None:
    if text in ("auto", "all", "-1"):
        return None if text != "all" else 1 << 20
    return int(text)


def parse_launch(argv: Sequence[str], base: Launch | None = None) -> Launch:
    """Apply llama-server flags (``-c 8192``, ``--flash-attn=on``...) over base."""
    fields = asdict(base or Launch())
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, inline = arg.partition("=")
        if flag in _VALUE_FLAGS and (eq or i + 1 < len(args)):
            value = inline if eq else args[i + 1]
            i += 1 if eq else 2
            name = _VALUE_FLAGS[flag]
            try:
                if name in _INTS:
                    fields[name] = int(value)
                elif name == "gpu_layers":
                    fields[name] = _gpu_layers(value)
                elif name == "flash_attn":
                    low = value.lower()
                    fields[name] = "on" if low in _TRUE else "off" if low in _FALSE else "auto"
                else:
                    fields[name] = value.lower()
            except ValueError:
                pass  # llama-server will refuse it and say so; the estimate keeps the default
            continue
        if arg in _SWITCHES:
            name, value_b = _SWITCHES[arg]
            fields[name] = value_b
        i += 1
    return Launch(**fields)


def model_launch(model: ModelConfig) -> Launch:
    """The settings an instance of this model starts with (process.build_argv's order)."""
    return parse_launch(
        ["-c", str(model.ctx_size), "-np", str(model.parallel), *model.args],
    )
