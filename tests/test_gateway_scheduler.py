"""Gateway scheduler over a Supervisor with in-memory instances: loads, queue, eviction, idle.

The OS seam (spawn) is replaced as in test_supervisor.py; time for last use is a
clock the test moves, so LRU order and TTLs do not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_supervisor import FakeSpawner, config, until
from waiting import async_wait_until

from llama_exporter.config.settings import GatewayConfig, ModelConfig, RestartPolicy
from llama_exporter.gateway.routes import Gateway
from llama_exporter.gateway.scheduler import GatewayError, Lease
from llama_exporter.states import ShuttingDown, State
from llama_exporter.supervision.model_source import StaticModels
from llama_exporter.supervision.supervisor import Supervisor


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def setup(
    tmp_path: Path,
    names: str = "abc",
    *,
    cap: int = 2,
    spawner: FakeSpawner | None = None,
    pinned: str = "",
    idle_ttl: float = 0.0,
    stop_drain: float = 30.0,
    restart: RestartPolicy | None = None,
    **gateway: Any,
) -> tuple[Gateway, Supervisor, FakeSpawner, Clock]:
    clock = Clock()
    spawner = spawner or FakeSpawner()
    models = [
        ModelConfig(
            n, tmp_path / f"{n}.gguf", pinned=n in pinned, idle_ttl=idle_ttl, stop_drain=stop_drain
        )
        for n in names
    ]
    cfg = config(
        tmp_path,
        Path("/nonexistent/llama-server"),
        max_parallel=cap,
        gateway=GatewayConfig(**gateway),
        restart=restart or RestartPolicy(),
    )
    sup = Supervisor(cfg, StaticModels(models), spawn=spawner, clock=clock, watchdog_interval=0.05)
    return Gateway(cfg, sup, clock=clock), sup, spawner, clock


async def use(gw: Gateway, clock: Clock, model: str) -> None:
    """One whole request on model at the current time, then move the clock on."""
    lease = await asyncio.wait_for(gw.scheduler.acquire(model), 10)
    lease.release()
    clock.now += 1


def loads(sup: Supervisor, model: str) -> dict[str, int]:
    return sup.lifecycle_counts(model)[0]


def unloads(sup: Supervisor, model: str) -> dict[str, int]:
    return sup.lifecycle_counts(model)[1]


async def test_twenty_requests_for_a_cold_model_share_one_load(tmp_path: Path) -> None:
    spawner = FakeSpawner(ready=False)
    gw, sup, _, _ = setup(tmp_path, spawner=spawner)
    tasks = [asyncio.create_task(gw.scheduler.acquire("a")) for _ in range(20)]
    await async_wait_until(lambda: len(spawner.instances) == 1 and sup.status("a").pid is not None)
    spawner.instances[0].ready.set()
    leases = await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(spawner.by_model["a"]) == 1
    assert loads(sup, "a") == {"request": 1}
    assert gw.scheduler.in_flight_of("a") == 20
    assert gw.metrics.load_wait.count(("a",)) == 20
    for lease in leases:
        lease.release()
    assert gw.scheduler.in_flight_of("a") == 0
    await sup.shutdown()


async def test_eviction_takes_the_least_recently_used(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc")
    await use(gw, clock, "a")
    await use(gw, clock, "b")
    await use(gw, clock, "a")  # b is now the least recently used
    await use(gw, clock, "c")
    assert sup.status("b").state is State.STOPPED
    assert unloads(sup, "b") == {"evicted": 1}
    assert {sup.status("a").state, sup.status("c").state} == {State.READY}
    await use(gw, clock, "b")  # a (used at t+2) is older than c (t+3)
    assert sup.status("a").state is State.STOPPED
    assert loads(sup, "b") == {"request": 2}
    await sup.shutdown()
    assert unloads(sup, "b") == {"evicted": 1, "shutdown": 1}


async def test_pinned_model_is_never_evicted(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc", pinned="a")
    await use(gw, clock, "a")  # the least recently used, but pinned
    await use(gw, clock, "b")
    await use(gw, clock, "c")
    assert sup.status("a").state is State.READY
    assert sup.status("b").state is State.STOPPED
    await use(gw, clock, "b")
    assert sup.status("a").state is State.READY and sup.status("c").state is State.STOPPED
    await sup.shutdown()


async def test_busy_models_are_not_evicted_the_request_queues(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc")
    held_a = await gw.scheduler.acquire("a")
    held_b = await gw.scheduler.acquire("b")
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    assert sup.status("a").state is sup.status("b").state is State.READY
    assert gw.summary()["models"]["c"]["queued"] == 1
    clock.now += 5
    held_b.release()  # b is free now: it goes, c loads
    lease = await asyncio.wait_for(waiting, 10)
    assert sup.status("b").state is State.STOPPED and sup.status("a").state is State.READY
    assert gw.metrics.queue_wait.count(("c",)) == 1
    assert lease.queue_wait > 0 and held_a.queue_wait == 0
    for held in (held_a, lease):
        held.release()
    await sup.shutdown()


async def test_every_admitted_request_observes_its_waits_zero_when_none(tmp_path: Path) -> None:
    gw, sup, _, _ = setup(tmp_path, "ab")
    cold = await gw.scheduler.acquire("a")  # loads a: a load wait, no queue
    warm = await gw.scheduler.acquire("a")  # ready: neither
    assert cold.queue_wait == 0 and cold.load_wait > 0
    assert warm.queue_wait == 0 and warm.load_wait == 0
    m = gw.metrics
    assert m.queue_wait.count(("a",)) == m.load_wait.count(("a",)) == 2
    zero = [
        s.value
        for s in m.queue_wait.family().samples
        if s.name.endswith("_bucket") and s.labels["le"] == "0.0"
    ]
    assert zero == [2]  # both in the bucket that ends at 0: a quantile of them reads 0
    for held in (cold, warm):
        held.release()
    await sup.shutdown()


async def test_queue_serves_waiters_for_one_model_together(tmp_path: Path) -> None:
    """A A B A behind a busy model: A loads once and all three A go; B waits its turn."""
    gw, sup, spawner, _ = setup(tmp_path, "xAB", cap=1)
    held = await gw.scheduler.acquire("x")
    order = ["A", "A", "B", "A"]
    tasks = []
    for i, name in enumerate(order, 1):
        tasks.append(asyncio.create_task(gw.scheduler.acquire(name)))
        await async_wait_until(lambda i=i: gw.scheduler.queue_length == i)  # type: ignore[misc]
    held.release()
    a_leases = await asyncio.wait_for(asyncio.gather(tasks[0], tasks[1], tasks[3]), 10)
    assert len(spawner.by_model["A"]) == 1
    assert gw.scheduler.queue_length == 1 and not tasks[2].done()
    for lease in a_leases:
        lease.release()
    (await asyncio.wait_for(tasks[2], 10)).release()
    assert loads(sup, "A") == {"request": 1} and loads(sup, "B") == {"request": 1}
    await sup.shutdown()


async def test_queue_full_answers_429_with_retry_after(tmp_path: Path) -> None:
    gw, sup, _, _ = setup(tmp_path, "abcd", max_queue=1)
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("b")]
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    with pytest.raises(GatewayError) as info:
        await gw.scheduler.acquire("d")
    assert info.value.status == 429 and "Retry-After" in info.value.headers
    assert "queue is full" in info.value.message
    assert gw.metrics.rejected.values[("d", "queue_full")] == 1
    waiting.cancel()
    for lease in held:
        lease.release()
    await sup.shutdown()


async def test_queue_timeout_answers_503_and_leaves_the_queue(tmp_path: Path) -> None:
    gw, sup, _, _ = setup(tmp_path, "abc", queue_timeout=0.2)
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("b")]
    with pytest.raises(GatewayError) as info:
        await gw.scheduler.acquire("c")
    assert info.value.status == 503 and info.value.headers["Retry-After"]
    assert info.value.code == "queue_timeout"
    assert gw.scheduler.queue_length == 0
    assert gw.metrics.rejected.values[("c", "timeout")] == 1
    for lease in held:
        lease.release()
    await sup.shutdown()


async def test_a_queued_client_that_leaves_is_removed_and_counted(tmp_path: Path) -> None:
    gw, sup, spawner, _ = setup(tmp_path, "abc")
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("b")]
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert gw.scheduler.queue_length == 0
    assert gw.metrics.rejected.values[("c", "cancelled")] == 1
    for lease in held:
        lease.release()
    # The releases pumped the queue, and a load begins in the same step as its decision
    # (STARTING with no await before it): had anything wanted c, it would be loading now.
    assert sup.status("c").state is State.STOPPED and loads(sup, "c") == {}
    assert "c" not in spawner.by_model  # nobody waits for c: it was not loaded
    await sup.shutdown()


async def test_when_full_reject_answers_429_at_once(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc", when_full="reject")
    await use(gw, clock, "a")
    await use(gw, clock, "b")
    with pytest.raises(GatewayError) as info:
        await gw.scheduler.acquire("c")
    assert info.value.status == 429
    assert sup.status("a").state is State.READY  # nothing evicted
    await sup.shutdown()


async def test_when_full_queue_waits_instead_of_evicting(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc", when_full="queue")
    await use(gw, clock, "a")
    await use(gw, clock, "b")
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    # Joining the queue ran its pump, where an eviction would have been decided.
    assert sup.status("a").state is sup.status("b").state is State.READY
    await sup.stop("a")  # room made by someone else: the waiter goes
    (await asyncio.wait_for(waiting, 10)).release()
    # Any eviction task would have run long before the stop and the load above ended.
    assert unloads(sup, "a") == {"api": 1} and unloads(sup, "b") == {}
    await sup.shutdown()


async def test_a_load_nobody_waits_for_gives_way_to_the_queue(tmp_path: Path) -> None:
    spawner = FakeSpawner(ready=False)
    gw, sup, _, _ = setup(tmp_path, "ab", cap=1, spawner=spawner)
    first = asyncio.create_task(gw.scheduler.acquire("a"))
    await async_wait_until(lambda: sup.status("a").state is State.STARTING)
    second = asyncio.create_task(gw.scheduler.acquire("b"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    assert sup.status("a").state is State.STARTING  # a is still wanted
    first.cancel()  # a's only client leaves: its load is cancelled and b goes
    await async_wait_until(lambda: "b" in spawner.by_model)
    assert unloads(sup, "a") == {"evicted": 1}
    spawner.by_model["b"][0].ready.set()
    (await asyncio.wait_for(second, 10)).release()
    assert gw.metrics.rejected.values[("a", "cancelled")] == 1
    await sup.shutdown()


async def test_idle_ttl_unloads_only_unused_unpinned_idle_models(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc", cap=3, idle_ttl=10, pinned="c")
    for name in "abc":
        await use(gw, clock, name)
    held = await gw.scheduler.acquire("b")
    # Reading status (what /status, the poller's listener and the WebSocket do) is no use.
    for _ in range(50):
        sup.statuses()
        gw.status_fields("a")
        gw.summary()
    clock.now += 6.5  # a was last used 9.5 s ago
    assert gw.scheduler.idle_check() == []
    clock.now += 1
    assert gw.scheduler.idle_check() == ["a"]  # b is in flight, c is pinned
    await until(sup, "a", lambda s: s.state is State.STOPPED)
    assert unloads(sup, "a") == {"idle": 1}
    assert gw.ttl_left("b", None) == pytest.approx(2.5)  # last used when it was acquired
    held.release()
    clock.now += 10
    assert gw.scheduler.idle_check() == ["b"]
    await sup.shutdown()


async def test_explicit_stop_waits_for_requests_in_flight(tmp_path: Path) -> None:
    gw, sup, _, _ = setup(tmp_path, "ab")
    drain_began, drain_ended = asyncio.Event(), asyncio.Event()

    async def watched_drain(model: str, seconds: float, reason: str) -> None:
        drain_began.set()
        try:
            await gw.scheduler.drain(model, seconds, reason)
        finally:
            drain_ended.set()

    sup.set_drain(watched_drain)
    lease: Lease = await gw.scheduler.acquire("a")
    stopping = asyncio.create_task(sup.stop("a"))
    await asyncio.wait_for(drain_began.wait(), 10)
    # The drain checks the requests in flight in the step it began: had it not waited for
    # the one held here, it would have ended in that step.
    assert not drain_ended.is_set() and not stopping.done()
    assert sup.status("a").state is State.STOPPING  # still draining
    lease.release()
    assert (await asyncio.wait_for(stopping, 5)).state is State.STOPPED
    assert unloads(sup, "a") == {"api": 1}
    assert gw.metrics.cut_off.values == {}
    await sup.shutdown()


async def test_stop_drain_runs_out_and_counts_the_requests_cut_off(tmp_path: Path) -> None:
    gw, sup, _, _ = setup(tmp_path, "ab", stop_drain=0.05)
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("a")]
    assert (await asyncio.wait_for(sup.stop("a"), 5)).state is State.STOPPED
    assert gw.metrics.cut_off.values == {("a", "api"): 2}
    for lease in held:
        lease.release()
    await sup.shutdown()


async def test_requests_wait_for_a_stopping_model_then_load_it_again(tmp_path: Path) -> None:
    gw, sup, spawner, clock = setup(tmp_path, "ab")
    held = await gw.scheduler.acquire("a")
    stopping = asyncio.create_task(sup.stop("a"))
    await until(sup, "a", lambda s: s.state is State.STOPPING)
    clock.now += 1
    again = asyncio.create_task(gw.scheduler.acquire("a"))
    # acquire() records the use first, then decides in the same step: once the use is
    # seen, the request has met the stopping model, and it must be waiting.
    await async_wait_until(lambda: gw.scheduler.last_used.get("a") == clock.now)
    assert not again.done()
    held.release()
    await stopping
    (await asyncio.wait_for(again, 5)).release()
    assert len(spawner.by_model["a"]) == 2
    await sup.shutdown()


async def test_load_failure_answers_503_with_the_reason(tmp_path: Path) -> None:
    spawner = FakeSpawner(ready=False)
    gw, sup, _, _ = setup(tmp_path, "ab", spawner=spawner)
    task = asyncio.create_task(gw.scheduler.acquire("a"))
    await async_wait_until(lambda: "a" in spawner.by_model)
    spawner.by_model["a"][0].finish(3)
    with pytest.raises(GatewayError) as info:
        await asyncio.wait_for(task, 5)
    assert info.value.status == 503
    assert "failed to load" in info.value.message and "exit" in info.value.message.lower()
    await sup.shutdown()


async def test_explicit_start_evicts_only_when_asked(tmp_path: Path) -> None:
    gw, sup, _, clock = setup(tmp_path, "abc")
    await use(gw, clock, "a")
    await use(gw, clock, "b")
    with pytest.raises(Exception, match="cannot start"):
        await gw.scheduler.start_for_api("c", evict=False)
    status = await gw.scheduler.start_for_api("c", evict=True)
    assert status.state is State.STARTING
    assert sup.status("a").state is State.STOPPED and unloads(sup, "a") == {"evicted": 1}
    assert loads(sup, "c") == {"api": 1}
    await sup.shutdown()


async def test_load_triggers_are_counted(tmp_path: Path) -> None:
    _, sup, spawner, _ = setup(tmp_path, "ab", cap=2)
    await sup.start("a")
    await sup.wait_settled("a")
    spawner.by_model["a"][0].finish(1)  # a crash: the supervisor restarts it
    await until(sup, "a", lambda s: s.restarts == 1 and s.state is State.READY)
    assert loads(sup, "a") == {"api": 1, "restart": 1}
    await sup.shutdown()


async def test_a_request_for_a_model_picked_for_idle_unload_is_not_given_it(
    tmp_path: Path,
) -> None:
    """idle_check picks a; a request comes in before the unload's first step has run."""
    gw, sup, spawner, clock = setup(tmp_path, "ab", idle_ttl=10, stop_drain=1)
    await use(gw, clock, "a")
    clock.now += 20
    assert gw.scheduler.idle_check() == ["a"]
    async with asyncio.timeout(10):
        lease = await gw.scheduler.acquire("a")  # inline: no loop step since idle_check
    # Not the instance being unloaded (its stop would drain, then cut this request off):
    # the request waited for the unload and loaded a afresh.
    assert lease.status.pid == spawner.by_model["a"][1].pid
    assert sup.status("a").state is State.READY
    assert unloads(sup, "a") == {"idle": 1} and loads(sup, "a") == {"request": 2}
    assert gw.metrics.cut_off.values == {}
    lease.release()
    await sup.shutdown()


