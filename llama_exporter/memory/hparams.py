"""The model shape the memory estimate needs, read from a GGUF header as llama.cpp reads it
(pure). Sources: llama.cpp b11434 src/llama-model.cpp ``load_hparams`` (common keys),
src/llama-hparams.cpp (per-layer sizes, SWA patterns, recurrent state sizes) and the
per-architecture loaders in src/models/*.cpp (SWA defaults, recurrent layers).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llama_exporter.catalog.gguf_header import GGUFHeader

# Architectures whose loader turns sliding-window attention on, and the default pattern
# it passes to load_swa_pattern(ml, n_pattern, dense_first) (src/models/<arch>.cpp). A
# GGUF's own attention.sliding_window_pattern (number or per-layer bools) overrides it.
SWA_DEFAULTS: Mapping[str, tuple[int, bool]] = {
    "gemma2": (2, False),
    "gemma3": (6, False),  # only when attention.sliding_window > 0 (gemma3.cpp)
    "gemma3n": (5, False),
    "cohere2": (4, False),
    "cohere2moe": (4, True),
    "exaone4": (4, False),
    "exaone-moe": (4, False),
    "olmo2": (4, False),  # only with attention.sliding_window (olmo2.cpp)
    "gpt-oss": (2, False),  # openai-moe.cpp
    "afmoe": (4, False),
    "plamo3": (8, False),
    "smallthinker": (4, True),
    "mellum": (4, False),
    "muse-glimmer": (4, False),
}

# llm_arch_is_recurrent (src/llama-arch.cpp): every layer holds a recurrent state.
RECURRENT_ARCHS = frozenset({"mamba", "mamba2", "rwkv6", "rwkv6qwen2", "rwkv7", "arwkv7"})
# llm_arch_is_hybrid: attention layers and recurrent layers. Which layers are recurrent:
# head_count_kv == 0 (jamba.cpp, granite-hybrid.cpp, lfm2.cpp, plamo2.cpp, nemotron-h.cpp),
# or (il + 1) % full_attention_interval != 0 (qwen3next.cpp, qwen35.cpp, minimax-01.cpp).
HYBRID_ARCHS = frozenset(
    {
        "jamba",
        "falcon-h1",
        "plamo2",
        "granitehybrid",
        "lfm2",
        "lfm2moe",
        "nemotron_h",
        "nemotron_h_moe",
        "qwen3next",
        "qwen35",
        "qwen35moe",
        "kimi-linear",
        "minimax-01",
    }
)
_INTERVAL_ARCHS = frozenset({"qwen3next", "qwen35", "qwen35moe", "minimax-01"})


@dataclass(frozen=True)
class LayerShape:
    """One layer's cache needs: K and V widths (n_embd_k_gqa, n_embd_v_gqa), kind."""

    k: int
    v: int
    swa: bool
    recurrent: bool


@dataclass(frozen=True)
class ModelShape:
    """What llama.cpp's hparams say about the sizes that drive memory."""

    arch: str
    n_layer_all: int  # block_count, NextN/MTP layers included
    n_layer_nextn: int
    n_embd: int
    n_ff: int  # largest feed-forward width (dense or experts used x expert width)
    n_head: int
    head_dim: int
    n_vocab: int
    n_swa: int  # 0: no sliding-window layers
    mla: bool  # DeepSeek-style MLA: K only, no V cache (llama_kv_cache ctor: has_v = !is_mla)
    n_embd_r: int  # recurrent conv state per cell (llama_hparams::n_embd_r)
    n_embd_s: int  # recurrent ssm/wkv state per cell (llama_hparams::n_embd_s)
    layers: tuple[LayerShape, ...]

    @property
    def n_layer(self) -> int:
        """The trunk's layers (n_layer_all less the NextN ones)."""
        return self.n_layer_all - self.n_layer_nextn


def _int(header: GGUFHeader, key: str, default: int = 0) -> int:
    value = header.values.get(key)
    if isinstance(value, bool):
        return int(value)
    return value if isinstance(value, int) else default


def _per_layer(header: GGUFHeader, key: str, n: int, default: list[int]) -> list[int]:
    """get_key_or_arr: a number for every layer, or one per layer."""
    array = header.arrays.get(key)
    if array is not None:
        return [int(x) for x in array[:n]] + [0] * max(0, n - len(array))
    if key in header.values:
        return [_int(header, key)] * n
    return default


def _swa_layers(header: GGUFHeader, arch: str, n_layer: int, n_layer_all: int) -> list[bool]:
    """llama_model_base::load_swa_pattern + llama_hparams::set_swa_pattern."""
    pattern_key = f"{arch}.attention.sliding_window_pattern"
    array = header.arrays.get(pattern_key)
    if array is not None:
        flags = [bool(x) for x in array[:n_layer_all]]
        return flags + [False] * (n_layer_all - len(flags))
    n_pattern, dense_first = SWA_DEFAULTS[arch]
    n_pattern = _int(header, pattern_key, n_pattern)
    flags = []
    for il in range(n_layer_all):
        if il >= n_layer:
            flags.append(False)
        elif dense_first:
            flags.append(n_pattern == 0 or il % n_pattern != 0)
        else:
            flags.append(n_pattern == 0 or il % n_pattern < n_pattern - 1)
    return flags


