"""The fake llama-server: endpoints in process, faults as a child process."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from waiting import async_wait_until, wait_until

from llama_exporter.testing.fake_llama import parse_args
from llama_exporter.testing.fake_llama_app import create_app
from llama_exporter.testing.fake_llama_engine import FakeOptions

Client = TestClient[Any, Any]
MakeClient = Callable[..., Awaitable[Client]]


async def fake(aiohttp_client: MakeClient, **kw: Any) -> Client:
    return await aiohttp_client(create_app(FakeOptions(**kw)))


def metric_values(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = sample.value
    return out


async def poll(
    client: Client, path: str, done: Callable[[Any, Any], bool], limit: float = 60.0
) -> Any:
    """GET path until done(response, body) holds (body: JSON or text); that response."""

    async def answer() -> Any:
        resp = await client.get(path)
        json_body = resp.content_type == "application/json"
        body = await resp.json() if json_body else await resp.text()
        return resp if done(resp, body) else None

    return await async_wait_until(answer, f"GET {path} to be done", limit=limit)


def _decoding(slots: list[dict[str, Any]]) -> bool:
    """True when a slot is generating and has produced a token."""
    return any(s["is_processing"] and s["next_token"][0]["n_decoded"] > 0 for s in slots)


async def until_health_hangs(port: int, limit: float = 60.0) -> None:
    """Wait until /health stops answering (times out) on 127.0.0.1:port."""
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def hangs() -> bool:
            try:
                async with session.get(f"http://127.0.0.1:{port}/health"):
                    return False
            except TimeoutError:
                return True

        await async_wait_until(hangs, "/health to stop answering", limit=limit)


async def test_health_503_while_loading_then_200(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, load_delay=0.3)
    resp = await client.get("/health")
    assert resp.status == 503
    body = await resp.json()
    assert body["error"] == {"code": 503, "message": "Loading model", "type": "unavailable_error"}
    resp = await poll(client, "/health", lambda r, _: r.status == 200)
    assert await resp.json() == {"status": "ok"}


async def test_props_reports_per_slot_context(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, ctx_size=4096, parallel=2, model="/m/x.gguf")
    props = await (await client.get("/props")).json()
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == 2048
    assert props["model_path"] == "/m/x.gguf"
    assert props["is_sleeping"] is False
    assert props["build_info"]


async def test_metrics_501_without_flag_and_slots_501_with_no_slots(
    aiohttp_client: MakeClient,
) -> None:
    client = await fake(aiohttp_client, metrics=False, slots=False)
    assert (await client.get("/metrics")).status == 501
    assert (await client.get("/slots")).status == 501


async def test_api_key_required_everywhere_but_health(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, api_key="K", metrics=True)
    assert (await client.get("/health")).status == 200
    for path in ("/slots", "/metrics", "/props"):
        assert (await client.get(path)).status == 401
        ok = await client.get(path, headers={"Authorization": "Bearer K"})
        assert ok.status == 200, path
    resp = await client.post("/completion", json={"prompt": "x", "n_predict": 1})
    assert resp.status == 401


async def test_idle_slots_carry_only_the_idle_keys(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, ctx_size=2048, parallel=2)
    slots = await (await client.get("/slots")).json()
    assert slots == [
        {"id": 0, "n_ctx": 1024, "speculative": False, "is_processing": False},
        {"id": 1, "n_ctx": 1024, "speculative": False, "is_processing": False},
    ]


async def test_generation_is_live_in_slots_and_counted_in_metrics_at_end(
    aiohttp_client: MakeClient,
) -> None:
    client = await fake(
        aiohttp_client, metrics=True, parallel=2, tokens_per_second=40.0, ctx_size=2048
    )
    request = asyncio.create_task(
        client.post("/completion", json={"prompt": "one two three four", "n_predict": 20})
    )
    resp = await poll(client, "/slots", lambda _, body: _decoding(body))
    busy = [s for s in await resp.json() if s["is_processing"]]
    assert len(busy) == 1
    slot = busy[0]
    token = slot["next_token"]
    assert isinstance(token, list) and len(token) == 1
    decoded = token[0]["n_decoded"]
    assert 0 < decoded < 20
    assert slot["n_prompt_tokens"] == 4 + decoded  # prompt + generated, as upstream
    assert slot["params"]["n_predict"] == 20
    assert {"id_task", "n_prompt_tokens_processed", "n_prompt_tokens_cache"} <= slot.keys()
    during = metric_values(await (await client.get("/metrics")).text())
    assert during["llamacpp:tokens_predicted_total"] == 0  # only moves when a request ends
    assert during["llamacpp:prompt_tokens_total"] == 4  # moves once the prompt is processed
    assert during["llamacpp:n_decode_total"] >= 1 + decoded  # moves live
    assert during["llamacpp:requests_processing"] == 1
    resp = await request
    body = await resp.json()
    assert body["timings"]["predicted_n"] == 20
    assert body["timings"]["prompt_n"] == 4
    assert len(body["content"].split()) == 20
    after = metric_values(await (await client.get("/metrics")).text())
    assert after["llamacpp:tokens_predicted_total"] == 20
    assert after["llamacpp:prompt_tokens_total"] == 4
    assert after["llamacpp:requests_processing"] == 0


async def test_metrics_text_has_help_and_type_for_llamacpp_names(
    aiohttp_client: MakeClient,
) -> None:
    client = await fake(aiohttp_client, metrics=True)
    text = await (await client.get("/metrics")).text()
    for name in (
        "prompt_tokens_total",
        "prompt_seconds_total",
        "tokens_predicted_total",
        "tokens_predicted_seconds_total",
        "n_decode_total",
        "n_tokens_max",
        "prompt_tokens_seconds",
        "predicted_tokens_seconds",
        "requests_processing",
        "requests_deferred",
        "n_busy_slots_per_decode",
    ):
        assert f"# HELP llamacpp:{name} " in text
        assert f"# TYPE llamacpp:{name} " in text


async def test_request_without_free_slot_waits_and_is_deferred(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, metrics=True, parallel=1, tokens_per_second=50.0)
    first = asyncio.create_task(client.post("/completion", json={"prompt": "a", "n_predict": 10}))
    await poll(client, "/slots", lambda _, body: any(s["is_processing"] for s in body))
    second = asyncio.create_task(client.post("/completion", json={"prompt": "b", "n_predict": 1}))
    resp = await poll(client, "/metrics", lambda _, text: "llamacpp:requests_deferred 1" in text)
    values = metric_values(await resp.text())
    assert values["llamacpp:requests_deferred"] == 1
    assert not first.done()  # it was deferred behind a running request
    await first
    await second
    values = metric_values(await (await client.get("/metrics")).text())
    assert values["llamacpp:requests_deferred"] == 0
    assert values["llamacpp:tokens_predicted_total"] == 11


async def test_idle_slot_can_keep_the_last_task(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, idle_keeps_task=True, tokens_per_second=1000.0)
    await client.post("/completion", json={"prompt": "a b c", "n_predict": 5})
    slot = (await (await client.get("/slots")).json())[0]
    assert slot["is_processing"] is False
    assert slot["n_prompt_tokens"] == 7 and slot["next_token"][0]["n_decoded"] == 0


async def test_chat_completion_has_openai_shape(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client, tokens_per_second=1000.0)
    messages = [{"role": "user", "content": "hi there"}]
    resp = await client.post("/v1/chat/completions", json={"messages": messages, "max_tokens": 5})
    body = await resp.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    assert body["usage"] == {"completion_tokens": 5, "prompt_tokens": 2, "total_tokens": 7}
    assert body["timings"]["predicted_n"] == 5


async def test_bad_request_bodies_get_400(aiohttp_client: MakeClient) -> None:
    client = await fake(aiohttp_client)
    assert (await client.post("/completion", data=b"not json")).status == 400
    assert (await client.post("/v1/chat/completions", json={"messages": 3})).status == 400


def test_parse_args_accepts_the_real_flags() -> None:
    argv = "-m /x.gguf --host 0.0.0.0 --port 9 --metrics -c 100 -np 4 --api-key K -t 3"
    opts = parse_args([*argv.split(), "--no-slots", "--fake-crash-after", "2"])
    assert opts.model == "/x.gguf" and opts.port == 9 and opts.metrics
    assert opts.ctx_size == 100 and opts.parallel == 4 and opts.api_key == "K"
    assert not opts.slots and opts.crash_after == 2.0


# --- as a child process -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def spawn(binary: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    argv = [str(binary), "--port", str(port), *extra]
    return subprocess.Popen(argv, stderr=subprocess.PIPE), port


def wait_health(port: int, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    def healthy() -> bool:
        assert proc.poll() is None, "fake server exited before it was ready"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    wait_until(healthy, "the fake server to be ready", limit=timeout)


def test_process_exits_0_on_sigterm(fake_server_bin: Path) -> None:
    proc, port = spawn(fake_server_bin)
    try:
        wait_health(port, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
    finally:
        proc.kill()
        proc.wait()


def test_process_crashes_after_ready_with_exit_code(fake_server_bin: Path) -> None:
    proc, port = spawn(fake_server_bin, "--fake-crash-after", "0.1", "--fake-exit-code", "7")
    try:
        wait_health(port, proc)
        assert proc.wait(timeout=60) == 7
    finally:
        proc.kill()
        proc.wait()


def test_process_dies_by_signal_while_loading(fake_server_bin: Path) -> None:
    proc, _ = spawn(fake_server_bin, "--fake-signal-on-load", "SIGILL", "--fake-load-delay", "1")
    try:
        assert proc.wait(timeout=60) == -signal.SIGILL
    finally:
        proc.kill()
        proc.wait()


async def test_process_hang_keeps_process_but_health_times_out(fake_server_bin: Path) -> None:
    proc, port = spawn(fake_server_bin, "--fake-hang-after", "0.1", "--fake-ignore-sigterm")
    try:
        await asyncio.to_thread(wait_health, port, proc)
        await until_health_hangs(port)  # it stops answering 0.1 s after ready
        proc.send_signal(signal.SIGTERM)
        timeout = aiohttp.ClientTimeout(total=0.3)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            with pytest.raises(asyncio.TimeoutError):
                await session.get(f"http://127.0.0.1:{port}/health")
        assert proc.poll() is None
    finally:
        proc.kill()
        assert proc.wait(timeout=60) == -signal.SIGKILL
