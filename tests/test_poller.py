"""Tests for monitoring.poller: the store (pure) and the poller against the fake server."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from waiting import async_wait_until

from llama_exporter.config.settings import Config, PollConfig
from llama_exporter.monitoring.derive import ModelDeriver, ModelSnapshot
from llama_exporter.monitoring.poller import Poller, host_cpu_ratio
from llama_exporter.monitoring.store import MetricsStore
from llama_exporter.states import InstanceStatus, State
from llama_exporter.testing.fake_llama_app import create_app
from llama_exporter.testing.fake_llama_engine import FakeOptions

MakeServer = Callable[..., Awaitable[TestServer]]


def snapshot(model: str, now: float) -> ModelSnapshot:
    """A snapshot with no slots."""
    return ModelDeriver(model).update({}, [], now)


def ready(model: str, port: int | None, *, api_key: str | None = None) -> InstanceStatus:
    """A READY status for a server on 127.0.0.1:port (our own pid, for psutil)."""
    assert port is not None
    return InstanceStatus(
        model=model, state=State.READY, since=0.0, pid=os.getpid(), port=port, api_key=api_key
    )


def config(
    interval: float = 0.1, timeout: float = 0.5, history: int = 120, idle_interval: float = 0.0
) -> Config:
    """A config with a fast poll (idle instances too, unless idle_interval is given)."""
    poll = PollConfig(
        interval=interval, timeout=timeout, history=history, idle_interval=idle_interval
    )
    return Config(source=None, poll=poll)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session closed after the test."""
    async with aiohttp.ClientSession() as client:
        yield client


