"""Tests for llama_exporter.monitoring.derive (pure: no event loop, time passed in)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llama_exporter.monitoring.derive import (
    PROMPT_TOKENS,
    REQUESTS_DEFERRED,
    TOKENS_PREDICTED,
    ModelDeriver,
    ProcessSample,
    SlotSample,
    TokenCounter,
    parse_metrics,
    parse_slots,
    ratio,
)

METRICS_TEXT = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 120
# HELP llamacpp:tokens_predicted_total Number of generation tokens processed.
# TYPE llamacpp:tokens_predicted_total counter
llamacpp:tokens_predicted_total 600
# HELP llamacpp:predicted_tokens_seconds Average generation throughput in tokens/s.
# TYPE llamacpp:predicted_tokens_seconds gauge
llamacpp:predicted_tokens_seconds 26.1
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 3
"""


def busy_slot(
    slot_id: int,
    task: int,
    prompt: int,
    decoded: int,
    *,
    n_ctx: int = 2048,
    plain: bool = False,
) -> dict[str, Any]:
    """A processing /slots entry shaped like the real server's."""
    next_token: dict[str, Any] = {
        "has_next_token": True,
        "has_new_line": False,
        "n_remain": -1,
        "n_decoded": decoded,
    }
    return {
        "id": slot_id,
        "n_ctx": n_ctx,
        "speculative": False,
        "is_processing": True,
        "id_task": task,
        "n_prompt_tokens": prompt,
        "n_prompt_tokens_processed": prompt - decoded,
        "params": {"n_predict": -1},
        "next_token": next_token if plain else [next_token],
    }


def idle_slot(slot_id: int, *, n_ctx: int = 2048) -> dict[str, Any]:
    """An idle /slots entry."""
    return {"id": slot_id, "n_ctx": n_ctx, "speculative": False, "is_processing": False}


def metrics(predicted: float, prompt: float = 0.0, deferred: float = 0.0) -> dict[str, float]:
    """A parsed /metrics mapping."""
    return {TOKENS_PREDICTED: predicted, PROMPT_TOKENS: prompt, REQUESTS_DEFERRED: deferred}


# --- parsing ---------------------------------------------------------------------------


def test_parse_slots_accepts_list_and_plain_next_token() -> None:
    slots = parse_slots([busy_slot(0, 7, 68, 35), busy_slot(1, 8, 20, 5, plain=True)])
    assert slots[0] == SlotSample(0, 2048, True, 7, 68, 35)
    assert slots[1] == SlotSample(1, 2048, True, 8, 20, 5)


def test_parse_slots_missing_fields_default() -> None:
    slots = parse_slots([{"is_processing": True}, {}, {"id": 5, "next_token": []}])
    assert slots[0] == SlotSample(0, 0, True, None, 0, 0)
    assert slots[1] == SlotSample(1, 0, False)
    assert slots[2] == SlotSample(5, 0, False)


def test_parse_slots_ignores_numbers_left_on_idle_slots() -> None:
    stale = busy_slot(0, 7, 68, 35) | {"is_processing": False}
    assert parse_slots([stale]) == [SlotSample(0, 2048, False)]


@pytest.mark.parametrize("payload", [{"slots": []}, None, "x", 3])
def test_parse_slots_rejects_non_list(payload: object) -> None:
    with pytest.raises(ValueError):
        parse_slots(payload)


def test_parse_slots_rejects_non_object_entry() -> None:
    with pytest.raises(ValueError):
        parse_slots([idle_slot(0), 3])


def test_parse_metrics_keys_by_sample_name() -> None:
    values = parse_metrics(METRICS_TEXT)
    assert values[TOKENS_PREDICTED] == 600
    assert values[PROMPT_TOKENS] == 120
    assert values[REQUESTS_DEFERRED] == 3


def test_parse_metrics_only_keeps_the_named_metrics() -> None:
    text = METRICS_TEXT + 'llamacpp:tokens_predicted_total_x{a="b"} 5\n# some comment\n'
    values = parse_metrics(text, [TOKENS_PREDICTED, REQUESTS_DEFERRED])
    assert values == {TOKENS_PREDICTED: 600, REQUESTS_DEFERRED: 3}
    assert parse_metrics(text, []) == {}


def test_parse_metrics_rejects_garbage() -> None:
    with pytest.raises(ValueError):
        parse_metrics("this is { not prometheus\n")


def test_ratio_clamps() -> None:
    assert ratio(5, 0) == 0.0
    assert ratio(-1, 10) == 0.0
    assert ratio(20, 10) == 1.0
    assert ratio(math.nan, 10) == 0.0
    assert ratio(1, 4) == 0.25