def _recurrent_sizes(header: GGUFHeader, arch: str, n_embd: int) -> tuple[int, int]:
    """(n_embd_r, n_embd_s) as llama_hparams computes them (RWKV, LFM2, Mamba/SSM)."""
    wkv_head = _int(header, f"{arch}.wkv.head_size")
    if wkv_head:
        return _int(header, f"{arch}.token_shift_count", 2) * n_embd, n_embd * wkv_head
    shortconv = _int(header, f"{arch}.shortconv.l_cache")
    if shortconv:
        return n_embd * (shortconv - 1), 0
    d_conv = _int(header, f"{arch}.ssm.conv_kernel")
    d_inner = _int(header, f"{arch}.ssm.inner_size")
    d_state = _int(header, f"{arch}.ssm.state_size")
    n_group = _int(header, f"{arch}.ssm.group_count")
    n_conv = max(d_conv - 1, 0) * (d_inner + 2 * n_group * d_state)
    return n_conv, d_state * d_inner


def model_shape(header: GGUFHeader) -> ModelShape:
    """Read the sizes that drive memory from a header, with llama.cpp's defaults."""
    arch = header.architecture
    if not arch:
        raise ValueError("the GGUF header has no general.architecture")
    n_layer_all = _int(header, f"{arch}.block_count")
    if n_layer_all <= 0:
        raise ValueError(f"the GGUF header has no {arch}.block_count")
    n_nextn = _int(header, f"{arch}.nextn_predict_layers")
    n_embd = _int(header, f"{arch}.embedding_length")
    heads = _per_layer(header, f"{arch}.attention.head_count", n_layer_all, [0] * n_layer_all)
    heads_kv = _per_layer(header, f"{arch}.attention.head_count_kv", n_layer_all, list(heads))
    n_head = heads[0] if heads else 0
    # n_embd_head_k_full defaults to n_embd / n_head() (load_hparams), SWA to the full one
    head_k = _int(header, f"{arch}.attention.key_length", n_embd // n_head if n_head else 0)
    head_v = _int(header, f"{arch}.attention.value_length", n_embd // n_head if n_head else 0)
    head_k_swa = _int(header, f"{arch}.attention.key_length_swa", head_k)
    head_v_swa = _int(header, f"{arch}.attention.value_length_swa", head_v)
    mla = bool(_int(header, f"{arch}.attention.key_length_mla")) and bool(
        _int(header, f"{arch}.attention.value_length_mla")
    )
    n_swa = _int(header, f"{arch}.attention.sliding_window")
    if arch not in SWA_DEFAULTS or n_swa <= 0:
        n_swa = 0  # the loader leaves swa_type NONE: every layer gets the full cache
    n_layer = n_layer_all - n_nextn
    swa = _swa_layers(header, arch, n_layer, n_layer_all) if n_swa else [False] * n_layer_all
    interval = _int(header, f"{arch}.full_attention_interval", 4)
    layers = []
    for il in range(n_layer_all):
        if arch in RECURRENT_ARCHS:
            recurrent = True
        elif arch in _INTERVAL_ARCHS:
            recurrent = il < n_layer and (il + 1) % interval != 0
        elif arch in HYBRID_ARCHS:
            recurrent = heads_kv[il] == 0
        else:
            recurrent = False
        kv_heads = heads_kv[il]
        k = (head_k_swa if swa[il] else head_k) * kv_heads
        v = (head_v_swa if swa[il] else head_v) * kv_heads
        layers.append(LayerShape(k=k, v=v, swa=swa[il], recurrent=recurrent))
    n_embd_r, n_embd_s = _recurrent_sizes(header, arch, n_embd)
    n_ff = max(_per_layer(header, f"{arch}.feed_forward_length", n_layer_all, [0]) or [0])
    expert_ff = _int(header, f"{arch}.expert_feed_forward_length")
    experts_used = _int(header, f"{arch}.expert_used_count")
    n_vocab = header.array_counts.get("tokenizer.ggml.tokens") or _int(header, f"{arch}.vocab_size")
    return ModelShape(
        arch=arch,
        n_layer_all=n_layer_all,
        n_layer_nextn=n_nextn,
        n_embd=n_embd,
        n_ff=max(n_ff, expert_ff * experts_used),
        n_head=n_head,
        head_dim=head_k,
        n_vocab=n_vocab,
        n_swa=n_swa,
        mla=mla,
        n_embd_r=n_embd_r,
        n_embd_s=n_embd_s,
        layers=tuple(layers),
    )
