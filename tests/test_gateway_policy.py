"""Pure gateway policy and SSE reading: no event loop, hypothesis where inputs vary.

Which model to evict is admission's: tests/test_admission.py."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.gateway.policy import (
    Usage,
    idle_models,
    is_idle,
    plan_queue,
    ttl_left,
)
from llama_exporter.gateway.proxy import upstream_headers
from llama_exporter.gateway.routes import upstream_path
from llama_exporter.gateway.sse import StreamWatch, event_text, usage_of

names = st.sampled_from(["a", "b", "c", "d", "e"])


@given(st.lists(names, max_size=12), st.sets(names))
def test_queue_plan_groups_waiters_by_model(waiting: list[str], live: set[str]) -> None:
    plan = plan_queue(waiting, live)
    assert plan.go == frozenset(m for m in waiting if m in live)
    rest = [m for m in waiting if m not in live]
    assert plan.head == (rest[0] if rest else None)
    assert plan.head not in plan.go


def test_a_a_b_a_loads_a_once() -> None:
    plan = plan_queue(["A", "A", "B", "A"], live=set())
    assert plan.head == "A"
    after = plan_queue(["A", "A", "B", "A"], live={"A"})  # A is loading: all its waiters go
    assert after.go == {"A"} and after.head == "B"


@given(st.floats(0, 1e6), st.floats(0, 1e4), st.floats(0, 2e6))
def test_idle_iff_ttl_set_and_elapsed(last: float, ttl: float, now: float) -> None:
    assert is_idle(last, ttl, now) == (ttl > 0 and now - last >= ttl)
    left = ttl_left(last, ttl, now)
    if ttl <= 0:
        assert left is None
    else:
        assert left is not None and left >= 0
        if is_idle(last, ttl, now):
            assert left == 0
        if now >= last:
            assert left <= ttl * (1 + 1e-9) + 1e-6  # float rounding of last + ttl - now


@given(
    st.lists(
        st.builds(
            Usage,
            name=names,
            last_used=st.floats(0, 100),
            idle_ttl=st.sampled_from([0.0, 5.0, 50.0]),
            in_flight=st.integers(0, 2),
            pinned=st.booleans(),
        ),
        unique_by=lambda u: u.name,
    ),
    st.floats(0, 200),
)
def test_idle_models_never_busy_pinned_or_ttl_zero(models: list[Usage], now: float) -> None:
    idle = idle_models(models, now)
    for m in models:
        expected = (
            not m.pinned and m.in_flight == 0 and m.idle_ttl > 0 and now - m.last_used >= m.idle_ttl
        )
        assert (m.name in idle) == expected


# -- SSE ---------------------------------------------------------------------------------


def _chat_events(words: list[str]) -> list[bytes]:
    first = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": None}}]}
    events = [first] + [{"choices": [{"index": 0, "delta": {"content": w}}]} for w in words]
    usage = {"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": len(words)}}
    out = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in [*events, usage]]
    return [*out, b"data: [DONE]\n\n"]


def test_first_event_with_null_content_is_not_a_token() -> None:
    assert event_text({"choices": [{"delta": {"role": "assistant", "content": None}}]}) is None
    assert event_text({"choices": [{"delta": {"content": ""}}]}) is None
    assert event_text({"choices": [{"delta": {"content": "hi"}}]}) == "hi"
    assert event_text({"choices": [{"text": "x", "index": 0}]}) == "x"
    assert event_text({"content": "native"}) == "native"
    assert event_text({"choices": []}) is None


def test_reasoning_and_tool_calls_are_generated_output() -> None:
    def delta(**d: object) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": d}]}

    assert event_text(delta(content=None, reasoning_content="Let me think")) == "Let me think"
    call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "get_weather"}}
    assert event_text(delta(content=None, tool_calls=[call])) == "get_weather"
    more = {"index": 0, "function": {"arguments": '{"city"'}}
    assert event_text(delta(tool_calls=[more])) == '{"city"'
    assert event_text(delta(tool_calls=[{"index": 0, "function": {"arguments": ""}}])) is None
    assert event_text(delta(tool_calls=[])) is None
    watch = StreamWatch(started=0.0)
    watch.feed(b"data: " + json.dumps(delta(reasoning_content="Hmm")).encode() + b"\n\n", 0.3)
    assert watch.ttft == 0.3  # a reasoning model's first thought is its first token


@given(st.lists(st.text(min_size=1, max_size=5), min_size=1, max_size=8), st.data())
def test_watch_times_tokens_however_the_bytes_are_split(
    words: list[str], data: st.DataObject
) -> None:
    stream = b"".join(_chat_events(words))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    watch = StreamWatch(started=100.0)
    pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    for i, piece in enumerate(pieces):
        watch.feed(piece, 101.0 + i)
    assert watch.text_events == len(words)
    assert watch.ttft is not None and watch.ttft >= 1.0
    assert len(watch.gaps) == len(words) - 1 and all(g >= 0 for g in watch.gaps)
    assert watch.usage is not None and watch.usage.completion_tokens == len(words)
    assert not watch.error


def test_usage_from_timings_when_there_is_no_usage() -> None:
    usage = usage_of({"timings": {"prompt_n": 3, "cache_n": 2, "predicted_n": 9}})
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 9)
    assert usage_of({"choices": []}) is None


def test_error_event_is_noticed() -> None:
    watch = StreamWatch(started=0.0)
    watch.feed(b'data: {"error": {"message": "boom"}}\n\n', 1.0)
    assert watch.error and watch.ttft is None and watch.error_code is None
    over = b'data: {"error": {"code": 400, "message": "too long", "type": "exceed_context"}}\n\n'
    watch = StreamWatch(started=0.0)
    watch.feed(over, 1.0)
    assert watch.error and watch.error_code == 400
    for odd in (b"true", b"200", b'"400"', b"999"):
        watch = StreamWatch(started=0.0)
        watch.feed(b'data: {"error": {"code": ' + odd + b"}}\n\n", 1.0)
        assert watch.error and watch.error_code is None


def test_upstream_path_keeps_the_percent_encoding() -> None:
    assert upstream_path("/upstream/m0/slots") == "/slots"
    assert upstream_path("/upstream/m0/a%3Fb%2Fc?x=%26y&z=1") == "/a%3Fb%2Fc?x=%26y&z=1"
    assert upstream_path("/upstream/m0/") == "/"
    assert upstream_path("/upstream/m0") == "/"


def test_hop_by_hop_headers_stay_on_their_hop() -> None:
    incoming = {
        "Connection": "keep-alive, X-Trace-Hop",
        "X-Trace-Hop": "1",
        "Expect": "100-continue",
        "Authorization": "Bearer the-service-token",
        "Content-Type": "application/json",
        "X-Request-Id": "r1",
    }
    out = upstream_headers(incoming, "model-key")
    assert out == {
        "Content-Type": "application/json",
        "X-Request-Id": "r1",
        "Accept-Encoding": "identity",
        "Authorization": "Bearer model-key",
    }
