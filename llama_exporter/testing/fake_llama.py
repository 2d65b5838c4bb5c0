"""A fake llama-server: the real one's endpoints (see LLAMA_SERVER.md) plus fault injection.

Use it in process (``create_app``) with aiohttp's test client, or as a child process
(``main``) that accepts the flags the service passes to the real binary.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import resource
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web

BUILD_INFO = "b0000-fake"
DEFAULT_N_PREDICT = 16


@dataclass(frozen=True)
class FakeOptions:
    """Everything the fake server can be told on its command line."""

    model: str = "fake.gguf"
    host: str = "127.0.0.1"
    port: int = 8080
    metrics: bool = False
    ctx_size: int = 4096
    parallel: int = 1
    api_key: str | None = None
    slots: bool = True
    load_delay: float = 0.0
    crash_after: float | None = None
    exit_code: int = 1
    signal_on_load: str | None = None
    ignore_sigterm: bool = False
    idle_keeps_task: bool = False  # like the b0 build here: idle slots keep the last task's keys
    hang_after: float | None = None
    tokens_per_second: float = 50.0
    prompt_tokens_per_second: float = 1000.0
    embeddings: bool = False


@dataclass
class _Task:
    id_task: int
    prompt_tokens: list[str]
    cache_n: int
    n_predict: int
    started: float
    gen_started: float | None = None


@dataclass
class _Slot:
    id: int
    n_ctx: int
    task: _Task | None = None
    last_task: _Task | None = None
    last_prompt: list[str] = field(default_factory=list)


class FakeServer:
    """The shared state behind the fake endpoints: slots, counters, loading clock."""

    def __init__(self, options: FakeOptions, clock: Callable[[], float] = time.monotonic) -> None:
        self.options = options
        self.clock = clock
        self.ready_at = clock() + options.load_delay
        per_slot = max(1, options.ctx_size // max(1, options.parallel))
        self.slots = [_Slot(i, per_slot) for i in range(max(1, options.parallel))]
        self.free = asyncio.Condition()
        self.deferred = 0
        self.next_task = 0
        self.counters: dict[str, float] = {
            "prompt_tokens_total": 0,
            "prompt_seconds_total": 0.0,
            "tokens_predicted_total": 0,
            "tokens_predicted_seconds_total": 0.0,
            "n_decode_total": 0,
            "n_tokens_max": 0,
            "prompt_tokens_cached_total": 0,
        }
        self.busy_slot_decodes = 0
        # Windows behind the *_tokens_seconds gauges: reset by every /metrics read.
        self.window = {"prompt_n": 0.0, "prompt_s": 0.0, "pred_n": 0.0, "pred_s": 0.0}

    @property
    def loading(self) -> bool:
        """True while /health should answer 503."""
        return self.clock() < self.ready_at

    def slot_json(self, slot: _Slot) -> dict[str, Any]:
        """One element of GET /slots, shaped like the real server's."""
        base: dict[str, Any] = {"id": slot.id, "n_ctx": slot.n_ctx, "speculative": False}
        task = slot.task
        if task is None:
            last = slot.last_task
            if not self.options.idle_keeps_task or last is None:
                return {**base, "is_processing": False}
            return {
                **base,
                "is_processing": False,
                "id_task": last.id_task,
                "n_prompt_tokens": len(last.prompt_tokens) + max(0, last.n_predict - 1),
                "n_prompt_tokens_processed": 0,
                "n_prompt_tokens_cache": 0,
                "params": {"n_predict": last.n_predict, "temperature": 0.8, "top_k": 40},
                "next_token": [
                    {"has_next_token": False, "has_new_line": False, "n_remain": -1, "n_decoded": 0}
                ],
            }
        now = self.clock()
        prompt_n = len(task.prompt_tokens)
        to_process = prompt_n - task.cache_n
        if task.gen_started is None:
            done = int((now - task.started) * self.options.prompt_tokens_per_second)
            processed, decoded = min(to_process, done), 0
        else:
            processed = to_process
            elapsed = now - task.gen_started
            decoded = min(task.n_predict, int(elapsed * self.options.tokens_per_second))
        return {
            **base,
            "is_processing": True,
            "id_task": task.id_task,
            "n_prompt_tokens": task.cache_n + processed + decoded,
            "n_prompt_tokens_processed": processed,
            "n_prompt_tokens_cache": task.cache_n,
            "params": {"n_predict": task.n_predict, "temperature": 0.8, "top_k": 40},
            "next_token": [
                {
                    "has_next_token": decoded < task.n_predict,
                    "has_new_line": False,
                    "n_remain": task.n_predict - decoded,
                    "n_decoded": decoded,
                }
            ],
        }

    def metrics_text(self) -> str:
        """GET /metrics body; reading it resets the two throughput gauges, as upstream."""
        w = self.window
        prompt_rate = w["prompt_n"] / w["prompt_s"] if w["prompt_s"] > 0 else 0.0
        pred_rate = w["pred_n"] / w["pred_s"] if w["pred_s"] > 0 else 0.0
        self.window = dict.fromkeys(w, 0.0)
        live = [self.slot_json(s) for s in self.slots if s.task is not None]
        # Decode calls and the longest sequence move live; token counters do not.
        decodes = self.counters["n_decode_total"] + sum(
            1 + s["next_token"][0]["n_decoded"] for s in live
        )
        longest = max([self.counters["n_tokens_max"], *(s["n_prompt_tokens"] for s in live)])
        values = {
            **self.counters,
            "n_decode_total": decodes,
            "n_tokens_max": longest,
            "n_busy_slots_per_decode": self.busy_slot_decodes / decodes if decodes else 0.0,
            "prompt_tokens_seconds": prompt_rate,
            "predicted_tokens_seconds": pred_rate,
            "requests_processing": len(live),
            "requests_deferred": self.deferred,
        }
        out: list[str] = []
        for name, kind, help_text in _METRICS:
            out.append(f"# HELP llamacpp:{name} {help_text}")
            out.append(f"# TYPE llamacpp:{name} {kind}")
            out.append(f"llamacpp:{name} {_num(values.get(name, 0))}")
        return "\n".join(out) + "\n"

    async def generate(
        self,
        prompt: str,
        n_predict: int,
        on_token: Callable[[str], Awaitable[None]] | None = None,
    ) -> tuple[int, str, dict[str, Any]]:
        """Occupy a free slot, 'process' the prompt and 'generate'; return slot, text, timings.

        With on_token, each token is handed over as it is generated (streaming); an
        error from it (the client left) ends the generation and frees the slot.
        """
        tokens = prompt.split() or [""]
        async with self.free:
            self.deferred += 1
            try:
                await self.free.wait_for(lambda: any(s.task is None for s in self.slots))
            finally:
                self.deferred -= 1
            slot = next(s for s in self.slots if s.task is None)
            cache_n = _common_prefix(slot.last_prompt, tokens)
            if cache_n == len(tokens):
                cache_n -= 1  # the real server always evaluates at least one token
            room = slot.n_ctx - len(tokens)
            n = DEFAULT_N_PREDICT if n_predict < 0 else n_predict
            n = max(0, min(n, room))
            self.next_task += 1
            task = _Task(self.next_task, tokens, cache_n, n, self.clock())
            slot.task = task
        try:
            prompt_n = len(tokens) - cache_n
            prompt_s = prompt_n / self.options.prompt_tokens_per_second
            await asyncio.sleep(prompt_s)
            self._prompt_done(prompt_n, prompt_s, cache_n)
            task.gen_started = self.clock()
            pred_s = n / self.options.tokens_per_second
            if on_token is None:
                await asyncio.sleep(pred_s)
            else:
                words = _WORDS_TEXT.split()
                for i in range(n):
                    await asyncio.sleep(1 / self.options.tokens_per_second)
                    await on_token(words[(task.id_task + i) % len(words)] + " ")
            self._generation_done(task, n, pred_s)
        finally:
            slot.last_prompt = tokens
            slot.last_task = task
            slot.task = None
            async with self.free:
                self.free.notify_all()
        words = _WORDS_TEXT.split()
        text = " ".join(words[(task.id_task + i) % len(words)] for i in range(n))
        timings = {
            "cache_n": cache_n,
            "prompt_n": prompt_n,
            "prompt_ms": prompt_s * 1000,
            "prompt_per_token_ms": prompt_s * 1000 / prompt_n if prompt_n else 0.0,
            "prompt_per_second": self.options.prompt_tokens_per_second,
            "predicted_n": n,
            "predicted_ms": pred_s * 1000,
            "predicted_per_token_ms": pred_s * 1000 / n if n else 0.0,
            "predicted_per_second": self.options.tokens_per_second if n else 0.0,
        }
        return slot.id, text, timings

    def _prompt_done(self, prompt_n: int, prompt_s: float, cache_n: int) -> None:
        c = self.counters
        c["prompt_tokens_total"] += prompt_n
        c["prompt_tokens_cached_total"] += cache_n
        c["prompt_seconds_total"] += prompt_s
        self.window["prompt_n"] += prompt_n
        self.window["prompt_s"] += prompt_s

    def _generation_done(self, task: _Task, n: int, pred_s: float) -> None:
        c = self.counters
        c["tokens_predicted_total"] += n
        c["tokens_predicted_seconds_total"] += pred_s
        c["n_decode_total"] += n + 1
        c["n_tokens_max"] = max(c["n_tokens_max"], len(task.prompt_tokens) + n)
        busy = sum(1 for s in self.slots if s.task is not None)
        self.busy_slot_decodes += busy * (n + 1)
        self.window["pred_n"] += n
        self.window["pred_s"] += pred_s


