"""The fake llama-server's HTTP endpoints (see LLAMA_SERVER.md) as an aiohttp application.

Use it in process with aiohttp's test client; ``fake_llama`` runs it as a child process.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from llama_exporter.testing.fake_llama_engine import FakeOptions, FakeServer

BUILD_INFO = "b0000-fake"


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "type": kind}}
    return web.json_response(body, status=status)


SERVER_KEY = web.AppKey("fake_server", FakeServer)
PUBLIC_PATHS = frozenset({"/health", "/v1/health"})  # llama-server's, with an API key set
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(options: FakeOptions) -> web.Application:
    """The fake llama-server as an aiohttp application (loading starts now)."""
    server = FakeServer(options)

    keys = {f"Bearer {k}" for k in (options.api_key, *options.api_keys) if k}

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if server.loading:
            return _error(503, "Loading model", "unavailable_error")
        public = request.path in PUBLIC_PATHS
        if keys and not public and request.headers.get("Authorization") not in keys:
            return _error(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    async def cors(request: web.Request, response: web.StreamResponse) -> None:
        if options.cors_origins == "*" and options.cors_credentials:
            response.headers["Access-Control-Allow-Origin"] = request.headers.get("Origin", "")
        else:
            response.headers["Access-Control-Allow-Origin"] = options.cors_origins

    answer_model = options.alias or options.model
    app = web.Application(middlewares=[gate])
    app.on_response_prepare.append(cors)
    app[SERVER_KEY] = server

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def props(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "default_generation_settings": {
                    "n_ctx": server.slots[0].n_ctx,
                    "params": {"n_predict": -1, "temperature": 0.8},
                },
                "total_slots": len(server.slots),
                "model_path": options.model,
                "model_alias": answer_model,
                "chat_template": "{{ messages }}",
                "build_info": BUILD_INFO,
                "is_sleeping": False,
                "modalities": {"vision": False, "audio": False},
            }
        )

    async def slots(_: web.Request) -> web.Response:
        if not options.slots:
            return _error(501, "This server does not support slots endpoint.", "not_supported")
        return web.json_response([server.slot_json(s) for s in server.slots])

    async def metrics(_: web.Request) -> web.Response:
        if not options.metrics:
            msg = "This server does not support metrics endpoint. Start it with `--metrics`"
            return _error(501, msg, "not_supported_error")
        return web.Response(text=server.metrics_text(), content_type="text/plain")

    async def completion(request: web.Request) -> web.Response:
        body = await _json_body(request)
        if body is None or not isinstance(body.get("prompt"), str):
            return _error(400, '"prompt" must be a string', "invalid_request_error")
        n_predict = int(body.get("n_predict", -1))
        slot_id, text, timings = await server.generate(body["prompt"], n_predict)
        return web.json_response(
            {
                "content": text,
                "id_slot": slot_id,
                "stop": True,
                "model": answer_model,
                "tokens_predicted": timings["predicted_n"],
                "tokens_evaluated": timings["prompt_n"] + timings["cache_n"],
                "stop_type": "limit",
                "truncated": False,
                "tokens_cached": timings["prompt_n"] + timings["cache_n"] + timings["predicted_n"],
                "timings": timings,
            }
        )

    async def stream(
        request: web.Request, body: dict[str, Any], prompt: str, chat: bool
    ) -> web.StreamResponse:
        """SSE like the real server: a role-only first chat event, one event per token."""
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        kind = "chat.completion.chunk" if chat else "text_completion"
        base = {"object": kind, "model": answer_model, "created": int(time.time())}

        async def send(event: dict[str, Any] | str) -> None:
            data = event if isinstance(event, str) else json.dumps(event)
            await response.write(f"data: {data}\n\n".encode())

        def choice(text: str | None, finish: str | None = None) -> dict[str, Any]:
            if chat:
                delta = {"content": text} if text is not None else {}
                return {"index": 0, "delta": delta, "finish_reason": finish}
            return {"index": 0, "text": text or "", "finish_reason": finish}

        if chat:
            first = {"index": 0, "delta": {"role": "assistant", "content": None}}
            await send({**base, "choices": [{**first, "finish_reason": None}]})

        async def token(text: str) -> None:
            await send({**base, "choices": [choice(text)]})

        n_predict = int(body.get("max_tokens", body.get("n_predict", -1)))
        _, _, timings = await server.generate(prompt, n_predict, token)
        await send({**base, "choices": [choice(None, "length")]})
        options_ = body.get("stream_options")
        if isinstance(options_, dict) and options_.get("include_usage"):
            prompt_total = timings["prompt_n"] + timings["cache_n"]
            usage = {
                "completion_tokens": timings["predicted_n"],
                "prompt_tokens": prompt_total,
                "total_tokens": prompt_total + timings["predicted_n"],
            }
            await send({**base, "choices": [], "usage": usage, "timings": timings})
        await send("[DONE]")
        await response.write_eof()
        return response

    async def openai_completions(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        if body is None or not isinstance(body.get("prompt"), str):
            return _error(400, '"prompt" must be a string', "invalid_request_error")
        if body.get("stream"):
            return await stream(request, body, body["prompt"], chat=False)
        _, text, timings = await server.generate(body["prompt"], int(body.get("max_tokens", -1)))
        prompt_total = timings["prompt_n"] + timings["cache_n"]
        return web.json_response(
            {
                "choices": [{"index": 0, "text": text, "finish_reason": "length"}],
                "object": "text_completion",
                "model": answer_model,
                "usage": {
                    "completion_tokens": timings["predicted_n"],
                    "prompt_tokens": prompt_total,
                    "total_tokens": prompt_total + timings["predicted_n"],
                },
                "timings": timings,
            }
        )

    async def embeddings(request: web.Request) -> web.Response:
        if not options.embeddings:
            msg = "This server does not support embeddings. Start it with `--embeddings`"
            return _error(501, msg, "not_supported_error")
        body = await _json_body(request)
        text = body.get("input") if body else None
        if not isinstance(text, str):
            return _error(400, '"input" must be a string', "invalid_request_error")
        n = len(text.split()) or 1
        vector = [((hash(text) >> i) % 100) / 100 for i in range(8)]
        return web.json_response(
            {
                "object": "list",
                "model": body.get("model", answer_model) if body else answer_model,  # echoed
                "data": [{"object": "embedding", "index": 0, "embedding": vector}],
                "usage": {"prompt_tokens": n, "total_tokens": n},
            }
        )

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await _json_body(request)
        messages = body.get("messages") if body else None
        if body is None or not isinstance(messages, list):
            return _error(400, '"messages" must be a list', "invalid_request_error")
        prompt = " ".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
        if body.get("stream"):
            return await stream(request, body, prompt, chat=True)
        n_predict = int(body.get("max_tokens", -1))
        _, text, timings = await server.generate(prompt, n_predict)
        prompt_total = timings["prompt_n"] + timings["cache_n"]
        return web.json_response(
            {
                "choices": [
                    {
                        "finish_reason": "length",
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "created": int(time.time()),
                "model": answer_model,
                "system_fingerprint": BUILD_INFO,
                "object": "chat.completion",
                "usage": {
                    "completion_tokens": timings["predicted_n"],
                    "prompt_tokens": prompt_total,
                    "total_tokens": prompt_total + timings["predicted_n"],
                },
                "id": f"chatcmpl-fake{server.next_task}",
                "timings": timings,
            }
        )

    app.router.add_get("/health", health)
    app.router.add_get("/props", props)
    app.router.add_get("/slots", slots)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/completion", completion)
    app.router.add_post("/completions", completion)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_post("/v1/completions", openai_completions)
    app.router.add_post("/v1/embeddings", embeddings)
    return app


async def _json_body(request: web.Request) -> dict[str, Any] | None:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None
