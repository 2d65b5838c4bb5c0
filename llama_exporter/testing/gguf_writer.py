"""Write tiny GGUF files (header and metadata only) for tests and benchmarks."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

# GGUF value type ids (gguf.GGUFValueType)
_INT32 = 5
_UINT32 = 4
_FLOAT32 = 6
_BOOL = 7
_STRING = 8
_ARRAY = 9
_UINT64 = 10

_ALIGNMENT = 32  # general.alignment's default: tensor data starts on this boundary

MetaScalar = int | float | bool | str
MetaValue = MetaScalar | Sequence["MetaValue"]
TensorSpec = tuple[str, Sequence[int], int, int]  # name, dims, ggml type id, data bytes


def _string(value: str, endian: str = "<") -> bytes:
    raw = value.encode()
    return struct.pack(endian + "Q", len(raw)) + raw


def _typed(value: MetaValue, endian: str) -> tuple[int, bytes]:
    """Return (GGUF value type, encoded payload without the type id)."""
    if isinstance(value, bool):
        return _BOOL, struct.pack(endian + "?", value)
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return _UINT32, struct.pack(endian + "I", value)
        if value < 0:
            return _INT32, struct.pack(endian + "i", value)
        return _UINT64, struct.pack(endian + "Q", value)
    if isinstance(value, float):
        return _FLOAT32, struct.pack(endian + "f", value)
    if isinstance(value, str):
        return _STRING, _string(value, endian)
    items = list(value)
    encoded = [_typed(item, endian) for item in items]
    item_type = encoded[0][0] if encoded else _STRING
    if any(t != item_type for t, _ in encoded):
        raise TypeError("GGUF arrays hold one value type")
    head = struct.pack(endian + "IQ", item_type, len(items))
    return _ARRAY, head + b"".join(payload for _, payload in encoded)


def _value(value: MetaValue, endian: str = "<") -> bytes:
    vtype, payload = _typed(value, endian)
    return struct.pack(endian + "I", vtype) + payload


DEFAULT_METADATA: Mapping[str, MetaValue] = {
    "general.architecture": "llama",
    "general.name": "tiny test model",
    "general.file_type": 15,  # Q4_K_M
    "general.size_label": "1K",
    "llama.context_length": 2048,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"],
}


def write_minimal_gguf(
    path: Path,
    metadata: Mapping[str, MetaValue] | None = None,
    *,
    version: int = 3,
    big_endian: bool = False,
    tensors: Sequence[TensorSpec] = (),
) -> Path:
    """Write a GGUF file with the given metadata and tensor table; return its path.

    Value types: bool, int (uint32, int32 or uint64), float (float32), str, and
    sequences of one of these (nested sequences give arrays of arrays). Tensors are
    (name, dims, ggml type id, data bytes); their data is a hole (a sparse file of the
    right size), so a header for a 70B model costs nothing on disk.
    """
    endian = ">" if big_endian else "<"
    meta = dict(DEFAULT_METADATA if metadata is None else metadata)
    body = b"".join(_string(key, endian) + _value(value, endian) for key, value in meta.items())
    header = b"GGUF" + struct.pack(endian + "IQQ", version, len(tensors), len(meta))
    table = b""
    offset = 0
    for name, dims, ggml_type, nbytes in tensors:
        table += _string(name, endian) + struct.pack(endian + "I", len(dims))
        table += struct.pack(endian + "Q" * len(dims), *dims)
        table += struct.pack(endian + "IQ", ggml_type, offset)
        offset += -(-nbytes // _ALIGNMENT) * _ALIGNMENT
    data = header + body + table
    with open(path, "wb") as handle:
        handle.write(data)
        if tensors:
            handle.truncate(-(-len(data) // _ALIGNMENT) * _ALIGNMENT + offset)
    return path
