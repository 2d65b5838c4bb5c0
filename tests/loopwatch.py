"""Watch one event loop for callbacks that block it, and tell them from a busy machine.

asyncio's debug mode calls a callback slow when its wall time passes
``slow_callback_duration``. On a shared machine (2 cores, 8 engineers) the wall time
of a callback also holds the time the kernel gave its CPU to someone else, so a
wall-time check alone fails for load, not for code. This watch runs every callback
of the watched loop's thread inside a wrapper of ``Handle._run`` and splits its wall
time with the thread's own scheduler figures (``/proc/thread-self/schedstat``):

- on the CPU: the callback's own work (less the garbage collector's, reported apart);
- waiting for a CPU while runnable: the machine is busy, never the code's fault;
- the rest: off the CPU and not runnable, i.e. blocked: in a system call (a disk
  write, an fsync, a sleep), or waiting for the GIL or a lock.

and it records the blocking calls made by project code during the callback:
``sys.addaudithook`` sees ``open``, ``os.rename`` (and ``os.replace``), ``os.remove``,
``os.mkdir`` and friends, ``subprocess.Popen`` (a fork and exec) and name lookups;
``os.fsync``, ``os.fdatasync``, ``os.write`` to a regular file and ``time.sleep`` are
wrapped while the watch is on. A call is the project's when a frame of
``llama_exporter/`` is on the stack when it is made.

A callback fails the watch when it made such a call, whatever its duration (a write
to the page cache is fast until the disk is busy, and a test that only fails on a
slow day proves nothing), or when it was slow and its own CPU time reached the
limit. Blocked time alone is reported, not failed: with no blocking call to show
for it, on a loaded machine it is the GIL held by another thread of the process
(a log writer, a worker, the test's driver) that the kernel took off its CPU, or a
thread start waiting for the new thread to be scheduled. A slow callback whose
excess is time spent waiting for a CPU is reported, not failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import llama_exporter

PACKAGE = str(Path(llama_exporter.__file__).resolve().parent) + os.sep

# Audit events of calls that touch the file system (and may wait on the disk).
FILE_EVENTS = frozenset(
    {
        "open",
        "os.rename",
        "os.remove",
        "os.rmdir",
        "os.mkdir",
        "os.chmod",
        "os.chown",
        "os.truncate",
        "os.link",
        "os.symlink",
        "os.utime",
        "os.listdir",
        "os.scandir",
        "shutil.copyfile",
        "shutil.rmtree",
        "shutil.move",
        "tempfile.mkstemp",
        "tempfile.mkdtemp",
        "sqlite3.connect",
    }
)
# Calls that wait on something else than the disk: a child's exec, a name lookup.
BLOCKING_EVENTS = FILE_EVENTS | {
    "subprocess.Popen",
    "os.system",
    "os.fork",
    "os.forkpty",
    "os.posix_spawn",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
}
# Not the disk: kernel views, devices, and reading source for a traceback or an import.
VIRTUAL = ("/proc/", "/sys/", "/dev/")
NOT_THE_CODE = ("importlib._bootstrap", f"{os.sep}linecache.py")


@dataclass
class Call:
    """One watched callback that was slow or made a blocking file call."""

    what: str
    wall: float
    cpu: float  # on the CPU, GC included
    gc: float  # the garbage collector's share of cpu
    waiting: float  # runnable, waiting for a CPU (the machine's load)
    major_faults: int
    blocking: list[str] = field(default_factory=list)

    @property
    def blocked(self) -> float:
        """Off the CPU and not runnable: in a blocking system call or a page fault."""
        return max(0.0, self.wall - self.cpu - self.waiting)

    def faults(self, limit: float) -> list[str]:
        """Why this callback blocked the loop; [] when it did not (only a busy machine)."""
        why = [f"blocking call: {b}" for b in self.blocking]
        if self.wall >= limit and self.cpu - self.gc >= limit:
            why.append(f"its own CPU time was {self.cpu - self.gc:.3f} s")
        return why

    def __str__(self) -> str:
        return (
            f"{self.what}: wall {self.wall:.3f} s = CPU {self.cpu:.3f} s (GC {self.gc:.3f})"
            f" + waiting for a CPU {self.waiting:.3f} s + blocked {self.blocked:.3f} s"
            f" ({self.major_faults} major faults)"
        )


def _format(handle: asyncio.Handle) -> str:
    callback = getattr(handle, "_callback", None)
    task = getattr(callback, "__self__", None)
    if isinstance(task, asyncio.Task):
        return repr(task)[:300]
    return repr(handle)[:300]


class _Sched:
    """This thread's CPU and run-queue nanoseconds and major faults, from /proc."""

    def __init__(self) -> None:
        # Opened by the watched thread: /proc/thread-self names the opener for good.
        try:
            self._sched: int | None = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self._sched = None
        self._stat = os.open("/proc/thread-self/stat", os.O_RDONLY)

    def read(self) -> tuple[float, float, int]:
        """(on-CPU seconds, runnable-but-waiting seconds, major faults) so far."""
        if self._sched is not None:
            run, wait, _ = os.pread(self._sched, 256, 0).split()
            cpu, waiting = int(run) / 1e9, int(wait) / 1e9
        else:  # no schedstat: CPU time only, every other second counts as blocked
            cpu, waiting = time.thread_time(), 0.0
        fields = os.pread(self._stat, 4096, 0).rsplit(b")", 1)[1].split()
        return cpu, waiting, int(fields[9])  # majflt, field 12 of stat

    def close(self) -> None:
        for fd in (self._sched, self._stat):
            if fd is not None:
                os.close(fd)


