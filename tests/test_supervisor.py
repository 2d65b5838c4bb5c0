"""Supervisor: the cap, restarts, hangs, stop, shutdown, orphans.

Unit tests replace the OS seam (spawn) with in-memory instances; the others run the
fake llama-server as real child processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from waiting import wait_until

from llama_exporter.config.settings import Config, ModelConfig, PortRange, RestartPolicy
from llama_exporter.states import (
    TRANSITIONS,
    CapExceeded,
    Conflict,
    InstanceStatus,
    ShuttingDown,
    State,
    UnknownModel,
)
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.orphans import InstanceRecord, write_records
from llama_exporter.supervision.process import StartError, describe_exit
from llama_exporter.supervision.supervisor import Supervisor

HERE = Path(__file__).parent


@pytest.fixture(autouse=True)
def transitions_are_legal() -> Iterator[None]:
    """Fail a test whose supervisor published an illegal transition or an internal error."""
    _RECORDERS.clear()
    yield
    problems = [p for recorder in _RECORDERS for p in recorder.problems]
    _RECORDERS.clear()
    assert problems == []


def models(n: int, path: Path, *args: str, **kw: Any) -> StaticModels:
    return StaticModels([ModelConfig(f"m{i}", path, args=args, **kw) for i in range(n)])


def port_range() -> PortRange:
    first = random.randrange(20000, 60000)
    return PortRange(first, first + 60)


def config(tmp_path: Path, binary: Path, **kw: Any) -> Config:
    kw.setdefault("ports", port_range())
    return Config(source=None, llama_server=binary, state_dir=tmp_path / "state", **kw)


_RECORDERS: list[Recorder] = []


class Recorder:
    """Subscriber that keeps every published status and checks each transition.

    The supervisor logs a subscriber's exception and goes on, so an assert in here
    would fail nothing: problems are collected instead, and the autouse fixture
    below fails the test on them.
    """

    def __init__(self) -> None:
        self.seen: list[InstanceStatus] = []
        self.last: dict[str, InstanceStatus] = {}
        self.problems: list[str] = []
        _RECORDERS.append(self)

    def __call__(self, status: InstanceStatus) -> None:
        old = self.last.get(status.model)
        moved = old is not None and old.state is not status.state
        if old is not None and moved and status.state not in TRANSITIONS[old.state]:
            self.problems.append(f"{status.model}: illegal {old.state} -> {status.state}")
        if status.last_error is not None and "internal error" in status.last_error:
            self.problems.append(f"{status.model}: {status.last_error}")
        self.last[status.model] = status
        self.seen.append(status)

    def states(self, model: str) -> list[State]:
        out: list[State] = []
        for s in self.seen:
            if s.model == model and (not out or out[-1] is not s.state):
                out.append(s.state)
        return out


# --- the OS seam replaced -----------------------------------------------------------


class FakeInstance:
    """An in-memory llama-server: ready when told, exits when told."""

    _pids = iter(range(900000, 999999))

    def __init__(self, port: int, ready: bool) -> None:
        self.pid = next(self._pids)
        self.port = port
        self.create_time: float | None = None
        self.healthy = True
        self.ready = asyncio.Event()
        if ready:
            self.ready.set()
        self.exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.grace_used: float | None = None

    @property
    def returncode(self) -> int | None:
        return self.exit.result() if self.exit.done() else None

    def finish(self, rc: int) -> None:
        if not self.exit.done():
            self.exit.set_result(rc)

    async def wait(self) -> int:
        return await asyncio.shield(self.exit)

    async def wait_ready(self, timeout: float) -> None:  # noqa: ASYNC109
        if self.ready.is_set():
            return
        ready: asyncio.Future[Any] = asyncio.ensure_future(self.ready.wait())
        waiting: set[asyncio.Future[Any]] = {ready, self.exit}
        done, _ = await asyncio.wait(waiting, timeout=timeout, return_when="FIRST_COMPLETED")
        ready.cancel()
        if self.exit in done:
            raise StartError(await self.describe_exit(during_load=True))
        if not done:
            raise StartError(f"not ready within {timeout} s")

    async def describe_exit(self, *, during_load: bool) -> str:
        return describe_exit(await self.wait(), during_load=during_load, log_tail=["fake log"])

    async def health(self, within: float) -> bool:
        return self.healthy

    async def stop(self, grace: float) -> int:
        self.grace_used = grace
        self.finish(-signal.SIGTERM)
        return await self.wait()

    def kill(self) -> None:
        self.finish(-signal.SIGKILL)

    def tail(self, n: int) -> list[str]:
        return ["fake log"][-n:]

    def load_lines(self) -> list[str]:
        return []


class FakeSpawner:
    """The spawn seam: records instances; each is ready at once unless told otherwise."""

    def __init__(self, ready: bool = True, crash_after_ready: float | None = None) -> None:
        self.instances: list[FakeInstance] = []
        self.by_model: dict[str, list[FakeInstance]] = {}
        self.auto_ready = ready
        self.crash_after_ready = crash_after_ready

    async def __call__(
        self, binary: Path, model: ModelConfig, host: str, port: int, log_file: Path
    ) -> FakeInstance:
        await asyncio.sleep(0)
        inst = FakeInstance(port, self.auto_ready)
        self.instances.append(inst)
        self.by_model.setdefault(model.name, []).append(inst)
        if self.crash_after_ready is not None:
            asyncio.get_running_loop().call_later(self.crash_after_ready, inst.finish, 1)
        return inst


async def until(
    sup: Supervisor, name: str, pred: Callable[[InstanceStatus], bool], limit: float = 10
) -> InstanceStatus:
    """Wait for a published status of name that satisfies pred."""
    if pred(sup.status(name)):
        return sup.status(name)
    hit = asyncio.Event()
    unsubscribe = sup.subscribe(lambda s: hit.set() if s.model == name and pred(s) else None)
    try:
        async with asyncio.timeout(limit):
            await hit.wait()
    finally:
        unsubscribe()
    return sup.status(name)


def fake_supervisor(
    tmp_path: Path, n: int = 8, spawner: FakeSpawner | None = None, **kw: Any
) -> tuple[Supervisor, FakeSpawner, Recorder]:
    spawner = spawner or FakeSpawner()
    clock = kw.pop("clock", time.time)
    watchdog = kw.pop("watchdog_interval", 0.05)
    sup = Supervisor(
        config(tmp_path, Path("/nonexistent/llama-server"), **kw),
        models(n, tmp_path / "x.gguf"),
        spawn=spawner,
        clock=clock,
        watchdog_interval=watchdog,
    )
    recorder = Recorder()
    sup.subscribe(recorder)
    return sup, spawner, recorder


async def test_fifth_start_with_cap_4_names_the_running_models(tmp_path: Path) -> None:
    sup, _, _ = fake_supervisor(tmp_path, max_parallel=4)
    for i in range(4):
        await sup.start(f"m{i}")
    with pytest.raises(CapExceeded) as info:
        await sup.start("m4")
    assert info.value.running == ("m0", "m1", "m2", "m3")
    assert info.value.cap == 4
    assert "m0, m1, m2, m3" in str(info.value)
    assert sup.counters("m4").start_rejected_total == 1
    assert sup.status("m4").state is State.STOPPED
    await sup.shutdown()


async def test_start_is_idempotent_while_starting_or_ready(tmp_path: Path) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path)
    first = await sup.start("m0")
    again = await sup.start("m0")
    assert first.state is again.state is State.STARTING
    assert (await sup.wait_settled("m0", timeout=5)).state is State.READY
    assert (await sup.start("m0")).state is State.READY
    assert len(spawner.instances) == 1
    await sup.shutdown()


async def test_unknown_model_and_shutting_down(tmp_path: Path) -> None:
    sup, _, _ = fake_supervisor(tmp_path)
    with pytest.raises(UnknownModel):
        await sup.start("nope")
    with pytest.raises(KeyError):
        sup.status("nope")
    await sup.shutdown()
    with pytest.raises(ShuttingDown):
        await sup.start("m0")


async def test_never_started_model_is_stopped(tmp_path: Path) -> None:
    sup, _, _ = fake_supervisor(tmp_path, n=3)
    assert sup.status("m1").state is State.STOPPED
    assert [s.model for s in sup.statuses()] == ["m0", "m1", "m2"]
    assert sup.running_count == 0 and sup.cap == 4


async def test_first_start_failure_goes_straight_to_failed(tmp_path: Path) -> None:
    spawner = FakeSpawner(ready=False)
    sup, _, rec = fake_supervisor(tmp_path, spawner=spawner)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.pid is not None)  # spawned, loading
    spawner.instances[0].finish(-signal.SIGILL)
    status = await sup.wait_settled("m0", timeout=5)
    assert status.state is State.FAILED
    assert status.last_error is not None and "GGML_NATIVE=OFF" in status.last_error
    assert rec.states("m0") == [State.STARTING, State.FAILED]
    assert sup.counters("m0").start_failures_total == 1
    assert sup.running_count == 0
    # FAILED -> STOPPED clears the error; FAILED -> STARTING is allowed too.
    assert (await sup.stop("m0")).last_error is None


async def test_crash_loop_fails_after_max_retries(tmp_path: Path) -> None:
    policy = RestartPolicy(max_retries=3, backoff_initial=0.01, backoff_max=0.02)
    spawner = FakeSpawner(crash_after_ready=0.01)
    sup, _, rec = fake_supervisor(tmp_path, spawner=spawner, restart=policy)
    await sup.start("m0")
    status = await until(sup, "m0", lambda s: s.state is State.FAILED)
    assert len(spawner.instances) == 4  # the first run + 3 restarts
    assert status.restarts == 3
    assert sup.counters("m0").restarts_total == 3
    assert status.last_error is not None and "exited with code 1" in status.last_error
    assert rec.states("m0")[-2:] == [State.READY, State.FAILED]
    assert State.BACKOFF in rec.states("m0")


async def test_backoff_doubles_up_to_max(tmp_path: Path) -> None:
    policy = RestartPolicy(max_retries=5, backoff_initial=0.01, backoff_max=0.03)
    spawner = FakeSpawner(crash_after_ready=0.0)
    # A clock that stands still: next_retry_at and since are two reads of it, and on a
    # busy machine two reads of time.time() can be milliseconds apart.
    sup, _, rec = fake_supervisor(tmp_path, spawner=spawner, restart=policy, clock=lambda: 1000.0)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.state is State.FAILED, limit=5)
    delays = [
        round(s.next_retry_at - s.since, 3)
        for s in rec.seen
        if s.state is State.BACKOFF and s.next_retry_at is not None
    ]
    assert delays == [0.01, 0.02, 0.03, 0.03, 0.03]


async def test_retries_reset_after_stable_run(tmp_path: Path) -> None:
    now = [1000.0]
    policy = RestartPolicy(max_retries=1, backoff_initial=0.01, stable_after=60)
    sup, spawner, _ = fake_supervisor(tmp_path, restart=policy, clock=lambda: now[0])
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    for want in (1, 2, 3):  # with max_retries=1 only a reset lets it restart 3 times
        now[0] += 61
        spawner.by_model["m0"][-1].finish(1)
        await until(sup, "m0", restarted(want))
    assert sup.status("m0").state is State.READY
    await sup.shutdown()


def restarted(n: int) -> Callable[[InstanceStatus], bool]:
    return lambda s: s.restarts == n and s.state is State.READY


async def test_restart_disabled_crash_fails(tmp_path: Path) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path, restart=RestartPolicy(enabled=False))
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    spawner.instances[0].finish(-signal.SIGSEGV)
    await until(sup, "m0", lambda s: s.state is State.FAILED, limit=5)
    assert "SIGSEGV" in (sup.status("m0").last_error or "")


async def test_hang_watchdog_kills_and_restarts(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_initial=0.01)
    sup, spawner, rec = fake_supervisor(tmp_path, restart=policy, hang_timeout=0.2)
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    spawner.instances[0].healthy = False
    await until(sup, "m0", lambda s: s.restarts >= 1 and s.state is State.READY, limit=5)
    assert spawner.instances[0].returncode == -signal.SIGKILL
    backoff = next(s for s in rec.seen if s.state is State.BACKOFF)
    assert backoff.last_error == "not answering /health for 0.2 s (hung)"
    await sup.shutdown()


async def test_stop_from_backoff_cancels_the_restart(tmp_path: Path) -> None:
    policy = RestartPolicy(backoff_initial=30)
    sup, spawner, _ = fake_supervisor(tmp_path, restart=policy)
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    spawner.instances[0].finish(1)
    await until(sup, "m0", lambda s: s.state is State.BACKOFF, limit=5)
    assert sup.running_count == 1  # a model waiting for its restart keeps its place
    life = sup._entries["m0"].task
    assert life is not None and not life.done()  # sleeping through the 30 s back-off
    status = await sup.stop("m0")
    assert status.state is State.STOPPED and status.last_error is None
    # The pending restart is gone, not merely late: the task that would spawn it ended.
    assert life.cancelled()
    lives = [
        t
        for t in asyncio.all_tasks()
        if getattr(t.get_coro(), "__qualname__", "") == "Lifecycle.run"
    ]
    assert lives == []
    assert len(spawner.instances) == 1


async def test_start_from_backoff_restarts_now(tmp_path: Path) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path, restart=RestartPolicy(backoff_initial=30))
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    spawner.instances[0].finish(1)
    await until(sup, "m0", lambda s: s.state is State.BACKOFF, limit=5)
    await sup.start("m0")
    assert (await sup.wait_settled("m0", timeout=5)).state is State.READY
    assert len(spawner.instances) == 2
    await sup.shutdown()


async def test_stop_while_starting_cancels_the_launch(tmp_path: Path) -> None:
    sup, spawner, rec = fake_supervisor(tmp_path, spawner=FakeSpawner(ready=False))
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.pid is not None)  # spawned, loading
    status = await sup.stop("m0")
    assert status.state is State.STOPPED
    assert spawner.instances[0].returncode == -signal.SIGTERM
    assert rec.states("m0") == [State.STARTING, State.STOPPING, State.STOPPED]


async def test_start_while_stopping_is_a_conflict(tmp_path: Path) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path)
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    inst = spawner.instances[0]
    release = asyncio.Event()
    inst.stop = held_stop(inst, release)  # type: ignore[method-assign]
    stopping = asyncio.create_task(sup.stop("m0"))
    await until(sup, "m0", lambda s: s.state is State.STOPPING)
    with pytest.raises(Conflict):
        await sup.start("m0")
    second = asyncio.create_task(sup.stop("m0"))  # a second stop waits for the first
    await asyncio.sleep(0)  # let it begin waiting
    assert not second.done()
    release.set()
    assert (await second).state is State.STOPPED
    await stopping


def held_stop(inst: FakeInstance, release: asyncio.Event) -> Any:
    """A stop() that takes until the test releases it."""

    async def stop(grace: float) -> int:
        await release.wait()
        inst.finish(0)
        return 0

    return stop


async def test_stop_uses_the_configured_grace(tmp_path: Path) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path, stop_grace=2.5)
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    await sup.stop("m0")
    assert spawner.instances[0].grace_used == 2.5


async def test_subscribers_errors_are_logged_and_unsubscribe_works(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup, _, _ = fake_supervisor(tmp_path)
    seen: list[State] = []

    def broken(status: InstanceStatus) -> None:
        raise RuntimeError("boom")

    sup.subscribe(broken)
    unsubscribe = sup.subscribe(lambda s: seen.append(s.state))
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    unsubscribe()
    await sup.stop("m0")
    assert seen[0] is State.STARTING and seen[-1] is State.READY
    assert "boom" in caplog.text


async def test_observe_start_duration_and_ports_differ(tmp_path: Path) -> None:
    observed: list[tuple[str, float]] = []
    spawner = FakeSpawner()
    sup = Supervisor(
        config(tmp_path, Path("/x"), ports=PortRange(24000, 24003)),
        models(3, tmp_path / "x.gguf"),
        spawn=spawner,
        observe_start_duration=lambda m, s: observed.append((m, s)),
    )
    for name in ("m0", "m1", "m2"):
        await sup.start(name)
    for name in ("m0", "m1", "m2"):
        await sup.wait_settled(name, timeout=5)
    ports = {sup.status(n).port for n in ("m0", "m1", "m2")}
    assert len(ports) == 3 and ports <= {24000, 24001, 24002, 24003}
    assert sorted(m for m, _ in observed) == ["m0", "m1", "m2"]
    await sup.shutdown()


async def test_no_free_port_fails_with_advice(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        sup, _, _ = fake_supervisor(tmp_path, ports=PortRange(port, port))
        await sup.start("m0")
        status = await sup.wait_settled("m0", timeout=5)
    assert status.state is State.FAILED
    assert "no free port" in (status.last_error or "")


async def test_start_autostart_in_order_within_cap(tmp_path: Path) -> None:
    src = StaticModels(
        [ModelConfig(f"a{i}", tmp_path / "x.gguf", autostart=i != 1) for i in range(5)]
    )
    sup = Supervisor(config(tmp_path, Path("/x"), max_parallel=2), src, spawn=FakeSpawner())
    assert await sup.start_autostart() == ["a0", "a2"]
    assert sup.running_models() == ["a0", "a2"]
    await sup.shutdown()


async def test_log_tail_falls_back_to_the_log_file(tmp_path: Path) -> None:
    sup, _, _ = fake_supervisor(tmp_path)
    sup.config.log_dir.mkdir(parents=True)
    (sup.config.log_dir / "m3.log").write_text("a\nb\nc\n")
    assert sup.log_tail("m3", 2) == ["b", "c"]
    (sup.config.log_dir / "m3.log.1").write_text("x\ny\nz\n")  # rotated a moment ago
    assert sup.log_tail("m3", 5) == ["y", "z", "a", "b", "c"]
    await sup.start("m0")
    await sup.wait_settled("m0", timeout=5)
    assert sup.log_tail("m0", 5) == ["fake log"]
    await sup.shutdown()


async def test_fifty_concurrent_starts_never_exceed_the_cap_unit(tmp_path: Path) -> None:
    sup, _, _ = fake_supervisor(tmp_path, n=8, max_parallel=4)
    names = [f"m{i % 8}" for i in range(50)]
    random.shuffle(names)
    results = await asyncio.gather(*(sup.start(n) for n in names), return_exceptions=True)
    rejected = sum(isinstance(r, CapExceeded) for r in results)
    assert sup.running_count == 4
    assert rejected + sum(isinstance(r, InstanceStatus) for r in results) == 50
    assert rejected == 50 - sum(names.count(n) for n in sup.running_models())
    await sup.shutdown()


# --- fake llama-server as real child processes ------------------------------------


def alive(pid: int) -> bool:
    """True when pid runs and is not a zombie (pid 1 here reaps orphans only slowly)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def real_supervisor(
    tmp_path: Path, binary: Path, n: int, *args: str, **kw: Any
) -> tuple[Supervisor, Recorder]:
    watchdog = kw.pop("watchdog_interval", 0.2)
    sup = Supervisor(
        config(tmp_path, binary, **kw),
        models(n, tmp_path / "x.gguf", *args),
        watchdog_interval=watchdog,
    )
    recorder = Recorder()
    sup.subscribe(recorder)
    return sup, recorder


