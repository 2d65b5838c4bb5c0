"""Tests for the idle read rate: pollrate's pure choice, and the poller switching rates."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st
from test_poller import complete, config, ready
from waiting import async_wait_until

from llama_exporter.monitoring import procstat
from llama_exporter.monitoring.derive import ModelDeriver, ModelSnapshot, parse_slots
from llama_exporter.monitoring.poller import Poller
from llama_exporter.monitoring.pollrate import WAKE_CPU_SECONDS, is_idle, read_now
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.testing.fake_llama_app import create_app
from llama_exporter.testing.fake_llama_engine import FakeOptions

MakeServer = Callable[..., Awaitable[TestServer]]

# --- pure ------------------------------------------------------------------------------------


def test_is_idle() -> None:
    deriver = ModelDeriver("m")
    idle_slot = [{"id": 0, "n_ctx": 64, "is_processing": False}]
    busy_slot = [{"id": 0, "n_ctx": 64, "is_processing": True, "id_task": 1}]
    done = {"llamacpp:tokens_predicted_total": 5.0}
    assert not is_idle(deriver.update({}, parse_slots(busy_slot), 0.0))
    assert not is_idle(deriver.update(done, parse_slots(idle_slot), 1.0))  # 5 new tokens
    assert is_idle(deriver.update(done, parse_slots(idle_slot), 2.0))
    waiting = {**done, "llamacpp:requests_deferred": 1.0}
    assert not is_idle(deriver.update(waiting, parse_slots(idle_slot), 3.0))


def choice(**overrides: Any) -> bool:
    """read_now of an idle instance read 1 s ago, quiet CPU, 1 s ticks, 5 s idle interval."""
    values: dict[str, Any] = {
        "idle": True,
        "since_read": 1.0,
        "interval": 1.0,
        "idle_interval": 5.0,
        "cpu_used": 0.0,
        "in_flight": 0,
    }
    values.update(overrides)
    return read_now(**values)


def test_read_now_cases() -> None:
    assert not choice()
    assert choice(idle=False)  # busy: every tick
    assert choice(since_read=5.0)  # the idle interval has passed
    assert choice(since_read=4.6)  # within half a tick of it: this tick, not the next
    assert choice(cpu_used=WAKE_CPU_SECONDS)  # work arrived
    assert not choice(cpu_used=WAKE_CPU_SECONDS / 2)  # answering our reads
    assert choice(cpu_used=None)  # unknown CPU: do not guess
    assert choice(in_flight=1)  # the gateway has a request running there
    assert choice(idle_interval=0.0) and choice(idle_interval=1.0)  # the idle rate is off


@given(
    since=st.floats(0, 100),
    later=st.floats(0, 100),
    idle_interval=st.floats(0, 60),
    cpu=st.one_of(st.none(), st.floats(0, 1)),
)
def test_read_now_properties(
    since: float, later: float, idle_interval: float, cpu: float | None
) -> None:
    idle = choice(since_read=since, idle_interval=idle_interval, cpu_used=cpu)
    assert choice(idle=False, since_read=since, idle_interval=idle_interval, cpu_used=cpu)
    if idle:  # reading is never undone by waiting longer
        assert choice(since_read=since + later, idle_interval=idle_interval, cpu_used=cpu)
    if since >= idle_interval:  # an idle instance is read at least every idle_interval
        assert idle


# --- the poller ------------------------------------------------------------------------------


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


class Lab:
    """A fake llama-server counting reads, and a poller whose process CPU we set."""

    def __init__(self) -> None:
        self.hits: dict[str, int] = {}
        self.cpu = 1.0  # what the poller reads as the instance's CPU seconds
        self.idle_ticks = 0  # CPU samples of an idle instance: one per idle tick
        self.in_flight = 0
        self.seen: list[ModelSnapshot] = []

    def app(self) -> web.Application:
        """The fake, with a middleware counting requests per path."""

        @web.middleware
        async def count(request: web.Request, handler: Any) -> web.StreamResponse:
            self.hits[request.path] = self.hits.get(request.path, 0) + 1
            response: web.StreamResponse = await handler(request)
            return response

        app = create_app(FakeOptions(metrics=True, parallel=2, tokens_per_second=200.0))
        app.middlewares.append(count)
        return app

    def poller(self, monkeypatch: pytest.MonkeyPatch) -> tuple[MetricsStore, Poller]:
        """Ticks every 20 ms; idle instances read only when woken (idle interval 1 h)."""

        real = Poller._cpu_seconds

        def cpu_seconds(poller: Poller, pid: int | None) -> float | None:
            self.idle_ticks += 1
            return real(poller, pid)

        monkeypatch.setattr(Poller, "_cpu_seconds", cpu_seconds)
        monkeypatch.setattr(procstat, "sample", lambda _: (self.cpu, 1_000_000, None))
        store = MetricsStore()
        store.subscribe(self.seen.append)
        poller = Poller(
            config(interval=0.02, idle_interval=3600.0), store, in_flight=lambda _: self.in_flight
        )
        return store, poller

    def reads(self) -> int:
        """Full reads so far (each starts with /metrics)."""
        return self.hits.get("/metrics", 0)

    async def idle_ticks_pass(self, count: int) -> None:
        """Wait until the poller has ticked count more times on an idle instance."""
        target = self.idle_ticks + count
        await async_wait_until(lambda: self.idle_ticks >= target)


async def test_idle_instance_is_read_only_when_woken(
    aiohttp_server: MakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab()
    server = await aiohttp_server(lab.app())
    _, poller = lab.poller(monkeypatch)
    poller.on_status(ready("m", server.port))
    try:
        await lab.idle_ticks_pass(1)  # one read found it idle
        reads = lab.reads()
        await lab.idle_ticks_pass(10)
        assert lab.reads() == reads  # ten ticks, no HTTP
        lab.cpu += WAKE_CPU_SECONDS  # the process worked: read at the next tick
        await async_wait_until(lambda: lab.reads() == reads + 1)
        await lab.idle_ticks_pass(5)
        assert lab.reads() == reads + 1  # idle again (nothing happened)
        lab.in_flight = 1  # the gateway sent it a request
        await async_wait_until(lambda: lab.reads() >= reads + 3)
    finally:
        await poller.close()


async def test_busy_again_means_every_tick_and_tokens_stay_exact(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    lab = Lab()
    server = await aiohttp_server(lab.app())
    store, poller = lab.poller(monkeypatch)
    poller.on_status(ready("m", server.port))
    try:
        await lab.idle_ticks_pass(1)
        # A request that starts and ends unseen (no CPU moved): counted at the next read.
        quiet = await complete(session, server, 3)
        lab.cpu += WAKE_CPU_SECONDS
        await async_wait_until(lambda: store.token_totals()["m"][0] == 3)
        assert quiet["timings"]["predicted_n"] == 3
        # A long one: woken once, then read every tick while it runs.
        running = asyncio.create_task(complete(session, server, 200))  # 1 s at 200 tokens/s
        await async_wait_until(lambda: lab.hits.get("/completion", 0) == 2)
        lab.cpu += WAKE_CPU_SECONDS
        await async_wait_until(lambda: any(s.slots_busy for s in lab.seen))
        ticks = lab.idle_ticks
        await async_wait_until(lambda: sum(1 for s in lab.seen if s.slots_busy) >= 5)
        assert lab.idle_ticks == ticks  # busy: no CPU sampling in place of reads
        answer = await running
        total = 3 + answer["timings"]["predicted_n"]
        await async_wait_until(lambda: store.token_totals()["m"][0] == total)
        await lab.idle_ticks_pass(3)  # and idle again
    finally:
        await poller.close()
