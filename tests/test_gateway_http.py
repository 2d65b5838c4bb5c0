"""The gateway over HTTP, in process, with fake llama-server child processes.

Routing, errors in OpenAI's format, on-demand loads, streaming, disconnects, upstream
death, the queue's 429/503, idle unload with the poller running, and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from test_api import make_config
from waiting import async_wait_until

from llama_exporter.config.settings import Config, GatewayConfig, ModelConfig
from llama_exporter.http.app import create_app
from llama_exporter.testing.gguf_writer import write_minimal_gguf

API = "/api/v1/llama"
CHAT = "/v1/chat/completions"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def gw_config(
    tmp_path: Path,
    fake_server_bin: Path,
    *,
    models: int = 3,
    cap: int = 4,
    model_args: dict[int, tuple[str, ...]] | None = None,
    model_fields: dict[int, dict[str, Any]] | None = None,
    **gateway: Any,
) -> Config:
    base = make_config(tmp_path, fake_server_bin, models=models, cap=cap)
    entries: list[ModelConfig] = []
    for i, m in enumerate(base.models):
        changes: dict[str, Any] = dict((model_fields or {}).get(i, {}))
        if model_args and i in model_args:
            changes["args"] = m.args + model_args[i]
        entries.append(dataclasses.replace(m, **changes))
    return dataclasses.replace(base, models=tuple(entries), gateway=GatewayConfig(**gateway))


async def sample(client: Client, name: str, **labels: str) -> float:
    """One sample's value from the service's /metrics (0 when absent)."""
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
    return 0.0


async def status_of(client: Client, model: str) -> dict[str, Any]:
    body = await (await client.get(f"{API}/status")).json()
    entry: dict[str, Any] = next(m for m in body["models"] if m["model"] == model)
    return entry


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi there"}], **extra}


async def test_cold_requests_load_on_demand_and_are_counted(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, model_args={1: ("--embeddings",)})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post(CHAT, json=chat("m0", max_tokens=4))
    body = await resp.json()
    assert resp.status == 200, body
    assert body["choices"][0]["message"]["content"]
    resp = await client.post(
        "/v1/completions", json={"model": "m0", "prompt": "a b", "max_tokens": 3}
    )
    assert resp.status == 200 and (await resp.json())["choices"][0]["text"]
    resp = await client.post("/v1/embeddings", json={"model": "m1", "input": "hello"})
    assert resp.status == 200 and (await resp.json())["data"][0]["embedding"]
    assert (
        await sample(
            client, "llama_exporter_gateway_requests_total", model="m0", endpoint=CHAT, code="200"
        )
        == 1
    )
    assert (
        await sample(client, "llama_exporter_model_loads_total", model="m0", trigger="request") == 1
    )
    assert await sample(client, "llama_exporter_gateway_completion_tokens_count", model="m0") == 2
    st = await status_of(client, "m0")
    assert st["state"] == "ready" and st["in_flight"] == 0 and st["last_used"] is not None
    assert st["pinned"] is False and st["idle_ttl"] == 0
    models = await (await client.get("/v1/models")).json()
    assert models["object"] == "list"
    assert {(m["id"], m["state"]) for m in models["data"]} == {
        ("m0", "ready"),
        ("m1", "ready"),
        ("m2", "stopped"),
    }


async def test_twenty_concurrent_requests_for_a_cold_model_spawn_one_process(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, model_args={0: ("--fake-load-delay", "0.5")})
    client = await aiohttp_client(create_app(cfg))

    async def one() -> int:
        resp = await client.post(CHAT, json=chat("m0", max_tokens=2))
        await resp.read()
        return resp.status

    assert await asyncio.gather(*(one() for _ in range(20))) == [200] * 20
    assert (
        await sample(client, "llama_exporter_model_loads_total", model="m0", trigger="request") == 1
    )
    assert (
        await sample(client, "llama_exporter_instance_start_duration_seconds_count", model="m0")
        == 1
    )
    assert await sample(client, "llama_exporter_gateway_load_wait_seconds_count", model="m0") == 20


@pytest.mark.parametrize(
    ("body", "status", "code", "fragment"),
    [
        (b'{"model": "nope", "messages": []}', 404, "model_not_found", "m0, m1, m2"),
        (b'{"messages": []}', 400, "missing_model", "'model'"),
        (b'{"model": 7}', 400, "missing_model", "string"),
        (b"not json", 400, "invalid_json", "not JSON"),
        (b"[1, 2]", 400, "invalid_json", "object"),
        (b'{"model": "m0", "pad": "' + b"x" * 2000 + b'"}', 413, "request_too_large", "2"),
    ],
)
async def test_bad_requests_get_openai_errors(
    aiohttp_client: MakeClient,
    tmp_path: Path,
    fake_server_bin: Path,
    body: bytes,
    status: int,
    code: str,
    fragment: str,
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, max_body_bytes=1000)
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post(CHAT, data=body, headers={"Content-Type": "application/json"})
    error = (await resp.json())["error"]
    assert resp.status == status
    assert set(error) == {"message", "type", "code"}
    assert error["code"] == code and fragment in error["message"]
    st = await status_of(client, "m0")
    assert st["state"] == "stopped"  # nothing loaded for a bad request


async def test_llama_server_4xx_passes_through_unchanged(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin)))
    resp = await client.post(CHAT, json={"model": "m0", "messages": "not a list"})
    assert resp.status == 400
    assert await resp.json() == {
        "error": {
            "code": 400,
            "message": '"messages" must be a list',
            "type": "invalid_request_error",
        }
    }
    assert (
        await sample(
            client, "llama_exporter_gateway_requests_total", model="m0", endpoint=CHAT, code="400"
        )
        == 1
    )


async def test_streaming_is_forwarded_event_by_event_and_timed(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, model_args={0: ("--fake-tokens-per-second", "40")})
    client = await aiohttp_client(create_app(cfg))
    body = chat("m0", max_tokens=6, stream=True, stream_options={"include_usage": True})
    resp = await client.post(CHAT, json=body)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["X-Accel-Buffering"] == "no"
    chunks = []
    async for chunk in resp.content.iter_any():
        chunks.append(chunk)
    events = [e for e in b"".join(chunks).split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    assert len(chunks) > 1  # not buffered into one body
    texts = [json.loads(e[5:])["choices"] for e in events[:-1]]
    assert texts[0][0]["delta"]["content"] is None
    assert (
        await sample(client, "llama_exporter_gateway_time_to_first_token_seconds_count", model="m0")
        == 1
    )
    assert await sample(client, "llama_exporter_gateway_inter_token_seconds_count", model="m0") == 5
    assert await sample(client, "llama_exporter_gateway_completion_tokens_sum", model="m0") == 6
    summary = await (await client.get(f"{API}/gateway")).json()
    assert summary["when_full"] == "evict" and summary["max_queue"] == 64
    m0 = summary["models"]["m0"]
    assert m0["requests_last_minute"] == 1 and m0["ttft_p50_seconds"] > 0
    assert m0["in_flight"] == 0 and m0["queued"] == 0


async def _slots_busy(client: Client, model: str) -> bool:
    slots = await (await client.get(f"/upstream/{model}/slots")).json()
    return any(s["is_processing"] for s in slots)


@pytest.mark.parametrize("cancellation", [True, False], ids=["as-served", "handler-runs-on"])
async def test_client_disconnect_mid_stream_frees_the_slot(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, cancellation: bool
) -> None:
    """As `llama-exporter serve` runs it (the handler is cancelled when its client leaves),
    and with the handler left running (its next write fails instead)."""
    cfg = gw_config(tmp_path, fake_server_bin, model_args={0: ("--fake-tokens-per-second", "20")})
    server_kwargs = {"handler_cancellation": cancellation}
    client = await aiohttp_client(create_app(cfg), server_kwargs=server_kwargs)
    resp = await client.post(CHAT, json=chat("m0", max_tokens=400, stream=True))
    seen = b""
    while b'"content": "' not in seen:
        seen += await resp.content.readany()
    summary = await (await client.get(f"{API}/gateway")).json()
    assert summary["models"]["m0"]["requests_last_minute"] == 1  # counted while running
    assert await _slots_busy(client, "m0")
    resp.close()  # the client goes away mid-stream

    async def slot_free() -> bool:
        return not await _slots_busy(client, "m0")

    await async_wait_until(slot_free)

    async def counted() -> bool:
        return (
            await sample(
                client,
                "llama_exporter_gateway_requests_total",
                model="m0",
                endpoint=CHAT,
                code="499",
            )
            == 1
        )

    await async_wait_until(counted)
    assert (await status_of(client, "m0"))["in_flight"] == 0
    # What the abandoned stream showed before the client left is still observed.
    ttft = "llama_exporter_gateway_time_to_first_token_seconds_count"
    assert await sample(client, ttft, model="m0") == 1


async def test_upstream_death_mid_stream_ends_with_an_error_event(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    args = ("--fake-tokens-per-second", "20", "--fake-crash-after", "1.0")
    cfg = gw_config(tmp_path, fake_server_bin, model_args={0: args})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post(CHAT, json=chat("m0", max_tokens=400, stream=True))
    assert resp.status == 200
    data = await resp.read()
    last = [e for e in data.split(b"\n\n") if e][-1]
    assert json.loads(last[5:])["error"]["code"] == "upstream_error"
    assert b"[DONE]" not in data
    assert (
        await sample(
            client, "llama_exporter_gateway_requests_total", model="m0", endpoint=CHAT, code="502"
        )
        == 1
    )


async def test_idle_model_is_unloaded_and_the_poller_is_no_use(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, model_fields={0: {"idle_ttl": 1.5}})
    client = await aiohttp_client(create_app(cfg))
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    used = (await status_of(client, "m0"))["last_used"]
    polls: set[float] = set()

    async def stopped() -> bool:
        # Status reads, metrics reads and the 5 Hz poller all go on meanwhile.
        st = await status_of(client, "m0")
        if st["state"] == "ready":
            # Gathered, not replaced: the unload may begin between the two reads and
            # take the history with it.
            history = (await (await client.get(f"{API}/models/m0/metrics")).json())["history"]
            polls.update(h["timestamp"] for h in history)
            assert st["last_used"] == used
        return bool(st["state"] == "stopped")

    await async_wait_until(stopped)
    assert len([t for t in polls if t > used]) >= 3  # polled after its last use, still unloaded
    assert (
        await sample(client, "llama_exporter_model_unloads_total", model="m0", reason="idle") == 1
    )


async def test_api_registered_models_are_pinned_and_unloaded_when_idle_as_registered(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, cap=2)))
    for name, settings in (("pin", {"pinned": True}), ("idle", {"idle_ttl": 1.0})):
        path = write_minimal_gguf(tmp_path / f"{name}.gguf")
        resp = await client.post(
            f"{API}/models", json={"name": name, "path": str(path), **settings}
        )
        assert resp.status == 201, await resp.text()
    for model in ("pin", "m0", "m1"):  # pin is the least recently used when m1 needs room
        assert (await client.post(CHAT, json=chat(model, max_tokens=1))).status == 200
    assert [(await status_of(client, m))["state"] for m in ("pin", "m0", "m1")] == [
        "ready",
        "stopped",
        "ready",
    ]
    assert await sample(client, "llama_exporter_model_unloads_total", model="pin") == 0

    assert (await client.post(CHAT, json=chat("idle", max_tokens=1))).status == 200

    async def idle_stopped() -> bool:
        return bool((await status_of(client, "idle"))["state"] == "stopped")

    await async_wait_until(idle_stopped)
    assert (
        await sample(client, "llama_exporter_model_unloads_total", model="idle", reason="idle") == 1
    )
    assert (await status_of(client, "pin"))["state"] == "ready"


async def test_queue_full_429_and_queue_timeout_503(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    slow = ("--fake-tokens-per-second", "10")
    cfg = gw_config(
        tmp_path,
        fake_server_bin,
        cap=1,
        model_args={0: slow},
        max_queue=1,
        queue_timeout=1.0,
    )
    client = await aiohttp_client(create_app(cfg))
    busy = await client.post(CHAT, json=chat("m0", max_tokens=100, stream=True))
    assert busy.status == 200
    queued = asyncio.create_task(client.post(CHAT, json=chat("m1", max_tokens=1)))

    async def one_queued() -> bool:
        return bool((await (await client.get(f"{API}/gateway")).json())["queue_length"] == 1)

    await async_wait_until(one_queued)
    full = await client.post(CHAT, json=chat("m2", max_tokens=1))
    assert full.status == 429 and full.headers["Retry-After"]
    assert (await full.json())["error"]["code"] == "queue_full"
    timed_out = await queued
    assert timed_out.status == 503 and timed_out.headers["Retry-After"]
    assert (await timed_out.json())["error"]["code"] == "queue_timeout"
    busy.close()
    for model, reason in (("m2", "queue_full"), ("m1", "timeout")):
        value = await sample(
            client, "llama_exporter_gateway_rejected_total", model=model, reason=reason
        )
        assert value == 1


async def test_upstream_passthrough_and_the_models_api_key(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, model_fields={0: {"api_key": "secret-k"}})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post("/upstream/m0/completion", json={"prompt": "a b c", "n_predict": 2})
    body = await resp.json()
    assert resp.status == 200, body  # the fake demands the key: the gateway sent it
    assert body["tokens_predicted"] == 2
    assert (await client.get("/upstream/m0/props")).status == 200
    resp = await client.get("/upstream/nope/props")
    assert resp.status == 404 and "m0" in (await resp.json())["error"]["message"]
    assert (
        await sample(
            client,
            "llama_exporter_gateway_requests_total",
            model="m0",
            endpoint="/upstream",
            code="200",
        )
        == 2
    )


async def test_load_failure_answers_503_with_the_reason(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    args = ("--fake-load-delay", "0.2", "--fake-signal-on-load", "SIGILL")
    cfg = gw_config(tmp_path, fake_server_bin, model_args={0: args})
    client = await aiohttp_client(create_app(cfg))
    resp = await client.post(CHAT, json=chat("m0"))
    error = (await resp.json())["error"]
    assert resp.status == 503 and error["code"] == "model_load_failed"
    assert "SIGILL" in error["message"]


async def test_start_keeps_its_429_unless_asked_to_evict(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, cap=1)))
    assert (await client.post(f"{API}/models/m0/start?wait=true")).status == 200
    assert (await client.post(f"{API}/models/m1/start")).status == 429
    resp = await client.post(f"{API}/models/m1/start?wait=true&evict=true")
    assert resp.status == 200, await resp.text()
    assert (await status_of(client, "m0"))["state"] == "stopped"
    assert (
        await sample(client, "llama_exporter_model_unloads_total", model="m0", reason="evicted")
        == 1
    )
    assert await sample(client, "llama_exporter_model_loads_total", model="m1", trigger="api") == 1


async def test_gateway_requires_the_api_token_and_does_not_forward_it(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = dataclasses.replace(
        gw_config(tmp_path, fake_server_bin, model_fields={0: {"api_key": "model-key"}}),
        api_token="service-token",
    )
    client = await aiohttp_client(create_app(cfg))
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 401
    resp = await client.post(
        CHAT,
        json=chat("m0", max_tokens=1),
        headers={"Authorization": "Bearer service-token"},
    )
    assert resp.status == 200  # the fake accepted the model's own key, not ours


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def raw_upstream(handle: Handler) -> AsyncIterator[Callable[[], Awaitable[Any]]]:
    """A hand-written HTTP upstream; yields a function that forwards one POST to it."""
    from aiohttp.test_utils import make_mocked_request

    from llama_exporter.gateway import proxy
    from llama_exporter.gateway.sse import StreamWatch

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/x"
    session = proxy.new_session()
    request = make_mocked_request("POST", CHAT, headers={"Content-Type": "application/json"})

    async def send() -> Any:
        clock = asyncio.get_running_loop().time
        _, outcome = await proxy.forward(
            request, session, url, b"{}", None, StreamWatch(0.0), clock
        )
        return outcome

    try:
        yield send
    finally:
        await session.close()
        server.close()
        await server.wait_closed()


async def test_upstream_that_closes_kept_alive_connections_is_retried_once() -> None:
    """Like cpp-httplib after its keep-alive timeout: answer, then close without saying so."""
    served = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            writer.close()
            return
        length = next(
            (int(line.split(b":")[1]) for line in head.split(b"\r\n")
             if line.lower().startswith(b"content-length")),
            0,
        )  # fmt: skip
        await reader.readexactly(length)
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 2\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async with raw_upstream(handle) as send:
        for _ in range(5):
            assert (await send()).code == 200
    assert served == 5


async def test_a_post_the_server_read_on_a_new_connection_is_not_sent_again() -> None:
    """The server reads the request and drops the connection without an answer: it may
    have acted on it (a generation), so a POST must not go to it a second time."""
    from llama_exporter.gateway import proxy

    received = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal received
        with contextlib.suppress(asyncio.IncompleteReadError):
            await reader.readuntil(b"\r\n\r\n")
            received += 1
        writer.close()

    async with raw_upstream(handle) as send:
        with pytest.raises(proxy.UpstreamUnreachable):
            await send()
    assert received == 1


async def test_a_model_deleted_while_its_request_queues_gets_404_and_evicts_nothing(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    """The queue must go on: the request that frees the place is counted, the deleted
    model's request gets OpenAI's 404, and nothing is evicted for a model that is gone."""
    cfg = gw_config(
        tmp_path,
        fake_server_bin,
        models=1,
        cap=1,
        model_args={0: ("--fake-tokens-per-second", "20")},
    )
    client = await aiohttp_client(create_app(cfg))
    path = write_minimal_gguf(tmp_path / "extra.gguf")
    resp = await client.post(f"{API}/models", json={"name": "extra", "path": str(path)})
    assert resp.status == 201, await resp.text()
    busy = await client.post(CHAT, json=chat("m0", max_tokens=400, stream=True))
    assert busy.status == 200  # m0 holds the only place
    queued = asyncio.create_task(client.post(CHAT, json=chat("extra", max_tokens=1)))

    async def in_queue() -> bool:
        return bool((await (await client.get(f"{API}/gateway")).json())["queue_length"] == 1)

    await async_wait_until(in_queue)
    assert (await client.delete(f"{API}/models/extra")).status == 200
    busy.close()  # m0 is free: the queue's head is a model that is gone
    resp = await asyncio.wait_for(queued, 20)
    body = await resp.json()
    assert resp.status == 404 and body["error"]["code"] == "model_not_found", body
    requests = "llama_exporter_gateway_requests_total"
    assert await sample(client, requests, model="extra", endpoint=CHAT, code="404") == 1
    assert await sample(client, requests, model="extra", endpoint=CHAT, code="500") == 0
    assert (await status_of(client, "m0"))["state"] == "ready"  # not evicted for nothing

    async def busy_counted() -> bool:
        return await sample(client, requests, model="m0", endpoint=CHAT, code="499") == 1

    await async_wait_until(busy_counted)
