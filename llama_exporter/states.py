"""Instance states and the transitions allowed between them (no dependencies)."""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Lifecycle state of one model's llama-server instance; the value is a metric label."""

    STOPPED = "stopped"
    STARTING = "starting"
    READY = "ready"
    STOPPING = "stopping"
    BACKOFF = "backoff"  # crashed or hung; waiting to be restarted
    FAILED = "failed"  # gave up: start failed and no restarts left


class TransitionError(RuntimeError):
    """Raised when code asks for a transition the state machine does not allow."""


TRANSITIONS: dict[State, frozenset[State]] = {
    State.STOPPED: frozenset({State.STARTING}),
    State.STARTING: frozenset({State.READY, State.STOPPING, State.BACKOFF, State.FAILED}),
    State.READY: frozenset({State.STOPPING, State.BACKOFF, State.FAILED}),
    State.STOPPING: frozenset({State.STOPPED, State.FAILED}),
    State.BACKOFF: frozenset({State.STARTING, State.STOPPED, State.FAILED}),
    State.FAILED: frozenset({State.STARTING, State.STOPPED}),
}

# A model waiting to be restarted keeps its place under the cap: otherwise a crash
# would free a slot that another start could take, and the restart would be refused.
COUNTS_AGAINST_CAP: frozenset[State] = frozenset(
    {State.STARTING, State.READY, State.STOPPING, State.BACKOFF}
)


def check_transition(old: State, new: State) -> None:
    """Raise TransitionError unless ``old -> new`` is allowed."""
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"illegal state transition {old} -> {new}")
