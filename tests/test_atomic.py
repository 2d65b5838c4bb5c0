"""Tests for llama_exporter.atomic."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from llama_exporter.atomic import write_atomic


def test_writes_new_file_and_creates_parents(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.json"
    write_atomic(target, '{"x": 1}')
    assert target.read_text() == '{"x": 1}'


def test_replaces_content_and_leaves_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    write_atomic(target, b"old")
    write_atomic(target, b"new content")
    assert target.read_bytes() == b"new content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_mode_is_applied(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    write_atomic(target, "x", mode=0o600)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600


def test_failure_keeps_old_content_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.txt"
    write_atomic(target, "old")

    def broken_replace(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        write_atomic(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]


def test_reader_never_sees_partial_content(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    versions = [bytes([65 + i]) * 200_000 for i in range(5)]
    write_atomic(target, versions[0])
    stop = threading.Event()
    bad: list[int] = []
    reads = 0

    def reader() -> None:
        nonlocal reads
        while not stop.is_set():
            content = target.read_bytes()
            reads += 1
            if content not in versions:
                bad.append(len(content))

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(60):
            write_atomic(target, versions[i % len(versions)])
    finally:
        stop.set()
        thread.join()
    assert reads > 0
    assert bad == []
