"""Admission by memory, enforced by the Supervisor and asked by the gateway (in-memory
instances, a figure book double): refusals name the memory, evictions take as few as
needed, a model larger than the budget never spawns."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from test_gateway_scheduler import Clock, loads, unloads, use
from test_supervisor import FakeSpawner, config
from waiting import async_wait_until

from llama_exporter.config.settings import GatewayConfig, ModelConfig
from llama_exporter.gateway.routes import Gateway
from llama_exporter.gateway.scheduler import GatewayError
from llama_exporter.memory.figure import HOST, DeviceNeed, MemoryFigure
from llama_exporter.memory.report import LoadReport
from llama_exporter.states import State
from llama_exporter.supervision.ledger import MemoryFull, ModelTooBig
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor

GiB = 1024**3


class Book:
    """A MemoryBook double: each model's host figure in GiB, and the OOM reports it got."""

    def __init__(self, gib: Mapping[str, float]) -> None:
        self.gib = gib
        self.ooms: list[str] = []
        self.learned: list[tuple[str, LoadReport]] = []
        self.reads = 0

    def figure(self, model: ModelConfig) -> MemoryFigure:
        self.reads += 1
        need = DeviceNeed(kv=int(self.gib[model.name] * GiB))
        return MemoryFigure({HOST: need})

    def estimate(self, model: ModelConfig) -> MemoryFigure:
        return self.figure(model)

    def raise_after_oom(self, model: ModelConfig) -> None:
        self.ooms.append(model.name)

    def learn(self, model: ModelConfig, report: LoadReport) -> None:
        self.learned.append((model.name, report))


def setup(
    tmp_path: Path,
    gib: Mapping[str, float],
    budget: float,
    *,
    cap: int = 9,
    pinned: str = "",
    **gateway: Any,
) -> tuple[Gateway, Supervisor, FakeSpawner, Clock, Book]:
    clock, spawner, book = Clock(), FakeSpawner(), Book(gib)
    models = [ModelConfig(n, tmp_path / f"{n}.gguf", pinned=n in pinned) for n in gib]
    cfg = config(
        tmp_path,
        Path("/nonexistent/llama-server"),
        max_parallel=cap,
        gateway=GatewayConfig(**gateway),
    )
    sup = Supervisor(
        cfg,
        StaticModels(models),
        spawn=spawner,
        clock=clock,
        watchdog_interval=0.05,
        memory=book,
        budgets={HOST: int(budget * GiB)},
    )
    return Gateway(cfg, sup, clock=clock), sup, spawner, clock, book


async def test_supervisor_refuses_a_start_that_does_not_fit_naming_the_memory(
    tmp_path: Path,
) -> None:
    _, sup, _, _, _ = setup(tmp_path, {"a": 3, "b": 3, "c": 3}, budget=7)
    await sup.start("a")
    await sup.start("b")
    with pytest.raises(MemoryFull) as info:
        await sup.start("c")
    text = str(info.value)
    assert "needs 3.0 GiB on cpu" in text and "1.0 GiB free" in text and "a (3.0 GiB)" in text
    assert sup.ledger.reserved() == {HOST: 6 * GiB}
    assert sup.counters("c").start_rejected_total == 1
    await sup.shutdown()


async def test_a_model_larger_than_the_budget_fails_and_is_never_spawned(tmp_path: Path) -> None:
    gw, sup, spawner, _, _ = setup(tmp_path, {"huge": 9, "a": 1}, budget=8)
    with pytest.raises(ModelTooBig):
        await sup.start("huge")
    status = sup.status("huge")
    assert status.state is State.FAILED
    assert "more than its whole budget" in (status.last_error or "")
    with pytest.raises(ModelTooBig):  # the gateway too: at once, not queued
        await asyncio.wait_for(gw.scheduler.acquire("huge"), 10)
    assert spawner.by_model.get("huge") is None
    assert gw.scheduler.queue_length == 0
    await sup.shutdown()


