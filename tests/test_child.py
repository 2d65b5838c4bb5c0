"""supervision/child.py: a child forked in a worker thread, followed on the loop."""

from __future__ import annotations

import asyncio
import subprocess
import threading
from typing import Any

import pytest
from waiting import async_wait_until

from llama_exporter.supervision.child import Child


async def test_output_then_exit_as_asyncio_reports_them() -> None:
    proc = await Child.start(["sh", "-c", "echo out; echo err >&2; exit 3"], env=None)
    assert await proc.wait() == 3
    assert proc.returncode == 3
    # wait() returns once the output pipe is closed: everything written is readable.
    assert await proc.stdout.read() == b"out\nerr\n"


async def test_the_fork_runs_in_a_worker_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[threading.Thread] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)  # what child.py calls
    proc = await Child.start(["true"], env=None)
    assert await proc.wait() == 0
    assert threads and threads[0] is not threading.main_thread()


async def test_a_cancelled_start_leaves_no_child(monkeypatch: pytest.MonkeyPatch) -> None:
    calling, go_on = threading.Event(), threading.Event()
    started: list[subprocess.Popen[bytes]] = []
    real = subprocess.Popen

    def popen(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        calling.set()
        assert go_on.wait(60), "the test never let the fork go on"
        started.append(real(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(subprocess, "Popen", popen)  # what child.py calls
    starting = asyncio.ensure_future(Child.start(["sleep", "60"], env=None))
    await async_wait_until(calling.is_set, "the worker thread is forking")
    starting.cancel()
    go_on.set()  # the fork completes after the caller gave up
    with pytest.raises(asyncio.CancelledError):
        await starting
    await async_wait_until(
        lambda: started and started[0].poll() is not None, "the late child killed and reaped"
    )
    assert started[0].returncode == -9
