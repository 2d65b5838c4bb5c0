"""The per-model log writer: a thread of its own writes, rotates and closes, in order."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path

import pytest

from llama_exporter.supervision import logfile
from llama_exporter.supervision.logfile import InstanceLog, open_log_file, rotated_log


def numbers(*files: Path) -> list[int]:
    return [int(line.split()[1]) for f in files for line in f.read_text().splitlines()[1:]]


async def test_lines_are_written_in_order_by_another_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writers: set[int] = set()
    original = logfile._write_all

    def write_all(fd: int, data: bytes) -> None:
        writers.add(threading.get_ident())
        original(fd, data)

    monkeypatch.setattr(logfile, "_write_all", write_all)
    log = await InstanceLog.open(tmp_path / "m.log", b"header\n")
    for i in range(5000):
        log.write(f"line {i}\n".encode())
    await log.flushed()
    assert numbers(tmp_path / "m.log") == list(range(5000))
    await log.aclose()
    assert threading.get_ident() not in writers  # neither the header nor a line
    assert writers


async def test_rotation_loses_and_tears_no_line(tmp_path: Path) -> None:
    path = tmp_path / "m.log"
    log = await InstanceLog.open(path, b"header\n", max_bytes=4096)
    for i in range(3000):
        log.write(f"line {i} long enough to fill a small log\n".encode())
    await log.aclose()
    older, current = rotated_log(path).read_text(), path.read_text()
    line = len("line 2999 long enough to fill a small log\n")
    assert len(older) <= 4096 + line and len(current) <= 4096 + line
    got = [int(x.split()[1]) for x in (older + current).splitlines()]
    assert got == list(range(got[0], 3000))  # contiguous up to the last line
    assert got[0] > 0  # older parts are gone: the disk use is bounded


async def test_close_writes_everything_queued_and_joins_the_thread(tmp_path: Path) -> None:
    log = await InstanceLog.open(tmp_path / "m.log", b"header\n")
    for i in range(100):
        log.write(f"line {i}\n".encode())
    await log.aclose()
    assert not log._thread.is_alive()
    assert numbers(tmp_path / "m.log") == list(range(100))
    log.write(b"line 100\n")  # after the end: ignored, not an error
    await log.flushed()
    assert numbers(tmp_path / "m.log") == list(range(100))


def test_open_rotates_a_big_log_and_writes_the_header(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "m.log"
    path.parent.mkdir()
    path.write_bytes(b"x" * 5000)
    fd, size = open_log_file(path, b"--- header\n", max_bytes=4096)
    os.close(fd)
    assert rotated_log(path).read_bytes() == b"x" * 5000
    assert path.read_bytes() == b"--- header\n" and size == len(b"--- header\n")


async def test_a_failed_write_is_logged_and_writing_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    log = await InstanceLog.open(tmp_path / "m.log", b"header\n")
    original = logfile._write_all
    full = threading.Event()
    full.set()

    def write_all(fd: int, data: bytes) -> None:
        if full.is_set():
            full.clear()
            raise OSError(28, "No space left on device")
        original(fd, data)

    monkeypatch.setattr(logfile, "_write_all", write_all)
    log.write(b"line 0\n")
    await log.flushed()
    log.write(b"line 1\n")
    await log.aclose()
    assert numbers(tmp_path / "m.log") == [1]
    assert "No space left" in caplog.text and "m.log" in caplog.text


async def test_a_flush_after_close_returns(tmp_path: Path) -> None:
    log = await InstanceLog.open(tmp_path / "m.log", b"header\n")
    log.close_soon()
    await asyncio.wait_for(log.flushed(), timeout=60)  # a safety net against a hang
