"""Config reload in process (POST /api/v1/llama/reload), with fake llama-server children:
only changed models restart, bad files change nothing, refused keys apply nothing."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from waiting import async_wait_until

from llama_exporter.config.loader import load_config
from llama_exporter.http.app import create_app
from llama_exporter.testing.gguf_writer import write_minimal_gguf

API = "/api/v1/llama"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]
FAKE_ARGS = ["--fake-tokens-per-second", "50"]


def base_config(tmp_path: Path, fake_bin: Path, names: list[str], **top: Any) -> dict[str, Any]:
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    entries = []
    for name in names:
        path = models / f"{name}.gguf"
        if not path.exists():
            write_minimal_gguf(path)
        entries.append(
            {"name": name, "path": str(path), "ctx_size": 1024, "parallel": 2, "args": FAKE_ARGS}
        )
    first = 21000 + (os.getpid() % 200) * 40
    return {
        "llama_server": str(fake_bin),
        "state_dir": str(tmp_path / "state"),
        "ports": {"first": first, "last": first + 39},
        "max_parallel": 4,
        "ready_timeout": 20,
        "host_label": "box-1",
        "poll": {"interval": 0.2, "idle_interval": 0},
        "models": entries,
        **top,
    }


def write(path: Path, data: dict[str, Any]) -> None:
    write_text(path, yaml.safe_dump(data))


def write_text(path: Path, text: str) -> None:
    path.write_text(text)


def model_entry(data: dict[str, Any], name: str) -> dict[str, Any]:
    entry: dict[str, Any] = next(m for m in data["models"] if m["name"] == name)
    return entry


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return tmp_path / "config.yaml"


async def start_all(client: Client, names: list[str]) -> dict[str, int]:
    for name in names:
        resp = await client.post(f"{API}/models/{name}/start?wait=true")
        assert resp.status == 200, await resp.text()
    return await pids(client)


async def pids(client: Client) -> dict[str, int]:
    body = await (await client.get(f"{API}/status")).json()
    return {m["model"]: m["pid"] for m in body["models"] if m["state"] == "ready"}


async def metric(client: Client, name: str, labels: dict[str, str] | None = None) -> float:
    text = await (await client.get("/metrics")).text()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                return float(s.value)
    raise AssertionError(f"{name} {labels} not in /metrics")


async def app_client(aiohttp_client: MakeClient, config_file: Path) -> Client:
    return await aiohttp_client(create_app(load_config(config_file)))


async def test_one_model_changed_restarts_only_it(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    names = ["a", "b", "c"]
    data = base_config(tmp_path, fake_server_bin, names)
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    before = await start_all(client, names)
    model_entry(data, "b")["ctx_size"] = 2048
    write(config_file, data)
    resp = await client.post(f"{API}/reload")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["restarted"] == ["b"] and body["added"] == body["removed"] == []

    async def b_restarted() -> bool:
        now = await pids(client)
        return "b" in now and now["b"] != before["b"]

    await async_wait_until(b_restarted, "b running again with a new pid")
    after = await pids(client)
    assert after["a"] == before["a"] and after["c"] == before["c"]
    models = {m["name"]: m for m in (await (await client.get(f"{API}/models")).json())["models"]}
    assert models["b"]["ctx_size"] == 2048
    assert await metric(client, "llama_exporter_config_last_reload_successful") == 1
    total = "llama_exporter_config_reloads_total"
    assert await metric(client, total, {"result": "success"}) == 1
    assert await metric(client, "llama_exporter_model_loads_total", {"model": "b"}) >= 0
    status = await (await client.get(f"{API}/status")).json()
    assert {m["model"]: m["restarts"] for m in status["models"]} == {"a": 0, "b": 0, "c": 0}


@pytest.mark.parametrize(
    "breakage",
    ["yaml", "unknown_key", "missing_gguf", "listen_port"],
)
async def test_a_bad_file_changes_nothing(
    aiohttp_client: MakeClient,
    tmp_path: Path,
    fake_server_bin: Path,
    config_file: Path,
    breakage: str,
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a"])
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    before = await start_all(client, ["a"])
    model_entry(data, "a")["ctx_size"] = 2048  # a change that would restart it
    expect_key = ""
    if breakage == "yaml":
        write_text(config_file, yaml.safe_dump(data) + "\nmodels: [\n")
    elif breakage == "unknown_key":
        data["max_paralel"] = 3
        write(config_file, data)
        expect_key = "max_paralel"
    elif breakage == "missing_gguf":
        model_entry(data, "a")["path"] = str(tmp_path / "nowhere.gguf")
        write(config_file, data)
        expect_key = "models[0].path"
    else:
        data["listen"] = {"port": 1}
        write(config_file, data)
        expect_key = "listen.port"
    resp = await client.post(f"{API}/reload")
    body = await resp.json()
    assert resp.status == 400, body
    error = body["error"]
    assert error["file"] == str(config_file)
    assert expect_key in (error["key"] or "")
    assert error["fix"]
    assert str(config_file) in error["message"]
    if breakage == "listen_port":
        assert "service restart" in error["message"]
    assert await pids(client) == before
    assert await metric(client, "llama_exporter_config_last_reload_successful") == 0
    total = "llama_exporter_config_reloads_total"
    assert await metric(client, total, {"result": "failure"}) == 1
    models = (await (await client.get(f"{API}/models")).json())["models"]
    assert models[0]["ctx_size"] == 1024  # the running config stayed
    status = (await (await client.get(f"{API}/status")).json())["models"]
    assert status[0]["restarts"] == 0


async def test_added_removed_and_live_settings(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a", "b"])
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    before = await start_all(client, ["a", "b"])
    added = base_config(tmp_path, fake_server_bin, ["c"])["models"][0]
    added["autostart"] = True
    data["models"] = [model_entry(data, "a"), added]
    model_entry(data, "a")["pinned"] = True
    data["max_parallel"] = 6
    data["gateway"] = {"max_queue": 3}
    write(config_file, data)
    resp = await client.post(f"{API}/reload")
    body = await resp.json()
    assert resp.status == 200, body
    assert body["added"] == ["c"] and body["removed"] == ["b"]
    assert body["changed_live"] == ["a"] and body["restarted"] == []
    assert sorted(body["settings_live"]) == ["gateway.max_queue", "max_parallel"]

    async def settled() -> bool:
        names = {m["name"] for m in (await (await client.get(f"{API}/models")).json())["models"]}
        status = (await (await client.get(f"{API}/status")).json())["models"]
        now = await pids(client)
        return names == {"a", "c"} == {m["model"] for m in status} and set(now) == {"a", "c"}

    await async_wait_until(settled, "b removed and c started")
    assert (await pids(client))["a"] == before["a"]
    status = await (await client.get(f"{API}/status")).json()
    assert status["cap"] == 6
    assert next(m for m in status["models"] if m["model"] == "a")["pinned"] is True
    summary = await (await client.get(f"{API}/gateway")).json()
    assert summary["max_queue"] == 3
    text = await (await client.get("/metrics")).text()
    assert 'model="b"' not in text  # forgotten: no series left


async def test_token_added_live(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a"])
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    assert (await client.get(f"{API}/status")).status == 200
    data["api_token"] = "s3cret"
    data["targets"] = {"labels": {"dc": "west"}}
    data["host_label"] = "box-2"
    write(config_file, data)
    assert (await client.post(f"{API}/reload")).status == 200
    assert (await client.get(f"{API}/status")).status == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert (await client.get(f"{API}/status", headers=auth)).status == 200
    text = await (await client.get("/metrics", headers=auth)).text()
    assert 'host="box-2"' in text and 'host="box-1"' not in text
    self_file = tmp_path / "state" / "targets" / "llama-exporter.json"

    def rewritten() -> bool:
        text = self_file.read_text() if self_file.exists() else ""
        return '"dc": "west"' in text and "box-2" in text

    await async_wait_until(rewritten, "the self target rewritten with the new labels")


async def test_requests_during_a_restart_wait_for_the_new_instance(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a"])
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    before = (await start_all(client, ["a"]))["a"]
    body = {
        "model": "a",
        "max_tokens": 40,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    streamed = await client.post("/v1/chat/completions", json=body)
    assert streamed.status == 200
    first = await streamed.content.readline()  # in flight: it has begun
    assert first
    model_entry(data, "a")["ctx_size"] = 2048
    write(config_file, data)
    assert (await client.post(f"{API}/reload")).status == 200
    await async_wait_until(lambda: _state(client, "a", "stopping"), "a draining for the restart")
    late = asyncio.ensure_future(
        client.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 4})
    )
    rest = await streamed.read()
    assert b"[DONE]" in rest  # the request in flight finished on the old instance
    answer = await late
    assert answer.status == 200, await answer.text()
    now = await pids(client)
    assert now["a"] != before
    text = await (await client.get("/metrics")).text()
    assert 'code="5' not in text.split("gateway_requests_total")[1].split("# HELP")[0]


async def _state(client: Client, model: str, state: str) -> bool:
    status = await (await client.get(f"{API}/status")).json()
    return any(m["model"] == model and m["state"] == state for m in status["models"])


async def test_api_models_stay_unless_the_file_now_defines_them(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a"])
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    extra = base_config(tmp_path, fake_server_bin, ["x"])["models"][0]
    body = {k: extra[k] for k in ("name", "path", "ctx_size", "parallel")}  # API: no --fake-*
    resp = await client.post(f"{API}/models", json=body)
    assert resp.status == 201, await resp.text()
    before = await start_all(client, ["x"])
    data["max_parallel"] = 5  # a reload that does not mention x
    write(config_file, data)
    reloaded = await (await client.post(f"{API}/reload")).json()
    assert "x" not in reloaded["removed"] + reloaded["restarted"] + reloaded["changed_live"]
    assert (await pids(client))["x"] == before["x"]
    models = {m["name"]: m for m in (await (await client.get(f"{API}/models")).json())["models"]}
    assert models["x"]["source"] == "api"

    data["models"].append({**extra, "ctx_size": 2048})  # now the file defines x, differently
    write(config_file, data)
    reloaded = await (await client.post(f"{API}/reload")).json()
    assert reloaded["restarted"] == ["x"], reloaded

    async def x_from_the_file() -> bool:
        ms = {m["name"]: m for m in (await (await client.get(f"{API}/models")).json())["models"]}
        now = await pids(client)
        return ms["x"]["source"] == "config" and now.get("x") not in (None, before["x"])

    await async_wait_until(x_from_the_file, "x defined by the file, restarted")


async def test_cap_lowered_stops_nothing_and_raised_lets_the_queue_go(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path, config_file: Path
) -> None:
    data = base_config(tmp_path, fake_server_bin, ["a", "b", "c"], max_parallel=2)
    data["gateway"] = {"when_full": "queue"}
    write(config_file, data)
    client = await app_client(aiohttp_client, config_file)
    before = await start_all(client, ["a", "b"])
    data["max_parallel"] = 1
    write(config_file, data)
    assert (await client.post(f"{API}/reload")).status == 200
    assert await pids(client) == before  # lowering the cap stopped nothing
    chat = {"model": "c", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    queued = asyncio.ensure_future(client.post("/v1/chat/completions", json=chat))

    async def in_queue() -> bool:
        return bool((await (await client.get(f"{API}/gateway")).json())["queue_length"] == 1)

    await async_wait_until(in_queue, "c's request queued for the cap")
    data["max_parallel"] = 3
    write(config_file, data)
    assert (await client.post(f"{API}/reload")).status == 200
    answer = await asyncio.wait_for(queued, 60)
    assert answer.status == 200, await answer.text()
    assert set(await pids(client)) == {"a", "b", "c"}
