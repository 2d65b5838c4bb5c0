"""What the gateway answers, against fake llama-server children: embeddings on a model
that does not serve them (400 at once, nothing loaded), and the `model` field of
answers (the name asked for, from --alias, not the GGUF path).

The same behaviours on the real llama-server: tests/test_gateway_real.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_gateway_http import CHAT, MakeClient, chat, gw_config, sample, status_of

from llama_exporter.config.settings import ModelConfig, find_managed_flag, serves_embeddings
from llama_exporter.http.app import create_app
from llama_exporter.supervision.command import build_argv


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        ((), {}, False),
        (("--embeddings",), {}, True),
        (("--threads", "1", "--embedding", "--pooling", "mean"), {}, True),
        (("--pooling", "mean"), {}, False),  # pooling alone does not turn them on
        ((), {"LLAMA_ARG_EMBEDDINGS": "1"}, True),
        ((), {"LLAMA_ARG_EMBEDDINGS": "true"}, True),
        ((), {"LLAMA_ARG_EMBEDDINGS": "0"}, False),
        ((), {"LLAMA_ARG_EMBEDDINGS": "off"}, False),
    ],
)
def test_serves_embeddings(args: tuple[str, ...], env: dict[str, str], expected: bool) -> None:
    assert serves_embeddings(args, env) is expected


@given(st.lists(st.sampled_from(["-t", "2", "--pooling", "mean", "--jinja", "-c"])))
def test_serves_embeddings_needs_the_flag(args: list[str]) -> None:
    assert serves_embeddings(args, {}) is False
    assert serves_embeddings([*args, "--embeddings"], {}) is True


def test_the_alias_is_the_model_name_and_set_by_the_service() -> None:
    model = ModelConfig("chat-1", Path("/m/x.gguf"), args=("-t", "2"))
    argv = build_argv("/bin/llama-server", model, "127.0.0.1", 1)
    assert argv[argv.index("--alias") + 1] == "chat-1"
    assert argv[-2:] == ["-t", "2"]
    assert find_managed_flag(["-t", "2", "--alias", "x"]) == (
        2,
        "--alias",
        "name (the service passes --alias <name>)",
    )
    assert find_managed_flag(["-a", "x"]) is not None


async def test_embeddings_on_a_chat_model_answer_400_without_a_load(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    # Cap 1 and m0 running: a load for m1 would evict m0, and must not happen.
    cfg = gw_config(
        tmp_path, fake_server_bin, cap=1, when_full="evict", model_args={2: ("--embeddings",)}
    )
    client = await aiohttp_client(create_app(cfg))
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    resp = await client.post("/v1/embeddings", json={"model": "m1", "input": "hello"})
    body = await resp.json()
    assert resp.status == 400, body
    error = body["error"]
    assert error["code"] == "embeddings_not_enabled"
    assert error["type"] == "invalid_request_error"
    assert "'m1'" in error["message"] and "--embeddings" in error["message"]
    assert "--pooling mean" in error["message"]
    assert (await status_of(client, "m1"))["state"] == "stopped"
    assert (await status_of(client, "m0"))["state"] == "ready"
    loads = "llama_exporter_model_loads_total"
    assert await sample(client, loads, model="m1", trigger="request") == 0
    assert await sample(client, "llama_exporter_model_unloads_total", model="m0") == 0
    counted = await sample(
        client,
        "llama_exporter_gateway_requests_total",
        model="m1",
        endpoint="/v1/embeddings",
        code="400",
    )
    assert counted == 1
    # A model that serves them is routed as before (m0 evicted for it: cap 1).
    resp = await client.post("/v1/embeddings", json={"model": "m2", "input": "hello"})
    assert resp.status == 200, await resp.text()
    assert (await resp.json())["model"] == "m2"


async def test_answers_carry_the_model_name_not_the_path(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin)))
    whole = await (await client.post(CHAT, json=chat("m1", max_tokens=2))).json()
    assert whole["model"] == "m1"
    resp = await client.post(CHAT, json=chat("m1", max_tokens=3, stream=True))
    events = [
        json.loads(line.removeprefix("data: "))
        for line in (await resp.text()).splitlines()
        if line.startswith("data: {")
    ]
    assert len(events) >= 3 and {e["model"] for e in events} == {"m1"}
    text = await client.post(
        "/v1/completions", json={"model": "m1", "prompt": "a", "max_tokens": 2}
    )
    assert (await text.json())["model"] == "m1"
    props = await (await client.get("/upstream/m1/props")).json()
    assert props["model_alias"] == "m1" and props["model_path"].endswith(".gguf")