# name, type, HELP text: as the real llama-server prints them
_METRICS: list[tuple[str, str, str]] = [
    (
        "prompt_tokens_total",
        "counter",
        "Number of prompt tokens processed, excluding cached tokens",
    ),
    ("prompt_tokens_cached_total", "counter", "Number of prompt tokens reused from the cache"),
    ("prompt_seconds_total", "counter", "Total time spent processing prompts"),
    ("tokens_predicted_total", "counter", "Number of generation tokens processed"),
    ("tokens_predicted_seconds_total", "counter", "Total time spent generating tokens"),
    ("n_decode_total", "counter", "Total number of llama_decode() calls"),
    ("n_tokens_max", "counter", "Largest observed sequence length (prompt + generation)"),
    ("spec_decode_num_draft_tokens_total", "counter", "Speculative: Total draft tokens generated"),
    (
        "spec_decode_num_accepted_tokens_total",
        "counter",
        "Speculative: Total draft tokens accepted",
    ),
    ("spec_decode_num_drafts_total", "counter", "Speculative: Total verification steps"),
    ("prompt_tokens_seconds", "gauge", "Average prompt throughput in tokens/s"),
    ("predicted_tokens_seconds", "gauge", "Average generation throughput in tokens/s"),
    ("requests_processing", "gauge", "Number of requests processing"),
    ("requests_deferred", "gauge", "Number of requests deferred"),
    ("n_busy_slots_per_decode", "gauge", "Average number of busy slots per llama_decode() call"),
]


