"""Nothing blocks the service's event loop: a churn under asyncio's debug mode, watched.

The service runs in this process on a loop of its own, in debug mode with
slow_callback_duration at 50 ms, inside tests/loopwatch.py's LoopWatch; the churn
(starts, stops, gateway requests through the openai client, a registration and its
removal, kill -9 of an instance and its restart, scrapes, log reads) is driven from
the test's thread. The test fails on any callback of the project's code that made a
blocking call (open, rename, remove, mkdir, fsync, a write to a file, a fork and exec,
a sleep...), whatever its duration, or that was slow (50 ms or more) because of its
own CPU time. It does not fail on a slow callback whose wall time went to waiting for
a CPU, or to waiting off the CPU with no blocking call to show for it (the GIL held by
another of our threads that the kernel preempted): on this machine (2 cores, 8
engineers) asyncio's own wall-time warning fires for those, and they say nothing about
the code. Why each slow callback was slow comes from the loop thread's
/proc/thread-self/schedstat (on CPU, waiting to run) around it, and the blocking
calls from an audit hook and wrappers of os.fsync/os.write/time.sleep (see
loopwatch.py): evidence of a blocking call is independent of the machine's load, so
the verdict is too. The tests below the churn put blocking work back on the loop and
show that the watch fails it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from churn import Service, churn, report, write_config
from loopwatch import LoopWatch
from promstack import missing
from waiting import wait_until

from llama_exporter.catalog.registry import Registry
from llama_exporter.supervision import logfile
from llama_exporter.supervision.logfile import InstanceLog

openai: Any
try:
    import openai
except ImportError:  # pragma: no cover - bootstrap.sh --test installs it
    openai = None


def _links(tmp: Path, source: Path, names: list[str]) -> dict[str, Path]:
    paths = {}
    for name in names:
        path = tmp / f"{name}.gguf"
        try:
            os.link(source, path)
        except OSError:
            path.write_bytes(source.read_bytes())
        paths[name] = path
    return paths


def _chatter(service: Service) -> Iterator[Callable[[str], None]]:
    if openai is None:
        missing("the openai package is not installed (scripts/bootstrap.sh --test)")
    client = openai.OpenAI(base_url=service.url + "/v1", api_key="unused", max_retries=0)

    def chat(model: str) -> None:
        answer = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Say hi"}], max_tokens=4
        )
        assert answer.choices, answer

    try:
        yield chat
    finally:
        client.close()


def run_churn(tmp: Path, binary: Path, gguf: Path) -> Service:
    """Start the service, churn, stop it; return it (with its watch) once it is down."""
    models = _links(tmp, gguf, ["c0", "c1", "extra"])
    extra = models.pop("extra")
    service = Service(write_config(tmp, binary, models))
    service.start()
    try:
        for chat in _chatter(service):
            churn(service, list(models), chat, extra)
    finally:
        service.stop()

    def threads(prefix: str) -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]

    assert not threads("log "), "log writers are flushed and joined before the shutdown ends"
    wait_until(lambda: not threads("reap "), "each reaper thread ends with its child")
    return service


def assert_nothing_blocked(service: Service) -> None:
    failures = service.watch.failures()
    summary = report(service.watch, service)
    assert not failures, "callbacks that blocked the loop:\n" + "\n".join(failures) + "\n" + summary
    print(summary)  # shown with -s: what was excused, and how often asyncio's check fired


@pytest.mark.real
def test_a_churn_on_the_real_server_blocks_no_callback(
    tmp_path: Path, llama_server_bin: Path, gemma_gguf: Path
) -> None:
    assert_nothing_blocked(run_churn(tmp_path, llama_server_bin, gemma_gguf))


def test_a_churn_on_the_fake_server_blocks_no_callback(
    tmp_path: Path, fake_server_bin: Path, fake_gguf: Path
) -> None:
    assert_nothing_blocked(run_churn(tmp_path, fake_server_bin, fake_gguf))


# --- the watch fails blocking code put back on the loop --------------------------------


def _blocking_where(service: Service) -> str:
    return "\n".join(service.watch.failures())


def test_the_watch_fails_a_models_json_write_on_the_loop(
    tmp_path: Path, fake_server_bin: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def aadd_on_the_loop(self: Registry, name: str, path: Path, **fields: Any) -> Any:
        # main before this work: the header off the loop, models.json written on it
        info = await self.cache.aget(Path(path))
        return self.add(name, path, info=info, **fields)

    monkeypatch.setattr(Registry, "aadd", aadd_on_the_loop)
    failures = _blocking_where(run_churn(tmp_path, fake_server_bin, fake_gguf))
    assert "tempfile.mkstemp at atomic.py" in failures
    assert "os.fsync at atomic.py" in failures and "os.rename at atomic.py" in failures


def test_the_watch_fails_a_log_write_on_the_loop(
    tmp_path: Path, fake_server_bin: Path, fake_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def write_on_the_loop(self: InstanceLog, data: bytes) -> None:
        logfile._write_all(self._fd, data)  # as before: each line written by the reader

    monkeypatch.setattr(InstanceLog, "write", write_on_the_loop)
    failures = _blocking_where(run_churn(tmp_path, fake_server_bin, fake_gguf))
    assert "os.write to a file at supervision/logfile.py" in failures


# --- the watch itself: blocked and CPU-bound fail, a busy machine does not -------------


def _watched(*callbacks: Callable[[], None]) -> LoopWatch:
    import asyncio

    watch = LoopWatch(0.05, code=(__file__,))  # this file's calls count as the project's
    loop = asyncio.new_event_loop()
    try:
        with watch.watching():
            for callback in callbacks:
                loop.call_soon(callback)
            loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return watch


def test_the_watch_fails_a_sleeping_callback_and_a_cpu_bound_one() -> None:
    def sleeper() -> None:
        time.sleep(0.2)  # blocked off the CPU, as an fsync on a busy disk

    def burner() -> None:
        end = time.thread_time() + 0.2
        while time.thread_time() < end:
            pass

    watch = _watched(sleeper, burner)
    faults = [c.faults(watch.limit) for c in watch.calls]
    assert len(faults) == 2, [str(c) for c in watch.calls]
    assert "blocking call: time.sleep at" in faults[0][0] and "(sleeper)" in faults[0][0]
    assert watch.calls[0].blocked >= 0.15  # and its time shows as blocked, not CPU
    assert "own CPU time" in faults[1][0]


def test_the_watch_excuses_waiting_for_a_cpu() -> None:
    """A callback with 20 ms of work made slow by burners on its CPU is not a fault."""
    import multiprocessing

    cpu = min(os.sched_getaffinity(0))
    before = os.sched_getaffinity(0)
    burners = [multiprocessing.Process(target=_burn, args=(cpu,), daemon=True) for _ in range(3)]
    for burner in burners:
        burner.start()
    os.sched_setaffinity(0, {cpu})  # this thread now shares one CPU with three burners

    def work() -> None:
        end = time.thread_time() + 0.02
        while time.thread_time() < end:
            pass

    try:
        watch = _watched(*[work] * 10)
    finally:
        os.sched_setaffinity(0, before)
        for burner in burners:
            burner.kill()
            burner.join()
    slow = [c for c in watch.calls if c.wall >= watch.limit]
    assert not watch.failures(), watch.failures()
    # The kernel decides how long each waited; most of these should have been slow.
    assert all(c.waiting > 0 for c in slow)
    print(f"{len(slow)} of 10 callbacks slow, all excused: " + "; ".join(map(str, slow[:3])))


def _burn(cpu: int) -> None:
    os.sched_setaffinity(0, {cpu})
    while True:
        pass
