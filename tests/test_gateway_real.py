"""The gateway, all real: the service as a process, real llama-servers with the gemma model,
and the official `openai` package as the client, streaming and not.

Two module-scoped services (3 models, cap 2): the first for loads, streaming, LRU
eviction, disconnects, the queue and the exact metrics; the second for pinned models
and idle unload. Each test arranges the models it needs (Gw.arrange: every request
before it has ended, then only the named models loaded, in that order of use) and
counts metrics from its own start, so any test runs alone or in any order.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from promstack import missing
from service_proc import ServiceProcess, http_json, http_text, start_service
from waiting import wait_until

try:
    import openai
except ImportError:  # pragma: no cover - installed by scripts/bootstrap.sh --test
    openai = None  # type: ignore[assignment]

pytestmark = [pytest.mark.real]

PROMPT = "Tell me a long story about a lighthouse keeper and the sea."
LONG = 900  # tokens for a generation still running after 10+ s (a slot has 1024 of context)
MODELS = ("g0", "g1", "g2")
REQUESTS = "llama_exporter_gateway_requests_total"


@dataclass
class Gw:
    """A service with the gateway, its OpenAI client, and what the tests sent through it."""

    service: ServiceProcess
    client: openai.OpenAI
    sent: int = 0  # every request through the gateway, whatever its answer
    streamed: int = 0  # streamed requests that received a first token
    client_ttfts: list[float] = field(default_factory=list)

    def chat(self, model: str, max_tokens: int = 8, **kw: Any) -> Any:
        """A non-streaming chat completion (counted)."""
        self.sent += 1
        return self.client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            **kw,
        )

    def stream(self, model: str, max_tokens: int = 8) -> tuple[Any, float, str]:
        """Open a stream and read up to its first token: (stream, client TTFT, text).

        The client's TTFT runs from the moment its HTTP request is sent (an httpx
        request hook) to the first chunk with text, as the openai package hands it over.
        """
        self.sent += 1
        stream = self.client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"ignore_eos": True},
        )
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                ttft = time.monotonic() - _sent.at
                self.streamed += 1
                self.client_ttfts.append(ttft)
                return stream, ttft, chunk.choices[0].delta.content
        raise AssertionError("the stream ended without any text")

    def hold(self, model: str) -> http.client.HTTPConnection:
        """Keep model busy with a long non-streamed generation until the connection is closed.

        Not streamed and not through the openai client: the TTFT comparison stays
        about the streams whose first token the client timed.
        """
        self.sent += 1
        before = self.service.status(model)["in_flight"]
        conn = http.client.HTTPConnection("127.0.0.1", self.service.port, timeout=120)
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": LONG,
            "ignore_eos": True,
        }
        conn.request(
            "POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"}
        )
        wait_until(
            lambda: self.service.status(model)["in_flight"] > before, f"a request in {model}"
        )
        return conn

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of name matching labels (0 when none)."""
        text = http_text(self.service.url + "/metrics")
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def summary(self) -> dict[str, Any]:
        body: dict[str, Any] = http_json("GET", self.service.api + "/gateway")[1]
        return body

    def settled(self) -> bool:
        """Every request sent has ended and been counted: none in flight, none queued."""
        return (
            self.metric(REQUESTS) == self.sent
            and self.metric("llama_exporter_gateway_requests_in_flight") == 0
            and self.summary()["queue_length"] == 0
        )

    def settle(self) -> None:
        """Wait until every request sent so far has ended (a cut one is counted when the
        gateway sees the client gone); nothing from an earlier test is left running."""
        wait_until(self.settled, f"the {self.sent} requests sent to be over and counted")

    def stop(self, model: str) -> None:
        """Stop model through the API (returns once it has stopped)."""
        code, body = http_json("POST", f"{self.service.api}/models/{model}/stop")
        assert code == 200 and body["state"] == "stopped", (model, code, body)

    def arrange(self, *loaded: str) -> None:
        """Only `loaded` running, used in that order (the first is the least recently used)."""
        self.settle()
        for model in MODELS:
            if model not in loaded:
                self.stop(model)
        for model in loaded:
            self.chat(model, max_tokens=1)
        assert {m for m in MODELS if self.service.status(m)["state"] == "ready"} == set(loaded)


_sent = threading.local()  # when this thread's last HTTP request went out


def _mark_sent(_: Any) -> None:
    _sent.at = time.monotonic()


