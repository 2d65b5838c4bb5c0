"""The HTTP API in process, with fake llama-server child processes."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families
from waiting import async_wait_until

from llama_exporter.config.settings import (
    Config,
    ModelConfig,
    PollConfig,
    PortRange,
    RestartPolicy,
    TargetsConfig,
)
from llama_exporter.http.app import create_app
from llama_exporter.testing.gguf_writer import write_minimal_gguf

API = "/api/v1/llama"
Client = TestClient[web.Request, web.Application]
MakeClient = Callable[..., Awaitable[Client]]


def _port_range(worker_offset: int = 0) -> PortRange:
    base = 20000 + (os.getpid() % 200) * 50 + worker_offset
    return PortRange(base, base + 49)


def make_config(
    tmp_path: Path,
    fake_server_bin: Path,
    *,
    models: int = 2,
    cap: int = 4,
    token: str | None = None,
    args: tuple[str, ...] = ("--fake-tokens-per-second", "200"),
) -> Config:
    """A config with `models` fake models named m0.. on the fake llama-server."""
    model_dir = tmp_path / "models"
    model_dir.mkdir(exist_ok=True)
    entries = []
    for i in range(models):
        path = write_minimal_gguf(model_dir / f"m{i}.gguf")
        entries.append(ModelConfig(name=f"m{i}", path=path, ctx_size=1024, parallel=2, args=args))
    return Config(
        source=None,
        max_parallel=cap,
        llama_server=fake_server_bin,
        ports=_port_range(),
        ready_timeout=20,
        stop_grace=3,
        hang_timeout=5,
        restart=RestartPolicy(max_retries=2, backoff_initial=0.2, backoff_max=1),
        models=tuple(entries),
        state_dir=tmp_path / "state",
        poll=PollConfig(interval=0.2, timeout=0.5, history=10, idle_interval=0.0),
        api_token=token,
        host_label="box-1",
    )


@pytest.fixture
async def client(aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path) -> Client:
    """A test client on an app with two fake models and cap 4."""
    return await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin)))


async def _json(resp: Any) -> Any:
    return await resp.json()


async def _wait_state(client: Client, model: str, state: str) -> dict[str, Any]:
    """The model's status entry, once it is in state."""

    async def entry() -> dict[str, Any] | None:
        body = await _json(await client.get(f"{API}/status"))
        found: dict[str, Any] = next(m for m in body["models"] if m["model"] == model)
        return found if found["state"] == state else None

    return await async_wait_until(entry, f"{model} to be {state}")


async def test_healthz_and_metrics(client: Client) -> None:
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/metrics")
    text = await resp.text()
    assert resp.status == 200
    assert 'llama_exporter_instance_state{host="box-1",model="m0",state="stopped"} 1.0' in text
    assert 'llama_exporter_instances_max{host="box-1"} 4.0' in text


async def test_every_exported_series_carries_the_host_label(client: Client) -> None:
    resp = await client.post(f"{API}/models/m0/start", params={"wait": "true"})
    assert resp.status == 200, await resp.text()
    await _wait_metrics_of(client, "m0")
    text = await (await client.get("/metrics")).text()
    samples = [s for f in text_string_to_metric_families(text) for s in f.samples]
    names = {s.name for s in samples}
    # Ours (cached text), the start histogram and the gateway's collector alike.
    assert {"llama_exporter_slots", "llama_exporter_gateway_queue_length"} <= names
    assert "llama_exporter_instance_start_duration_seconds_count" in names
    assert [s for s in samples if s.labels.get("host") != "box-1"] == []


