"""GGUF header reader: only the metadata keys we need, plus a cache by (path, size, mtime).

``gguf.GGUFReader`` decodes every field, including tokenizer arrays with hundreds of
thousands of entries: 12.9 s and 25.6 s on a 253 MB gemma file (bench/gguf_read.py on two
different days), against about 58 ms for this reader, which streams the
key/value section in large chunks, skips arrays without decoding them and stops
before the tensor table.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gguf import GGUFValueType, LlamaFileType

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_CHUNK = 1 << 20  # bytes read at a time
_MAX_KEY_LEN = 1 << 16  # a longer key means a corrupt file, not a real one
_MAX_VALUE_LEN = 1 << 20  # a longer wanted string is skipped, not decoded

# Byte sizes of the fixed-size value types.
_FIXED_SIZES: dict[int, int] = {
    GGUFValueType.UINT8: 1,
    GGUFValueType.INT8: 1,
    GGUFValueType.UINT16: 2,
    GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4,
    GGUFValueType.INT32: 4,
    GGUFValueType.FLOAT32: 4,
    GGUFValueType.BOOL: 1,
    GGUFValueType.UINT64: 8,
    GGUFValueType.INT64: 8,
    GGUFValueType.FLOAT64: 8,
}
_FORMATS: dict[int, str] = {
    GGUFValueType.UINT8: "B",
    GGUFValueType.INT8: "b",
    GGUFValueType.UINT16: "H",
    GGUFValueType.INT16: "h",
    GGUFValueType.UINT32: "I",
    GGUFValueType.INT32: "i",
    GGUFValueType.FLOAT32: "f",
    GGUFValueType.BOOL: "?",
    GGUFValueType.UINT64: "Q",
    GGUFValueType.INT64: "q",
    GGUFValueType.FLOAT64: "d",
}
_STRING = int(GGUFValueType.STRING)
_ARRAY = int(GGUFValueType.ARRAY)

Scalar = int | float | bool | str


class GGUFError(ValueError):
    """The file is not a GGUF file this reader understands (the message names the path)."""


@dataclass(frozen=True)
class GGUFInfo:
    """What the service shows about a model file."""

    architecture: str | None
    name: str | None
    context_length: int | None  # tokens the model was trained for
    quantization: str | None  # e.g. "Q4_K_M"
    size_label: str | None  # e.g. "270M"
    file_size: int  # bytes


class _Truncated(Exception):
    """Internal: the file ended inside the header (the optional message says where)."""


class _Stream:
    """Forward-only reader over a file with a big buffer; skips without reading.

    Every length and count is checked against the bytes left in the file before
    anything is read or skipped, so a corrupt header cannot allocate or seek far.
    """

    def __init__(self, handle: BinaryIO, endian: str, size: int) -> None:
        self._handle = handle
        self._buf = b""
        self._pos = 0
        self._size = size
        self._buf_end = handle.tell()  # file offset of the end of the buffer
        self.endian = endian
        self._u64 = struct.Struct(endian + "Q")
        self._u32 = struct.Struct(endian + "I")

    def remaining(self) -> int:
        """Bytes left in the file after the current position."""
        return self._size - self._buf_end + len(self._buf) - self._pos

    def _check(self, n: int, what: str) -> None:
        """Raise _Truncated when n bytes of what do not fit in the rest of the file."""
        left = self.remaining()
        if n > left:
            raise _Truncated(f"{what} of {n} bytes, but only {max(left, 0)} bytes are left")

    def _need(self, n: int) -> None:
        """Ensure n bytes are buffered at the current position."""
        available = len(self._buf) - self._pos
        if available >= n:
            return
        self._check(n, "a value")
        more = self._handle.read(max(_CHUNK, n - available))
        self._buf_end += len(more)
        self._buf = self._buf[self._pos :] + more
        self._pos = 0
        if len(self._buf) < n:
            raise _Truncated

    def read(self, n: int, what: str = "a value") -> bytes:
        self._check(n, what)
        self._need(n)
        out = self._buf[self._pos : self._pos + n]
        self._pos += n
        return out

    def skip(self, n: int, what: str = "a value") -> None:
        available = len(self._buf) - self._pos
        if n <= available:
            self._pos += n
            return
        self._check(n, what)
        # Jump over the rest with a seek.
        self._handle.seek(n - available, os.SEEK_CUR)
        self._buf_end += n - available
        self._buf = b""
        self._pos = 0

    def u32(self) -> int:
        self._need(4)
        (value,) = self._u32.unpack_from(self._buf, self._pos)
        self._pos += 4
        return int(value)

    def u64(self) -> int:
        self._need(8)
        (value,) = self._u64.unpack_from(self._buf, self._pos)
        self._pos += 8
        return int(value)

    def string(self) -> str | None:
        """Decode a string; one longer than _MAX_VALUE_LEN is skipped and gives None."""
        length = self.u64()
        if length > _MAX_VALUE_LEN:
            self.skip(length, "a string")
            return None
        return self.read(length, "a string").decode("utf-8", errors="replace")

    def skip_strings(self, count: int) -> None:
        """Skip count length-prefixed strings (the hot loop for tokenizer arrays)."""
        self._check(count * 8, f"an array of {count} strings")
        unpack = self._u64.unpack_from
        buf, pos, end = self._buf, self._pos, len(self._buf)
        for _ in range(count):
            if pos + 8 > end:
                self._buf, self._pos = buf, pos
                self._need(8)
                buf, pos, end = self._buf, self._pos, len(self._buf)
            (length,) = unpack(buf, pos)
            pos += 8 + length
            if pos > end:  # the string runs past the buffer: jump over its rest
                self._buf, self._pos = buf, end
                self.skip(pos - end, "a string")
                buf, pos, end = self._buf, self._pos, len(self._buf)
        self._buf, self._pos = buf, pos

    def scalar(self, vtype: int) -> Scalar | None:
        if vtype == _STRING:
            return self.string()
        fmt = _FORMATS[vtype]
        size = _FIXED_SIZES[vtype]
        self._need(size)
        (value,) = struct.unpack_from(self.endian + fmt, self._buf, self._pos)
        self._pos += size
        return value  # type: ignore[no-any-return]

    def skip_value(self, vtype: int) -> None:
        if vtype == _STRING:
            self.skip(self.u64(), "a string")
        elif vtype == _ARRAY:
            item_type = self.value_type()
            count = self.u64()
            if item_type in _FIXED_SIZES:
                self.skip(count * _FIXED_SIZES[item_type], f"an array of {count} values")
            elif item_type == _STRING:
                self.skip_strings(count)
            else:
                self._check(count * 12, f"an array of {count} arrays")  # type + count each
                for _ in range(count):
                    self.skip_value(item_type)
        else:
            self.skip(_FIXED_SIZES[vtype])

    def value_type(self) -> int:
        vtype = self.u32()
        if vtype not in _FIXED_SIZES and vtype not in (_STRING, _ARRAY):
            raise ValueError(f"corrupt header: unknown metadata value type {vtype}")
        return vtype


def _wanted(key: str) -> bool:
    """Keys whose scalar values we keep; everything else is skipped undecoded."""
    return key.startswith("general.") or key.endswith(".context_length")


def read_preamble(handle: BinaryIO) -> tuple[int, str]:
    """The magic and version at a GGUF file's start: (version, struct byte order)."""
    magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    raw_version = handle.read(4)
    if len(raw_version) < 4:
        raise _Truncated
    (version,) = struct.unpack("<I", raw_version)
    endian = "<"
    if version & 0xFFFF == 0:  # written for the other byte order
        (version,) = struct.unpack(">I", raw_version)
        endian = ">"
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"GGUF version {version} is not supported (supported: "
            f"{', '.join(map(str, SUPPORTED_VERSIONS))}); convert the file with a current llama.cpp"
        )
    return version, endian


