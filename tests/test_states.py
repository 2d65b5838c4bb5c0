"""states.py: the transition table, its invariants, and the pure back-off."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.states import (
    COUNTS_AGAINST_CAP,
    SETTLED,
    TRANSITIONS,
    CapExceeded,
    InstanceStatus,
    State,
    TransitionError,
    UnknownModel,
    backoff_delay,
    check_transition,
)


def test_every_state_has_a_row_and_no_self_loops() -> None:
    assert set(TRANSITIONS) == set(State)
    for state, targets in TRANSITIONS.items():
        assert state not in targets


def test_every_state_can_reach_stopped_and_stopped_can_reach_all() -> None:
    def reachable(start: State) -> set[State]:
        seen, todo = {start}, [start]
        while todo:
            for nxt in TRANSITIONS[todo.pop()]:
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    assert reachable(State.STOPPED) == set(State)
    for state in State:
        assert State.STOPPED in reachable(state)


def test_state_values_are_metric_labels() -> None:
    assert [s.value for s in State] == [
        "stopped",
        "starting",
        "ready",
        "stopping",
        "backoff",
        "failed",
    ]
    assert f"{State.READY}" == "ready"


def test_cap_and_settled_sets() -> None:
    assert State.BACKOFF in COUNTS_AGAINST_CAP  # keeps its place while waiting to restart
    assert State.FAILED not in COUNTS_AGAINST_CAP and State.STOPPED not in COUNTS_AGAINST_CAP
    assert {State.READY, State.FAILED, State.STOPPED} == SETTLED


@given(st.lists(st.sampled_from(list(State)), max_size=40))
def test_random_event_sequences_follow_the_table(events: list[State]) -> None:
    state = State.STOPPED
    for wanted in events:
        if wanted in TRANSITIONS[state]:
            check_transition(state, wanted)
            state = wanted
        else:
            with pytest.raises(TransitionError):
                check_transition(state, wanted)


@given(
    st.integers(min_value=0, max_value=60),
    st.floats(min_value=0.001, max_value=10),
    st.floats(min_value=0.001, max_value=300),
)
def test_backoff_doubles_and_is_capped(retries: int, initial: float, maximum: float) -> None:
    delay = backoff_delay(retries, initial, maximum)
    assert delay <= maximum
    assert delay == min(initial * 2**retries, maximum)
    assert backoff_delay(retries + 1, initial, maximum) >= delay


def test_status_helpers() -> None:
    status = InstanceStatus("m", State.READY, since=10.0, port=18080, ready_at=10.0)
    assert status.base_url == "http://127.0.0.1:18080"
    assert status.uptime(15.0) == 5.0
    assert InstanceStatus("m", State.STOPPED, since=0).uptime(5.0) is None
    assert InstanceStatus("m", State.STOPPED, since=0).base_url is None


def test_errors_say_what_to_do() -> None:
    err = CapExceeded("e", ("a", "b"), 2)
    assert "2 of 2" in str(err) and "a, b" in str(err) and "max_parallel" in str(err)
    assert isinstance(UnknownModel("x"), KeyError)
    assert "unknown model 'x'" in str(UnknownModel("x"))
