"""Write tiny GGUF files (header and metadata only) for tests and benchmarks."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from pathlib import Path

# GGUF value type ids (gguf.GGUFValueType)
_UINT32 = 4
_STRING = 8
_ARRAY = 9
_UINT64 = 10

MetaValue = int | str | Sequence[str]


def _string(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value: MetaValue) -> bytes:
    if isinstance(value, bool):
        raise TypeError("bool metadata is not supported by this writer")
    if isinstance(value, int):
        if 0 <= value < 2**32:
            return struct.pack("<I", _UINT32) + struct.pack("<I", value)
        return struct.pack("<I", _UINT64) + struct.pack("<Q", value)
    if isinstance(value, str):
        return struct.pack("<I", _STRING) + _string(value)
    items = list(value)
    out = struct.pack("<I", _ARRAY) + struct.pack("<IQ", _STRING, len(items))
    return out + b"".join(_string(item) for item in items)


DEFAULT_METADATA: Mapping[str, MetaValue] = {
    "general.architecture": "llama",
    "general.name": "tiny test model",
    "general.file_type": 15,  # Q4_K_M
    "general.size_label": "1K",
    "llama.context_length": 2048,
    "tokenizer.ggml.tokens": ["<s>", "</s>", "a", "b"],
}


def write_minimal_gguf(path: Path, metadata: Mapping[str, MetaValue] | None = None) -> Path:
    """Write a GGUF v3 file with the given metadata and no tensors; return its path."""
    meta = dict(DEFAULT_METADATA if metadata is None else metadata)
    body = b"".join(_string(key) + _value(value) for key, value in meta.items())
    header = b"GGUF" + struct.pack("<IQQ", 3, 0, len(meta))
    path.write_bytes(header + body)
    return path