def read_gguf_metadata(handle: BinaryIO, *, size: int) -> tuple[int, dict[str, Scalar]]:
    """Return (version, scalar values of the wanted keys) from an open GGUF file."""
    version, endian = read_preamble(handle)
    stream = _Stream(handle, endian, size)
    stream.u64()  # tensor count
    kv_count = stream.u64()
    if kv_count > size:  # every entry takes bytes: a bigger count is garbage
        raise ValueError(f"corrupt header: {kv_count} metadata entries in a {size}-byte file")
    values: dict[str, Scalar] = {}
    for _ in range(kv_count):
        key_len = stream.u64()
        if key_len > _MAX_KEY_LEN:
            raise ValueError(f"corrupt header: metadata key of {key_len} bytes")
        key = stream.read(key_len, "a metadata key").decode("utf-8", errors="replace")
        vtype = stream.value_type()
        if vtype != _ARRAY and _wanted(key):
            value = stream.scalar(vtype)
            if value is not None:
                values[key] = value
        else:
            stream.skip_value(vtype)
    # A skip may have jumped past the end: make sure the KV section was really there.
    if handle.tell() > size:
        raise _Truncated
    return version, values


def quantization_name(file_type: int) -> str:
    """Name of a general.file_type value: 15 -> "Q4_K_M"."""
    try:
        name = LlamaFileType(file_type).name
    except ValueError:
        return f"unknown-{file_type}"
    for prefix in ("MOSTLY_", "ALL_"):
        name = name.removeprefix(prefix)
    return str(name)