def _models(tmp: Path, gemma: Path, n: int) -> list[Path]:
    """n names for the same GGUF file (hard links, copies if links are not allowed)."""
    paths = []
    for i in range(n):
        path = tmp / f"g{i}.gguf"
        try:
            os.link(gemma, path)
        except OSError:
            import shutil

            shutil.copyfile(gemma, path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def gateway_service(
    tmp: Path, llama: Path, gemma: Path, model_extra: dict[int, dict[str, Any]], **top: Any
) -> Iterator[Gw]:
    if openai is None:
        missing("the openai package is not installed (scripts/bootstrap.sh --test)")
    models = [
        {
            "name": f"g{i}",
            "path": str(path),
            "ctx_size": 2048,
            "parallel": 2,
            "args": ["--threads", "1"],
            **model_extra.get(i, {}),
        }
        for i, path in enumerate(_models(tmp, gemma, 3))
    ]
    config = {"llama_server": str(llama), "max_parallel": 2, "models": models, **top}
    service = start_service(tmp / "service", config)
    client = openai.OpenAI(
        base_url=service.url + "/v1",
        api_key="unused",
        max_retries=0,
        http_client=openai.DefaultHttpxClient(event_hooks={"request": [_mark_sent]}),
    )
    try:
        yield Gw(service, client)
    finally:
        client.close()
        code = service.stop()
    assert code == 0, service.log()[-3000:]


@pytest.fixture(scope="module")
def gw(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Gw]:
    """Models g0..g2, cap 2, evict when full, a queue of 4 with a 10 s timeout."""
    tmp = tmp_path_factory.mktemp("gw-real")
    # queue_timeout: long enough for the queue test's steps on a loaded machine.
    gateway = {"when_full": "evict", "max_queue": 4, "queue_timeout": 10}
    with gateway_service(tmp, llama_server_bin, gemma_gguf, {}, gateway=gateway) as g:
        yield g


@pytest.fixture(scope="module")
def gw_pinned(
    tmp_path_factory: pytest.TempPathFactory, llama_server_bin: Path, gemma_gguf: Path
) -> Iterator[Gw]:
    """g0 (pinned), g1 (embeddings too), g2 (idle_ttl 6 s), cap 2, polled at 2 Hz."""
    tmp = tmp_path_factory.mktemp("gw-pinned")
    extra: dict[int, dict[str, Any]] = {
        0: {"pinned": True},
        # gemma needs mean pooling for OpenAI embeddings; chat works as well.
        1: {"args": ["--threads", "1", "--embeddings", "--pooling", "mean"]},
        2: {"idle_ttl": 6},
    }
    poll = {"interval": 0.5, "idle_interval": 0}  # idle instances are read each time too
    with gateway_service(tmp, llama_server_bin, gemma_gguf, extra, poll=poll) as g:
        yield g


def slots_busy(g: Gw, model: str) -> bool:
    """Whether any slot of the model's llama-server is processing (asked directly)."""
    url = g.service.status(model)["url"]
    request = urllib.request.Request(url + "/slots", headers=g.service.instance_auth())
    with urllib.request.urlopen(request, timeout=5) as resp:
        return any(s["is_processing"] for s in json.loads(resp.read()))


def test_twenty_concurrent_requests_for_a_cold_model_spawn_one_process(gw: Gw) -> None:
    gw.arrange()  # g0 cold
    loads = gw.metric("llama_exporter_model_loads_total", model="g0")
    starts = gw.metric("llama_exporter_instance_start_duration_seconds_count", model="g0")
    waits = gw.metric("llama_exporter_gateway_load_wait_seconds_count", model="g0")
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda _: gw.chat("g0", max_tokens=4), range(20)))
    assert all(a.choices[0].message.content for a in answers)
    assert gw.metric("llama_exporter_model_loads_total", model="g0") == loads + 1
    count = gw.metric("llama_exporter_instance_start_duration_seconds_count", model="g0")
    assert count == starts + 1
    assert gw.metric("llama_exporter_gateway_load_wait_seconds_count", model="g0") >= waits + 1
    assert gw.service.status("g0")["state"] == "ready"


