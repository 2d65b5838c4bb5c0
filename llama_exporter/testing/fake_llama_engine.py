"""The fake llama-server's engine: slots, simulated prompt processing and generation, counters.

No HTTP here: ``fake_llama_app`` serves it, ``fake_llama`` runs that as a process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

DEFAULT_N_PREDICT = 16


@dataclass(frozen=True)
class FakeOptions:
    """Everything the fake server can be told on its command line."""

    model: str = "fake.gguf"
    alias: str | None = None  # answers' "model" (the real one: the alias, else the path)
    host: str = "127.0.0.1"
    port: int = 8080
    metrics: bool = False
    ctx_size: int = 4096
    parallel: int = 1
    api_key: str | None = None
    api_keys: tuple[str, ...] = ()  # from --api-key-file, accepted like api_key
    cors_origins: str = "*"  # like llama-server: "*" echoes Origin, else sent as it is
    cors_credentials: bool = True
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
    verbosity: int = 3  # -lv: at 4 the load logs its buffer sizes


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
