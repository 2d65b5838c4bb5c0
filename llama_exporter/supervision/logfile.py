"""One instance's log file, written and rotated by a thread of its own, never on the loop.

The event loop only queues output (``write`` is a non-blocking put); the writer
thread takes everything queued so far, writes it with one ``os.write`` and moves the
file to ``<log>.1`` when it passes its size limit. One thread per log keeps the
lines of each log in order and lets a slow disk delay only the writes, never the
loop. ``aclose`` lets the thread write what is queued, close the file and end, and
waits for that (off the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import queue
import threading
from pathlib import Path

log = logging.getLogger(__name__)

LOG_ROTATE_BYTES = 20 * 1024 * 1024  # a bigger log is moved to <name>.1 (config: log_max_bytes)
_FLAGS = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)

# What the queue carries: output, a flush marker, or the end (None).
_Item = bytes | concurrent.futures.Future[None] | None


def rotated_log(log_file: Path) -> Path:
    """Where the previous part of a rotated log is kept (<log>.1)."""
    return log_file.with_name(log_file.name + ".1")


def open_log_file(path: Path, header: bytes, max_bytes: int = LOG_ROTATE_BYTES) -> tuple[int, int]:
    """Open path for appending (moved to <log>.1 first when big), write header: (fd, size).

    Blocking file I/O: call it in a thread (InstanceLog.open does).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):
        if path.stat().st_size > max_bytes:
            path.replace(rotated_log(path))
    fd = os.open(path, _FLAGS, 0o666)
    try:
        _write_all(fd, header)
        return fd, os.fstat(fd).st_size
    except BaseException:
        os.close(fd)
        raise


def tail_file(path: Path, n: int, *, block: int = 64 * 1024) -> list[str]:
    """The last n lines of a text file, read backwards from its end (not the whole file)."""
    if n <= 0:
        return []
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= n:
            step = min(block, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return data.decode(errors="replace").splitlines()[-n:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class InstanceLog:
    """A per-model log: output queued on the loop, written in order by a writer thread."""

    def __init__(
        self, path: Path | None, fd: int, size: int, max_bytes: int = LOG_ROTATE_BYTES
    ) -> None:
        self.path = path  # None: never rotated
        self._fd = fd
        self._max_bytes = max_bytes
        self._size = size
        self._queue: queue.SimpleQueue[_Item] = queue.SimpleQueue()
        self._closing = False
        self._failed_writes = 0
        self._thread = threading.Thread(
            target=self._run, name=f"log {path.name if path else fd}", daemon=True
        )
        self._thread.start()

    @classmethod
    async def open(
        cls, path: Path, header: bytes, max_bytes: int = LOG_ROTATE_BYTES
    ) -> InstanceLog:
        """Open (and maybe rotate) the log in a thread, write header, start its writer."""

        def opened() -> InstanceLog:
            fd, size = open_log_file(path, header, max_bytes)
            # Started here: Thread.start waits until the new thread runs, not on the loop.
            return cls(path, fd, size, max_bytes)

        return await asyncio.to_thread(opened)

    def write(self, data: bytes) -> None:
        """Queue whole lines for the writer (never blocks; ignored once closing)."""
        if not self._closing:
            self._queue.put(data)

    async def flushed(self) -> None:
        """Wait until everything queued before this call is written."""
        if self._closing:  # the writer ends once the queue is written
            await asyncio.to_thread(self._thread.join)
            return
        marker: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._queue.put(marker)
        await asyncio.wrap_future(marker)

    def close_soon(self) -> None:
        """Tell the writer to finish what is queued, close the file and end."""
        if not self._closing:
            self._closing = True
            self._queue.put(None)

    async def aclose(self) -> None:
        """close_soon(), then wait for the writer thread to end (joined off the loop)."""
        self.close_soon()
        await asyncio.to_thread(self._thread.join)

    # --- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            while True:
                items = [self._queue.get()]
                with contextlib.suppress(queue.Empty):
                    while True:  # take everything queued meanwhile: one write for many lines
                        items.append(self._queue.get_nowait())
                if not self._handle(items):
                    return
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            # A flush marker put after the end must not wait forever.
            with contextlib.suppress(queue.Empty):
                while True:
                    item = self._queue.get_nowait()
                    if isinstance(item, concurrent.futures.Future):
                        item.set_result(None)

    def _handle(self, items: list[_Item]) -> bool:
        """Write items in order; False once the end was among them."""
        pending: list[bytes] = []
        for item in items:
            if isinstance(item, bytes):
                pending.append(item)
                self._size += len(item)
                if self._size > self._max_bytes:  # whole lines stay in one file
                    self._write(pending)
                    pending = []
                    self._rotate()
                continue
            self._write(pending)
            pending = []
            if item is None:
                return False
            item.set_result(None)
        self._write(pending)
        return True

    def _write(self, chunks: list[bytes]) -> None:
        if not chunks:
            return
        try:
            _write_all(self._fd, b"".join(chunks))
        except OSError as exc:  # a full disk must not stop reading the child's output
            self._failed_writes += 1
            if self._failed_writes == 1 or self._failed_writes % 1000 == 0:
                log.warning(
                    "cannot write %s (%d writes lost so far): %s",
                    self.path,
                    self._failed_writes,
                    exc,
                )

    def _rotate(self) -> None:
        """Move the log to <log>.1 and go on in a new file."""
        self._size = 0  # on failure: try again after another max_bytes
        if self.path is None:
            return
        try:
            self.path.replace(rotated_log(self.path))
            fresh = os.open(self.path, _FLAGS, 0o666)
        except OSError as exc:  # keep writing to the old file rather than lose output
            log.warning("cannot rotate %s: %s", self.path, exc)
            return
        os.close(self._fd)
        self._fd = fresh
