"""The request log over HTTP, in process, with fake llama-server children: what a gateway
request leaves in the log, in flight and done, the list and export, the WebSocket event,
capture, and the log turned off."""

from __future__ import annotations

import asyncio
import contextlib
import csv
import dataclasses
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

from test_gateway_http import API, CHAT, MakeClient, chat, gw_config
from waiting import async_wait_until

from llama_exporter.config.settings import RequestLogConfig
from llama_exporter.http.app import create_app
from llama_exporter.http.keys import REQUEST_LOG

REQUESTS = f"{API}/requests"


async def records(client: Any, **params: str) -> list[dict[str, Any]]:
    resp = await client.get(REQUESTS, params=params)
    body = await resp.json()
    assert resp.status == 200, body
    result: list[dict[str, Any]] = body["requests"]
    return result


async def test_a_request_is_logged_with_what_the_gateway_saw(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, models=1)))
    resp = await client.post(CHAT, json=chat("m0", max_tokens=4))
    assert resp.status == 200
    [rec] = await records(client)
    assert rec["model"] == "m0" and rec["endpoint"] == CHAT and rec["state"] == "done"
    assert rec["status"] == 200 and rec["error_type"] is None
    assert rec["stream"] is False and rec["client"] == "127.0.0.1"
    assert rec["triggered_load"] is True and rec["evicted"] == []
    assert rec["load_wait_s"] > 0 and rec["queue_wait_s"] == 0
    assert rec["completion_tokens"] == 4 and rec["prompt_tokens"] > 0
    assert rec["finish_reason"] == "length"
    assert rec["duration_s"] > rec["load_wait_s"] and rec["tokens_per_second"] > 0
    one = await (await client.get(f"{REQUESTS}/{rec['id']}")).json()
    assert one["id"] == rec["id"] and one["request_body"] is None and one["response_body"] is None

    # A second request on the loaded model: no load, a streamed answer with a TTFT.
    resp = await client.post(CHAT, json=chat("m0", max_tokens=3, stream=True))
    await resp.read()
    newest = (await records(client))[0]
    assert newest["stream"] is True and newest["triggered_load"] is False
    assert newest["load_wait_s"] == 0 and newest["ttft_s"] is not None
    assert newest["completion_tokens"] == 3 and newest["finish_reason"] == "length"
    assert newest["prompt_tokens"] is None  # no usage asked for: the text events counted
    options = {"stream_options": {"include_usage": True}}
    resp = await client.post(CHAT, json=chat("m0", max_tokens=2, stream=True, **options))
    await resp.read()
    newest = (await records(client))[0]
    assert newest["completion_tokens"] == 2 and newest["prompt_tokens"] > 0


async def test_refused_requests_are_logged_and_filtered_by_status(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, models=1)))
    assert (await client.post(CHAT, json=chat("nope"))).status == 404
    assert (
        await client.post(CHAT, data=b"{", headers={"Content-Type": "application/json"})
    ).status == 400
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    four = await records(client, status="4xx")
    assert sorted(r["status"] for r in four) == [400, 404]
    assert {r["error_type"] for r in four} == {"invalid_request_error"}
    assert "nope" in next(r for r in four if r["status"] == 404)["error_message"]
    assert [r["status"] for r in await records(client, status="200")] == [200]
    assert [r["model"] for r in await records(client, model="m0")] == ["m0"]
    bad = await client.get(REQUESTS, params={"status": "6xx"})
    assert bad.status == 400 and (await bad.json())["error"]["field"] == "status"
    assert (await client.get(REQUESTS, params={"limit": "0"})).status == 400
    assert (await client.get(REQUESTS, params={"cursor": "x"})).status == 400
    assert (await client.get(f"{REQUESTS}/nosuchid")).status == 404


async def test_in_flight_request_is_listed_and_sent_over_the_websocket(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, models=1)
    cfg = dataclasses.replace(
        cfg, models=(dataclasses.replace(cfg.models[0], args=("--fake-tokens-per-second", "20")),)
    )
    client = await aiohttp_client(create_app(cfg))
    ws = await client.ws_connect(f"{API}/ws")
    task = asyncio.create_task(client.post(CHAT, json=chat("m0", max_tokens=40, stream=True)))

    log = client.app[REQUEST_LOG]
    await async_wait_until(log.in_flight, "the request in flight", limit=30)
    [live] = await records(client, status="in_flight")
    assert live["state"] == "in_flight" and live["status"] is None and live["stream"] is True
    resp = await task
    await resp.read()
    seen: list[dict[str, Any]] = []
    while not any(e["data"]["state"] == "done" for e in seen):
        msg = json.loads((await ws.receive(timeout=30)).data)
        if msg["type"] == "llama-request:update":
            seen.append(msg)
    assert [e["data"]["state"] for e in seen] == ["in_flight", "done"]
    assert {e["data"]["id"] for e in seen} == {live["id"]}
    assert seen[-1]["model"] == "m0" and seen[-1]["data"]["status"] == 200
    await ws.close()