async def test_models_list_shows_metadata(client: Client) -> None:
    resp = await client.get(f"{API}/models")
    body = await _json(resp)
    assert [m["name"] for m in body["models"]] == ["m0", "m1"]
    m0 = body["models"][0]
    assert m0["source"] == "config"
    assert m0["state"] == "stopped"

    async def with_metadata() -> dict[str, Any] | None:  # read in the background at start-up
        first: dict[str, Any] = (await _json(await client.get(f"{API}/models")))["models"][0]
        return first if first["metadata"] is not None else None

    m0 = await async_wait_until(with_metadata, "m0's metadata")
    assert m0["metadata"]["architecture"] == "llama"
    assert m0["metadata"]["quantization"] == "Q4_K_M"


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ({"path": "/x.gguf"}, "name", "required"),
        ({"name": "bad name!", "path": "/x.gguf"}, "name", "use only letters, digits"),
        ({"name": "ok", "path": "/nonexistent/x.gguf"}, "path", "does not exist"),
        ({"name": "ok", "path": "relative.gguf"}, "path", "is not an absolute path"),
        ({"name": "ok", "path": "/etc/hostname"}, "path", "does not end in .gguf"),
        ({"name": 5, "path": "/x.gguf"}, "name", "string"),
        ({"name": "ok", "path": "/x.gguf", "ctx_size": "big"}, "ctx_size", "integer"),
        ({"name": "ok", "path": "/x.gguf", "colour": "red"}, "colour", "unknown field"),
        ({"name": "ok", "path": "/x.gguf", "args": [1]}, "args", "strings"),
        ({"name": "ok", "path": "/x.gguf", "pinned": "yes"}, "pinned", "true or false"),
        ({"name": "ok", "path": "/x.gguf", "idle_ttl": -1}, "idle_ttl", "0 or more seconds"),
        ({"name": "ok", "path": "/x.gguf", "idle_ttl": True}, "idle_ttl", "number of seconds"),
        ({"name": "ok", "path": "/x.gguf", "idle_ttl": float("inf")}, "idle_ttl", "finite"),
        ({"name": "ok", "path": "/x.gguf", "stop_drain": "30"}, "stop_drain", "number of"),
    ],
)
async def test_register_rejects_bad_input(
    client: Client, body: dict[str, Any], field: str, fragment: str
) -> None:
    assert fragment  # "" is in every message: it would check nothing
    resp = await client.post(f"{API}/models", json=body)
    error = (await _json(resp))["error"]
    assert resp.status == 400, error
    assert error["code"] == 400
    assert error["field"] == field
    assert fragment in error["message"]