# --- derived values ----------------------------------------------------------------------


def test_context_uses_prompt_tokens_only() -> None:
    deriver = ModelDeriver("m")
    snap = deriver.update(
        metrics(0), parse_slots([busy_slot(0, 1, 68, 35), idle_slot(1)]), now=100.0
    )
    assert snap.context_size_tokens == 4096
    assert snap.context_used_tokens == 68  # never 68 + 35
    assert snap.context_used_ratio == pytest.approx(68 / 4096)
    assert snap.slots[0].context_used_ratio == pytest.approx(68 / 2048)
    assert snap.slots[1].context_used_tokens == 0
    assert (snap.slots_total, snap.slots_busy) == (2, 1)


def test_rates_stay_finite_when_the_interval_is_denormal() -> None:
    # hypothesis found it: dt = 5e-324 s made the rate inf and the smoothed rate NaN
    deriver = ModelDeriver("m")
    snaps = [
        deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 20 + n, n)]), now=now)
        for n, now in ((5, 0.0), (15, 5e-324), (25, 1.0))
    ]
    for snap in snaps:
        assert math.isfinite(snap.tokens_per_second)
        assert math.isfinite(snap.tokens_per_second_smoothed)
        assert all(math.isfinite(s.tokens_per_second) for s in snap.slots)
    assert snaps[-1].tokens_per_second == pytest.approx(10.0)


def test_empty_slots_give_zero_ratio() -> None:
    snap = ModelDeriver("m").update(metrics(0), [], now=1.0)
    assert snap.context_used_ratio == 0.0
    assert snap.slots_total == 0


def test_two_generations_at_26_tokens_per_second() -> None:
    deriver = ModelDeriver("m")
    snap = None
    for tick in range(6):
        decoded = 26 * tick
        payload = [busy_slot(0, 1, 40 + decoded, decoded), busy_slot(1, 2, 30 + decoded, decoded)]
        snap = deriver.update(metrics(0), parse_slots(payload), now=1000.0 + tick)
    assert snap is not None
    assert [s.tokens_per_second for s in snap.slots] == [26.0, 26.0]
    assert snap.tokens_per_second == pytest.approx(52.0)
    assert snap.tokens_per_second_smoothed == pytest.approx(52.0)
    assert snap.time_per_token_seconds == pytest.approx(1 / 26)
    assert snap.slots[0].time_per_token_seconds == pytest.approx(1 / 26)
    assert snap.tokens_generated_total == 26 * 5 * 2


def test_new_task_in_same_slot_counts_from_zero() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 300, 200)]), now=0.0)
    # task 1 ended (200 tokens; counted by /metrics), task 2 decoded 10 within the second
    snap = deriver.update(metrics(200), parse_slots([busy_slot(0, 2, 50, 10)]), now=1.0)
    assert snap.slots[0].tokens_per_second == 10.0
    assert snap.tokens_generated_total == 210
    assert snap.tokens_per_second == 10.0


def test_short_request_between_polls_is_counted() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([idle_slot(0)]), now=0.0)
    snap = deriver.update(metrics(12, prompt=9), parse_slots([idle_slot(0)]), now=1.0)
    assert snap.tokens_generated_total == 12
    assert snap.prompt_tokens_total == 9
    assert snap.tokens_per_second == 12.0
    assert snap.time_per_token_seconds is None


def test_tail_after_last_poll_is_counted() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 80, 50)]), now=0.0)
    snap = deriver.update(metrics(63), parse_slots([idle_slot(0)]), now=1.0)
    assert snap.tokens_generated_total == 63


def test_request_ending_between_reads_is_not_double_counted() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 80, 50)]), now=0.0)
    # /metrics read before the end, /slots after it: undercounts for one poll only
    snap = deriver.update(metrics(0), parse_slots([idle_slot(0)]), now=1.0)
    assert snap.tokens_generated_total == 50
    snap = deriver.update(metrics(60), parse_slots([idle_slot(0)]), now=2.0)
    assert snap.tokens_generated_total == 60
    snap = deriver.update(metrics(60), parse_slots([idle_slot(0)]), now=3.0)
    assert snap.tokens_generated_total == 60


def test_cancelled_request_is_credited_once() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 80, 50)]), now=0.0)
    deriver.update(metrics(0), parse_slots([idle_slot(0)]), now=1.0)  # cancelled
    snap = deriver.update(metrics(0), parse_slots([busy_slot(0, 2, 20, 10)]), now=2.0)
    assert snap.tokens_generated_total == 60
    snap = deriver.update(metrics(30), parse_slots([idle_slot(0)]), now=3.0)
    assert snap.tokens_generated_total == 80