def free_port() -> int:
    """A port nothing listens on (bound then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- MetricsStore (no event loop) --------------------------------------------------------


def test_store_history_is_capped_and_drop_keeps_token_totals() -> None:
    store = MetricsStore(history=3)
    generated, _ = store.token_counters("m")
    generated.update(42)
    for t in range(5):
        store.publish(snapshot("m", float(t)))
    assert [s.timestamp for s in store.history("m")] == [2.0, 3.0, 4.0]
    assert store.latest("m") is not None
    store.record_poll("m", 0.01, 4.0)
    store.drop("m")
    assert store.latest("m") is None
    assert store.history("m") == []
    assert store.last_poll("m") is None
    assert store.token_totals() == {"m": (42.0, 0.0)}
    assert store.token_counters("m")[0] is generated


def test_store_forget_removes_everything_about_a_model() -> None:
    store = MetricsStore()
    for model in ("m", "other"):
        store.token_counters(model)[0].update(7)
        store.publish(snapshot(model, 1.0))
        store.record_poll(model, 0.01, 1.0)
        store.record_error(model, "slots", "timeout")
        store.set_props(model, {"n_ctx": 8})
    store.forget("m")
    store.forget("never-known")  # no error
    assert store.latest("m") is None
    assert store.history("m") == []
    assert store.last_poll("m") is None
    assert store.props("m") is None
    assert store.live_models() == ["other"]
    assert store.token_totals() == {"other": (7.0, 0.0)}
    assert store.poll_errors() == {("other", "slots", "timeout"): 1}
    assert store.token_counters("m")[0].total == 0.0  # a new model of that name starts at 0


def test_store_subscribers_and_errors() -> None:
    store = MetricsStore()
    seen: list[str] = []

    def broken(_: ModelSnapshot) -> None:
        raise RuntimeError("boom")

    store.subscribe(broken)
    unsubscribe = store.subscribe(lambda s: seen.append(s.model))
    store.publish(snapshot("a", 1.0))  # the broken subscriber is logged, not raised
    unsubscribe()
    unsubscribe()
    store.publish(snapshot("b", 2.0))
    assert seen == ["a"]
    store.record_error("a", "slots", "timeout")
    store.record_error("a", "slots", "timeout")
    assert store.poll_errors() == {("a", "slots", "timeout"): 2}


def test_host_cpu_ratio() -> None:
    assert host_cpu_ratio(None, (5.0, 10.0)) == 0.0
    assert host_cpu_ratio((5.0, 10.0), (6.0, 14.0)) == 0.25


# --- Poller against the fake llama-server ------------------------------------------------


async def complete(
    session: aiohttp.ClientSession, server: TestServer, n_predict: int
) -> dict[str, Any]:
    """POST /completion and return the JSON answer."""
    url = f"http://127.0.0.1:{server.port}/completion"
    async with session.post(url, json={"prompt": "a b c d", "n_predict": n_predict}) as resp:
        body: dict[str, Any] = await resp.json()
        return body


async def test_busy_slots_and_exact_tokens(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    options = FakeOptions(metrics=True, parallel=2, ctx_size=4096, tokens_per_second=100.0)
    server = await aiohttp_server(create_app(options))
    store = MetricsStore()
    seen: list[ModelSnapshot] = []
    store.subscribe(seen.append)
    poller = Poller(config(interval=0.1), store)
    poller.on_status(ready("m", server.port))
    try:
        running = [asyncio.create_task(complete(session, server, 150)) for _ in range(2)]
        await async_wait_until(lambda: (s := store.latest("m")) is not None and s.slots_busy == 2)
        live = store.latest("m")
        assert live is not None and live.slots_total == 2
        assert live.context_size_tokens == 4096
        answers = await asyncio.gather(*running)
        # short requests, most of them shorter than the poll interval
        answers += [await complete(session, server, n) for n in (1, 2, 3)]
        expected = sum(a["timings"]["predicted_n"] for a in answers)
        await async_wait_until(lambda: store.token_totals()["m"][0] == expected)
        polls = len(seen)
        await async_wait_until(lambda: len(seen) >= polls + 3)  # three more polls...
        assert store.token_totals()["m"][0] == expected  # ...and it stays there
        latest = store.latest("m")
        assert latest is not None and latest.slots_busy == 0
        assert latest.rss_bytes is not None and latest.rss_bytes > 0
        assert store.props("m") is not None
        # live per-slot rate while both generate: time-weighted mean against the fake's 100/s
        both = [snap for snap in seen if snap.slots_busy == 2][1:]
        decoded = sum(
            slot.tokens_per_second * snap.interval_seconds for snap in both for slot in snap.slots
        )
        elapsed = sum(snap.interval_seconds for snap in both)
        assert both and elapsed > 0
        assert 0.7 < decoded / elapsed / 2 / 100.0 < 1.3, (decoded, elapsed)
        assert store.last_poll("m") is not None
        await async_wait_until(lambda: store.host is not None)
    finally:
        await poller.close()


async def test_short_request_between_slow_polls_is_counted(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    options = FakeOptions(metrics=True, parallel=1, tokens_per_second=500.0)
    server = await aiohttp_server(create_app(options))
    store = MetricsStore()
    poller = Poller(config(interval=0.5), store)
    poller.on_status(ready("m", server.port))
    try:
        await async_wait_until(lambda: store.latest("m") is not None)
        answer = await complete(session, server, 5)  # 10 ms: between two polls
        await async_wait_until(
            lambda: store.token_totals()["m"][0] == answer["timings"]["predicted_n"]
        )
    finally:
        await poller.close()


async def test_stop_drops_live_values_and_keeps_total(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(create_app(FakeOptions(metrics=True, tokens_per_second=500.0)))
    store = MetricsStore()
    poller = Poller(config(), store)
    status = ready("m", server.port)
    poller.on_status(status)
    try:
        await complete(session, server, 7)
        await async_wait_until(lambda: store.token_totals().get("m", (0.0, 0.0))[0] == 7)
        task = poller._watches["m"].task
        poller.on_status(InstanceStatus("m", State.STOPPING, since=1.0, pid=status.pid))
        assert poller.polling() == []
        assert store.latest("m") is None
        await asyncio.gather(task, return_exceptions=True)  # its loop has ended...
        assert task.cancelled()
        assert store.latest("m") is None  # ...and published nothing more
        # a new process of the same model (fresh counters) adds to the kept total
        server2 = await aiohttp_server(create_app(FakeOptions(metrics=True)))
        poller.on_status(ready("m", server2.port))
        await complete(session, server2, 3)
        await async_wait_until(lambda: store.token_totals()["m"][0] == 10)
    finally:
        await poller.close()


async def test_api_key_is_sent(aiohttp_server: MakeServer, session: aiohttp.ClientSession) -> None:
    server = await aiohttp_server(create_app(FakeOptions(metrics=True, api_key="k")))
    store = MetricsStore()
    poller = Poller(config(), store)
    poller.on_status(ready("m", server.port, api_key="k"))
    try:
        await async_wait_until(lambda: store.latest("m") is not None)
        assert store.poll_errors() == {}
    finally:
        await poller.close()


def failing_app(status: int = 500, delay: float = 0.0) -> web.Application:
    """An app whose /metrics, /slots and /props answer status after delay seconds."""

    async def handler(_: web.Request) -> web.Response:
        await asyncio.sleep(delay)
        return web.json_response({"error": "x"}, status=status)

    app = web.Application()
    for path in ("/metrics", "/slots", "/props"):
        app.router.add_get(path, handler)
    return app


async def test_errors_are_counted_by_reason(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    broken = await aiohttp_server(failing_app(500))
    slow = await aiohttp_server(failing_app(200, delay=5.0))
    garbage = await aiohttp_server(failing_app(200))  # JSON where Prometheus text is expected
    store = MetricsStore()
    poller = Poller(config(interval=0.1, timeout=0.2), store)
    poller.on_status(ready("broken", broken.port))
    poller.on_status(ready("slow", slow.port))
    poller.on_status(ready("garbage", garbage.port))
    poller.on_status(ready("dead", free_port()))
    try:

        def counted(model: str, endpoint: str, reason: str) -> bool:
            return store.poll_errors().get((model, endpoint, reason), 0) >= 2

        await async_wait_until(lambda: counted("broken", "metrics", "http_500"))
        await async_wait_until(lambda: counted("broken", "slots", "http_500"))
        await async_wait_until(lambda: counted("broken", "props", "http_500"))
        await async_wait_until(lambda: counted("slow", "metrics", "timeout"))
        await async_wait_until(lambda: counted("dead", "metrics", "connect"))
        await async_wait_until(lambda: counted("garbage", "metrics", "parse"))
        await async_wait_until(lambda: counted("garbage", "slots", "parse"))
        assert store.latest("broken") is None
    finally:
        await poller.close()


async def test_dead_instance_does_not_delay_others(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    asked: list[str] = []
    never = asyncio.Event()  # the hung instance answers nothing while the test runs

    async def hang(request: web.Request) -> web.Response:
        asked.append(request.path)
        await never.wait()
        return web.json_response({})

    app = web.Application()
    for path in ("/metrics", "/slots", "/props"):
        app.router.add_get(path, hang)
    hung = await aiohttp_server(app)
    healthy = await aiohttp_server(create_app(FakeOptions(metrics=True)))
    store = MetricsStore()
    polls: list[str] = []
    store.subscribe(lambda s: polls.append(s.model))
    # The poll timeout outlasts the test's own limit: the hung read never ends in it.
    poller = Poller(config(interval=0.05, timeout=600.0), store)
    poller.on_status(ready("hung", hung.port))
    poller.on_status(ready("healthy", healthy.port))
    try:
        await async_wait_until(lambda: asked, "the hung instance to be asked")
        before = polls.count("healthy")
        # Five polls of the healthy one while the hung one's first read is unanswered.
        await async_wait_until(lambda: polls.count("healthy") >= before + 5)
        assert "hung" not in polls and store.poll_errors() == {}
    finally:
        await poller.close()


async def test_history_is_capped(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    server = await aiohttp_server(create_app(FakeOptions(metrics=True)))
    store = MetricsStore(history=3)
    count = 0

    def seen(_: ModelSnapshot) -> None:
        nonlocal count
        count += 1

    store.subscribe(seen)
    poller = Poller(config(interval=0.05, history=3), store)
    poller.on_status(ready("m", server.port))
    try:
        await async_wait_until(lambda: count >= 5)
        assert len(store.history("m")) == 3
    finally:
        await poller.close()


async def test_own_session_and_close_are_clean(aiohttp_server: MakeServer) -> None:
    server = await aiohttp_server(create_app(FakeOptions(metrics=True)))
    store = MetricsStore()
    poller = Poller(config(), store)
    poller.on_status(ready("m", server.port))
    await async_wait_until(lambda: store.latest("m") is not None)
    await poller.close()
    assert store.latest("m") is None
    poller.on_status(ready("m", server.port))  # ignored after close
    assert poller.polling() == []


async def test_idle_instance_skips_slots_but_sees_work_at_once(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    hits: dict[str, int] = {}

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        hits[request.path] = hits.get(request.path, 0) + 1
        response: web.StreamResponse = await handler(request)
        return response

    app = create_app(FakeOptions(metrics=True, parallel=2, tokens_per_second=100.0))
    app.middlewares.append(count)
    server = await aiohttp_server(app)
    store = MetricsStore()
    seen: list[ModelSnapshot] = []
    store.subscribe(seen.append)
    poller = Poller(config(interval=0.05), store)
    poller.on_status(ready("m", server.port))
    try:
        await async_wait_until(lambda: hits.get("/metrics", 0) >= 10)
        # idle: /slots was read once, then /metrics said nothing is processing
        assert hits.get("/slots", 0) <= 2
        idle = store.latest("m")
        assert idle is not None and idle.slots_total == 2 and idle.context_size_tokens > 0
        answer = await complete(session, server, 40)
        assert any(snap.slots_busy == 1 for snap in seen)  # /slots read again while busy
        await async_wait_until(
            lambda: store.token_totals()["m"][0] == answer["timings"]["predicted_n"]
        )
    finally:
        await poller.close()


async def test_unexpected_error_in_a_tick_is_counted_and_polling_goes_on(
    aiohttp_server: MakeServer,
    session: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await aiohttp_server(create_app(FakeOptions(metrics=True)))
    store = MetricsStore()
    poller = Poller(config(interval=0.05), store)
    poller.on_status(ready("m", server.port))

    def broken(*_: Any, **__: Any) -> ModelSnapshot:
        raise RuntimeError("boom")

    try:
        await async_wait_until(lambda: store.latest("m") is not None)
        monkeypatch.setattr(ModelDeriver, "update", broken)
        await async_wait_until(lambda: store.poll_errors().get(("m", "poll", "internal"), 0) >= 2)
        assert store.latest("m") is None  # no frozen live values
        assert poller.polling() == ["m"]
        monkeypatch.undo()
        await async_wait_until(lambda: store.latest("m") is not None)  # the same task carries on
    finally:
        await poller.close()
    assert "m" in caplog.text and "boom" in caplog.text


async def test_non_finite_metrics_do_not_stop_polling(
    aiohttp_server: MakeServer, session: aiohttp.ClientSession
) -> None:
    text = (
        "llamacpp:tokens_predicted_total 5\n"
        "llamacpp:requests_deferred NaN\n"
        "llamacpp:requests_processing +Inf\n"
    )

    async def handler(request: web.Request) -> web.Response:
        if request.path == "/metrics":
            return web.Response(text=text)
        return web.json_response([{"id": 0, "n_ctx": 8}] if request.path == "/slots" else {})

    app = web.Application()
    for path in ("/metrics", "/slots", "/props"):
        app.router.add_get(path, handler)
    server = await aiohttp_server(app)
    store = MetricsStore()
    seen: list[ModelSnapshot] = []
    store.subscribe(seen.append)
    poller = Poller(config(interval=0.05), store)
    poller.on_status(ready("m", server.port))
    try:
        await async_wait_until(lambda: len(seen) >= 3)
        assert all(s.requests_waiting == 0 for s in seen)
        assert store.poll_errors() == {}
    finally:
        await poller.close()


async def test_host_loop_survives_a_failing_sample(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="llama_exporter.monitoring.poller")
    store = MetricsStore()
    poller = Poller(config(interval=0.02), store)
    real = poller.sample_host
    calls = 0

    def flaky() -> None:
        nonlocal calls
        calls += 1
        if calls <= 3:
            raise RuntimeError(f"bug number {calls}")
        real()

    monkeypatch.setattr(poller, "sample_host", flaky)
    poller.start()
    try:
        await async_wait_until(lambda: store.host is not None)  # the loop went on after the errors
        assert store.host_errors == 3
        assert store.asyncio_tasks is not None and store.asyncio_tasks >= 1
        errors = [r for r in caplog.records if "host sample failed" in r.getMessage()]
        assert [r.levelname for r in errors] == ["ERROR", "DEBUG", "DEBUG"]  # no log flood
    finally:
        await poller.close()


async def test_polls_reuse_one_connection_per_instance(aiohttp_server: MakeServer) -> None:
    peers: set[object] = set()

    @web.middleware
    async def remember(request: web.Request, handler: Any) -> web.StreamResponse:
        assert request.transport is not None
        peers.add(request.transport.get_extra_info("peername"))
        response: web.StreamResponse = await handler(request)
        return response

    app = create_app(FakeOptions(metrics=True))
    app.middlewares.append(remember)
    server = await aiohttp_server(app)
    store = MetricsStore()
    seen: list[ModelSnapshot] = []
    store.subscribe(seen.append)
    poller = Poller(config(interval=0.02), store)
    poller.on_status(ready("m", server.port))
    try:
        await async_wait_until(lambda: len(seen) >= 10)
    finally:
        await poller.close()
    assert len(peers) == 1  # /props, then /metrics (and /slots) ten times: one connection