async def test_paging_and_export(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, models=1)))
    for _ in range(5):
        assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    await asyncio.to_thread(client.app[REQUEST_LOG].store.flush)
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": "2", **({"cursor": cursor} if cursor else {})}
        body = await (await client.get(REQUESTS, params=params)).json()
        seen += [r["id"] for r in body["requests"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    everything = await records(client, limit="100")
    assert seen == [r["id"] for r in everything] and len(seen) == 5
    arrived = [r["arrived"] for r in everything]
    assert arrived == sorted(arrived, reverse=True)

    resp = await client.get(REQUESTS, params={"format": "jsonl"})
    assert resp.content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in (await resp.text()).splitlines()]
    assert [r["id"] for r in lines] == seen
    resp = await client.get(REQUESTS, params={"format": "csv", "model": "m0"})
    rows = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["id"] for r in rows] == seen and rows[0]["status"] == "200"


async def test_capture_keeps_bodies_without_secrets_and_off_keeps_none(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, models=2)
    cfg = dataclasses.replace(
        cfg, request_log=RequestLogConfig(capture_models=("m0",), capture_max_bytes=4096)
    )
    client = await aiohttp_client(create_app(cfg))
    secret = "sk-very-secret"
    for model in ("m0", "m1"):
        resp = await client.post(
            CHAT,
            json=chat(model, max_tokens=2, api_key=secret),
            headers={"Authorization": f"Bearer {secret}"},
        )
        assert resp.status == 200
    by_model = {r["model"]: r for r in await records(client)}
    kept = await (await client.get(f"{REQUESTS}/{by_model['m0']['id']}")).json()
    assert json.loads(kept["request_body"])["messages"][0]["content"] == "hi there"
    assert json.loads(kept["response_body"])["choices"]
    assert secret not in kept["request_body"] and secret not in json.dumps(kept)
    off = await (await client.get(f"{REQUESTS}/{by_model['m1']['id']}")).json()
    assert off["request_body"] is None and off["response_body"] is None
    await asyncio.to_thread(client.app[REQUEST_LOG].store.flush)
    raw = (tmp_path / "state" / "requests.db").read_bytes()
    wal = tmp_path / "state" / "requests.db-wal"
    raw += wal.read_bytes() if wal.exists() else b""
    assert secret.encode() not in raw


async def test_the_log_turned_off(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = gw_config(tmp_path, fake_server_bin, models=1)
    cfg = dataclasses.replace(cfg, request_log=RequestLogConfig(enabled=False))
    client = await aiohttp_client(create_app(cfg))
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    resp = await client.get(REQUESTS)
    assert resp.status == 404 and "request_log.enabled" in (await resp.json())["error"]["message"]
    assert not (tmp_path / "state" / "requests.db").exists()


async def test_token_protected_and_odd_queries_answer_4xx_not_5xx(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    cfg = dataclasses.replace(gw_config(tmp_path, fake_server_bin, models=1), api_token="s3cret")
    client = await aiohttp_client(create_app(cfg))
    assert (await client.get(REQUESTS)).status == 401
    assert (await client.get(f"{REQUESTS}/1")).status == 401
    auth = {"Authorization": "Bearer s3cret"}
    for params in ({"since": "1e300"}, {"until": "-5"}, {"since": "0", "until": "1e308"}):
        resp = await client.get(REQUESTS, params=params, headers=auth)
        assert resp.status == 200, (params, await resp.text())
    assert (await client.get(f"{REQUESTS}/99999999999999999999999", headers=auth)).status == 404
    resp = await client.get(REQUESTS, params={"format": "xml"}, headers=auth)
    assert resp.status == 400 and (await resp.json())["error"]["field"] == "format"


async def test_an_unreadable_database_answers_503_naming_it(
    aiohttp_client: MakeClient, tmp_path: Path, fake_server_bin: Path
) -> None:
    client = await aiohttp_client(create_app(gw_config(tmp_path, fake_server_bin, models=1)))
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    log = client.app[REQUEST_LOG]
    await asyncio.to_thread(log.store.flush)
    db = tmp_path / "state" / "requests.db"
    with contextlib.closing(sqlite3.connect(db)) as conn:  # everything into the file
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.write_bytes(b"not a database at all " * 300)
    resp = await client.get(REQUESTS)
    assert resp.status == 503 and str(db) in (await resp.json())["error"]["message"]
    # The next record the writer writes finds it damaged and starts a new file.
    assert (await client.post(CHAT, json=chat("m0", max_tokens=1))).status == 200
    await asyncio.to_thread(log.store.flush)
    assert len(await records(client)) == 1
    assert len(list((tmp_path / "state").glob("requests.db.corrupt-*"))) == 1