def test_streaming_cold_and_warm(gw: Gw) -> None:
    gw.arrange("g0")  # g0 warm, g1 cold
    loads = gw.metric("llama_exporter_model_loads_total", model="g1", trigger="request")
    stream, ttft, first = gw.stream("g1", max_tokens=16)  # g1 is cold: a load, then tokens
    text = first + "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text.strip()
    assert gw.metric("llama_exporter_model_loads_total", model="g1", trigger="request") == loads + 1
    for _ in range(3):
        stream, warm, _ = gw.stream("g0", max_tokens=8)
        usage = [c.usage for c in stream if c.usage is not None]
        assert usage and usage[-1].completion_tokens == 8
        assert warm < ttft  # no load this time
    reply = gw.chat("g1", max_tokens=6, extra_body={"ignore_eos": True})
    assert reply.usage.completion_tokens == 6


def test_lru_eviction_at_the_cap(gw: Gw) -> None:
    gw.arrange("g1", "g0")  # g0 used after g1: g1 is the least recently used
    evicted = gw.metric("llama_exporter_model_unloads_total", model="g1", reason="evicted")
    unloads_g0 = gw.metric("llama_exporter_model_unloads_total", model="g0")
    gw.chat("g2", max_tokens=1)  # the cap is 2: g1 goes
    assert gw.service.status("g1")["state"] == "stopped"
    assert gw.service.status("g0")["state"] == "ready"
    unloads = "llama_exporter_model_unloads_total"
    assert gw.metric(unloads, model="g1", reason="evicted") == evicted + 1
    assert gw.metric(unloads, model="g0") == unloads_g0


def test_client_disconnect_mid_stream_frees_the_slot(gw: Gw) -> None:
    gw.arrange("g0")
    wait_until(lambda: not slots_busy(gw, "g0"), "g0's slots to be free before the test")
    cut = gw.metric(REQUESTS, model="g0", code="499")
    stream, _, _ = gw.stream("g0", max_tokens=LONG)
    assert slots_busy(gw, "g0")
    stream.close()  # the client goes away mid-stream
    wait_until(lambda: not slots_busy(gw, "g0"), "g0's slot to be free")
    try:
        wait_until(
            lambda: gw.metric(REQUESTS, model="g0", code="499") == cut + 1,
            "the cut stream to be counted as 499",
        )
    except AssertionError as exc:  # say how it was counted instead
        counted = {
            code: gw.metric(REQUESTS, model="g0", code=code) for code in ("200", "499", "502")
        }
        raise AssertionError(f"{exc}; g0's requests by code: {counted}") from None


def test_queue_when_every_model_is_busy_then_full_then_timeout(gw: Gw) -> None:
    gw.arrange("g0", "g2")  # g1 cold
    loads = gw.metric("llama_exporter_model_loads_total", model="g1", trigger="request")
    rejected = "llama_exporter_gateway_rejected_total"
    full_before = gw.metric(rejected, model="g1", reason="queue_full")
    timeout_before = gw.metric(rejected, model="g0", reason="timeout")
    # g0 and g2 are loaded; keep both busy with long generations.
    waits = "llama_exporter_gateway_queue_wait_seconds"
    # Every admitted request is observed (0 when it did not queue): count what changes.
    count_before, sum_before = gw.metric(waits + "_count", model="g1"), gw.metric(waits + "_sum")
    busy = {m: gw.hold(m) for m in ("g0", "g2")}
    with ThreadPoolExecutor(5) as pool:
        queued = [pool.submit(gw.chat, "g1", 2) for _ in range(4)]
        wait_until(lambda: gw.summary()["queue_length"] == 4, "4 queued requests for g1")
        with pytest.raises(openai.RateLimitError) as full:
            gw.chat("g1", max_tokens=2)
        assert full.value.response.headers["retry-after"]
        assert full.value.code == "queue_full"
        assert all(not f.done() for f in queued)
        busy.pop("g0").close()  # g0 is idle now: evicted, and g1 loads once for all four
        answers = [f.result(timeout=120) for f in queued]
    assert all(a.choices for a in answers)
    assert gw.metric("llama_exporter_model_loads_total", model="g1", trigger="request") == loads + 1
    assert gw.metric(waits + "_count", model="g1") == count_before + 4
    assert gw.metric(waits + "_sum") > sum_before
    # Now g1 and g2 both busy: a request for g0 waits 10 s in the queue, then 503.
    # g2's generation began before the steps above: a fast machine may be near its end,
    # so hold g2 afresh, and both generations outlast the queue timeout.
    busy.pop("g2").close()
    busy["g2"] = gw.hold("g2")
    busy["g1"] = gw.hold("g1")
    with pytest.raises(openai.InternalServerError) as late:
        gw.chat("g0", max_tokens=2)
    assert late.value.status_code == 503
    assert late.value.response.headers["retry-after"]
    for stream in busy.values():
        stream.close()
    assert gw.metric(rejected, model="g1", reason="queue_full") == full_before + 1
    assert gw.metric(rejected, model="g0", reason="timeout") == timeout_before + 1


