"""Cross-site, DNS-rebinding and token protection over real HTTP (in process, fake llama-server).

These are the issue's "how it must be shown" cases: a page on another origin
changes nothing, a rebinding Host is refused, and with a token every route but
/healthz and the page shell answers 401 without it (new routes are covered by
iterating the router).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from test_api import API, Client, MakeClient, _wait_state, make_config

from llama_exporter.http.app import create_app
from llama_exporter.http.auth import WS_CLOSE_UNAUTHORIZED
from llama_exporter.testing.gguf_writer import write_minimal_gguf

EVIL = "http://evil.example"
TOKEN = "s3cret-token"
SCRAPE = "scrape-only"


@pytest.fixture
async def client(aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path) -> Client:
    return await aiohttp_client(create_app(make_config(tmp_path, fake_server_bin)))


@pytest.fixture
async def token_client(aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path) -> Client:
    config = make_config(tmp_path, fake_server_bin, token=TOKEN)
    from dataclasses import replace

    return await aiohttp_client(create_app(replace(config, scrape_token=SCRAPE)))


def _own(client: Client) -> str:
    return f"http://127.0.0.1:{client.port}"


async def _names(client: Client, headers: dict[str, str] | None = None) -> list[str]:
    resp = await client.get(f"{API}/models", headers=headers)
    body: dict[str, Any] = await resp.json()
    return [m["name"] for m in body["models"]]


def _evil_body(tmp_path: Path) -> str:
    path = write_minimal_gguf(tmp_path / "evil.gguf")
    return json.dumps({"name": "evil", "path": str(path), "env": {"LD_PRELOAD": "/tmp/evil.so"}})


async def test_cross_origin_text_plain_post_registers_nothing(
    client: Client, tmp_path: Path
) -> None:
    before = await _names(client)
    resp = await client.post(
        f"{API}/models",
        data=_evil_body(tmp_path),
        headers={"Content-Type": "text/plain", "Origin": EVIL},
    )
    assert resp.status in (403, 415)
    # The same without Origin (an old browser, or a page that hides it): still 415.
    resp = await client.post(
        f"{API}/models", data=_evil_body(tmp_path), headers={"Content-Type": "text/plain"}
    )
    assert resp.status == 415
    assert "application/json" in (await resp.json())["error"]["message"]
    assert await _names(client) == before


async def test_foreign_origin_json_post_registers_nothing(client: Client, tmp_path: Path) -> None:
    before = await _names(client)
    for header in ({"Origin": EVIL}, {"Referer": EVIL + "/page.html"}, {"Origin": "null"}):
        resp = await client.post(
            f"{API}/models",
            data=_evil_body(tmp_path),
            headers={"Content-Type": "application/json", **header},
        )
        assert resp.status == 403, header
        assert (await resp.json())["error"]["code"] == 403
    assert await _names(client) == before


async def test_foreign_origin_cannot_stop_or_start_a_model(client: Client) -> None:
    resp = await client.post(f"{API}/models/m0/start", params={"wait": "true"})
    assert resp.status == 200
    for path in ("/models/m0/stop", "/models/m1/start"):
        resp = await client.post(API + path, headers={"Origin": EVIL})
        assert resp.status == 403
        resp = await client.post(API + path, data="{}", headers={"Content-Type": "text/plain"})
        assert resp.status == 415
    resp = await client.delete(f"{API}/models/m0", headers={"Origin": EVIL})
    assert resp.status == 403
    assert (await _wait_state(client, "m0", "ready"))["state"] == "ready"
    assert (await _wait_state(client, "m1", "stopped"))["state"] == "stopped"
    # The page served by the service itself is its own origin: allowed.
    resp = await client.post(f"{API}/models/m0/stop", headers={"Origin": _own(client)})
    assert resp.status == 200


@pytest.mark.parametrize(
    "path", ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/upstream/m0/completion"]
)
async def test_the_gateway_refuses_cross_site_requests_and_loads_nothing(
    client: Client, path: str
) -> None:
    body = json.dumps({"model": "m0", "prompt": "hi", "messages": []})
    resp = await client.post(path, data=body, headers={"Content-Type": "text/plain"})
    assert resp.status == 415
    resp = await client.post(
        path, data=body, headers={"Content-Type": "application/json", "Origin": EVIL}
    )
    assert resp.status == 403
    resp = await client.get("/v1/models", headers={"Origin": EVIL})
    assert resp.status == 403
    resp = await client.post(path, data=body, headers={"Host": "evil.example:80"})
    assert resp.status == 421
    status = await (await client.get(f"{API}/status")).json()
    assert status["running"] == 0  # nothing was loaded on demand


async def test_websocket_from_a_foreign_origin_is_refused(client: Client) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as err:
        await client.ws_connect(f"{API}/ws", headers={"Origin": EVIL})
    assert err.value.status == 403
    ws = await client.ws_connect(f"{API}/ws", headers={"Origin": _own(client)})
    assert (await ws.receive_json(timeout=5))["type"] == "llama-status:update"
    await ws.close()


@pytest.mark.parametrize("host", ["evil.example", f"evil.example:{9777}", "localhost:1"])
async def test_rebinding_host_is_refused_on_every_kind_of_route(client: Client, host: str) -> None:
    for method, path in [
        ("GET", f"{API}/models"),
        ("POST", f"{API}/models/m0/start"),
        ("GET", "/metrics"),
        ("GET", "/"),
    ]:
        resp = await client.request(method, path, headers={"Host": host})
        assert resp.status == 421, (method, path)
        assert "allowed_hosts" in (await resp.json())["error"]["message"]
    assert (await _wait_state(client, "m0", "stopped"))["state"] == "stopped"


async def test_allowed_hosts_and_origins_from_the_config(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    from dataclasses import replace

    config = replace(
        make_config(tmp_path, fake_server_bin),
        allowed_hosts=("llama.lan",),
        allowed_origins=("https://grafana.lan",),
    )
    client = await aiohttp_client(create_app(config))
    resp = await client.get(f"{API}/status", headers={"Host": "llama.lan"})
    assert resp.status == 200
    resp = await client.post(f"{API}/models/m0/stop", headers={"Origin": "https://grafana.lan"})
    assert resp.status == 200


def _routes(app: web.Application) -> list[tuple[str, str]]:
    """Every (method, concrete path) the app serves, with {name} filled in."""
    found = []
    for route in app.router.routes():
        if route.method == "HEAD":
            continue
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter") or info.get("prefix")
        assert path is not None, route
        concrete = str(path).replace("{name}", "m0").replace("{model}", "m0")
        concrete = concrete.replace("{path}", "health")
        for method in ("GET", "POST", "DELETE") if route.method == "*" else (route.method,):
            found.append((method, concrete))
    return found


def _public(method: str, path: str) -> bool:
    return method == "GET" and (path in ("/healthz", "/readyz", "/") or path.startswith("/ui/"))


async def test_every_route_refuses_a_foreign_origin_and_a_rebinding_host(client: Client) -> None:
    routes = _routes(client.app)
    for method, path in routes:
        resp = await client.request(method, path, headers={"Origin": EVIL})
        assert resp.status == 403, (method, path)
        resp = await client.request(method, path, headers={"Host": "evil.example"})
        assert resp.status == 421, (method, path)
        if method != "GET":
            resp = await client.request(
                method, path, data="{}", headers={"Content-Type": "text/plain"}
            )
            assert resp.status == 415, (method, path)
    assert (await (await client.get(f"{API}/status")).json())["running"] == 0


async def test_with_a_token_every_route_but_healthz_and_the_page_needs_it(
    token_client: Client,
) -> None:
    routes = _routes(token_client.app)
    assert len(routes) >= 12
    for method, path in routes:
        if _public(method, path):
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            resp = await token_client.request(method, path, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert "Bearer" in resp.headers["WWW-Authenticate"]
    assert (await token_client.get("/healthz")).status == 200
    assert (await token_client.get("/readyz")).status == 200
    # Nothing was changed by all those refused calls.
    body = await (
        await token_client.get(f"{API}/status", headers={"Authorization": f"Bearer {TOKEN}"})
    ).json()
    assert body["running"] == 0


async def test_the_token_opens_every_route_and_the_scrape_token_only_scrapes(
    token_client: Client,
) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    scrape = {"Authorization": f"Bearer {SCRAPE}"}
    assert (await token_client.get(f"{API}/models", headers=good)).status == 200
    assert (await token_client.get("/metrics", headers=scrape)).status == 200
    assert (await token_client.get(f"{API}/targets", headers=scrape)).status == 200
    assert (await token_client.get("/metrics", headers=good)).status == 200
    assert (await token_client.get(f"{API}/models", headers=scrape)).status == 401
    resp = await token_client.post(f"{API}/models/m0/stop", headers=scrape)
    assert resp.status == 401
    resp = await token_client.post(f"{API}/models/m0/stop", headers=good)
    assert resp.status == 200


async def test_websocket_auth_by_header_or_first_message(token_client: Client) -> None:
    good = {"Authorization": f"Bearer {TOKEN}"}
    ws = await token_client.ws_connect(f"{API}/ws", headers=good)
    assert (await ws.receive_json(timeout=5))["type"] == "llama-status:update"
    await ws.close()
    # A browser cannot set the header: it sends the token as the first message.
    ws = await token_client.ws_connect(f"{API}/ws")
    await ws.send_json({"type": "auth", "token": TOKEN})
    assert (await ws.receive_json(timeout=5))["type"] == "llama-status:update"
    await ws.close()


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "token": "wrong"},
        {"type": "auth"},
        {"model": None},
        {"type": "auth", "token": SCRAPE},
    ],
)
async def test_websocket_without_the_token_is_closed_with_4401_and_sent_nothing(
    token_client: Client, first: dict[str, Any]
) -> None:
    ws = await token_client.ws_connect(f"{API}/ws")
    await ws.send_json(first)
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.CLOSE, msg
    assert msg.data == WS_CLOSE_UNAUTHORIZED
    assert ws.close_code == WS_CLOSE_UNAUTHORIZED


async def test_websocket_that_says_nothing_is_closed_after_the_auth_timeout(
    token_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("llama_exporter.http.auth.WS_AUTH_TIMEOUT", 0.2)
    ws = await token_client.ws_connect(f"{API}/ws")
    msg = await ws.receive(timeout=10)
    assert msg.type is WSMsgType.CLOSE
    assert msg.data == WS_CLOSE_UNAUTHORIZED


async def test_a_plain_get_of_the_websocket_route_needs_the_token(token_client: Client) -> None:
    assert (await token_client.get(f"{API}/ws")).status == 401


def test_the_cli_sends_the_token_on_every_call(tmp_path: Path, fake_server_bin: Path) -> None:
    import os
    import subprocess
    import sys

    from service_proc import start_service
    from test_cli import fake_config

    config = {**fake_config(tmp_path, fake_server_bin), "api_token": TOKEN}
    service = start_service(tmp_path / "svc", config)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_EXPORTER_")}

    def cli(*args: str, token_env: str | None = None) -> subprocess.CompletedProcess[str]:
        extra = {"LLAMA_EXPORTER_API_TOKEN": token_env} if token_env else {}
        return subprocess.run(
            [sys.executable, "-m", "llama_exporter", *args, "--url", service.url],
            capture_output=True,
            text=True,
            env={**env, **extra},
            timeout=60,
            check=False,
        )

    try:
        refused = cli("models")
        assert refused.returncode == 1
        assert "HTTP 401" in refused.stderr and "api_token" in refused.stderr
        assert cli("ps").returncode == 1
        assert cli("models", "--token", TOKEN).returncode == 0
        start = cli("start", "m0", "--wait", token_env=TOKEN)
        assert start.returncode == 0, start.stderr
        ps = cli("ps", token_env=TOKEN)
        assert ps.returncode == 0 and "m0" in ps.stdout and "ready" in ps.stdout
        assert cli("logs", "m0", "--token", TOKEN).returncode == 0
        stop = cli("stop", "m0", "--token", TOKEN)
        assert stop.returncode == 0 and "stopped" in stop.stdout
    finally:
        service.stop()