def test_restart_carries_the_total() -> None:
    counter = TokenCounter()
    first = ModelDeriver("m", counter, pid=1)
    first.update(metrics(0), parse_slots([busy_slot(0, 1, 50, 40)]), now=0.0)
    first.update(metrics(100), parse_slots([idle_slot(0)]), now=1.0)
    second = ModelDeriver("m", counter, pid=2)
    second.begin_process()
    snap = second.update(metrics(5), parse_slots([busy_slot(0, 1, 10, 3)]), now=5.0)
    assert snap.tokens_generated_total == 108
    assert snap.pid == 2


def test_counter_reset_without_begin_process_is_detected() -> None:
    counter = TokenCounter()
    assert counter.update(100) == 100
    assert counter.update(7) == 107


def test_missing_counter_is_not_a_reset() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(100), [], now=0.0)
    snap = deriver.update({}, [], now=1.0)
    assert snap.tokens_generated_total == 100
    snap = deriver.update(metrics(100), [], now=2.0)
    assert snap.tokens_generated_total == 100


def test_counter_ignores_non_finite() -> None:
    counter = TokenCounter(10)
    assert counter.update(math.nan) == 10
    assert counter.update(5) == 15


def test_requests_waiting_and_prompt_tokens() -> None:
    snap = ModelDeriver("m").update(metrics(0, prompt=40, deferred=2), [], now=0.0)
    assert snap.requests_waiting == 2
    assert snap.prompt_tokens_total == 40


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_gauges_are_not_read(bad: float) -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(10, prompt=4), [], now=0.0)
    snap = deriver.update(metrics(bad, prompt=bad, deferred=bad), [], now=1.0)
    assert snap.requests_waiting == 0
    assert (snap.tokens_generated_total, snap.prompt_tokens_total) == (10, 4)
    assert snap.tokens_per_second == 0.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_parse_slots_non_finite_numbers_default(bad: float) -> None:
    entry = busy_slot(0, 7, 68, 35) | {"n_ctx": bad, "n_prompt_tokens": bad, "id_task": bad}
    assert parse_slots([entry]) == [SlotSample(0, 0, True, 0, 0, 35)]


def test_smoothing_is_time_aware() -> None:
    deriver = ModelDeriver("m", smoothing_seconds=5.0)
    deriver.update(metrics(0), [], now=0.0)
    deriver.update(metrics(0), [], now=1.0)  # starts at 0 tok/s
    snap = deriver.update(metrics(50), [], now=6.0)  # 10 tok/s over 5 s
    assert snap.tokens_per_second == 10.0
    assert snap.tokens_per_second_smoothed == pytest.approx(10.0 * (1 - math.exp(-1)))


def test_cpu_values() -> None:
    deriver = ModelDeriver("m")
    first = deriver.update(metrics(0), [], now=0.0, process=ProcessSample(10.0, 1000, 4))
    assert (first.cpu_seconds_total, first.cpu_utilization_ratio) == (10.0, 0.0)
    snap = deriver.update(metrics(0), [], now=2.0, process=ProcessSample(13.0, 2048, 4))
    assert snap.cpu_seconds_total == 13.0
    assert snap.cpu_percent == pytest.approx(150.0)
    assert snap.cpu_utilization_ratio == pytest.approx(1.5 / 4)
    assert snap.rss_bytes == 2048
    no_process = deriver.update(metrics(0), [], now=3.0)
    assert no_process.cpu_seconds_total is None


def test_to_dict_uses_ms_and_percent() -> None:
    deriver = ModelDeriver("m")
    deriver.update(metrics(0), parse_slots([busy_slot(0, 1, 10, 0)]), now=0.0)
    snap = deriver.update(
        metrics(0),
        parse_slots([busy_slot(0, 1, 30, 20)]),
        now=1.0,
        process=ProcessSample(1.0, 5, 2),
    )
    data = snap.to_dict()
    assert data["time_per_token_ms"] == pytest.approx(50.0)
    assert "time_per_token_seconds" not in data
    assert data["slots"][0]["time_per_token_ms"] == pytest.approx(50.0)
    assert data["cpu_percent"] == 0.0
    assert data["model"] == "m"


# --- properties ----------------------------------------------------------------------------