def test_exact_request_and_ttft_metrics(gw: Gw) -> None:
    gw.arrange("g0")  # g1 cold: one stream waits for a load
    total, streamed = gw.sent, len(gw.client_ttfts)
    ttft = "llama_exporter_gateway_time_to_first_token_seconds"
    before = {name: gw.metric(name) for name in (REQUESTS, ttft + "_count", ttft + "_sum")}
    stream, _, _ = gw.stream("g1", max_tokens=4)
    assert [c for c in stream]  # read to the end
    for _ in range(3):
        stream, _, _ = gw.stream("g0", max_tokens=4)
        assert [c for c in stream]
    gw.stream("g0", max_tokens=LONG)[0].close()  # cut short: its first token still counts
    gw.chat("g0", max_tokens=2)  # not streamed: no TTFT
    with pytest.raises(openai.NotFoundError):
        gw.chat("no-such-model")  # answered by the gateway itself, counted all the same
    # Every request has ended (none in flight, none queued): no count can arrive later.
    gw.settle()
    assert gw.metric(REQUESTS) - before[REQUESTS] == gw.sent - total == 7
    mine = gw.client_ttfts[streamed:]
    assert gw.metric("llama_exporter_gateway_requests_in_flight") == 0
    count = gw.metric(ttft + "_count") - before[ttft + "_count"]
    assert count == len(mine) == 5
    server_mean = (gw.metric(ttft + "_sum") - before[ttft + "_sum"]) / count
    client_mean = sum(mine) / len(mine)
    print(f"TTFT mean: service {server_mean * 1000:.2f} ms, client {client_mean * 1000:.2f} ms")
    # The service times from the request's arrival to the first text it forwards, the
    # client from just before sending to the first text it reads: on one machine's
    # monotonic clock the service's figure can never be the larger. How close the two
    # are is a performance figure, measured by bench/gateway.py, not asserted here.
    assert 0 < server_mean <= client_mean, (server_mean, client_mean)


def test_pinned_model_is_never_evicted(gw_pinned: Gw) -> None:
    g = gw_pinned
    g.arrange("g0", "g1")  # g0: pinned, and the least recently used
    unloads = "llama_exporter_model_unloads_total"
    unloads_g0 = g.metric(unloads, model="g0")
    evicted = g.metric(unloads, model="g1", reason="evicted")
    g.chat("g2", max_tokens=1)  # the cap is 2: g1 goes, not g0
    assert g.service.status("g0")["state"] == "ready"
    assert g.service.status("g1")["state"] == "stopped"
    assert g.metric(unloads, model="g0") == unloads_g0
    assert g.metric(unloads, model="g1", reason="evicted") == evicted + 1
    status = g.service.status("g0")
    assert status["pinned"] is True


def test_idle_model_is_unloaded_and_the_poller_does_not_count_as_use(gw_pinned: Gw) -> None:
    g = gw_pinned
    g.arrange("g0", "g2")  # g2 used last: its idle TTL runs from here
    idle_unloads = "llama_exporter_model_unloads_total"
    before = g.metric(idle_unloads, model="g2", reason="idle")
    used = g.service.status("g2")["last_used"]
    assert used is not None
    polled: set[float] = set()  # every poll of g2 seen in its history while it was ready
    seen_ready = False

    def unloaded() -> bool:
        nonlocal seen_ready
        st = g.service.status("g2")  # /status reads are no use either
        if st["state"] == "ready":
            seen_ready = True
            assert st["last_used"] == used
            # Gathered, not replaced: the unload may begin between the two reads, and its
            # history is gone then (this read once came back empty and failed the test).
            _, body = http_json("GET", g.service.api + "/models/g2/metrics")
            polled.update(h["timestamp"] for h in body["history"])
        return bool(st["state"] == "stopped")

    wait_until(unloaded, "g2 to be unloaded for idleness")
    assert seen_ready, "g2 was already unloaded when the test first looked"
    after_use = sorted(t for t in polled if t > used)
    errors = {
        f"{s.labels['endpoint']}/{s.labels['reason']}": s.value
        for f in text_string_to_metric_families(http_text(g.service.url + "/metrics"))
        for s in f.samples
        if s.name == "llama_exporter_poll_errors_total" and s.labels.get("model") == "g2"
    }
    # The poller read it several times after its last use (what it saw, if not:)
    assert len(after_use) >= 3, (used, sorted(polled)[-8:], errors)
    assert g.metric(idle_unloads, model="g2", reason="idle") == before + 1
    assert g.service.status("g0")["state"] == "ready"  # pinned: not unloaded


