"""The whole GGUF header the memory estimate needs: every scalar, the numeric arrays
(per-layer head counts, SWA patterns) and the tensor info table, with no tensor data.

Built on gguf_meta's forward-only stream: string arrays (the tokenizer's hundreds of
thousands of entries) are skipped undecoded and only counted, so the gemma file's
header reads in a few milliseconds (``gguf.GGUFReader`` takes seconds: bench/memory.py).
"""

from __future__ import annotations

import json
import os
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from llama_exporter.atomic import write_atomic
from llama_exporter.catalog.gguf_meta import (
    _ARRAY,
    _FIXED_SIZES,
    _FORMATS,
    _MAX_KEY_LEN,
    _STRING,
    GGUFError,
    Scalar,
    _Stream,
    _Truncated,
    read_preamble,
)

_MAX_NUMERIC_ARRAY = 1 << 16  # longer numeric arrays are not per-layer values: skipped
_MAX_DIMS = 8  # GGML_MAX_DIMS is 4; a bigger count is a corrupt file
_MAX_TENSORS = 1 << 22
# String arrays this long (the tokenizer's) cost most of a read, one length at a time:
# where each one ends is remembered (``skips``) so the next read of the same file
# version jumps over it in one seek.
_REMEMBER_SKIP = 4096

NumericArray = tuple[int | float | bool, ...]


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of the table: its name, ggml type, shape and data bytes."""

    name: str
    ggml_type: int
    dims: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True)
class GGUFHeader:
    """What a GGUF file says about its model, without reading tensor data."""

    values: Mapping[str, Scalar]  # every scalar key
    arrays: Mapping[str, NumericArray]  # numeric arrays up to _MAX_NUMERIC_ARRAY items
    array_counts: Mapping[str, int]  # item count of every array (string arrays too)
    tensors: tuple[TensorInfo, ...]
    file_size: int

    @property
    def architecture(self) -> str:
        arch = self.values.get("general.architecture")
        return arch if isinstance(arch, str) else ""


def type_nbytes(ggml_type: int, elements: int) -> int:
    """Bytes of `elements` values of a ggml type (ggml_row_size: blocks x block bytes)."""
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
    return elements // block * size


def _numeric_array(stream: _Stream, item_type: int, count: int) -> NumericArray:
    size = _FIXED_SIZES[item_type]
    raw = stream.read(count * size, f"an array of {count} values")
    return tuple(struct.unpack(f"{stream.endian}{count}{_FORMATS[item_type]}", raw))


def _position(stream: _Stream) -> int:
    """The stream's offset in the file."""
    return stream._size - stream.remaining()


def _read_kv(
    stream: _Stream, kv_count: int, skips: dict[int, int]
) -> tuple[dict[str, Scalar], dict[str, NumericArray], dict[str, int]]:
    values: dict[str, Scalar] = {}
    arrays: dict[str, NumericArray] = {}
    counts: dict[str, int] = {}
    for _ in range(kv_count):
        key_len = stream.u64()
        if key_len > _MAX_KEY_LEN:
            raise ValueError(f"corrupt header: metadata key of {key_len} bytes")
        key = stream.read(key_len, "a metadata key").decode("utf-8", errors="replace")
        vtype = stream.value_type()
        if vtype != _ARRAY:
            value = stream.scalar(vtype)
            if value is not None:
                values[key] = value
            continue
        item_type = stream.value_type()
        count = stream.u64()
        counts[key] = count
        if item_type in _FIXED_SIZES and count <= _MAX_NUMERIC_ARRAY:
            arrays[key] = _numeric_array(stream, item_type, count)
        elif item_type in _FIXED_SIZES:
            stream.skip(count * _FIXED_SIZES[item_type], f"an array of {count} values")
        elif item_type == _STRING:
            start = _position(stream)
            end = skips.get(start)
            if end is not None and end >= start + 8 * count:
                stream.skip(end - start, f"an array of {count} strings")
            else:
                stream.skip_strings(count)
                if count >= _REMEMBER_SKIP:
                    skips[start] = _position(stream)
        else:
            stream._check(count * 12, f"an array of {count} arrays")
            for _ in range(count):
                stream.skip_value(item_type)
    return values, arrays, counts


