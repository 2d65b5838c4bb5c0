"""Tests for llama_exporter.catalog.gguf_meta."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import gguf
import pytest

from llama_exporter.catalog.gguf_meta import (
    GGUFError,
    GGUFInfo,
    GGUFInfoCache,
    _Stream,
    quantization_name,
    read_gguf_info,
)
from llama_exporter.testing.gguf_writer import DEFAULT_METADATA, write_minimal_gguf


def test_reads_minimal_file(fake_gguf: Path) -> None:
    info = read_gguf_info(fake_gguf)
    assert info == GGUFInfo(
        architecture="llama",
        name="tiny test model",
        context_length=2048,
        quantization="Q4_K_M",
        size_label="1K",
        file_size=fake_gguf.stat().st_size,
    )


def test_skips_every_value_type(tmp_path: Path) -> None:
    path = write_minimal_gguf(
        tmp_path / "types.gguf",
        {
            "x.bool": True,
            "x.float": 1.5,
            "x.neg": -7,
            "x.big": 2**40,
            "x.ints": [1, 2, 3],
            "x.floats": [0.5, 1.5],
            "x.nested": [["a", "bb"], ["ccc"]],
            "x.empty": [],
            "general.architecture": "qwen2",
            "general.file_type": 7,
            "qwen2.context_length": 2**33,
            "tokenizer.ggml.tokens": [f"tok{i}" for i in range(1000)],
            "general.name": "after the arrays",
        },
    )
    info = read_gguf_info(path)
    assert info.architecture == "qwen2"
    assert info.quantization == "Q8_0"
    assert info.context_length == 2**33
    assert info.name == "after the arrays"
    assert info.size_label is None


def test_agrees_with_gguf_reader(fake_gguf: Path) -> None:
    reader = gguf.GGUFReader(fake_gguf)
    info = read_gguf_info(fake_gguf)
    assert reader.fields["general.architecture"].contents() == info.architecture
    assert reader.fields["llama.context_length"].contents() == info.context_length


def test_big_endian_file(tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "be.gguf", big_endian=True)
    info = read_gguf_info(path)
    assert (info.architecture, info.context_length) == ("llama", 2048)


def test_version_2_is_read(tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "v2.gguf", version=2)
    assert read_gguf_info(path).architecture == "llama"


def test_missing_keys_give_none(tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "bare.gguf", {})
    assert read_gguf_info(path) == GGUFInfo(None, None, None, None, None, 24)


def test_context_length_of_wrong_type_is_ignored(tmp_path: Path) -> None:
    meta = {"general.architecture": "llama", "llama.context_length": "4096"}
    path = write_minimal_gguf(tmp_path / "odd.gguf", meta)
    assert read_gguf_info(path).context_length is None


@pytest.mark.parametrize(
    ("value", "name"),
    [(15, "Q4_K_M"), (0, "F32"), (1, "F16"), (32, "BF16"), (9999, "unknown-9999")],
)
def test_quantization_name(value: int, name: str) -> None:
    assert quantization_name(value) == name


def test_bad_magic(tmp_path: Path) -> None:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(GGUFError, match="not a GGUF file") as excinfo:
        read_gguf_info(path)
    assert str(path) in str(excinfo.value)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.gguf"
    path.write_bytes(b"")
    with pytest.raises(GGUFError, match="not a GGUF file"):
        read_gguf_info(path)


@pytest.mark.parametrize("version", [1, 4])
def test_unsupported_version(tmp_path: Path, version: int) -> None:
    path = write_minimal_gguf(tmp_path / "v.gguf", version=version)
    with pytest.raises(GGUFError, match=f"version {version} is not supported"):
        read_gguf_info(path)


def test_every_truncation_is_reported(tmp_path: Path) -> None:
    full = write_minimal_gguf(tmp_path / "full.gguf").read_bytes()
    cut = tmp_path / "cut.gguf"
    for length in range(4, len(full)):
        cut.write_bytes(full[:length])
        with pytest.raises(GGUFError, match="truncated") as excinfo:
            read_gguf_info(cut)
        assert str(cut) in str(excinfo.value)


def test_absurd_counts_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, 2**62))
    with pytest.raises(GGUFError, match="corrupt header"):
        read_gguf_info(path)
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, 2**40))
    with pytest.raises(GGUFError, match="corrupt header"):
        read_gguf_info(path)


def test_unknown_value_type(tmp_path: Path) -> None:
    path = tmp_path / "junk.gguf"
    key = b"general.x"
    path.write_bytes(
        b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(key)) + key + struct.pack("<I", 99)
    )
    with pytest.raises(GGUFError, match="unknown metadata value type 99"):
        read_gguf_info(path)


class DecodeCount:
    """Counts the strings the reader decodes (the cost a big tokenizer array must not add)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = _Stream.string

        def counted(stream: _Stream) -> str | None:
            self.calls += 1
            return real(stream)

        monkeypatch.setattr(_Stream, "string", counted)