def test_embeddings_load_on_demand_and_are_counted(gw_pinned: Gw) -> None:
    g = gw_pinned
    g.arrange("g0")  # g1 stopped
    embeddings = {"model": "g1", "endpoint": "/v1/embeddings", "code": "200"}
    counted = g.metric(REQUESTS, **embeddings)
    g.sent += 1
    answer = g.client.embeddings.create(model="g1", input=["a lighthouse", "the sea"])
    vectors = [d.embedding for d in answer.data]
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) > 0
    assert vectors[0] != vectors[1]
    assert g.service.status("g1")["state"] == "ready"
    assert g.metric(REQUESTS, **embeddings) == counted + 1
    assert g.chat("g1", max_tokens=2).choices[0].message.content is not None  # same instance


def test_legacy_completions_streamed_and_not(gw_pinned: Gw) -> None:
    g = gw_pinned
    g.arrange("g0")
    completions = {"model": "g0", "endpoint": "/v1/completions"}
    counted = g.metric(REQUESTS, **completions)
    ttft = "llama_exporter_gateway_time_to_first_token_seconds_count"
    ttfts = g.metric(ttft, model="g0")
    g.sent += 2
    whole = g.client.completions.create(
        model="g0", prompt="The sea is", max_tokens=4, extra_body={"ignore_eos": True}
    )
    assert whole.choices[0].text and whole.usage is not None
    assert whole.usage.completion_tokens == 4
    parts = g.client.completions.create(
        model="g0", prompt="The sea is", max_tokens=4, stream=True, extra_body={"ignore_eos": True}
    )
    assert "".join(c.choices[0].text for c in parts if c.choices).strip()
    wait_until(
        lambda: g.metric(REQUESTS, **completions) == counted + 2, "both completions to be counted"
    )
    assert g.metric(ttft, model="g0") == ttfts + 1  # the streamed one only


def test_embeddings_on_a_chat_model_answer_400_without_a_load(gw_pinned: Gw) -> None:
    g = gw_pinned
    g.arrange("g0", "g1")  # g0 (pinned) and g1 loaded: the cap of 2 is full; g2 stopped
    loads = g.metric("llama_exporter_model_loads_total", model="g2")
    g.sent += 1
    with pytest.raises(openai.BadRequestError) as refused:
        g.client.embeddings.create(model="g2", input="a lighthouse")
    assert refused.value.code == "embeddings_not_enabled"
    assert "--embeddings" in refused.value.message and "--pooling mean" in refused.value.message
    assert g.service.status("g2")["state"] == "stopped"  # not loaded
    assert g.service.status("g1")["state"] == "ready"  # nothing evicted for it
    assert g.metric("llama_exporter_model_loads_total", model="g2") == loads


def test_answers_name_the_model_asked_for(gw_pinned: Gw) -> None:
    """llama-server started with --alias NAME: every answer's `model` is NAME, not the path."""
    g = gw_pinned
    g.sent += 6  # besides chat(): a stream, two completions, an embedding, two /upstream reads
    assert g.chat("g0", max_tokens=2).model == "g0"
    chunks = list(
        g.client.chat.completions.create(
            model="g0",
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=3,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert len(chunks) >= 3 and {c.model for c in chunks} == {"g0"}
    assert g.client.completions.create(model="g0", prompt="The sea", max_tokens=2).model == "g0"
    parts = list(g.client.completions.create(model="g0", prompt="Sea", max_tokens=2, stream=True))
    assert parts and {c.model for c in parts} == {"g0"}
    assert g.client.embeddings.create(model="g1", input="a lighthouse").model == "g1"
    # llama-server's own views, through /upstream (not counted as gateway requests above).
    _, props = http_json("GET", g.service.url + "/upstream/g0/props")
    assert props["model_alias"] == "g0" and props["model_path"].endswith("g0.gguf")
    _, listed = http_json("GET", g.service.url + "/upstream/g0/v1/models")
    assert [m["id"] for m in listed["data"]] == ["g0"]