async def test_a_request_for_a_model_picked_for_eviction_is_not_given_it(
    tmp_path: Path,
) -> None:
    """The queue's pump picks a to evict; a request for a comes in before a's stop began."""
    gw, sup, _, clock = setup(tmp_path, "ab", cap=1, stop_drain=1)
    held = await gw.scheduler.acquire("a")
    waiting_b = asyncio.create_task(gw.scheduler.acquire("b"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    waiting_b.add_done_callback(lambda t: t.result().release())  # b's request ends at once
    clock.now += 1
    held.release()  # a is free: the pump picks it to make room for b
    async with asyncio.timeout(10):
        lease = await gw.scheduler.acquire("a")  # inline: before a's stop began
    await async_wait_until(waiting_b.done)
    assert sup.status("a").state is State.READY and lease.status.pid == sup.status("a").pid
    assert gw.metrics.cut_off.values == {}
    assert unloads(sup, "a") == {"evicted": 1} and loads(sup, "a") == {"request": 2}
    lease.release()
    await sup.shutdown()


async def test_shutdown_answers_queued_requests_at_once(tmp_path: Path) -> None:
    """A queued request must not wait out queue_timeout (nor hold up the server's exit)."""
    gw, sup, _, _ = setup(tmp_path, "abc", stop_drain=0.05)
    held = [await gw.scheduler.acquire("a"), await gw.scheduler.acquire("b")]
    waiting = asyncio.create_task(gw.scheduler.acquire("c"))
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    await sup.shutdown()
    with pytest.raises(ShuttingDown):
        await asyncio.wait_for(waiting, 5)
    assert gw.scheduler.queue_length == 0
    with pytest.raises(ShuttingDown):  # and one that comes in afterwards is not queued
        await asyncio.wait_for(gw.scheduler.acquire("c"), 5)
    for lease in held:
        lease.release()


async def test_a_request_restarting_a_crashed_model_is_not_evicted_for_the_queue(
    tmp_path: Path,
) -> None:
    """x crashed (BACKOFF keeps its place); b queues; a request for x restarts it at once.

    Its load must not count as abandoned while the request that started it is on its way.
    """
    gw, sup, spawner, _ = setup(
        tmp_path, "abx", restart=RestartPolicy(backoff_initial=60, backoff_max=60)
    )
    held = await gw.scheduler.acquire("a")
    (await gw.scheduler.acquire("x")).release()
    spawner.by_model["x"][0].finish(1)
    await until(sup, "x", lambda s: s.state is State.BACKOFF)
    waiting_b = asyncio.create_task(gw.scheduler.acquire("b"))  # a busy, x in BACKOFF
    await async_wait_until(lambda: gw.scheduler.queue_length == 1)
    lease = await asyncio.wait_for(gw.scheduler.acquire("x"), 10)
    assert sup.status("x").state is State.READY and unloads(sup, "x") == {}
    assert loads(sup, "x") == {"request": 2} and not waiting_b.done()
    waiting_b.cancel()
    for done in (held, lease):
        done.release()
    await sup.shutdown()