@pytest.fixture
def cleanup() -> Iterator[list[Supervisor]]:
    sups: list[Supervisor] = []
    yield sups
    for sup in sups:
        for status in sup.statuses():
            if status.pid is not None and alive(status.pid):
                os.kill(status.pid, signal.SIGKILL)


async def test_fifty_concurrent_starts_real_processes(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    sup, _ = real_supervisor(tmp_path, fake_server_bin, 8, max_parallel=4)
    cleanup.append(sup)
    names = [f"m{i % 8}" for i in range(50)]
    results = await asyncio.gather(*(sup.start(n) for n in names), return_exceptions=True)
    started = sup.running_models()
    assert len(started) == 4
    rejected = [r for r in results if isinstance(r, CapExceeded)]
    idempotent = [r for r in results if isinstance(r, InstanceStatus)]
    assert len(rejected) + len(idempotent) == 50
    assert len(rejected) == 50 - sum(names.count(n) for n in started)
    settled = [await sup.wait_settled(n, timeout=30) for n in started]
    assert all(s.state is State.READY for s in settled)
    pids = [s.pid for s in settled]
    await sup.shutdown()
    assert not any(alive(p) for p in pids if p is not None)


async def test_crash_is_noticed_at_once_and_restarted(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    policy = RestartPolicy(backoff_initial=0.05)
    # No /health probe in the test's lifetime: only the exit itself can be noticed.
    sup, rec = real_supervisor(
        tmp_path, fake_server_bin, 1, restart=policy, watchdog_interval=3600, hang_timeout=3600
    )
    cleanup.append(sup)
    await sup.start("m0")
    ready = await sup.wait_settled("m0", timeout=30)
    assert ready.state is State.READY and ready.pid is not None
    os.kill(ready.pid, signal.SIGKILL)
    await until(sup, "m0", restarted(1), limit=30)
    backoff = next(s for s in rec.seen if s.state is State.BACKOFF)
    assert "SIGKILL" in (backoff.last_error or "")
    assert sup.counters("m0").restarts_total == 1
    assert sup.status("m0").pid != ready.pid
    await sup.shutdown()


async def test_sigill_during_load_fails_with_cpu_hint(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    args = ("--fake-signal-on-load", "SIGILL", "--fake-load-delay", "0.2")
    sup, _ = real_supervisor(tmp_path, fake_server_bin, 1, *args)
    cleanup.append(sup)
    await sup.start("m0")
    status = await sup.wait_settled("m0", timeout=30)
    assert status.state is State.FAILED
    error = status.last_error or ""
    assert "SIGILL while loading the model" in error
    assert "GGML_NATIVE=OFF" in error and "README" in error
    assert "fake crash while loading" in error  # the last log lines
    assert sup.counters("m0").start_failures_total == 1


async def test_hung_process_is_killed_and_restarted(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    policy = RestartPolicy(backoff_initial=0.05)
    sup, rec = real_supervisor(
        tmp_path, fake_server_bin, 1, "--fake-hang-after", "0.1", restart=policy, hang_timeout=0.6
    )
    cleanup.append(sup)
    await sup.start("m0")
    first = await sup.wait_settled("m0", timeout=30)
    assert first.pid is not None
    await until(sup, "m0", restarted(1), limit=30)
    assert not alive(first.pid)
    backoff = next(s for s in rec.seen if s.state is State.BACKOFF)
    assert backoff.last_error == "not answering /health for 0.6 s (hung)"
    await sup.shutdown()


async def test_ready_timeout_fails_and_kills(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    sup, rec = real_supervisor(
        tmp_path, fake_server_bin, 1, "--fake-load-delay", "30", ready_timeout=2.0
    )
    cleanup.append(sup)
    await sup.start("m0")
    status = await sup.wait_settled("m0", timeout=30)
    assert status.state is State.FAILED
    assert "within 2 s" in (status.last_error or "")
    pid = next(s.pid for s in rec.seen if s.pid is not None)
    assert not alive(pid)


async def test_stop_escalates_to_sigkill_after_grace(
    tmp_path: Path,
    fake_server_bin: Path,
    cleanup: list[Supervisor],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="llama_exporter")
    sup, _ = real_supervisor(tmp_path, fake_server_bin, 1, "--fake-ignore-sigterm", stop_grace=0.3)
    cleanup.append(sup)
    await sup.start("m0")
    ready = await sup.wait_settled("m0", timeout=30)
    assert ready.pid is not None
    begun = time.monotonic()
    stopped = await sup.stop("m0")
    assert stopped.state is State.STOPPED
    assert time.monotonic() - begun >= 0.3  # it gave the grace period (a lower bound only)
    assert f"pid {ready.pid} ignored SIGTERM for 0.3 s: SIGKILL" in caplog.text
    assert f"pid {ready.pid} stopped (status -9)" in caplog.text
    assert not alive(ready.pid)
    assert not psutil.pid_exists(ready.pid)  # reaped by us, not left as a zombie


async def test_shutdown_stops_everything_and_records_nothing(
    tmp_path: Path, fake_server_bin: Path, cleanup: list[Supervisor]
) -> None:
    sup, _ = real_supervisor(tmp_path, fake_server_bin, 2)
    cleanup.append(sup)
    await sup.start("m0")
    await sup.start("m1")
    pids = [(await sup.wait_settled(n, timeout=30)).pid for n in ("m0", "m1")]
    recorded = json.loads((sup.config.state_dir / "instances.json").read_text())
    assert {r["pid"] for r in recorded["instances"]} == set(pids)
    await sup.shutdown()
    assert all(s.state is State.STOPPED for s in sup.statuses())
    assert not any(p is not None and psutil.pid_exists(p) for p in pids)
    assert json.loads((sup.config.state_dir / "instances.json").read_text()) == {"instances": []}


def test_sigkilled_service_takes_its_children_along(tmp_path: Path, fake_server_bin: Path) -> None:
    first = port_range().first
    argv = [sys.executable, str(HERE / "supervisor_driver.py"), str(fake_server_bin)]
    driver = subprocess.Popen([*argv, str(tmp_path / "state"), str(first)], stdout=subprocess.PIPE)
    try:
        assert driver.stdout is not None
        pids: list[int] = json.loads(driver.stdout.readline())
        assert len(pids) == 2 and all(alive(p) for p in pids)
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        # The kernel's doing (PR_SET_PDEATHSIG); the limit only catches a hang.
        wait_until(lambda: not any(alive(p) for p in pids), "the children to be gone")
    finally:
        driver.kill()
        driver.wait()


def start_detached(binary: Path, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([str(binary), "--port", str(port)], start_new_session=True)


async def test_recover_kills_a_recorded_live_process(tmp_path: Path, fake_server_bin: Path) -> None:
    port = port_range().first
    proc = start_detached(fake_server_bin, port)
    try:
        create_time = psutil.Process(proc.pid).create_time()
        state = tmp_path / "state"
        records = [
            InstanceRecord("m0", proc.pid, create_time, port),
            InstanceRecord("gone", 999999, 1.0, port + 1),  # not running: ignored
            InstanceRecord("reused", os.getpid(), create_time - 100, port + 2),  # pid reused
        ]
        write_records(state / "instances.json", records)
        sup, _ = real_supervisor(tmp_path, fake_server_bin, 1)
        assert await sup.recover() == [proc.pid]
        assert proc.wait(timeout=60) == -signal.SIGKILL
        await sup.shutdown()
        assert json.loads((state / "instances.json").read_text()) == {"instances": []}
    finally:
        proc.kill()
        proc.wait()


async def test_a_binary_that_cannot_run_is_a_counted_start_failure(tmp_path: Path) -> None:
    async def cannot_exec(
        binary: Path, model: ModelConfig, host: str, port: int, log_file: Path
    ) -> Any:
        raise PermissionError(13, "Permission denied", str(binary))

    sup = Supervisor(
        config(tmp_path, Path("/nonexistent/llama-server")),
        models(1, tmp_path / "x.gguf"),
        spawn=cannot_exec,
    )
    await sup.start("m0")
    status = await sup.wait_settled("m0", timeout=5)
    assert status.state is State.FAILED
    assert status.last_error is not None and "Permission denied" in status.last_error
    assert sup.counters("m0").start_failures_total == 1


async def test_start_during_a_stop_from_backoff_does_not_crash(tmp_path: Path) -> None:
    policy = RestartPolicy(max_retries=3, backoff_initial=5, backoff_max=5)
    spawner = FakeSpawner(crash_after_ready=0.01)
    sup, _, _ = fake_supervisor(tmp_path, spawner=spawner, restart=policy)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.state is State.BACKOFF)
    stopping = asyncio.create_task(sup.stop("m0"))
    await until(sup, "m0", lambda s: s.state is State.STOPPED)  # the stop is under way
    assert not stopping.done()  # still waiting for the life task to end
    status = await sup.start("m0")  # raced with the stop: never an AssertionError
    assert status.state in (State.STARTING, State.READY, State.STOPPED)
    await stopping
    await sup.shutdown()


async def test_stop_and_wait_settled_create_no_entries(tmp_path: Path) -> None:
    sup, _, rec = fake_supervisor(tmp_path, n=2)
    with pytest.raises(UnknownModel):
        await sup.stop("nope")
    with pytest.raises(UnknownModel):
        await sup.wait_settled("nope", timeout=5)
    assert (await sup.stop("m1")).state is State.STOPPED
    assert (await sup.wait_settled("m1", timeout=5)).state is State.STOPPED
    assert [s.model for s in sup.statuses()] == ["m0", "m1"]
    assert sup._entries == {}  # known but never started: nothing tracked either
    assert rec.seen == []  # and nothing published


async def test_shutdown_logs_what_it_could_not_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sup, spawner, _ = fake_supervisor(tmp_path)
    await sup.start("m0")
    await sup.start("m1")
    await sup.wait_settled("m0", timeout=5)
    await sup.wait_settled("m1", timeout=5)

    async def broken_stop(grace: float) -> int:
        raise RuntimeError("stuck in D state")

    spawner.by_model["m0"][0].stop = broken_stop  # type: ignore[method-assign]
    await sup.shutdown()
    failures = [r for r in caplog.records if r.getMessage() == "shutdown: stopping m0 failed"]
    assert len(failures) == 1 and failures[0].levelname == "ERROR"
    assert "stuck in D state" in caplog.text
    assert sup.status("m1").state is State.STOPPED  # the others were stopped all the same
