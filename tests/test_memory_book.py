"""MemoryBook: the estimate until a load is seen, then the learned figure, exactly; kept
in state_dir across restarts; raised after an out-of-memory load."""

from __future__ import annotations

import os
from pathlib import Path

from llama_exporter.config.settings import ModelConfig
from llama_exporter.memory.book import OOM_RAISE, MemoryBook
from llama_exporter.memory.report import parse_report
from llama_exporter.testing.gguf_writer import MetaValue, write_minimal_gguf

LINES = """\
load_tensors:   CPU_Mapped model buffer size =     1.25 MiB
llama_kv_cache:        CPU KV buffer size =     0.50 MiB
sched_reserve:        CPU compute buffer size =     3.00 MiB
srv  llama_server: model loaded
""".splitlines()


def _gguf(tmp_path: Path) -> Path:
    meta: dict[str, MetaValue] = {
        "general.architecture": "llama",
        "llama.block_count": 2,
        "llama.embedding_length": 64,
        "llama.attention.head_count": 4,
        "tokenizer.ggml.tokens": ["a", "b"],
    }
    return write_minimal_gguf(tmp_path / "m.gguf", meta, tensors=[("blk.0.w", [64, 64], 1, 8192)])


def test_estimate_then_learned_then_persisted(tmp_path: Path) -> None:
    model = ModelConfig(name="m", path=_gguf(tmp_path), ctx_size=1024, parallel=1)
    book = MemoryBook(tmp_path / "state", repack=frozenset())
    first = book.figure(model)
    assert first.source == "estimate"
    assert first.devices["cpu"].weights == 8192
    assert first.shared_weights_key == str(model.path.resolve())
    report = parse_report(LINES)
    book.learn(model, report)
    learned = book.figure(model)
    assert learned.source == "learned"
    assert learned == report.figure(shared_weights_key=str(model.path.resolve()))
    # a new book on the same state folder (a restart) reads it back, exactly
    again = MemoryBook(tmp_path / "state", repack=frozenset()).figure(model)
    assert again == learned


def test_settings_and_file_changes_start_over(tmp_path: Path) -> None:
    path = _gguf(tmp_path)
    book = MemoryBook(tmp_path / "state", repack=frozenset())
    model = ModelConfig(name="m", path=path, ctx_size=1024)
    book.learn(model, parse_report(LINES))
    assert book.figure(model).source == "learned"
    # a flag that changes memory: another key
    quant = ModelConfig(name="m", path=path, ctx_size=1024, args=("-ctk", "q8_0"))
    assert book.figure(quant).source == "estimate"
    # a flag that does not: the same key
    threads = ModelConfig(name="m", path=path, ctx_size=1024, args=("-t", "2"))
    assert book.figure(threads).source == "learned"
    # the file changes (mtime): estimate again
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert book.figure(model).source == "estimate"


def test_nothing_logged_keeps_the_estimate(tmp_path: Path) -> None:
    model = ModelConfig(name="m", path=_gguf(tmp_path))
    book = MemoryBook(tmp_path / "state", repack=frozenset())
    book.learn(model, parse_report(["srv  llama_server: model loaded"]))
    assert book.figure(model).source == "estimate"


def test_raise_after_oom(tmp_path: Path) -> None:
    model = ModelConfig(name="m", path=_gguf(tmp_path))
    book = MemoryBook(tmp_path / "state", repack=frozenset())
    before = book.figure(model)
    book.raise_after_oom(model)
    after = book.figure(model)
    assert after.source == "learned"
    for device, need in before.devices.items():
        assert after.devices[device].total == need.total + int(need.total * (OOM_RAISE - 1))
    book.raise_after_oom(model)  # twice: raised again from the raised figure
    assert book.figure(model).total("cpu") > after.total("cpu")


def test_corrupt_file_is_moved_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "memory-figures.json").write_text("{not json")
    model = ModelConfig(name="m", path=_gguf(tmp_path))
    book = MemoryBook(state, repack=frozenset())
    assert book.figure(model).source == "estimate"
    assert (state / "memory-figures.json.corrupt").exists()
    book.learn(model, parse_report(LINES))
    assert MemoryBook(state, repack=frozenset()).figure(model).source == "learned"


def test_two_books_on_one_folder_keep_both_figures(tmp_path: Path) -> None:
    path = _gguf(tmp_path)
    a = MemoryBook(tmp_path / "state", repack=frozenset())
    b = MemoryBook(tmp_path / "state", repack=frozenset())
    small = ModelConfig(name="s", path=path, ctx_size=1024)
    big = ModelConfig(name="b", path=path, ctx_size=8192)
    assert a.figure(small).source == b.figure(big).source == "estimate"  # both have read
    a.learn(small, parse_report(LINES))
    b.learn(big, parse_report(LINES))  # b reads a's write before writing its own
    assert a.figure(big).source == "learned"
    assert b.figure(small).source == "learned"


def test_context_lowered_by_fit_is_said(tmp_path: Path) -> None:
    from llama_exporter.memory.book import context_note

    model = ModelConfig(name="m", path=tmp_path / "m.gguf", ctx_size=32768, parallel=3)
    full = parse_report(["llama_context: n_ctx                 = 32256"])  # 3 x 10752
    assert context_note(model, full) is None
    fitted = parse_report(
        [
            "llama_context: n_ctx                 = 4096",
            "srv    load_model: initializing, n_slots = 3, n_ctx_slot = 1280",
        ]
    )
    note = context_note(model, fitted)
    assert note is not None and "model m" in note and "4096" in note and "--fit" in note