_WORDS_TEXT = "the quick brown fox jumps over a lazy dog while llamas count tokens"


def _common_prefix(a: list[str], b: list[str]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _error(status: int, message: str, kind: str) -> web.Response:
    body = {"error": {"code": status, "message": message, "type": kind}}
    return web.json_response(body, status=status)


SERVER_KEY = web.AppKey("fake_server", FakeServer)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def create_app(options: FakeOptions) -> web.Application:
    """The fake llama-server as an aiohttp application (loading starts now)."""
    server = FakeServer(options)

    @web.middleware
    async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
        if server.loading:
            return _error(503, "Loading model", "unavailable_error")
        if request.path != "/health" and options.api_key is not None:
            expected = f"Bearer {options.api_key}"
            if request.headers.get("Authorization") != expected:
                return _error(401, "Invalid API Key", "authentication_error")
        return await handler(request)

    app = web.Application(middlewares=[gate])
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
                "model": options.model,
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
        base = {"object": kind, "model": options.model, "created": int(time.time())}

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
                "model": options.model,
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
                "model": options.model,
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
                "model": options.model,
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


def parse_args(argv: list[str] | None) -> FakeOptions:
    """Parse the real llama-server flags we use plus the --fake-* fault flags."""
    p = argparse.ArgumentParser(prog="fake-llama-server", description=__doc__)
    p.add_argument("-m", "--model", default="fake.gguf")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--metrics", action="store_true")
    p.add_argument("-c", "--ctx-size", type=int, default=4096)
    p.add_argument("-np", "--parallel", type=int, default=1)
    p.add_argument("--api-key")
    p.add_argument("--no-slots", dest="slots", action="store_false")
    p.add_argument("--embeddings", action="store_true")
    p.add_argument("--pooling", dest="_pooling")  # accepted, ignored
    p.add_argument("-t", "--threads", type=int, dest="_threads")  # accepted, ignored
    p.add_argument("-hft", "--hf-token", dest="_hf_token")  # accepted, ignored
    fake = {  # --fake-X -> FakeOptions field, type, default
        "load-delay": (float, 0.0),
        "crash-after": (float, None),
        "exit-code": (int, 1),
        "signal-on-load": (str, None),
        "hang-after": (float, None),
        "tokens-per-second": (float, 50.0),
        "prompt-tokens-per-second": (float, 1000.0),
    }
    for flag, (kind, default) in fake.items():
        p.add_argument(f"--fake-{flag}", dest=flag.replace("-", "_"), type=kind, default=default)
    p.add_argument("--fake-ignore-sigterm", dest="ignore_sigterm", action="store_true")
    p.add_argument("--fake-idle-keeps-task", dest="idle_keeps_task", action="store_true")
    # Like a verbose llama-server: print the command line and secret-looking variables.
    p.add_argument("--fake-print-args", dest="_print_args", action="store_true")
    values = vars(p.parse_args(argv))
    values.pop("_threads")
    values.pop("_hf_token")
    if values.pop("_print_args"):
        _log("fake-llama-server args: " + " ".join(sys.argv if argv is None else argv))
        for name, value in sorted(os.environ.items()):
            if any(word in name for word in ("TOKEN", "KEY", "SECRET", "PASSWORD")):
                _log(f"env {name}={value}")
    values.pop("_pooling")
    return FakeOptions(**values)


def _log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _signal_number(name: str) -> signal.Signals:
    upper = name.upper()
    return signal.Signals[upper if upper.startswith("SIG") else f"SIG{upper}"]


def _die_by_signal(sig: signal.Signals) -> None:
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core files from a fake crash
    signal.signal(sig, signal.SIG_DFL)
    os.kill(os.getpid(), sig)


async def _serve(options: FakeOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    if options.ignore_sigterm:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    else:
        loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    app = create_app(options)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, options.host, options.port)
    await site.start()
    _log(f"main: HTTP server is listening, hostname: {options.host}, port: {options.port}")
    _log(f"srv    load_model: loading model '{options.model}'")
    if options.signal_on_load is not None:
        sig = _signal_number(options.signal_on_load)
        await asyncio.sleep(options.load_delay / 2)
        _log("ggml: fake crash while loading")
        _die_by_signal(sig)
    loading = max(0.0, app[SERVER_KEY].ready_at - time.monotonic())
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=loading)
    if not stop.is_set():
        _log("main: model loaded")
        _log(f"main: server is listening on http://{options.host}:{options.port}")

    async def fault(delay: float, action: Callable[[], None]) -> None:
        await asyncio.sleep(delay)
        action()

    def crash() -> None:
        _log(f"fake: crashing with exit code {options.exit_code}")
        os._exit(options.exit_code)

    def hang() -> None:
        _log("fake: hanging (SIGSTOP)")
        os.kill(os.getpid(), signal.SIGSTOP)

    faults: list[asyncio.Task[None]] = []
    if options.crash_after is not None:
        faults.append(asyncio.create_task(fault(options.crash_after, crash)))
    if options.hang_after is not None:
        faults.append(asyncio.create_task(fault(options.hang_after, hang)))
    await stop.wait()
    _log("srv    operator(): operator(): cleaning up before exit...")
    for task in faults:
        task.cancel()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(runner.cleanup(), timeout=1.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the fake server until SIGTERM/SIGINT; returns the exit code."""
    options = parse_args(argv)
    for flag, rate in (
        ("--fake-tokens-per-second", options.tokens_per_second),
        ("--fake-prompt-tokens-per-second", options.prompt_tokens_per_second),
    ):
        if not math.isfinite(rate) or rate <= 0:
            _log(f"error: {flag} must be a positive number, got {rate}")
            return 2
    try:
        return asyncio.run(_serve(options))
    except OSError as exc:
        _log(f"error: couldn't bind HTTP server socket, {options.host}:{options.port}: {exc}")
        return 1


def write_executable(directory: Path) -> Path:
    """Write an executable ``fake-llama-server`` into directory that runs main() here."""
    script = directory / "fake-llama-server"
    script.write_text(
        f"#!{sys.executable}\n"
        "from llama_exporter.testing.fake_llama import main\n"
        "raise SystemExit(main())\n"
    )
    script.chmod(0o755)
    return script


if __name__ == "__main__":
    raise SystemExit(main())
