"""Supervisor.restart (a reload's restart): STOPPING straight to STARTING with the
current settings, the place under the cap kept, waiters handed the new instance, a
stop() during it honoured (in-memory llama-servers, tests/test_supervisor.py's fakes)."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

from test_gateway_scheduler import setup as gateway_setup
from test_supervisor import FakeSpawner, fake_supervisor, transitions_are_legal, until

from llama_exporter.config.settings import ModelConfig
from llama_exporter.states import CapExceeded, State
from llama_exporter.supervision.model_source import StaticModels

__all__ = ["transitions_are_legal"]  # the autouse fixture checks every transition here too


class Models(StaticModels):
    """A model list the test changes, as a reload changes the registry."""

    def set(self, model: ModelConfig) -> None:
        self._models[model.name] = model


def setup(tmp_path: Path, **kw: Any) -> tuple[Any, FakeSpawner, Any, Models]:
    sup, spawner, recorder = fake_supervisor(tmp_path, n=2, **kw)
    source = Models(sup.models.get(n) for n in sup.models.names())
    sup.models = source
    return sup, spawner, recorder, source


async def test_restart_keeps_the_place_and_launches_the_new_settings(tmp_path: Path) -> None:
    sup, spawner, recorder, source = setup(tmp_path, max_parallel=1)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.state is State.READY)
    old_pid = sup.status("m0").pid
    source.set(replace(source.get("m0"), ctx_size=8192))
    restart = asyncio.ensure_future(sup.restart("m0"))
    await until(sup, "m0", lambda s: s.state is State.STOPPING)
    waiter = asyncio.ensure_future(sup.wait_settled("m0"))  # a request arriving meanwhile
    try:  # the cap's one place is still m0's: another start is refused
        sup.launch("m1")
        raise AssertionError("m1 started while m0 restarts under cap 1")
    except CapExceeded:
        pass
    await restart
    settled = await waiter
    assert settled.state is State.READY and settled.pid != old_pid
    assert recorder.states("m0")[-3:] == [State.STOPPING, State.STARTING, State.READY]
    launched = sup.launched("m0")
    assert launched is not None and launched.ctx_size == 8192
    assert sup.lifecycle_counts("m0") == ({"api": 1, "reload": 1}, {"reload": 1})
    assert spawner.by_model["m0"][0].returncode is not None  # the old one was stopped


async def test_a_stop_during_the_restart_wins(tmp_path: Path) -> None:
    sup, spawner, _, _ = setup(tmp_path)
    drained = asyncio.Event()

    async def slow_drain(model: str, seconds: float, reason: str) -> None:
        await drained.wait()

    sup.set_drain(slow_drain)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.state is State.READY)
    restart = asyncio.ensure_future(sup.restart("m0"))
    await until(sup, "m0", lambda s: s.state is State.STOPPING)
    stop = asyncio.ensure_future(sup.stop("m0"))
    await asyncio.sleep(0)
    drained.set()
    assert (await restart).state is State.STOPPED
    assert (await stop).state is State.STOPPED
    assert len(spawner.by_model["m0"]) == 1  # never started again


async def test_restart_leaves_stopped_and_failed_models_alone(tmp_path: Path) -> None:
    sup, spawner, _, _ = setup(tmp_path)
    assert (await sup.restart("m1")).state is State.STOPPED
    assert "m1" not in spawner.by_model


async def test_restart_during_shutdown_ends_stopped(tmp_path: Path) -> None:
    sup, spawner, _, _ = setup(tmp_path)
    await sup.start("m0")
    await until(sup, "m0", lambda s: s.state is State.READY)
    restart = asyncio.ensure_future(sup.restart("m0"))
    await sup.shutdown()
    assert (await restart).state is State.STOPPED
    assert len(spawner.by_model["m0"]) == 1


async def test_a_request_during_a_restart_waits_like_a_load(tmp_path: Path) -> None:
    gw, sup, _, _ = gateway_setup(tmp_path, "a", cap=1)
    drained = asyncio.Event()
    first = await gw.scheduler.acquire("a")
    old = first.status.pid

    async def drain(model: str, seconds: float, reason: str) -> None:
        await drained.wait()

    sup.set_drain(drain)
    restart = asyncio.ensure_future(sup.restart("a"))
    await until(sup, "a", lambda s: s.state is State.STOPPING)
    assert sup.restarting("a")
    late = asyncio.ensure_future(gw.scheduler.acquire("a"))
    await asyncio.sleep(0)
    assert gw.scheduler._usage.load_waiters.get("a") == 1  # counted as waiting for a load
    first.release()
    drained.set()
    lease = await asyncio.wait_for(late, 10)
    await restart
    assert lease.status.pid != old and lease.status.state is State.READY
    assert gw.metrics.load_wait.count(("a",)) == 2  # the first (0 s) and the late one
    assert not sup.restarting("a")
    lease.release()
