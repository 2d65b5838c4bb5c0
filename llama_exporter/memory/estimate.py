"""What an instance will need, per device, before it loads: weights, KV cache, compute
(pure). Every formula follows llama.cpp b11434; the function each comment names is
where to check it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gguf.constants import GGMLQuantizationType as T

from llama_exporter.catalog.gguf_header import GGUFHeader, TensorInfo, type_nbytes
from llama_exporter.memory.figure import HOST, DeviceNeed, MemoryFigure
from llama_exporter.memory.hparams import ModelShape, model_shape
from llama_exporter.memory.launch import Launch

_CACHE_TYPES = {
    "f32": T.F32,
    "f16": T.F16,
    "bf16": T.BF16,
    "q8_0": T.Q8_0,
    "q4_0": T.Q4_0,
    "q4_1": T.Q4_1,
    "iq4_nl": T.IQ4_NL,
    "q5_0": T.Q5_0,
    "q5_1": T.Q5_1,
}
_LAYER = re.compile(r"blk\.(\d+)\.")
_PAD = 256  # llama_context ctor: n_ctx and n_ctx_seq are padded to 256 cells

# ggml-cpu/repack.cpp ggml_repack_get_optimal_repack_type: the weight types x86 with AVX2
# repacks into the CPU_REPACK buffer (a second, anonymous copy beside the mapped file).
REPACK_X86_AVX2 = frozenset({T.Q4_0, T.Q4_K, T.IQ4_NL, T.MXFP4})
REPACK_X86_AVX512 = REPACK_X86_AVX2 | {T.Q2_K}


def cpu_repack_types(machine: str, cpu_flags: frozenset[str]) -> frozenset[int]:
    """The weight types this CPU repacks (x86 rules only; others: none, so the estimate
    may come out low there by that copy: the learned figure then corrects it)."""
    if machine in ("x86_64", "amd64", "AMD64") and "avx2" in cpu_flags:
        return frozenset(REPACK_X86_AVX512 if "avx512f" in cpu_flags else REPACK_X86_AVX2)
    return frozenset()


@dataclass(frozen=True)
class Placement:
    """Where llama.cpp puts each layer (llama_model_base::load_tensors)."""

    gpus: tuple[str, ...]
    n_layer_all: int
    gpu_layers: int

    @classmethod
    def of(cls, shape: ModelShape, launch: Launch, gpus: tuple[str, ...]) -> Placement:
        # llama_model n_gpu_layers(): -1 (auto) is every layer plus the output layer
        wanted = shape.n_layer_all + 1 if launch.gpu_layers is None else launch.gpu_layers
        layers = min(max(wanted, 0), shape.n_layer_all + 1) if gpus else 0
        return cls(gpus, shape.n_layer_all, layers)

    def device(self, il: int) -> str:
        """The device of layer il; il == n_layer_all is the output layer."""
        start = self.n_layer_all + 1 - self.gpu_layers  # i_gpu_start
        if not self.gpus or il < start:
            return HOST
        # the default split is by free memory, which we cannot know: an even split
        return self.gpus[min(len(self.gpus) - 1, (il - start) * len(self.gpus) // self.gpu_layers)]


def cells(launch: Launch, shape: ModelShape) -> tuple[int, int, int, int]:
    """(n_ctx_seq, SWA cache cells, streams, n_ubatch) as llama_context and
    llama_kv_cache_iswa size them."""
    n_seq = max(1, launch.parallel)
    n_ctx = -(-max(launch.ctx_size, 1) // _PAD) * _PAD
    if launch.kv_unified:
        n_ctx_seq, n_stream = n_ctx, 1
    else:
        n_ctx_seq, n_stream = -(-(n_ctx // n_seq) // _PAD) * _PAD, n_seq
    n_batch = min(n_ctx, launch.batch)  # causal attention: the batch is capped by n_ctx
    n_ubatch = min(n_batch, launch.ubatch)
    if launch.swa_full or not shape.n_swa:
        swa = n_ctx_seq
    else:  # "the SWA cache is always padded to 256" (llama_kv_cache_iswa ctor)
        window = shape.n_swa * (n_seq if launch.kv_unified else 1) + n_ubatch
        swa = -(-min(n_ctx_seq, window) // _PAD) * _PAD
    return n_ctx_seq, swa, n_stream, n_ubatch


def _flash(launch: Launch) -> bool:
    # auto turns flash attention on where the backend supports it (CPU, CUDA, Metal,
    # Vulkan do); resolve_fused_ops logs "Flash Attention enabled"
    return launch.flash_attn != "off"


def kv_bytes(shape: ModelShape, launch: Launch, place: Placement) -> dict[str, int]:
    """KV cache bytes per device: llama_kv_cache ctor (one K and one V tensor per layer,
    [n_embd_gqa, cells, streams]), llama_memory_recurrent ctor (R and S rows per seq)."""
    out: dict[str, int] = {}
    n_ctx_seq, swa_cells, n_stream, _ = cells(launch, shape)
    type_k = _CACHE_TYPES.get(launch.cache_type_k, T.F16)
    type_v = _CACHE_TYPES.get(launch.cache_type_v, T.F16)
    v_trans = not _flash(launch)
    # [TAG_V_CACHE_VARIABLE]: without flash attention V rows are padded to the widest layer
    v_max = max((layer.v for layer in shape.layers if not layer.recurrent), default=0)
    rs_rows = max(1, launch.parallel)
    for il, layer in enumerate(shape.layers):
        if shape.n_layer_nextn and il >= shape.n_layer:
            continue  # the main context's cache filters the NextN/MTP layers out
        device = place.device(il) if launch.kv_offload else HOST
        if layer.recurrent:
            size = 4 * (shape.n_embd_r + shape.n_embd_s) * rs_rows  # F32 R and S
        else:
            n = (swa_cells if layer.swa else n_ctx_seq) * n_stream
            size = type_nbytes(type_k, layer.k) * n
            if not shape.mla:
                size += type_nbytes(type_v, v_max if v_trans else layer.v) * n
        out[device] = out.get(device, 0) + size
    return out


def _tensor_layer(tensor: TensorInfo, n_layer_all: int) -> int | None:
    """The layer a tensor belongs to: blk.N -> N, output* -> the output layer, else input."""
    match = _LAYER.match(tensor.name)
    if match:
        return int(match.group(1))
    if tensor.name.startswith("output"):
        return n_layer_all
    return None


def _repacked(tensor: TensorInfo, repack: frozenset[int]) -> bool:
    # repack's supports_op: MUL_MAT on 2-D weights (MUL_MAT_ID on 3-D experts) with
    # ne[1] % 8 == 0; token_embd is read with GET_ROWS and stays as it is
    return (
        tensor.ggml_type in repack
        and len(tensor.dims) in (2, 3)
        and tensor.dims[1] % 8 == 0
        and not tensor.name.startswith("token_embd")
    )


def weight_bytes(
    header: GGUFHeader, shape: ModelShape, place: Placement, launch: Launch, repack: frozenset[int]
) -> dict[str, int]:
    """Tensor data per device (load_tensors: input layer on the host, blk.N on layer N's
    device, output on the output layer's), plus the CPU_REPACK copies on the host."""
    out: dict[str, int] = {}
    has_output = False
    embd = 0
    for tensor in header.tensors:
        il = _tensor_layer(tensor, shape.n_layer_all)
        device = HOST if il is None else place.device(il)
        if tensor.name == "output.weight":
            has_output = True
        if tensor.name == "token_embd.weight":
            embd = tensor.nbytes
        if device == HOST and _repacked(tensor, repack):
            # mmap: the mapped buffer still spans the original bytes; without mmap the
            # tensor is only in the repack buffer
            out[HOST] = out.get(HOST, 0) + tensor.nbytes * (2 if launch.mmap else 1)
        else:
            out[device] = out.get(device, 0) + tensor.nbytes
    output_device = place.device(shape.n_layer_all)
    if not has_output and output_device != HOST:
        # tied embeddings: the output layer gets its own copy of token_embd (TENSOR_DUPLICATED)
        out[output_device] = out.get(output_device, 0) + embd
    return out


def compute_bytes(shape: ModelShape, launch: Launch, place: Placement) -> dict[str, int]:
    """Compute buffers (sched_reserve's graph allocation) and the output buffer.

    llama.cpp sizes these by allocating the worst-case graph; we do not rebuild the
    graph. The formula counts the live activations of one ubatch (residual, Q/K/V,
    FFN), the KQ mask(s) (f16 with flash attention), the KQ scores without it, and one
    row of logits; fitted on gemma-3 (bench/memory.py shows its error over the grid).
    The output buffer (llama_context::output_reserve: n_vocab floats per sequence) is
    counted here too: llama.cpp's breakdown table leaves it out, but it is memory.
    """
    n_ctx_seq, swa_cells, _, ub = cells(launch, shape)
    attn_cells = n_ctx_seq + (swa_cells if any(layer.swa for layer in shape.layers) else 0)
    heads_dim = shape.n_head * shape.head_dim
    act = 4 * ub * (4 * shape.n_embd + 2 * shape.n_ff + 2 * heads_dim) + 4 * shape.n_vocab
    if _flash(launch):
        attn = 2 * ub * attn_cells
    else:
        attn = 4 * ub * attn_cells + 4 * ub * shape.n_head * n_ctx_seq
    output = 4 * shape.n_vocab * max(1, launch.parallel)
    device = place.device(shape.n_layer_all)
    out = {device: act + attn}
    if device != HOST:  # the host keeps the inputs and the output buffer
        out[HOST] = 4 * ub * shape.n_embd
    out[HOST] = out.get(HOST, 0) + output
    return out


def estimate(
    header: GGUFHeader,
    launch: Launch,
    *,
    gpus: tuple[str, ...] = (),
    repack: frozenset[int] = frozenset(),
    shared_weights_key: str | None = None,
) -> MemoryFigure:
    """The figure before a load: per device, weights + KV cache + compute."""
    shape = model_shape(header)
    place = Placement.of(shape, launch, gpus)
    weights = weight_bytes(header, shape, place, launch, repack)
    kv = kv_bytes(shape, launch, place)
    compute = compute_bytes(shape, launch, place)
    devices = {
        device: DeviceNeed(
            weights=weights.get(device, 0), kv=kv.get(device, 0), compute=compute.get(device, 0)
        )
        for device in sorted(set(weights) | set(kv) | set(compute))
    }
    return MemoryFigure(
        devices=devices,
        source="estimate",
        shared_weights_key=shared_weights_key if launch.mmap else None,
    )