_ACTIVE: LoopWatch | None = None
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    watch = _ACTIVE
    if watch is None or event not in BLOCKING_EVENTS:
        return
    if event in ("open", "os.listdir", "os.scandir") and args:
        path = args[0]
        if not isinstance(path, str | bytes | os.PathLike):
            return  # an fd, or the current folder
        path = os.fsdecode(os.fspath(path))
        if path.startswith(VIRTUAL):
            return
    watch.note(event)


class LoopWatch:
    """Wrap the callbacks of the current thread's loop; collect slow and blocking ones."""

    def __init__(self, limit: float = 0.05, code: tuple[str, ...] = (PACKAGE,)) -> None:
        """code: the folders (or files) whose frames make a call the project's."""
        self.limit = limit
        self.code = code
        self.calls: list[Call] = []
        self.callbacks = 0
        self.other_blocking: list[str] = []  # not from project code: reported only
        self._thread = 0
        self._current: list[str] | None = None
        self._gc = 0.0
        self._gc_started: float | None = None
        self._sched: _Sched | None = None
        self._in_note = False

    # --- what the wrappers call ----------------------------------------------------

    def note(self, what: str) -> None:
        """A blocking call happened; record it when made on the loop, by project code."""
        if threading.get_ident() != self._thread or self._current is None or self._in_note:
            return
        self._in_note = True
        try:
            frame: FrameType | None = sys._getframe(1)
            where = None
            while frame is not None:
                name = frame.f_code.co_filename
                if any(part in name for part in NOT_THE_CODE):
                    return
                if where is None and name.startswith(self.code):
                    short = name[len(PACKAGE) :] if name.startswith(PACKAGE) else name
                    where = f"{what} at {short}:{frame.f_lineno} ({frame.f_code.co_name})"
                frame = frame.f_back
            if where is not None:
                self._current.append(where)
            else:
                self.other_blocking.append(what)
        finally:
            self._in_note = False

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if threading.get_ident() != self._thread:
            return
        if phase == "start":
            self._gc_started = time.thread_time()
        elif self._gc_started is not None:
            self._gc += time.thread_time() - self._gc_started
            self._gc_started = None

    def _run(self, original: Callable[[asyncio.Handle], None], handle: asyncio.Handle) -> None:
        if threading.get_ident() != self._thread or self._sched is None:
            original(handle)
            return
        self.callbacks += 1
        cpu0, wait0, faults0 = self._sched.read()
        gc0 = self._gc
        wall0 = time.perf_counter()
        calls: list[str] = []
        self._current = calls
        try:
            original(handle)
        finally:
            wall = time.perf_counter() - wall0
            self._current = None
            if wall >= self.limit or calls:
                cpu1, wait1, faults1 = self._sched.read()
                self.calls.append(
                    Call(
                        _format(handle),
                        wall,
                        cpu1 - cpu0,
                        self._gc - gc0,
                        wait1 - wait0,
                        faults1 - faults0,
                        calls,
                    )
                )

    # --- on and off ----------------------------------------------------------------

    @contextmanager
    def watching(self) -> Iterator[LoopWatch]:
        """Watch the callbacks run by this thread (call it in the loop's thread)."""
        global _ACTIVE, _HOOKED
        assert _ACTIVE is None, "one watch at a time"
        if not _HOOKED:  # an audit hook cannot be removed: it stays, idle, once added
            sys.addaudithook(_audit)
            _HOOKED = True
        self._thread = threading.get_ident()
        self._sched = _Sched()
        original_run = asyncio.events.Handle._run
        wrapped = {name: getattr(os, name) for name in ("fsync", "fdatasync", "write")}
        sleep = time.sleep
        watch = self

        def run(handle: asyncio.Handle) -> None:
            watch._run(original_run, handle)

        def fsync(fd: Any) -> None:
            watch.note("os.fsync")
            wrapped["fsync"](fd)

        def fdatasync(fd: Any) -> None:
            watch.note("os.fdatasync")
            wrapped["fdatasync"](fd)

        def write(fd: int, data: Any) -> int:
            if threading.get_ident() == watch._thread and watch._current is not None:
                with contextlib.suppress(OSError):
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        watch.note("os.write to a file")
            result: int = wrapped["write"](fd, data)
            return result

        def sleeping(seconds: Any) -> None:
            watch.note("time.sleep")
            sleep(seconds)

        asyncio.events.Handle._run = run  # type: ignore[method-assign,assignment]
        time.sleep = sleeping
        os.fsync, os.fdatasync, os.write = fsync, fdatasync, write
        gc.callbacks.append(self._on_gc)
        _ACTIVE = self
        try:
            yield self
        finally:
            _ACTIVE = None
            gc.callbacks.remove(self._on_gc)
            os.fsync, os.fdatasync, os.write = (wrapped[n] for n in ("fsync", "fdatasync", "write"))
            time.sleep = sleep
            asyncio.events.Handle._run = original_run  # type: ignore[method-assign]
            self._sched.close()
            self._sched = None

    # --- the verdict -----------------------------------------------------------------

    def failures(self) -> list[str]:
        """Each callback that blocked the loop, with why."""
        return [
            f"{c}\n    " + "\n    ".join(c.faults(self.limit))
            for c in self.calls
            if c.faults(self.limit)
        ]

    def excused(self) -> list[Call]:
        """Slow callbacks with no blocking call and not CPU-bound (waiting, or blocked)."""
        return [c for c in self.calls if c.wall >= self.limit and not c.faults(self.limit)]
