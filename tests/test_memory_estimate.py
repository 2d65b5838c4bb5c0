"""The estimate on synthetic GGUF headers (GQA, SWA, MoE, MLA, recurrent, offload), each
expected figure computed here by hand from llama.cpp b11434's formulas (the function
named beside it), not by the code under test."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_exporter.catalog.gguf_header import GGUFHeader, read_gguf_header, type_nbytes
from llama_exporter.memory.estimate import REPACK_X86_AVX2, cells, estimate
from llama_exporter.memory.hparams import model_shape
from llama_exporter.memory.launch import Launch, parse_launch
from llama_exporter.testing.gguf_writer import MetaValue, TensorSpec, write_minimal_gguf

F32, F16, Q4_0, Q8_0, Q4_K = 0, 1, 2, 8, 12
VOCAB = 1000


def _t(name: str, dims: list[int], ggml_type: int) -> TensorSpec:
    n = 1
    for d in dims:
        n *= d
    return (name, dims, ggml_type, type_nbytes(ggml_type, n))


def _model(
    tmp: Path,
    arch: str,
    meta: dict[str, MetaValue],
    *,
    n_layer: int,
    n_embd: int = 256,
    wtype: int = Q8_0,
    experts: int = 0,
) -> Path:
    tensors = [_t("token_embd.weight", [n_embd, VOCAB], Q8_0)]
    for il in range(n_layer):
        tensors.append(_t(f"blk.{il}.attn_norm.weight", [n_embd], F32))
        tensors.append(_t(f"blk.{il}.attn_q.weight", [n_embd, n_embd], wtype))
        if experts:
            tensors.append(_t(f"blk.{il}.ffn_up_exps.weight", [n_embd, 128, experts], wtype))
        else:
            tensors.append(_t(f"blk.{il}.ffn_up.weight", [n_embd, 512], wtype))
    tensors.append(_t("output_norm.weight", [n_embd], F32))
    meta = {
        "general.architecture": arch,
        f"{arch}.block_count": n_layer,
        f"{arch}.embedding_length": n_embd,
        f"{arch}.feed_forward_length": 512,
        "tokenizer.ggml.tokens": [f"t{i}" for i in range(VOCAB)],
        **meta,
    }
    return write_minimal_gguf(tmp / f"{arch}.gguf", meta, tensors=tensors)


def test_header_reader_matches_gguf_reader(tmp_path: Path) -> None:
    path = _model(tmp_path, "llama", {"llama.attention.head_count": 8}, n_layer=3)
    ours = read_gguf_header(path)
    theirs = gguf.GGUFReader(path)
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    assert [t.nbytes for t in ours.tensors] == [int(t.n_bytes) for t in theirs.tensors]
    assert ours.array_counts["tokenizer.ggml.tokens"] == VOCAB
    assert ours.values["llama.block_count"] == 3


def test_gqa_kv_cache(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "llama.attention.head_count": 8,
        "llama.attention.head_count_kv": 2,
    }
    header = read_gguf_header(_model(tmp_path, "llama", meta, n_layer=4))
    fig = estimate(header, Launch(ctx_size=1000, parallel=2, flash_attn="on"))
    # n_ctx = pad(1000, 256) = 1024; n_ctx_seq = pad(1024 / 2, 256) = 512; 2 streams;
    # n_embd_k_gqa = n_embd_v_gqa = (256 / 8) * 2 = 64, f16: 4 layers x 1024 cells x 128 x 2 B
    assert fig.devices["cpu"].kv == 4 * 512 * 2 * (64 + 64) * 2
    # weights: every tensor's bytes, all on the host
    assert fig.devices["cpu"].weights == sum(t.nbytes for t in header.tensors)


def test_quantized_k_and_unified(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {"llama.attention.head_count": 4}
    header = read_gguf_header(_model(tmp_path, "llama", meta, n_layer=2))
    launch = parse_launch(["-c", "2048", "-np", "4", "-ctk", "q8_0", "-kvu", "-fa", "on"])
    fig = estimate(header, launch)
    # unified: one stream of n_ctx = 2048 cells; K q8_0 row of 256 = 8 blocks x 34 B
    assert fig.devices["cpu"].kv == 2 * 2048 * (8 * 34 + 256 * 2)


def test_v_padded_without_flash_attention(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "llama.attention.head_count": 4,
        "llama.attention.head_count_kv": [4, 2],  # per-layer: V widths differ
    }
    header = read_gguf_header(_model(tmp_path, "llama", meta, n_layer=2))
    on = estimate(header, Launch(ctx_size=256, parallel=1, flash_attn="on")).devices["cpu"]
    off = estimate(header, Launch(ctx_size=256, parallel=1, flash_attn="off")).devices["cpu"]
    assert on.kv == 256 * 2 * ((256 + 256) + (128 + 128))
    # [TAG_V_CACHE_VARIABLE]: V rows padded to the widest layer's 256
    assert off.kv == 256 * 2 * ((256 + 256) + (128 + 256))


def test_gemma3_swa_layers(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "gemma3.attention.head_count": 4,
        "gemma3.attention.head_count_kv": 1,
        "gemma3.attention.key_length": 256,
        "gemma3.attention.value_length": 256,
        "gemma3.attention.sliding_window": 512,
    }
    header = read_gguf_header(_model(tmp_path, "gemma3", meta, n_layer=12))
    shape = model_shape(header)
    # set_swa_pattern(6): layers 5 and 11 are full, the other ten slide
    assert [il for il, layer in enumerate(shape.layers) if not layer.swa] == [5, 11]
    launch = Launch(ctx_size=8192, parallel=2, flash_attn="on")
    n_ctx_seq, swa_cells, streams, ubatch = cells(launch, shape)
    # llama_kv_cache_iswa: pad(min(4096, 512 * 1 + 512), 256) = 1024 cells per stream
    assert (n_ctx_seq, swa_cells, streams, ubatch) == (4096, 1024, 2, 512)
    kv = estimate(header, launch).devices["cpu"].kv
    assert kv == 2 * 4096 * 2 * 512 * 2 + 10 * 1024 * 2 * 512 * 2
    full = estimate(header, Launch(ctx_size=8192, parallel=2, swa_full=True)).devices["cpu"].kv
    assert full == 12 * 4096 * 2 * 512 * 2


def test_swa_key_ignored_where_the_loader_ignores_it(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "llama.attention.head_count": 4,
        "llama.attention.sliding_window": 128,  # llama's loader never turns SWA on
    }
    shape = model_shape(read_gguf_header(_model(tmp_path, "llama", meta, n_layer=2)))
    assert shape.n_swa == 0 and not any(layer.swa for layer in shape.layers)


def test_mla_has_no_v_cache(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "deepseek2.attention.head_count": 16,
        "deepseek2.attention.head_count_kv": 1,
        "deepseek2.attention.key_length": 576,  # kv_lora_rank 512 + rope 64
        "deepseek2.attention.value_length": 512,
        "deepseek2.attention.key_length_mla": 192,
        "deepseek2.attention.value_length_mla": 128,
    }
    header = read_gguf_header(_model(tmp_path, "deepseek2", meta, n_layer=3))
    kv = estimate(header, Launch(ctx_size=1024, parallel=1)).devices["cpu"].kv
    assert kv == 3 * 1024 * 576 * 2  # K only (llama_kv_cache ctor: has_v = !is_mla)


def test_mamba_recurrent_state(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "mamba.attention.head_count": 0,
        "mamba.ssm.conv_kernel": 4,
        "mamba.ssm.inner_size": 512,
        "mamba.ssm.state_size": 16,
        "mamba.ssm.group_count": 0,
    }
    header = read_gguf_header(_model(tmp_path, "mamba", meta, n_layer=2))
    kv = estimate(header, Launch(ctx_size=4096, parallel=3)).devices["cpu"].kv
    # n_embd_r = (4 - 1) * 512, n_embd_s = 16 * 512; F32; one row per sequence
    assert kv == 2 * 4 * (3 * 512 + 16 * 512) * 3


def test_hybrid_layers_by_kv_heads(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "jamba.attention.head_count": 4,
        "jamba.attention.head_count_kv": [0, 2, 0, 0],
        "jamba.ssm.conv_kernel": 4,
        "jamba.ssm.inner_size": 256,
        "jamba.ssm.state_size": 8,
    }
    header = read_gguf_header(_model(tmp_path, "jamba", meta, n_layer=4))
    kv = estimate(header, Launch(ctx_size=512, parallel=1, flash_attn="on")).devices["cpu"].kv
    attn = 512 * (128 + 128) * 2  # one attention layer: 2 heads x 64
    rec = 3 * 4 * (3 * 256 + 8 * 256)  # three recurrent layers
    assert kv == attn + rec


def test_moe_weights_and_repack(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {
        "qwen3moe.attention.head_count": 4,
        "qwen3moe.expert_count": 8,
        "qwen3moe.expert_used_count": 2,
        "qwen3moe.expert_feed_forward_length": 128,
    }
    path = _model(tmp_path, "qwen3moe", meta, n_layer=2, wtype=Q4_K, experts=8)
    header = read_gguf_header(path)
    total = sum(t.nbytes for t in header.tensors)
    repacked = sum(t.nbytes for t in header.tensors if t.ggml_type == Q4_K)
    assert repacked > 0
    plain = estimate(header, Launch()).devices["cpu"].weights
    with_repack = estimate(header, Launch(), repack=REPACK_X86_AVX2).devices["cpu"].weights
    assert plain == total
    assert with_repack == total + repacked  # mmap keeps the original beside the copy
    no_mmap = estimate(header, Launch(mmap=False), repack=REPACK_X86_AVX2).devices["cpu"]
    assert no_mmap.weights == total


def test_gpu_layers_split(tmp_path: Path) -> None:
    meta: dict[str, MetaValue] = {"llama.attention.head_count": 4}
    header = read_gguf_header(_model(tmp_path, "llama", meta, n_layer=4))
    fig = estimate(header, parse_launch(["-ngl", "2", "-fa", "on"]), gpus=("cuda0",))
    layer = {
        il: sum(t.nbytes for t in header.tensors if t.name.startswith(f"blk.{il}."))
        for il in range(4)
    }
    embd = next(t.nbytes for t in header.tensors if t.name == "token_embd.weight")
    out_norm = next(t.nbytes for t in header.tensors if t.name == "output_norm.weight")
    # i_gpu_start = 4 + 1 - 2 = 3: layer 3 and the output layer on the GPU; tied
    # embeddings give the output layer its own copy of token_embd
    assert fig.devices["cuda0"].weights == layer[3] + out_norm + embd
    assert fig.devices["cpu"].weights == embd + layer[0] + layer[1] + layer[2]
    per_layer_kv = 4096 * 512 * 2
    assert fig.devices["cuda0"].kv == per_layer_kv
    assert fig.devices["cpu"].kv == 3 * per_layer_kv
    nkvo = estimate(header, parse_launch(["-ngl", "99", "-nkvo"]), gpus=("cuda0",))
    assert nkvo.devices["cpu"].kv == 4 * per_layer_kv and nkvo.devices["cuda0"].kv == 0


@settings(max_examples=60, deadline=None)
@given(
    ctx=st.integers(min_value=1, max_value=200_000),
    parallel=st.integers(min_value=1, max_value=16),
    unified=st.booleans(),
)
def test_cells_follow_llama_context(ctx: int, parallel: int, unified: bool) -> None:
    from llama_exporter.memory.hparams import LayerShape, ModelShape

    shape = ModelShape(
        "x", 1, 0, 64, 64, 1, 64, 10, 0, False, 0, 0, (LayerShape(64, 64, False, False),)
    )
    n_ctx_seq, swa, streams, _ = cells(
        Launch(ctx_size=ctx, parallel=parallel, kv_unified=unified), shape
    )
    n_ctx = -(-ctx // 256) * 256
    assert n_ctx_seq % 256 == 0 and swa == n_ctx_seq
    if unified:
        assert (n_ctx_seq, streams) == (n_ctx, 1)
    else:
        assert streams == parallel and n_ctx_seq >= n_ctx // parallel


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-c", "8192", "--parallel=3"], Launch(ctx_size=8192, parallel=3)),
        (["-fa", "off", "--flash-attn", "on"], Launch(flash_attn="on")),
        (["-ngl", "all", "-ctv", "Q8_0"], Launch(gpu_layers=1 << 20, cache_type_v="q8_0")),
        (["--no-mmap", "--swa-full", "-ub", "256"], Launch(mmap=False, swa_full=True, ubatch=256)),
    ],
)
def test_parse_launch(argv: list[str], expected: Launch) -> None:
    assert parse_launch(argv) == expected


def test_header_skips_are_remembered(tmp_path: Path) -> None:
    from llama_exporter.catalog.gguf_header import GGUFHeaderCache

    meta: dict[str, MetaValue] = {
        "general.architecture": "llama",
        "tokenizer.ggml.tokens": [f"token{i}" for i in range(5000)],
        "llama.block_count": 1,
    }
    path = write_minimal_gguf(tmp_path / "m.gguf", meta, tensors=[_t("blk.0.w", [32, 8], F16)])
    skips = tmp_path / "skips.json"
    first = GGUFHeaderCache(skips).get(path)
    assert skips.exists()  # where the 5000 strings end
    again = GGUFHeaderCache(skips).get(path)  # a new process: one seek over them
    assert again == first == read_gguf_header(path)
    # a wrong remembered end (a hand-edited file) falls back to reading everything
    key = next(iter(json.loads(skips.read_text())))
    start = int(next(iter(json.loads(skips.read_text())[key])))
    skips.write_text(json.dumps({key: {str(start): start + 8 * 5000 + 3}}))
    assert GGUFHeaderCache(skips).get(path) == first


@settings(max_examples=40, deadline=None)
@given(
    small=st.integers(min_value=1, max_value=65536),
    extra=st.integers(min_value=0, max_value=65536),
    parallel=st.integers(min_value=1, max_value=8),
    flash=st.sampled_from(["on", "off"]),
)
def test_more_context_never_needs_less(
    tmp_path_factory: pytest.TempPathFactory, small: int, extra: int, parallel: int, flash: str
) -> None:
    header = _gemma_like(tmp_path_factory)
    a = estimate(header, Launch(ctx_size=small, parallel=parallel, flash_attn=flash))
    b = estimate(header, Launch(ctx_size=small + extra, parallel=parallel, flash_attn=flash))
    assert b.devices["cpu"].kv >= a.devices["cpu"].kv
    assert b.total("cpu") >= a.total("cpu")
    assert a.devices["cpu"].weights == b.devices["cpu"].weights


_GEMMA_LIKE: list[GGUFHeader] = []


def _gemma_like(factory: pytest.TempPathFactory) -> GGUFHeader:
    if not _GEMMA_LIKE:
        meta: dict[str, MetaValue] = {
            "gemma3.attention.head_count": 4,
            "gemma3.attention.head_count_kv": 1,
            "gemma3.attention.key_length": 256,
            "gemma3.attention.value_length": 256,
            "gemma3.attention.sliding_window": 512,
        }
        path = _model(factory.mktemp("g"), "gemma3", meta, n_layer=6)
        _GEMMA_LIKE.append(read_gguf_header(path))
    return _GEMMA_LIKE[0]