def test_large_tokenizer_array_is_skipped_not_decoded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Speed is bench/gguf_read.py's to show; here: the 262k tokens are never decoded.
    meta = dict(DEFAULT_METADATA)
    meta["tokenizer.ggml.tokens"] = [f"token-{i}" for i in range(262_144)]
    meta["tokenizer.ggml.scores"] = [0.0] * 262_144
    path = write_minimal_gguf(tmp_path / "big.gguf", meta)
    decoded = DecodeCount(monkeypatch)
    info = read_gguf_info(path)
    assert info.context_length == 2048
    assert 0 < decoded.calls <= len(DEFAULT_METADATA)  # the wanted strings, no tokens


def test_cache_hits_and_misses_on_change(tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "m.gguf")
    cache = GGUFInfoCache()
    first = cache.get(path)
    assert cache.get(path) is first
    assert (cache.hits, cache.misses) == (1, 1)

    write_minimal_gguf(path, {**DEFAULT_METADATA, "general.name": "changed"})
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    second = cache.get(path)
    assert second.name == "changed"
    assert cache.misses == 2


def test_cache_keys_on_resolved_path(tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "m.gguf")
    link = tmp_path / "link.gguf"
    link.symlink_to(path)
    cache = GGUFInfoCache()
    cache.get(path)
    cache.get(link)
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_does_not_keep_errors(tmp_path: Path) -> None:
    path = tmp_path / "m.gguf"
    path.write_bytes(b"nope")
    cache = GGUFInfoCache()
    with pytest.raises(GGUFError):
        cache.get(path)
    write_minimal_gguf(path)
    assert cache.get(path).architecture == "llama"


def test_cache_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        GGUFInfoCache().get(tmp_path / "gone.gguf")


async def test_cache_aget(fake_gguf: Path) -> None:
    cache = GGUFInfoCache()
    info = await cache.aget(fake_gguf)
    assert info.architecture == "llama"
    assert await cache.aget(fake_gguf) is info


def test_real_gemma_model(gemma_gguf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decoded = DecodeCount(monkeypatch)
    info = read_gguf_info(gemma_gguf)
    assert info.architecture == "gemma3"
    assert info.context_length == 32768
    assert info.quantization == "Q4_K_M"
    assert info.size_label == "270M"
    assert info.file_size == gemma_gguf.stat().st_size
    # Its 262k-token vocabulary is skipped: only a few header strings are decoded.
    assert 0 < decoded.calls < 100, decoded.calls


def _crafted(path: Path, key: str, payload: bytes) -> Path:
    """A GGUF file with one entry: key, then the raw bytes of its type and value."""
    raw_key = key.encode()
    path.write_bytes(b"GGUF" + struct.pack("<IQQQ", 3, 0, 1, len(raw_key)) + raw_key + payload)
    return path


_STRING_TYPE = struct.pack("<I", 8)
_ARRAY_TYPE = struct.pack("<I", 9)


@pytest.mark.parametrize(
    ("key", "payload"),
    [
        ("general.name", _STRING_TYPE + struct.pack("<Q", 2**62)),  # was MemoryError
        ("general.name", _STRING_TYPE + struct.pack("<Q", 2**40) + b"abc"),
        ("x.skipped", _STRING_TYPE + struct.pack("<Q", 2**64 - 1)),  # was OverflowError
        ("x.skipped", _STRING_TYPE + struct.pack("<Q", 2**62)),  # was OSError EINVAL
        ("x.ints", _ARRAY_TYPE + struct.pack("<IQ", 4, 2**62)),
        ("x.strings", _ARRAY_TYPE + struct.pack("<IQ", 8, 2**62)),
        ("x.strings", _ARRAY_TYPE + struct.pack("<IQQ", 8, 2, 2**63) + b"x"),
        ("x.nested", _ARRAY_TYPE + struct.pack("<IQ", 9, 2**62)),
    ],
)
def test_huge_lengths_are_truncation_errors(tmp_path: Path, key: str, payload: bytes) -> None:
    path = _crafted(tmp_path / "crafted.gguf", key, payload)
    with pytest.raises(GGUFError, match="truncated") as excinfo:
        read_gguf_info(path)
    assert str(path) in str(excinfo.value)
    assert "bytes" in str(excinfo.value)  # says what did not fit


def test_oversized_wanted_string_is_skipped(tmp_path: Path) -> None:
    meta = {**DEFAULT_METADATA, "general.description": "d" * (2 << 20)}
    path = write_minimal_gguf(tmp_path / "long.gguf", meta)
    info = read_gguf_info(path)
    assert (info.architecture, info.context_length) == ("llama", 2048)