async def test_register_rejects_non_json_and_non_object(client: Client) -> None:
    resp = await client.post(
        f"{API}/models", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert resp.status == 400
    assert "JSON" in (await _json(resp))["error"]["message"]
    resp = await client.post(f"{API}/models", json=[1, 2])
    assert resp.status == 400


async def test_register_rejects_a_file_that_is_not_gguf(client: Client, tmp_path: Path) -> None:
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a gguf file at all")
    resp = await client.post(f"{API}/models", json={"name": "fake", "path": str(fake)})
    assert resp.status == 400
    assert (await _json(resp))["error"]["field"] == "path"


async def test_register_duplicate_is_409_and_delete_rules(client: Client, tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "extra.gguf")
    resp = await client.post(f"{API}/models", json={"name": "extra", "path": str(path)})
    assert resp.status == 201, await resp.text()
    created = await _json(resp)
    assert created["source"] == "api"
    assert created["metadata"]["architecture"] == "llama"
    resp = await client.post(f"{API}/models", json={"name": "extra", "path": str(path)})
    assert resp.status == 409
    resp = await client.post(f"{API}/models", json={"name": "m0", "path": str(path)})
    assert resp.status == 409
    assert (await client.delete(f"{API}/models/nope")).status == 404
    resp = await client.delete(f"{API}/models/m0")
    assert resp.status == 409
    assert "config" in (await _json(resp))["error"]["message"]
    assert (await client.delete(f"{API}/models/extra")).status == 200
    names = [m["name"] for m in (await _json(await client.get(f"{API}/models")))["models"]]
    assert "extra" not in names
    statuses = (await _json(await client.get(f"{API}/status")))["models"]
    assert "extra" not in [s["model"] for s in statuses]


async def test_registered_model_survives_a_restart(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    config = make_config(tmp_path, fake_server_bin)
    first = await aiohttp_client(create_app(config))
    path = write_minimal_gguf(tmp_path / "kept.gguf")
    assert (
        await first.post(f"{API}/models", json={"name": "kept", "path": str(path)})
    ).status == 201
    await first.close()
    second = await aiohttp_client(create_app(config))
    names = [m["name"] for m in (await _json(await second.get(f"{API}/models")))["models"]]
    assert "kept" in names


async def test_registered_gateway_settings_are_shown_and_kept_across_a_restart(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    config = make_config(tmp_path, fake_server_bin)
    first = await aiohttp_client(create_app(config))
    path = write_minimal_gguf(tmp_path / "pin.gguf")
    body = {"name": "pin", "path": str(path), "pinned": True, "idle_ttl": 90, "stop_drain": 2.5}
    resp = await first.post(f"{API}/models", json=body)
    created = await _json(resp)
    assert resp.status == 201, created
    plain = write_minimal_gguf(tmp_path / "plain.gguf")
    resp = await first.post(f"{API}/models", json={"name": "plain", "path": str(plain)})
    assert resp.status == 201
    await first.close()

    second = await aiohttp_client(create_app(config))
    models = {m["name"]: m for m in (await _json(await second.get(f"{API}/models")))["models"]}
    settings = {k: models["pin"][k] for k in ("pinned", "idle_ttl", "stop_drain")}
    assert settings == {"pinned": True, "idle_ttl": 90.0, "stop_drain": 2.5}
    assert {k: created[k] for k in settings} == settings
    defaults = {k: models["plain"][k] for k in settings}  # config.defaults: ModelDefaults()
    assert defaults == {"pinned": False, "idle_ttl": 0.0, "stop_drain": 30.0}
    status = (await _json(await second.get(f"{API}/status")))["models"]
    pin = next(s for s in status if s["model"] == "pin")
    assert (pin["pinned"], pin["idle_ttl"]) == (True, 90.0)


async def test_unknown_model_is_404_everywhere(client: Client) -> None:
    for method, path in [
        ("POST", "/models/nope/start"),
        ("POST", "/models/nope/stop"),
        ("GET", "/models/nope/logs"),
        ("GET", "/models/nope/metrics"),
        ("DELETE", "/models/nope"),
    ]:
        resp = await client.request(method, API + path)
        assert resp.status == 404, (method, path)
        assert "nope" in (await _json(resp))["error"]["message"]
    assert (await client.get(f"{API}/nothing-here")).status == 404


async def test_start_wait_ready_then_stop(client: Client, tmp_path: Path) -> None:
    resp = await client.post(f"{API}/models/m0/start", params={"wait": "true"})
    body = await _json(resp)
    assert resp.status == 200, body
    assert body["state"] == "ready"
    assert body["pid"] > 0
    # Starting again is idempotent.
    again = await client.post(f"{API}/models/m0/start")
    assert again.status == 200
    assert (await _json(again))["pid"] == body["pid"]
    # HTTP SD and the file_sd file both list it (the file is written off the loop).
    groups = await _json(await client.get(f"{API}/targets"))
    assert groups == [
        {"targets": [f"127.0.0.1:{body['port']}"], "labels": {"host": "box-1", "model": "m0"}}
    ]
    sd_file = tmp_path / "state" / "targets" / "llama-servers.json"
    await _wait_file(sd_file, groups)
    # Logs: the command line the service wrote, then the server's own output.
    lines = await _wait_log_line(client, "m0", "server is listening on")
    assert lines[0].startswith("--- ") and "starting: " in lines[0] and "--metrics" in lines[0]
    assert any("loading model" in line for line in lines)
    last = await _json(await client.get(f"{API}/models/m0/logs", params={"lines": "2"}))
    assert last["lines"] == lines[-2:]
    resp = await client.post(f"{API}/models/m0/stop")
    assert (await _json(resp))["state"] == "stopped"
    assert await _json(await client.get(f"{API}/targets")) == []
    await _wait_file(sd_file, [])
    # The supervisor reaped its child: no process, not even a zombie.
    assert not _proc_exists(body["pid"])


async def _wait_file(path: Path, expected: Any) -> None:
    """Wait until path holds expected as JSON."""

    async def holds() -> bool:
        try:
            return bool(json.loads(await asyncio.to_thread(path.read_text)) == expected)
        except (OSError, ValueError):
            return False

    await async_wait_until(holds, f"{path} to hold {expected}")


async def _wait_log_line(client: Client, model: str, text: str) -> list[str]:
    """The model's last 50 log lines, once one of them contains text."""

    async def lines() -> list[str] | None:
        resp = await client.get(f"{API}/models/{model}/logs", params={"lines": "50"})
        found: list[str] = (await _json(resp))["lines"]
        return found if any(text in line for line in found) else None

    return await async_wait_until(lines, f"a line with {text!r} in {model}'s log")


def _proc_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


@pytest.mark.parametrize("lines", ["abc", "0", "-3", "100000"])
async def test_logs_rejects_bad_line_counts(client: Client, lines: str) -> None:
    resp = await client.get(f"{API}/models/m0/logs", params={"lines": lines})
    assert resp.status == 400
    assert (await _json(resp))["error"]["field"] == "lines"


async def test_cap_answers_429_naming_running_models(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(
        create_app(make_config(tmp_path, fake_server_bin, models=3, cap=2))
    )
    for name in ("m0", "m1"):
        assert (await client.post(f"{API}/models/{name}/start")).status in (200, 202)
    resp = await client.post(f"{API}/models/m2/start")
    body = await _json(resp)
    assert resp.status == 429
    assert resp.headers["Retry-After"].isdigit()
    assert sorted(body["error"]["running"]) == ["m0", "m1"]
    assert body["error"]["cap"] == 2
    metrics = await (await client.get("/metrics")).text()
    assert 'llama_exporter_instance_start_rejected_total{host="box-1",model="m2"} 1.0' in metrics


async def test_fifty_concurrent_starts_never_exceed_the_cap(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(
        create_app(make_config(tmp_path, fake_server_bin, models=8, cap=4))
    )
    requests = [client.post(f"{API}/models/m{i % 8}/start") for i in range(50)]
    responses = await asyncio.gather(*requests)
    codes = [r.status for r in responses]
    assert set(codes) <= {200, 202, 429}
    status = await _json(await client.get(f"{API}/status"))
    assert status["running"] == 4
    running = [m["model"] for m in status["models"] if m["state"] != "stopped"]
    assert len(running) == 4
    for name in running:
        await _wait_state(client, name, "ready")
    status = await _json(await client.get(f"{API}/status"))
    assert status["running"] == 4


async def test_live_metrics_history_and_websocket(client: Client) -> None:
    ws = await client.ws_connect(f"{API}/ws", params={"model": "m1"})
    first = await ws.receive_json(timeout=5)
    assert first["type"] == "llama-status:update"
    assert first["model"] == "m1"
    assert first["data"]["state"] == "stopped"
    await client.post(f"{API}/models/m1/start", params={"wait": "true"})
    seen: set[str] = set()
    states: list[str] = []
    while "llama-metrics:update" not in seen:
        msg = await ws.receive_json(timeout=5)
        assert msg["model"] == "m1"
        seen.add(msg["type"])
        if msg["type"] == "llama-status:update":
            states.append(msg["data"]["state"])
    assert "ready" in states
    body = await _json(await client.get(f"{API}/models/m1/metrics"))
    assert body["latest"]["slots_total"] == 2
    assert len(body["history"]) >= 1
    await client.post(f"{API}/models/m1/stop")
    while True:
        msg = await ws.receive_json(timeout=5)
        if msg["type"] == "llama-status:update" and msg["data"]["state"] == "stopped":
            break
    body = await _json(await client.get(f"{API}/models/m1/metrics"))
    assert body["latest"] is None
    await ws.close()


async def test_websocket_rejects_unknown_model_filter(client: Client) -> None:
    resp = await client.get(f"{API}/ws", params={"model": "nope"})
    assert resp.status == 404


async def test_websocket_filter_can_change(client: Client) -> None:
    ws = await client.ws_connect(f"{API}/ws")
    initial = [await ws.receive_json(timeout=5) for _ in range(2)]
    assert {m["model"] for m in initial} == {"m0", "m1"}
    await ws.send_str(json.dumps({"model": "m0"}))
    msg = await ws.receive_json(timeout=5)
    assert msg["model"] == "m0"
    await ws.send_str("garbage")
    msg = await ws.receive_json(timeout=5)
    assert msg["type"] == "error"
    await ws.close()
    assert ws.closed


async def test_deleted_model_leaves_no_series_in_metrics(client: Client, tmp_path: Path) -> None:
    path = write_minimal_gguf(tmp_path / "gone.gguf")
    assert (
        await client.post(f"{API}/models", json={"name": "gone", "path": str(path)})
    ).status == 201
    resp = await client.post(f"{API}/models/gone/start", params={"wait": "true"})
    assert resp.status == 200, await resp.text()
    await _wait_metrics_of(client, "gone")
    assert (await client.post(f"{API}/models/gone/stop")).status == 200
    assert (await client.delete(f"{API}/models/gone")).status == 200
    text = await (await client.get("/metrics")).text()
    assert 'model="gone"' not in text


async def _wait_metrics_of(client: Client, model: str) -> None:
    """Wait until the poller has live metrics for model."""

    async def live() -> bool:
        body = await _json(await client.get(f"{API}/models/{model}/metrics"))
        return body["latest"] is not None

    await async_wait_until(live, f"live metrics for {model}")


async def test_instances_on_every_interface_are_advertised_at_the_configured_address(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    base = make_config(tmp_path, fake_server_bin, models=1)
    config = dataclasses.replace(
        base,
        instance_host="0.0.0.0",
        targets=TargetsConfig(directory=tmp_path / "sd", address="192.0.2.10"),
    )
    client = await aiohttp_client(create_app(config))
    resp = await client.post(f"{API}/models/m0/start", params={"wait": "true"})
    body = await _json(resp)
    assert resp.status == 200, body
    groups = await _json(await client.get(f"{API}/targets"))
    assert groups[0]["targets"] == [f"192.0.2.10:{body['port']}"]
    assert groups[0]["labels"] == {"host": "box-1", "model": "m0"}
    await _wait_file(tmp_path / "sd" / "llama-servers.json", groups)
    await _wait_metrics_of(client, "m0")  # the service itself still reads it over loopback
