"""lifecycle.restart_delay: the pure restart decision after an instance ends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from llama_exporter.config.settings import RestartPolicy
from llama_exporter.states import InstanceStatus, State, backoff_delay
from llama_exporter.supervision.lifecycle import restart_delay

POLICY = RestartPolicy(max_retries=3, backoff_initial=1.0, backoff_max=8.0, stable_after=60.0)


def ended(retries: int, ready_at: float | None) -> InstanceStatus:
    return InstanceStatus(
        model="m", state=State.READY, since=0.0, retries=retries, ready_at=ready_at
    )


def test_a_short_run_keeps_counting_until_max_retries() -> None:
    assert restart_delay(POLICY, ended(0, 100.0), now=110.0) == (1.0, 0)
    assert restart_delay(POLICY, ended(2, 100.0), now=110.0) == (4.0, 2)
    assert restart_delay(POLICY, ended(3, 100.0), now=110.0) == (None, 3)


def test_a_stable_run_starts_the_count_afresh() -> None:
    assert restart_delay(POLICY, ended(3, 100.0), now=160.0) == (1.0, 0)


def test_a_start_that_never_got_ready_keeps_its_count() -> None:
    assert restart_delay(POLICY, ended(3, None), now=1e9) == (None, 3)


def test_disabled_restarts_never_restart() -> None:
    off = RestartPolicy(enabled=False)
    assert restart_delay(off, ended(0, 100.0), now=1e9) == (None, 0)


@given(
    retries=st.integers(0, 20),
    ready_for=st.one_of(st.none(), st.floats(0, 1e6)),
    max_retries=st.integers(0, 10),
)
def test_delay_is_the_backoff_of_the_retries_it_returns(
    retries: int, ready_for: float | None, max_retries: int
) -> None:
    policy = RestartPolicy(max_retries=max_retries, backoff_initial=0.5, backoff_max=30.0)
    now = 1e6
    status = ended(retries, None if ready_for is None else now - ready_for)
    delay, counted = restart_delay(policy, status, now)
    stable = ready_for is not None and ready_for >= policy.stable_after
    assert counted == (0 if stable else retries)
    if counted >= max_retries:
        assert delay is None
    else:
        assert delay == backoff_delay(counted, 0.5, 30.0)