def _str(value: Scalar | None) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Scalar | None) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def info_from_metadata(values: dict[str, Scalar], file_size: int) -> GGUFInfo:
    """Build a GGUFInfo from the decoded scalar metadata (pure)."""
    arch = _str(values.get("general.architecture"))
    file_type = _int(values.get("general.file_type"))
    return GGUFInfo(
        architecture=arch,
        name=_str(values.get("general.name")),
        context_length=_int(values.get(f"{arch}.context_length")) if arch else None,
        quantization=quantization_name(file_type) if file_type is not None else None,
        size_label=_str(values.get("general.size_label")),
        file_size=file_size,
    )


def read_gguf_info(path: Path) -> GGUFInfo:
    """Read a GGUF file's header (fast: arrays are skipped, tensors never read)."""
    path = Path(path)
    try:
        with open(path, "rb", buffering=0) as handle:
            size = os.fstat(handle.fileno()).st_size
            _, values = read_gguf_metadata(handle, size=size)
    except _Truncated as exc:
        detail = f": {exc}" if str(exc) else ""
        raise GGUFError(f"{path}: truncated GGUF file (the header ends early{detail})") from None
    except (ValueError, KeyError, OverflowError, struct.error) as exc:
        raise GGUFError(f"{path}: {exc}") from exc
    return info_from_metadata(values, size)


class GGUFInfoCache:
    """Cache of read_gguf_info results keyed by (resolved path, size, mtime_ns); thread-safe."""

    def __init__(self) -> None:
        self._entries: dict[Path, tuple[tuple[int, int], GGUFInfo]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, path: Path) -> GGUFInfo:
        """Return the file's GGUFInfo, reading the header only when the file changed."""
        resolved = Path(path).expanduser().resolve()
        st = resolved.stat()
        stamp = (st.st_size, st.st_mtime_ns)
        with self._lock:
            entry = self._entries.get(resolved)
            if entry is not None and entry[0] == stamp:
                self.hits += 1
                return entry[1]
            self.misses += 1
        info = read_gguf_info(resolved)
        with self._lock:
            self._entries[resolved] = (stamp, info)
        return info

    async def aget(self, path: Path) -> GGUFInfo:
        """get() in a worker thread, so the event loop never waits on disk."""
        return await asyncio.to_thread(self.get, path)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries.clear()
