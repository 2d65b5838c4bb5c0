"""WebSocketHub: publishing never blocks; a client that falls behind is closed, not waited for."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.test_utils import TestClient
from waiting import async_wait_until

from llama_exporter.http.ws import STATUS_EVENT, Event, WebSocketHub, make_event

Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def hub_app(hub: WebSocketHub) -> web.Application:
    """An app serving the hub at /ws with two known models."""

    def initial(model: str | None) -> Iterable[Event]:
        for name in ("a", "b"):
            if model in (None, name):
                yield make_event(STATUS_EVENT, name, {"state": "stopped"})

    async def handler(request: web.Request) -> web.WebSocketResponse:
        return await hub.handle(request, initial, lambda name: name in ("a", "b"))

    app = web.Application()
    app.router.add_get("/ws", handler)
    return app


async def test_publish_without_clients_is_a_no_op() -> None:
    hub = WebSocketHub()
    hub.publish(make_event(STATUS_EVENT, "a", {}))
    assert hub.client_count == 0


async def test_filtered_clients_get_only_their_model(aiohttp_client: MakeClient) -> None:
    hub = WebSocketHub()
    client = await aiohttp_client(hub_app(hub))
    ws_a = await client.ws_connect("/ws", params={"model": "a"})
    ws_all = await client.ws_connect("/ws")
    assert (await ws_a.receive_json(timeout=5))["model"] == "a"
    assert {(await ws_all.receive_json(timeout=5))["model"] for _ in range(2)} == {"a", "b"}
    await async_wait_until(lambda: hub.client_count == 2)
    hub.publish(make_event(STATUS_EVENT, "b", {"state": "ready"}))
    hub.publish(make_event(STATUS_EVENT, "a", {"state": "ready"}))
    got_a = await ws_a.receive_json(timeout=5)
    assert (got_a["model"], got_a["data"]["state"]) == ("a", "ready")
    got_all = [await ws_all.receive_json(timeout=5) for _ in range(2)]
    assert [m["model"] for m in got_all] == ["b", "a"]
    await ws_a.close()
    await ws_all.close()


async def test_clients_that_fall_behind_are_closed_and_can_reconnect(
    aiohttp_client: MakeClient,
) -> None:
    hub = WebSocketHub(queue_size=4)
    client = await aiohttp_client(hub_app(hub))
    fast = await client.ws_connect("/ws", params={"model": "a"})
    slow = await client.ws_connect("/ws", params={"model": "a"})
    for ws in (fast, slow):
        await ws.receive_json(timeout=5)
    await async_wait_until(lambda: hub.client_count == 2)
    # Publish a burst faster than any sender task can drain (no await in between):
    # both queues overflow, both clients are closed with "try again later".
    for i in range(10):
        hub.publish(make_event(STATUS_EVENT, "a", {"i": i}))
    assert hub.dropped_clients == 2
    msg = await slow.receive(timeout=5)
    while msg.type.name == "TEXT":
        msg = await slow.receive(timeout=5)
    assert slow.close_code == WSCloseCode.TRY_AGAIN_LATER
    # A client that reconnects is sent the current state at once and then live events.
    again = await client.ws_connect("/ws", params={"model": "a"})
    first: dict[str, Any] = json.loads((await again.receive(timeout=5)).data)
    assert first["data"] == {"state": "stopped"}
    await async_wait_until(
        lambda: hub.client_count == 1 and not any(c.dropped for c in hub._clients)
    )
    hub.publish(make_event(STATUS_EVENT, "a", {"state": "ready"}))
    assert (await again.receive_json(timeout=5))["data"] == {"state": "ready"}
    await again.close()
    await fast.close()


async def test_close_sends_going_away(aiohttp_client: MakeClient) -> None:
    hub = WebSocketHub()
    client = await aiohttp_client(hub_app(hub))
    ws = await client.ws_connect("/ws", params={"model": "b"})
    await ws.receive_json(timeout=5)
    await async_wait_until(lambda: hub.client_count == 1)
    await hub.close()
    msg = await ws.receive(timeout=5)
    assert msg.type.name in ("CLOSE", "CLOSING", "CLOSED")
    assert ws.close_code == WSCloseCode.GOING_AWAY


async def test_clients_past_the_cap_are_refused_with_a_reason(aiohttp_client: MakeClient) -> None:
    hub = WebSocketHub(max_clients=2)
    client = await aiohttp_client(hub_app(hub))
    first = await client.ws_connect("/ws", params={"model": "a"})
    second = await client.ws_connect("/ws", params={"model": "a"})
    for ws in (first, second):
        await ws.receive_json(timeout=5)
    third = await client.ws_connect("/ws", params={"model": "a"})
    msg = await third.receive(timeout=5)
    assert msg.type is WSMsgType.CLOSE
    assert third.close_code == WSCloseCode.TRY_AGAIN_LATER
    assert "too many clients (2" in (msg.extra or "")
    assert hub.refused_clients == 1 and hub.client_count == 2
    await first.close()
    await async_wait_until(lambda: hub.client_count == 1)
    again = await client.ws_connect("/ws", params={"model": "a"})  # room again
    assert (await again.receive_json(timeout=5))["model"] == "a"
    await again.close()
    await second.close()


async def test_concurrent_handshakes_cannot_pass_the_cap(aiohttp_client: MakeClient) -> None:
    hub = WebSocketHub(max_clients=3)
    client = await aiohttp_client(hub_app(hub))
    sockets = await asyncio.gather(
        *(client.ws_connect("/ws", params={"model": "a"}) for _ in range(10))
    )
    kinds = [(await ws.receive(timeout=5)).type for ws in sockets]
    assert kinds.count(WSMsgType.TEXT) == 3 and kinds.count(WSMsgType.CLOSE) == 7
    assert hub.client_count == 3 and hub.refused_clients == 7
    for ws in sockets:
        await ws.close()


async def test_close_is_concurrent_and_does_not_wait_for_clients_that_never_answer(
    aiohttp_client: MakeClient,
) -> None:
    hub = WebSocketHub(close_timeout=0.5)
    client = await aiohttp_client(hub_app(hub))
    # autoclose=False: these clients never answer our close frame, like hung peers.
    silent = [
        await client.ws_connect("/ws", params={"model": "a"}, autoclose=False) for _ in range(6)
    ]
    for ws in silent:
        await ws.receive_json(timeout=5)
    await async_wait_until(lambda: hub.client_count == 6)
    in_flight = peak = 0

    def counted(close: Callable[..., Awaitable[bool]]) -> Callable[..., Awaitable[bool]]:
        async def wrapper(**kw: Any) -> bool:
            nonlocal in_flight, peak
            in_flight += 1
            peak = max(peak, in_flight)
            try:
                return await close(**kw)
            finally:
                in_flight -= 1

        return wrapper

    for c in hub._clients:
        c.ws.close = counted(c.ws.close)  # type: ignore[method-assign,assignment]
    await hub.close()  # returns although no client ever answers: the timeout ended it
    assert peak == 6  # all six closes were under way at once, not one after another
    for ws in silent:
        msg = await ws.receive(timeout=5)
        assert msg.type is WSMsgType.CLOSE and msg.data == WSCloseCode.GOING_AWAY
        await ws.close()