slot_payload = st.fixed_dictionaries(
    {
        "n_ctx": st.integers(0, 4096),
        "is_processing": st.booleans(),
        "id_task": st.integers(0, 5),
        "n_prompt_tokens": st.integers(0, 8192),
        "next_token": st.lists(st.fixed_dictionaries({"n_decoded": st.integers(0, 5000)})),
    }
)
step = st.one_of(
    st.just("restart"),
    st.tuples(st.integers(0, 500), st.lists(slot_payload, max_size=4), st.floats(0.0, 3.0)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(step, max_size=40))
def test_total_never_decreases_and_ratios_in_range(steps: list[Any]) -> None:
    counter, prompt = TokenCounter(), TokenCounter()
    deriver = ModelDeriver("m", counter, prompt)
    completed, now, last_total = 0.0, 0.0, 0.0
    for item in steps:
        if item == "restart":
            deriver = ModelDeriver("m", counter, prompt)
            deriver.begin_process()
            completed = 0.0
            continue
        increment, payload, dt = item
        completed += increment
        now += dt
        entries = [dict(p, id=i) for i, p in enumerate(payload)]
        snap = deriver.update(metrics(completed, completed), parse_slots(entries), now)
        assert snap.tokens_generated_total >= last_total
        last_total = snap.tokens_generated_total
        assert 0.0 <= snap.context_used_ratio <= 1.0
        assert all(0.0 <= s.context_used_ratio <= 1.0 for s in snap.slots)
        assert snap.tokens_per_second >= 0.0
        assert snap.tokens_per_second_smoothed >= 0.0


@dataclass
class FakeServer:
    """A model of llama-server's counters: completed counter + in-flight slots."""

    slots: int = 2
    completed: int = 0
    truth: int = 0  # every token generated, cancelled ones included
    next_task: int = 0
    running: dict[int, tuple[int, int]] = field(default_factory=dict)  # slot -> (task, n)

    def act(self, slot: int, action: str, tokens: int) -> None:
        """Apply one action to one slot."""
        if action == "gen" and slot in self.running:
            task, n = self.running[slot]
            self.running[slot] = (task, n + tokens)
            self.truth += tokens
        elif action == "start" and slot not in self.running:
            self.next_task += 1
            self.running[slot] = (self.next_task, 0)
        elif action == "finish" and slot in self.running:
            self.completed += self.running.pop(slot)[1]
        elif action == "cancel" and slot in self.running:
            self.running.pop(slot)

    def slots_payload(self) -> list[dict[str, Any]]:
        """The /slots payload now."""
        return [
            busy_slot(i, self.running[i][0], 10 + self.running[i][1], self.running[i][1])
            if i in self.running
            else idle_slot(i)
            for i in range(self.slots)
        ]


action = st.tuples(
    st.integers(0, 1), st.sampled_from(["gen", "gen", "start", "finish"]), st.integers(0, 40)
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.lists(action, max_size=6), st.lists(action, max_size=3)), max_size=30))
def test_total_is_exact_once_idle(polls: list[tuple[list[Any], list[Any]]]) -> None:
    server, deriver = FakeServer(), ModelDeriver("m")
    for tick, (before_metrics, between_reads) in enumerate(polls):
        for slot, act, n in before_metrics:
            server.act(slot, act, n)
        read = metrics(server.completed)
        for slot, act, n in between_reads:  # a request may end between the two reads
            server.act(slot, act, n)
        snap = deriver.update(read, parse_slots(server.slots_payload()), now=float(tick))
        assert snap.tokens_generated_total <= server.truth
    for slot in list(server.running):
        server.act(slot, "finish", 0)
    for extra in range(2):
        snap = deriver.update(
            metrics(server.completed), parse_slots(server.slots_payload()), now=100.0 + extra
        )
    assert deriver.tokens.total == server.truth


cancel_action = st.tuples(
    st.integers(0, 1), st.sampled_from(["gen", "start", "finish", "cancel"]), st.integers(0, 40)
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.lists(cancel_action, max_size=6), st.lists(cancel_action, max_size=3)),
        max_size=30,
    )
)
def test_cancelled_requests_never_overcount(polls: list[tuple[list[Any], list[Any]]]) -> None:
    server, deriver = FakeServer(), ModelDeriver("m")
    for tick, (before_metrics, between_reads) in enumerate(polls):
        for slot, act, n in before_metrics:
            server.act(slot, act, n)
        read = metrics(server.completed)
        for slot, act, n in between_reads:
            server.act(slot, act, n)
        snap = deriver.update(read, parse_slots(server.slots_payload()), now=float(tick))
        assert snap.tokens_generated_total <= server.truth