async def test_gateway_evicts_as_many_as_needed_and_no_more(tmp_path: Path) -> None:
    sizes = {"a": 2, "b": 2, "c": 2, "big": 5}
    gw, sup, _, clock, _ = setup(tmp_path, sizes, budget=7)
    for name in "abc":
        await use(gw, clock, name)
    await use(gw, clock, "a")  # b, then c, are now the least recently used
    await use(gw, clock, "big")  # needs 5 of 7: two of the 2 GiB models must go
    assert unloads(sup, "b") == {"evicted": 1} and unloads(sup, "c") == {"evicted": 1}
    assert sup.status("a").state is State.READY and unloads(sup, "a") == {}
    assert sup.ledger.reserved()[HOST] == 7 * GiB
    await sup.shutdown()


async def test_busy_and_pinned_models_are_not_evicted_the_request_queues(tmp_path: Path) -> None:
    gw, sup, _, clock, _ = setup(tmp_path, {"p": 3, "a": 3, "c": 3}, budget=7, pinned="p")
    await use(gw, clock, "p")
    held = await gw.scheduler.acquire("a")
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    assert sup.status("p").state is sup.status("a").state is State.READY
    held.release()  # a is idle now: admission names it, c loads
    (await asyncio.wait_for(waiting, 10)).release()
    assert unloads(sup, "a") == {"evicted": 1} and unloads(sup, "p") == {}
    assert loads(sup, "c") == {"request": 1}
    await sup.shutdown()


async def test_reject_answers_429_naming_needed_free_and_holders(tmp_path: Path) -> None:
    gw, sup, *_ = setup(tmp_path, {"a": 3, "b": 3, "c": 3}, budget=7, when_full="reject")
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("b")]
    with pytest.raises(GatewayError) as info:
        await gw.scheduler.acquire("c")
    message = info.value.message
    assert info.value.status == 429
    assert "needs 3.0 GiB on cpu" in message and "1.0 GiB free" in message
    assert "a (3.0 GiB)" in message and "b (3.0 GiB)" in message
    for lease in held:
        lease.release()
    await sup.shutdown()


async def test_explicit_start_with_evict_makes_the_room_admission_names(tmp_path: Path) -> None:
    gw, sup, _, clock, book = setup(tmp_path, {"a": 3, "b": 3, "c": 6}, budget=7)
    await use(gw, clock, "a")
    await use(gw, clock, "b")
    status = await gw.scheduler.start_for_api("c", evict=True)
    assert status.state in (State.STARTING, State.READY)
    assert unloads(sup, "a") == {"evicted": 1} and unloads(sup, "b") == {"evicted": 1}
    assert book.reads >= 3  # each start read its figure (in a thread)
    await sup.shutdown()


async def test_without_budgets_only_the_cap_counts(tmp_path: Path) -> None:
    _, sup, _, _, _ = setup(tmp_path, {"a": 100, "b": 100}, budget=1, cap=2)
    sup.ledger.budgets = {}
    await sup.start("a")
    await sup.start("b")
    assert sup.ledger.active_budgets == {}
    await sup.shutdown()


async def test_budgets_follow_a_reload(tmp_path: Path) -> None:
    """auto is resolved from the totals read at start; a reload's new sizes apply live."""
    _, sup, _, _, _ = setup(tmp_path, {"a": 3}, budget=7)
    sup.ledger.set_totals({HOST: 10 * GiB}, {}, 0.1)  # memory_budget: {} counts no memory
    assert sup.ledger.active_budgets == {}
    new = dataclasses.replace(sup.config, memory_budget={HOST: None}, memory_headroom=0.2)
    sup.reconfigure(new)
    assert sup.ledger.active_budgets == {HOST: 8 * GiB}
    sup.reconfigure(dataclasses.replace(new, memory_budget={"cuda0": None}))  # no total
    assert sup.ledger.active_budgets == {HOST: 8 * GiB}  # kept, and the error logged
    sup.reconfigure(dataclasses.replace(new, memory_budget={HOST: 2 * GiB}))
    with pytest.raises(ModelTooBig):
        await sup.start("a")
    await sup.shutdown()