def _read_tensor_table(stream: _Stream, count: int) -> tuple[TensorInfo, ...]:
    tensors = []
    for _ in range(count):
        name_len = stream.u64()
        if name_len > _MAX_KEY_LEN:
            raise ValueError(f"corrupt header: tensor name of {name_len} bytes")
        name = stream.read(name_len, "a tensor name").decode("utf-8", errors="replace")
        n_dims = stream.u32()
        if n_dims > _MAX_DIMS:
            raise ValueError(f"corrupt header: tensor {name} has {n_dims} dimensions")
        dims = tuple(stream.u64() for _ in range(n_dims))
        ggml_type = stream.u32()
        stream.u64()  # data offset: the estimate needs sizes, not places
        elements = 1
        for dim in dims:
            elements *= dim
        try:
            nbytes = type_nbytes(ggml_type, elements)
        except (ValueError, KeyError):
            raise ValueError(f"tensor {name} has unknown ggml type {ggml_type}") from None
        tensors.append(TensorInfo(name, ggml_type, dims, nbytes))
    return tuple(tensors)


def read_header(handle: BinaryIO, *, size: int, skips: dict[int, int] | None = None) -> GGUFHeader:
    """Read every metadata entry and the tensor table from an open GGUF file.

    skips maps where a long string array's items start to where they end, from an earlier
    read of the same file version; the ones found here are added to it.
    """
    _, endian = read_preamble(handle)
    stream = _Stream(handle, endian, size)
    tensor_count = stream.u64()
    kv_count = stream.u64()
    if kv_count > size or tensor_count > min(size, _MAX_TENSORS):
        raise ValueError(f"corrupt header: {kv_count} entries, {tensor_count} tensors")
    values, arrays, counts = _read_kv(stream, kv_count, {} if skips is None else skips)
    tensors = _read_tensor_table(stream, tensor_count)
    if handle.tell() > size:
        raise _Truncated
    return GGUFHeader(
        values=MappingProxyType(values),
        arrays=MappingProxyType(arrays),
        array_counts=MappingProxyType(counts),
        tensors=tensors,
        file_size=size,
    )


def read_gguf_header(path: Path | str, skips: dict[int, int] | None = None) -> GGUFHeader:
    """Read a GGUF file's full header (metadata and tensor table, no tensor data)."""
    path = Path(path)
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            return read_header(handle, size=size, skips=skips)
    except _Truncated as exc:
        detail = f": {exc}" if str(exc) else ""
        raise GGUFError(f"{path}: truncated GGUF file (the header ends early{detail})") from None
    except (ValueError, KeyError, OverflowError, struct.error) as exc:
        raise GGUFError(f"{path}: {exc}") from exc


class GGUFHeaderCache:
    """read_gguf_header results keyed by (resolved path, size, mtime_ns); thread-safe.

    With a skips_file, where each file version's long string arrays end is kept on disk
    (JSON, written atomically), so even the first read after a restart is a few seeks.
    """

    def __init__(self, skips_file: Path | None = None) -> None:
        self._entries: dict[Path, tuple[tuple[int, int], GGUFHeader]] = {}
        self._lock = threading.Lock()
        self._skips_file = skips_file
        self._skips: dict[str, dict[int, int]] | None = None

    def _load_skips(self) -> dict[str, dict[int, int]]:
        if self._skips is None:
            self._skips = {}
            if self._skips_file is not None:
                try:
                    raw = json.loads(self._skips_file.read_text(encoding="utf-8"))
                    self._skips = {
                        str(k): {int(a): int(b) for a, b in v.items()} for k, v in raw.items()
                    }
                except (OSError, ValueError, AttributeError, TypeError):
                    pass  # missing or unreadable: the next read rebuilds it
        return self._skips

    def _read(self, path: Path, stamp: tuple[int, int]) -> GGUFHeader:
        key = f"{path}|{stamp[0]}|{stamp[1]}"
        with self._lock:
            known = dict(self._load_skips().get(key, {}))
        found = dict(known)
        try:
            header = read_gguf_header(path, found)
        except GGUFError:
            if not known:
                raise
            found = {}
            header = read_gguf_header(path, found)  # a stale skip: read it all
        if found != known and self._skips_file is not None:
            with self._lock:
                skips = self._load_skips()
                skips[key] = found
                text = json.dumps({k: {str(a): b for a, b in v.items()} for k, v in skips.items()})
                write_atomic(self._skips_file, text)
        return header

    def get(self, path: Path) -> GGUFHeader:
        """The file's header, read again only when the file changed."""
        resolved = Path(path).expanduser().resolve()
        st = resolved.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._entries.get(resolved)
            if entry is not None and entry[0] == stamp:
                return entry[1]
        header = self._read(resolved, stamp)
        with self._lock:
            self._entries[resolved] = (stamp, header)
        return header
